"""The lean-double-backward convolutions (engine/leanconv.py) against PyTorch's own."""

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import profile

from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import ClassStore, load_dataset
from idc_ray.engine.expert import init_expert
from idc_ray.engine.leanconv import lean_conv_double_backward
from idc_ray.engine.matcher import Matcher, stack_stored
from idc_ray.engine.plan import build_plan, initial_synset


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=3), nn.GroupNorm(6, 6), nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(5, 4, 3, stride=2, padding=1),  # stride 2: not rerouted, PyTorch's own backward
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).double()


def _match(net: nn.Module, x: torch.Tensor, lean: bool):
    """Weight gradients of a CE loss (create_graph) and the gradient of their L1 norm in x."""
    params = [m.weight for m in net if isinstance(m, nn.Conv2d)]
    y = torch.arange(len(x)) % 3
    if lean:
        with lean_conv_double_backward():
            out = net(x)
    else:
        out = net(x)
    grads = torch.autograd.grad(F.cross_entropy(out, y), params, create_graph=True)
    gx, = torch.autograd.grad(sum(g.abs().sum() for g in grads), [x])
    return grads, gx


def _weight_term_convs(run) -> dict[int, int]:
    """Convolutions shaped like the double backward's weight term, conv(ggI^T, gO^T), by layer
    input channels: their 'batch' is the layer's input channels and their 'channels' the batch
    size (8). Layer 2 (6 channels in, stride 1) is rerouted; layer 3 (5 in, stride 2) is not."""
    with profile(record_shapes=True) as prof:
        run()
    counts = {6: 0, 5: 0}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == "aten::convolution" and e.input_shapes and e.input_shapes[0][:2] in ([6, 8], [5, 8]):
            counts[e.input_shapes[0][0]] += e.count
    return counts


def test_same_first_and_second_order_gradients_in_float64():
    net = _net()
    x = torch.randn(8, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    grads, gx = _match(net, x, lean=False)
    lean_grads, lean_gx = _match(net, x, lean=True)
    for a, b in zip(grads, lean_grads):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    torch.testing.assert_close(lean_gx, gx, rtol=0, atol=1e-12)
    assert gx.abs().max() > 1e-6  # a real gradient, not zeros on both sides


def test_the_unused_weight_term_is_no_longer_computed():
    net = _net()
    x = torch.randn(8, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    assert _weight_term_convs(lambda: _match(net, x, lean=False)) == {6: 1, 5: 1}
    assert _weight_term_convs(lambda: _match(net, x, lean=True)) == {6: 0, 5: 1}


def test_weight_gradients_still_flow_when_asked_for():
    net = _net()
    x = torch.randn(4, 1, 10, 10, dtype=torch.float64)
    with lean_conv_double_backward():
        out = net(x)
    out.square().sum().backward()
    lean = [m.weight.grad.clone() for m in net if isinstance(m, nn.Conv2d)]
    net.zero_grad()
    net(x).square().sum().backward()
    for got, want in zip(lean, [m.weight.grad for m in net if isinstance(m, nn.Conv2d)]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.forced_isa
@pytest.mark.parametrize("metric", ["l1", "mse", "cos"])
def test_lean_path_agrees_with_the_loop(metric):
    """Not bit for bit: lean computes the input gradient with conv_transpose2d, another oneDNN
    primitive than the loop's convolution_backward, so the two may round differently on some
    CPU (docs/testing.md); they agree to far below what two steps move the data."""
    cfg = apply_overrides(load_preset("smoke"), {"synset.ipc": 2, "synset.factor": 2, "match.batch_real": 8,
                                                 "expert.width": 8, "match.metric": metric})
    data = load_dataset("tiny")
    plan = build_plan(cfg, data.spec)
    match, expert = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    init = initial_synset(match, store, store.classes)
    model = init_expert(expert, 0)
    stored = {}
    for path in ("loop", "lean"):
        matcher = Matcher(replace(match, path=path), store, init)
        for inner in range(2):
            matcher.step(model, 0, inner)
        stored[path] = stack_stored(matcher.stored())[0]
    moved = (stored["loop"] - torch.stack([init[c] for c in sorted(init)])).abs().max()
    assert moved > 100 * 1e-5  # the steps moved the data far more than the tolerance below
    torch.testing.assert_close(stored["lean"], stored["loop"], atol=1e-5, rtol=0)
