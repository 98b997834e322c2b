"""Lost actors and failing steps are replayed from the last checkpoint to the same bytes."""

import logging
import re

import pytest
import ray
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.checkpoint import CheckpointStore
from idc_ray.backends import condense_job
from idc_ray.errors import JobError
from idc_ray.run.backend import RunOptions

pytestmark = pytest.mark.slow  # actors killed and faults injected: outage scenarios

SMALL = {"schedule.outer_iters": 3, "schedule.inner_iters": 2}


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(load_preset("smoke"), SMALL)


@pytest.fixture(scope="module")
def uninterrupted(local_reference):
    return local_reference


def _killer(prefix: str, at: tuple[int, int]):
    """A progress callback that kills the named actor once, when step ``at`` completes."""
    fired = []

    def on_progress(p):
        if (p.outer, p.inner) == at and not fired:
            name = next(n for n in ray.util.list_named_actors() if n.startswith(prefix))
            ray.kill(ray.get_actor(name), no_restart=True)
            fired.append(name)

    return on_progress, fired


@pytest.mark.parametrize("victim,at", [("matcher-1", (1, 0)), ("expert-1[", (0, 1))])
def test_killed_actor_is_restarted_and_the_job_ends_with_the_same_bytes(ray_cluster, cfg, uninterrupted,
                                                                        tmp_path, caplog, victim, at):
    """Two expert actors (cycle c is expert-(c mod 2)'s). When step (0, 1) is done, expert-1 is
    computing cycle 1 one state ahead (a tiny memory budget: one state), so killing it loses work
    in the middle of its cycle; further ahead it may have finished, safe in the object store."""
    on_progress, fired = _killer(victim, at)
    options = RunOptions(num_actors=2, expert_actors=2, checkpoint_every=1, expert_memory_mb=1e-6)
    with caplog.at_level(logging.WARNING, logger="idc_ray"):
        result = condense_job(cfg, str(tmp_path), options, on_progress=on_progress)
    assert fired and fired[0].startswith(victim)
    assert result.restarts == 1
    assert torch.equal(result.stored, uninterrupted.stored)
    assert result.loss_history == uninterrupted.loss_history
    assert "actor failure" in caplog.text and re.search(r"restarting the actors from the last checkpoint \(outer [12]\)", caplog.text)


def test_injected_exception_is_replayed_from_the_initialisation(ray_cluster, cfg, uninterrupted, tmp_path, caplog):
    fault = {"actor": 0, "outer": 0, "inner": 1}
    with caplog.at_level(logging.WARNING, logger="idc_ray"):
        result = condense_job(cfg, str(tmp_path), RunOptions(num_actors=2, checkpoint_every=5, faults=(fault,)))
    assert result.restarts == 1
    assert torch.equal(result.stored, uninterrupted.stored)
    assert "injected fault in matcher-0[classes 0-1] at outer 0 inner 1" in caplog.text
    assert "from the initialisation (outer 0)" in caplog.text


def test_actor_that_keeps_dying_fails_the_job_and_keeps_the_last_checkpoint(ray_cluster, cfg, tmp_path):
    fault = {"actor": 1, "outer": 1, "inner": 1, "repeat": True}
    with pytest.raises(JobError) as info:
        condense_job(cfg, str(tmp_path), RunOptions(num_actors=2, checkpoint_every=1, max_restarts=1, faults=(fault,)))
    message = str(info.value)
    assert "failed 2 times, more than --max-restarts 1" in message
    assert "the last good checkpoint (outer 1) is kept" in message and "\n" not in message
    kept = CheckpointStore(str(tmp_path)).latest()
    assert kept is not None and kept.outer == 1
