"""ConvNet-D, the default backbone of DC/DSA/DM and IDC.

D blocks of [Conv 3x3 (pad 1), norm, ReLU, AvgPool 2x2], then flatten and a linear
classifier. As in the published models/convnet.py, every 1-channel input gets padding 3 on
the first conv (settings sheet, "Corrections"): 28 px (MNIST) becomes a 32x32 map, sized
exactly as for 32 px, and a 64 px spectrogram (speech) goes 68 -> 34 -> 17 -> 8 -> 4 through
ConvNet-4. 3-channel 28 px inputs also get padding 3 (the published network would size its
classifier for 32 px there and fail); every other input gets padding 1.
"""

from __future__ import annotations

import torch
from torch import nn

from .norms import norm_factory

DEFAULT_WIDTH = 128
DEFAULT_NORM = "instance"


def first_padding(in_channels: int, image_size: int) -> int:
    """Padding of the first conv: 3 for 1-channel (and 28 px) inputs, else 1."""
    return 3 if in_channels == 1 or image_size == 28 else 1


def feature_size(image_size: int, depth: int, in_channels: int) -> int:
    """Side length of the final feature map (each block halves it, floor)."""
    size = image_size + 2 * first_padding(in_channels, image_size) - 2  # 3x3 conv
    for _ in range(depth):
        size //= 2
    return size


class ConvNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        depth: int = 3,
        width: int = DEFAULT_WIDTH,
        norm: str = DEFAULT_NORM,
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm, f"convnet{depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(depth):
            padding = first_padding(in_channels, image_size) if block == 0 else 1
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=padding),
                make_norm(width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        side = feature_size(image_size, depth, in_channels)
        self.classifier = nn.Linear(width * side * side, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def build_convnet(num_classes: int, in_channels: int, image_size: int, *, depth: int, width: int | None = None,
                  norm: str | None = None) -> ConvNet:
    return ConvNet(num_classes, in_channels, image_size, depth=depth, width=DEFAULT_WIDTH if width is None else width,
                   norm=DEFAULT_NORM if norm is None else norm)


def check_convnet_input(name: str, depth: int, in_channels: int, image_size: int) -> None:
    """ConvNet-D needs every pooling stage to leave at least 1 px."""
    if feature_size(image_size, depth, in_channels) < 1:
        deepest = max((d for d in range(1, 6) if feature_size(image_size, d, in_channels) >= 1), default=0)
        fix = f"use convnet{deepest} or shallower" if deepest else "use larger images"
        need = f">= {max(1, 2 ** depth - 4)} (1-channel inputs are padded by 4)" if in_channels == 1 \
            else f">= {2 ** depth} (28 is padded to 32)"
        raise ValueError(
            f"{name} cannot take {image_size}x{image_size} inputs: its {depth} pooling "
            f"stage(s) need image_size {need}; {fix}"
        )
