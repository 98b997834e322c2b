"""Matplotlib figures written as PNG files: the one place that picks the headless backend,
renders and writes all-or-nothing (evaluation reports, the curve drawn during condensation,
continual-learning reports)."""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Iterator

from idc_ray import storage


@contextmanager
def png_figure(uri: str, columns: int = 1, *, figsize: tuple[float, float], **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """A figure of one row of ``columns`` panels (``axes[0][i]``) for the ``with`` body to draw;
    on leaving the body it is laid out and written to ``uri`` as a PNG under a temporary name,
    renamed last, so a reader never sees half a file. The figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=figsize, squeeze=False, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        storage.atomic_write_bytes(uri, buffer.getvalue())
    finally:
        plt.close(fig)


__all__ = ["png_figure"]
