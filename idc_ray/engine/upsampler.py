"""The learnable multi-formation of the IDC paper's appendix D: a small FSRCNN upsampler.

The paper replaces the bilinear upsampling of the multi-formation by Fast Super-Resolution CNN
(FSRCNN, Dong et al., ECCV 2016) "with a reduced number of parameters", learned together with the
stored data; it gives no sizes and no code. Here each crop of the uniform partition is upsampled
bilinearly PLUS a learned residual, computed as FSRCNN computes its output, at the crop's (low)
resolution: feature extraction (5x5 conv, d channels), shrinking (1x1, s), m mapping layers
(3x3, s), expanding (1x1, d), each followed by a PReLU, then a deconvolution (transposed conv,
kernel 9, stride f) to the image's channels at f times the crop's side, cropped to the image's
side. The deconvolution starts at zero, so before training the learned formation IS the uniform
(bilinear) formation, bit for bit, and any difference from bilinear was learned.

Default sizes d=16, s=8, m=2 (FSRCNN's published ones are d=56, s=12, m=4): 6,611 parameters for
3 channels, 3,217 for 1 channel, at any factor up to 8 (:func:`parameter_count`), against
307,200 stored pixels for CIFAR-10 at 10 images per class (2.2% more storage).

The upsampler is shared by every class. Each class's matching loss gives it a gradient; the
:class:`UpsamplerTrainer` sums them in class order and takes one optimiser step (Adam, its own
learning rate ``synset.learned.lr``) per inner iteration, after every class has stepped its data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from idc_ray.engine import rng

DECONV_KERNEL = 9  # FSRCNN's deconvolution kernel


@dataclass(frozen=True)
class UpsamplerSpec:
    """Sizes of the FSRCNN upsampler and its optimiser (config ``synset.learned``)."""

    channels: int
    factor: int
    d: int = 16
    s: int = 8
    m: int = 2
    lr: float = 1e-3


def _deconv(d: int, channels: int, factor: int) -> nn.ConvTranspose2d:
    """Stride ``factor`` transposed conv whose output side is exactly factor x its input side."""
    kernel = max(DECONV_KERNEL, factor + 1)
    padding = -(-(kernel - factor) // 2)
    return nn.ConvTranspose2d(d, channels, kernel, stride=factor, padding=padding,
                              output_padding=2 * padding - (kernel - factor))


class FSRCNNUpsampler(nn.Module):
    """``forward(crops, size)``: bilinear upsampling of ``crops`` (N, C, h, w) to ``size`` plus the
    FSRCNN residual (zero at initialisation)."""

    def __init__(self, spec: UpsamplerSpec):
        super().__init__()
        c, d, s = spec.channels, spec.d, spec.s
        layers: list[nn.Module] = [nn.Conv2d(c, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(spec.m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        self.deconv = _deconv(d, c, spec.factor)
        nn.init.zeros_(self.deconv.weight)
        nn.init.zeros_(self.deconv.bias)

    def forward(self, crops: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        base = F.interpolate(crops, size=size, mode="bilinear", align_corners=False)
        residual = self.deconv(self.body(crops))
        return base + residual[..., : size[0], : size[1]]


def build_upsampler(spec: UpsamplerSpec, seed: int, device: torch.device | str = "cpu") -> FSRCNNUpsampler:
    """The upsampler of a run, its weights drawn from (seed, "upsampler") only (torch's default
    initialisers on the global RNG, seeded for this block), so every process builds the same one."""
    with rng.seeded_global_rng(seed, "upsampler"):
        net = FSRCNNUpsampler(spec)
    return net.to(device)


def upsampler_from_weights(spec: UpsamplerSpec, weights: dict) -> FSRCNNUpsampler:
    """A trained upsampler rebuilt from its sizes and weights (an artifact's), in eval mode."""
    net = FSRCNNUpsampler(spec)
    net.load_state_dict(weights)
    return net.eval()


def parameter_count(spec: UpsamplerSpec) -> int:
    """Learned parameters the upsampler adds to the stored budget."""
    return sum(p.numel() for p in FSRCNNUpsampler(spec).parameters())


class UpsamplerTrainer:
    """The shared upsampler and its optimiser: one Adam step per inner iteration on the sum of the
    per-class gradients, added in class order (so the bytes do not depend on which process
    computed which class)."""

    def __init__(self, net: FSRCNNUpsampler, lr: float):
        self.net = net
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def apply(self, per_class: dict[int, list[torch.Tensor]]) -> None:
        """Sum ``per_class`` (class -> one gradient per parameter) in class order and step."""
        if not per_class:
            return
        classes = sorted(per_class)
        total = [g.detach().clone() for g in per_class[classes[0]]]
        for c in classes[1:]:
            for t, g in zip(total, per_class[c]):
                t.add_(g)
        for p, g in zip(self.net.parameters(), total):
            p.grad = g.to(p.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """Copies (torch's optimiser state_dict references the live moment tensors, which later
        steps update in place; a checkpoint held in memory must not change)."""
        return {"net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
