"""A Tune search space in Ray's terms: each swept parameter of a validated
:class:`~idc_ray.tune.space.TuneSpace` (parsed and checked without Ray in :mod:`idc_ray.tune.space`)
as a ``ray.tune`` sampler, keyed by its dotted config name."""

from __future__ import annotations

from typing import Any

from ray import tune

from idc_ray.tune.space import Param, TuneSpace


def sampler(param: Param):
    """The ``ray.tune`` sampler of a swept parameter."""
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    if param.type == "uniform":
        return tune.uniform(param.low, param.high)
    if param.type == "randint":
        return tune.randint(param.low, param.high + 1)  # tune's upper bound is exclusive
    if param.type == "choice":
        return tune.choice(list(param.values))
    return tune.grid_search(list(param.values))


def search_space(space: TuneSpace) -> dict[str, Any]:
    """The Tune ``param_space``: dotted config keys to samplers."""
    return {p.key: sampler(p) for p in space.params}


__all__ = ["sampler", "search_space"]
