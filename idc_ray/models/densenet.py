"""DenseNet-121 on top of torchvision's DenseNet.

torchvision already implements the dense blocks (BN-ReLU-1x1-BN-ReLU-3x3 bottleneck,
bn_size 4) and transitions (BN-ReLU-1x1 conv, compression 0.5, AvgPool 2x2) with blocks
[6, 12, 24, 16]. Two variants by input size:

- up to 64 px: the network the paper's tables call "DenseNet-121", the published
  models/densenet_cifar.py (settings sheet, "Corrections"): growth 12, a 3x3 stride-1 stem
  conv of 2*growth channels with no norm, ReLU or pooling after it, PyTorch's default
  initialisation; 1,000,618 parameters at 10 classes and 3 channels. (The published network
  takes 3 channels at 32 px only; here the stem takes any channel count and the final pooling
  is global, which equals its AvgPool(4) at 32 px.) Dense layers concatenate [previous, new]
  where the published one concatenates [new, previous]: a fixed permutation of input
  channels, the same function class and the same initial distribution.
- above 64 px: torchvision's DenseNet-121 (growth 32, 7x7 stride-2 stem + max-pool,
  torchvision's initialisation). The published code has no DenseNet for large inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet

from .norms import norm_factory, replace_batchnorm

CIFAR_GROWTH = 12  # published densenet_cifar
IMAGENET_GROWTH = 32  # torchvision densenet121
MAX_CIFAR_SIZE = 64


def _reset_to_torch_defaults(module: nn.Module) -> None:
    """Undo torchvision's DenseNet init (kaiming-normal convs, zero classifier bias): the
    published densenet_cifar keeps every layer's own default initialisation."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            m.reset_parameters()


class DenseNet121(DenseNet):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        growth: int | None = None,
        norm: str = "batch",
    ) -> None:
        make_norm = norm_factory(norm, "densenet121")
        cifar = image_size <= MAX_CIFAR_SIZE
        if growth is None:
            growth = CIFAR_GROWTH if cifar else IMAGENET_GROWTH
        stem_channels = 2 * growth
        super().__init__(
            growth_rate=growth,
            block_config=(6, 12, 24, 16),
            num_init_features=stem_channels,
            num_classes=num_classes,
        )
        if cifar:
            self.features.conv0 = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
            for layer in ("norm0", "relu0", "pool0"):
                setattr(self.features, layer, nn.Identity())
            _reset_to_torch_defaults(self)
        else:
            self.features.conv0 = nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=False)
        if norm != "batch":
            replace_batchnorm(self.features, make_norm)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def build_densenet121(num_classes: int, in_channels: int, image_size: int, *, width: int | None = None,
                      norm: str | None = None) -> DenseNet121:
    """``width`` overrides the growth rate (stem gets 2*growth channels)."""
    return DenseNet121(num_classes, in_channels, image_size, growth=width, norm="batch" if norm is None else norm)
