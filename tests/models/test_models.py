"""Tests for idc_ray.models: shapes, IDC-specific structure, gradients, registry errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from idc_ray.models import (
    UnknownModelError,
    available_models,
    build_model,
    check_model_input,
)

SIZES = (28, 32, 64, 224)
CHANNELS = (1, 3)
NUM_CLASSES = 10


def _build(name: str, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, in_channels, image_size, **kwargs)


def test_registry_contents():
    expected = {f"convnet{d}" for d in range(1, 6)} | {
        "convnet", "resnet10", "resnet10-in", "resnet18", "resnet18-in", "resnetap10",
        "densenet121", "efficientnet-b0",
    }
    assert set(available_models()) == expected
    assert available_models() == sorted(available_models())


@pytest.mark.parametrize("name", available_models())
def test_output_and_embed_shapes(name):
    """Every model takes every supported size with 1 and 3 channels (train mode)."""
    for image_size in SIZES:
        batch = 1 if image_size == 224 else 2
        for in_channels in CHANNELS:
            check_model_input(name, in_channels, image_size)
            model = _build(name, in_channels, image_size)
            assert isinstance(model.classifier, nn.Linear)
            x = torch.randn(batch, in_channels, image_size, image_size)
            with torch.no_grad():
                logits = model(x)
                features = model.embed(x)
            assert logits.shape == (batch, NUM_CLASSES), (name, image_size, in_channels)
            assert features.shape == (batch, model.classifier.in_features)
            assert torch.isfinite(logits).all()


def test_embed_feeds_classifier():
    model = _build("resnet10").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model.classifier(model.embed(x)))


@pytest.mark.parametrize("in_channels, image_size, padding", [(1, 28, 3), (1, 32, 3), (3, 28, 3), (3, 32, 1)])
def test_convnet3_sized_as_for_32px(in_channels, image_size, padding):
    """Published models/convnet.py: first-conv padding 3 for every 1-channel input."""
    model = _build("convnet3", in_channels, image_size)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.padding == (padding, padding)
    assert model.classifier.in_features == 128 * 4 * 4 == 2048


def test_convnet_alias_is_depth_3():
    a, b = _build("convnet"), _build("convnet3")
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_convnet4_speech_spectrogram():
    model = _build("convnet4", 1, 64)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 4
    assert model.classifier.in_features == 128 * 4 * 4


def test_width_and_norm_overrides():
    model = _build("convnet3", width=32, norm="batch")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels == 32 for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())

    plain = _build("convnet3", norm="none")
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in plain.modules())

    resnet = _build("resnet10", width=16)
    assert resnet.classifier.in_features == 16 * 8
    dense = _build("densenet121", norm="instance")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dense.modules())


def _gradient_matching_input_grad(model: nn.Module, image_size: int) -> torch.Tensor:
    """Mimic IDC's gradient matching: param grads with create_graph, then d(match)/d(x)."""
    x = torch.randn(2, 3, image_size, image_size, requires_grad=True)
    y = torch.tensor([0, 1])
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    targets = [torch.randn_like(g) for g in grads]
    match = sum(((g - t) ** 2).sum() for g, t in zip(grads, targets))
    (input_grad,) = torch.autograd.grad(match, x)
    return input_grad


@pytest.mark.parametrize("name", ["convnet3", "resnetap10"])
def test_second_order_gradient_reaches_input(name):
    input_grad = _gradient_matching_input_grad(_build(name, 3, 32), 32)
    assert torch.isfinite(input_grad).all()
    assert input_grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["convnet3", "resnet10-in", "resnet18-in", "resnetap10"])
def test_instance_norm_is_groupnorm_per_channel(name):
    model = _build(name)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms
    assert all(n.num_groups == n.num_channels and n.affine for n in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("image_size", [32, 224])
def test_resnetap_downsamples_by_avgpool(image_size):
    model = _build("resnetap10", 3, image_size)
    stage_convs = [m for m in model.stages.modules() if isinstance(m, nn.Conv2d)]
    assert stage_convs and all(c.stride == (1, 1) for c in stage_convs)
    pools = [m for m in model.stages.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 6  # main path + shortcut in each of the 3 downsampling stages
    # Contrast: plain ResNet-10 downsamples with stride-2 convs.
    plain = _build("resnet10", 3, image_size)
    assert any(m.stride == (2, 2) for m in plain.stages.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("image_size, stem_stride, has_maxpool", [(64, 1, False), (224, 2, True)])
def test_resnet_stem_by_resolution(image_size, stem_stride, has_maxpool):
    model = _build("resnet18", 3, image_size)
    stem_conv = model.stem[0]
    assert stem_conv.stride == (stem_stride, stem_stride)
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem) == has_maxpool


def test_efficientnet_wraps_linear_and_channels():
    model = _build("efficientnet-b0", 1, 32)
    assert isinstance(model.classifier, nn.Linear)
    assert model.features[0][0].in_channels == 1
    assert any(isinstance(m, nn.Dropout) for m in model.modules())


def test_unknown_model_lists_names():
    for call in (lambda: build_model("vgg11", 10, 3, 32), lambda: check_model_input("vgg11", 3, 32)):
        with pytest.raises(UnknownModelError) as info:
            call()
        message = str(info.value)
        assert "vgg11" in message and "convnet3" in message and "resnetap10" in message
    assert issubclass(UnknownModelError, ValueError)


def test_bad_norm_and_width_rejected():
    with pytest.raises(ValueError, match="layer"):
        build_model("convnet3", 10, 3, 32, norm="layer")
    with pytest.raises(ValueError, match="width"):
        build_model("convnet3", 10, 3, 32, width=0)
    with pytest.raises(ValueError, match="width"):
        build_model("efficientnet-b0", 10, 3, 32, width=64)


@pytest.mark.parametrize(
    "name, image_size",
    [("convnet5", 16), ("convnet3", 7), ("resnetap10", 4), ("densenet121", 6), ("efficientnet-b0", 4)],
)
def test_impossible_inputs_raise_one_line(name, image_size):
    with pytest.raises(ValueError) as info:
        check_model_input(name, 3, image_size)
    message = str(info.value)
    assert "\n" not in message and name in message and str(image_size) in message
    with pytest.raises(ValueError):
        build_model(name, 10, 3, image_size)


def test_convnet_depth_limits():
    check_model_input("convnet5", 1, 28)  # 28 is padded to 32 -> 1 px after 5 pools
    check_model_input("convnet4", 1, 16)
    with pytest.raises(ValueError, match="convnet4 or shallower"):
        check_model_input("convnet5", 1, 16)
    with pytest.raises(ValueError):
        check_model_input("convnet3", 0, 32)


@pytest.mark.parametrize("name", ["convnet3", "resnetap10", "densenet121", "efficientnet-b0"])
def test_same_seed_same_weights(name):
    def init(seed: int) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_model(name, NUM_CLASSES, 3, 32).state_dict()

    a, b, c = init(1), init(1), init(2)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", ["densenet121", "efficientnet-b0"])
def test_torchvision_models_smallest_input(name):
    model = build_model(name, NUM_CLASSES, 3, 8)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="image_size >= 8"):
        build_model(name, NUM_CLASSES, 3, 7)


def test_engine_import_leaves_torchvision_models_unloaded():
    # Every Ray actor imports the engine; torchvision.models costs about a second to import.
    code = "import sys, idc_ray.engine.matcher, idc_ray.distributed.actors; print('torchvision.models' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
