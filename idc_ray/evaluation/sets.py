"""The training sets an evaluation compares: condensed artifacts, plain tensor files (DSA, DM,
KIP-style sets made elsewhere) and the random/herding baselines, each turned into its FORMED
training samples plus the config whose evaluation recipe applies to it.

Every set goes through the same code afterwards (:mod:`idc_ray.evaluation.run`; the sets of a
request are assembled in :mod:`idc_ray.evaluation.assembly`), so a baseline and a condensed set
of the same dataset are trained with the same networks, seeds and augmentation rules (paper
Section 4, "fair comparison").
"""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch

from idc_ray import storage
from idc_ray.artifacts import load_condensed, load_upsampler
from idc_ray.config import IDCConfig, apply_overrides, from_dict, load_preset, load_yaml, preset_names
from idc_ray.data import DatasetSpec, RealData, get_spec, with_stats
from idc_ray.engine.formation import get_former
from idc_ray.evaluation.protocol import check_models, form_stored

PLAIN_SUFFIXES = (".pt", ".pth")
# How far un-normalised data may stray outside [0, 1]. The published condense.py saves its data
# unclamped (clamped only at the start of each outer iteration; -0.20 to 1.24 seen on MNIST), and
# its test.py trains on them unclipped. Data normalised with a registered dataset's mean/std reach
# (1 - mean) / std >= 2, beyond this margin, and are refused with the hint to pass --normalized.
RANGE_MARGIN = 0.5


@dataclass
class EvalSet:
    """One training set to evaluate, formed and ready for :func:`~idc_ray.evaluation.protocol.run_task`."""

    label: str  # short unique name: the artifact's folder name, "random-ipc1", the file's stem
    method: str  # the row name in tables: "IDC (factor 2)", "IDC-I", "random", "herding", "file x.pt"
    kind: str  # artifact | file | baseline
    source: str  # URI, path or a description
    cfg: IDCConfig  # its evaluation recipe, dataset rules and seed
    x: torch.Tensor  # formed training images (N, C, H, W) in [0, 1]
    y: torch.Tensor  # (N,) int64
    ipc: int  # stored samples per class (the storage budget)
    factor: int  # formation factor (1: identity)
    formation: str
    stored: int  # stored samples
    info: dict[str, Any] = field(default_factory=dict)  # extra facts for the report (herding net, ...)
    labels: str = "hard"  # hard: its class labels; soft: a teacher's soft targets per augmented batch
    augment: bool = True  # False: trained without augmentation (DSA, CutMix, loader-side), for ARS

    @property
    def formed_per_stored(self) -> int:
        """Training samples per stored sample (f^2 for uniform formation); --fixed-compute divides by it."""
        return max(1, round(len(self.x) / max(1, self.stored)))

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "method": self.method, "kind": self.kind, "source": self.source,
                "dataset": self.cfg.data.dataset, "ipc": self.ipc, "factor": self.factor,
                "formation": self.formation, "stored_samples": self.stored, "formed_samples": len(self.x),
                "labels": self.labels, "augment": self.augment, **self.info}


def method_name(factor: int) -> str:
    return "IDC-I" if factor == 1 else f"IDC (factor {factor})"


def is_plain_file(uri: str) -> bool:
    """A plain tensor file (``.pt``/``.pth``, or any local regular file but a manifest) rather than
    an artifact folder (or its manifest.json)."""
    if os.path.basename(uri.rstrip("/")) == "manifest.json":
        return False
    if storage.is_local(uri):
        return os.path.isfile(uri) or uri.endswith(PLAIN_SUFFIXES)
    return uri.endswith(PLAIN_SUFFIXES)


def _basename(uri: str) -> str:
    name = posixpath.basename(uri.rstrip("/"))
    if name == "manifest.json":
        name = posixpath.basename(posixpath.dirname(uri.rstrip("/")))
    return name or "set"


def base_config(*, preset: str | None = None, config: str | None = None, dataset: str | None = None,
                fallback: IDCConfig | None = None) -> IDCConfig:
    """The config of a set that carries none (baselines, plain files): ``--preset``/``--config``
    when given, else ``fallback`` (the first artifact's, so baselines get its recipe), else the
    preset named like the dataset (the paper's settings), else the defaults."""
    if preset or config:
        cfg = load_preset(preset) if preset else IDCConfig()
        return load_yaml(config, base=cfg) if config else cfg
    if fallback is not None:
        return fallback
    if dataset and dataset in preset_names():
        return load_preset(dataset)
    return IDCConfig()


def with_overrides(cfg: IDCConfig, changes: Mapping[str, Any], overrides: Sequence[str] = ()) -> IDCConfig:
    """``cfg`` with dotted-key ``changes`` (the set's facts) then the user's ``--set`` strings."""
    cfg = apply_overrides(cfg, dict(changes)) if changes else cfg
    return apply_overrides(cfg, list(overrides)) if overrides else cfg


def data_key(cfg: IDCConfig) -> tuple[str, str | None]:
    """Which real data a set with config ``cfg`` is tested on: (dataset, data_uri)."""
    return cfg.data.dataset, cfg.data.data_uri


def spec_of(cfg: IDCConfig) -> DatasetSpec:
    return with_stats(get_spec(cfg.data.dataset, cfg.data.data_uri), cfg.data.stats)


# ---------------------------------------------------------------------------------------------
def artifact_set(uri: str, *, models: Sequence[str] | None, changes: Mapping[str, Any] | None = None,
                 overrides: Sequence[str] = ()) -> EvalSet:
    """A condensed artifact (folder or manifest URI), formed with its manifest's formation.

    Its own saved config supplies the recipe; ``changes`` (dotted keys such as ``eval.epochs``)
    and ``overrides`` (``--set`` strings) apply on top. ``models`` are checked against the
    data's shape before anything else happens.
    """
    stored, labels, manifest = load_condensed(uri)
    c, h, _ = manifest["shape"]
    check_models(models or (), c, h)
    formation = manifest["formation"]
    facts = {"synset.formation": formation["mode"], "synset.factor": formation["factor"],
             "synset.formation_axis": formation["axis"], "synset.bound": formation["bound"],
             "synset.ipc": manifest["ipc"], **(changes or {})}
    cfg = with_overrides(from_dict(manifest.get("config") or {"data": {"dataset": manifest["dataset"]}}), facts, overrides)
    check_models(cfg.eval.models, c, h)
    x, y = form_stored(cfg, spec_of(cfg), stored, labels, load_upsampler(uri, manifest))
    info = {"storage": manifest["storage"]} if "storage" in manifest else {}
    return EvalSet(_basename(uri), method_name(cfg.synset.factor), "artifact", uri, cfg, x, y, manifest["ipc"],
                   cfg.synset.factor, cfg.synset.formation, len(labels), info)


def file_set(uri: str, base: IDCConfig, *, factor: int | None = None, normalized: bool = False,
             changes: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> EvalSet:
    """A plain torch file of ``base``'s dataset: a dict with ``data`` ((N, C, H, W) or
    (classes, ipc, C, H, W)) and ``labels`` (N integers), e.g. a DSA/DM/KIP set made elsewhere, or
    the published IDC code's ``data.pt``, a list ``[data, labels]``.

    Formation is the identity unless ``factor`` (uniform formation) is given. Data are
    un-normalised pixels, used as they are: values slightly outside [0, 1] (within
    ``RANGE_MARGIN``) are kept unclipped, as the published test.py trains on them. Data
    normalised with the dataset's mean/std (DC/DSA/DM save them so) need ``normalized``.
    """
    cfg = with_overrides(base, changes or {}, ())
    spec = spec_of(cfg)
    try:
        payload = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    except storage.StorageError as e:
        if e.kind == "missing":
            raise FileNotFoundError(f"--condensed '{uri}' not found") from None
        raise
    except Exception as e:  # unpickling a foreign or damaged file raises many types
        raise ValueError(f"--condensed '{uri}' is not a torch file of tensors ({type(e).__name__})") from None
    if isinstance(payload, (list, tuple)) and len(payload) == 2:  # the published condense.py's data.pt
        payload = {"data": payload[0], "labels": payload[1]}
    if not isinstance(payload, Mapping) or not {"data", "labels"} <= set(payload):
        raise ValueError(f"--condensed '{uri}' must hold a dict with 'data' and 'labels' tensors "
                         "or a list [data, labels]")
    x, y = payload["data"], payload["labels"]
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        raise ValueError(f"'{uri}': data must be a tensor (N, C, H, W) or (classes, ipc, C, H, W)")
    x = x.flatten(0, 1) if x.dim() == 5 else x
    if tuple(x.shape[1:]) != (spec.channels, spec.size, spec.size):
        raise ValueError(f"'{uri}': samples are {tuple(x.shape[1:])} but dataset '{spec.name}' has "
                         f"{(spec.channels, spec.size, spec.size)}; pass the matching --dataset")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x) or y.is_floating_point():
        raise ValueError(f"'{uri}': labels must be {len(x)} integers (one class id per sample)")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise ValueError(f"'{uri}': labels outside [0, {spec.num_classes}) for dataset '{spec.name}'")
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if normalized:
        x = x * torch.tensor(spec.std).view(1, -1, 1, 1) + torch.tensor(spec.mean).view(1, -1, 1, 1)
    elif len(x) and (float(x.min()) < -RANGE_MARGIN or float(x.max()) > 1 + RANGE_MARGIN):
        raise ValueError(f"'{uri}': values span [{float(x.min()):.3g}, {float(x.max()):.3g}], beyond [0, 1] by "
                         f"more than {RANGE_MARGIN}; pass --normalized if they are normalised with the dataset's mean/std")
    f = factor or 1
    ipc = max(1, len(x) // spec.num_classes)
    cfg = with_overrides(cfg, {"synset.ipc": ipc, "synset.factor": f, "synset.formation": "uniform",
                               "synset.bound": max(cfg.synset.bound, ipc)}, overrides)
    check_models(cfg.eval.models, spec.channels, spec.size)
    with torch.no_grad():
        fx, fy = get_former("uniform", f)(x, y)
    return EvalSet(_basename(uri).rsplit(".", 1)[0], f"file {_basename(uri)}" + (f" (factor {f})" if f > 1 else ""),
                   "file", uri, cfg, fx, fy, ipc, f, "uniform", len(x))


def baseline_eval_set(name: str, ipc: int, base: IDCConfig, data: RealData, *, x: torch.Tensor, y: torch.Tensor,
                      overrides: Sequence[str] = (), info: dict | None = None) -> EvalSet:
    """Wrap a baseline's real images (classes, ipc, C, H, W). Its config is ``base`` at factor 1,
    so the dataset rules pick the recipe IDC-I gets (e.g. MNIST keeps CutMix)."""
    cfg = with_overrides(base, {"synset.ipc": ipc, "synset.factor": 1, "synset.formation": "uniform"}, overrides)
    return EvalSet(f"{name}-ipc{ipc}", name, "baseline", f"{name} baseline of {data.spec.name}", cfg,
                   x.flatten(0, 1), y, ipc, 1, "uniform", len(y), dict(info or {}))


def full_eval_set(base: IDCConfig, data: RealData) -> EvalSet:
    """The whole real training split as a set (the full-data arm), with ``base``'s recipe at
    factor 1 like the other baselines; ``ipc`` is its images per class (the smallest class)."""
    counts = torch.bincount(data.train_y, minlength=data.spec.num_classes)
    cfg = with_overrides(base, {"synset.factor": 1, "synset.formation": "uniform"})
    x = data.train_x.float() / 255 if data.train_x.dtype == torch.uint8 else data.train_x
    return EvalSet("full", "full data", "full", f"the whole {data.spec.name} training split", cfg, x,
                   data.train_y.long(), int(counts.min()), 1, "uniform", len(data.train_y))


def variant(s: EvalSet, *, labels: str, augment: bool) -> EvalSet:
    """``s`` trained with other labels or without augmentation: a copy labelled ``<label>-soft``,
    ``<label>-noaug``, ``<label>-soft-noaug`` (the same images)."""
    suffix = ("-soft" if labels == "soft" else "") + ("" if augment else "-noaug")
    return replace(s, label=s.label + suffix, labels=labels, augment=augment, info=dict(s.info))


def unique_labels(sets: list[EvalSet]) -> None:
    """Make labels unique (they name output folders): ipc1, ipc1-2, ..."""
    seen: dict[str, int] = {}
    for s in sets:
        n = seen.get(s.label, 0) + 1
        seen[s.label] = n
        if n > 1:
            s.label = f"{s.label}-{n}"
