"""Each stage's exemplars, made from that stage's real data only (section 5.3), and their cache.

A stage's real data is written once as a Parquet dataset (``stage-S/data``, labels 0..k-1) and
every method reads it from there: IDC condenses it with the base preset's settings through the
condensation job (:func:`condense_stage`, the one call into it), Herding and Random pick real
images with :mod:`idc_ray.evaluation.baselines`. Every result is cached under the stage's folder
(IDC: the condensation's artifact folder, whose manifest is written last with the sha256 of its
Parquet file; the baselines: a torch file written under a temporary name and renamed, then its
sha256 sidecar), so a rerun or a crash resumes without redoing finished work. A cached result
whose bytes do not match its sha256 is refused with one warning line naming it and made again
(IDC: resumed from the stage's last checkpoint), never used. An unfinished condensation
continues from its last checkpoint, and every draw is keyed by (seed, class, iteration), so the
resumed stage ends with the same bytes.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from idc_ray import storage
from idc_ray.config import IDCConfig, apply_overrides
from idc_ray.local import LocalBackend
from idc_ray.run.backend import Backend, RunOptions
from idc_ray.run.job import Run, condense_to
from idc_ray.engine import rng
from idc_ray.errors import first_line
from idc_ray.data import load_dataset
from idc_ray.evaluation.baselines import baseline_set, train_feature_net
from idc_ray.artifacts import ArtifactError, load_condensed, load_upsampler
from idc_ray.evaluation.protocol import form_stored
from idc_ray.evaluation.sets import artifact_set, file_set, is_plain_file
from idc_ray.data import get_spec

IDC, HERDING, RANDOM, NONE = "idc", "herding", "random", "none"
BUILTIN = (IDC, HERDING, RANDOM)  # the methods whose sets are made and cached
log = logging.getLogger("idc_ray")


@dataclass(frozen=True)
class ExemplarJob:
    """Make method ``method``'s exemplars of stage ``stage`` (a Ray task's whole input)."""

    stage: int
    method: str
    cfg: IDCConfig  # the base preset, data pointed at the stage's Parquet dataset, ipc = memory budget
    folder: str  # the stage's cache folder
    herding_epochs: int = 20
    backend: Backend | None = None  # the job's: IDC asks it for actors of the stage's own (condense_stage)


def stage_config(base: IDCConfig, stage_dir: str, memory_ipc: int) -> IDCConfig:
    """The base preset condensing the stage's Parquet dataset with ``memory_ipc`` stored images
    per class (no config field changes meaning: data.dataset=parquet, data.data_uri=<stage>)."""
    return apply_overrides(base, {"data.dataset": "parquet", "data.data_uri": stage_dir, "synset.ipc": memory_ipc,
                                  "synset.bound": max(base.synset.bound, memory_ipc)})


def condense_stage(cfg: IDCConfig, out_dir: str, device: str = "auto", backend: Backend | None = None) -> str:
    """The ONE call into the condensation job: condense ``cfg`` into the artifact folder
    ``out_dir`` (checkpoints beside it, resumed when present). With actors of its own when the
    job's ``backend`` has free resources for them now (``Backend.stage_backend``), else in this
    process (the task's); either way the bytes of the in-process condensation
    (tests/continual/test_stage_backend.py)."""
    stage = backend.stage_backend(get_spec(cfg.data.dataset, cfg.data.data_uri).num_classes, out_dir) if backend else None
    return condense_to(Run(cfg, out_dir, stage or LocalBackend(device), RunOptions(resume=True)))


def source_method(name: str) -> str:
    """The made method whose sets an ``--exemplars`` entry trains on: ``none`` (no replay memory)
    trains each stage on Random's picks of its new classes only, so it differs from ``random`` by
    the memory alone."""
    return RANDOM if name == NONE else name


def cache_path(job: ExemplarJob) -> str:
    return os.path.join(job.folder, IDC if job.method == IDC else f"{job.method}.pt")


def is_cached(job: ExemplarJob) -> bool:
    """Whether the job's result is cached and intact (its sha256 checked); a refused one gets one
    warning line naming the file and is made again."""
    target = cache_path(job)
    if job.method != IDC:
        return storage.cache_intact(target, f"making the {job.method} exemplars of stage {job.stage + 1} again")
    if not os.path.isfile(os.path.join(target, "manifest.json")):
        return False
    try:
        load_condensed(target)
        return True
    except ArtifactError as e:
        log.warning("%s; condensing stage %d again", e, job.stage + 1)
    return False


def make_exemplars(job: ExemplarJob, device: str | torch.device = "cpu") -> str:
    """Make and cache the job's exemplars unless cached; returns the cache path."""
    target = cache_path(job)
    if is_cached(job):
        return target
    if job.method == IDC:
        condense_stage(job.cfg, target, device=str(device), backend=job.backend)
        return target
    data = load_dataset("parquet", job.cfg.data.data_uri)
    cfg = replace(job.cfg, schedule=replace(job.cfg.schedule,
                                            seed=rng.derive_seed(job.cfg.schedule.seed, "continual-stage", job.stage)))
    net = train_feature_net(cfg, data, job.herding_epochs, device=device) if job.method == HERDING else None
    stored, labels = baseline_set(job.method, cfg, data, job.cfg.synset.ipc, net=net, device=device)
    buffer = io.BytesIO()
    torch.save({"stored": stored.float().contiguous(), "labels": labels}, buffer)
    storage.write_checked(target, buffer.getvalue())
    return target


def load_memory(job: ExemplarJob, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached exemplars of ``job`` as training images (IDC: formed as the evaluation protocol
    forms them, a learned formation with the stage's own upsampler) in [0, 1] and GLOBAL labels
    (stage label i -> classes[i])."""
    if job.method == IDC:
        stored, labels, manifest = load_condensed(cache_path(job))
        upsampler = load_upsampler(cache_path(job), manifest)
        x, y = form_stored(job.cfg, get_spec(job.cfg.data.dataset, job.cfg.data.data_uri), stored, labels, upsampler)
    else:
        payload = torch.load(io.BytesIO(storage.read_checked(cache_path(job))), map_location="cpu", weights_only=True)
        x, y = payload["stored"].flatten(0, 1), payload["labels"]
    return x.float(), torch.tensor(classes)[y]


def external_memory(name: str, uri: str, cfg: IDCConfig, stages: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A condensed set made elsewhere (DSA, DM, ...; an idc-ray artifact or a torch file with
    ``data`` and ``labels`` of the whole dataset, global labels) split into the stages' memories.

    Raises ValueError (one line) when its samples do not have the dataset's shape or a class has
    no exemplar."""
    if not is_plain_file(uri) and not Path(uri).is_dir():
        raise FileNotFoundError(f"--exemplars {name}={uri}: no such file or artifact folder")
    try:
        s = file_set(uri, cfg) if is_plain_file(uri) else artifact_set(uri, models=None)
    except ValueError as e:
        raise ValueError(f"--exemplars {name}={uri}: {first_line(e)}") from None
    spec = get_spec(cfg.data.dataset, cfg.data.data_uri)
    if tuple(s.x.shape[1:]) != (spec.channels, spec.size, spec.size):
        raise ValueError(f"--exemplars {name}={uri}: samples are {tuple(s.x.shape[1:])}, the dataset's are "
                         f"{(spec.channels, spec.size, spec.size)}; pass a set of this dataset")
    out = []
    for classes in stages:
        keep = torch.isin(s.y, torch.tensor(classes))
        missing = sorted(set(classes) - set(s.y[keep].tolist()))
        if missing:
            raise ValueError(f"--exemplars {name}={uri}: no exemplar of classes {missing[:5]}; the set must cover every class")
        out.append((s.x[keep].float(), s.y[keep]))
    return out


def check_memory_budget(memory_ipc: int, smallest_class: int) -> None:
    if memory_ipc < 1:
        raise ValueError(f"--memory-ipc must be at least 1 image per class, got {memory_ipc}")
    if memory_ipc > smallest_class:
        raise ValueError(f"--memory-ipc {memory_ipc} is more than the {smallest_class} training images of the "
                         "smallest class; use a smaller budget")


def stage_folder(root: str | Path, stage: int) -> str:
    return str(Path(root) / f"stage-{stage + 1}")
