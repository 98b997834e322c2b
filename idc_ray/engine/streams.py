"""Real-data streams as the published loaders iterate them, every position derived from the step.

The published condense.py reads real images from one persistent loader (data.py,
``ClassMemDataLoader``, used by default since ``load_memory`` defaults to true):

* matching, per class: a ``BatchSampler`` over a ``SubsetRandomSampler`` of the class's images,
  repeated forever. Each pass is a fresh permutation of the class cut into ``count // b``
  batches of ``b = min(count, batch_real)``; ``drop_last``: the pass's last ``count mod b``
  images are skipped. So within a pass no image repeats, and every image of the class is seen
  once per pass except the (re-drawn each pass) dropped tail.
* expert: one ``BatchSampler`` over a random permutation of the whole training set, repeated
  forever with ``drop_last=False``: each epoch ends with a partial batch of ``N mod batch``
  images. The update after each inner iteration (train.py ``train_epoch`` with ``n_data``) takes
  batches until at least ``n_data`` images were seen, at most one epoch's worth; each ``early``
  epoch takes ``ceil(N / batch)`` batches. The stream never restarts: not at a new outer
  iteration, not when the expert is re-initialised.

The published loaders keep the position as state. Here it is a function of the step, and each
pass's permutation comes from a generator keyed by (seed, stream, class, pass), so the batch a
step sees is the same in whichever actor draws it and after whichever resume.
``match.real_sampling: independent`` / ``expert.real_sampling: independent`` keep the earlier
draws (a fresh sample per step, keyed by (seed, class, outer, inner)) for comparison.
"""

from __future__ import annotations

import math

import torch

from idc_ray.engine import rng

REAL_SAMPLINGS = ("stream", "independent")


def global_step(outer: int, inner: int, inner_iters: int) -> int:
    """The index of inner iteration ``inner`` of outer iteration ``outer`` over the whole run."""
    return outer * inner_iters + inner


def class_stream_indices(seed: int, label: int, count: int, batch: int, step: int) -> torch.Tensor:
    """Positions (in the class's dataset order) of class ``label``'s real batch at ``step``.

    Pass ``p = step // (count // b)`` is a permutation of the class's ``count`` images drawn from
    the (seed, "match-real", label, p) generator; the step takes its ``step mod (count // b)``-th
    slice of ``b = min(count, batch)`` images (published ``ClassBatchSampler``, ``drop_last``).
    """
    if count < 1 or batch < 1:
        raise ValueError(f"a class stream needs count >= 1 and batch >= 1, got {count}, {batch}")
    size = min(count, batch)
    epoch, slot = divmod(step, count // size)
    order = torch.randperm(count, generator=rng.generator(seed, "match-real", label, epoch))
    return order[slot * size : (slot + 1) * size]


class ExpertStream:
    """The expert's real-data stream: global batch ``t`` is slice ``t mod L`` of epoch
    ``t // L``'s permutation of all ``images`` (L = ceil(images / batch); the last slice of an
    epoch is the partial batch). :meth:`start` gives where each update begins, counting every
    update and ``early`` epoch of the run before it, as the published persistent loader does.

    Positions are computed by walking the run's updates from the start (integer arithmetic
    only); the walk is remembered, so a trajectory asking in order pays once per step.
    """

    def __init__(self, images: int, batch: int, n_data: int, inner_iters: int, fix_iter: int,
                 early: int, seed: int):
        if images < 1 or batch < 1 or inner_iters < 1 or fix_iter < 1:
            raise ValueError("an expert stream needs images, batch, inner_iters and fix_iter >= 1")
        self.images, self.batch, self.n_data, self.seed = images, batch, n_data, seed
        self.inner_iters, self.fix_iter, self.early = inner_iters, fix_iter, early
        self.per_epoch = math.ceil(images / batch)
        self._walked = (0, 0)  # (update index, batches consumed before it)
        self._order: tuple[int, torch.Tensor] | None = None  # the last epoch's permutation

    def batch_len(self, t: int) -> int:
        """Images in global batch ``t``: ``batch``, or the remainder for an epoch's last one."""
        if t % self.per_epoch < self.per_epoch - 1:
            return self.batch
        return self.images - (self.per_epoch - 1) * self.batch

    def batch_indices(self, t: int) -> torch.Tensor:
        """Indices (into the store's order) of the images of global batch ``t``."""
        epoch, slot = divmod(t, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            g = rng.generator(self.seed, "expert-real", epoch)
            self._order = (epoch, torch.randperm(self.images, generator=g))
        return self._order[1][slot * self.batch : (slot + 1) * self.batch]

    def update_len(self, t: int) -> int:
        """Batches the update starting at batch ``t`` takes: until ``n_data`` images were seen,
        at most one epoch's worth (train.py ``train_epoch`` over ``len(loader)`` batches)."""
        seen = taken = 0
        while self.n_data > 0 and seen < self.n_data and taken < self.per_epoch:
            seen += self.batch_len(t + taken)
            taken += 1
        return taken

    def early_len(self, update: int) -> int:
        """Batches the ``early`` epochs take before update ``update`` (nonzero only at the first
        inner iteration of an outer iteration that re-initialises the expert)."""
        outer, inner = divmod(update, self.inner_iters)
        return self.early * self.per_epoch if inner == 0 and outer % self.fix_iter == 0 else 0

    def start(self, outer: int, inner: int) -> int:
        """Global batch index where the update after inner iteration (outer, inner) begins."""
        target = global_step(outer, inner, self.inner_iters)
        done, t = self._walked if self._walked[0] <= target else (0, 0)
        while done < target:
            t += self.early_len(done)
            t += self.update_len(t)
            done += 1
        self._walked = (target, t)
        return t + self.early_len(target)
