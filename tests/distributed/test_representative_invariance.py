"""Representative real batches (match.sampling: representative) inside the matcher actors: the
k-means picks are keyed by (seed, class, outer, refresh block), so 1 and 3 actors give the
in-process run's bytes."""

import pytest
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.backends import condense_job
from idc_ray.run.backend import RunOptions

# 10 real MNIST classes (about 400 images each), tiny network; 3 inner iterations with a refresh
# every 2 re-cluster at inner 0 and 2 of both outer iterations.
TINY_REPRESENTATIVE = {
    "data.dataset": "mnist5k",
    "expert.width": 8,
    "expert.n_data": 32,
    "match.batch_real": 8,
    "match.sampling": "representative",
    "match.sampling_refresh": 2,
    "schedule.outer_iters": 2,
    "schedule.inner_iters": 3,
}


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(load_preset("smoke"), TINY_REPRESENTATIVE)


@pytest.mark.parametrize("actors", [1, 3])
def test_representative_sampling_gives_the_local_bytes_on_any_sharding(ray_cluster, cfg, local_reference, actors,
                                                                        tmp_path):
    result = condense_job(cfg, str(tmp_path), RunOptions(backend="ray", num_actors=actors))
    assert torch.equal(result.stored, local_reference.stored)
    assert result.loss_history == local_reference.loss_history
    assert sum(p["name"].startswith("matcher-") for p in result.placement) == actors


def test_representative_sampling_changes_the_run(cfg, local_reference, tmp_path):
    uniform = condense_job(apply_overrides(cfg, {"match.sampling": "uniform"}), str(tmp_path), RunOptions(backend="local"))
    assert not torch.equal(uniform.stored, local_reference.stored)
