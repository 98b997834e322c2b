"""DSA augmentation (siamese batch mode, per-sample mode) and CutMix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from idc_ray.engine.augment import (
    TOKENS,
    AugParams,
    DiffAugment,
    cutmix,
    cutout_mask,
    mixed_cross_entropy,
    translate,
)

FULL = "color_crop_cutout_flip_scale_rotate"
STRATEGIES = [*TOKENS, FULL]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=gen(seed))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_mode_is_siamese(strategy):
    a = images()
    out = DiffAugment(strategy, mode="batch")(torch.cat([a, a]), gen(1))
    assert torch.equal(out[:4], out[4:])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sample_mode_draws_per_sample(strategy):
    a = images(n=8)
    aug = DiffAugment(strategy, mode="sample")
    # flip is a coin per sample: over a few seeds the halves must disagree at least once
    assert any(not torch.equal(o[:8], o[8:]) for o in (aug(torch.cat([a, a]), gen(s)) for s in range(3)))


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_generator_controls_everything(mode):
    x = images()
    aug = DiffAugment(FULL, mode=mode)
    state = torch.get_rng_state()
    first = aug(x, gen(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, aug(x, gen(7)))
    assert not torch.equal(first, aug(x, gen(8)))


@pytest.mark.parametrize("strategy", ["", "none", "None"])
def test_none_is_identity(strategy):
    x = images()
    assert torch.equal(DiffAugment(strategy)(x, gen(0)), x)


def test_unknown_token_is_named():
    with pytest.raises(ValueError, match=r"unknown augmentation 'blur'.*color, crop, cutout, flip, scale, rotate"):
        DiffAugment("color_blur")
    with pytest.raises(ValueError, match="mode"):
        DiffAugment("color", mode="pairs")


def test_translate_is_exact_integer_shift():
    x = images(n=3, h=8, w=8)
    dy, dx = torch.tensor([2, -1, 0]), torch.tensor([-3, 0, 1])
    out = translate(x, dy, dx)
    for n in range(3):
        expected = torch.roll(x[n], shifts=(int(dy[n]), int(dx[n])), dims=(1, 2))
        # roll wraps around; translate fills the vacated rows/columns with zeros
        valid = torch.ones(8, 8, dtype=torch.bool)
        valid = translate(valid[None, None].float(), dy[n : n + 1], dx[n : n + 1])[0, 0].bool()
        assert torch.equal(out[n], torch.where(valid, expected, torch.zeros(())))
        rows, cols = 8 - abs(int(dy[n])), 8 - abs(int(dx[n]))
        assert int(valid.sum()) == rows * cols


def test_crop_shift_is_bounded_and_integer():
    # a single bright pixel must land on a pixel (no interpolation), within round(16 * 0.125) = 2
    x = torch.zeros(16, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = DiffAugment("crop", mode="sample")(x, gen(3))
    for img in out[:, 0]:
        assert torch.equal(img.sum(), torch.tensor(1.0)) and int((img == 1).sum()) == 1
        i, j = divmod(int(img.argmax()), 16)
        assert abs(i - 8) <= 2 and abs(j - 8) <= 2


def test_cutout_mask_square_and_clipping():
    mask = cutout_mask(torch.Size((2, 3, 16, 16)), torch.tensor([8, 0]), torch.tensor([8, 15]), 8, 8)
    assert mask.shape == (2, 1, 16, 16)
    assert torch.equal(mask[0, 0, 4:12, 4:12], torch.zeros(8, 8)) and int((mask[0] == 0).sum()) == 64
    assert int((mask[1] == 0).sum()) == 4 * 5  # rows 0..3, cols 11..15


def test_cutout_zeros_a_square_of_the_expected_side():
    x = torch.ones(32, 3, 16, 16)
    out = DiffAugment("cutout", mode="sample", params=AugParams(cutout=0.5))(x, gen(5))
    for img in out:
        zero = (img[0] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert int(zero.sum()) == len(rows) * len(cols)  # a (clipped) rectangle
        assert len(rows) <= 8 and len(cols) <= 8
        assert torch.equal(img[:, ~zero], torch.ones(3, int((~zero).sum())))
    full = [img for img in out if int((img[0] == 0).sum()) == 64]
    assert full, "an unclipped 8 x 8 square should appear among 32 draws"


def test_flip_matches_torch_flip_when_the_coin_says_so():
    x = images(n=16)
    out = DiffAugment("flip", mode="sample")(x, gen(0))
    flipped = [torch.equal(o, torch.flip(i, dims=(2,))) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    always = DiffAugment("flip", mode="batch", params=AugParams(flip_prob=1.0))(x, gen(0))
    assert torch.equal(always, torch.flip(x, dims=(3,)))


def test_scale_and_rotate_identity_at_zero_magnitude():
    x = images()
    params = AugParams(scale=1.0, rotate=0.0)
    for token in ("scale", "rotate"):
        out = DiffAugment(token, mode="sample", params=params)(x, gen(0))
        assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradients_reach_the_input(strategy, mode):
    x = images().requires_grad_(True)
    DiffAugment(strategy, mode=mode)(x, gen(2)).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cutmix_lam_is_one_minus_pasted_fraction():
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()
    y = torch.arange(8)
    mixed_any = False
    for seed in range(20):
        out, ya, yb, lam = cutmix(x, y, gen(seed), prob=1.0)
        assert 0.0 <= lam <= 1.0 and torch.equal(ya, y)
        changed = (out != x).any(1)  # (N, H, W); a pasted pixel differs unless yb == ya
        for n in range(8):
            if yb[n] != ya[n]:
                assert abs((1 - changed[n].float().mean().item()) - lam) < 1e-9
                assert torch.equal(out[n][:, changed[n]], x[int(yb[n])][:, changed[n]])
                mixed_any = True
    assert mixed_any


def test_cutmix_beta_not_one_and_no_in_place():
    x, y = images(n=6), torch.arange(6)
    before = x.clone()
    out, _, _, lam = cutmix(x, y, gen(4), beta=0.5, prob=1.0)
    assert torch.equal(x, before) and 0.0 <= lam <= 1.0
    again = cutmix(x, y, gen(4), beta=0.5, prob=1.0)
    assert torch.equal(out, again[0]) and lam == again[3]


def test_cutmix_prob_zero_never_mixes():
    x, y = images(), torch.arange(4)
    for seed in range(10):
        out, ya, yb, lam = cutmix(x, y, gen(seed), prob=0.0)
        assert out is x and torch.equal(ya, y) and torch.equal(yb, y) and lam == 1.0


def test_cutmix_is_differentiable():
    x = images().requires_grad_(True)
    out, *_ = cutmix(x, torch.arange(4), gen(0), prob=1.0)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # every output pixel comes from exactly one input pixel


def test_mixed_cross_entropy_matches_manual():
    logits = torch.randn(5, 4, generator=gen(0))
    ya, yb = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([3, 2, 1, 0, 1])
    lam = 0.3
    expected = lam * F.cross_entropy(logits, ya) + (1 - lam) * F.cross_entropy(logits, yb)
    assert torch.allclose(mixed_cross_entropy(logits, ya, yb, lam), expected)
    assert torch.equal(mixed_cross_entropy(logits, ya, ya, 1.0), F.cross_entropy(logits, ya))


# -- the published single_aug structure (misc/augment.py DiffAug, settings sheet "Corrections") ---

def _record_calls(monkeypatch) -> list[tuple[str, int]]:
    """Replace every transform by an identity that records (token, batch size) of each call."""
    calls: list[tuple[str, int]] = []
    for token in TOKENS:
        def fake(self, x, g, token=token):
            calls.append((token, x.shape[0]))
            return x
        monkeypatch.setattr(DiffAugment, f"_{token}", fake)
    return calls


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_one_call_applies_flip_colour_one_geometric_then_cutout(monkeypatch, mode):
    calls = _record_calls(monkeypatch)
    aug = DiffAugment("color_crop_cutout_flip_scale_rotate", mode=mode)
    chosen = set()
    for seed in range(24):
        calls.clear()
        aug(images(n=5), gen(seed))
        tokens = [t for t, _ in calls]
        assert tokens[:2] == ["flip", "color"] and tokens[3:] == ["cutout"] and len(tokens) == 4
        assert tokens[2] in ("crop", "scale", "rotate")
        assert all(n == 5 for _, n in calls)  # the whole batch goes through the one choice: one per call
        chosen.add(tokens[2])
    assert chosen == {"crop", "scale", "rotate"}


def test_single_false_applies_every_geometric_transform_in_order(monkeypatch):
    calls = _record_calls(monkeypatch)
    DiffAugment("rotate_color_crop_scale", mode="sample", single=False)(images(), gen(0))
    assert [t for t, _ in calls] == ["color", "rotate", "crop", "scale"]


def test_the_geometric_choice_comes_from_the_generator(monkeypatch):
    calls = _record_calls(monkeypatch)
    aug = DiffAugment("crop_scale_rotate", mode="sample")
    state = torch.get_rng_state()
    picks = []
    for _ in range(2):
        calls.clear()
        g = gen(11)
        picks.append([aug(images(), g) is not None and calls[-1][0] for _ in range(8)])
    assert picks[0] == picks[1] and len(set(picks[0])) > 1
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("strategy", ["color_crop_cutout", "color_crop", "none"])
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_matching_and_expert_strategies_are_unchanged_by_single(strategy, mode):
    # One geometric transform: no draw is spent on the choice, so condensation keeps its bytes.
    x = images(n=6)
    g1, g2 = gen(4), gen(4)
    out1 = DiffAugment(strategy, mode=mode, single=True)(x, g1)
    out2 = DiffAugment(strategy, mode=mode, single=False)(x, g2)
    assert torch.equal(out1, out2) and torch.equal(g1.get_state(), g2.get_state())
