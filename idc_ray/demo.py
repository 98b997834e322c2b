"""The `make demo` comparison on the embedded MNIST subset: condensed vs its own initialisation
vs random real images, each trained from scratch with the same recipe and networks."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from idc_ray import storage
from idc_ray.artifacts import load_condensed
from idc_ray.config import IDCConfig, apply_overrides
from idc_ray.data import ClassStore, load_dataset
from idc_ray.engine.matcher import stack_stored
from idc_ray.engine.plan import build_plan, initial_synset
from idc_ray.backends import backend_for
from idc_ray.cli import ProgressPrinter
from idc_ray.run.backend import Backend, RunOptions
from idc_ray.run.job import Run, condense_to
from idc_ray.evaluation.protocol import evaluate_set, form_stored, random_real


@dataclass
class Row:
    ipc: int
    name: str
    mean: float
    std: float
    runs: int


def compare(cfg: IDCConfig, out: Path, backend: Backend, options: RunOptions, *, repeat: int | None = None,
            log=print) -> list[Row]:
    """Condense with ``cfg`` into ``out`` and score the condensed set, its initialisation and
    ``ipc`` random real images per class with the config's evaluation protocol."""

    data = load_dataset(cfg.data.dataset, cfg.data.data_uri)
    ipc, model = cfg.synset.ipc, cfg.eval.models[0]
    log(f"[ipc {ipc}] condensing {cfg.data.dataset} ({cfg.schedule.outer_iters} x {cfg.schedule.inner_iters} iterations)")
    printer = ProgressPrinter(cfg.schedule.outer_iters, cfg.schedule.inner_iters)
    stored, stored_labels, _ = load_condensed(condense_to(Run(cfg, str(out), backend, options, on_progress=printer)))
    store = ClassStore(data.train_x, data.train_y)
    init, labels = stack_stored(initial_synset(build_plan(cfg, data.spec).match, store, store.classes))
    random_x, random_y = random_real(data, ipc, cfg.schedule.seed)
    sets = {
        f"IDC (factor {cfg.synset.factor})": form_stored(cfg, data.spec, stored, stored_labels),
        "its initialisation": form_stored(cfg, data.spec, init, labels),
        "random real": (random_x.flatten(0, 1), random_y),
    }
    rows = []
    for name, (x, y) in sets.items():
        started = time.perf_counter()
        score = evaluate_set(cfg, data, x, y, models=(model,), repeat=repeat, device=backend.device)[model]
        rows.append(Row(ipc, name, score.mean, score.std, len(score.last)))
        log(f"[ipc {ipc}] {name}: {100 * score.mean:.1f}% ({len(x)} training images, {time.perf_counter() - started:.0f}s)")
    return rows


def accuracy_cell(row: Row) -> str:
    """``mean ± std (N runs)``; one run has no spread to show: ``mean (1 run)``."""
    if row.runs == 1:
        return f"{100 * row.mean:.1f} (1 run)"
    return f"{100 * row.mean:.1f} ± {100 * row.std:.1f} ({row.runs} runs)"


def table(rows: list[Row], model: str) -> str:
    lines = [f"| ipc | training set | {model} test accuracy (mean ± std over runs) |", "|---|---|---|"]
    lines += [f"| {r.ipc} | {r.name} | {accuracy_cell(r)} |" for r in rows]
    return "\n".join(lines)


def run_demo(cfg: IDCConfig, out: str | Path, *, device: str = "auto", ipc10_repeat: int = 1,
             options: RunOptions | None = None, address: str | None = None) -> str:
    """Both comparisons; condensation on Ray (local cluster unless ``address``) by default."""
    out = Path(out)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    options = options or RunOptions(backend="ray")
    backend = backend_for(options, address=address, device=device, log=log)
    cfg10 = apply_overrides(cfg, {"synset.ipc": 10})
    # one session for both condensations (on Ray: open the dashboard while the demo runs)
    with backend.session():
        rows = compare(cfg, out / "ipc1", backend, options, log=log)
        rows += compare(cfg10, out / "ipc10", backend, options, repeat=ipc10_repeat, log=log)
    text = table(rows, cfg.eval.models[0])
    storage.atomic_write_bytes(out / "results.json", json.dumps([r.__dict__ for r in rows], indent=2).encode())
    storage.atomic_write_bytes(out / "results.md", (text + "\n").encode())
    return text
