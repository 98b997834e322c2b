"""Tune search spaces: YAML files in ``tune_spaces/`` whose ``params`` address config fields by
their dotted names (``match.lr_img``), never anything else (style practice 9).

The format is documented in tune_spaces/README.md and validated here on load, so an unknown key or
a bad range is one :class:`~idc_ray.config.ConfigError` line before any trial starts. Every value
goes through the config's own coercion (:func:`idc_ray.config.coerce`), the one place that knows
what a field takes. The ``ray.tune`` samplers are built from a :class:`Param` in
:mod:`idc_ray.distributed.sweep_space`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from idc_ray.config import ConfigError, IDCConfig, apply_overrides, coerce
from idc_ray.data import DatasetSpec
from idc_ray.engine.plan import check
from idc_ray.errors import first_line

PARAM_TYPES = ("loguniform", "uniform", "randint", "choice", "grid")
METRICS = {"accuracy": "max", "loss": "min"}  # what a trial reports, and the direction that is better
MODES = ("max", "min")
SPACE_KEYS = ("preset", "metric", "mode", "params", "fixed", "stages", "interim_epochs", "pool_seeds", "asha")
ASHA_KEYS = ("grace_period", "reduction_factor")
SECTIONS = tuple(f.name for f in fields(IDCConfig) if dataclasses.is_dataclass(getattr(IDCConfig(), f.name)))
# What each sampler draws, a draw to check the field takes it, and what to use instead.
_DRAWS = {"uniform": ("real numbers", 0.5, "randint or choice"),
          "loguniform": ("real numbers", 0.5, "randint or choice"), "randint": ("integers", 1, "choice")}


@dataclass(frozen=True)
class Param:
    """One swept config field. ``randint`` includes ``high``; ``grid`` tries every value.

    ``key`` may also name a section (``schedule``) whose ``choice``/``grid`` values are mappings of
    its keys, so fields that must move together are swept as one (the outer/inner split of a fixed
    iteration budget: ``{outer_iters: 40, inner_iters: 5}``)."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    @property
    def is_section(self) -> bool:
        return self.key in SECTIONS

    def fields(self) -> list[str]:
        """The dotted config fields this parameter sets."""
        if not self.is_section:
            return [self.key]
        return sorted({f"{self.key}.{k}" for value in self.values for k in value})

    def probes(self) -> list[Any]:
        """The values checked against the config on load: every listed value, or both bounds."""
        return list(self.values) if self.type in ("choice", "grid") else [self.low, self.high]


@dataclass(frozen=True)
class SpaceSettings:
    """The scalar settings of a space besides its params (typed like config fields, so their
    values go through the same coercion)."""

    stages: int = 4
    interim_epochs: int | None = None
    pool_seeds: int = 10
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class TuneSpace:
    """A validated search space (see tune_spaces/README.md for every key)."""

    source: str
    params: tuple[Param, ...]
    preset: str | None = None
    metric: str = "accuracy"
    mode: str = "max"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    stages: int = 4
    interim_epochs: int | None = None
    pool_seeds: int = 10
    grace_period: int = 1
    reduction_factor: float = 2

    @property
    def name(self) -> str:
        return Path(self.source).stem

    def base_config(self, cfg: IDCConfig, spec: DatasetSpec | None = None) -> IDCConfig:
        """``cfg`` with the space's ``fixed`` values, every swept value checked against it: by the
        config, and with the dataset's ``spec`` also by the engine (``engine.plan.check``: image
        side, formation and model names), so a bad value fails before any trial starts.

        Raises:
            ConfigError: one line naming the space, the key and the value that does not fit.
        """
        base = cfg
        if self.fixed:
            try:
                base = apply_overrides(cfg, dict(self.fixed))
                if spec is not None:
                    check(base, spec)
            except ConfigError as e:
                raise ConfigError(f"tune space '{self.source}': fixed: {e}") from None
        for p in self.params:
            for value in p.probes():
                try:
                    candidate = apply_overrides(base, {p.key: value})
                    if spec is not None:
                        check(candidate, spec)
                except ConfigError as e:
                    raise ConfigError(f"tune space '{self.source}': params.{p.key} value {value!r}: {e}") from None
        return base


def load_space(path: str | os.PathLike, base: IDCConfig | None = None) -> TuneSpace:
    """Read and validate a search space; with ``base``, also every swept value against that config.

    Raises:
        ConfigError: one line (missing file, bad YAML, unknown key, bad range or value).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"tune space '{p}' not found; pass a YAML file such as tune_spaces/lr.yaml to --space")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"tune space '{p}' is not valid YAML ({first_line(e)}); fix its syntax") from None
    space = space_from_dict(data, source=str(p))
    if base is not None:
        space.base_config(base)
    return space


def space_from_dict(data: Any, source: str = "tune space") -> TuneSpace:
    """A :class:`TuneSpace` from the parsed YAML mapping (keys and ranges validated)."""
    where = f"tune space '{source}'"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping with a 'params' section, not {type(data).__name__}")
    unknown = [k for k in data if k not in SPACE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(SPACE_KEYS)}")
    raw_params = data.get("params")
    if not isinstance(raw_params, Mapping) or not raw_params:
        raise ConfigError(f"{where}: 'params' must map at least one config field (e.g. match.lr_img) to a distribution")
    params = tuple(_param(str(key), spec, where) for key, spec in raw_params.items())
    _check_overlap(params, where)
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"{where}: 'fixed' must map config fields to values")
    for key in fixed:
        _check_key(str(key), f"{where}: fixed")
        swept = [p.key for p in params if key in p.fields()]
        if swept:
            raise ConfigError(f"{where}: '{key}' is both fixed and swept (params.{swept[0]}); keep it in one "
                              "of 'fixed' or 'params'")
    metric = data.get("metric", "accuracy")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric '{metric}' is not reported; choose one of {', '.join(METRICS)}")
    mode = data.get("mode", METRICS[metric])
    if mode not in MODES:
        raise ConfigError(f"{where}: mode '{mode}' must be max or min")
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{where}: preset must be a preset name, got {preset!r}")
    asha = data.get("asha") or {}
    if not isinstance(asha, Mapping) or any(k not in ASHA_KEYS for k in asha):
        raise ConfigError(f"{where}: asha takes only {', '.join(ASHA_KEYS)}")
    given = {**{k: data[k] for k in ("stages", "interim_epochs", "pool_seeds") if k in data}, **asha}
    s = SpaceSettings(**{k: coerce(k, v, where, root=SpaceSettings) for k, v in given.items()})
    for key in ("stages", "interim_epochs", "pool_seeds", "grace_period"):
        value = getattr(s, key)
        if value is not None and value < 1:
            raise ConfigError(f"{where}: {'asha.' if key in ASHA_KEYS else ''}{key} must be at least 1, got {value}")
    if s.reduction_factor <= 1:
        raise ConfigError(f"{where}: asha.reduction_factor must be a number > 1, got {s.reduction_factor:g}")
    if s.grace_period > s.stages:
        raise ConfigError(f"{where}: asha.grace_period {s.grace_period} is more than the {s.stages} stages "
                          "a trial reports")
    return TuneSpace(source, params, preset, metric, mode, dict(fixed), s.stages, s.interim_epochs, s.pool_seeds,
                     s.grace_period, s.reduction_factor)


def config_keys(cls: type = IDCConfig, prefix: str = "") -> list[str]:
    """Every dotted config field a space may address (leaves only: ``match.lr_img``, not ``match``)."""
    keys: list[str] = []
    defaults = cls()
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(config_keys(type(value), f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def _check_key(key: str, where: str) -> None:
    if key not in config_keys():
        section = key.split(".")[0]
        near = [k for k in config_keys() if k.startswith(section + ".")] or config_keys()
        raise ConfigError(f"{where}: unknown config key '{key}'; valid keys: {', '.join(near)}")


def _check_draws(key: str, kind: str, at: str) -> None:
    """Refuse a sampler whose draws the field does not take (the config's coercion decides)."""
    what, draw, instead = _DRAWS[kind]
    try:
        taken = coerce(key, draw, at)
    except ConfigError as e:
        raise ConfigError(f"{e} (a {kind} draw); use {instead}") from None
    if isinstance(taken, bool) or not isinstance(taken, (int, float)):
        raise ConfigError(f"{at}: {kind} draws {what} but {key} takes {type(taken).__name__} values; use {instead}")


def _check_overlap(params: tuple[Param, ...], where: str) -> None:
    """Refuse two parameters that set the same field (a section's mapping and a field of it)."""
    seen: dict[str, str] = {}
    for p in params:
        for f in p.fields():
            if f in seen:
                raise ConfigError(f"{where}: params.{p.key} and params.{seen[f]} both set '{f}'; sweep it in one of them")
            seen[f] = p.key


def _section_values(key: str, spec: Mapping, at: str) -> tuple[dict[str, Any], ...]:
    """The values of a section parameter: mappings of the section's keys, each value coerced."""
    kind, values = spec.get("type"), spec.get("values")
    example = "{type: choice, values: [{outer_iters: 40, inner_iters: 5}, {outer_iters: 20, inner_iters: 10}]}"
    if kind not in ("choice", "grid") or set(spec) - {"type", "values"}:
        raise ConfigError(f"{at}: a section is swept with a choice or grid of mappings of its keys, e.g. {example}")
    if not isinstance(values, list) or not values or not all(isinstance(v, Mapping) and v for v in values):
        raise ConfigError(f"{at}: {kind} over a section needs a non-empty list of non-empty mappings of its keys, "
                          f"e.g. {example}")
    return tuple({str(k): coerce(f"{key}.{k}", v, at) for k, v in value.items()} for value in values)


def _param(key: str, spec: Any, where: str) -> Param:
    at = f"{where}: params.{key}"
    if key in SECTIONS:
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{at} must be a mapping with a 'type' (choice or grid), got {spec!r}")
        return Param(key, spec.get("type"), values=_section_values(key, spec, at))
    _check_key(key, f"{where}: params")
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{at} must be a mapping with a 'type' ({', '.join(PARAM_TYPES)}), got {spec!r}")
    kind = spec["type"]
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{at}: unknown type '{kind}'; choose one of {', '.join(PARAM_TYPES)}")
    allowed = {"type", "values"} if kind in ("choice", "grid") else {"type", "low", "high"}
    extra = [k for k in spec if k not in allowed]
    if extra:
        raise ConfigError(f"{at}: '{extra[0]}' does not apply to type {kind}; it takes {', '.join(sorted(allowed - {'type'}))}")
    if kind in ("choice", "grid"):
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: {kind} needs a non-empty list 'values'")
        return Param(key, kind, values=tuple(coerce(key, v, at) for v in values))
    _check_draws(key, kind, at)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{at}: {kind} needs 'low' and 'high'")
    low, high = coerce(key, spec["low"], f"{at}.low"), coerce(key, spec["high"], f"{at}.high")
    if low >= high:
        raise ConfigError(f"{at}: low {low:g} must be less than high {high:g}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{at}: loguniform needs positive bounds, got low {low:g}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{at}: randint needs integer bounds, got {low:g} and {high:g}")
    if kind == "randint":
        low, high = int(low), int(high)
    return Param(key, kind, low, high)


def trial_config(base: IDCConfig, overrides: Mapping[str, Any]) -> IDCConfig:
    """The config of one trial: ``base`` with the trial's dotted values (numpy scalars made plain)."""
    return apply_overrides(base, {k: plain(v) for k, v in overrides.items()})


def plain(value: Any) -> Any:
    """A sampled value as plain Python (Tune's samplers give numpy scalars)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


def stage_outers(outer_iters: int, stages: int) -> list[int]:
    """The outer iterations after which a trial evaluates and reports (the ASHA rungs): ``stages``
    evenly spaced points ending at ``outer_iters`` (fewer when there are fewer iterations)."""
    if outer_iters <= 0:
        return [0]
    return sorted({max(1, math.ceil(k * outer_iters / stages)) for k in range(1, stages + 1)})


def interim_epochs(configured: int | None, final_epochs: int) -> int:
    """Test-model epochs at the intermediate stages: the space's ``interim_epochs``, else a tenth
    of the final evaluation's, never more than the final's."""
    return min(final_epochs, configured or max(1, final_epochs // 10))


__all__ = ["METRICS", "PARAM_TYPES", "SECTIONS", "Param", "SpaceSettings", "TuneSpace", "config_keys", "interim_epochs",
           "load_space", "plain", "space_from_dict", "stage_outers", "trial_config"]
