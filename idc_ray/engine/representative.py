"""Representative real batches (DREAM, Liu et al., ICCV 2023), the ``match.sampling`` option.

DREAM replaces the uniform draw of a class's real matching batch by the images nearest the
centres of ``batch_real`` k-means clusters of the class's images, clustered in the embedding of
the current expert network (the flattened input of its classifier, ``model.embed``). As the
published DREAM code runs it (condense.py with ``--interval 10``, query_strategies/
kmeans_sampling.py): the clusters are recomputed for every class at each inner iteration ``ot``
with ``ot % interval == 0``, so the blocks restart with every outer iteration; the same picks
serve every step of the block (only the augmentation changes); a centre's pick is the image of
smallest Euclidean distance to it, so two centres may pick the same image.

Differences from the published code, each to keep the engine's properties: the images are
normalised as the expert sees them during matching (DREAM embeds the unnormalised tensors);
networks are embedded in eval mode (a BatchNorm expert keeps its running statistics, which
would otherwise depend on which classes an actor holds; the default instance norm has no
running statistics, so nothing changes there); k-means starts from distinct images drawn from
the generator keyed by (seed, "representative", class, outer, block start), so the picks do not
depend on how classes are sharded over actors, and a resume (always at an outer boundary)
recomputes them exactly.

k-means is written here in a few lines of torch: scikit-learn's ``KMeans`` (in the stack through
mlxtend) works on NumPy arrays on the CPU, so each refresh would copy the embeddings off the
matcher's GPU and cluster them there; no library in the stack clusters torch tensors on the
device. Centres are updated with a one-hot matrix product rather
than ``index_add_``, whose atomic CUDA adds are not deterministic.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from idc_ray.engine import rng

EMBED_CHUNK = 512  # images per embedding forward pass (bounds memory for large classes)
MAX_ITERS = 100  # Lloyd iterations at most; the assignments usually settle in far fewer


Prepare = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor, prepare: Prepare = lambda x: x,
                 chunk: int = EMBED_CHUNK) -> torch.Tensor:
    """``model.embed(prepare(chunk))`` over ``images`` in fixed chunks, in eval mode, leaving the
    model as it was. ``prepare`` moves and normalises a chunk as the expert's inputs are."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.embed(prepare(images[i : i + chunk])) for i in range(0, len(images), chunk)])
    finally:
        model.train(was_training)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, max_iters: int = MAX_ITERS) -> torch.Tensor:
    """Centres of ``k`` clusters of the rows of ``x`` (Lloyd's algorithm, Euclidean).

    Starts from ``k`` distinct rows drawn from ``generator`` (Forgy initialisation) and stops when
    no assignment changes or after ``max_iters`` rounds. A centre whose cluster empties stays put.
    """
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= {len(x)} points, got k={k}")
    start = torch.randperm(len(x), generator=generator)[:k].to(x.device)
    centres = x[start].clone()
    assign = None
    for _ in range(max_iters):
        new = torch.cdist(x, centres).argmin(dim=1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        onehot = F.one_hot(assign, k).to(x.dtype)
        counts = onehot.sum(dim=0)
        means = (onehot.T @ x) / counts.clamp(min=1).unsqueeze(1)
        centres = torch.where(counts.unsqueeze(1) > 0, means, centres)
    return centres


def nearest_to_centres(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """For each centre, the index of the row of ``x`` closest to it."""
    return torch.cdist(centres, x).argmin(dim=1)


def representative_indices(features: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the images nearest the centres of ``k`` clusters of ``features`` (one per centre,
    in centre order). With at most ``k`` images, every image once (as ``min(count, batch_real)``)."""
    if len(features) <= k:
        return torch.arange(len(features))
    return nearest_to_centres(features, kmeans(features, k, generator)).cpu()


class RepresentativeBatches:
    """Each class's representative picks for the current refresh block of ``refresh`` inner
    iterations, computed at the block's first step with the expert of that step."""

    def __init__(self, seed: int, batch: int, refresh: int, prepare: Prepare = lambda x: x):
        if refresh < 1:
            raise ValueError(f"the refresh interval must be at least 1 inner iteration, got {refresh}")
        self.seed, self.batch, self.refresh, self.prepare = seed, batch, refresh, prepare
        self._picks: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}  # label -> (block, indices)

    def indices(self, label: int, images: torch.Tensor, model: nn.Module, outer: int, inner: int) -> torch.Tensor:
        """Positions (in the class's dataset order) of class ``label``'s batch at (outer, inner).

        ``images``: all the class's images, in [0, 1] (``prepare`` normalises them).
        """
        block = (outer, inner - inner % self.refresh)
        cached = self._picks.get(label)
        if cached is None or cached[0] != block:
            g = rng.generator(self.seed, "representative", label, *block)
            cached = (block, representative_indices(embed_images(model, images, self.prepare), self.batch, g))
            self._picks[label] = cached
        return cached[1]
