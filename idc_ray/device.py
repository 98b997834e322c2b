"""The torch device a run uses (its own module so the engine-level callers need neither Ray nor the jobs)."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first visible CUDA device (Ray sets CUDA_VISIBLE_DEVICES per actor), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but no CUDA device is visible; use --device cpu or auto")
    return device
