"""Ray Tune sweeps over condensation settings: search spaces, the caches trials share, results.

A search space is a YAML file in ``tune_spaces/`` whose ``params`` address config fields by their
dotted names (``match.lr_img``), never anything else (style practice 9); the format is documented
in tune_spaces/README.md and validated here on load, so an unknown key or a bad range is one
:class:`~idc_ray.config.ConfigError` line before any trial starts.

This module holds the parts without Ray: spaces, the stage schedule a trial reports at, the keys
of the caches trials share (the pretrained expert pool, the prepared data) and the ranked
results. The trainable and the Tuner live in :mod:`idc_ray.distributed.sweep` (also reachable
from here: ``idc_ray.tuning.condense_trial``, ``run_sweep``, loaded on first use).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import yaml

from idc_ray import __version__
from idc_ray.config import ConfigError, IDCConfig, apply_overrides

PARAM_TYPES = ("loguniform", "uniform", "randint", "choice", "grid")
METRICS = {"accuracy": "max", "loss": "min"}  # what a trial reports, and the direction that is better
MODES = ("max", "min")
AUTO_POOL = "auto"  # expert.pretrained: auto -> a pool pretrained once per sweep, in the cache
SPACE_KEYS = ("preset", "metric", "mode", "params", "fixed", "stages", "interim_epochs", "pool_seeds", "asha")
ASHA_KEYS = ("grace_period", "reduction_factor")
POOL_DONE = "settings.json"  # written last into a pool folder: its presence means the pool is complete
# Expert settings the real-data pretraining never reads (pretrain_pool trains full epochs from a
# fresh network): sweeping them must not cost another pool.
_POOL_UNUSED = ("pretrained", "pt_from", "pt_num", "n_data", "early", "fix_iter", "real_sampling")


# ---------------------------------------------------------------------------------------------
# Search spaces
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One swept config field. ``randint`` includes ``high``; ``grid`` tries every value."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    def probes(self) -> list[Any]:
        """The values checked against the config on load: every listed value, or both bounds."""
        return list(self.values) if self.type in ("choice", "grid") else [self.low, self.high]

    def to_tune(self):
        """The ``ray.tune`` sampler of this parameter."""
        from ray import tune

        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "randint":
            return tune.randint(self.low, self.high + 1)  # tune's upper bound is exclusive
        if self.type == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))


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

    def search_space(self) -> dict[str, Any]:
        """The Tune ``param_space``: dotted config keys to samplers."""
        return {p.key: p.to_tune() for p in self.params}

    def base_config(self, cfg: IDCConfig) -> IDCConfig:
        """``cfg`` with the space's ``fixed`` values, every swept value checked against it.

        Raises:
            ConfigError: one line naming the space, the key and the value that does not fit.
        """
        base = cfg
        if self.fixed:
            try:
                base = apply_overrides(cfg, dict(self.fixed))
            except ConfigError as e:
                raise ConfigError(f"tune space '{self.source}': fixed: {e}") from None
        for p in self.params:
            for value in p.probes():
                try:
                    apply_overrides(base, {p.key: value})
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tune space '{p}' is not valid YAML ({first}); fix its syntax") from None
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
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"{where}: 'fixed' must map config fields to values")
    for key in fixed:
        _check_key(str(key), f"{where}: fixed")
        if key in raw_params:
            raise ConfigError(f"{where}: '{key}' is both fixed and swept; keep it in one of 'fixed' or 'params'")
    metric = data.get("metric", "accuracy")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric '{metric}' is not reported; choose one of {', '.join(METRICS)}")
    mode = data.get("mode", METRICS[metric])
    if mode not in MODES:
        raise ConfigError(f"{where}: mode '{mode}' must be max or min")
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{where}: preset must be a preset name, got {preset!r}")
    stages = _positive_int(data.get("stages", 4), f"{where}: stages")
    interim = data.get("interim_epochs")
    interim = None if interim is None else _positive_int(interim, f"{where}: interim_epochs")
    pool_seeds = _positive_int(data.get("pool_seeds", 10), f"{where}: pool_seeds")
    asha = data.get("asha") or {}
    if not isinstance(asha, Mapping) or any(k not in ASHA_KEYS for k in asha):
        raise ConfigError(f"{where}: asha takes only {', '.join(ASHA_KEYS)}")
    grace = _positive_int(asha.get("grace_period", 1), f"{where}: asha.grace_period")
    factor = asha.get("reduction_factor", 2)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
        raise ConfigError(f"{where}: asha.reduction_factor must be a number > 1, got {factor!r}")
    if grace > stages:
        raise ConfigError(f"{where}: asha.grace_period {grace} is more than the {stages} stages a trial reports")
    return TuneSpace(source, params, preset, metric, mode, dict(fixed), stages, interim, pool_seeds, grace, factor)


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


def field_type(key: str) -> str:
    """The declared type of a dotted config field, as written in idc_ray.config (``float``, ``int | None``)."""
    cls: Any = IDCConfig
    *sections, leaf = key.split(".")
    for section in sections:
        cls = type(getattr(cls(), section))
    return str(next(f.type for f in fields(cls) if f.name == leaf))


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {value!r}")
    return value


def _param(key: str, spec: Any, where: str) -> Param:
    _check_key(key, f"{where}: params")
    at = f"{where}: params.{key}"
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{at} must be a mapping with a 'type' ({', '.join(PARAM_TYPES)}), got {spec!r}")
    kind = spec["type"]
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{at}: unknown type '{kind}'; choose one of {', '.join(PARAM_TYPES)}")
    allowed = {"type", "values"} if kind in ("choice", "grid") else {"type", "low", "high"}
    extra = [k for k in spec if k not in allowed]
    if extra:
        raise ConfigError(f"{at}: '{extra[0]}' does not apply to type {kind}; it takes {', '.join(sorted(allowed - {'type'}))}")
    declared = field_type(key)
    if kind in ("uniform", "loguniform") and not declared.startswith("float"):
        raise ConfigError(f"{at}: {kind} samples real numbers but {key} is {declared}; use randint or choice")
    if kind == "randint" and not declared.startswith(("int", "float")):
        raise ConfigError(f"{at}: randint samples integers but {key} is {declared}; use choice")
    if kind in ("choice", "grid"):
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: {kind} needs a non-empty list 'values'")
        return Param(key, kind, values=tuple(values))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{at}: {kind} needs 'low' and 'high'")
    low, high = _number(spec["low"], f"{at}.low"), _number(spec["high"], f"{at}.high")
    if low >= high:
        raise ConfigError(f"{at}: low {low} must be less than high {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{at}: loguniform needs positive bounds, got low {low}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{at}: randint needs integer bounds, got {low} and {high}")
    if kind == "randint":
        low, high = int(low), int(high)
    return Param(key, kind, low, high)


def trial_config(base: IDCConfig, overrides: Mapping[str, Any]) -> IDCConfig:
    """The config of one trial: ``base`` with the trial's dotted values (numpy scalars made plain)."""
    return apply_overrides(base, {k: _plain(v) for k, v in overrides.items()})


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars from Tune's samplers
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


# ---------------------------------------------------------------------------------------------
# Caches shared by the trials of a sweep
# ---------------------------------------------------------------------------------------------

def settings_key(settings: Mapping[str, Any]) -> str:
    """A short digest of the settings a cached result depends on (JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_settings(cfg: IDCConfig) -> dict[str, Any]:
    """What the prepared data depends on: the dataset and where it is read from."""
    return {"kind": "data", "dataset": cfg.data.dataset, "data_uri": cfg.data.data_uri}


def pool_settings(cfg: IDCConfig, seeds: int) -> dict[str, Any]:
    """What a pretrained expert pool depends on (:func:`idc_ray.pretrain.pretrain_pool`): the data,
    the expert's network and optimiser, the resolved augmentation, the seed, how many networks and
    epochs. Matching, synthetic-set and evaluation settings are not part of it."""
    from idc_ray.data import get_spec
    from idc_ray.engine.plan import build_plan

    expert = build_plan(cfg, get_spec(cfg.data.dataset, cfg.data.data_uri)).expert
    net = {k: v for k, v in dataclasses.asdict(expert).items() if k not in _POOL_UNUSED}
    from idc_ray.models import NETWORKS_REVISION

    return {"kind": "expert-pool", "version": __version__, "networks": NETWORKS_REVISION, "dataset": cfg.data.dataset,
            "data_uri": cfg.data.data_uri, "expert": net, "seeds": seeds, "epochs": pool_epochs(cfg)}


def pool_epochs(cfg: IDCConfig) -> int:
    """Epochs a pool must hold for ``expert.pt_from`` .. ``pt_from + pt_num - 1`` to exist."""
    return cfg.expert.pt_from + cfg.expert.pt_num - 1


def pool_dir(cache_dir: str | os.PathLike, cfg: IDCConfig, seeds: int) -> Path:
    """Where the pool for ``cfg`` lives in the cache: ``<cache>/pools/<key>``."""
    return Path(cache_dir) / "pools" / settings_key(pool_settings(cfg, seeds))


def ensure_pool(cfg: IDCConfig, load_data: Callable[[], Any] | None, cache_dir: str | os.PathLike, seeds: int, *,
                device: str | torch.device = "cpu", log: Callable[[str], None] = print,
                build: Callable[[IDCConfig, Path, int], None] | None = None) -> str:
    """The pretrained pool for ``cfg``, computed once: later calls (other trials, other sweeps,
    condensation jobs) with the same settings return the cached folder. Concurrent callers wait
    on a file lock, and a pool is renamed into place only when complete, so none ever reads half
    a pool.

    Args:
        load_data: returns the RealData to pretrain on (only called when the pool is missing and
            ``build`` is None).
        build: ``build(cfg, folder, epochs)`` writes the ``seeds`` networks into ``folder`` (e.g.
            as parallel Ray tasks, ``idc_ray.distributed.pool``); default: :func:`pretrain_pool`
            in this process.
    Returns:
        the absolute pool folder, for ``expert.pretrained``.
    """
    from idc_ray.pretrain import pretrain_pool

    if build is None:
        build = lambda plain, folder, epochs: pretrain_pool(plain, load_data(), folder, seeds=seeds, epochs=epochs,
                                                            device=device)
    final = pool_dir(cache_dir, cfg, seeds).absolute()
    if (final / POOL_DONE).is_file():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock"):
        if (final / POOL_DONE).is_file():
            return str(final)
        settings = pool_settings(cfg, seeds)
        log(f"pretraining the expert pool {final.name} ({seeds} networks x {settings['epochs']} epochs)")
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}"
        try:
            plain = replace(cfg, expert=replace(cfg.expert, pretrained=None))
            build(plain, tmp, settings["epochs"])
            (tmp / POOL_DONE).write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
            if final.exists():  # a folder without the marker is not a complete pool: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pool_shared(space: TuneSpace, base: IDCConfig) -> bool:
    """True when every trial of the sweep would use the same pool as ``base`` (no swept value
    changes the pool's settings), so the driver can compute it once before the trials start."""
    if base.expert.pretrained != AUTO_POOL:
        return False
    key = settings_key(pool_settings(base, space.pool_seeds))
    for p in space.params:
        for value in p.probes():
            cfg = trial_config(base, {p.key: value})
            if cfg.expert.pretrained != AUTO_POOL or settings_key(pool_settings(cfg, space.pool_seeds)) != key:
                return False
    return True


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass
class TrialRow:
    """One trial of a finished sweep, as the ranked table shows it."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.error is None and bool(self.metrics.get("final"))

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        if self.completed:
            return "completed"
        if "stage" in self.metrics:
            return f"stopped at stage {self.metrics['stage']}/{self.metrics.get('stages', '?')}"
        return "no report"


def rank_trials(rows: Sequence[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """Completed trials by the metric, then trials stopped early (latest stage first), then errors."""
    sign = -1.0 if mode == "max" else 1.0

    def order(r: TrialRow) -> tuple:
        value = r.metrics.get(metric)
        value = sign * float(value) if isinstance(value, (int, float)) else math.inf
        group = 0 if r.completed else 2 if r.error is not None or "stage" not in r.metrics else 1
        return group, -int(r.metrics.get("stage", 0)) if group == 1 else 0, value, r.trial_id

    return sorted(rows, key=order)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|")


def results_markdown(ranked: Sequence[TrialRow], *, title: str, space: TuneSpace, preset: str, scheduler: str,
                     storage_uri: str, best_config: str | None) -> str:
    """The ranked table (``tune_results.md``): one row per trial, best first."""
    keys = [p.key for p in space.params]
    lines = [
        f"# Tune sweep `{title}`",
        "",
        f"Space `{space.source}` on preset `{preset}`: {len(ranked)} trials, scheduler {scheduler}, "
        f"metric `{space.metric}` ({space.mode}). Results under `{storage_uri}`.",
        "",
        "`accuracy` is the mean test accuracy (last epoch, in [0, 1]) over `eval.models` x `eval.repeat` of the "
        "final evaluation; a trial stopped early shows its last interim evaluation (1 repeat, fewer epochs). "
        "`loss` is the mean matching loss of the last outer iteration.",
        "",
        "| rank | trial | status | accuracy | loss | outer | " + " | ".join(f"`{k}`" for k in keys) + " | artifact |",
        "|" + "---|" * (7 + len(keys)),
    ]
    for i, r in enumerate(ranked, 1):
        m = r.metrics
        acc = m.get("accuracy")
        cells = [str(i), r.trial_id, r.status, f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else "-",
                 _cell(m["loss"]) if isinstance(m.get("loss"), (int, float)) else "-", _cell(m.get("outer", "-")),
                 *(_cell(r.params.get(k, "-")) for k in keys), _cell(m.get("artifact", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if best_config:
        lines.append(f"Best config: `{best_config}` (trial {ranked[0].trial_id}); rerun it with "
                     f"`python jobs/condense.py --config {best_config} --output runs/best`.")
    else:
        lines.append("No trial completed every stage, so no best config was written.")
    return "\n".join(lines) + "\n"


def best_config_text(config_yaml: str, row: TrialRow, *, sweep: str, metric: str) -> str:
    """``best_config.yaml``: the best trial's exact config (its artifact's config.yaml) with a header."""
    value = row.metrics.get(metric)
    header = [
        f"# Best trial {row.trial_id} of Tune sweep {sweep}: {metric} {_cell(value)}",
        f"# artifact: {row.metrics.get('artifact')}",
        f"# swept values: {json.dumps({k: _plain(v) for k, v in row.params.items()}, default=str)}",
        "# rerun: python jobs/condense.py --config best_config.yaml --output runs/best",
    ]
    return "\n".join(header) + "\n" + config_yaml


def __getattr__(name: str):
    # The Ray side (the trainable and the Tuner), loaded only when asked for, so that loading and
    # validating spaces never imports Ray.
    if name in ("condense_trial", "run_sweep", "TrialResources", "TrialSetup"):
        from idc_ray.distributed import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUTO_POOL",
    "METRICS",
    "PARAM_TYPES",
    "Param",
    "TrialRow",
    "TuneSpace",
    "best_config_text",
    "config_keys",
    "data_settings",
    "ensure_pool",
    "interim_epochs",
    "load_space",
    "pool_dir",
    "pool_settings",
    "pool_shared",
    "rank_trials",
    "results_markdown",
    "settings_key",
    "space_from_dict",
    "stage_outers",
    "trial_config",
]
