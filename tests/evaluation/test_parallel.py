"""The Ray evaluation (one task per (model, repeat)) gives the sequential evaluation's numbers
bit for bit on the embedded MNIST subset, also when a worker dies and its task is retried, and
exports the accuracy gauge. The Ray side runs in a fresh process (ray_parallel_check.py) so
its metrics interval and CPU count are known whatever Ray this test session holds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    marker = tmp_path_factory.mktemp("crash") / "crashed-once"
    done = subprocess.run([sys.executable, str(HERE / "ray_parallel_check.py"), str(marker)], cwd=HERE.parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), marker


def test_parallel_equals_sequential_even_when_a_worker_dies(check):
    out, marker = check
    assert marker.exists()  # task 1's first worker died; Ray re-ran it
    for p, s in zip(out["parallel"], out["sequential"], strict=True):
        assert (p["model"], p["repeat"], p["threads"]) == (s["model"], s["repeat"], 1) and s["threads"] == 1
        assert (p["best"], p["last"], p["history"]) == (s["best"], s["last"], s["history"])
        # eval_every 5 and the published report epochs, every 10 // 4
        assert [e for e, _ in p["history"]] == [2, 4, 5, 6, 8, 10] and p["node"] != "local"
    assert len({p["last"] for p in out["parallel"]}) > 1  # repeats and models really differ
    assert out["lines"][0].startswith("[eval] 4 tasks submitted (1 CPU, 0 GPU each")
    assert sum("[eval] done mix-init" in ln for ln in out["lines"]) == 4


def test_the_accuracy_gauge_is_exported_per_model(check):
    gauge = check[0]["gauge"]
    assert any('model="convnet3"' in ln and 'set="mix-init"' in ln for ln in gauge), gauge[:5]


def test_impossible_resources_fail_before_any_task(check):
    out = check[0]
    assert "more than any node has (2 CPUs)" in out["errors"][0]
    assert "no node has that many (0)" in out["errors"][1]
    assert out["shares"] == [2.0, 1.0]
