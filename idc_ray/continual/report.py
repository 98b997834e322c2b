"""results.json, results.md and continual.png of a continual-learning run (like Figures 7/8)."""

from __future__ import annotations

import json
import statistics
from typing import Any, Mapping, Sequence

from idc_ray.continual.learner import LearnerResult
from idc_ray.figures import png_figure


def summarize(results: Sequence[LearnerResult], stages: int) -> dict[str, dict[str, dict[str, Any]]]:
    """{method: {model: {mean, std (population, over repeats) and runs, per stage, in %}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        entry = out.setdefault(r.method, {}).setdefault(r.model, {"runs": [], "seconds": []})
        entry["runs"].append([100 * a for a in r.accuracy])
        entry["seconds"].append(r.seconds)
    for models in out.values():
        for entry in models.values():
            per_stage = list(zip(*entry["runs"]))
            entry["mean"] = [statistics.fmean(v) for v in per_stage]
            entry["std"] = [statistics.pstdev(v) if len(v) > 1 else 0.0 for v in per_stage]
    return out


def markdown(summary: Mapping[str, Any], seen: Sequence[int], title: str) -> str:
    """One row per (exemplar method, model), one column per stage: mean +- std top-1 (%)."""
    head = "| exemplars | model | " + " | ".join(f"stage {s + 1} ({n} cl.)" for s, n in enumerate(seen)) + " |"
    lines = [f"# {title}", "", "Top-1 test accuracy (%) on all classes seen so far, mean +- std over repeats.", "",
             head, "|" + "---|" * (len(seen) + 2)]
    for method, models in summary.items():
        for model, e in models.items():
            cells = " | ".join(f"{m:.1f} +- {s:.1f}" for m, s in zip(e["mean"], e["std"]))
            lines.append(f"| {method} | {model} | {cells} |")
    return "\n".join(lines) + "\n"


def write_plot(uri: str, summary: Mapping[str, Any], seen: Sequence[int], title: str) -> None:
    """Accuracy against classes seen, one panel per model, one line per method with error bars."""
    models = sorted({m for ms in summary.values() for m in ms})
    with png_figure(uri, len(models), figsize=(5 * len(models), 3.8)) as (_, axes):
        _draw(axes[0], models, summary, seen, title)


def _draw(axes: Sequence[Any], models: list[str], summary: Mapping[str, Any], seen: Sequence[int], title: str) -> None:
    for ax, model in zip(axes, models):
        for method, ms in summary.items():
            if model in ms:
                ax.errorbar(list(seen), ms[model]["mean"], yerr=ms[model]["std"], marker="o", capsize=3, label=method)
        ax.set_title(f"{title}: {model}", fontsize=9)
        ax.set_xlabel("classes seen")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.set_xticks(list(seen))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def to_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=1).encode()
