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
from typing import Any, Mapping, Sequence

from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec, RealData
from idc_ray.engine.plan import resolve
from idc_ray.evaluation.assembly import EvalOptions, SetsRequest, build_sets
from idc_ray.evaluation.executor import Executor, Sequential
from idc_ray.evaluation.protocol import Log, Work, log_stderr, plan_tasks, validation_split
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


def evaluate_sets(sets: Sequence[EvalSet], data: Mapping[tuple, RealData], options: EvalOptions, *,
                  executor: Executor | None = None, log: Log = log_stderr) -> list[dict[str, Any]]:
    """Run every (set, model, repeat) with ``executor`` (default :class:`Sequential` on the
    first CUDA device, else the CPU) and return one ``results.json`` document per set; every
    executor gives the same numbers."""
    work, recipes, held_out = [], {}, {}
    for s in sets:
        real = data[data_key(s.cfg)]
        tasks = plan_tasks(s.cfg, real.spec, s.label, epochs=_epochs(s, real.spec, options), eval_every=options.eval_every)
        recipes[s.label] = {t.model: t.recipe for t in tasks}
        val = _validation(s.cfg, real, held_out)
        work += [Work(t, s.x, s.y, real.test_x, real.test_y, *val) for t in tasks]
    executor = executor or Sequential(log=log)
    started = time.perf_counter()
    records = executor(work)
    wall = time.perf_counter() - started
    results = [results_dict(s, [r for r in records if r.set_label == s.label], recipes[s.label],
                            backend=executor.backend, wall_s=wall, fixed_compute=options.fixed_compute)
               for s in sets]
    attach_scores(results)
    return results


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
