"""Acceptance on the embedded MNIST subset (4,000 train / 1,000 test), at a CPU budget that fits
CI: sets condensed for real (the mnist5k-demo preset with fewer outer iterations), evaluated
through the job's code path (artifacts, the random baseline, the same recipe and networks).

The paper's claim at ipc 1 (Table 10, MNIST: IDC 94.2 vs IDC-I 88.9): multi-formation (factor 2)
beats IDC-I (factor 1) and random real images. Measured on the 2-core development machine
(OUTER 3, 150 epochs, 3 runs, `last` top-1 %, published evaluation protocol, 2026-11-30): IDC
85.5 / 84.3 / 83.3, IDC-I 71.7 / 67.4 / 67.3, random 59.9 / 56.1 / 55.4; the test asks every IDC
run to beat every run of the others by 5 points (the margin measured is 11.6).

The factor-2 formation of real images alone already beats IDC-I and random, so the set before
any matching (the same config with outer iterations 0) is an arm too: 80.4 / 77.2 / 79.3
(2026-12-01, same protocol). Every IDC run beats every run of it (by 2.9 measured) and the mean
by 3 points (5.4 measured).
"""

import pytest
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.run.backend import RunOptions
from idc_ray.evaluation.protocol import Work, plan_tasks, run_task
from idc_ray.evaluation.assembly import EvalOptions, SetsRequest, build_sets
from idc_ray.evaluation.executor import Sequential
from idc_ray.evaluation.run import evaluate_sets
from idc_ray.local import LocalBackend
from idc_ray.run.job import Run, condense_to

pytestmark = pytest.mark.slow  # the evaluation protocol end to end, quality against random real images

OUTER = 3  # the demo preset runs 20; 3 already separates the sets by > 10 points
EPOCHS = 150  # the demo preset evaluates 300; 150 keeps the ordering and halves the cost
REPEAT = 3
MARGIN = 0.05  # every IDC run beats every IDC-I and random run by 5 points
INIT_MARGIN = 0.03  # and the mean of its own initialisation by 3 points (every run of it too)


def condense_and_evaluate(root):
    """The condensed sets (factor 2 and 1), the factor-2 initialisation (the same config with no
    outer iteration: the stored set before any matching) and random real images, evaluated."""
    base = apply_overrides(load_preset("mnist5k-demo"), {"schedule.outer_iters": OUTER})
    arms = {"f2": {"synset.factor": 2}, "f1": {"synset.factor": 1},
            "init": {"synset.factor": 2, "schedule.outer_iters": 0}}
    for label, overrides in arms.items():
        condense_to(Run(apply_overrides(base, overrides), str(root / label), LocalBackend("cpu"), RunOptions(backend="local")))
    options = EvalOptions(repeat=REPEAT, epochs=EPOCHS, eval_every=0)
    request = SetsRequest(condensed=tuple(str(root / label) for label in arms), baselines=("random",), ipcs=(1,))
    sets, data, _ = build_sets(request, options, log=lambda _: None)
    results = evaluate_sets(sets, data, options, executor=Sequential("cpu"), log=lambda _: None)
    return sets, data, {r["set"]["label"]: r for r in results}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    return condense_and_evaluate(tmp_path_factory.mktemp("mnist5k"))


def test_idc_beats_its_initialisation_idc_i_and_random_at_ipc_1(evaluated):
    _, _, results = evaluated
    idc, init, idc_i, random = (results[k]["models"]["convnet3"] for k in ("f2", "init", "f1", "random-ipc1"))
    summary = {k: [round(100 * run["last"], 1) for run in results[k]["models"]["convnet3"]["runs"]] for k in results}
    assert results["f2"]["set"]["method"] == "IDC (factor 2)" and results["f1"]["set"]["method"] == "IDC-I"
    assert results["random-ipc1"]["set"]["formed_samples"] == 10 and results["f2"]["set"]["formed_samples"] == 40
    worst_idc = min(run["last"] for run in idc["runs"])
    best_other = max(run["last"] for other in (idc_i, random) for run in other["runs"])
    assert worst_idc > best_other + MARGIN, summary
    assert idc["mean"] > max(idc_i["mean"], random["mean"]) + 2 * MARGIN, summary
    # The condensation itself, not only the factor-2 formation of real images, makes the gain.
    assert worst_idc > max(run["last"] for run in init["runs"]), summary
    assert idc["mean"] > init["mean"] + INIT_MARGIN, summary


def test_a_fixed_set_and_seed_evaluate_bit_for_bit_the_same(evaluated):
    sets, data, results = evaluated
    idc = next(s for s in sets if s.label == "f2")
    real = data[("mnist5k", None)]
    first = results["f2"]
    task = plan_tasks(idc.cfg, real.spec, idc.label, epochs=EPOCHS)[1]
    w = Work(task, idc.x.clone(), idc.y.clone(), real.test_x, real.test_y)
    again = run_task(w.task, w.train_x, w.train_y, w.test_x, w.test_y, device="cpu")
    assert first["models"]["convnet3"]["runs"][1] == {"best": again.best, "last": again.last}
    assert first["curves"]["convnet3"][1] == [list(p) for p in again.history]
    assert torch.get_num_threads() == first["tasks"][1]["threads"]
