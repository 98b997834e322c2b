"""Matching objectives: gradient matching (IDC, paper Section 4) and DM-style feature matching.

Distances follow the published implementation (settings sheet, "Matching loss"): summed over
the selected parameter tensors; by default conv weights only (tensors with more than two dims).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from idc_ray.engine.leanconv import lean_conv_double_backward

_EPS_COS = 1e-6  # the published cosine distance adds this to the norm product


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum()


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().sum()


def _l1_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per output unit (first dim) mean absolute difference, summed over units."""
    return (a - b).abs().reshape(a.shape[0], -1).mean(dim=-1).sum()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over output units of 1 - cosine similarity of their flattened gradients."""
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (a2 * b2).sum(-1) / (a2.norm(dim=-1) * b2.norm(dim=-1) + _EPS_COS)
    return (1 - cos).sum()


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": _mse,
    "l1": _l1,
    "l1_mean": _l1_mean,
    "cos": _cos,
}


def distance(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in DISTANCES:
        raise ValueError(f"unknown metric '{name}'; choose one of {', '.join(DISTANCES)}")
    return DISTANCES[name]


def matched_parameters(model: nn.Module, *, bias: bool = False, fc: bool = False) -> list[nn.Parameter]:
    """Parameters that enter the gradient distance: conv weights always; 1-D tensors (biases,
    norm scales) only with ``bias``; 2-D tensors (linear weights) only with ``fc``."""
    chosen = []
    for p in model.parameters():
        if p.dim() == 1 and not bias:
            continue
        if p.dim() == 2 and not fc:
            continue
        chosen.append(p)
    return chosen


def gradient_match_loss(model: nn.Module, params: list[nn.Parameter], x_real: torch.Tensor,
                        y_real: torch.Tensor, x_syn: torch.Tensor, y_syn: torch.Tensor,
                        metric: str, lean: bool = False) -> torch.Tensor:
    """D(grad on real (detached), grad on synthetic (create_graph)), differentiable in x_syn.

    ``lean``: the synthetic forward records convolutions whose double backward skips an unused
    weight term (engine/leanconv.py); same terms otherwise."""
    dist = distance(metric)
    g_real = torch.autograd.grad(F.cross_entropy(model(x_real), y_real), params)
    g_real = [g.detach() for g in g_real]
    with lean_conv_double_backward() if lean else nullcontext():
        logits_syn = model(x_syn)
    g_syn = torch.autograd.grad(F.cross_entropy(logits_syn, y_syn), params, create_graph=True)
    return sum(dist(gr, gs) for gr, gs in zip(g_real, g_syn))


def feature_match_loss(model: nn.Module, x_real: torch.Tensor, x_syn: torch.Tensor) -> torch.Tensor:
    """DM-style: squared distance between the mean embeddings of the real and synthetic batch."""
    with torch.no_grad():
        f_real = model.embed(x_real).mean(dim=0)
    f_syn = model.embed(x_syn).mean(dim=0)
    return (f_real - f_syn).pow(2).sum()
