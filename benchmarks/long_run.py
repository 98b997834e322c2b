"""A long run does not grow: 500 outer iterations of the smoke preset on Ray (a matcher actor and
an expert actor), sampling every 50 outer iterations the resident memory of the driver and of
each actor and the object store's use.

    python benchmarks/long_run.py [--outer 500] [--every 50] [--inner 2] [--warmup 100] [--width 40]

Samples are taken from the job's progress callback (``on_progress``, the one the progress line
uses) at the end of every 50th outer iteration: resident memory from /proc/<pid>/status (VmRSS;
the actors' pids from Ray's state API, ``ray.util.state.list_actors``) and the object store's
bytes and objects (``idc_ray.distributed.session.object_store_use``, what ``ray memory
--stats-only`` prints). After the warm-up (the samples before outer ``--warmup``), every
process's memory is flat when no later sample is more than 10% above or below its first sample
after the warm-up; the object store is flat when it stays within 10% or 2 MiB of it (the states
in flight; one leaked state per inner iteration would add 125 MiB over the run). Writes
benchmarks/results/long_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from idc_ray.backends import condense_job  # noqa: E402
from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.distributed.session import object_store_use, ray_session  # noqa: E402
from idc_ray.run.backend import RunOptions  # noqa: E402

FLAT = 0.10  # at most 10% above or below the first sample after the warm-up
# The object store holds the states computed ahead (--expert-memory-mb) and those of the steps in
# flight: 6 to 13 states of 125 KiB at any moment, so a sample may be 2 MiB above another.
STORE_SLACK = 2 * 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outer", type=int, default=500, help="outer iterations (default 500)")
    p.add_argument("--inner", type=int, default=2, help="inner iterations per outer (default 2: the smoke preset's)")
    p.add_argument("--every", type=int, default=50, help="sample every N outer iterations (default 50)")
    p.add_argument("--warmup", type=int, default=100, help="samples before this outer iteration are the warm-up")
    p.add_argument("--width", type=int, default=40,
                   help="expert.width (default 40: an expert state of 125 KiB, above the 100 KiB Ray returns inline, "
                        "so every state passes through the object store)")
    p.add_argument("--expert-memory-mb", type=float, default=1.0,
                   help="the look-ahead's bound (default 1 MiB: 8 states), far below what one leaked state per "
                        "step would add over the run")
    p.add_argument("--name", default="long_run", help="results/<name>.json")
    return p.parse_args(argv)


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process on this machine, MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def actor_pids() -> dict[str, int]:
    """The job's live actors by name (matcher-0[...]@run, expert-0[...]@run) and pid."""
    import ray
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.name or a.class_name: a.pid for a in alive}


def sample(outer: int, started: float) -> dict:
    store = object_store_use()
    return {"outer": outer, "seconds": round(time.perf_counter() - started, 1), "driver_mib": rss_mib(os.getpid()),
            "actors_mib": {name.split("@")[0]: rss_mib(pid) for name, pid in actor_pids().items()},
            "object_store_bytes": store["bytes"], "object_store_objects": store["objects"]}


def growth(series: list[float]) -> dict:
    """Relative change of a series against its first value: the last and the widest."""
    first = series[0]
    return {"first": first, "last": series[-1], "min": min(series), "max": max(series),
            "last_vs_first": series[-1] / first - 1, "widest_vs_first": max(abs(v / first - 1) for v in series)}


def summarise(samples: list[dict], warmup: int) -> dict:
    after = [s for s in samples if s["outer"] >= warmup]
    series = {"driver": [s["driver_mib"] for s in after]}
    for name in after[0]["actors_mib"]:
        series[name] = [s["actors_mib"].get(name) for s in after]
    memory = {name: growth(values) for name, values in series.items() if None not in values}
    store = [s["object_store_bytes"] for s in after]
    store_flat = max(store) - store[0] <= max(FLAT * store[0], STORE_SLACK) and \
        store[0] - min(store) <= max(FLAT * store[0], STORE_SLACK)
    return {"memory_after_warmup": memory,
            "memory_flat_within_10pct": all(g["widest_vs_first"] <= FLAT for g in memory.values()),
            "object_store_bytes_after_warmup": {"first": store[0], "max": max(store), "min": min(store)},
            "object_store_flat": store_flat,
            "processes_sampled_throughout": len(memory) == len(series)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = apply_overrides(load_preset("smoke"), {"schedule.outer_iters": args.outer, "schedule.inner_iters": args.inner,
                                                 "expert.width": args.width})
    samples: list[dict] = []
    started = time.perf_counter()

    def on_progress(p) -> None:
        done = p.outer + 1
        if p.inner == args.inner - 1 and (done == 1 or done % args.every == 0):
            samples.append(sample(done, started))
            print(json.dumps(samples[-1]), flush=True)

    with ray_session("local", num_cpus=2), tempfile.TemporaryDirectory() as out:
        options = RunOptions(num_actors=1, cpus_per_actor=0.5, expert_memory_mb=args.expert_memory_mb)
        condense_job(cfg, out, options, on_progress=on_progress)
        end = object_store_use()
    result = {"preset": "smoke", "outer_iters": args.outer, "inner_iters": args.inner, "expert_width": args.width,
              "expert_memory_mb": args.expert_memory_mb, "sample_every": args.every,
              "warmup_outer": args.warmup, "wall_s": time.perf_counter() - started, "samples": samples,
              "object_store_after_job": end, **summarise(samples, args.warmup)}
    path = write(args.name, result)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
