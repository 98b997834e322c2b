"""Quality while a job runs: the accuracy of the stored set at checkpoints of the condensation.

``jobs/condense.py --eval-every K`` evaluates the stored set at outer iteration 0 (the
initialisation) and every K outer iterations (issue 13). Each result is one point
``{model, iteration, seconds, accs, mean, std}``; the points live in ``eval_curve.json`` in the
output folder while the job runs (so a resumed job keeps them), are drawn into ``curve.png``
(accuracy against wall time and against iterations, the initialisation as a horizontal line,
error bars over repeats) and end in the manifest as ``metrics.eval_curve``.
"""

from __future__ import annotations

import json
import statistics
from typing import Any, Iterable, Mapping, Sequence

from idc_ray import storage
from idc_ray.figures import png_figure

CURVE_JSON, CURVE_PNG = "eval_curve.json", "curve.png"
CURVE_FORMAT = "idc-ray/eval-curve"
CURVE_VERSION = 1


def curve_point(model: str, iteration: int, seconds: float, accs: Sequence[float]) -> dict[str, Any]:
    """One point of the curve: ``accs`` are the repeats' last accuracies (evaluation protocol)."""
    if not accs:
        raise ValueError(f"a curve point needs at least one accuracy ({model} at iteration {iteration})")
    return {"model": model, "iteration": int(iteration), "seconds": float(seconds), "accs": [float(a) for a in accs],
            "mean": statistics.fmean(accs), "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0}


def failed_point(model: str, iteration: int, seconds: float, error: str) -> dict[str, Any]:
    """A point whose evaluation failed: no accuracy, the error's first line instead."""
    return {"model": model, "iteration": int(iteration), "seconds": float(seconds), "failed": error}


def merge_points(old: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``old`` and ``new`` points by (model, iteration); a new point replaces an old one at the same key."""
    merged = {(p["model"], p["iteration"]): dict(p) for p in old}
    merged.update({(p["model"], p["iteration"]): dict(p) for p in new})
    return [merged[k] for k in sorted(merged)]


def read_points(folder: str) -> list[dict[str, Any]]:
    """The points a previous run of this output folder recorded (none when there is no curve yet)."""
    uri = storage.join(folder, CURVE_JSON)
    if not storage.exists(uri):
        return []
    doc = json.loads(storage.read_bytes(uri))
    if doc.get("format") != CURVE_FORMAT or doc.get("version") != CURVE_VERSION:
        raise ValueError(f"{uri} is not an idc-ray evaluation curve of version {CURVE_VERSION}; "
                         "remove it or use another --output")
    return [dict(p) for p in doc["points"]]


def write_curve(folder: str, points: Sequence[Mapping[str, Any]]) -> None:
    """Redraw ``curve.png`` and rewrite ``eval_curve.json`` (each all-or-nothing, the JSON last)."""
    write_curve_png(storage.join(folder, CURVE_PNG), points)
    doc = {"format": CURVE_FORMAT, "version": CURVE_VERSION, "points": list(points)}
    storage.atomic_write_bytes(storage.join(folder, CURVE_JSON), json.dumps(doc, indent=1).encode())


def write_curve_png(uri: str, points: Sequence[Mapping[str, Any]]) -> None:
    """Accuracy against wall time (left) and outer iterations (right), one line per test model,
    error bars = std over repeats, the initialisation's (iteration 0) accuracy dashed."""
    with png_figure(uri, 2, figsize=(10, 3.8), sharey=True) as (fig, panels):
        _draw_curve(panels[0], points)
        fig.suptitle("stored set evaluated during condensation (mean ± std over repeats)")


def _draw_curve(axes: Sequence[Any], points: Sequence[Mapping[str, Any]]) -> None:
    for i, model in enumerate(sorted({p["model"] for p in points})):
        mine = sorted((p for p in points if p["model"] == model and "mean" in p), key=lambda p: p["iteration"])
        colour = f"C{i}"
        for ax, key in zip(axes, ("seconds", "iteration")):
            ax.errorbar([p[key] for p in mine], [100 * p["mean"] for p in mine], yerr=[100 * p["std"] for p in mine],
                        marker="o", capsize=3, color=colour, label=model)
            init = next((p for p in mine if p["iteration"] == 0), None)
            if init is not None:
                ax.axhline(100 * init["mean"], color=colour, linestyle="--", linewidth=1,
                           label=f"{model} initialisation")
    axes[0].set_xlabel("wall time of the condensation (s)")
    axes[1].set_xlabel("outer iteration")
    axes[0].set_ylabel("test accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
