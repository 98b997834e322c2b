"""The same condensation in-process and as the Ray job (same config and iterations).

    python benchmarks/scaling.py [--outer 2] [--inner 5] [--width 128] [--ipc 10] [--rounds 2]

(a) in-process, 2 torch threads (how a single-process implementation runs);
(b) Ray, 2 matcher actors of 1 thread each plus the expert actor overlapping them;
(c) Ray, 1 matcher actor of 1 thread; (d) in-process, 1 thread.
Reports speedup (a)/(b) (goal >= 1.6), sharding efficiency (c)/(2 x (b)) (goal >= 0.85),
Ray's orchestration overhead (c)/(d) - 1 (goal <= 10%) and the bound any 2-process layout has on
this machine, (a)/((d)/2). Every run uses the actors' allocator settings (common.use_actor_allocator).
The cluster is started before timing; actor start-up is inside the timings. Writes
benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import use_actor_allocator, write  # noqa: E402

from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.backends import condense_job  # noqa: E402
from idc_ray.distributed.session import ray_session  # noqa: E402
from idc_ray.run.backend import RunOptions  # noqa: E402


def timed(cfg, options: RunOptions, threads: int | None = None) -> float:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            condense_job(cfg, out, options)
            return time.perf_counter() - started
    finally:
        torch.set_num_threads(before)


def main() -> None:
    use_actor_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outer", type=int, default=2)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--width", type=int, default=128, help="ConvNet-3 width (small: a quick check)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the four runs (means are reported)")
    args = parser.parse_args()
    cfg = apply_overrides(load_preset("mnist5k-demo"), {
        "synset.ipc": args.ipc, "expert.width": args.width, "schedule.outer_iters": args.outer,
        "schedule.inner_iters": args.inner})
    never = 10**6  # no checkpoint inside the timings but the last
    runs = {
        "a_inprocess_2threads": lambda: timed(cfg, RunOptions(backend="local", checkpoint_every=never), threads=2),
        "d_inprocess_1thread": lambda: timed(cfg, RunOptions(backend="local", checkpoint_every=never), threads=1),
        "b_ray_2actors_1thread": lambda: timed(cfg, RunOptions(num_actors=2, cpus_per_actor=0.66, checkpoint_every=never)),
        "c_ray_1actor_1thread": lambda: timed(cfg, RunOptions(num_actors=1, cpus_per_actor=1, checkpoint_every=never)),
    }
    # A shared VM's speed drifts by tens of percent over minutes: the runs take turns, in reversed
    # order every other round, and each reports its mean.
    samples: dict[str, list[float]] = {name: [] for name in runs}
    with ray_session("local", num_cpus=2, dashboard=False):
        for r in range(args.rounds):
            for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
                samples[name].append(runs[name]())
    seconds = {name: statistics.fmean(v) for name, v in samples.items()}
    a, b, c, d = (seconds[k] for k in ("a_inprocess_2threads", "b_ray_2actors_1thread", "c_ray_1actor_1thread",
                                       "d_inprocess_1thread"))
    result = {
        "setting": f"mnist5k, ConvNet-3 width {args.width}, ipc {args.ipc}, factor 2, {args.outer} x {args.inner} iterations",
        "seconds": seconds, "samples": samples,
        "speedup_vs_single_process": a / b, "goal_speedup": 1.6,
        "efficiency_2_actors": c / (2 * b), "goal_efficiency": 0.85,
        "ray_overhead": c / d - 1, "goal_ray_overhead": 0.10,
        # What (b) would reach if it split (d)'s one-thread work over the 2 cores perfectly, with
        # no start-up: all the 2-core speedup left once the in-process run uses both threads.
        "speedup_bound_2_cores": a / (d / 2),
    }
    print(write("scaling", result))
    print({k: round(v, 3) for k, v in result.items() if isinstance(v, float)})


if __name__ == "__main__":
    main()
