"""Normalisation-layer factories shared by all architectures.

IDC (like DC/DSA before it) calls its default "instance norm" ``nn.GroupNorm(C, C,
affine=True)``: one group per channel normalises each channel over its spatial extent
per sample, i.e. instance norm with a learnable affine and no running statistics, so a
network behaves identically on a batch of synthetic images and on a single image.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

NormFactory = Callable[[int], nn.Module]

NORMS: tuple[str, ...] = ("instance", "batch", "none")


def _instance_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(channels, channels, affine=True)


def _no_norm(channels: int) -> nn.Module:
    return nn.Identity()


_FACTORIES: dict[str, NormFactory] = {
    "instance": _instance_norm,
    "batch": nn.BatchNorm2d,
    "none": _no_norm,
}


def norm_factory(norm: str, model_name: str = "model") -> NormFactory:
    """Return ``channels -> nn.Module`` for ``norm``; ValueError for unknown names."""
    try:
        return _FACTORIES[norm]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown norm {norm!r} for {model_name}: expected one of {', '.join(NORMS)}"
        ) from None


def replace_batchnorm(module: nn.Module, make_norm: NormFactory) -> None:
    """Swap every BatchNorm2d in ``module`` (in place) for ``make_norm(num_features)``.

    Used to apply a ``norm`` override to torchvision networks that hard-code BatchNorm.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make_norm(child.num_features))
        else:
            replace_batchnorm(child, make_norm)
