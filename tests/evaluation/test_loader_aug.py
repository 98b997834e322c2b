"""The ImageNet evaluation's loader-side augmentation (data.py transform_imagenet, misc/utils.py)."""

from __future__ import annotations

import pytest
import torch

from idc_ray.evaluation.loader_aug import (
    EIGVAL,
    EIGVEC,
    ImageNetAugment,
    build_loader_aug,
    color_jitter,
    lighting,
    random_flip,
    random_resized_crop,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same_image(n: int, size: int = 16) -> torch.Tensor:
    img = torch.rand(3, size, size, generator=gen(0))
    return img.expand(n, 3, size, size).clone()


def test_lighting_matches_the_published_formula():
    x = torch.rand(4, 3, 5, 5, generator=gen(1))
    out = lighting(x, gen(2), std=0.1)
    alpha = torch.randn(4, 3, generator=gen(2)) * 0.1  # the same stream, recomputed by hand below
    for n in range(4):
        # Lighting.__call__: rgb_i = sum_j eigvec[i][j] * alpha_j * eigval_j, added to every pixel
        rgb = [sum(EIGVEC[i][j] * float(alpha[n, j]) * EIGVAL[j] for j in range(3)) for i in range(3)]
        assert torch.allclose(out[n] - x[n], torch.tensor(rgb).view(3, 1, 1).expand(3, 5, 5), atol=1e-6)
    assert not torch.allclose(out, x)


def test_jitter_scales_a_grey_image_by_brightness_only_within_0_6_to_1_4():
    # on a constant grey image, contrast and saturation blend towards itself; brightness scales
    # it by 1 - a, a ~ U(-0.4, 0.4); nothing is clipped (the published jitter does not clip)
    x = torch.full((64, 3, 4, 4), 0.9)
    out = color_jitter(x, gen(3), strength=0.4)
    factors = out[:, 0, 0, 0] / 0.9
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out), atol=1e-6)
    assert float(factors.min()) >= 0.6 - 1e-6 and float(factors.max()) <= 1.4 + 1e-6
    assert float(out.max()) > 1.0 and len(set(factors.tolist())) == 64  # unclipped, one factor per image


def test_jitter_saturation_and_contrast_are_published_blends():
    # a = 0 for brightness: only the blends remain; check against an independent per-image computation
    x = torch.rand(6, 3, 4, 4, generator=gen(4))
    g = gen(5)
    out = color_jitter(x, g, strength=0.4)
    g = gen(5)
    alpha = (torch.rand(6, 3, generator=g) * 2 - 1) * 0.4
    order = torch.rand(6, 3, generator=g).argsort(dim=1)
    for n in range(6):
        img = x[n].clone()
        for op in order[n].tolist():
            grey = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
            target = [torch.zeros_like(grey), grey.mean().expand_as(grey), grey][op]
            img = img.lerp(target.expand_as(img), float(alpha[n, op]))  # misc/utils.py Brightness/Contrast/Saturation
        assert torch.allclose(out[n], img, atol=1e-6)


def test_crop_is_per_image_within_range_and_identity_at_full_scale():
    x = same_image(8, size=32)
    out = random_resized_crop(x, gen(6), scale=(0.5, 1.0))
    assert out.shape == x.shape
    assert float(out.min()) >= float(x.min()) - 1e-6 and float(out.max()) <= float(x.max()) + 1e-6  # bilinear
    assert len({tuple(o.flatten()[:8].tolist()) for o in out}) >= 6  # a box per image, not one per batch
    full = random_resized_crop(x, gen(6), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(full, x, atol=1e-6)


def test_flip_mirrors_about_half_the_images():
    x = same_image(200, size=4)
    out = random_flip(x, gen(7))
    flipped = [torch.equal(o, x[0].flip(-1)) for o in out]
    assert all(f or torch.equal(o, x[0]) for f, o in zip(flipped, out)) and 70 < sum(flipped) < 130


def test_the_pipeline_is_per_image_seeded_and_leaves_the_global_rng_alone():
    x = same_image(4)
    aug = build_loader_aug("imagenet")
    assert isinstance(aug, ImageNetAugment) and build_loader_aug("none") is None
    state = torch.get_rng_state()
    out = aug(x, gen(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out, aug(x, gen(8))) and not torch.equal(out, aug(x, gen(9)))
    assert all(not torch.equal(out[0], out[k]) for k in range(1, 4))
    with pytest.raises(ValueError, match="unknown loader augmentation 'autoaugment'"):
        build_loader_aug("autoaugment")
