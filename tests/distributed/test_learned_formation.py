"""The Ray backend and a learned formation (issue 29): its matcher actors do not share the
upsampler yet, so placing such a run is refused with one line before any actor or Ray call."""

import pytest

from idc_ray.config import ConfigError, apply_overrides, load_preset
from idc_ray.data import get_spec
from idc_ray.distributed.backend import RayBackend
from idc_ray.engine.plan import build_plan


def test_ray_backend_refuses_a_learned_formation():
    cfg = apply_overrides(load_preset("smoke"), {"synset.formation": "learned"})
    spec = get_spec("tiny")
    with pytest.raises(ConfigError, match="^synset.formation=learned runs on --backend local for now$"):
        with RayBackend(device="cpu").place(cfg, build_plan(cfg, spec), spec):
            pass
