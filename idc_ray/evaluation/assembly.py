"""Set assembly: what to evaluate (:class:`SetsRequest`) and how (:class:`EvalOptions`), turned
into the formed training sets, the real data they are tested on and the extra files to write.

Bad input fails here in one line before anything is trained or written: the sets' manifests
and files are read and every test model is checked against the data's shape before the real
data are loaded; then the baselines are built (herding trains its feature network first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from idc_ray.config import IDCConfig
from idc_ray.data import RealData, get_spec, load_dataset
from idc_ray.evaluation import baselines as bl
from idc_ray.evaluation.protocol import Log, check_models, log_stderr
from idc_ray.evaluation.sets import (EvalSet, artifact_set, base_config, baseline_eval_set, data_key, file_set,
                                     full_eval_set, is_plain_file, unique_labels, variant, with_overrides)

HERDING_NET = "herding_net.pt"
LABELS = ("hard", "soft")


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
    labels: tuple[str, ...] = ("hard",)  # hard and/or soft (a teacher's soft labels: the full-data arm's model)
    temperature: float = 4.0  # of the soft labels' KL divergence
    scores: bool = False  # add the arms the DD-Ranking-style scores need (random, full, hard labels, no augmentation)

    def check(self) -> None:
        if not self.labels or set(self.labels) - set(LABELS):
            raise ValueError(f"--labels takes {' and/or '.join(LABELS)}, got {' '.join(self.labels) or 'nothing'}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
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
        return len(self.condensed) + sum(1 if b == "full" else len(self.ipcs) for b in self.baselines)

    def check(self) -> None:
        if not self.condensed and not self.baselines:
            raise ValueError("nothing to evaluate: pass --condensed URI [URI ...] and/or --baseline random|herding --ipc N")
        unknown = [b for b in self.baselines if b not in bl.BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline '{unknown[0]}'; choose one of {', '.join(bl.BASELINES)}")
        if set(self.baselines) - {"full"} and not self.ipcs:
            raise ValueError("--baseline random|herding needs --ipc N (images per class)")
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


def build_sets(request: SetsRequest, options: EvalOptions, *, device: str = "cpu",
               log: Log = log_stderr) -> tuple[list[EvalSet], dict, dict[str, bytes]]:
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
    if request.baselines or len(artifacts) < len(request.condensed) or options.scores or "soft" in options.labels:
        spec = get_spec(dataset, data_uri)
        # before the config is validated, which would name the expert model first
        check_models(options.models or (), spec.channels, spec.size)
    sets: list[EvalSet] = [
        artifacts[i] if i in artifacts else
        file_set(uri, base, factor=request.factor, normalized=request.normalized, changes=base_changes,
                 overrides=options.overrides)
        for i, uri in enumerate(request.condensed)]
    arms_needed = _extra_arms(request, options, sets)
    base_cfg = None
    if request.baselines or arms_needed:
        base_cfg = with_overrides(base, base_changes, options.overrides)
        check_models(base_cfg.eval.models, spec.channels, spec.size)
    data: dict[tuple, RealData] = {}
    for cfg in [s.cfg for s in sets] + ([base_cfg] if base_cfg else []):
        if data_key(cfg) not in data:
            data[data_key(cfg)] = load_dataset(cfg.data.dataset, cfg.data.data_uri)
    extra: dict[str, bytes] = {}
    if base_cfg is not None:
        extra = _add_baselines(request, arms_needed, base_cfg, data[data_key(base_cfg)], sets, device, log)
    sets = with_variants(sets, options)
    unique_labels(sets)
    return sets, data, extra


def _extra_arms(request: SetsRequest, options: EvalOptions, sets: list[EvalSet]) -> dict[str, tuple[int, ...]]:
    """{baseline: its ipcs} beyond the request that the options need: the full-data arm for soft
    labels (the teacher) and for ``--scores``, which also adds random at every set's stored ipc."""
    need: dict[str, tuple[int, ...]] = {}
    if (options.scores or "soft" in options.labels) and "full" not in request.baselines:
        need["full"] = ()
    if options.scores:
        ipcs = [s.ipc for s in sets] + (list(request.ipcs) if request.baselines else [])
        missing = [i for i in dict.fromkeys(ipcs) if "random" not in request.baselines or i not in request.ipcs]
        if missing:
            need["random"] = tuple(missing)
    return need


def _add_baselines(request: SetsRequest, arms_needed: dict[str, tuple[int, ...]], cfg: IDCConfig, real: RealData,
                   sets: list[EvalSet], device, log: Log) -> dict[str, bytes]:
    """Append the requested baselines and the arms the options need to ``sets``; returns the
    extra files to write (the herding feature network when trained here)."""
    extra: dict[str, bytes] = {}
    net = None
    if "herding" in request.baselines:
        net = _feature_net(request, cfg, real, device, log)
        if net.source == "trained":
            extra[HERDING_NET] = net.to_bytes(real.spec.name)
    plan = [(name, request.ipcs) for name in request.baselines] + list(arms_needed.items())
    for name, ipcs in plan:
        if name == "full":
            sets.append(full_eval_set(cfg, real))
            continue
        for ipc in ipcs:
            x, y = bl.baseline_set(name, cfg, real, ipc, net=net, device=device)
            info = {"feature_net": {"model": net.name, "width": net.width, "epochs": net.epochs,
                                    "test_acc": net.test_acc, "source": net.source}} if name == "herding" else {}
            sets.append(baseline_eval_set(name, ipc, cfg, real, x=x, y=y, overrides=(), info=info))
    return extra


def with_variants(sets: list[EvalSet], options: EvalOptions) -> list[EvalSet]:
    """Each set under every label mode of ``options`` (with ``--scores``: hard labels too, and
    each of those without augmentation); the full-data arm only with hard labels."""
    modes = tuple(dict.fromkeys(options.labels + (("hard",) if options.scores else ())))
    out = []
    for s in sets:
        if s.kind == "full":
            out.append(s)
            continue
        out += [variant(s, labels=m, augment=True) for m in modes]
        out += [variant(s, labels=m, augment=False) for m in modes if options.scores]
    return out


def _feature_net(request: SetsRequest, cfg: IDCConfig, real: RealData, device, log: Log) -> bl.FeatureNet:
    if request.herding_net:
        log(f"[eval] herding: feature network loaded from {request.herding_net}")
        return bl.load_feature_net(cfg, real, request.herding_net)
    epochs = request.herding_epochs
    log(f"[eval] herding: training {cfg.expert.model} on the real {real.spec.name} data for {epochs} epochs")
    return bl.train_feature_net(cfg, real, epochs, device=device,
                                progress=lambda e, a: log(f"[eval] herding net epoch {e}/{epochs} acc {100 * a:.2f}%"))


__all__ = ["HERDING_NET", "EvalOptions", "SetsRequest", "build_sets"]
