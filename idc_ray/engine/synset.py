"""The stored condensed set: initialisation, per-class sampling and the data optimiser.

Stored data are un-normalised in [0, 1], shape (classes, ipc, C, H, W) (settings sheet). Each
class's slice is updated independently, so a shard of classes can live in another process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from idc_ray.engine import rng


def init_class(real: torch.Tensor, ipc: int, factor: int, kind: str, generator: torch.Generator, *,
               formation: str = "uniform", axis: int = -1, select: str = "first") -> torch.Tensor:
    """Initial stored samples of one class, (ipc, C, H, W) in [0, 1].

    ``real`` is the class's real images (N, C, H, W) in [0, 1], in dataset order. ``random``:
    ipc real samples; ``mix``: each stored sample is a mosaic of factor^2 real samples
    downsampled to fit (factor strips for 1-D formation), so multi-formation initially yields
    real images; ``noise``: clamp(N(0.5, 0.25^2), 0, 1) per pixel, as the published Synthesizer
    draws it. ``select`` picks the real samples: ``first``, the class's first images in dataset
    order (the published ``class_sample(c, n)``, settings sheet "Corrections"), or ``random``, a
    permutation drawn from ``generator``.
    """
    c, h, w = real.shape[1:]
    if kind == "noise":
        return torch.randn((ipc, c, h, w), generator=generator).div_(4).add_(0.5).clamp_(0.0, 1.0)
    pieces = factor if formation == "1d" else factor * factor
    need = ipc * (pieces if kind == "mix" else 1)
    picked = _select(real, need, select, generator)
    if len(picked) < need:  # fewer real samples than needed: cycle through them
        picked = picked.repeat((need + len(picked) - 1) // len(picked), 1, 1, 1)[:need]
    if kind == "random":
        return picked.clone()
    if kind != "mix":
        raise ValueError(f"unknown init '{kind}'; choose one of random, mix, noise")
    if formation == "1d":
        return _mosaic_1d(picked, ipc, factor, axis)
    return _mosaic(picked, ipc, factor)


def _select(real: torch.Tensor, need: int, select: str, generator: torch.Generator) -> torch.Tensor:
    """``need`` of the class's real samples: the first ones, or a random subset."""
    if select == "first":
        return real[:need]
    if select == "random":
        return real[torch.randperm(len(real), generator=generator)[:need]]
    raise ValueError(f"unknown init selection '{select}'; choose first or random")


def _sizes(side: int, factor: int) -> list[int]:
    """Piece sizes of the published mix init: the first side % factor pieces get one extra pixel."""
    base, extra = divmod(side, factor)
    return [base + 1 if i < extra else base for i in range(factor)]


def _mosaic(picked: torch.Tensor, ipc: int, factor: int) -> torch.Tensor:
    """Tile factor x factor downsampled images (nearest, as published) row-major into each sample;
    piece k of every stored sample comes from picked[k*ipc:(k+1)*ipc]."""
    h, w = picked.shape[-2:]
    out = torch.empty((ipc, *picked.shape[1:]), dtype=picked.dtype)
    k, top = 0, 0
    for ph in _sizes(h, factor):
        left = 0
        for pw in _sizes(w, factor):
            part = F.interpolate(picked[k * ipc : (k + 1) * ipc], size=(ph, pw))
            out[:, :, top : top + ph, left : left + pw] = part
            left += pw
            k += 1
        top += ph
    return out


def _mosaic_1d(picked: torch.Tensor, ipc: int, factor: int, axis: int) -> torch.Tensor:
    """Strips of ``factor`` real samples squeezed along one axis (1-D formation's mix init)."""
    h, w = picked.shape[-2:]
    out = torch.empty((ipc, *picked.shape[1:]), dtype=picked.dtype)
    start = 0
    for k, length in enumerate(_sizes(w if axis == -1 else h, factor)):
        size = (h, length) if axis == -1 else (length, w)
        part = F.interpolate(picked[k * ipc : (k + 1) * ipc], size=size)
        if axis == -1:
            out[..., :, start : start + length] = part
        else:
            out[..., start : start + length, :] = part
        start += length
    return out


def sample_formed(stored: torch.Tensor, label: int, former: Callable, cap: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Form one class's stored samples and randomly keep at most ``cap`` of them (the published
    batch_syn_max = 128 subsampling, drawn only when the formed set is larger)."""
    labels = torch.full((len(stored),), label, dtype=torch.long, device=stored.device)
    formed, formed_labels = former(stored, labels)
    if len(formed) > cap:
        keep = torch.randperm(len(formed), generator=generator)[:cap].to(stored.device)
        formed, formed_labels = formed[keep], formed_labels[keep]
    return formed, formed_labels


@dataclass
class ClassOptimizer:
    """SGD with momentum for one class's slice of the stored set.

    ``shared`` mode reproduces the published optimiser exactly: one SGD (momentum 0.5) over ONE
    tensor of every class, stepped after each class's loss, so a class's rows also take a
    momentum-only step whenever another class is updated (settings sheet, "Condensed-data
    optimiser"). The class therefore applies ``position`` momentum-only steps before its own
    gradient step and ``num_classes - 1 - position`` after it, in every inner iteration. The
    arithmetic is torch.optim.SGD's single-tensor path element for element, so the result is
    the same whichever process holds the class. ``per_class`` mode is plain SGD on the class's own
    steps (an option, not the published behaviour).
    """

    lr: float
    momentum: float
    position: int
    num_classes: int
    mode: str = "shared"
    buffer: torch.Tensor | None = None

    def _momentum_only(self, param: torch.Tensor, steps: int) -> None:
        if self.buffer is None:  # torch's buffer rows for this class are zeros: a no-op step
            return
        for _ in range(steps):
            self.buffer.mul_(self.momentum)
            param.add_(self.buffer, alpha=-self.lr)

    def before_update(self, param: torch.Tensor) -> None:
        """Steps taken by the classes before this one in the inner iteration."""
        if self.mode == "shared":
            with torch.no_grad():
                self._momentum_only(param, self.position)

    def step(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        """This class's own step, then the steps of the classes after it (shared mode)."""
        with torch.no_grad():
            if self.buffer is None:
                self.buffer = grad.detach().clone()
            else:
                self.buffer.mul_(self.momentum).add_(grad)
            param.add_(self.buffer, alpha=-self.lr)
            if self.mode == "shared":
                self._momentum_only(param, self.num_classes - 1 - self.position)

    def state_dict(self) -> dict:
        return {"buffer": None if self.buffer is None else self.buffer.detach().cpu().clone()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        buf = state.get("buffer")
        self.buffer = None if buf is None else buf.to(device).clone()


@dataclass
class SyntheticClass:
    """One class's stored samples (a leaf tensor) and its optimiser state."""

    label: int
    data: torch.Tensor
    optimizer: ClassOptimizer

    def clamp_(self) -> None:
        """Clamp to [0, 1]; the published loop does this at the start of each outer iteration."""
        with torch.no_grad():
            self.data.clamp_(0.0, 1.0)


def init_synset(store, classes, ipc: int, factor: int, kind: str, seed: int, *,
                formation: str = "uniform", axis: int = -1, select: str = "first") -> dict[int, torch.Tensor]:
    """Initial stored samples for each class, keyed only by (seed, class) so any shard of classes
    initialises exactly as the full set would."""
    return {
        c: init_class(store.class_tensor(c), ipc, factor, kind, rng.generator(seed, "init", c),
                      formation=formation, axis=axis, select=select)
        for c in classes
    }
