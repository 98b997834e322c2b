"""ResNet-10/18 (stride-2 downsampling) and ResNetAP-10 (average-pool downsampling), as the
published models/resnet.py and models/resnet_ap.py build them (settings sheet, "Corrections").

ResNetAP is the IDC paper's variant: spatial downsampling uses AvgPool2d(2) after the
first conv's activation (main path) and after the 1x1 conv (shortcut) instead of
stride-2 convolutions, with instance norm.

Two branches, as published:
- CIFAR branch (dataset name starts with ``cifar``, whatever the image size): stage widths
  32-64-128-256 and a 3x3 stride-1 stem (ResNet-10: 1,228,970 parameters at 10 classes).
- otherwise: stage widths 64-128-256-512 and a stem chosen by image size: up to 64 px a 3x3
  stride-1 conv; 65-128 px the same followed by MaxPool(3, 2) (ResNet) or AvgPool(2) (ResNetAP);
  above 128 px a 7x7 conv, stride 2 + MaxPool(3, 2) (ResNet) or stride 1 + AvgPool(4) (ResNetAP).
  At 224 px both leave a 56x56 map for the first stage.

Convs are initialised N(0, 2 / (k * k * out_channels)), norm weights 1 and biases 0, as the
published code does; the classifier keeps PyTorch's default.
"""

from __future__ import annotations

import torch
from torch import nn

from .norms import NormFactory, norm_factory

DEFAULT_WIDTH = 64  # base width of the ImageNet-style branch (stages 64-512)
CIFAR_WIDTH = 32  # base width of the published CIFAR branch (stages 32-256)
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


def stem_layers(in_channels: int, width: int, image_size: int, cifar: bool, pool_downsample: bool,
                make_norm: NormFactory) -> list[nn.Module]:
    """The published stem (``IntroBlock``) for the input size: small (CIFAR branch or <= 64 px),
    mid (<= 128 px) or large; ResNetAP keeps stride 1 and average-pools instead (resnet_ap.py)."""
    large = not cifar and image_size > 128
    kernel, stride = (7, 1 if pool_downsample else 2) if large else (3, 1)
    layers = [nn.Conv2d(in_channels, width, kernel, stride, kernel // 2, bias=False), make_norm(width),
              nn.ReLU(inplace=True)]
    if not cifar and image_size > 64:
        if pool_downsample:
            layers.append(nn.AvgPool2d(4 if large else 2))
        else:
            layers.append(nn.MaxPool2d(3, 2, 1))
    return layers


def init_published(model: nn.Module) -> None:
    """Conv weights N(0, 2 / (k * k * out_channels)), i.e. He init with fan-out (the same draw as
    torchvision's ResNet init); norm weights 1, biases 0 (published resnet.py / resnet_ap.py)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
        cifar: bool = False,
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm, name)
        self.stem = nn.Sequential(*stem_layers(in_channels, width, image_size, cifar, pool_downsample, make_norm))
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
        init_published(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def build_resnet(num_classes: int, in_channels: int, image_size: int, *, name: str,
                 blocks_per_stage: tuple[int, int, int, int], default_norm: str, pool_downsample: bool = False,
                 width: int | None = None, norm: str | None = None, cifar: bool = False) -> ResNet:
    """``cifar``: the published CIFAR branch (base width 32, 3x3 stem at any size); ``width``
    overrides the base width of either branch."""
    default_width = CIFAR_WIDTH if cifar else DEFAULT_WIDTH
    return ResNet(
        num_classes,
        in_channels,
        image_size,
        blocks_per_stage,
        width=default_width if width is None else width,
        norm=default_norm if norm is None else norm,
        pool_downsample=pool_downsample,
        name=name,
        cifar=cifar,
    )
