"""A learned formation on the Ray backend (issue 29): the matcher actors return per-class upsampler
gradients, the driver sums them in class order and steps the shared upsampler once per inner
iteration, so the stored set AND the upsampler have the in-process run's bytes for any number of
actors; a restart after a lost actor replays to the same bytes."""

import pytest
import torch

from test_invariance import TINY_MNIST

from idc_ray.backends import condense_job
from idc_ray.config import apply_overrides, load_preset
from idc_ray.run.backend import RunOptions

# 10 real MNIST classes, so 3 actors hold shards of 4, 3 and 3 classes; tiny network and batches.
LEARNED_MNIST = {**TINY_MNIST, "synset.formation": "learned"}


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(load_preset("smoke"), LEARNED_MNIST)


@pytest.fixture(scope="module")
def reference(local_reference):
    return local_reference


def same_upsampler(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("actors", [1, 3])
def test_ray_backend_learns_the_upsampler_with_the_in_process_bytes(ray_cluster, cfg, reference, actors, tmp_path):
    result = condense_job(cfg, str(tmp_path), RunOptions(backend="ray", num_actors=actors))
    assert sum(p["name"].startswith("matcher-") for p in result.placement) == actors
    assert torch.equal(result.stored, reference.stored)
    assert result.loss_history == reference.loss_history
    assert same_upsampler(result.upsampler, reference.upsampler)
    # the residual was learned: its zero-initialised last layer moved
    assert result.upsampler["deconv.weight"].abs().sum() > 0


@pytest.mark.slow  # an outage scenario (tests/distributed/test_faults.py)
def test_a_restart_replays_the_upsampler_to_the_same_bytes(ray_cluster, cfg, reference, tmp_path):
    fault = {"actor": 1, "outer": 1, "inner": 1}  # a matcher fails after the checkpoint of outer 1
    result = condense_job(cfg, str(tmp_path), RunOptions(backend="ray", num_actors=3, checkpoint_every=1,
                                                         faults=(fault,)))
    assert result.restarts == 1
    assert torch.equal(result.stored, reference.stored)
    assert same_upsampler(result.upsampler, reference.upsampler)
