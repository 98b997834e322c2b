"""A head plus two worker nodes with one (declared) GPU each: matchers land on different GPU
nodes, the two expert actors spread over the nodes too (--spread), and the stored set equals the
in-process one."""

import pytest
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


@pytest.mark.slow  # a 3-node cluster of its own
def test_matchers_spread_over_gpu_nodes_and_give_the_same_bytes(tmp_path):
    done = subprocess.run([sys.executable, str(HERE / "multinode_run.py"), str(tmp_path)], cwd=HERE.parents[1],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    matchers = [p["node"] for p in report["placement"] if p["name"].startswith("matcher-")]
    experts = [p["node"] for p in report["placement"] if p["name"].startswith("expert-")]
    assert sorted(matchers) == sorted(report["worker_nodes"])  # one matcher per GPU node
    assert len(experts) == 2 and len(set(experts)) == 2  # SPREAD: the expert actors on two nodes
    assert all(p["device"] == "cpu" for p in report["placement"])  # declared GPUs, no CUDA: CPU
    assert report["equal"]


def test_gpus_requested_on_a_cpu_cluster_is_one_line(ray_cluster, run_job, tmp_path):
    done = run_job("condense", "--preset", "smoke", "--address", ray_cluster, "--gpus-per-actor", "1",
                   "--output", str(tmp_path / "x"))
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert errors == ["error: 2 matcher actors x 1 GPU requested but the cluster has 0 GPUs; "
                      "use --gpus-per-actor 0 or fewer --num-actors"], done.stderr
    assert not (tmp_path / "x").exists()
