"""Several expert actors compute the expert's re-initialisation cycles side by side (cycle c is
actor c mod N's); the stored set is the same, bit for bit, for any number of expert actors and
matchers, equal to the in-process run. A killed expert actor (mid-cycle), a killed matcher and a
killed driver with two expert actors: tests/distributed/test_faults.py and test_resume.py."""

import pytest
import ray
import torch

from idc_ray.backends import condense_job
from idc_ray.config import apply_overrides, load_preset
from idc_ray.distributed.backend import expert_name, state_bytes, states_ahead
from idc_ray.engine.expert import new_model
from idc_ray.engine.plan import build_plan
from idc_ray.data import get_spec
from idc_ray.run.backend import RunOptions

# 4 synthetic classes, 3 cycles of 2 inner iterations (fix_iter 1: every outer iteration is a cycle)
SMALL = {"expert.width": 4, "schedule.outer_iters": 3, "schedule.inner_iters": 2}


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(load_preset("smoke"), SMALL)


@pytest.mark.parametrize("experts,matchers", [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)])
def test_any_number_of_expert_actors_gives_the_in_process_bytes(ray_cluster, cfg, local_reference, tmp_path,
                                                                experts, matchers):
    names, ahead = set(), []

    def watch(p):
        names.update(n.split("@")[0] for n in ray.util.list_named_actors() if n.startswith("expert-"))
        ahead.append(p.expert_ahead)

    result = condense_job(cfg, str(tmp_path), RunOptions(num_actors=matchers, expert_actors=experts),
                          on_progress=watch)
    assert torch.equal(result.stored, local_reference.stored)
    assert result.loss_history == local_reference.loss_history
    assert names == {expert_name(k, experts) for k in range(experts)}
    assert all(isinstance(a, int) and a >= 0 for a in ahead)


def test_the_memory_budget_bounds_the_look_ahead(cfg):
    plan = build_plan(cfg, get_spec("tiny"))
    one = state_bytes(plan)
    assert one == 4 * sum(t.numel() for t in new_model(plan.expert, 0, 0).state_dict().values())  # float32
    assert states_ahead(plan, 10 * one / 2**20) == 10
    assert states_ahead(plan, 1e-9) == 1  # never less than one state ahead
    assert expert_name(0, 1) == "expert-0[cycles all]" and expert_name(1, 2) == "expert-1[cycles 1,3,5,...]"
