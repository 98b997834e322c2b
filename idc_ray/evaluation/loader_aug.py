"""The loader-side augmentation of the published ImageNet evaluation.

Settings sheet, "Corrections": the published test.py trains ImageNet test models without DSA,
on images augmented by data.py's ``transform_imagenet(augment=True)``: per image,
RandomResizedCrop (scale 0.5-1, back to the full size), horizontal flip, colour jitter
(brightness, contrast, saturation 0.4, in random order) and AlexNet-style PCA lighting noise
(std 0.1), then normalisation; CutMix (probability 1) follows in the training loop.

The published transforms run per image in DataLoader workers. Here a mini-batch is augmented on
its device with independent parameters per image, all drawn from the caller's generator:

- the crop box is torchvision's own ``RandomResizedCrop.get_params``, which draws from torch's
  global CPU generator and takes no generator argument, so it runs inside a forked global RNG
  seeded with one number drawn from the caller's generator (the global state is restored);
- the colour jitter is written here: the published one (misc/utils.py ``ColorJitter``) blends
  towards black / the grey mean / the grey image without clipping, while torchvision's
  ``ColorJitter`` clips to [0, 1] after each step and, given a batch, shares its factors;
- the lighting noise has no torchvision counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

# data.py transform_imagenet: the PCA of ImageNet's RGB pixels (AlexNet, Krizhevsky et al. 2012)
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009),
          (-0.5808, -0.0045, -0.8140),
          (-0.5836, -0.6948, 0.4203))
GREY = (0.299, 0.587, 0.114)  # misc/utils.py Grayscale weights

LoaderAug = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class ImageNetAugParams:
    """The published magnitudes (data.py ``transform_imagenet``)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # torchvision's default
    flip_prob: float = 0.5
    jitter: float = 0.4  # brightness = contrast = saturation
    lighting_std: float = 0.1


def _to(values, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=x.dtype).to(x.device)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per image: a torchvision RandomResizedCrop box, resized bilinearly back to (H, W).

    ``antialias=False`` as torchvision resized tensors when the published code ran (the box
    never exceeds the image, so this only upsamples, where antialiasing changes nothing).
    """
    h, w = x.shape[-2:]
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: get_params draws on the CPU
        boxes = [T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for img in x]
    return torch.stack([TF.resized_crop(img, *box, [h, w], antialias=False) for img, box in zip(x, boxes)])


def random_flip(x: torch.Tensor, generator: torch.Generator, prob: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``prob`` (RandomHorizontalFlip)."""
    coin = torch.rand(x.shape[0], generator=generator).to(x.device) < prob
    return torch.where(coin.view(-1, 1, 1, 1), x.flip(-1), x)


def color_jitter(x: torch.Tensor, generator: torch.Generator, strength: float = 0.4) -> torch.Tensor:
    """The published jitter: brightness, contrast and saturation in a random order per image,
    each ``x + a * (target - x)`` with a ~ U(-strength, strength) and target black, the mean of
    the grey image, or the grey image (0.299 R + 0.587 G + 0.114 B). No clipping."""
    n = x.shape[0]
    alpha = ((torch.rand(n, 3, generator=generator) * 2 - 1) * strength).to(x)  # per op 0, 1, 2
    order = torch.rand(n, 3, generator=generator).argsort(dim=1)  # uniform over the 6 orders
    weights = _to(GREY, x).view(1, 3, 1, 1)
    for step in range(3):
        op = order[:, step].to(x.device).view(n, 1, 1, 1)
        a = alpha.gather(1, order[:, step : step + 1].to(x.device)).view(n, 1, 1, 1)
        grey = (x * weights).sum(1, keepdim=True)
        target = torch.where(op == 0, torch.zeros_like(grey),
                             torch.where(op == 1, grey.mean((1, 2, 3), keepdim=True), grey))
        x = x + a * (target - x)
    return x


def lighting(x: torch.Tensor, generator: torch.Generator, std: float = 0.1) -> torch.Tensor:
    """AlexNet's PCA lighting noise: add ``sum_j eigvec[:, j] * alpha_j * eigval_j`` to every
    pixel of an image, alpha ~ N(0, std^2) per image and component (misc/utils.py ``Lighting``)."""
    if x.shape[1] != 3:
        raise ValueError(f"lighting noise needs RGB images, got {x.shape[1]} channels")
    alpha = torch.randn(x.shape[0], 3, generator=generator).to(x) * std
    rgb = (alpha * _to(EIGVAL, x)) @ _to(EIGVEC, x).T  # (N, 3): rgb[n, i] = sum_j V[i, j] a[n, j] L[j]
    return x + rgb.view(-1, 3, 1, 1)


class ImageNetAugment:
    """RandomResizedCrop, flip, colour jitter, lighting, per image, on un-normalised images."""

    def __init__(self, params: ImageNetAugParams = ImageNetAugParams()):
        self.params = params

    def __repr__(self) -> str:
        return f"ImageNetAugment({self.params})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        x = random_resized_crop(x, generator, p.crop_scale, p.crop_ratio)
        x = random_flip(x, generator, p.flip_prob)
        x = color_jitter(x, generator, p.jitter)
        return lighting(x, generator, p.lighting_std)


LOADER_AUGS: dict[str, Callable[[], LoaderAug] | None] = {"none": None, "imagenet": ImageNetAugment}


def build_loader_aug(name: str) -> LoaderAug | None:
    """The loader-side augmentation called ``name`` (None for ``none``)."""
    if name not in LOADER_AUGS:
        raise ValueError(f"unknown loader augmentation '{name}'; choose one of {', '.join(LOADER_AUGS)}")
    factory = LOADER_AUGS[name]
    return factory() if factory is not None else None
