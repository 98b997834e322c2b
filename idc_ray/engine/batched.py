"""Gradient matching for many classes at once: the classes of a shard batched with torch.func.vmap.

IDC Algorithm 1 matches each class separately: for class c, the distance between the expert's
cross-entropy gradient on a real batch of c (detached) and on a synthetic batch of c
(differentiable in the synthetic images). The classes share the expert and never interact, so
the per-class gradient computations can run as one vmapped call over a stacked class dimension
instead of a Python loop of small autograd calls; on a GPU that turns many small kernels into
few large ones. Sampling and augmentation stay per class (``Matcher.class_batch``), so the
draws are exactly those of the loop; only the gradients are batched.

Because the classes are independent, the gradient of ``losses.sum()`` w.r.t. class c's stored
data is the gradient of ``losses[c]``, so one ``torch.autograd.grad`` serves every class.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from idc_ray.engine.matching import distance

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_real, y_real, x_syn, y_syn


def has_running_stats(model: nn.Module) -> bool:
    """True when a BatchNorm layer tracks running statistics.

    In train mode such a layer updates its buffers in place on every forward; under vmap that
    update is either refused or differs from the loop's sequence of per-class updates, so the
    batched path does not apply (the loop runs instead).
    """
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def same_shapes(batches: Sequence[Batch]) -> bool:
    """Whether every class's four tensors have the shapes of the first class's (vmap needs it)."""
    first = [t.shape for t in batches[0]]
    return all([t.shape for t in b] == first for b in batches[1:])


def _split_parameters(model: nn.Module, params: Sequence[torch.Tensor]) -> tuple[dict, dict]:
    """Named values of the matched parameters and of all other parameters, both detached.

    Detaching keeps the outer autograd graph free of the expert's weights: the matching step
    only differentiates w.r.t. the stored data (Algorithm 1 never updates the expert here).
    """
    chosen = {id(p) for p in params}
    matched, frozen = {}, {}
    for name, p in model.named_parameters():
        (matched if id(p) in chosen else frozen)[name] = p.detach()
    return matched, frozen


def batched_match_losses(model: nn.Module, params: Sequence[torch.Tensor], batches: Sequence[Batch],
                         metric: str) -> torch.Tensor:
    """Per-class gradient-matching losses, shape (classes,), differentiable in each x_syn.

    ``batches[c]`` is class c's (x_real, y_real, x_syn, y_syn); all classes must have equal
    shapes. Equals ``gradient_match_loss`` of each class (matching.py): the real gradients are
    detached, the synthetic ones stay in the autograd graph of x_syn. Buffers and parameters
    outside ``params`` enter the forward unchanged. The model must not track BatchNorm running
    statistics (see :func:`has_running_stats`).
    """
    matched, frozen = _split_parameters(model, params)

    def cross_entropy(weights: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (weights, frozen), (x,)), y)

    per_class_grad = vmap(grad(cross_entropy), in_dims=(None, 0, 0))
    x_real, y_real, x_syn, y_syn = (torch.stack(parts) for parts in zip(*batches))
    g_real = per_class_grad(matched, x_real.detach(), y_real)
    g_syn = per_class_grad(matched, x_syn, y_syn)
    per_class_distance = vmap(distance(metric))
    return sum(per_class_distance(g_real[name].detach(), g_syn[name]) for name in matched)
