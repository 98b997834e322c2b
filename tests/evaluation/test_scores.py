"""DD-Ranking-style scores: each formula recomputed by hand from fixed accuracies, and the arms
each score needs found among an evaluation's results.json documents."""

import math

import pytest

from idc_ray.evaluation import scores
from idc_ray.evaluation.report import attach_scores, markdown

E = math.e
SQUASH = lambda a: (E ** a - E ** -1) / (E - E ** -1)  # noqa: E731  DD-Ranking's normalisation, by hand


def test_formulas_by_hand():
    full, set_hard, set_soft, rnd_soft = 0.98, 0.80, 0.90, 0.70
    assert scores.hlr(full, set_hard) == pytest.approx(0.18)
    assert scores.ior(set_soft, rnd_soft) == pytest.approx(0.20)
    # LRS = squash(0.5 * 0.20 - 0.5 * 0.18) = squash(0.01)
    assert scores.lrs(0.20, 0.18) == pytest.approx((math.exp(0.01) - math.exp(-1)) / (E - math.exp(-1)))
    assert scores.lrs(0.20, 0.18, weight=1.0) == pytest.approx(SQUASH(0.20))
    # ARS = squash(0.5 * (0.90 - 0.70) + 0.5 * (0.60 - 0.55)) = squash(0.125)
    assert scores.ars(0.90, 0.70, 0.60, 0.55) == pytest.approx(SQUASH(0.125))
    assert scores.squash(-1) == pytest.approx(0) and scores.squash(1) == pytest.approx(1)
    assert scores.DEFAULT_WEIGHT == 0.5


def _doc(label, method, kind, lasts, labels="hard", augment=True, ipc=1):
    return {"set": {"label": label, "method": method, "kind": kind, "dataset": "d", "ipc": ipc, "labels": labels,
                    "augment": augment, "formed_samples": 4, "stored_samples": 1, "source": "s", "factor": 1},
            "models": {"m": {"runs": [{"best": a, "last": a} for a in lasts], "mean": sum(lasts) / len(lasts),
                             "std": 0.0, "best_mean": 0.0, "best_std": 0.0, "epochs": 1, "wall_s": 0, "device": "cpu"}},
            "recipe": {"lr": 0.01, "batch_size": 64, "augment": "", "cutmix_prob": 0}, "seed": 0, "width": None,
            "backend": "local", "fixed_compute": False}


def test_scores_from_the_arms_of_an_evaluation():
    docs = [_doc("idc", "IDC", "artifact", [0.80, 0.70]), _doc("idc-noaug", "IDC", "artifact", [0.60, 0.50], augment=False),
            _doc("random-ipc1", "random", "baseline", [0.50, 0.40]),
            _doc("random-ipc1-noaug", "random", "baseline", [0.45, 0.35], augment=False),
            _doc("full", "full data", "full", [0.99, 0.97], ipc=400),
            _doc("random-ipc10", "random", "baseline", [0.0, 0.0], ipc=10)]  # another ipc: never the comparison
    attach_scores(docs)
    got = docs[0][scores.KEY]["models"]["m"]
    hlrs, iors = [0.99 - 0.80, 0.97 - 0.70], [0.80 - 0.50, 0.70 - 0.40]
    assert got["hlr"]["runs"] == pytest.approx(hlrs)
    assert got["ior"]["runs"] == pytest.approx(iors)
    assert got["ior"]["mean"] == pytest.approx(0.30) and got["ior"]["std"] == pytest.approx(0.0)
    lrs = [SQUASH(0.5 * i - 0.5 * h) for i, h in zip(iors, hlrs)]
    assert got["lrs"]["mean"] == pytest.approx(sum(lrs) / 2)
    assert got["lrs"]["std"] == pytest.approx(abs(lrs[0] - lrs[1]) / 2)
    assert got["ars"]["runs"] == pytest.approx([SQUASH(0.5 * 0.30 + 0.5 * 0.15)] * 2)
    assert all(scores.KEY not in d for d in docs[1:])  # only the set with augmentation is scored
    md = markdown(docs)
    assert "DD-Ranking-style scores" in md and "| IDC | 1 | hard | m |" in md


def test_soft_label_scores_take_hlr_from_hard_labels_and_ior_from_soft():
    docs = [_doc("idc", "IDC", "artifact", [0.80]), _doc("idc-soft", "IDC", "artifact", [0.90], labels="soft"),
            _doc("random-soft", "random", "baseline", [0.85], labels="soft"), _doc("full", "full data", "full", [0.99])]
    attach_scores(docs)
    soft = docs[1][scores.KEY]
    assert soft["labels"] == "soft"
    assert soft["models"]["m"]["hlr"]["mean"] == pytest.approx(0.19)  # full(hard) - IDC(hard)
    assert soft["models"]["m"]["ior"]["mean"] == pytest.approx(0.05)  # IDC(soft) - random(soft)
    assert "ars" not in soft["models"]["m"]  # no arms without augmentation
    assert set(docs[0][scores.KEY]["models"]["m"]) == {"hlr"}  # hard: no hard random arm given


def test_no_scores_without_the_arms():
    docs = [_doc("idc", "IDC", "artifact", [0.8]), _doc("random-ipc1", "random", "baseline", [0.5, 0.4])]
    attach_scores(docs)  # repeat counts differ: not paired, no score
    assert scores.KEY not in docs[0]
    assert "DD-Ranking-style" not in markdown(docs)
