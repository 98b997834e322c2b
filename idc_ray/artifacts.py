"""Writing and reading a condensation's output folder.

Layout of ``DIR`` (this release): ``condensed.pt`` (stored tensor, labels, metadata),
``config.yaml`` (the exact config, loadable with ``--config``), ``preview.png`` (one row of stored
samples per class). Every file is written under a temporary name and renamed into place, and
``condensed.pt`` comes last, so its presence means the folder is complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torchvision.utils import save_image

FORMAT_VERSION = 1


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp_path)`` then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_preview(path: Path, stored: torch.Tensor) -> None:
    """A PNG grid of stored samples (classes, ipc, C, H, W): one row per class."""
    rows = stored.flatten(0, 1).clamp(0, 1)
    _atomic_write(path, lambda tmp: save_image(rows, str(tmp), nrow=stored.shape[1], padding=2, format="png"))


def save_condensed(out_dir: str | Path, stored: torch.Tensor, labels: torch.Tensor, *, config_yaml: str,
                   meta: dict[str, Any]) -> Path:
    """Write the run's folder; returns the path of condensed.pt."""
    out = Path(out_dir)
    _atomic_write(out / "config.yaml", lambda tmp: tmp.write_text(config_yaml))
    save_preview(out / "preview.png", stored)
    payload = {"format_version": FORMAT_VERSION, "data": stored.detach().cpu().contiguous(),
               "labels": labels.detach().cpu(), "meta": meta}
    target = out / "condensed.pt"
    _atomic_write(target, lambda tmp: torch.save(payload, tmp))
    return target


def load_condensed_pt(path: str | Path) -> dict[str, Any]:
    """Read a condensed.pt written by :func:`save_condensed`: keys data, labels, meta."""
    p = Path(path)
    if p.is_dir():
        p = p / "condensed.pt"
    if not p.is_file():
        raise FileNotFoundError(f"no condensed set at '{p}'; pass the output folder of jobs/condense.py")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"'{p}' is not a readable condensed set ({type(e).__name__}); rerun jobs/condense.py") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"'{p}' has an unknown format (expected format_version {FORMAT_VERSION}); rerun jobs/condense.py")
    return payload
