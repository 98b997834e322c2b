"""The ranked results of a finished sweep: ``tune_results.md`` (one row per trial, best first)
and ``best_config.yaml`` (the best trial's exact config, which jobs/condense.py reruns)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from idc_ray.tune.space import TuneSpace, plain


@dataclass
class TrialRow:
    """One trial of a finished sweep, as the ranked table shows it."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.error is None and bool(self.metrics.get("final"))

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        if self.completed:
            return "completed"
        if "stage" in self.metrics:
            return f"stopped at stage {self.metrics['stage']}/{self.metrics.get('stages', '?')}"
        return "no report"


def rank_trials(rows: Sequence[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """Completed trials by the metric, then trials stopped early (latest stage first), then errors."""
    sign = -1.0 if mode == "max" else 1.0

    def order(r: TrialRow) -> tuple:
        value = r.metrics.get(metric)
        value = sign * float(value) if isinstance(value, (int, float)) else math.inf
        group = 0 if r.completed else 2 if r.error is not None or "stage" not in r.metrics else 1
        return group, -int(r.metrics.get("stage", 0)) if group == 1 else 0, value, r.trial_id

    return sorted(rows, key=order)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, Mapping):  # a section's values, swept together
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|")


def results_markdown(ranked: Sequence[TrialRow], *, title: str, space: TuneSpace, preset: str, scheduler: str,
                     storage_uri: str, best_config: str | None) -> str:
    """The ranked table (``tune_results.md``): one row per trial, best first."""
    keys = [p.key for p in space.params]
    lines = [
        f"# Tune sweep `{title}`",
        "",
        f"Space `{space.source}` on preset `{preset}`: {len(ranked)} trials, scheduler {scheduler}, "
        f"metric `{space.metric}` ({space.mode}). Results under `{storage_uri}`.",
        "",
        "`accuracy` is the mean test accuracy (last epoch, in [0, 1]) over `eval.models` x `eval.repeat` of the "
        "final evaluation; a trial stopped early shows its last interim evaluation (1 repeat, fewer epochs). "
        "`loss` is the mean matching loss of the last outer iteration.",
        "",
        "| rank | trial | status | accuracy | loss | outer | " + " | ".join(f"`{k}`" for k in keys) + " | artifact |",
        "|" + "---|" * (7 + len(keys)),
    ]
    for i, r in enumerate(ranked, 1):
        m = r.metrics
        acc = m.get("accuracy")
        cells = [str(i), r.trial_id, r.status, f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else "-",
                 _cell(m["loss"]) if isinstance(m.get("loss"), (int, float)) else "-", _cell(m.get("outer", "-")),
                 *(_cell(r.params.get(k, "-")) for k in keys), _cell(m.get("artifact", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best_config:
        lines.append(f"Best config: `{best_config}` (trial {ranked[0].trial_id}); rerun it with "
                     f"`python jobs/condense.py --config {best_config} --output runs/best`.")
    else:
        lines.append("No trial completed every stage, so no best config was written.")
    return "\n".join(lines) + "\n"


def best_config_text(config_yaml: str, row: TrialRow, *, sweep: str, metric: str) -> str:
    """``best_config.yaml``: the best trial's exact config (its artifact's config.yaml) with a header."""
    value = row.metrics.get(metric)
    header = [
        f"# Best trial {row.trial_id} of Tune sweep {sweep}: {metric} {_cell(value)}",
        f"# artifact: {row.metrics.get('artifact')}",
        f"# swept values: {json.dumps({k: plain(v) for k, v in row.params.items()}, default=str)}",
        "# rerun: python jobs/condense.py --config best_config.yaml --output runs/best",
    ]
    return "\n".join(header) + "\n" + config_yaml


__all__ = ["TrialRow", "best_config_text", "rank_trials", "results_markdown"]
