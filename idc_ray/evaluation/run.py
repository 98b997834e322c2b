"""Evaluate training sets with the paper's protocol and write the reports: the orchestration
behind ``jobs/evaluate.py`` and :func:`evaluate_artifact` (for ``jobs/condense.py --eval-models``).

Order of work, so bad input fails in one line before anything is trained or written: assemble
the sets (:mod:`~idc_ray.evaluation.assembly`: read manifests and files, check every test model
against the data's shape, load the real data, build baselines); run every (set, model, repeat)
with the executor handed in (:class:`~idc_ray.evaluation.executor.Sequential` in this process;
the Ray executor, one task each, lives in ``idc_ray.distributed.evaluation``); write the reports
(:mod:`~idc_ray.evaluation.report`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec, RealData
from idc_ray.engine.plan import resolve
from idc_ray.evaluation.assembly import EvalOptions, SetsRequest, build_sets
from idc_ray.evaluation.executor import Executor, Sequential
from idc_ray.evaluation import full
from idc_ray.evaluation.protocol import Log, RunRecord, Work, log_stderr, plan_tasks, validation_split
from idc_ray.evaluation.report import attach_scores, report_folder, results_dict, write_reports
from idc_ray.evaluation.sets import EvalSet, data_key


def _epochs(s: EvalSet, spec: DatasetSpec, options: EvalOptions) -> int | None:
    """None: each test model's epoch rule. ``--fixed-compute``: the set's epochs divided by the
    formed samples per stored sample, truncated, for every model (the published ``same_compute``:
    int(epochs / f^2), and no DenseNet rule)."""
    if not options.fixed_compute:
        return None
    return max(1, int(resolve(s.cfg, spec).eval_epochs / s.formed_per_stored))


def _validation(cfg: IDCConfig, real: RealData, cache: dict) -> tuple:
    """() for the published choice of ``best`` on the test set; (val_x, val_y) held out of the
    real training split for ``eval.best_on: val`` (one split per data, size and seed)."""
    if cfg.eval.best_on != "val":
        return ()
    key = (data_key(cfg), cfg.eval.val_per_class, cfg.schedule.seed)
    if key not in cache:
        cache[key] = validation_split(real, cfg.eval.val_per_class, cfg.schedule.seed)
    return cache[key]


def _work(s: EvalSet, real: RealData, options: EvalOptions, held_out: dict) -> list[Work]:
    tasks = plan_tasks(s.cfg, real.spec, s.label, epochs=_epochs(s, real.spec, options), eval_every=options.eval_every,
                       augment=s.augment, labels=s.labels, temperature=options.temperature, keep_model=s.kind == "full")
    val = _validation(s.cfg, real, held_out)
    return [Work(t, s.x, s.y, real.test_x, real.test_y, *val) for t in tasks]


def _full_arm(work: list[Work], keys: list[tuple], executor: Executor, log: Log) -> list[RunRecord]:
    """The full-data arm's records: from the cache (:mod:`~idc_ray.evaluation.full`), the rest
    run with ``executor`` and cached for the next report."""
    records = [full.load_cached(w.task, k) for w, k in zip(work, keys)]
    hits = sum(r is not None for r in records)
    if hits:
        log(f"[eval] full data: {hits} of {len(work)} runs reused from the cache {full.cache_file(work[0].task, keys[0]).parent}")
    todo = [i for i, r in enumerate(records) if r is None]
    for i, r in zip(todo, executor([work[i] for i in todo]) if todo else []):
        full.store(work[i].task, keys[i], r)
        records[i] = r
    return records


def _with_teachers(work: list[Work], teachers: Mapping[tuple, RunRecord]) -> list[Work]:
    """Soft-label work gets the full-data model of its (data, model), repeat 1, as its teacher."""
    def teacher(k: tuple, model: str) -> bytes | None:
        record = teachers.get((k, model))
        return None if record is None else record.state

    return [replace(w, teacher=teacher(k, w.task.model)) if w.task.labels == "soft" else w for w, k in work]


def evaluate_sets(sets: Sequence[EvalSet], data: Mapping[tuple, RealData], options: EvalOptions, *,
                  executor: Executor | None = None, log: Log = log_stderr) -> list[dict[str, Any]]:
    """Run every (set, model, repeat) with ``executor`` (default :class:`Sequential` on the
    first CUDA device, else the CPU) and return one ``results.json`` document per set; every
    executor gives the same numbers. The full-data arm runs first (or comes from its cache):
    its models are the teachers of the soft-label arms."""
    held_out: dict = {}
    work = {s.label: _work(s, data[data_key(s.cfg)], options, held_out) for s in sets}
    recipes = {label: {w.task.model: w.task.recipe for w in ws} for label, ws in work.items()}
    executor = executor or Sequential(log=log)
    started = time.perf_counter()
    full_sets = [s for s in sets if s.kind == full.KIND]
    full_work = [(w, data_key(s.cfg)) for s in full_sets for w in work[s.label]]
    records = _full_arm([w for w, _ in full_work], [k for _, k in full_work], executor, log)
    teachers = {(k, w.task.model): r for (w, k), r in zip(full_work, records) if w.task.repeat == 0}
    rest = [(w, data_key(s.cfg)) for s in sets if s.kind != full.KIND for w in work[s.label]]
    records += executor(_with_teachers(rest, teachers)) if rest else []
    wall = time.perf_counter() - started
    results = [results_dict(s, [r for r in records if r.set_label == s.label], recipes[s.label],
                            backend=executor.backend, wall_s=wall, fixed_compute=options.fixed_compute)
               for s in sets]
    for s, doc in zip(sets, results):
        if s.labels == "soft":
            doc["soft_labels"] = soft_label_costs(s, data[data_key(s.cfg)].spec.num_classes, options.temperature,
                                                  teachers, data_key(s.cfg))
    attach_scores(results)
    return results


def soft_label_costs(s: EvalSet, num_classes: int, temperature: float, teachers: Mapping[tuple, RunRecord],
                     key: tuple) -> dict[str, Any]:
    """What the soft labels of set ``s`` would cost if stored (one float32 per formed image and
    class), next to its stored images (float32), and the size of the teachers' weights."""
    per_image = s.x[0].numel() if len(s.x) else 0
    return {"teacher": "the full-data arm's model of the same architecture, repeat 1", "temperature": temperature,
            "loss": "KL(teacher || student) at the temperature, times temperature^2, on each augmented batch",
            "label_bytes_if_stored": len(s.x) * num_classes * 4, "image_bytes_stored": s.stored * per_image * 4,
            "teacher_bytes": {m: len(r.state or b"") for (k, m), r in teachers.items() if k == key}}


def evaluate_artifact(uri: str, *, models: Sequence[str] | None = None, repeat: int | None = None,
                      epochs: int | None = None, fixed_compute: bool = False, output: str | None = None,
                      executor: Executor | None = None, eval_every: int | None = None,
                      log: Log = log_stderr) -> dict[str, Any]:
    """Evaluate one condensed artifact with the protocol of its own config and write its report
    (results.json, results.md, curves.png) into ``output`` or the artifact's folder.

    Meant for ``jobs/condense.py --eval-models``, which hands in the Ray executor on the Ray
    backend (every (model, repeat) a Ray task reporting the ``idc_eval_accuracy`` gauge);
    ``executor`` defaults to :class:`Sequential`.

    Returns:
        The results.json document: ``doc["models"][name]["mean"]`` is the mean top-1 in [0, 1].
    Raises:
        ValueError (one line) for an unknown model, a model that cannot take the data's shape,
        a missing or damaged artifact, or repeat/epochs < 1; nothing is written then.
    """
    options = EvalOptions(models=tuple(models) if models else None, repeat=repeat, epochs=epochs,
                          fixed_compute=fixed_compute, eval_every=eval_every)
    request = SetsRequest(condensed=(uri,))
    folder = report_folder(1, output, request.condensed)
    sets, data, _ = build_sets(request, options, log=log)
    results = evaluate_sets(sets, data, options, executor=executor, log=log)
    write_reports(folder, results)
    return results[0]


__all__ = ["evaluate_artifact", "evaluate_sets"]
