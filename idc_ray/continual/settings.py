"""The settings of a continual-learning run (paper section 5.3, appendix C.3).

The condensation and the exemplar selection take their settings from an ordinary condensation
preset (``base``: data, synset factor, matching, expert, evaluation augmentation); what is
specific to the continual learner lives in :class:`ContinualConfig`, with its presets in
``idc_ray/continual/presets/`` (``cifar100-continual``: the paper's setting; ``mnist5k-continual``:
the CPU proof).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Mapping

import yaml

from idc_ray.config import ConfigError

SCENARIOS = ("class", "task")
# none: no replay memory (each stage trains on its new classes' Random picks only): the fine-tuning arm
BUILTIN_EXEMPLARS = ("idc", "herding", "random", "none")


@dataclass(frozen=True)
class ContinualConfig:
    """Defaults: the paper's class-incremental setting (appendix C.3)."""

    name: str = "custom"
    base: str = "cifar100"  # condensation preset of the exemplars (idc_ray/presets)
    scenario: str = "class"  # class: one growing head; task: one head per task, tested with task identity
    tasks: tuple[str, ...] = ()  # scenario task: the datasets in order, e.g. svhn,mnist,usps
    stages: int = 5
    memory_ipc: int = 20  # stored images per class, every method (IDC stores ipc and forms ipc*f^2)
    exemplars: tuple[str, ...] = ("idc", "herding", "random")
    models: tuple[str, ...] = ("convnet3", "resnet10")
    repeat: int = 3
    epochs: int = 1000  # per stage; lr x0.2 at 3/5 and 4/5 of them (600 and 800 of 1000)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    lwf_weight: float = 1.0  # weight of the distillation term (Li & Hoiem 2017 use 1)
    lwf_temperature: float = 2.0  # T of the soft targets (Li & Hoiem 2017: T = 2)
    herding_epochs: int = 20  # feature network of herding, trained on the stage's real data
    width: int | None = None  # ConvNet width of the learners (None: the base preset's eval.width)
    image_size: int = 32  # scenario task: every dataset resized to this side and 3 channels

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def preset_names() -> list[str]:
    folder = resources.files("idc_ray.continual") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> ContinualConfig:
    path = resources.files("idc_ray.continual") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown continual preset '{name}'; choose one of: {', '.join(preset_names())}")
    return with_values(ContinualConfig(), yaml.safe_load(path.read_text()) or {}, f"continual preset {name}")


def with_values(cfg: ContinualConfig, values: Mapping[str, Any], source: str = "flag") -> ContinualConfig:
    """``cfg`` with ``values`` (None values are skipped), type-checked and validated."""
    known = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}'; valid keys: {', '.join(known)}")
        kind = str(known[key].type)
        if kind.startswith("tuple"):
            value = tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else tuple(value)
        elif kind.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        elif kind.startswith("float"):
            value = float(value)
        changes[key] = value
    out = replace(cfg, **changes)
    validate(out)
    return out


def validate(c: ContinualConfig) -> None:
    """One line per impossible value (the class count is checked against the data later)."""
    if c.scenario not in SCENARIOS:
        raise ConfigError(f"scenario '{c.scenario}' is unknown; choose one of {', '.join(SCENARIOS)}")
    if c.memory_ipc < 1:
        raise ConfigError(f"--memory-ipc must be at least 1 image per class, got {c.memory_ipc}")
    if c.stages < 1:
        raise ConfigError(f"--stages must be at least 1, got {c.stages}")
    if c.repeat < 1 or c.epochs < 1 or c.herding_epochs < 1:
        raise ConfigError("--repeat, --epochs and herding_epochs must be at least 1")
    if not c.exemplars or not c.models:
        raise ConfigError("--exemplars and --models need at least one entry each")
    if c.lwf_weight < 0 or c.lwf_temperature <= 0:
        raise ConfigError(f"lwf_weight must be >= 0 and lwf_temperature > 0, got {c.lwf_weight}, {c.lwf_temperature}")
    if c.scenario == "task" and len(c.tasks) < 1:
        raise ConfigError("scenario task needs --tasks, e.g. svhn,mnist,usps")
    for name in c.exemplars:
        if name not in BUILTIN_EXEMPLARS and "=" not in name:
            raise ConfigError(f"--exemplars entry '{name}' is unknown; use {', '.join(BUILTIN_EXEMPLARS)} "
                              "or NAME=FILE for a condensed set made elsewhere")
