"""The layout planner (idc_ray/distributed/planner.py): literal layouts for a table of clusters,
class counts and part times, the model's arithmetic, and how the Ray job's resource plan uses it
(probe only when the times can matter, given counts always win). No cluster needed."""

import pytest

from idc_ray.distributed.planner import PartTimes, choose, in_process_seconds, needs_times, predict
from idc_ray.distributed.resources import plan_layout
from idc_ray.run.backend import RunOptions

# Part times per device measured on 2 CPU cores at the presets' shapes (docs/scaling.md): one
# matcher step over all classes, one expert update.
MNIST = PartTimes(4.45, 1.12)
CIFAR10 = PartTimes(4.07, 4.02)
CIFAR100 = PartTimes(46.1, 5.0)
SMALL_EXPERT = PartTimes(46.1, 0.5)


@pytest.mark.parametrize("devices,classes,gpus,times,max_experts,layout", [
    (1, 10, True, MNIST, 8, (1, 1, True)),  # one GPU: the expert beside the matcher
    (2, 10, True, MNIST, 8, (2, 1, True)),  # within 2% of an expert beside each, one actor fewer
    (8, 10, True, MNIST, 8, (5, 2, False)),  # shards of 2 classes; 2 experts keep up with them
    (8, 10, True, CIFAR10, 8, (8, 6, True)),  # expert as slow as the matching: beside most matchers
    (8, 10, True, CIFAR10, 2, (2, 2, False)),  # the object-store budget lets only 2 experts work
    (16, 100, True, SMALL_EXPERT, 8, (15, 1, False)),  # one expert is enough
    (8, 100, True, CIFAR100, 8, (8, 2, True)),
    (64, 10, True, CIFAR10, 100, (10, 10, False)),  # a matcher per class, as many experts
    (2, 10, False, MNIST, 8, (2, 1, False)),  # 2 cores: the defaults of before, now by the model
    (2, 10, False, PartTimes(0.1, 0.3), 8, (1, 2, False)),  # an expert slower than the matching
    (16, 10, False, MNIST, 8, (10, 3, False)),
])
def test_planned_layouts(devices, classes, gpus, times, max_experts, layout):
    c = choose(classes, devices, gpus, times, max_experts=max_experts)
    assert (c.matchers, c.experts, c.beside) == layout


def test_the_model_by_hand():
    # 8 GPUs, 4 matchers (shards of 3 classes) and 4 experts on GPUs of their own
    assert predict(4, 4, classes=10, devices=8, gpus=True, times=CIFAR10, max_experts=8) == pytest.approx(4.07 * 3 / 10)
    # beside: the longer part plus the interference's fraction of the shorter one
    assert predict(2, 2, classes=10, devices=2, gpus=True, times=MNIST, max_experts=8, beside=True) == \
        pytest.approx(4.45 / 2 + 0.06 * 1.12 / 2)
    additive = PartTimes(4.45, 1.12, interference=1.0)
    assert predict(2, 2, classes=10, devices=2, gpus=True, times=additive, max_experts=8, beside=True) == \
        pytest.approx(4.45 / 2 + 1.12 / 2)
    # CPU slots: never faster than the total work over the cores; experts capped by max_experts
    slow_expert = PartTimes(1.0, 3.0)
    assert predict(2, 2, classes=10, devices=2, gpus=False, times=slow_expert, max_experts=8) == pytest.approx(2.0)
    assert predict(2, 2, classes=10, devices=2, gpus=False, times=slow_expert, max_experts=1) == pytest.approx(3.0)
    assert predict(2, 1, classes=10, devices=2, gpus=False, times=MNIST, max_experts=8) == pytest.approx(5.57 / 2)
    assert predict(1, 1, classes=10, devices=1, gpus=True, times=PartTimes(1, 1, 0.25, 1.0), max_experts=1,
                   beside=True) == 2.25
    assert in_process_seconds(MNIST) == pytest.approx(5.57)


@pytest.mark.parametrize("interference,at_least", [(1.0, 6.0), (0.06, 5.0)])
def test_design_target_cifar10_on_8_gpus_against_one(interference, at_least):
    """The issue's target, 6x on 8 GPUs, holds where a matcher and an expert beside it on one GPU
    add up; with the overlap measured on the H200 one GPU already hides most of the expert, and
    ten classes on eight matchers (shards of 2) cap the matching at 5x. One expert actor: < 2x."""
    times = PartTimes(4.07, 4.02, interference=interference)
    one = choose(10, 1, True, times, max_experts=8).seconds
    assert one / choose(10, 8, True, times, max_experts=8).seconds >= at_least
    assert one / choose(10, 8, True, times, max_experts=8, experts=1).seconds < 2


def test_given_counts_win_and_the_planner_fills_the_rest():
    c = choose(10, 8, True, MNIST, max_experts=8, matchers=4)
    assert (c.matchers, c.experts) == (4, 1)  # shards of 3 take 1.34 s; one expert's 1.12 s keeps up
    c = choose(10, 8, True, CIFAR10, max_experts=8, experts=1)
    # one expert (4.02 s) is the bottleneck: 2 matchers give 4.02 s, 1 gives 4.07 s, within 2% with one actor fewer
    assert (c.matchers, c.experts, c.seconds) == (1, 1, 4.07)
    assert not needs_times(10, 8, True, 8, 4, 2) and not needs_times(10, 1, True, 8, None, None)
    with pytest.raises(ValueError, match="no layout of 1 matcher and 2 expert actors fits 1 GPUs"):
        choose(10, 1, True, MNIST, max_experts=8, matchers=1, experts=2)


def test_the_job_plan_probes_only_when_the_times_matter():
    probed = []

    def probe():
        probed.append(1)
        return MNIST, "probe 0.1 s"

    layout = plan_layout(10, RunOptions(), {"CPU": 2}, probe=probe, max_experts=8)
    assert probed == [1] and (len(layout.shards), layout.experts, layout.cpus) == (2, 1, 0.66)
    assert layout.reason.endswith("predicted 2.79 s per inner iteration against 4.45 s with one actor of each kind "
                                  "(probe 0.1 s)")
    layout = plan_layout(10, RunOptions(num_actors=1, expert_actors=2), {"CPU": 2}, probe=probe, max_experts=8)
    assert probed == [1] and (len(layout.shards), layout.experts) == (1, 2)  # given: no probe
    layout = plan_layout(10, RunOptions(), {"CPU": 16, "GPU": 8}, probe=lambda: (MNIST, ""), max_experts=8)
    assert [len(s) for s in layout.shards] == [2] * 5 and layout.experts == 2
    assert layout.bundles() == [{"CPU": 2.28, "GPU": 1.0}] * 7  # 16 CPUs over 7 actors, in hundredths
    layout = plan_layout(10, RunOptions(), {"CPU": 16, "GPU": 8}, probe=lambda: (CIFAR10, ""), max_experts=8)
    assert (len(layout.shards), layout.experts, layout.gpus, layout.expert_gpus) == (8, 6, 0.75, 0.25)


def test_the_ray_job_logs_the_planned_layout_and_runs_it(ray_cluster, idc_log, tmp_path):
    """Defaults on the 2-CPU test cluster: the probe runs, and with the smoke preset's expert
    update shorter than its matching the model's choice is 2 matchers + 1 expert actor
    (docs/scaling.md); the job runs what it logged."""
    from idc_ray.backends import condense_job
    from idc_ray.config import apply_overrides, load_preset

    seen = idc_log()
    cfg = apply_overrides(load_preset("smoke"), {"schedule.outer_iters": 1, "schedule.inner_iters": 1})
    result = condense_job(cfg, str(tmp_path / "out"), RunOptions())
    (line,) = [ln for ln in seen if ln.startswith("layout: ")]
    assert line.startswith("layout: 2 matcher actors + 1 expert actor on 2 CPUs: matching ") and "(probe " in line
    assert [p["name"].split("[")[0] for p in result.placement] == ["matcher-0", "matcher-1", "expert-0"]
