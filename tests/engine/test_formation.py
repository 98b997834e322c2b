import pytest
import torch
import torch.nn.functional as F

from idc_ray.engine.formation import (
    bounded_split,
    form_1d,
    form_bounded,
    form_multiscale,
    form_uniform,
    get_former,
)


def _data(n=3, c=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g), torch.arange(n)


def test_identity_at_factor_one():
    x, y = _data()
    fx, fy = form_uniform(x, y, 1)
    assert torch.equal(fx, x) and torch.equal(fy, y)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_uniform_shapes_and_labels(factor):
    x, y = _data()
    fx, fy = form_uniform(x, y, factor)
    assert fx.shape == (3 * factor**2, 2, 32, 32)
    assert torch.equal(fy, y.repeat(factor**2))


def test_crop_layout_is_row_major_and_crop_major():
    # Each quadrant of the stored image holds a constant; bilinear upsampling of a constant crop
    # is the same constant, so formed sample k of stored sample i must equal quadrant k of i.
    x = torch.zeros(2, 1, 4, 4)
    for i in range(2):
        for k, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
            x[i, 0, r : r + 2, c : c + 2] = 10 * i + k
    fx, fy = form_uniform(x, torch.tensor([5, 7]), 2)
    for k in range(4):
        for i in range(2):
            assert torch.allclose(fx[k * 2 + i], torch.full((1, 4, 4), 10.0 * i + k))
    assert fy.tolist() == [5, 7] * 4


def test_padding_for_sides_not_divisible_by_factor():
    # 32 px with factor 3: padded to 33 with 0.5, crops of 11; the last crop row ends in padding.
    x = torch.zeros(1, 1, 32, 32)
    fx, _ = form_uniform(x, torch.tensor([0]), 3)
    last = fx[8, 0]  # crop (2, 2): rows/cols 22..32, index 32 is padding
    expected = F.interpolate(F.pad(x, (0, 1, 0, 1), value=0.5)[..., 22:33, 22:33], size=(32, 32),
                             mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(last, expected)
    assert last.max() > 0  # padding value 0.5 leaks in through interpolation
    assert torch.equal(fx[0, 0], torch.zeros(32, 32))  # interior crop sees no padding


def test_one_dimensional_formation_along_time_axis():
    x = torch.zeros(1, 1, 8, 8)
    x[..., :, 4:] = 1.0  # right half (later time) is 1
    fx, fy = form_1d(x, torch.tensor([3]), 2, axis=-1)
    assert fx.shape == (2, 1, 8, 8) and fy.tolist() == [3, 3]
    assert torch.equal(fx[0], torch.zeros(1, 8, 8)) and torch.equal(fx[1], torch.ones(1, 8, 8))
    fh, _ = form_1d(x, torch.tensor([3]), 2, axis=-2)  # along height: each strip keeps both halves
    assert torch.allclose(fh[0], x[0]) and torch.allclose(fh[1], x[0])


def test_multiscale_is_union_of_uniform():
    x, y = _data(n=2)
    fx, fy = form_multiscale(x, y, 3)
    assert fx.shape[0] == 2 * (1 + 4 + 9)
    parts = [form_uniform(x, y, k)[0] for k in (1, 2, 3)]
    assert torch.equal(fx, torch.cat(parts))


@pytest.mark.parametrize("n,factor,bound", [(20, 3, 128), (10, 3, 128), (200, 3, 128), (5, 4, 30)])
def test_bounded_keeps_within_bound(n, factor, bound):
    plan = bounded_split(n, factor, bound)
    assert sum(count for _, count in plan) == n
    assert [k for k, _ in plan] == sorted((k for k, _ in plan), reverse=True)
    total = sum(k * k * count for k, count in plan)
    assert total <= max(bound, n)
    x, y = _data(n=n, c=1, h=12, w=12)
    fx, fy = form_bounded(x, y, factor, bound)
    assert len(fx) == len(fy) == total


def test_bounded_uses_full_factor_when_room():
    assert bounded_split(10, 3, 128) == [(3, 10)]


# Formed samples per class at bound 128 (settings sheet, "Corrections"): the published decode
# divides the room by k*k; the tight variant (bounded_tight) by k*k - 1.
@pytest.mark.parametrize("n,factor,published,tight", [(20, 3, 125, 127), (30, 3, 122, 126),
                                                      (20, 4, 126, 128), (50, 2, 107, 128)])
def test_bounded_formed_counts_as_published(n, factor, published, tight):
    assert sum(k * k * c for k, c in bounded_split(n, factor, 128)) == published
    assert sum(k * k * c for k, c in bounded_split(n, factor, 128, tight=True)) == tight
    x, y = _data(n=n, c=1, h=8, w=8)
    assert len(get_former("bounded", factor)(x, y)[0]) == published
    assert len(get_former("bounded_tight", factor)(x, y)[0]) == tight


@pytest.mark.parametrize("formation", ["uniform", "multiscale", "bounded", "bounded_tight", "1d"])
def test_gradients_flow_to_stored_data(formation):
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    former = get_former(formation, 2, bound=6)
    fx, _ = former(x, torch.tensor([0, 1]))
    (fx * torch.linspace(0, 1, fx.numel()).view_as(fx)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_formation_is_deterministic_for_evaluation():
    x, y = _data()
    a = form_uniform(x, y, 2)[0]
    b = form_uniform(x.clone(), y, 2)[0]
    assert torch.equal(a, b)


def test_unknown_formation():
    with pytest.raises(ValueError, match="unknown formation 'zoom'"):
        get_former("zoom", 2)
