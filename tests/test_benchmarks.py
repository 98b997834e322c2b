"""`make bench` scripts, run at tiny sizes: they finish and write the result keys runs are compared by.

Speeds are not asserted (they are measurements, not tests); the keys, the machine record and
internal consistency of the numbers are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "IDC_BENCH_RESULTS": str(out)}
    runs = {
        "matching": ["--width", "8", "--steps", "1"],
        "roofline": ["--width", "8", "--steps", "1"],
        "scaling": ["--width", "8", "--ipc", "1", "--outer", "1", "--inner", "2", "--rounds", "1"],
    }
    for name, args in runs.items():
        done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def _machine_and_date(result: dict) -> None:
    machine = result["machine"]
    assert machine["cores"] == os.cpu_count() and machine["torch_threads"] >= 1 and machine["device"] == "cpu"
    assert machine["allocator"].startswith("keeps freed memory")  # the actors' settings, see use_actor_allocator
    assert result["date"].endswith("Z")


def test_matching_paths_agree(results):
    """The lean path is the loop bit for bit (it only skips a term the step never uses); vmap
    differs by float32 rounding only."""
    r = results["matching_width8"]
    _machine_and_date(r)
    assert set(r["class_steps_per_s"]) == {"loop", "lean", "vmap"} and all(v > 0 for v in r["class_steps_per_s"].values())
    for shape in ("28x28x1", "32x32x3"):
        diff = r[shape]["max_abs_diff_vs_loop"]
        assert r[shape]["chosen_path"] == "lean"
        assert diff["lean"] == 0 and diff["vmap"] < 1e-3


def test_precision_runs_at_tiny_size(tmp_path):
    """benchmarks/precision.py --tiny: in float64 the loop and vmap paths compute the same step
    (to rounding); in float32 lean equals the loop bit for bit, and every float32 path is really
    float32 (it differs from float64) yet close to the exact step."""
    env = {**os.environ, "IDC_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH / "precision.py"), "--tiny"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "precision_tiny.json").read_text())
    assert set(r["metrics"]) == {"mse", "l1"}
    for m in r["metrics"].values():
        assert m["max_abs_update"] > 0 and m["vmap64_vs_loop64"] < 1e-12
        assert m["lean32_vs_loop32"] == 0 and m["lean32_vs_loop64"] == m["loop32_vs_loop64"]
        for path in ("loop32", "vmap32"):
            assert 0 < m[f"{path}_vs_loop64"] < 1e-2 * m["max_abs_update"]


def test_roofline_keys(results):
    r = results["roofline"]
    _machine_and_date(r)
    assert sorted(name.split("_")[0] for name in r["layouts"]) == ["in", "ray"]  # in_process_*, ray_actors_*
    best = r["layouts"][r["best_layout"]]
    assert r["fraction_of_matmul_peak"] == best["fraction_of_matmul_peak"]
    assert best["step_s"] == min(layout["step_s"] for layout in r["layouts"].values())
    assert 0 < r["fraction_of_matmul_peak"] < 1 and r["step_flops"] > 0


def test_scaling_keys(results):
    r = results["scaling"]
    _machine_and_date(r)
    s = r["seconds"]
    assert r["speedup_vs_single_process"] == pytest.approx(s["a_inprocess_2threads"] / s["b_ray_2actors_1thread"])
    assert r["efficiency_2_actors"] == pytest.approx(s["c_ray_1actor_1thread"] / (2 * s["b_ray_2actors_1thread"]))
    assert r["ray_overhead"] == pytest.approx(s["c_ray_1actor_1thread"] / s["d_inprocess_1thread"] - 1)


@pytest.mark.slow  # the whole GPU check script, end to end
def test_gpu_check_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    """benchmarks/gpu_check.py --device cpu --tiny: every section runs (a GPU lease is not spent on
    a broken script), and on the CPU the Ray job's stored data are bit-equal across actor counts."""
    env = {**os.environ, "IDC_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--tiny", "--inner", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    r = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert r["errors"] == {} and r["failed_checks"] == []
    assert r["cuda"]["cuda_available"] in (True, False) and r["machine"]["device"] == "cpu"
    m = r["matching"]
    assert set(m["class_steps_per_s"]) == {"loop", "lean", "vmap"} and m["max_abs_diff_vs_loop"]["loop"] == 0
    job = r["ray_job"]
    assert {"1_actor", "1_actor_repeat", "2_actors", "4_actors", "1_actor_loop", "2_actors_loop",
            "2_expert_actors"} <= set(job["layouts"])
    for layout in job["layouts"].values():
        assert layout["inner_iterations"] == 2 and layout["seconds_per_inner_iteration"] > 0
        assert all(a["device"] == "cpu" for a in layout["actors"])
    names = [a["name"].split("[")[0] for a in job["layouts"]["4_actors"]["actors"]]
    assert names == ["matcher-0", "matcher-1", "matcher-2", "matcher-3", "expert-0"]
    model = r["scaling_model"]  # the planner's prediction beside each layout's measurement
    assert {"1_actor", "2_actors", "4_actors", "2_expert_actors"} <= set(model) and "1_actor_loop" not in model
    assert (model["2_expert_actors"]["matchers"], model["2_expert_actors"]["experts"]) == (1, 2)
    assert all(v["predicted_s"] > 0 and v["measured_s"] == job["layouts"][k]["seconds_per_inner_iteration"]
               for k, v in model.items())
    assert all(c["bit_equal"] for c in job["stored_compared"].values())
    assert r["evaluation"]["devices"] == ["cpu"] and 0 <= r["evaluation"]["accuracy_last"] <= 1
    shares = r["breakdown"]["share"]
    assert set(shares) == {"matching", "expert", "transfer"} and abs(sum(shares.values()) - 1) < 1e-9
    assert set(r["networks"]) == {"cifar10/convnet3", "imagenet10/resnetap10", "speech/convnet4"}
    assert all(n["device"] == "cpu" and n["tests"] >= 4 for n in r["networks"].values())
    (share,) = r["expert_share"]  # benchmarks/expert_share.py's parts, at mnist's shapes
    assert share["preset"] == "mnist" and share["classes_timed"] == 1
    assert share["matching_all_classes_s"] > 0 and share["expert_update_s"] > 0 and 0 < share["expert_share"] < 1
    assert (tmp_path / "gpu_tiny.log").read_text().count("== ") == 8


def test_quality_per_iteration_runs_at_tiny_sizes(tmp_path):
    """benchmarks/quality_per_iteration.py --tiny: both sampling modes condense from the same
    initialisation, and each gain is the set's accuracy minus the initialisation's."""
    env = {**os.environ, "IDC_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH / "quality_per_iteration.py"), "--tiny", "--seeds", "0"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "quality_per_iteration_tiny.json").read_text())
    assert set(r["modes"]) == {"stream", "independent"} and len(r["git"]["commit"]) == 40
    for mode in r["modes"].values():
        run = mode["runs"][0]
        assert run["gain"] == pytest.approx(run["last"] - run["init"]) and len(run["loss_history"]) == 1
    assert r["modes"]["stream"]["runs"][0]["init"] == r["modes"]["independent"]["runs"][0]["init"]


def test_gpu_check_fails_on_what_is_missing_not_only_on_what_is_wrong():
    """benchmarks/gpu_check.py failed_checks: a section without a result, or a key a check reads
    that is not there, is a failure (a GPU check that measured nothing must not pass)."""
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_check import SECTIONS, failed_checks
    finally:
        sys.path.remove(str(BENCH))
    assert failed_checks({"errors": {}}, "cpu") == [f"section {name} has no result" for name in SECTIONS]
    full = {name: {"x": 1} for name in SECTIONS} | {"errors": {}}
    full["ray_job"] = {"stored_equal_within_float32": True}
    full["networks"] = {"cifar10/convnet3": {"device": "cpu"}}
    assert failed_checks(full, "cpu") == []
    on_gpu = failed_checks(full, "cuda")  # on CUDA the device keys must be there and true
    assert any("matcher actor did not get the GPU" in f for f in on_gpu)
    assert any("evaluation task did not run on the GPU" in f for f in on_gpu)
    assert any("test network did not train on the GPU" in f for f in on_gpu)
    full["ray_job"] = {"stored_equal_within_float32": False, "across_actor_counts_max_abs_diff": 0.5,
                       "tolerance": 1e-4, "actors_on_device": True}
    assert failed_checks(full, "cpu") == ["stored data differ across actor counts by more than the device's "
                                          "run-to-run differences (moved 0.5, tolerance 0.0001; or it was not recorded)"]

