"""Same seed and config -> the same stored set, bit for bit, whatever the backend and sharding."""

import pytest
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.backends import condense_job
from idc_ray.data.store import class_blocks
from idc_ray.run.backend import RunOptions

# 10 real MNIST classes, tiny network and batches so each run takes seconds.
TINY_MNIST = {
    "data.dataset": "mnist5k",
    "expert.width": 8,
    "expert.n_data": 32,
    "match.batch_real": 8,
    "schedule.outer_iters": 2,
    "schedule.inner_iters": 2,
}


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(load_preset("smoke"), TINY_MNIST)


@pytest.fixture(scope="module")
def reference(local_reference):
    return local_reference


def test_shards_are_contiguous_and_balanced():
    assert class_blocks(10, 3, "--num-actors") == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert class_blocks(10, 1, "--num-actors") == [list(range(10))]
    with pytest.raises(ValueError, match="--num-actors 11 is more than the 10 classes"):
        class_blocks(10, 11, "--num-actors")


@pytest.mark.forced_isa
@pytest.mark.parametrize("actors", [3])  # 1 and 2 matchers: tests/distributed/test_expert_actors.py
def test_ray_backend_equals_local_bit_for_bit(ray_cluster, cfg, reference, actors, tmp_path):
    result = condense_job(cfg, str(tmp_path), RunOptions(backend="ray", num_actors=actors))
    assert result.stored.shape == (10, 1, 1, 28, 28)
    assert torch.equal(result.stored, reference.stored)
    assert torch.equal(result.labels, reference.labels)
    assert result.loss_history == reference.loss_history
    names = [p["name"] for p in result.placement]
    if actors == 3:  # the matchers, then the expert actor(s) the planner chose
        assert names[:3] == ["matcher-0[classes 0-3]", "matcher-1[classes 4-6]", "matcher-2[classes 7-9]"]
        assert names[3:] and all(n.startswith("expert-") for n in names[3:])
    assert all(p["threads"] == 1 and p["device"] == "cpu" and p["keeps_freed_memory"] for p in result.placement)


def test_system_malloc_option_gives_the_same_bytes(ray_cluster, cfg, reference, tmp_path):
    result = condense_job(cfg, str(tmp_path), RunOptions(backend="ray", num_actors=2, keep_freed_memory=False))
    assert torch.equal(result.stored, reference.stored)
    assert not any(p["keeps_freed_memory"] for p in result.placement)
