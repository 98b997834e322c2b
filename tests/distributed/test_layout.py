"""The Ray job's resource plan, from given cluster resources (no cluster needed)."""

import logging

import pytest

from idc_ray.run.backend import RunOptions
from idc_ray.distributed.resources import plan_layout
from idc_ray.distributed.session import ClusterError


def test_one_gpu_is_shared_by_the_matcher_and_the_expert():
    layout = plan_layout(10, RunOptions(), {"CPU": 16, "GPU": 1})
    assert len(layout.shards) == 1 and layout.shards[0] == list(range(10))
    assert (layout.gpus, layout.expert_gpus) == (0.75, 0.25)  # literal: the shares the docs promise
    assert layout.gpus + layout.expert_gpus == 1  # both fit on the one GPU


def test_eight_gpus_one_matcher_each_and_the_expert_beside_one():
    layout = plan_layout(100, RunOptions(), {"CPU": 64, "GPU": 8})
    assert len(layout.shards) == 8
    assert (layout.gpus, layout.expert_gpus) == (0.75, 0.25)  # literal: the shares the docs promise


def test_a_whole_spare_gpu_goes_to_the_expert():
    layout = plan_layout(10, RunOptions(num_actors=3), {"CPU": 16, "GPU": 4})
    assert (layout.gpus, layout.expert_gpus) == (1.0, 1.0)


def test_cpu_cluster_uses_no_gpus():
    layout = plan_layout(10, RunOptions(), {"CPU": 2})
    assert len(layout.shards) == 2 and (layout.gpus, layout.expert_gpus) == (0.0, 0.0)


def test_given_fractions_that_fill_the_gpu_leave_the_expert_on_the_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="idc_ray"):
        layout = plan_layout(10, RunOptions(num_actors=2, gpus_per_actor=0.5), {"CPU": 16, "GPU": 1})
    assert (layout.gpus, layout.expert_gpus) == (0.5, 0.0)
    assert "expert actor runs on the CPU" in caplog.text and "--expert-gpus" in caplog.text


def test_explicit_expert_share_beside_fractional_matchers():
    layout = plan_layout(10, RunOptions(num_actors=2, gpus_per_actor=0.375, expert_gpus=0.25), {"CPU": 16, "GPU": 1})
    assert (layout.gpus, layout.expert_gpus) == (0.375, 0.25)


def test_expert_share_that_does_not_fit_is_one_line():
    with pytest.raises(ClusterError, match="--expert-gpus 0.5 does not fit: 0 GPUs left"):
        plan_layout(10, RunOptions(num_actors=1, gpus_per_actor=1.0, expert_gpus=0.5), {"CPU": 16, "GPU": 1})


def test_expert_actors_get_a_bundle_each_and_a_share_of_the_cpus():
    layout = plan_layout(10, RunOptions(num_actors=1, expert_actors=3), {"CPU": 2})
    assert layout.experts == 3 and layout.cpus == 0.5  # 4 actors share 2 CPUs
    assert layout.bundles() == [{"CPU": 0.5}] * 4


def test_expert_actors_on_gpus_one_each_when_there_are_enough():
    layout = plan_layout(10, RunOptions(num_actors=2, expert_actors=2), {"CPU": 16, "GPU": 4})
    assert (layout.gpus, layout.expert_gpus) == (1.0, 1.0)
    assert [b.get("GPU") for b in layout.bundles()] == [1.0, 1.0, 1.0, 1.0]


def test_expert_actors_that_do_not_fit_the_gpus_are_one_line():
    with pytest.raises(ClusterError, match="1 needed by 4 expert actor"):
        plan_layout(10, RunOptions(num_actors=1, gpus_per_actor=0.5, expert_actors=4, expert_gpus=0.25),
                    {"CPU": 16, "GPU": 1})
    with pytest.raises(ValueError, match="--expert-actors must be at least 1, got 0"):
        plan_layout(10, RunOptions(expert_actors=0), {"CPU": 2})
