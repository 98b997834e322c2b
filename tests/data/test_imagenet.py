"""ImageNet subsets from an ImageFolder tree of PNG/JPEG files the test writes itself."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from idc_ray.data import DatasetNotFoundError, get_spec, load_dataset
from idc_ray.data import imagenet
from idc_ray.data.imagenet import IMAGENET10_CLASSES, IMAGENET100_CLASSES, load_imagenet_folder, read_class_list
from idc_ray.data.sources import DatasetFormatError


def _colour(label: int) -> tuple[int, int, int]:
    return (20 * label + 10, 250 - 20 * label, (77 * label) % 256)


def write_tree(root, classes, per_class=(2, 1), shape=(30, 40)):
    """Each image: a class-coloured centre square between grey side bands (W > H), alternating
    PNG and JPEG, so a resize + center crop leaves the class colour only."""
    h, w = shape
    for split, n in zip(("train", "val"), per_class):
        for label, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(n):
                img = np.full((h, w, 3), 128, np.uint8)
                img[:, (w - h) // 2 : (w + h) // 2] = _colour(label)
                ext = "png" if k % 2 == 0 else "JPEG"
                Image.fromarray(img).save(folder / f"img{k}.{ext}", quality=95)
    return root


def test_imagenet10_list_is_the_first_ten_of_the_cmc_hundred():
    assert len(IMAGENET100_CLASSES) == len(set(IMAGENET100_CLASSES)) == 100
    assert IMAGENET10_CLASSES == IMAGENET100_CLASSES[:10]
    assert IMAGENET100_CLASSES[:3] == ("n02869837", "n01749939", "n02488291")
    assert IMAGENET100_CLASSES[-1] == "n02090622"
    assert get_spec("imagenet10").class_names == IMAGENET10_CLASSES
    assert get_spec("imagenet100").class_names == IMAGENET100_CLASSES


def test_folder_is_resized_center_cropped_labelled_by_list_order(tmp_path):
    classes = IMAGENET10_CLASSES[:3]  # not in sorted order: labels must follow the list
    write_tree(tmp_path, classes)
    train_x, train_y, test_x, test_y = load_imagenet_folder(str(tmp_path), classes=classes, size=24, name="t")
    assert train_x.shape == (6, 3, 24, 24) and train_x.dtype == torch.uint8 and test_x.shape == (3, 3, 24, 24)
    assert sorted(train_y.tolist()) == [0, 0, 1, 1, 2, 2] and sorted(test_y.tolist()) == [0, 1, 2]
    for x, y in ((train_x, train_y), (test_x, test_y)):
        for img, label in zip(x, y):
            inner = img[:, 2:-2, 2:-2].float()  # away from the band edge the crop is the class colour
            expected = torch.tensor(_colour(int(label)), dtype=torch.float32).view(3, 1, 1)
            assert (inner - expected).abs().max() <= 6  # JPEG tolerance


def test_registered_imagenet10_loads_at_224_and_is_cached(tmp_path, monkeypatch):
    write_tree(tmp_path, IMAGENET10_CLASSES, per_class=(1, 1))
    data = load_dataset("imagenet10", str(tmp_path))
    assert data.train_x.shape == (10, 3, 224, 224) and data.test_x.shape == (10, 3, 224, 224)
    assert sorted(data.train_y.tolist()) == list(range(10))
    assert len(list((tmp_path / "idc-cache").glob("imagenet10-224px-*.pt"))) == 1  # IDC_CACHE_DIR, conftest

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagenet, "_decode", no_decoding)
    again = load_dataset("imagenet10", str(tmp_path))
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_corrupt_decode_cache_is_refused_in_one_line_and_decoded_again(tmp_path, monkeypatch, idc_log, damage, how):
    """The decode cache carries its sha256 (idc_ray.storage.seal): a flipped byte or a cut-off
    file is refused with one warning line naming it, decoded again into the same arrays and
    sealed anew. Without the check, the flipped byte would be mapped silently (no line)."""
    classes = IMAGENET10_CLASSES[:2]
    write_tree(tmp_path / "data", classes)
    first = load_imagenet_folder(str(tmp_path / "data"), classes=classes, size=16)
    (path,) = (tmp_path / "idc-cache").glob("imagenet-16px-*.pt")
    assert path.with_name(path.name + ".sha256").is_file()
    damage(path, how)
    decodes, decode = [], imagenet._decode
    monkeypatch.setattr(imagenet, "_decode", lambda *a: decodes.append(a) or decode(*a))
    warnings_seen = idc_log(logging.WARNING)
    again = load_imagenet_folder(str(tmp_path / "data"), classes=classes, size=16)
    assert len(warnings_seen) == 1 and str(path) in warnings_seen[0] and "sha256" in warnings_seen[0]
    assert "decoding again" in warnings_seen[0] and "\n" not in warnings_seen[0]
    assert decodes and all(torch.equal(a, b) for a, b in zip(first, again))
    decodes.clear()
    third = load_imagenet_folder(str(tmp_path / "data"), classes=classes, size=16)  # the rebuilt cache is good
    assert not decodes and len(warnings_seen) == 1 and all(torch.equal(a, b) for a, b in zip(first, third))


def test_cache_dir_from_environment_and_invalidated_by_new_files(tmp_path, monkeypatch):
    classes = IMAGENET10_CLASSES[:2]
    write_tree(tmp_path / "data", classes)
    monkeypatch.setenv("IDC_CACHE_DIR", str(tmp_path / "cache"))
    first = load_imagenet_folder(str(tmp_path / "data"), classes=classes, size=16)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "data" / "train" / classes[0] / "new.png")
    second = load_imagenet_folder(str(tmp_path / "data"), classes=classes, size=16)
    assert len(first[0]) == 4 and len(second[0]) == 5
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train", "val"]  # nothing beside the data


def test_cache_defaults_to_the_users_cache_folder(tmp_path, monkeypatch):
    """Without IDC_CACHE_DIR: $XDG_CACHE_HOME/idc_ray, else ~/.cache/idc_ray; never the data
    folder (often read-only or shared). Copies of the same files in two folders do not share
    a cache entry."""
    classes = IMAGENET10_CLASSES[:2]
    for name in ("data", "copy"):
        write_tree(tmp_path / name, classes)
    monkeypatch.delenv("IDC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_imagenet_folder(str(tmp_path / "data"), classes=classes, size=16)
    assert len(list((tmp_path / "xdg" / "idc_ray").glob("imagenet-16px-*.pt"))) == 1
    load_imagenet_folder(str(tmp_path / "copy"), classes=classes, size=16)
    assert len(list((tmp_path / "xdg" / "idc_ray").glob("imagenet-16px-*.pt"))) == 2
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    load_imagenet_folder(str(tmp_path / "data"), classes=classes, size=16)
    assert len(list((tmp_path / "home" / ".cache" / "idc_ray").glob("imagenet-16px-*.pt"))) == 1
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["train", "val"]


def test_missing_class_folder_and_split_are_named(tmp_path):
    classes = IMAGENET10_CLASSES[:2]
    with pytest.raises(DatasetNotFoundError, match="val"):
        (tmp_path / "train").mkdir()
        load_imagenet_folder(str(tmp_path), classes=classes, size=8, name="imagenet10")
    write_tree(tmp_path / "d", classes[:1])
    with pytest.raises(DatasetNotFoundError) as err:
        load_imagenet_folder(str(tmp_path / "d"), classes=classes, size=8, name="imagenet10")
    assert classes[1] in str(err.value) and "1 of 2" in str(err.value) and "\n" not in str(err.value)


def test_undecodable_image_is_named(tmp_path):
    classes = IMAGENET10_CLASSES[:1]
    write_tree(tmp_path, classes)
    bad = tmp_path / "train" / classes[0] / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFormatError, match="broken.JPEG"):
        load_imagenet_folder(str(tmp_path), classes=classes, size=8)


def test_class_list_file_format(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# my subset\nn01440764 tench\n\n  n02102040   # English springer\n")
    assert read_class_list(str(path)) == ("n01440764", "n02102040")
    path.write_text("n01440764\nn01440764\n")
    with pytest.raises(DatasetFormatError, match="repeats n01440764"):
        read_class_list(str(path))
    path.write_text("# nothing\n")
    with pytest.raises(DatasetFormatError, match="names no classes"):
        read_class_list(str(path))
