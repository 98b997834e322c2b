"""ResNet-10/18 (stride-2 downsampling) and ResNetAP-10 (average-pool downsampling).

ResNetAP is the IDC paper's variant: spatial downsampling uses AvgPool2d(2) after the
first conv's activation (main path) and after the 1x1 conv (shortcut) instead of
stride-2 convolutions, with instance norm. Stem: CIFAR style (3x3, stride 1, no
max-pool) up to 64 px, ImageNet style (7x7 stride 2 + 3x3 max-pool) above.
"""

from __future__ import annotations

import torch
from torch import nn

from .norms import NormFactory, norm_factory

DEFAULT_WIDTH = 64
MIN_IMAGE_SIZE = 8  # three 2x downsamplings must leave >= 1 px


# Own block rather than torchvision.models.resnet.BasicBlock: torchvision bakes the
# downsampling into conv1's stride, while ResNetAP needs an AvgPool2d *between* the
# first norm/ReLU and conv2 (and inside the shortcut); expressing that would mean
# patching torchvision's forward. One block with a ``pool_downsample`` switch keeps
# both variants on the same code path.
class BasicBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        make_norm: NormFactory,
        pool_downsample: bool,
    ) -> None:
        super().__init__()
        conv_stride = 1 if pool_downsample else stride
        pool = pool_downsample and stride != 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, conv_stride, 1, bias=False)
        self.norm1 = make_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = make_norm(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, conv_stride, bias=False),
                nn.AvgPool2d(2) if pool else nn.Identity(),
                make_norm(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.relu(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        blocks_per_stage: tuple[int, int, int, int],
        width: int = DEFAULT_WIDTH,
        norm: str = "batch",
        pool_downsample: bool = False,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm, name)
        if image_size <= 64:
            stem = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), make_norm(width),
                    nn.ReLU(inplace=True)]
        else:
            stem = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), make_norm(width),
                    nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        channels = width
        for index, num_blocks in enumerate(blocks_per_stage):
            out_channels = width * 2**index
            blocks = []
            for b in range(num_blocks):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride, make_norm, pool_downsample))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def build_resnet(
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    name: str,
    blocks_per_stage: tuple[int, int, int, int],
    default_norm: str,
    pool_downsample: bool = False,
    width: int | None = None,
    norm: str | None = None,
) -> ResNet:
    return ResNet(
        num_classes,
        in_channels,
        image_size,
        blocks_per_stage,
        width=DEFAULT_WIDTH if width is None else width,
        norm=default_norm if norm is None else norm,
        pool_downsample=pool_downsample,
        name=name,
    )
