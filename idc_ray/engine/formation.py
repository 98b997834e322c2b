"""Multi-formation: stored condensed samples -> formed training samples (paper Section 3.2).

All functions are differentiable, deterministic and used identically during condensation and
evaluation, so the stored budget stays n x m pixels (settings sheet, "Multi-formation").
Formed samples are ordered crop-major: every stored sample's crop 0, then every crop 1, ...
(the published decode order); labels are repeated in the same order.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

PAD_VALUE = 0.5  # grey padding when the side is not a multiple of the factor (published value)
# Every formation get_former knows; the config's synset.formation also takes "auto" (engine/plan.py).
FORMATIONS = ("uniform", "multiscale", "bounded", "bounded_tight", "1d", "learned")


def _pad_to_multiple(x: torch.Tensor, factor: int, axes: tuple[int, ...]) -> torch.Tensor:
    """Pad the right/bottom of the given spatial axes to a multiple of ``factor`` with 0.5."""
    pad = [0, 0, 0, 0]  # F.pad order: (left, right, top, bottom)
    for axis in axes:
        side = x.shape[axis]
        extra = (-side) % factor
        if axis in (-1, 3):
            pad[1] = extra
        else:
            pad[3] = extra
    if any(pad):
        x = F.pad(x, pad, value=PAD_VALUE)
    return x


def uniform_crops(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The uniform partition: each (C, H, W) sample cut into a factor x factor grid, row-major,
    after padding right/bottom to a multiple of the factor; crop k of every sample together,
    crop-major. Uniform and learned formation both partition this way."""
    h, w = x.shape[-2:]
    padded = _pad_to_multiple(x, factor, (-2, -1))
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    return torch.cat([
        padded[..., i * ch : (i + 1) * ch, j * cw : (j + 1) * cw]
        for i in range(factor)
        for j in range(factor)
    ])


def form_uniform(x: torch.Tensor, y: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each (C, H, W) sample into a factor x factor grid (row-major) and upsample every crop
    bilinearly back to (H, W). factor 1 is the identity (IDC-I)."""
    if factor == 1:
        return x, y
    formed = F.interpolate(uniform_crops(x, factor), size=tuple(x.shape[-2:]), mode="bilinear",
                           align_corners=False)
    return formed, y.repeat(factor * factor)


def form_learned(x: torch.Tensor, y: torch.Tensor, factor: int,
                 upsampler: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The uniform partition, each crop upsampled by ``upsampler(crops, (H, W))`` instead of
    bilinear interpolation (paper appendix D; engine/upsampler.py), differentiable in both."""
    return upsampler(uniform_crops(x, factor), tuple(x.shape[-2:])), y.repeat(factor * factor)


def form_1d(x: torch.Tensor, y: torch.Tensor, factor: int, axis: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each sample into ``factor`` strips along one axis (-1: width, the time axis of a
    spectrogram; -2: height) and stretch each strip back to full length (paper appendix B)."""
    if factor == 1:
        return x, y
    h, w = x.shape[-2:]
    padded = _pad_to_multiple(x, factor, (axis,))
    length = math.ceil((w if axis == -1 else h) / factor)
    if axis == -1:
        strips = [padded[..., :, k * length : (k + 1) * length] for k in range(factor)]
    else:
        strips = [padded[..., k * length : (k + 1) * length, :] for k in range(factor)]
    formed = F.interpolate(torch.cat(strips), size=(h, w), mode="bilinear", align_corners=False)
    return formed, y.repeat(factor)


def form_multiscale(x: torch.Tensor, y: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of uniform formation for factors 1..factor (paper appendix D, Figure 3 right)."""
    parts = [form_uniform(x, y, k) for k in range(1, factor + 1)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def bounded_split(n: int, factor: int, bound: int, *, tight: bool = False) -> list[tuple[int, int]]:
    """How many of ``n`` stored samples to form at each factor, from ``factor`` down to 1, so the
    formed count stays within ``bound`` while every sample forms at least once.

    The published bounded decode (condense.py ``decode_zoom_bound``, settings sheet
    "Corrections"): the room left at factor k is ``bound - formed so far - samples not yet
    placed``, and k takes ``room // (k * k)`` samples. Dividing by k*k is a known slip: a sample
    placed at k also frees the one slot reserved for it, so ``tight=True`` divides by k*k - 1 and
    fills the bound as far as whole samples allow (formation ``bounded_tight``, the corrected
    variant). At bound 128 the published rule forms n=20 f=3 -> 125, n=30 f=3 -> 122,
    n=20 f=4 -> 126, n=50 f=2 -> 107. Returns [(factor, count), ...] with count > 0.
    """
    plan: list[tuple[int, int]] = []
    remaining, used = n, 0
    for k in range(factor, 0, -1):
        if remaining == 0:
            break
        if k == 1:
            take = remaining
        else:
            room = bound - used - remaining
            take = min(max(room, 0) // (k * k - 1 if tight else k * k), remaining)
        if take > 0:
            plan.append((k, take))
            used += take * k * k
            remaining -= take
    return plan


def form_bounded(x: torch.Tensor, y: torch.Tensor, factor: int, bound: int = 128, *,
                 tight: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed factors from ``factor`` down to 1 keeping at most max(bound, n) formed samples
    (split by :func:`bounded_split`)."""
    outs, labels, start = [], [], 0
    for k, count in bounded_split(len(x), factor, bound, tight=tight):
        fx, fy = form_uniform(x[start : start + count], y[start : start + count], k)
        outs.append(fx)
        labels.append(fy)
        start += count
    return torch.cat(outs), torch.cat(labels)


def get_former(formation: str, factor: int, *, axis: int = -1, bound: int = 128,
               upsampler: Callable | None = None) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The formation function for a config: ``former(stored, labels) -> (formed, labels)``.
    ``learned`` needs the run's ``upsampler`` (engine/upsampler.py)."""
    formers: dict[str, Callable] = {
        "uniform": lambda x, y: form_uniform(x, y, factor),
        "multiscale": lambda x, y: form_multiscale(x, y, factor),
        "bounded": lambda x, y: form_bounded(x, y, factor, bound),
        "bounded_tight": lambda x, y: form_bounded(x, y, factor, bound, tight=True),
        "1d": lambda x, y: form_1d(x, y, factor, axis),
        "learned": lambda x, y: form_learned(x, y, factor, upsampler),
    }
    if formation not in formers:
        raise ValueError(f"unknown formation '{formation}'; choose one of {', '.join(formers)}")
    if formation == "learned" and upsampler is None:
        raise ValueError("formation 'learned' needs the run's upsampler; pass upsampler=")
    return formers[formation]


def formed_per_sample(factor: int, formation: str) -> int:
    """Formed samples per stored sample for uniform, multi-scale and 1-D formation."""
    if formation in ("uniform", "learned"):
        return factor**2
    if formation == "multiscale":
        return sum(k**2 for k in range(1, factor + 1))
    if formation == "1d":
        return factor
    raise ValueError(f"formed_per_sample is not defined for '{formation}'; it depends on ipc and bound")


def form_classes(stored: torch.Tensor, labels: torch.Tensor, former: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """The formed training set of a stored set (classes, ipc, C, H, W), class by class (each
    class's formed samples crop-major), without gradients: how evaluation and the artifact's
    ``formed_dataset`` see the stored data."""
    with torch.no_grad():
        parts = [former(stored[i], labels.view(stored.shape[:2])[i]) for i in range(stored.shape[0])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
