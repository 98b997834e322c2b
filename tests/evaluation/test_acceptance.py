"""Acceptance on the embedded MNIST subset (4,000 train / 1,000 test), at a CPU budget that fits
CI: sets condensed for real (the mnist5k-demo preset with fewer outer iterations), evaluated
through the job's code path (artifacts, the random baseline, the same recipe and networks).

The paper's claim at ipc 1 (Table 10, MNIST: IDC 94.2 vs IDC-I 88.9): multi-formation (factor 2)
beats IDC-I (factor 1) and random real images. Measured on the 2-core development machine
(OUTER 3, 150 epochs, 3 runs, `last` top-1 %, published evaluation protocol, 2026-11-30): IDC
85.5 / 84.3 / 83.3, IDC-I 71.7 / 67.4 / 67.3, random 59.9 / 56.1 / 55.4; the test asks every IDC
run to beat every run of the others by 5 points (the margin measured is 11.6).
"""

import pytest
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.distributed.driver import RunOptions
from idc_ray.evaluation.protocol import Work, plan_tasks, run_task
from idc_ray.evaluation.run import EvalOptions, Sequential, SetsRequest, build_sets, evaluate_sets
from idc_ray.distributed.job import condense_to

OUTER = 3  # the demo preset runs 20; 3 already separates the sets by > 10 points
EPOCHS = 150  # the demo preset evaluates 300; 150 keeps the ordering and halves the cost
REPEAT = 3
MARGIN = 0.05  # every IDC run beats every other run by 5 points


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist5k")
    base = apply_overrides(load_preset("mnist5k-demo"), {"schedule.outer_iters": OUTER})
    uris = []
    for factor in (2, 1):
        cfg = apply_overrides(base, {"synset.factor": factor})
        condense_to(cfg, root / f"f{factor}", device="cpu", progress=False, options=RunOptions(backend="local"))
        uris.append(str(root / f"f{factor}"))
    options = EvalOptions(repeat=REPEAT, epochs=EPOCHS, eval_every=0)
    request = SetsRequest(condensed=tuple(uris), baselines=("random",), ipcs=(1,))
    sets, data, _ = build_sets(request, options, log=lambda _: None)
    results = evaluate_sets(sets, data, options, executor=Sequential("cpu"), log=lambda _: None)
    return sets, data, {r["set"]["label"]: r for r in results}


def test_idc_beats_idc_i_and_random_at_ipc_1(evaluated):
    _, _, results = evaluated
    idc, idc_i, random = (results[k]["models"]["convnet3"] for k in ("f2", "f1", "random-ipc1"))
    summary = {k: [round(100 * run["last"], 1) for run in results[k]["models"]["convnet3"]["runs"]] for k in results}
    assert results["f2"]["set"]["method"] == "IDC (factor 2)" and results["f1"]["set"]["method"] == "IDC-I"
    assert results["random-ipc1"]["set"]["formed_samples"] == 10 and results["f2"]["set"]["formed_samples"] == 40
    worst_idc = min(run["last"] for run in idc["runs"])
    best_other = max(run["last"] for other in (idc_i, random) for run in other["runs"])
    assert worst_idc > best_other + MARGIN, summary
    assert idc["mean"] > max(idc_i["mean"], random["mean"]) + 2 * MARGIN, summary


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
