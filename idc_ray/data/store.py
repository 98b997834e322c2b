"""Per-class access to real training images, the only way the condensation engine reads them.

IDC samples ``batch_real`` real images of one class per matching step, so the store keeps the
images grouped by class in one contiguous float32 tensor (class blocks, each in the original
dataset order) and samples by index. A matcher that updates only some classes holds a store of
just those classes (:meth:`ClassStore.subset`), and because a class's block and its sampling
depend on nothing but that class, a class's samples are the same whichever other classes the
store holds: sharding classes across workers does not change what each class sees.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


class ClassStore:
    """Real training images of a set of classes, indexed per class, float32 in [0, 1].

    Images are kept un-normalised: the engine normalises (dataset mean/std) right before
    augmentation, as the published code does. uint8 input is divided by 255; floating input is
    taken as already in [0, 1]. The store stays on the device of its input (CPU normally);
    samples are small, so moving them to the accelerator per step is cheap.
    """

    def __init__(self, x: Tensor, y: Tensor, classes: Sequence[int] | None = None):
        if x.dim() != 4:
            raise ValueError(f"ClassStore expects images of shape (N, C, H, W), got {tuple(x.shape)}")
        if y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"ClassStore expects labels of shape ({len(x)},), got {tuple(y.shape)}")
        y = y.long()
        present = sorted(int(c) for c in torch.unique(y).tolist())
        wanted = present if classes is None else sorted({int(c) for c in classes})
        missing = [c for c in wanted if c not in present]
        if missing:
            raise ValueError(f"ClassStore: classes {missing} have no images (present: {present})")

        blocks, starts, counts = [], {}, {}
        offset = 0
        for c in wanted:
            idx = torch.nonzero(y == c, as_tuple=True)[0]  # ascending: original order within class
            blocks.append(x[idx])
            starts[c], counts[c] = offset, len(idx)
            offset += len(idx)
        data = torch.cat(blocks) if blocks else x[:0]
        self._x = data.float().div_(255.0) if data.dtype == torch.uint8 else data.float()
        self._y = torch.cat([torch.full((counts[c],), c, dtype=torch.long) for c in wanted]) if wanted else y[:0]
        self._start, self._count = starts, counts
        self.classes: tuple[int, ...] = tuple(wanted)

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._x)

    def __repr__(self) -> str:
        shape = tuple(self._x.shape[1:])
        return f"ClassStore(classes={self.classes}, images={len(self)}, shape={shape})"

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of every image."""
        return tuple(self._x.shape[1:])

    def _check(self, c: int) -> int:
        c = int(c)
        if c not in self._count:
            raise KeyError(f"class {c} is not held by this store (holds {self.classes})")
        return c

    def count(self, c: int) -> int:
        """Number of training images of class ``c``."""
        return self._count[self._check(c)]

    def class_tensor(self, c: int) -> Tensor:
        """All images of class ``c`` (a view, in original dataset order; do not modify)."""
        c = self._check(c)
        return self._x[self._start[c] : self._start[c] + self._count[c]]

    # -- sampling --------------------------------------------------------------------------
    def sample(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """``n`` random images of class ``c`` without replacement.

        Indices are ``torch.randperm(count(c), generator=generator)[:n]``; asking for more than
        the class holds returns the whole class in permuted order. The draw depends only on the
        generator state and the class's own images, never on which other classes are held.
        """
        if n < 0:
            raise ValueError(f"sample size must be >= 0, got {n}")
        c = self._check(c)
        idx = torch.randperm(self._count[c], generator=generator)[:n]
        return self._x[self._start[c] + idx.to(self._x.device)]

    def sample_any(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` random images across all held classes without replacement, with their labels.

        Used for the expert network's training on real data; capped at ``len(self)``.
        """
        if n < 0:
            raise ValueError(f"sample size must be >= 0, got {n}")
        idx = torch.randperm(len(self._x), generator=generator)[:n].to(self._x.device)
        return self._x[idx], self._y[idx]

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The images at store positions ``idx`` (class blocks in order, each in dataset order)
        with their labels: how the expert reads a batch of its real-data stream."""
        idx = idx.to(self._x.device)
        return self._x[idx], self._y[idx]

    def subset(self, classes: Sequence[int]) -> "ClassStore":
        """A store holding only ``classes`` (copies their blocks, so this store can be dropped)."""
        classes = sorted({self._check(c) for c in classes})
        if not classes:
            return ClassStore(self._x[:0], self._y[:0], classes=[])
        x = torch.cat([self.class_tensor(c) for c in classes])
        y = torch.cat([self._y[self._start[c] : self._start[c] + self._count[c]] for c in classes])
        return ClassStore(x, y, classes=classes)


def class_blocks(num_classes: int, parts: int, flag: str) -> list[list[int]]:
    """``range(num_classes)`` in ``parts`` contiguous blocks whose sizes differ by at most one, the
    larger first: 10 in 3 -> 0-3, 4-6, 7-9 (the matchers' class shards, the stages of a continual
    run). ``flag`` names the option that asked for ``parts``, for the error line."""
    if parts < 1:
        raise ValueError(f"{flag} must be at least 1, got {parts}")
    if parts > num_classes:
        raise ValueError(f"{flag} {parts} is more than the {num_classes} classes; use at most {num_classes}")
    return [block.tolist() for block in np.array_split(np.arange(num_classes), parts)]
