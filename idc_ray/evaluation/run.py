"""Evaluate training sets with the paper's protocol and write the reports: the function behind
``jobs/evaluate.py`` and :func:`evaluate_artifact` (for ``jobs/condense.py --eval-models``).

Order of work, so bad input fails in one line before anything is trained or written: read the
sets' manifests/files and check every test model against the data's shape; load the real data;
build baselines (herding trains its feature network); run every (set, model, repeat) with the
executor handed in (:class:`Sequential` here, one after another; the Ray executor, one task each,
lives in ``idc_ray.distributed.evaluation``); write the reports.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

from idc_ray import storage
from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec, RealData, get_spec, load_dataset
from idc_ray.device import resolve_device
from idc_ray.engine.plan import resolve
from idc_ray.evaluation import baselines as bl
from idc_ray.evaluation.protocol import (RunRecord, Work, check_models, done_line, plan_tasks, progress_line, run_task,
                                         validation_split)
from idc_ray.evaluation.report import SUMMARY_JSON, results_dict, write_report
from idc_ray.evaluation.sets import (EvalSet, artifact_set, base_config, baseline_eval_set, file_set, is_plain_file,
                                     unique_labels, with_overrides)

HERDING_NET = "herding_net.pt"
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate (the same for every set, so the comparison is fair)."""

    models: tuple[str, ...] | None = None  # None: each set's eval.models
    repeat: int | None = None  # None: each set's eval.repeat
    epochs: int | None = None  # None: the dataset rule (1000; ImageNet by formed samples per class)
    fixed_compute: bool = False  # epochs / (formed per stored sample), the paper's Table 2
    eval_every: int | None = None  # test also every N epochs for the curves; None: epochs // 20; 0: report epochs only
    seed: int | None = None  # None: each set's schedule.seed
    overrides: tuple[str, ...] = ()  # --set section.key=value for every set's config

    def check(self) -> None:
        if self.repeat is not None and self.repeat < 1:
            raise ValueError(f"--repeat must be at least 1, got {self.repeat}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.eval_every is not None and self.eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0, got {self.eval_every}")
        if self.models is not None and not self.models:
            raise ValueError("--models needs at least one model name, e.g. convnet3,resnet10")

    def changes(self) -> dict[str, Any]:
        """The options that are config fields, as dotted keys (recorded in each set's config)."""
        keys = {"eval.models": self.models, "eval.repeat": self.repeat, "eval.epochs": self.epochs,
                "schedule.seed": self.seed}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in keys.items() if v is not None}


@dataclass(frozen=True)
class SetsRequest:
    """What to evaluate: condensed sets and/or baselines."""

    condensed: tuple[str, ...] = ()  # artifact folders/URIs or plain torch files
    baselines: tuple[str, ...] = ()  # random, herding
    ipcs: tuple[int, ...] = ()  # images per class of each baseline
    dataset: str | None = None  # baselines/plain files (default: the first artifact's)
    data_uri: str | None = None  # the real data (overrides the artifacts' recorded data_uri too)
    preset: str | None = None  # config of baselines/plain files (default: the first artifact's)
    config: str | None = None
    factor: int | None = None  # plain files: uniform formation factor (default identity)
    normalized: bool = False  # plain files: data normalised with the dataset's mean/std
    herding_net: str | None = None  # load the herding feature network instead of training it
    herding_epochs: int = 20  # epochs of the herding feature network on the real data

    @property
    def count(self) -> int:
        return len(self.condensed) + len(self.baselines) * len(self.ipcs)

    def check(self) -> None:
        if not self.condensed and not self.baselines:
            raise ValueError("nothing to evaluate: pass --condensed URI [URI ...] and/or --baseline random|herding --ipc N")
        unknown = [b for b in self.baselines if b not in bl.BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline '{unknown[0]}'; choose one of {', '.join(bl.BASELINES)}")
        if self.baselines and not self.ipcs:
            raise ValueError("--baseline needs --ipc N (images per class)")
        if any(i < 1 for i in self.ipcs):
            raise ValueError(f"--ipc must be at least 1, got {min(self.ipcs)}")
        if "herding" in self.baselines and not self.herding_net and self.herding_epochs < 1:
            raise ValueError(f"--herding-epochs must be at least 1, got {self.herding_epochs}")
        if self.factor is not None and self.factor < 1:
            raise ValueError(f"--factor must be at least 1, got {self.factor}")
        plain = [u for u in self.condensed if is_plain_file(u)]
        named = self.dataset or self.preset or self.config or len(plain) < len(self.condensed)
        if (self.baselines or plain) and not named:
            raise ValueError("baselines and plain tensor files need --dataset (or --preset, or an artifact to take it from)")


def _data_key(cfg: IDCConfig) -> tuple[str, str | None]:
    return cfg.data.dataset, cfg.data.data_uri


def build_sets(request: SetsRequest, options: EvalOptions, *, device: str = "cpu",
               log: Log = _stderr) -> tuple[list[EvalSet], dict, dict[str, bytes]]:
    """The sets of ``request`` (formed, configs resolved), the real data they are tested on,
    keyed by (dataset, data_uri), and extra files to write (the herding feature network).

    Every test model is checked against each set's data shape before any data is loaded.
    """
    request.check()
    options.check()
    changes = options.changes()
    if request.data_uri:
        changes["data.data_uri"] = request.data_uri
    artifacts = {i: artifact_set(uri, models=options.models, changes=changes, overrides=options.overrides)
                 for i, uri in enumerate(request.condensed) if not is_plain_file(uri)}
    fallback = next(iter(artifacts.values())).cfg if artifacts else None
    base = base_config(preset=request.preset, config=request.config, dataset=request.dataset, fallback=fallback)
    dataset = request.dataset or base.data.dataset
    # an artifact's recorded data_uri belongs to its own dataset only
    data_uri = request.data_uri or (base.data.data_uri if dataset == base.data.dataset else None)
    base_changes = {**changes, "data.dataset": dataset, "data.data_uri": data_uri}
    if request.baselines or len(artifacts) < len(request.condensed):
        spec = get_spec(dataset, data_uri)
        # before the config is validated, which would name the expert model first
        check_models(options.models or (), spec.channels, spec.size)
    sets: list[EvalSet] = [
        artifacts[i] if i in artifacts else
        file_set(uri, base, factor=request.factor, normalized=request.normalized, changes=base_changes,
                 overrides=options.overrides)
        for i, uri in enumerate(request.condensed)]
    base_cfg = None
    if request.baselines:
        base_cfg = with_overrides(base, base_changes, options.overrides)
        check_models(base_cfg.eval.models, spec.channels, spec.size)
    data: dict[tuple, RealData] = {}
    for cfg in [s.cfg for s in sets] + ([base_cfg] if base_cfg else []):
        if _data_key(cfg) not in data:
            data[_data_key(cfg)] = load_dataset(cfg.data.dataset, cfg.data.data_uri)
    extra: dict[str, bytes] = {}
    if base_cfg is not None:
        real = data[_data_key(base_cfg)]
        net = None
        if "herding" in request.baselines:
            net = _feature_net(request, base_cfg, real, device, log)
            if net.source == "trained":
                extra[HERDING_NET] = net.to_bytes(real.spec.name)
        for name in request.baselines:
            for ipc in request.ipcs:
                x, y = bl.baseline_set(name, base_cfg, real, ipc, net=net, device=device)
                info = {"feature_net": {"model": net.name, "width": net.width, "epochs": net.epochs,
                                        "test_acc": net.test_acc, "source": net.source}} if name == "herding" else {}
                sets.append(baseline_eval_set(name, ipc, base_cfg, real, x=x, y=y, overrides=(), info=info))
    unique_labels(sets)
    return sets, data, extra


def _feature_net(request: SetsRequest, cfg: IDCConfig, real: RealData, device, log: Log) -> bl.FeatureNet:
    if request.herding_net:
        log(f"[eval] herding: feature network loaded from {request.herding_net}")
        return bl.load_feature_net(cfg, real, request.herding_net)
    epochs = request.herding_epochs
    log(f"[eval] herding: training {cfg.expert.model} on the real {real.spec.name} data for {epochs} epochs")
    return bl.train_feature_net(cfg, real, epochs, device=device,
                                progress=lambda e, a: log(f"[eval] herding net epoch {e}/{epochs} acc {100 * a:.2f}%"))


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
    key = (_data_key(cfg), cfg.eval.val_per_class, cfg.schedule.seed)
    if key not in cache:
        cache[key] = validation_split(real, cfg.eval.val_per_class, cfg.schedule.seed)
    return cache[key]


class Executor(Protocol):
    """Runs protocol work and returns one record per item, in order; ``backend`` names where
    (recorded in results.json)."""

    backend: str

    def __call__(self, work: Sequence[Work]) -> list[RunRecord]: ...


def run_sequential(work: Sequence[Work], *, device: str = "auto", log: Log = _stderr) -> list[RunRecord]:
    """Every task in this process, one after another (the reference for the Ray executor)."""
    dev = resolve_device(device)
    records = []
    for w in work:
        r = run_task(w.task, w.train_x, w.train_y, w.test_x, w.test_y, device=dev,
                     progress=lambda e, a, t=w.task: log(progress_line(t, e, a)),
                     val=None if w.val_x is None else (w.val_x, w.val_y))
        log(done_line(r, w.task.repeats))
        records.append(r)
    return records


@dataclass(frozen=True)
class Sequential:
    """The executor of :func:`run_sequential` on ``device`` (auto, cpu, cuda[:N])."""

    device: str = "auto"
    log: Log = field(default=_stderr, compare=False)
    backend: ClassVar[str] = "local"

    def __call__(self, work: Sequence[Work]) -> list[RunRecord]:
        return run_sequential(work, device=self.device, log=self.log)


def evaluate_sets(sets: Sequence[EvalSet], data: Mapping[tuple, RealData], options: EvalOptions, *,
                  executor: Executor | None = None, log: Log = _stderr) -> list[dict[str, Any]]:
    """Run every (set, model, repeat) with ``executor`` (default :class:`Sequential` on the
    first CUDA device, else the CPU) and return one ``results.json`` document per set; every
    executor gives the same numbers."""
    work, recipes, held_out = [], {}, {}
    for s in sets:
        real = data[_data_key(s.cfg)]
        tasks = plan_tasks(s.cfg, real.spec, s.label, epochs=_epochs(s, real.spec, options), eval_every=options.eval_every)
        recipes[s.label] = {t.model: t.recipe for t in tasks}
        val = _validation(s.cfg, real, held_out)
        work += [Work(t, s.x, s.y, real.test_x, real.test_y, *val) for t in tasks]
    executor = executor or Sequential(log=log)
    started = time.perf_counter()
    records = executor(work)
    wall = time.perf_counter() - started
    return [results_dict(s, [r for r in records if r.set_label == s.label], recipes[s.label],
                         backend=executor.backend, wall_s=wall, fixed_compute=options.fixed_compute)
            for s in sets]


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
    summary.json last. Returns the URI of the index file."""
    for name, payload in (extra or {}).items():
        storage.atomic_write_bytes(storage.join(folder, name), payload)
    if len(results) == 1:
        return write_report(folder, results)
    storage.remove(storage.join(folder, SUMMARY_JSON))
    for r in results:
        write_report(storage.join(folder, r["set"]["label"]), [r])
    return write_report(folder, results, index=SUMMARY_JSON)


def evaluate_artifact(uri: str, *, models: Sequence[str] | None = None, repeat: int | None = None,
                      epochs: int | None = None, fixed_compute: bool = False, output: str | None = None,
                      executor: Executor | None = None, eval_every: int | None = None,
                      log: Log = _stderr) -> dict[str, Any]:
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


__all__ = ["EvalOptions", "Executor", "Sequential", "SetsRequest", "build_sets", "evaluate_artifact", "evaluate_sets",
           "report_folder", "run_sequential", "write_reports"]
