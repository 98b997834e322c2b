import pytest
import torch
import torch.nn as nn

from idc_ray.engine.matching import DISTANCES, distance, gradient_match_loss, matched_parameters


@pytest.mark.parametrize("name", list(DISTANCES))
def test_distance_zero_on_identical_inputs(name):
    a = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    assert float(distance(name)(a, a.clone())) == pytest.approx(0.0, abs=1e-5)


def test_distances_match_their_definitions():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    assert torch.allclose(distance("mse")(a, b), ((a - b) ** 2).sum())
    assert torch.allclose(distance("l1")(a, b), (a - b).abs().sum())
    assert torch.allclose(distance("l1_mean")(a, b), sum((a[i] - b[i]).abs().mean() for i in range(4)))
    cos = sum(1 - torch.dot(a[i], b[i]) / (a[i].norm() * b[i].norm() + 1e-6) for i in range(4))
    assert torch.allclose(distance("cos")(a, b), cos)


@pytest.mark.parametrize("name", list(DISTANCES))
def test_distance_gradient_matches_finite_differences(name):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: distance(name)(a, t), (b,), eps=1e-6, atol=1e-5)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'l3'"):
        distance("l3")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.norm = nn.GroupNorm(2, 2)
        self.classifier = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.classifier(torch.relu(self.norm(self.conv(x))).flatten(1))


def test_parameter_selection_conv_only_by_default():
    net = _Net()
    assert [p.dim() for p in matched_parameters(net)] == [4]
    assert sorted(p.dim() for p in matched_parameters(net, bias=True, fc=True)) == [1, 1, 1, 1, 2, 4]


def test_gradient_match_loss_zero_when_batches_equal_and_differentiable():
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    params = matched_parameters(net)
    syn = x.clone().requires_grad_(True)
    loss = gradient_match_loss(net, params, x, y, syn, y, "mse")
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-10)
    syn2 = (x + 0.3).requires_grad_(True)
    loss2 = gradient_match_loss(net, params, x, y, syn2, y, "l1")
    grad, = torch.autograd.grad(loss2, syn2)
    assert float(loss2) > 0 and grad.abs().sum() > 0
