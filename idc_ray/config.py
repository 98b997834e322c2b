"""The one typed configuration of a condensation run.

A run is described by a frozen :class:`IDCConfig` made of small sections. Named presets are YAML
files shipped in ``idc_ray/presets/`` (one per row of the settings sheet, plus a CPU demo);
overrides come from YAML files or ``section.key=value`` strings. Unknown keys and impossible
values are rejected with one :class:`ConfigError` line. This module is a leaf: values that
depend on the dataset, the engine or the model registry are checked, and the values the published
implementation derives from others (the lr_img scaling, dataset-specific augmentation rules)
computed, by ``idc_ray.engine.plan`` (``check``, ``resolve``) and recorded next to the nominal
values, never written over what the user gave.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from idc_ray.errors import first_line

INITS = ("auto", "mix", "random", "noise")
INIT_SELECTS = ("first", "random")
REAL_SAMPLINGS = ("stream", "independent")  # engine/streams.py
SAMPLINGS = ("uniform", "representative")  # engine/representative.py
DATA_STATS = ("published", "corrected")
METRICS = ("mse", "l1", "l1_mean", "cos")
OBJECTIVES = ("grad", "feat")
MOMENTUM_MODES = ("shared", "per_class")
MATCH_PATHS = ("auto", "loop", "lean", "vmap")
EVAL_LOADER_AUGS = ("none", "imagenet")  # idc_ray.evaluation.loader_aug.LOADER_AUGS
EVAL_FORMATIONS = ("published", "condensed")
EVAL_BEST_ON = ("test", "val")


class ConfigError(ValueError):
    """A configuration problem, described in one line that names the fix."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist5k"
    data_uri: str | None = None
    # Normalisation mean/std: the published constants (CIFAR std 0.2023/0.1994/0.2010, CIFAR-100
    # reusing CIFAR-10's) or "corrected", the statistics of the training split (settings sheet).
    stats: str = "published"


@dataclass(frozen=True)
class LearnedConfig:
    """``synset.formation: learned``: the FSRCNN upsampler's sizes (feature channels d, shrunk
    channels s, mapping layers m; engine/upsampler.py) and its own Adam learning rate."""

    d: int = 16
    s: int = 8
    m: int = 2
    lr: float = 1e-3


@dataclass(frozen=True)
class SynsetConfig:
    ipc: int = 10
    factor: int = 2
    formation: str = "auto"  # auto: bounded for ImageNet with factor >= 3 and ipc >= 20, else uniform
    formation_axis: int = -1  # 1d formation: -1 = width = time axis of a spectrogram
    init: str = "auto"  # auto: mix when factor > 1, else random (settings sheet)
    init_select: str = "first"  # real images for random/mix init: first of each class (published) or random
    batch_syn_max: int = 128
    bound: int = 128  # bounded formation: max formed samples per class
    learned: LearnedConfig = field(default_factory=LearnedConfig)  # formation learned: the upsampler


@dataclass(frozen=True)
class MatchConfig:
    objective: str = "grad"
    metric: str = "mse"
    bias: bool = False  # include 1-D parameters (biases, norm scales) in gradient matching
    fc: bool = False  # include 2-D parameters (the classifier) in gradient matching
    aug: str | None = None  # None: dataset rule (color_crop_cutout; color_crop for MNIST f > 1)
    batch_real: int = 64
    lr_img: float = 5e-3  # nominal; scaled by (ipc/10)(size/base)^2, see engine/plan.py resolve()
    mom_img: float = 0.5
    momentum_mode: str = "shared"  # shared: the published single-optimiser behaviour
    path: str = "auto"  # loop (published), lean (loop, leaner conv double backward), vmap (classes batched); auto: vmap on CUDA, lean on CPU
    # Real batch per class: "stream" cycles through the class without replacement across steps as
    # the published loader does; "independent" draws a fresh sample per step (engine/streams.py).
    real_sampling: str = "stream"
    # "representative" (DREAM, ICCV 2023): each class's real batch is the images nearest the
    # centres of batch_real k-means clusters in the expert's embedding, re-clustered every
    # sampling_refresh inner iterations (DREAM's interval 10) and in place of real_sampling's draw.
    sampling: str = "uniform"
    sampling_refresh: int = 10


@dataclass(frozen=True)
class ExpertConfig:
    model: str = "convnet3"
    width: int | None = None  # None: the model's default width
    norm: str | None = None  # None: the model's default norm
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    n_data: int = 500
    aug: str | None = None  # None: dataset rule (color_crop; none for speech)
    cutmix_prob: float | None = None  # None: dataset rule (0.5; 1.0 ImageNet; 0 MNIST f > 1)
    cutmix_beta: float = 1.0
    fix_iter: int = 1  # re-initialise the expert every fix_iter outer iterations
    early: int = 0  # epochs of real-data training right after re-initialisation
    pretrained: str | None = None  # directory of a pool written by jobs/pretrain.py
    pt_from: int = 0
    pt_num: int = 1
    # Real data for the updates: "stream" takes the next batches of one shuffled stream over the
    # run (the published loader); "independent" draws a fresh sample per update (engine/streams.py).
    real_sampling: str = "stream"


@dataclass(frozen=True)
class ScheduleConfig:
    outer_iters: int = 2000
    inner_iters: int = 100
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] = ("convnet3",)
    epochs: int | None = None  # None: 1000, or the ImageNet rule by formed samples per class
    repeat: int = 3
    width: int | None = None  # ConvNet channels; the ConvNet family only (published net_width), None: 128
    lr: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: str | None = None  # None: dataset rule (DSA strategy, see resolve())
    aug_single: bool = True  # published DiffAug single_aug: ONE of crop/scale/rotate per call; false: all of them
    loader_aug: str | None = None  # None: dataset rule (imagenet: RRC, flip, jitter, lighting; else none)
    cutmix_prob: float | None = None  # None: dataset rule
    formation: str = "published"  # published: bounded sets formed uniformly (test.py); condensed: as condensed
    best_on: str = "test"  # the report epoch "best" picks: by test accuracy (published) or on held-out real images
    val_per_class: int = 50  # best_on: val: real training images per class held out for the choice


@dataclass(frozen=True)
class IDCConfig:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    synset: SynsetConfig = field(default_factory=SynsetConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Building configs from presets, YAML and overrides
# ---------------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    """Names of the presets shipped in idc_ray/presets/."""
    folder = resources.files("idc_ray") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str, *, validated: bool = True) -> IDCConfig:
    """The named preset as a validated config (``validated=False``: the caller validates the
    config it builds on top, once)."""
    path = resources.files("idc_ray") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(preset_names())}")
    return from_dict(yaml.safe_load(path.read_text()) or {}, source=f"preset {name}", validated=validated)


def load_yaml(path: str | Path, base: IDCConfig | None = None, *, validated: bool = True) -> IDCConfig:
    """A config from a YAML file (a full config or a partial one applied on top of ``base``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML ({first_line(e)}); fix its syntax")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, not {type(data).__name__}")
    return from_dict(data, base=base, source=str(p), validated=validated)


def from_dict(data: Mapping[str, Any], base: IDCConfig | None = None, source: str = "config", *,
              validated: bool = True) -> IDCConfig:
    """Apply a nested mapping on top of ``base`` (defaults when None); validates the result
    unless ``validated=False`` (keys and types are always checked)."""
    cfg = _merge(base or IDCConfig(), data, prefix="", source=source)
    if validated:
        validate(cfg)
    return cfg


def apply_overrides(cfg: IDCConfig, overrides: list[str] | Mapping[str, Any], *, validated: bool = True) -> IDCConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML) or a mapping of dotted keys."""
    items = overrides.items() if isinstance(overrides, Mapping) else [_split_override(o) for o in overrides]
    nested: dict[str, Any] = {}
    for key, value in items:
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}' conflicts with another override; set it once")
        node[parts[-1]] = value
    return from_dict(nested, base=cfg, source="override", validated=validated)


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. synset.ipc=10")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _merge(obj: Any, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.')}' must be a mapping of keys")
    known = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'; valid keys: {', '.join(prefix + k for k in known)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value or {}, f"{prefix}{key}.", source)
        else:
            changes[key] = _coerce(value, current, known[key], f"{prefix}{key}", source)
    return replace(obj, **changes)


def coerce(key: str, value: Any, source: str = "override", root: type | None = None) -> Any:
    """``value`` as the field ``key`` (dotted, e.g. ``match.lr_img``) of ``root`` (default
    :class:`IDCConfig`) stores it: the one type check and conversion every config value goes
    through (YAML files, ``--set``, the values of a Tune space). Ranges are :func:`validate`'s job.

    Raises:
        ConfigError: one line naming ``source``, the key and what it takes.
    """
    obj: Any = (root or IDCConfig)()
    *sections, leaf = key.split(".")
    for i, name in enumerate([*sections, leaf]):
        known = {f.name: f for f in fields(obj)}
        prefix = ".".join(sections[:i]) + "." if i else ""
        if name not in known:
            raise ConfigError(f"{source}: unknown key '{key}'; valid keys: {', '.join(prefix + k for k in known)}")
        if i < len(sections):
            obj = getattr(obj, name)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{source}: unknown key '{key}'; '{prefix}{name}' has no keys below it")
    current = getattr(obj, leaf)
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{source}: '{key}' is a section; give one of its keys, e.g. {key}.{fields(current)[0].name}")
    return _coerce(value, current, known[leaf], key, source)


def _coerce(value: Any, current: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    """Check a leaf value against the field's declared type (written as a string annotation)."""
    kind = str(f.type)
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: '{key}' cannot be empty; give a value")
    if kind.startswith("tuple"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return tuple(str(v).strip() for v in items)
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if kind.startswith("float"):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if kind.startswith("str"):
        return str(value)
    raise ConfigError(f"{source}: '{key}' has an unsupported type {kind}")  # pragma: no cover


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Validation and derived values
# ---------------------------------------------------------------------------------------------

def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: IDCConfig) -> None:
    """Reject impossible values with one clear line. Only what the config knows by itself: what
    depends on the dataset, the engine or the model registry (factor against the image side,
    formation, norm, augmentation and model names) is checked by ``idc_ray.engine.plan.check``."""
    s, m, x, sc, ev = cfg.synset, cfg.match, cfg.expert, cfg.schedule, cfg.eval
    _check(s.ipc >= 1, f"synset.ipc must be at least 1, got {s.ipc}")
    _check(s.factor >= 1, f"synset.factor must be at least 1, got {s.factor}")
    _check(s.formation_axis in (-1, -2), f"synset.formation_axis must be -1 (width/time) or -2 (height), got {s.formation_axis}")
    _check(s.init in INITS, f"synset.init '{s.init}' is unknown; choose one of {', '.join(INITS)}")
    _check(s.init_select in INIT_SELECTS,
           f"synset.init_select '{s.init_select}' is unknown; choose one of {', '.join(INIT_SELECTS)}")
    _check(cfg.data.stats in DATA_STATS, f"data.stats '{cfg.data.stats}' is unknown; choose one of {', '.join(DATA_STATS)}")
    _check(s.batch_syn_max >= 1, f"synset.batch_syn_max must be at least 1, got {s.batch_syn_max}")
    lu = s.learned
    _check(min(lu.d, lu.s) >= 1 and lu.m >= 0 and lu.lr > 0,
           f"synset.learned needs d >= 1, s >= 1, m >= 0 and lr > 0, got d={lu.d} s={lu.s} m={lu.m} lr={lu.lr}")
    _check(s.bound >= s.ipc, f"synset.bound {s.bound} must be at least synset.ipc {s.ipc} (each stored sample forms at least one)")
    _check(m.objective in OBJECTIVES, f"match.objective '{m.objective}' is unknown; choose one of {', '.join(OBJECTIVES)}")
    _check(m.metric in METRICS, f"match.metric '{m.metric}' is unknown; choose one of {', '.join(METRICS)}")
    _check(m.momentum_mode in MOMENTUM_MODES, f"match.momentum_mode '{m.momentum_mode}' is unknown; choose one of {', '.join(MOMENTUM_MODES)}")
    _check(m.path in MATCH_PATHS, f"match.path '{m.path}' is unknown; choose one of {', '.join(MATCH_PATHS)}")
    for key, value in (("match.real_sampling", m.real_sampling), ("expert.real_sampling", x.real_sampling)):
        _check(value in REAL_SAMPLINGS, f"{key} '{value}' is unknown; choose one of {', '.join(REAL_SAMPLINGS)}")
    _check(m.sampling in SAMPLINGS, f"match.sampling '{m.sampling}' is unknown; choose one of {', '.join(SAMPLINGS)}")
    _check(m.sampling_refresh >= 1, f"match.sampling_refresh must be at least 1 inner iteration, got {m.sampling_refresh}")
    _check(m.batch_real >= 1, f"match.batch_real must be at least 1, got {m.batch_real}")
    _check(m.lr_img > 0, f"match.lr_img must be positive, got {m.lr_img}")
    _check(0 <= m.mom_img < 1, f"match.mom_img must be in [0, 1), got {m.mom_img}")
    _check(x.width is None or x.width >= 1, f"expert.width must be at least 1, got {x.width}")
    _check(x.lr > 0 and x.batch_size >= 1 and x.n_data >= 0, "expert.lr must be > 0, expert.batch_size >= 1 and expert.n_data >= 0")
    _check(x.cutmix_prob is None or 0 <= x.cutmix_prob <= 1, f"expert.cutmix_prob must be in [0, 1], got {x.cutmix_prob}")
    _check(x.fix_iter >= 1, f"expert.fix_iter must be at least 1, got {x.fix_iter}")
    _check(x.early >= 0 and x.pt_from >= 0 and x.pt_num >= 1, "expert.early and expert.pt_from must be >= 0 and expert.pt_num >= 1")
    _check(sc.outer_iters >= 0, f"schedule.outer_iters must be >= 0, got {sc.outer_iters}")
    _check(sc.inner_iters >= 1, f"schedule.inner_iters must be at least 1, got {sc.inner_iters}")
    _check((ev.epochs is None or ev.epochs >= 1) and ev.repeat >= 1, f"eval.epochs and eval.repeat must be at least 1, got {ev.epochs}, {ev.repeat}")
    _check(ev.cutmix_prob is None or 0 <= ev.cutmix_prob <= 1, f"eval.cutmix_prob must be in [0, 1], got {ev.cutmix_prob}")
    _check(ev.lr > 0 and ev.weight_decay >= 0 and ev.batch_size >= 1,
           "eval.lr must be > 0, eval.weight_decay >= 0 and eval.batch_size >= 1")
    _check(ev.loader_aug is None or ev.loader_aug in EVAL_LOADER_AUGS,
           f"eval.loader_aug '{ev.loader_aug}' is unknown; choose one of {', '.join(EVAL_LOADER_AUGS)}")
    _check(ev.formation in EVAL_FORMATIONS,
           f"eval.formation '{ev.formation}' is unknown; choose one of {', '.join(EVAL_FORMATIONS)}")
    _check(ev.best_on in EVAL_BEST_ON, f"eval.best_on '{ev.best_on}' is unknown; choose one of {', '.join(EVAL_BEST_ON)}")
    _check(ev.val_per_class >= 1, f"eval.val_per_class must be at least 1, got {ev.val_per_class}")


__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExpertConfig",
    "IDCConfig",
    "MatchConfig",
    "ScheduleConfig",
    "LearnedConfig",
    "SynsetConfig",
    "apply_overrides",
    "from_dict",
    "load_preset",
    "load_yaml",
    "preset_names",
    "validate",
]
