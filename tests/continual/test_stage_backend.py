"""A continual stage condenses with actors of its own when the cluster has them free as it starts,
else in its task's process; either way with the bytes of the in-process condensation."""

import pytest
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group

from idc_ray.artifacts import load_condensed
from idc_ray.config import apply_overrides, load_preset
from idc_ray.continual.exemplars import condense_stage
from idc_ray.distributed.backend import RayBackend
from idc_ray.run.backend import RunOptions

SMALL_ACTORS = RunOptions(num_actors=1, cpus_per_actor=0.25)  # a matcher and an expert: 0.5 of the 2 CPUs


@pytest.fixture(scope="module")
def stage_cfg():
    return apply_overrides(load_preset("smoke"), {"expert.width": 4, "schedule.outer_iters": 2})


@pytest.fixture(scope="module")
def in_process(stage_cfg, tmp_path_factory):
    """The stage condensed in this process with the 1 torch thread each actor gets here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stored, _, manifest = load_condensed(condense_stage(stage_cfg, str(tmp_path_factory.mktemp("local")), "cpu"))
    finally:
        torch.set_num_threads(before)
    assert manifest["metrics"]["backend"] == "local"
    return stored


def test_free_resources_give_the_stage_actors_and_the_same_bytes(ray_cluster, stage_cfg, in_process, tmp_path):
    stored, _, manifest = load_condensed(condense_stage(stage_cfg, str(tmp_path), "cpu", RayBackend(SMALL_ACTORS)))
    assert manifest["metrics"]["backend"] == "ray"
    assert [p["name"].split("[")[0] for p in manifest["metrics"]["placement"]] == ["matcher-0", "expert-0"]
    assert torch.equal(stored, in_process)
    assert not any(pg["state"] == "CREATED" for pg in ray.util.placement_group_table().values())  # given back


def test_a_busy_cluster_condenses_the_stage_in_its_process_with_the_same_bytes(ray_cluster, stage_cfg, in_process,
                                                                                 tmp_path):
    busy = placement_group([{"CPU": 2}])  # every CPU of the session's cluster
    ray.get(busy.ready(), timeout=60)
    try:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            path = condense_stage(stage_cfg, str(tmp_path), "cpu", RayBackend(SMALL_ACTORS))
        finally:
            torch.set_num_threads(before)
    finally:
        remove_placement_group(busy)
    stored, _, manifest = load_condensed(path)
    assert manifest["metrics"]["backend"] == "local"
    assert torch.equal(stored, in_process)
