"""Evaluation reports: ``results.json`` (machine-readable), ``results.md`` (a table like the
paper's) and ``curves.png`` (test accuracy over epochs per model; accuracy vs ipc when several
sets are compared), and where they go: :func:`report_folder`, and :func:`write_reports` (each
set's report, then the combined one). Files are written under temporary names and renamed,
``results.json`` (or ``summary.json`` for several sets) last and after deleting the old one, so
a reader that finds it also finds the rest of the report.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any, Mapping, Sequence

from idc_ray import __version__, storage
from idc_ray.figures import png_figure
from idc_ray.evaluation import scores as ddr
from idc_ray.evaluation.protocol import RunRecord, TrainRecipe
from idc_ray.evaluation.sets import EvalSet, is_plain_file

RESULTS_JSON, RESULTS_MD, CURVES_PNG, SUMMARY_JSON = "results.json", "results.md", "curves.png", "summary.json"
METRIC = ("top-1 test accuracy in [0, 1], tested where the published train.py tests: every epochs // 4 epochs "
          "(1/4, 1/2, 3/4 and all of the epochs when 4 divides them). mean/std: population statistics over "
          "repeats of 'last', the accuracy at the last of those tests (the final epoch when 4 divides the "
          "epochs). best_mean/best_std: of 'best', the highest of those tests, i.e. a checkpoint SELECTED ON "
          "THE TEST SET, as the published test.py prints it; an optimistic number, reported for comparison "
          "with the paper only. Extra evaluations for the curves (eval_every) never enter best or last.")
METRIC_VAL = METRIC.split(" best_mean/best_std:")[0] + (
    " best_mean/best_std: of 'best', the test accuracy at the one of those tests where the accuracy on "
    "held-out real training images (eval.val_per_class per class) is highest: selected without the test set "
    "(eval.best_on: val). Extra evaluations for the curves (eval_every) never enter best or last.")
BEST_NOTE = {
    "test": ("best = highest test accuracy at 1/4, 1/2, 3/4 and all of the epochs, selected on the test set "
             "as the published test.py reports it (optimistic); last = accuracy at the end, no selection."),
    "val": ("best = test accuracy at the one of 1/4, 1/2, 3/4 and all of the epochs with the highest accuracy on "
            "held-out real training images (eval.best_on: val); last = accuracy at the end, no selection."),
}


def _stats(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def results_dict(s: EvalSet, records: Sequence[RunRecord], recipes: Mapping[str, TrainRecipe], *, backend: str,
                 wall_s: float, fixed_compute: bool) -> dict[str, Any]:
    """The ``results.json`` document of one set; ``recipes`` maps each test model to its recipe.

    ``models`` holds exactly ``mean``, ``std`` (of the last accuracies), ``best_mean``,
    ``best_std`` (of the best accuracies, selected on the test set: see ``METRIC``), ``runs``
    ([{best, last}] per repeat), ``epochs``, ``wall_s`` (training seconds summed over the
    repeats) and ``device`` per test model; the rest (set, recipe of the first model, config,
    curves, per-task placement) is context for readers and plots.
    """
    by_model: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_model[r.model].append(r)
    models, curves = {}, {}
    for name, runs in by_model.items():
        runs = sorted(runs, key=lambda r: r.repeat)
        mean, std = _stats([r.last for r in runs])
        best_mean, best_std = _stats([r.best for r in runs])
        models[name] = {
            "mean": mean,
            "std": std,
            "best_mean": best_mean,
            "best_std": best_std,
            "runs": [{"best": r.best, "last": r.last} for r in runs],
            "epochs": recipes[name].epochs,
            "wall_s": round(sum(r.wall_s for r in runs), 3),
            "device": ", ".join(sorted({r.device for r in runs})),
        }
        curves[name] = [[list(point) for point in r.history] for r in runs]
    return {
        "models": models,
        "set": s.describe(),
        "metric": METRIC if s.cfg.eval.best_on == "test" else METRIC_VAL,
        "best_selected_on": s.cfg.eval.best_on,
        "recipe": asdict(next(iter(recipes.values()))),
        "fixed_compute": fixed_compute,
        "seed": s.cfg.schedule.seed,
        "width": s.cfg.eval.width,
        "backend": backend,
        "wall_s": round(wall_s, 3),
        "curves": curves,
        "tasks": [{"model": r.model, "repeat": r.repeat, "device": r.device, "threads": r.threads, "node": r.node,
                   "wall_s": round(r.wall_s, 3)} for r in records],
        "config": s.cfg.to_dict(),
        "code_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _cell(m: Mapping[str, Any]) -> str:
    return f"{_pct(m['mean'], m['std'])} (best {100 * m['best_mean']:.2f})"


def arm_name(s: Mapping[str, Any]) -> str:
    """The row name of a set: its method, with soft labels and without augmentation said."""
    extra = [t for t, on in (("soft labels", s.get("labels") == "soft"), ("no augmentation", not s.get("augment", True)))
             if on]
    return s["method"] + (f" ({', '.join(extra)})" if extra else "")


def table(results: Sequence[Mapping[str, Any]]) -> str:
    """The paper-style table: one row per set, one column per test model, last mean ± std (%)
    and, in brackets, the mean of the best (selected on the test set, as the published test.py)."""
    models = list(dict.fromkeys(m for r in results for m in r["models"]))
    lines = [f"| dataset | ipc | training set | formed / stored | {' | '.join(models)} |",
             "|---|---|---|---|" + "---|" * len(models)]
    for r in results:
        s = r["set"]
        cells = [_cell(r["models"][m]) if m in r["models"] else "" for m in models]
        lines.append(f"| {s['dataset']} | {s['ipc']} | {arm_name(s)} | {s['formed_samples']} / {s['stored_samples']} | "
                     f"{' | '.join(cells)} |")
    return "\n".join(lines)


def attach_scores(results: Sequence[dict[str, Any]]) -> None:
    """Add ``dd_ranking_style`` (:func:`~idc_ray.evaluation.scores.score_results`) to each
    document that has scores among ``results`` (one evaluation's documents)."""
    for label, found in ddr.score_results(results).items():
        doc = next(r for r in results if r["set"]["label"] == label)
        doc[ddr.KEY] = {**found, "note": ddr.NOTE}


def _score_cell(m: Mapping[str, Any], name: str) -> str:
    return f"{100 * m[name]['mean']:.2f} ± {100 * m[name]['std']:.2f}" if name in m else "–"


def score_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The DD-Ranking-style scores of every scored set and model ("" when none): HLR and IOR in
    accuracy points, LRS and ARS in [0, 1] as percentages, as DD-Ranking prints them."""
    rows = [(r, name, m) for r in results for name, m in r.get(ddr.KEY, {}).get("models", {}).items()]
    if not rows:
        return ""
    lines = [f"## {ddr.NAME} scores", "", ddr.NOTE, "",
             "| training set | ipc | labels | model | HLR (points) | IOR (points) | LRS (%) | ARS (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r, name, m in rows:
        s = r["set"]
        lines.append(f"| {s['method']} | {s['ipc']} | {s.get('labels', 'hard')} | {name} | "
                     + " | ".join(_score_cell(m, k) for k in ("hlr", "ior", "lrs", "ars")) + " |")
    return "\n".join(lines + [""])


def markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """``results.md``: the table, the DD-Ranking-style scores, then per-run details and the
    recipe of each set."""
    parts = ["# Evaluation", "", table(results), "",
             "Top-1 test accuracy (%) of each test model trained from scratch on the set: mean ± std over the "
             "repeats of the last accuracy, and in brackets the mean of the best. "
             + " ".join(BEST_NOTE[b] for b in dict.fromkeys(r.get("best_selected_on", "test") for r in results)), ""]
    parts += [score_table(results)] if score_table(results) else []
    for r in results:
        s, rec = r["set"], r["recipe"]
        parts += [f"## {s['label']}: {s['method']} ({s['source']})", "",
                  f"Epochs per model below{' (fixed compute)' if r['fixed_compute'] else ''}; "
                  f"lr {rec['lr']:g}, weight decay {rec.get('weight_decay', 5e-4):g}, batch {rec['batch_size']}, "
                  f"augmentation `{rec['augment'] or 'none'}`"
                  f"{' (one of crop/scale/rotate per batch)' if rec['augment'] and rec.get('aug_single', True) else ''}, "
                  f"loader augmentation `{rec.get('loader_aug', 'none')}`, CutMix p {rec['cutmix_prob']:g}, "
                  f"seed {r['seed']}, width {r['width'] or 'default'}, backend {r['backend']}.", "",
                  *_storage_lines(s), *_soft_label_lines(r),
                  "| model | last (%) per run | best (%) per run | epochs | device | train s |", "|---|---|---|---|---|---|"]
        for name, m in r["models"].items():
            lasts = ", ".join(f"{100 * run['last']:.2f}" for run in m["runs"])
            bests = ", ".join(f"{100 * run['best']:.2f}" for run in m["runs"])
            parts.append(f"| {name} | {lasts} | {bests} | {m['epochs']} | {m['device']} | {m['wall_s']:.0f} |")
        parts.append("")
    return "\n".join(parts)


def _storage_lines(s: Mapping[str, Any]) -> list[str]:
    """What an artifact stores, as the paper's Table 9 counts it: its stored values plus a learned
    formation's upsampler parameters."""
    st = s.get("storage")
    if not st:
        return []
    total = st["stored_pixels"] + st["upsampler_parameters"]
    return [f"Storage: {st['stored_pixels']:,} stored pixel values + {st['upsampler_parameters']:,} upsampler "
            f"parameters = {total:,} numbers ({s['ipc']} stored images per class).", ""]


def _soft_label_lines(r: Mapping[str, Any]) -> list[str]:
    """The soft labels' teacher and what storing them would cost, for results.md."""
    soft = r.get("soft_labels")
    if not soft:
        return []
    teachers = ", ".join(f"{m} {_size(n)}" for m, n in soft["teacher_bytes"].items())
    return [f"Soft labels: {soft['teacher']} ({teachers}), temperature {soft['temperature']:g}. Stored per image "
            f"they would take {_size(soft['label_bytes_if_stored'])} (formed images x classes x 4 bytes), "
            f"next to {_size(soft['image_bytes_stored'])} of stored images (float32).", ""]


def _size(n: int) -> str:
    """Bytes as a reader compares them: 400 B, 313.6 kB, 1.60 MB (decimal units)."""
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def write_curves_png(uri: str, results: Sequence[Mapping[str, Any]]) -> None:
    """Test accuracy over epochs (mean over repeats) per model, one line per set; with sets at
    several ipc, a last panel of accuracy vs ipc per (training set method, model)."""
    models = list(dict.fromkeys(m for r in results for m in r["models"]))
    ipcs = sorted({r["set"]["ipc"] for r in results})
    panels = len(models) + (1 if len(ipcs) > 1 else 0)
    with png_figure(uri, panels, figsize=(5 * panels, 4)) as (_, axes):
        _draw_curves(axes[0], models, ipcs, results)


def _draw_curves(axes: Sequence[Any], models: list[str], ipcs: list[int], results: Sequence[Mapping[str, Any]]) -> None:
    for ax, name in zip(axes, models):
        for r in results:
            runs = r["curves"].get(name)
            if not runs or not runs[0]:
                continue
            epochs = [e for e, _ in runs[0]]
            mean = [100 * statistics.fmean(run[i][1] for run in runs) for i in range(len(epochs))]
            ax.plot(epochs, mean, marker="." if len(epochs) < 30 else None, label=r["set"]["label"])
        ax.set(title=f"{name}: test accuracy", xlabel="epoch", ylabel="top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if len(ipcs) > 1:
        ax = axes[-1]
        lines: dict[tuple[str, str], list[tuple[int, float, float]]] = defaultdict(list)
        for r in results:
            for name, m in r["models"].items():
                lines[(r["set"]["method"], name)].append((r["set"]["ipc"], 100 * m["mean"], 100 * m["std"]))
        for (method, name), points in lines.items():
            points.sort()
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                        capsize=3, label=f"{method}, {name}")
        ax.set(title="accuracy vs images per class", xlabel="ipc (stored)", ylabel="top-1 (%)", xscale="log")
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")


def write_report(folder: str, results: Sequence[Mapping[str, Any]], *, index: str = RESULTS_JSON) -> str:
    """Write results.md and curves.png, then ``index`` LAST (after deleting the old one): the
    set's results.json for one set, summary.json (an index of per-set reports) for several."""
    target = storage.join(folder, index)
    storage.remove(target)  # from here on, no reader pairs an old index with new files
    storage.atomic_write_bytes(storage.join(folder, RESULTS_MD), markdown(results).encode())
    write_curves_png(storage.join(folder, CURVES_PNG), results)
    if index == RESULTS_JSON:
        (document,) = results
    else:
        document = {"sets": [{"label": r["set"]["label"], "results": f"{r['set']['label']}/{RESULTS_JSON}",
                              **{k: r["set"][k] for k in ("method", "dataset", "ipc", "factor", "source")},
                              "models": {n: {k: m[k] for k in ("mean", "std", "best_mean", "best_std")}
                                         for n, m in r["models"].items()},
                              **({ddr.KEY: r[ddr.KEY]} if ddr.KEY in r else {})}
                             for r in results], "metric": METRIC, "code_version": __version__}
    storage.atomic_write_bytes(target, json.dumps(document, indent=1).encode())
    return target


def report_folder(sets: Sequence[EvalSet] | int, output: str | None, condensed: Sequence[str] = ()) -> str:
    """Where the report goes: ``output``, else the folder of a single artifact. Several sets, a
    baseline or a plain file need ``output`` (raises ValueError before any work)."""
    count = sets if isinstance(sets, int) else len(sets)
    if output:
        return output
    if count == 1 and len(condensed) == 1 and not is_plain_file(condensed[0]):
        uri = condensed[0].rstrip("/")
        return uri[: -len("/manifest.json")] if uri.endswith("/manifest.json") else uri
    raise ValueError("--output DIR is required for baselines, plain tensor files and several sets "
                     "(a single artifact's report goes into its own folder)")


def write_reports(folder: str, results: Sequence[Mapping[str, Any]], extra: Mapping[str, bytes] | None = None) -> str:
    """One set: results.md, curves.png, results.json in ``folder``. Several: each set's report in
    ``folder/<label>/``, then the combined results.md and curves.png (with accuracy vs ipc) and
    summary.json last. ``extra`` files (the herding feature network) get their sha256 sidecar,
    checked when read back (``--herding-net``). Returns the URI of the index file."""
    for name, payload in (extra or {}).items():
        storage.write_checked(storage.join(folder, name), payload)
    if len(results) == 1:
        return write_report(folder, results)
    storage.remove(storage.join(folder, SUMMARY_JSON))
    for r in results:
        write_report(storage.join(folder, r["set"]["label"]), [r])
    return write_report(folder, results, index=SUMMARY_JSON)
