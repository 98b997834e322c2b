"""DD-Ranking-style scores of a condensed set, computed from the accuracies of our own runs.

DD-Ranking (Li et al. 2025, arXiv 2505.13300; github.com/NUS-HPC-AI-Lab/DD-Ranking, README and
``ddranking/metrics/{hard_label,soft_label,aug_robust}.py``) scores a distilled set by

- HLR, hard-label recovery: acc(full data, hard labels) - acc(set, hard labels); lower is better;
- IOR, improvement over random: acc(set, its labels) - acc(random real subset of the same size,
  the same labels); higher is better;
- LRS, label-robust score: squash(w * IOR - (1 - w) * HLR), w = 0.5 by default;
- ARS, augmentation-robust score: squash(w * (acc(set, aug) - acc(random, aug)) +
  (1 - w) * (acc(set, no aug) - acc(random, no aug))), w = 0.5 by default;

with squash(a) = (e^a - e^-1) / (e - e^-1), which maps a in [-1, 1] to [0, 1]; accuracies are
fractions in [0, 1]. DD-Ranking computes the scores per evaluation round and reports their mean
and (population) std; here a round is a repeat: repeat k of every arm starts from the same
weights (``protocol.EvalTask``). The numbers are "DD-Ranking-style", not DD-Ranking's: it tunes
the learning rate per set and trains with its own recipe, we train every arm with ours.

The formulas are pure functions of accuracies (no torch): :func:`hlr`, :func:`ior`, :func:`lrs`,
:func:`ars`; :func:`score_results` finds the arms each score needs among results.json documents.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Mapping, Sequence

DEFAULT_WEIGHT = 0.5  # DD-Ranking's lrs_lambda and ars_lambda defaults (the leaderboard's w)
NAME = "DD-Ranking-style"
KEY = "dd_ranking_style"  # where results.json and summary.json hold them
NOTE = ("DD-Ranking-style scores (formulas and default weight 0.5 of DD-Ranking, arXiv 2505.13300), computed "
        "from this evaluation's own recipe without DD-Ranking's learning-rate tuning: comparable within this "
        "report, not with DD-Ranking's leaderboard. HLR = full(hard) - set(hard), lower is better; IOR = "
        "set - random of equal storage, same labels; LRS and ARS in [0, 1], higher is better.")


def squash(a: float) -> float:
    """(e^a - e^-1) / (e - e^-1): [-1, 1] onto [0, 1], the normalisation of LRS and ARS."""
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def hlr(full_hard: float, set_hard: float) -> float:
    """Hard-label recovery: how far training on the set (hard labels) stays below the full data."""
    return full_hard - set_hard


def ior(set_acc: float, random_acc: float) -> float:
    """Improvement over random: the set against random real images of equal storage, same labels."""
    return set_acc - random_acc


def lrs(ior_value: float, hlr_value: float, weight: float = DEFAULT_WEIGHT) -> float:
    """Label-robust score: squash(weight * IOR - (1 - weight) * HLR)."""
    return squash(weight * ior_value - (1 - weight) * hlr_value)


def ars(set_aug: float, random_aug: float, set_plain: float, random_plain: float,
        weight: float = DEFAULT_WEIGHT) -> float:
    """Augmentation-robust score: squash of the weighted improvements over random with and
    without the training augmentation."""
    return squash(weight * (set_aug - random_aug) + (1 - weight) * (set_plain - random_plain))


def per_round(fn: Callable[..., float], *runs: Sequence[float]) -> dict[str, Any]:
    """``fn`` of each repeat's accuracies (paired by repeat), with mean and population std."""
    values = [fn(*accs) for accs in zip(*runs)]
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "runs": values}


# ---------------------------------------------------------------------------------------------
def arm_key(doc: Mapping[str, Any]) -> tuple:
    """(dataset, method, ipc, labels, augment) of a results.json document's set."""
    s = doc["set"]
    return s["dataset"], s["method"], s["ipc"], s.get("labels", "hard"), s.get("augment", True)


def _lasts(doc: Mapping[str, Any] | None, model: str) -> list[float] | None:
    if doc is None or model not in doc["models"]:
        return None
    return [r["last"] for r in doc["models"][model]["runs"]]


def _full(docs: Sequence[Mapping[str, Any]], dataset: str) -> Mapping[str, Any] | None:
    return next((d for d in docs if d["set"]["kind"] == "full" and d["set"]["dataset"] == dataset
                 and d["set"].get("labels", "hard") == "hard" and d["set"].get("augment", True)), None)


def _model_scores(arms: Mapping[str, list[float] | None], weight: float) -> dict[str, Any]:
    """The scores whose arms are all present (paired by repeat; unequal repeat counts: none)."""
    def ready(*names: str) -> bool:
        runs = [arms[n] for n in names]
        return all(runs) and len({len(r) for r in runs}) == 1

    out: dict[str, Any] = {}
    if ready("full_hard", "set_hard"):
        out["hlr"] = per_round(hlr, arms["full_hard"], arms["set_hard"])
    if ready("set", "random"):
        out["ior"] = per_round(ior, arms["set"], arms["random"])
    if ready("full_hard", "set_hard", "set", "random"):
        out["lrs"] = per_round(lambda f, sh, s, r: lrs(ior(s, r), hlr(f, sh), weight),
                               arms["full_hard"], arms["set_hard"], arms["set"], arms["random"])
    if ready("set", "random", "set_plain", "random_plain"):
        out["ars"] = per_round(lambda s, r, sp, rp: ars(s, r, sp, rp, weight),
                               arms["set"], arms["random"], arms["set_plain"], arms["random_plain"])
    return out


def scored(doc: Mapping[str, Any]) -> bool:
    """Whether a document is an arm that gets scores: a set with augmentation, not random/full."""
    s = doc["set"]
    return s["kind"] != "full" and s["method"] != "random" and s.get("augment", True)


def score_results(docs: Sequence[Mapping[str, Any]], weight: float = DEFAULT_WEIGHT) -> dict[str, dict[str, Any]]:
    """{set label: {"labels", "models": {model: {hlr|ior|lrs|ars: {mean, std, runs}}}}} for every
    scored arm with at least one score; the random arm is the one at the same stored ipc."""
    index = {arm_key(d): d for d in docs}
    out: dict[str, dict[str, Any]] = {}
    for d in filter(scored, docs):
        ds, method, ipc, labels, _ = arm_key(d)
        full = _full(docs, ds)
        models = {}
        for m in d["models"]:
            arms = {"full_hard": _lasts(full, m), "set_hard": _lasts(index.get((ds, method, ipc, "hard", True)), m),
                    "set": _lasts(d, m), "random": _lasts(index.get((ds, "random", ipc, labels, True)), m),
                    "set_plain": _lasts(index.get((ds, method, ipc, labels, False)), m),
                    "random_plain": _lasts(index.get((ds, "random", ipc, labels, False)), m)}
            if found := _model_scores(arms, weight):
                models[m] = found
        if models:
            out[d["set"]["label"]] = {"labels": labels, "weight": weight, "models": models}
    return out


__all__ = ["DEFAULT_WEIGHT", "NAME", "NOTE", "ars", "hlr", "ior", "lrs", "per_round", "score_results", "squash"]
