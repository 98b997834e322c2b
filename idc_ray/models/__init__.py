"""Model registry for IDC: ConvNet-D, ResNet(AP), DenseNet-121, EfficientNet-B0.

Every model has ``forward(x) -> logits``, ``embed(x) -> features`` (flattened input of
the final linear layer, used for DM-style feature matching) and ``classifier``
(that final ``nn.Linear``). Initialisation follows the published code (the layers' own
defaults; N(0, 2/(k*k*out)) convs for the ResNets), drawn from the global RNG, so seeding it
before ``build_model`` fixes the weights.

Which network a name means can depend on the dataset, as in the published code: the ResNets
take their CIFAR branch (widths 32-256) for datasets named ``cifar*`` (models/resnet.py,
resnet_ap.py), and "DenseNet-121" is the published densenet_cifar up to 64 px. The network
width setting (``eval.width``) applies only where the published code applies ``net_width``:
the ConvNet family (:func:`uses_net_width`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from .convnet import build_convnet, check_convnet_input
from .norms import NORMS
from .resnet import MIN_IMAGE_SIZE as _RESNET_MIN, build_resnet

# Bumped whenever a registered network changes its architecture or initialisation for the same
# name (2: the published CIFAR ResNets/DenseNet, ResNetAP stem and He init, issue 11), so caches
# of trained networks keyed by settings (pretrained expert pools) are not reused across it.
NETWORKS_REVISION = 2

__all__ = [
    "NETWORKS_REVISION",
    "NORMS",
    "UnknownModelError",
    "available_models",
    "build_model",
    "check_model_input",
    "is_cifar",
    "uses_net_width",
]


class UnknownModelError(ValueError):
    """Raised for a model name that is not in the registry."""


@dataclass(frozen=True)
class _ModelSpec:
    # build(num_classes, in_channels, image_size, *, width, norm[, cifar]) -> nn.Module
    build: Callable[..., nn.Module]
    # check(name, in_channels, image_size) raises ValueError if the input is impossible
    check: Callable[[str, int, int], None]
    # the published network takes the config's width (net_width): ConvNet family only
    net_width: bool = False
    # the published network has a CIFAR branch chosen by dataset name (build gets ``cifar``)
    cifar_branch: bool = False


def _min_size_check(min_size: int) -> Callable[[str, int, int], None]:
    def check(name: str, in_channels: int, image_size: int) -> None:
        if image_size < min_size:
            raise ValueError(
                f"{name} cannot take {image_size}x{image_size} inputs: its downsampling "
                f"stages need image_size >= {min_size}; resize the images to at least "
                f"{min_size} px or use a convnet"
            )

    return check


# DenseNet-121 and EfficientNet-B0 build on torchvision.models, whose import takes about a second;
# every Ray actor imports this registry, so those two modules load on first use only.
_TORCHVISION_MIN_SIZE = 8  # both: three stride-2 stages halve the map; checked in tests/models


def _build_densenet121(*args, **kwargs) -> nn.Module:
    from .densenet import build_densenet121

    return build_densenet121(*args, **kwargs)


def _build_efficientnet_b0(*args, **kwargs) -> nn.Module:
    from .efficientnet import build_efficientnet_b0

    return build_efficientnet_b0(*args, **kwargs)


def _convnet_spec(depth: int) -> _ModelSpec:
    return _ModelSpec(
        partial(build_convnet, depth=depth),
        lambda name, c, s: check_convnet_input(name, depth, c, s),
        net_width=True,
    )


def _resnet_spec(name: str, blocks: tuple[int, int, int, int], norm: str, pool: bool = False) -> _ModelSpec:
    build = partial(build_resnet, name=name, blocks_per_stage=blocks, default_norm=norm,
                    pool_downsample=pool)
    return _ModelSpec(build, _min_size_check(_RESNET_MIN), cifar_branch=True)


_REGISTRY: dict[str, _ModelSpec] = {
    **{f"convnet{d}": _convnet_spec(d) for d in range(1, 6)},
    "convnet": _convnet_spec(3),
    "resnet10": _resnet_spec("resnet10", (1, 1, 1, 1), "batch"),
    "resnet10-in": _resnet_spec("resnet10-in", (1, 1, 1, 1), "instance"),
    "resnet18": _resnet_spec("resnet18", (2, 2, 2, 2), "batch"),
    "resnet18-in": _resnet_spec("resnet18-in", (2, 2, 2, 2), "instance"),
    "resnetap10": _resnet_spec("resnetap10", (1, 1, 1, 1), "instance", pool=True),
    "densenet121": _ModelSpec(_build_densenet121, _min_size_check(_TORCHVISION_MIN_SIZE)),
    "efficientnet-b0": _ModelSpec(_build_efficientnet_b0, _min_size_check(_TORCHVISION_MIN_SIZE)),
}


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def _spec(name: str) -> _ModelSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def is_cifar(dataset: str | None) -> bool:
    """The published code's test for its CIFAR networks: ``dataset.startswith('cifar')``
    (models/resnet.py, resnet_ap.py), whatever the image size."""
    return bool(dataset) and dataset.startswith("cifar")


def uses_net_width(name: str) -> bool:
    """True where the published code applies its network-width setting (``net_width``, the
    ConvNet family); evaluation passes ``eval.width`` only to these models, so the ResNets,
    DenseNet and EfficientNet keep their published widths."""
    return _spec(name).net_width


def check_model_input(name: str, in_channels: int, image_size: int) -> None:
    """Raise ValueError (one line: model, what it supports, the fix) if ``name`` cannot
    take ``in_channels`` x ``image_size`` x ``image_size`` inputs. Call before training."""
    spec = _spec(name)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"{name} needs a positive integer in_channels (1 or 3), got {in_channels!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"{name} needs a positive integer image_size (28, 32, 64 or 224), got {image_size!r}")
    spec.check(name, in_channels, image_size)


def build_model(name: str, num_classes: int, in_channels: int, image_size: int, *, width: int | None = None,
                norm: str | None = None, dataset: str | None = None) -> nn.Module:
    """Build a freshly initialised model.

    Args:
        width, norm: override the model's defaults (width: ConvNet channels, ResNet base width,
            DenseNet growth rate; EfficientNet has none).
        dataset: the dataset name; ``cifar*`` selects the published CIFAR branch of the ResNets
            (stage widths 32-256 instead of 64-512, 3x3 stem). Other models ignore it.

    Raises:
        UnknownModelError: unknown ``name``. ValueError: impossible input or override.
    """
    check_model_input(name, in_channels, image_size)
    if width is not None and (not isinstance(width, int) or width < 1):
        raise ValueError(f"{name}: width must be a positive integer, got {width!r}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} for {name}: expected one of {', '.join(NORMS)}")
    spec = _spec(name)
    branch = {"cifar": is_cifar(dataset)} if spec.cifar_branch else {}
    return spec.build(num_classes, in_channels, image_size, width=width, norm=norm, **branch)
