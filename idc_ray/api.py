"""idc-ray from Python: :func:`condense`, :func:`load`, :func:`evaluate`, the :class:`Condensed`
set and :func:`tune_trainable` for a user's own ``ray.tune.Tuner`` (walkthrough: docs/python.md).

    import idc_ray
    condensed = idc_ray.condense("mnist5k", ipc=1, backend="local", **{"schedule.outer_iters": 2})
    train_set = condensed.formed()                  # torch Dataset of formed, normalised samples
    report = idc_ray.evaluate(condensed, models="convnet3", repeat=1, epochs=5, backend="local")

One data path: data given in memory (tensors, NumPy arrays, a torch Dataset) is written once
to the project's Parquet dataset format under ``<output>/data`` in this process; a
``ray.data.Dataset`` is written to the same format by Ray Data workers
(``idc_ray.distributed.interop``), never collected on the driver; an ``imagefolder:ROOT`` is
decoded as ``jobs/prepare_data.py --dataset imagefolder`` does. The condensation then reads that
folder as it reads any prepared dataset (each matcher only its classes' files), through the same
:func:`run_condensation` that ``jobs/condense.py`` calls.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from idc_ray import storage
from idc_ray.artifacts import MANIFEST, form_training_set, load_condensed, load_upsampler
from idc_ray.backends import backend_for
from idc_ray.cli import ProgressPrinter
from idc_ray.config import IDCConfig, apply_overrides, from_dict, load_preset, load_yaml, preset_names, validate
from idc_ray.data import DATASETS, PARQUET, DatasetSpec, channel_stats, get_spec, parquet, stats_from_sums
from idc_ray.data.prepare import IMAGEFOLDER, dataset_info, prepare
from idc_ray.distributed import interop
from idc_ray.evaluation.run import evaluate_artifact
from idc_ray.run.backend import RunOptions
from idc_ray.run.job import PoolOptions, Run, condense_to

BACKENDS = ("ray", "local")
DATA_FOLDER = "data"  # <output>/data: the Parquet form of data given in memory, as Ray Data or as an image folder
CUSTOM = "custom"  # dataset.json name (and family) of data no registered dataset describes


@dataclass(frozen=True)
class Condensed:
    """A condensed set: ``stored`` float32 (classes, ipc, C, H, W) in [0, 1], ``labels`` int64
    class-major, the ``manifest`` dict and the artifact folder's ``uri``.

        condensed = idc_ray.load("runs/demo")
        loader = torch.utils.data.DataLoader(condensed.formed(), batch_size=64, shuffle=True)
    """

    stored: torch.Tensor
    labels: torch.Tensor
    manifest: dict[str, Any]
    uri: str

    @property
    def manifest_uri(self) -> str:
        return storage.join(self.uri, MANIFEST)

    def formed(self, *, normalize: bool = True) -> torch.utils.data.TensorDataset:
        """The formed training set as IDC evaluates it: every stored sample formed with the
        manifest's formation, normalised with its mean/std (``normalize=False``: in [0, 1])."""
        upsampler = load_upsampler(self.uri, self.manifest)  # a learned formation's, else None
        return torch.utils.data.TensorDataset(*form_training_set(self.stored, self.labels, self.manifest,
                                                                 normalize=normalize, upsampler=upsampler))

    def to_ray_dataset(self, *, normalize: bool = True):
        """The formed samples as a ``ray.data.Dataset`` (``image`` float32 (C, H, W), ``label``):
        Ray Data reads the artifact's stored rows and forms each class in a worker.

            ds = condensed.to_ray_dataset()      # e.g. for a Ray Train TorchTrainer
        """
        return interop.formed_ray_dataset(self.uri, normalize=normalize)


@dataclass(frozen=True)
class Report:
    """An evaluation: ``results`` is the results.json document (docs/evaluation.md);
    ``accuracy`` the mean top-1 in [0, 1] of each test model."""

    results: dict[str, Any]

    @property
    def accuracy(self) -> dict[str, float]:
        return {name: float(m["mean"]) for name, m in self.results["models"].items()}


def load(uri: str | os.PathLike) -> Condensed:
    """The condensed set written at ``uri`` (its folder or manifest.json, local or ``s3://``).

        condensed = idc_ray.load("s3://bucket/runs/c10")
    """
    if not isinstance(uri, (str, os.PathLike)):
        raise TypeError(f"uri must be a path or URL of a condensed set, got {type(uri).__name__}")
    uri = os.fspath(uri).rstrip("/")
    folder = uri[: -len(MANIFEST) - 1] if uri.endswith("/" + MANIFEST) else uri
    return Condensed(*load_condensed(folder), uri=folder)


def run_condensation(run: Run) -> Condensed:
    """Condense as ``run`` says and read the written set back: what :func:`condense` and
    ``jobs/condense.py`` both call."""
    return load(condense_to(run))


def condense(data: Any, *, ipc: int, factor: int | None = None, preset: str | None = None,
             config: IDCConfig | Mapping[str, Any] | str | os.PathLike | None = None, test: Any = None,
             output: str | os.PathLike | None = None, backend: str = "ray",
             storage_options: Mapping[str, Any] | None = None, address: str | None = None, device: str = "auto",
             image_column: str = "image", label_column: str = "label", image_size: int | None = None,
             pool_cache: str | None = None, progress: bool = False, **overrides: Any) -> Condensed:
    """Condense ``data`` to ``ipc`` stored images per class with IDC; returns the written set.

    Args:
        data: a registered dataset name (``"mnist5k"``, ``"cifar10"`` with ``data_uri`` in
            the overrides, ``"parquet"``), ``"imagefolder:ROOT"`` (a folder of images per class),
            a ``torch.utils.data.Dataset`` of (image tensor (C, H, W) in [0, 1] or uint8, int
            label), a pair (images, labels) of tensors or NumPy arrays, or a ``ray.data.Dataset``
            with ``image_column`` and ``label_column``. Labels are class ids 0..K-1.
        ipc, factor: stored images per class; the formation factor (None: the preset's).
        preset, config: the recipe: a preset name (default: the preset named like a registered
            ``data``, else the paper's defaults), then a config (IDCConfig, nested mapping or
            YAML path) on top. A preset of a registered dataset whose classes and image shape the
            given data matches brings that dataset's rules and mean/std; otherwise mean and std
            come from the training data.
        test: held-out data of the same kind as ``data`` (in-memory or Ray Data), for evaluation.
        output: the artifact folder (local or ``s3://``; default: a new temporary folder).
        backend: ``"ray"`` (matcher actors, the Ray at ``address``, else the running or a new
            local Ray) or ``"local"`` (this process, on ``device``).
        storage_options: fsspec/s3fs options for ``s3://`` URIs (else the AWS environment).
        image_size: the side images of an ``imagefolder:`` are resized and cropped to (default 32).
        pool_cache: the shared cache of pretrained expert pools (``expert.pretrained=auto``).
        overrides: config fields by dotted name, checked like ``--set``:
            ``**{"schedule.outer_iters": 5}``.
    Raises:
        TypeError or ValueError naming the argument that is wrong; nothing is condensed then.

        condensed = idc_ray.condense((images, labels), ipc=10, preset="cifar10")
    """
    _check_choices(ipc=ipc, factor=factor, backend=backend)
    with storage.configured(_storage_options(storage_options)):
        cfg = _recipe(data, preset, config, ipc, factor, overrides)
        output = _output(output)
        cfg = _with_data(cfg, data, test, output, _DataOptions(preset is not None or config is not None,
                                                               image_column, label_column, image_size))
        validate(cfg)
        printer = ProgressPrinter(cfg.schedule.outer_iters, cfg.schedule.inner_iters) if progress else None
        pool = None if pool_cache is None else PoolOptions(pool_cache)
        run_backend = backend_for(RunOptions(backend=backend), address=address, device=device)
        return run_condensation(Run(cfg, output, run_backend, RunOptions(backend=backend), on_progress=printer,
                                    pool=pool))


def evaluate(condensed: Condensed | str | os.PathLike, *, models: str | Sequence[str] | None = None,
             repeat: int | None = None, epochs: int | None = None, output: str | None = None, backend: str = "ray",
             address: str | None = None, device: str = "auto") -> Report:
    """Train each test model from scratch on the formed set (the paper's protocol, the set's own
    config for whatever is not given) and test it on the real test split; the report (results.json,
    results.md, curves.png) is written to ``output``, else the set's folder.

        report = idc_ray.evaluate("runs/demo", models=["convnet3"], repeat=1, epochs=50)
        report.accuracy["convnet3"]
    """
    if isinstance(condensed, Condensed):
        uri = condensed.uri
    elif isinstance(condensed, (str, os.PathLike)):
        uri = os.fspath(condensed)
    else:
        raise TypeError(f"condensed must be a Condensed or the URI of one, got {type(condensed).__name__}")
    if isinstance(models, str):
        models = (models,)
    if models is not None and (not models or not all(isinstance(m, str) for m in models)):
        raise TypeError(f"models must be a model name or a list of names such as ['convnet3'], got {models!r}")
    _check_choices(backend=backend, repeat=repeat, epochs=epochs)
    run_backend = backend_for(RunOptions(backend=backend), address=address, device=device)
    with run_backend.session():
        results = evaluate_artifact(uri, models=models, repeat=repeat, epochs=epochs, output=output,
                                    executor=run_backend.executor())
    return Report(results)


def tune_trainable(config: Mapping[str, Any]) -> None:
    """A trainable for your own ``ray.tune.Tuner``: condense, evaluate, report.

    ``config`` holds :func:`condense`'s arguments (``data``, ``ipc``, any dotted config field the
    search space sweeps, ...), optionally ``output_root`` (each trial writes
    ``<output_root>/<trial id>``; default a temporary folder) and ``eval`` (:func:`evaluate`'s
    ``models``/``repeat``/``epochs``). Both run in the trial's own process (``backend="local"``),
    so ``tune.with_resources`` sizes a trial; the decoded-data and expert-pool caches are shared
    between trials (``IDC_CACHE_DIR``, ``pool_cache``). Reports ``accuracy`` (mean over the
    models), ``accuracy_<model>`` and ``artifact``.

        tuner = ray.tune.Tuner(idc_ray.tune_trainable, param_space={"data": "mnist5k", "ipc": 1,
                               "match.lr_img": ray.tune.grid_search([0.01, 0.03])})
    """
    params = dict(config)
    evaluation = dict(params.pop("eval", {}))
    root = params.pop("output_root", None)
    output = tempfile.mkdtemp(prefix="idc-ray-trial-") if root is None else storage.join(root, interop.trial_id())
    condensed = condense(params.pop("data"), ipc=params.pop("ipc"), output=output, backend="local", **params)
    report = evaluate(condensed, backend="local", **evaluation)
    accuracy = report.accuracy
    interop.report({"accuracy": sum(accuracy.values()) / len(accuracy), "artifact": condensed.uri,
                    **{f"accuracy_{name}": value for name, value in accuracy.items()}})


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def _check_choices(**values: Any) -> None:
    """``ipc``/``factor``/``repeat``/``epochs``: an int >= 1 (or None where optional); ``backend``: a known one."""
    for name, value in values.items():
        if name == "backend":
            if value not in BACKENDS:
                raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {value!r}")
        elif value is None and name != "ipc":
            continue
        elif not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        elif value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _storage_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if options is None:
        return storage.current()
    if not isinstance(options, Mapping):
        raise TypeError(f"storage_options must be a dict of fsspec options, got {type(options).__name__}")
    return dict(options)


def _recipe(data: Any, preset: str | None, config: Any, ipc: int, factor: int | None,
            overrides: Mapping[str, Any]) -> IDCConfig:
    """Preset, config, ``ipc``/``factor`` and the dotted overrides, unvalidated (the data comes next)."""
    if preset is not None and (not isinstance(preset, str) or preset not in preset_names()):
        raise ValueError(f"preset must be one of {', '.join(preset_names())}, got {preset!r}")
    if preset is None and config is None and isinstance(data, str) and data in preset_names():
        preset = data
    cfg = load_preset(preset, validated=False) if preset else IDCConfig()
    if isinstance(config, IDCConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = from_dict(config, base=cfg, source="config", validated=False)
    elif isinstance(config, (str, os.PathLike)):
        cfg = load_yaml(config, base=cfg, validated=False)
    elif config is not None:
        raise TypeError(f"config must be an IDCConfig, a mapping or a YAML path, got {type(config).__name__}")
    fields = {"synset.ipc": ipc, **({} if factor is None else {"synset.factor": factor})}
    cfg = apply_overrides(cfg, {**fields, **overrides}, validated=False)
    validate(cfg)  # before any data is written
    return cfg


def _output(output: str | os.PathLike | None) -> str:
    if output is None:
        return tempfile.mkdtemp(prefix="idc-ray-")
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a folder path or URL, got {type(output).__name__}")
    output = os.fspath(output)
    # absolute: Ray workers write and read <output>/data from their own working folders
    return output if "://" in output else os.path.abspath(output)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _DataOptions:
    recipe_given: bool  # a preset or config was given: its registered dataset may describe the data
    image_column: str
    label_column: str
    image_size: int | None


def _with_data(cfg: IDCConfig, data: Any, test: Any, output: str, options: _DataOptions) -> IDCConfig:
    """``cfg`` reading ``data``: a registered name as it is, anything else written first to the
    Parquet dataset format under ``<output>/data``."""
    folder = storage.join(output, DATA_FOLDER)
    if isinstance(data, str):
        if test is not None:
            raise ValueError("test applies to in-memory and Ray Data inputs; a named dataset brings its own test split")
        if data.startswith(IMAGEFOLDER + ":"):
            prepare(IMAGEFOLDER, data[len(IMAGEFOLDER) + 1:], folder, size=options.image_size, encoding="raw",
                    overwrite=True)
            return apply_overrides(cfg, {"data.dataset": PARQUET, "data.data_uri": folder}, validated=False)
        if data not in (*DATASETS, PARQUET):
            raise ValueError(f"data: unknown dataset {data!r}; name one of {', '.join([*DATASETS, PARQUET])}, "
                             f"or pass imagefolder:ROOT, tensors, a torch Dataset or a ray.data.Dataset")
        cfg = apply_overrides(cfg, {"data.dataset": data}, validated=False)
        get_spec(data, cfg.data.data_uri)  # a parquet folder without dataset.json fails here
        return cfg
    if options.image_size is not None:
        raise ValueError("image_size applies to imagefolder:ROOT data only")
    storage.remove(folder, recursive=True)
    if interop.is_ray_dataset(data):
        return _write_ray(cfg, data, test, folder, options)
    splits = {"train": _arrays(data, "data")}
    if test is not None:
        splits["test"] = _arrays(test, "test")
    names = _class_names(data, splits)
    spec = _registered(cfg, options, len(names), tuple(splits["train"][0].shape[1:]))
    mean, std = channel_stats(splits["train"][0])
    info = _info(spec, names, splits["train"][0].shape[1:], mean, std)
    parquet.write_dataset(folder, splits, info, encoding="raw", overwrite=True)
    return apply_overrides(cfg, {"data.dataset": spec.name if spec else PARQUET, "data.data_uri": folder},
                           validated=False)


def _write_ray(cfg: IDCConfig, data: Any, test: Any, folder: str, options: _DataOptions) -> IDCConfig:
    """A ``ray.data.Dataset`` (and its ``test``) written by Ray Data workers; the driver sees summaries."""
    if test is not None and not interop.is_ray_dataset(test):
        raise TypeError(f"test must be a ray.data.Dataset like data, got {type(test).__name__}")
    columns = dict(image=options.image_column, label=options.label_column)
    entries = {"train": interop.write_split(data, folder, "train", **columns)}
    if test is not None:
        entries["test"] = interop.write_split(test, folder, "test", **columns)
    train = entries["train"]
    if not train["count"]:
        raise ValueError("data: the Ray Dataset holds no rows")
    k = max(len(e["class_counts"]) for e in entries.values())
    missing = [c for c in range(k) if c >= len(train["class_counts"]) or not train["class_counts"][c]]
    if missing:
        raise ValueError(f"data: classes {missing[:5]} have no training rows; labels must be 0..K-1, each present")
    shape = train["shape"]
    spec = _registered(cfg, options, k, tuple(shape))
    mean, std = stats_from_sums(torch.tensor(train["sum"]), torch.tensor(train["squares"]),
                                train["count"] * shape[1] * shape[2])
    info = _info(spec, tuple(str(c) for c in range(k)), shape, mean, std)
    split_keys = ("files", "labels", "count", "class_counts")
    parquet.write_info(folder, info, {s: {key: e[key] for key in split_keys} for s, e in entries.items()}, "raw")
    return apply_overrides(cfg, {"data.dataset": spec.name if spec else PARQUET, "data.data_uri": folder},
                           validated=False)


def _registered(cfg: IDCConfig, options: _DataOptions, classes: int, shape: tuple[int, ...]) -> DatasetSpec | None:
    """The recipe's registered dataset when the data fits its classes and shape (its rules and mean/std apply)."""
    spec = DATASETS.get(cfg.data.dataset)
    if not options.recipe_given or spec is None or spec.measure_stats:
        return None
    return spec if (spec.num_classes, spec.channels, spec.size, spec.size) == (classes, *shape) else None


def _info(spec: DatasetSpec | None, names: Sequence[str], shape: Sequence[int], mean, std) -> dict[str, Any]:
    source = {"api": "idc_ray.condense"}
    if spec is not None:
        return dataset_info(spec, source)
    c, h, _ = (int(v) for v in shape)
    return {"name": CUSTOM, "family": CUSTOM, "class_names": [str(n) for n in names], "shape": [c, h, h],
            "mean": list(mean), "std": list(std), "lr_base_size": h, "flip": True, "source": source}


def _arrays(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """In-memory data as uint8 (N, C, H, W) images and int64 labels."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(v) for v in data)
    elif isinstance(data, torch.utils.data.Dataset):
        pairs = [data[i] for i in range(len(data))]
        if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise ValueError(f"{name}: a torch Dataset must yield (image, label) pairs and hold at least one")
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    else:
        raise TypeError(f"{name} must be a dataset name, imagefolder:ROOT, a (images, labels) pair, a torch Dataset "
                        f"or a ray.data.Dataset, got {type(data).__name__}")
    return _uint8(x, name), _labels(y, len(x), name)


def _uint8(x: torch.Tensor, name: str) -> torch.Tensor:
    x = x.unsqueeze(1) if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[2] != x.shape[3] or not len(x):
        raise ValueError(f"{name}: images must be (N, C, H, W) or (N, H, W) with H == W, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point() or float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError(f"{name}: images must be uint8 or floats in [0, 1], got {x.dtype} in "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x.double().mul(255).round().to(torch.uint8).contiguous()


def _labels(y: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (n,):
        raise ValueError(f"{name}: labels must be {n} integer class ids, got {y.dtype} {tuple(y.shape)}")
    if int(y.min()) < 0:
        raise ValueError(f"{name}: labels must be class ids 0..K-1, got {int(y.min())}")
    return y.to(torch.int64)


def _class_names(data: Any, splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[str, ...]:
    """``data.classes`` (torchvision's datasets) when it names every class, else "0", "1", ..."""
    k = max(int(y.max()) for _, y in splits.values() if len(y)) + 1
    present = torch.bincount(splits["train"][1], minlength=k)
    if (present == 0).any():
        missing = torch.nonzero(present == 0).flatten().tolist()
        raise ValueError(f"data: classes {missing[:5]} have no training images; labels must be 0..K-1, each present")
    names = getattr(data, "classes", None)
    return tuple(str(n) for n in names) if isinstance(names, (list, tuple)) and len(names) == k else tuple(map(str, range(k)))


__all__ = ["Condensed", "Report", "condense", "evaluate", "load", "run_condensation", "tune_trainable"]
