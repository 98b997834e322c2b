"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021b) as IDC uses it, and CutMix.

Settings sheet, "Algorithm 1 as the published code runs it", "Evaluation protocol" and
"Corrections" (the published ``DiffAug`` of misc/augment.py, called with its default
``single_aug=True`` by condense.py, train.py and test.py):
- a call applies flip (if in the strategy), then colour (brightness, saturation, contrast), then
  ONE of the strategy's geometric transforms (crop / scale / rotate), chosen at random once per
  call, then cutout (if in the strategy). Strategy order does not matter, except that it orders
  the geometric candidates. ``single=False`` applies every geometric transform instead (in the
  order written), which is what idc-ray did before issue 11;
- the matching (``color_crop_cutout``, ``color_crop`` for MNIST f > 1) and expert (``color_crop``)
  strategies have one geometric transform, so both settings give them the same result (no draw
  is spent on choosing among one); the evaluation strategy (``color_crop_flip_scale_rotate``)
  is where the choice matters;
- gradient matching applies ONE parameter draw to the concatenation [real; synthetic]
  (``mode="batch"``, siamese), so real and synthetic gradients see the same transform;
- expert training and evaluation draw parameters per sample (``mode="sample"``) and add CutMix.
  The geometric choice is one per call in both modes (one per mini-batch), as published.

Every transform is differentiable w.r.t. the input, because the matching loss backpropagates
through the augmentation into the synthetic images. All parameters (and the geometric choice)
are drawn on the CPU from an explicit ``torch.Generator`` and then moved to the data's device,
so one generator state gives the same augmentation on every device and the global RNG is never
touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable
import numpy as np
import torch
import torch.nn.functional as F

TOKENS = ("color", "crop", "cutout", "flip", "scale", "rotate")
MODES = ("batch", "sample")
FIRST = ("flip", "color")  # always applied, in this order, before the geometric transform
GEOMETRIC = ("crop", "scale", "rotate")  # one of these per call when ``single`` (published)
LAST = ("cutout",)  # always applied, after the geometric transform


@dataclass(frozen=True)
class AugParams:
    """DSA's default magnitudes (the values IDC inherits)."""

    brightness: float = 1.0  # x + (u - 0.5) * brightness
    saturation: float = 2.0  # (x - per-pixel channel mean) * (u * saturation) + mean
    contrast: float = 0.5  # (x - per-image mean) * (u + contrast) + mean
    crop: float = 0.125  # integer translation by up to round(size * crop) pixels, zero padding
    cutout: float = 0.5  # zeroed square of side round(size * cutout)
    scale: float = 1.2  # x/y scale factors uniform in [1/scale, scale]
    rotate: float = 15.0  # angle uniform in [-rotate, rotate] degrees
    flip_prob: float = 0.5  # horizontal flip


def _round_half_up(v: float) -> int:
    """DSA sizes its crop and cutout with int(v + 0.5), not Python's banker's round."""
    return int(v + 0.5)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels with zero fill: out[n, :, i, j] = x[n, :, i - dy[n], j - dx[n]].

    Exact (no interpolation) and differentiable: zero padding by the largest shift, then two
    gathers along height and width. ``dy``/``dx`` are integer tensors of shape (N,).
    """
    n, c, h, w = x.shape
    p = int(torch.cat([dy, dx]).abs().max()) if n else 0
    if p == 0:
        return x
    padded = F.pad(x, (p, p, p, p))
    rows = torch.arange(h, device=x.device).view(1, h) - dy.view(n, 1) + p  # (N, H)
    cols = torch.arange(w, device=x.device).view(1, w) - dx.view(n, 1) + p  # (N, W)
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * p))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def cutout_mask(shape: torch.Size, cy: torch.Tensor, cx: torch.Tensor, size_h: int, size_w: int) -> torch.Tensor:
    """A (N, 1, H, W) float mask, 0 inside a size_h x size_w box around (cy[n], cx[n]) clipped at
    the borders, 1 elsewhere. The box covers rows cy - size_h // 2 .. cy - size_h // 2 + size_h - 1."""
    n, _, h, w = shape
    device = cy.device
    top, left = (cy - size_h // 2).view(n, 1), (cx - size_w // 2).view(n, 1)
    r = torch.arange(h, device=device).view(1, h)
    c = torch.arange(w, device=device).view(1, w)
    in_rows = (r >= top) & (r < top + size_h)  # (N, H)
    in_cols = (c >= left) & (c < left + size_w)  # (N, W)
    inside = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)
    return (~inside).float()


class DiffAugment:
    """A DSA strategy: tokens from ``TOKENS`` joined by '_' ('' or 'none' = identity).

    ``mode="batch"``: one parameter draw shared by every sample of the call (siamese; the caller
    passes torch.cat([real, synthetic])). ``mode="sample"``: independent draws per sample.
    ``single=True`` (published): flip, colour, ONE geometric transform drawn per call, cutout;
    ``single=False``: flip, colour, every geometric transform in the order written, cutout.
    'color' is brightness, then saturation, then contrast.
    """

    def __init__(self, strategy: str, mode: str = "batch", params: AugParams = AugParams(), single: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown augmentation mode '{mode}'; choose one of {', '.join(MODES)}")
        self.strategy = strategy
        self.mode = mode
        self.params = params
        self.single = single
        name = (strategy or "").strip().lower()
        self.tokens: tuple[str, ...] = () if name in ("", "none") else tuple(name.split("_"))
        for token in self.tokens:
            if token not in TOKENS:
                raise ValueError(
                    f"unknown augmentation '{token}' in strategy '{strategy}'; "
                    f"valid tokens: {', '.join(TOKENS)} (joined by '_'), or 'none'"
                )
        self.first = tuple(t for t in FIRST if t in self.tokens)
        self.geometric = tuple(t for t in self.tokens if t in GEOMETRIC)
        self.last = tuple(t for t in LAST if t in self.tokens)

    def __repr__(self) -> str:
        return f"DiffAugment({self.strategy!r}, mode={self.mode!r}, single={self.single})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for token in self.first:
            x = self._apply(token, x, generator)
        for token in self._geometric_for_call(generator):
            x = self._apply(token, x, generator)
        for token in self.last:
            x = self._apply(token, x, generator)
        return x

    def _geometric_for_call(self, generator: torch.Generator) -> tuple[str, ...]:
        """The geometric transforms of this call: one drawn uniformly when ``single`` and there is
        a choice (no draw otherwise, so one-transform strategies keep their random stream)."""
        if not self.single or len(self.geometric) < 2:
            return self.geometric
        return (self.geometric[int(torch.randint(len(self.geometric), (), generator=generator))],)

    def _apply(self, token: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # looked up per call (not bound once) so tests can count which transforms ran
        return getattr(self, f"_{token}")(x, generator)

    # -- parameter draws: on the CPU from the generator, then to x's device --------------------

    def _count(self, x: torch.Tensor) -> int:
        return 1 if self.mode == "batch" else x.shape[0]

    def _uniform(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """U[0, 1) of shape (N,) (one value repeated N times in batch mode), on x's device/dtype."""
        u = torch.rand(self._count(x), generator=g)
        return u.to(device=x.device, dtype=x.dtype).expand(x.shape[0])

    def _randint(self, x: torch.Tensor, g: torch.Generator, low: int, high: int) -> torch.Tensor:
        """Integers in [low, high) of shape (N,), shared in batch mode."""
        k = torch.randint(low, high, (self._count(x),), generator=g)
        return k.to(x.device).expand(x.shape[0])

    # -- transforms ------------------------------------------------------------------------------

    def _color(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        p = self.params
        x = x + (self._uniform(x, g).view(-1, 1, 1, 1) - 0.5) * p.brightness
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (self._uniform(x, g).view(-1, 1, 1, 1) * p.saturation) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (self._uniform(x, g).view(-1, 1, 1, 1) + p.contrast) + m

    def _crop(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        sh = _round_half_up(x.shape[2] * self.params.crop)
        sw = _round_half_up(x.shape[3] * self.params.crop)
        dy = self._randint(x, g, -sh, sh + 1)
        dx = self._randint(x, g, -sw, sw + 1)
        return translate(x, dy, dx)

    def _cutout(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        ch = _round_half_up(h * self.params.cutout)
        cw = _round_half_up(w * self.params.cutout)
        # DSA's centre range: [0, H] for an even side, [0, H - 1] for an odd one.
        cy = self._randint(x, g, 0, h + 1 - ch % 2)
        cx = self._randint(x, g, 0, w + 1 - cw % 2)
        return x * cutout_mask(x.shape, cy, cx, ch, cw).to(x.dtype)

    def _flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        coin = self._uniform(x, g) < self.params.flip_prob  # one coin per call in batch mode
        return torch.where(coin.view(-1, 1, 1, 1), x.flip(3), x)

    def _affine(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        # align_corners=False: torch's default, what the published code ran with on torch >= 1.3.
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def _scale(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = self.params.scale
        sx = self._uniform(x, g) * (s - 1.0 / s) + 1.0 / s
        sy = self._uniform(x, g) * (s - 1.0 / s) + 1.0 / s
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
        return self._affine(x, theta)

    def _rotate(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        angle = (self._uniform(x, g) - 0.5) * 2 * self.params.rotate * math.pi / 180
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return self._affine(x, theta)


# -- CutMix (Yun et al. 2019), the "strong augmentation" of expert training and evaluation ------

def _sample_beta(beta: float, generator: torch.Generator) -> float:
    """lam ~ Beta(beta, beta) from ``generator``.

    torch's Beta/Gamma samplers take no generator, so for beta != 1 a numpy Generator is seeded
    with one int64 drawn from the torch generator and numpy's beta is used. Beta(1, 1) is
    uniform, drawn directly.
    """
    if beta == 1.0:
        return float(torch.rand((), generator=generator))
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    return float(np.random.default_rng(seed).beta(beta, beta))


def cutmix(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, *, beta: float = 1.0,
           prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix a batch. Returns (x_mixed, y_a, y_b, lam) for
    ``loss = lam * CE(out, y_a) + (1 - lam) * CE(out, y_b)``.

    With probability 1 - prob (one uniform draw) nothing is mixed: (x, y, y, 1.0). Otherwise
    lam ~ Beta(beta, beta), the batch is permuted, and a box of area fraction about 1 - lam at a
    uniform centre (clipped at the borders) is pasted from the permuted batch; lam is then
    recomputed from the clipped box's area. ``x`` is not modified; the result is differentiable.
    """
    if float(torch.rand((), generator=generator)) >= prob:
        return x, y, y, 1.0
    lam = _sample_beta(beta, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    h, w = x.shape[2], x.shape[3]
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (), generator=generator))
    cx = int(torch.randint(w, (), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    box = torch.zeros(1, 1, h, w, dtype=torch.bool, device=x.device)
    box[..., top:bottom, left:right] = True
    mixed = torch.where(box, x[perm], x)
    lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    return mixed, y, y[perm], lam


def mixed_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float,
                        mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b) (mean over the batch). ``mask(logits,
    labels)``: the logits each term sees for its labels (task-incremental heads), if given."""
    seen = (lambda z, _: z) if mask is None else mask
    loss = F.cross_entropy(seen(logits, y_a), y_a)
    if lam == 1.0:
        return loss
    return lam * loss + (1.0 - lam) * F.cross_entropy(seen(logits, y_b), y_b)
