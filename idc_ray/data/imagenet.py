"""ImageNet subsets from an ImageFolder tree: ``<root>/train/<wnid>/*.JPEG``, ``<root>/val/<wnid>/*``,
and any folder of images per class (``imagefolder``, :func:`load_image_folder`).

The class list decides which wnids are loaded and in which order: label ``i`` is the ``i``-th
wnid of the list (the published loader's ``find_subclasses``). ImageNet-100 is the 100-class
list of Tian et al. 2020 (CMC, ``imagenet100.txt`` in their repository), which the IDC paper
uses; ImageNet-10 is its first 10 classes, as the published code takes ``classes[:nclass]``.

Class-list file format (:func:`read_class_list`): UTF-8 text, one class per line, the wnid as the
first whitespace-separated token (anything after it, e.g. a readable name, is ignored), blank
lines and ``#`` comments skipped, order = label order.

Images are decoded with PIL, resized so the shorter side is ``size`` and center-cropped to
``size`` x ``size`` (torchvision's Resize + CenterCrop on PIL images, the published transform),
once, and cached as uint8 (see :mod:`idc_ray.data.cache`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch

from idc_ray import storage

from .cache import cache_path, cached
from .sources import Arrays, DatasetFormatError, DatasetNotFoundError, _require_root

# Tian, Krishnan & Isola 2020 (CMC), imagenet100.txt, in file order.
IMAGENET100_CLASSES = tuple(
    """n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
    n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
    n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
    n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
    n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
    n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
    n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
    n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
    n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
    n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622""".split()
)
IMAGENET10_CLASSES = IMAGENET100_CLASSES[:10]
SPLIT_FOLDERS = (("train", "train"), ("val", "test"))  # (folder, split)


def read_class_list(uri: str) -> tuple[str, ...]:
    """The wnids of a class-list file (local path or URL), in label order."""
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetFormatError(f"class list '{uri}' is not UTF-8 text; write one wnid per line") from None
    names = [line.split("#", 1)[0].split() for line in text.splitlines()]
    wnids = tuple(tokens[0] for tokens in names if tokens)
    if not wnids:
        raise DatasetFormatError(f"class list '{uri}' names no classes; write one wnid per line")
    duplicates = sorted({w for w in wnids if wnids.count(w) > 1})
    if duplicates:
        raise DatasetFormatError(f"class list '{uri}' repeats {', '.join(duplicates[:5])}; each class once")
    return wnids


def _list_images(name: str, folder: str, classes: Sequence[str]) -> list[tuple[str, int]]:
    """(path, label) of every image, via torchvision's ImageFolder scan (sorted by wnid, then file)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    missing = [w for w in classes if not os.path.isdir(os.path.join(folder, w))]
    if missing:
        raise DatasetNotFoundError(
            f"dataset '{name}': {len(missing)} of {len(classes)} class folders missing under {folder} "
            f"(first: {', '.join(missing[:3])}); expected {folder}/<wnid>/*.JPEG for every wnid of the class list, "
            f"or pass --data-uri pointing at the ImageNet root")
    try:
        return make_dataset(folder, {w: i for i, w in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    except FileNotFoundError:
        empty = [w for w in classes if not any(e.is_file() for e in os.scandir(os.path.join(folder, w)))]
        raise DatasetNotFoundError(f"dataset '{name}': class folders without images under {folder} "
                                   f"(first: {', '.join(empty[:3])}); every class needs image files") from None


def _decode(path: str, size: int, channels: int = 3) -> np.ndarray:
    """Resize(size) + CenterCrop(size) of one image as (channels, size, size) uint8 (1: gray, 3: RGB)."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    try:
        with Image.open(path) as im:
            out = TF.center_crop(TF.resize(im.convert("L" if channels == 1 else "RGB"), size), size)
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DatasetFormatError(f"cannot decode image {path} ({e}); remove or replace the file") from None
    return np.asarray(out).reshape(size, size, channels).transpose(2, 0, 1)


def _decode_all(samples: list[tuple[str, int]], size: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(lambda s: _decode(s[0], size, channels), samples)):
            x[i] = image
    y = np.asarray([label for _, label in samples], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def load_imagenet_folder(root=None, *, classes: Sequence[str], size: int = 224, name: str = "imagenet") -> Arrays:
    """Train (``train/``) and test (``val/``) images of ``classes`` as uint8 (N, 3, size, size),
    decoded once and cached; labels follow the order of ``classes``."""
    root = _require_root(name, root, os.path.join("train", "<wnid>"))
    for folder, _ in SPLIT_FOLDERS:
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            raise DatasetNotFoundError(f"dataset '{name}': expected the folder {path} (ImageFolder layout "
                                       f"{folder}/<wnid>/*.JPEG) but it does not exist; pass --data-uri pointing at the ImageNet root")
    samples = {split: _list_images(name, os.path.join(root, folder), classes) for folder, split in SPLIT_FOLDERS}
    key = {"loader": "imagenet-folder", "size": size, "classes": list(classes),
           "files": {s: [(os.path.relpath(p, root), os.path.getsize(p)) for p, _ in v] for s, v in samples.items()}}

    def build():
        train = _decode_all(samples["train"], size)
        test = _decode_all(samples["test"], size)
        return (*train, *test), {"classes": list(classes), "size": size}

    arrays, _ = cached(cache_path(root, f"{name}-{size}px", key), build)
    return arrays


# ---------------------------------------------------------------------------------------------
# Any folder of images per class
# ---------------------------------------------------------------------------------------------
IMAGEFOLDER = "imagefolder"
HELD_OUT_EVERY = 10  # no test folder: the 10th, 20th, ... file of each class (sorted names) is test
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_TEST_FOLDERS = ("val", "test")


def _class_folders(folder: str) -> tuple[str, ...]:
    names = tuple(sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")))
    if not names:
        raise DatasetNotFoundError(f"dataset '{IMAGEFOLDER}': no class folders under {folder}; expected "
                                   f"{folder}/<class>/*.png (one sub-folder per class)")
    return names


def _channels(samples: list[tuple[str, int]]) -> int:
    """1 when every image is gray (PIL mode L and kin), else 3 (gray images are then read as RGB)."""
    from PIL import Image

    def gray(path: str) -> bool:
        try:
            with Image.open(path) as im:
                return im.mode in _GRAY_MODES
        except OSError as e:
            raise DatasetFormatError(f"cannot decode image {path} ({e}); remove or replace the file") from None

    return 1 if all(gray(p) for p, _ in samples) else 3


def _image_folder_samples(root: str) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]:
    """Class names and (path, label) per split: ``train/`` beside ``val/`` or ``test/`` when the
    folder has them, else the held-out rule of :data:`HELD_OUT_EVERY` on ``<root>/<class>/``."""
    train = os.path.join(root, "train")
    tests = [os.path.join(root, f) for f in _TEST_FOLDERS if os.path.isdir(os.path.join(root, f))]
    if os.path.isdir(train) and tests:
        classes = _class_folders(train)
        return classes, {"train": _list_images(IMAGEFOLDER, train, classes),
                         "test": _list_images(IMAGEFOLDER, tests[0], classes)}
    classes = _class_folders(root)
    samples = _list_images(IMAGEFOLDER, root, classes)
    position = {}
    split: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for path, label in samples:
        position[label] = position.get(label, 0) + 1
        split["test" if position[label] % HELD_OUT_EVERY == 0 else "train"].append((path, label))
    return classes, split


def load_image_folder(root, *, size: int) -> tuple[Arrays, tuple[str, ...], int]:
    """Any class-folder tree as uint8 arrays: ``(arrays, class names, channels)``.

    Layout: ``<root>/<class>/*`` (PNG, JPEG, any sizes), or ``<root>/train/<class>/*`` with
    ``<root>/val/`` or ``<root>/test/``. Labels follow the sorted class-folder names. Without a
    test folder, the 10th, 20th, ... image of each class in sorted file-name order is held out
    as test. Gray images only: one channel; otherwise RGB. Resized so the shorter side is
    ``size`` and centre-cropped, decoded once and cached (:mod:`idc_ray.data.cache`).
    """
    root = _require_root(IMAGEFOLDER, root, "<class>/*.png")
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"dataset '{IMAGEFOLDER}': {root} is not a folder; pass the folder that holds "
                                   "one sub-folder of images per class")
    classes, samples = _image_folder_samples(root)
    channels = _channels(samples["train"] + samples["test"])
    key = {"loader": IMAGEFOLDER, "size": size, "channels": channels, "classes": list(classes),
           "files": {s: [(os.path.relpath(p, root), os.path.getsize(p)) for p, _ in v] for s, v in samples.items()}}

    def build():
        arrays = (*_decode_all(samples["train"], size, channels), *_decode_all(samples["test"], size, channels))
        return arrays, {"classes": list(classes), "size": size}

    arrays, _ = cached(cache_path(root, f"{IMAGEFOLDER}-{size}px", key), build)
    return arrays, classes, channels
