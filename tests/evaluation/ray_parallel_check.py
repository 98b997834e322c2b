"""Run by test_parallel.py in a fresh process (its own local Ray with a 1 s metrics interval,
whatever Ray the test session holds): the same evaluation work on Ray, with one worker killed
once, and sequentially at 1 torch thread; prints the records, job-log lines and scraped gauge
lines as JSON."""

import json
import logging
import os
import sys
import threading
import time
import urllib.request

os.environ["RAY_metrics_report_interval_ms"] = "1000"  # before Ray starts: the gauge shows within a second

import ray  # noqa: E402
import torch  # noqa: E402

from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.data import load_dataset  # noqa: E402
from idc_ray.engine.loop import initial_synset, stack_stored  # noqa: E402
from idc_ray.distributed.evaluation import RayExecutor  # noqa: E402
from idc_ray.distributed.resources import plan_tasks as plan_task_bundle  # noqa: E402
from idc_ray.evaluation.protocol import Work, form_stored, plan_tasks  # noqa: E402
from idc_ray.evaluation.run import Sequential  # noqa: E402


def work() -> list[Work]:
    """2 models x 2 repeats on the formed mix initialisation of mnist5k (factor 2, ipc 1)."""
    data = load_dataset("mnist5k")
    cfg = apply_overrides(load_preset("mnist5k-demo"), {"eval.width": 16})
    stored, labels = stack_stored(initial_synset(cfg, data.train_store(), range(10)))
    x, y = form_stored(cfg, stored, labels)
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


def main(marker: str) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    items = work()
    seen: list[str] = []
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_until, args=(ray.nodes()[0]["MetricsExportPort"], stop, seen))
    scraper.start()
    lines: list[str] = []
    parallel = RayExecutor(max_retries=2, log=lines.append, crash_once={1: marker})(items)
    deadline = time.monotonic() + 10  # a point set just before a task ended is exported in the next interval
    while not seen and time.monotonic() < deadline:
        time.sleep(0.25)
    stop.set()
    scraper.join()
    errors = []
    for kwargs in ({"num_cpus": 64}, {"num_gpus": 1}):
        try:
            plan_task_bundle(4, **kwargs)
        except ValueError as e:
            errors.append(str(e))
    shares = [plan_task_bundle(1)["CPU"], plan_task_bundle(8)["CPU"]]
    ray.shutdown()
    torch.set_num_threads(1)  # what each 1-CPU task ran with
    sequential = Sequential("cpu", log=lambda _: None)(items)
    print(json.dumps({"parallel": [r.__dict__ for r in parallel], "sequential": [r.__dict__ for r in sequential],
                      "lines": lines, "gauge": seen, "errors": errors, "shares": shares}))


if __name__ == "__main__":
    main(sys.argv[1])
