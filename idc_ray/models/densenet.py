"""DenseNet-121, CIFAR variant, on top of torchvision's DenseNet.

torchvision already implements the dense blocks (BN-ReLU-1x1-BN-ReLU-3x3 bottleneck,
bn_size 4) and transitions (compression 0.5, AvgPool 2x2) with growth 32 and blocks
[6, 12, 24, 16]; only the stem differs: for <= 64 px a 3x3 stride-1 conv with
2*growth channels and no max-pool, above 64 px torchvision's 7x7 stride-2 stem + max-pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet

from .norms import norm_factory, replace_batchnorm

DEFAULT_GROWTH = 32


class DenseNet121(DenseNet):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        growth: int = DEFAULT_GROWTH,
        norm: str = "batch",
    ) -> None:
        make_norm = norm_factory(norm, "densenet121")
        stem_channels = 2 * growth
        super().__init__(
            growth_rate=growth,
            block_config=(6, 12, 24, 16),
            num_init_features=stem_channels,
            num_classes=num_classes,
        )
        if image_size <= 64:
            self.features.conv0 = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
            self.features.pool0 = nn.Identity()
        else:
            self.features.conv0 = nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=False)
        if norm != "batch":
            replace_batchnorm(self.features, make_norm)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def build_densenet121(
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    width: int | None = None,
    norm: str | None = None,
) -> DenseNet121:
    """``width`` overrides the growth rate (stem gets 2*growth channels)."""
    return DenseNet121(
        num_classes,
        in_channels,
        image_size,
        growth=DEFAULT_GROWTH if width is None else width,
        norm="batch" if norm is None else norm,
    )
