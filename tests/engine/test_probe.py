"""The layout planner's probe (idc_ray/engine/probe.py): it times real matcher and expert steps
at the run's shapes on random pixels, reads no data files and leaves torch's global RNG alone
(the run's results cannot depend on whether it ran)."""

import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import get_spec
from idc_ray.engine.plan import build_plan
from idc_ray.engine.probe import probe_parts, random_store


def test_probe_times_both_parts_without_data_or_rng_side_effects():
    cfg = apply_overrides(load_preset("smoke"), {"data.data_uri": "/nonexistent/never-read"})
    spec = get_spec("tiny")
    plan = build_plan(cfg, spec)
    before = torch.get_rng_state()
    probed = probe_parts(plan, spec, "cpu", max_classes=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert probed.classes_timed == 2 < spec.num_classes
    assert probed.matching_s > 0 and probed.expert_s > 0 and probed.probe_s >= probed.matching_s * 2 / spec.num_classes


def test_random_store_has_the_shape_and_counts_asked_for():
    spec = get_spec("tiny")
    store = random_store(spec, 3, 5)
    assert store.classes == (0, 1, 2) and store.class_tensor(1).shape == (5, spec.channels, spec.size, spec.size)
    assert 0 <= float(store.class_tensor(0).min()) and float(store.class_tensor(0).max()) <= 1
