"""The Ray evaluation (one task per (model, repeat)) gives the sequential evaluation's numbers
bit for bit on the embedded MNIST subset, also when a worker dies and its task is retried, and
exports the accuracy gauge (the session's Ray reports metrics every second, tests/conftest.py)."""

import threading
import time
import urllib.request

import pytest
import ray
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import load_dataset
from idc_ray.engine.matcher import stack_stored
from idc_ray.engine.plan import build_plan, initial_synset
from idc_ray.distributed.evaluation import RayExecutor
from idc_ray.distributed.resources import task_bundle
from idc_ray.evaluation.protocol import Work, form_stored, plan_tasks, progress_line
from idc_ray.evaluation.executor import Sequential


def work() -> list[Work]:
    """2 models x 2 repeats on the formed mix initialisation of mnist5k (factor 2, ipc 1)."""
    data = load_dataset("mnist5k")
    cfg = apply_overrides(load_preset("mnist5k-demo"), {"eval.width": 16})
    stored, labels = stack_stored(initial_synset(build_plan(cfg, data.spec).match, data.train_store(), range(10)))
    x, y = form_stored(cfg, data.spec, stored, labels)
    # two ConvNets: eval.width (16, for speed) reaches the ConvNet family only, as published
    tasks = plan_tasks(cfg, data.spec, "mix-init", models=("convnet3", "convnet2"), repeat=2, epochs=10,
                       eval_every=5)
    return [Work(t, x, y, data.test_x, data.test_y) for t in tasks]


def scrape_until(port: int, stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                seen += [ln for ln in r.read().decode().splitlines() if ln.startswith("ray_idc_eval_accuracy{")]
        except OSError:
            pass
        time.sleep(0.25)


@pytest.fixture(scope="module")
def check(ray_cluster, tmp_path_factory):
    """The same work on Ray (task 1's first worker killed once) and sequentially at the 1 torch
    thread of a 1-CPU task; the job-log lines and the scraped gauge lines."""
    marker = tmp_path_factory.mktemp("crash") / "crashed-once"
    items = work()
    seen: list[str] = []
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_until, args=(ray.nodes()[0]["MetricsExportPort"], stop, seen))
    scraper.start()
    lines: list[str] = []
    try:
        parallel = RayExecutor(max_retries=2, log=lines.append, crash_once={1: marker})(items)
        deadline = time.monotonic() + 10  # a point set just before a task ended is exported in the next interval
        while not any('set="mix-init"' in ln for ln in seen) and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        stop.set()
        scraper.join()
    errors = []
    for kwargs in ({"num_cpus": 64}, {"num_gpus": 1}):
        try:
            task_bundle(4, **kwargs)
        except ValueError as e:
            errors.append(str(e))
    shares = [task_bundle(1)["CPU"], task_bundle(8)["CPU"]]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what each 1-CPU task ran with
    try:
        sequential = Sequential("cpu", log=lambda _: None)(items)
    finally:
        torch.set_num_threads(before)
    out = {"parallel": [r.__dict__ for r in parallel], "sequential": [r.__dict__ for r in sequential],
           "lines": lines, "gauge": seen, "errors": errors, "shares": shares}
    return out, marker


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


def test_every_progress_line_of_a_task_reaches_the_driver_before_its_result(check):
    """The tasks' lines come through the driver's log, all of them (the retried task's first
    worker died before training), each task's before the line that reports it done."""
    lines = check[0]["lines"]
    for item, record in zip(work(), check[0]["parallel"], strict=True):
        t = item.task
        name = f"mix-init {t.model} repeat {t.repeat + 1}/2"
        progress = [i for i, ln in enumerate(lines) if ln.startswith(f"[eval] {name} ")]
        done = [i for i, ln in enumerate(lines) if ln.startswith(f"[eval] done {name}:")]
        assert [lines[i] for i in progress] == [progress_line(t, e, a) for e, a in record["history"]]
        assert len(done) == 1 and max(progress) < done[0]


def test_the_accuracy_gauge_is_exported_per_model(check):
    gauge = check[0]["gauge"]
    assert any('model="convnet3"' in ln and 'set="mix-init"' in ln for ln in gauge), gauge[:5]


def test_impossible_resources_fail_before_any_task(check):
    out = check[0]
    assert "more than any node has (2 CPUs)" in out["errors"][0]
    assert "no node has that many (0)" in out["errors"][1]
    assert out["shares"] == [2.0, 1.0]
