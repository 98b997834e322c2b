"""The fields a run's matchers and its expert both depend on, declared once."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class SharedSpec:
    """The dataset's classes and normalisation (``data.stats`` applied) and the run's seed, as
    both ``MatchSpec`` and ``ExpertSpec`` hold them; engine/plan.py fills them from one place."""

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int

    def shared(self) -> dict[str, Any]:
        """These fields by name, to build another spec of the same run."""
        return {f.name: getattr(self, f.name) for f in fields(SharedSpec)}


__all__ = ["SharedSpec"]
