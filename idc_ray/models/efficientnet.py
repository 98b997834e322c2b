"""EfficientNet-B0 from torchvision, adapted to 1- or 3-channel inputs.

Wrapped so that ``classifier`` is the final nn.Linear (torchvision's is
Sequential(Dropout, Linear)) and ``embed`` returns the pooled features.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import efficientnet_b0

from .norms import norm_factory


class EfficientNetB0(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, norm: str = "batch") -> None:
        super().__init__()
        make_norm = norm_factory(norm, "efficientnet-b0")
        net = efficientnet_b0(weights=None, num_classes=num_classes, norm_layer=make_norm)
        # Always rebuilt (even for 3 channels) so the stem is initialised the same way
        # whatever the channel count.
        stem_conv = net.features[0][0]
        net.features[0][0] = nn.Conv2d(
            in_channels,
            stem_conv.out_channels,
            kernel_size=stem_conv.kernel_size,
            stride=stem_conv.stride,
            padding=stem_conv.padding,
            bias=False,
        )
        self.features = net.features
        self.avgpool = net.avgpool
        self.dropout = net.classifier[0]
        self.classifier: nn.Linear = net.classifier[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))


def build_efficientnet_b0(num_classes: int, in_channels: int, image_size: int, *, width: int | None = None,
                          norm: str | None = None) -> EfficientNetB0:
    if width is not None:
        raise ValueError(
            "efficientnet-b0 has a fixed compound-scaled width; drop the width override "
            "or pick a convnet/resnet model"
        )
    return EfficientNetB0(num_classes, in_channels, norm="batch" if norm is None else norm)
