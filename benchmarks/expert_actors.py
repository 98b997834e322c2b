"""Seconds per inner iteration with 1 matcher + 1 expert actor against 1 matcher + 2 expert
actors, in one run, at CIFAR-10's shapes (ConvNet-3 width 128, ipc 10, factor 2, batch_real 64,
n_data 2000: the preset where the expert's update is half an inner iteration on a CPU).

    python benchmarks/expert_actors.py [--outer 4] [--inner 3] [--cpus-per-actor 1]

Random CIFAR-shaped pixels written once as a Parquet dataset (speed does not depend on content);
a local Ray with this machine's CPUs. Each layout runs ``--outer`` re-initialisation cycles of
``--inner`` inner iterations; the seconds per inner iteration are the median gap between two
finished inner iterations after the first (the first carries the actors' start-up). Both layouts
must give the same bytes (checked). Writes benchmarks/results/expert_actors.json.

What 2 cores allow: with 1 matcher and 2 expert actors, three actors share two cores, so the second
expert actor cannot run beside the first without slowing the matcher; the gain this shows is a
lower bound of what separate GPUs (or cores) give. docs/scaling.md reads it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed_job, write  # noqa: E402

from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.data import get_spec  # noqa: E402
from idc_ray.data.parquet import write_dataset  # noqa: E402
from idc_ray.data.prepare import dataset_info  # noqa: E402
from idc_ray.distributed.session import ray_session  # noqa: E402
from idc_ray.run.backend import RunOptions  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outer", type=int, default=4, help="re-initialisation cycles (fix_iter 1)")
    p.add_argument("--inner", type=int, default=3, help="inner iterations per cycle")
    p.add_argument("--per-class", type=int, default=250, help="random images per class")
    p.add_argument("--cpus-per-actor", type=float, default=None, help="default: an equal share of the CPUs")
    p.add_argument("--name", default="expert_actors")
    return p.parse_args(argv)


def cifar_shaped_parquet(folder: Path, per_class: int) -> str:
    spec = get_spec("cifar10")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10 * per_class, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(10).repeat_interleave(per_class)
    write_dataset(str(folder), {"train": (x, y), "test": (x[:10], y[:10])}, dataset_info(spec, {"random": True}),
                  encoding="raw")
    return str(folder)


def run(cfg, options: RunOptions) -> dict:
    job, timing = timed_job(cfg, options)
    return {**timing, "actors": [{k: p.get(k) for k in ("name", "threads")} for p in job.placement],
            "stored": job.stored}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as data, ray_session(None):
        cfg = apply_overrides(load_preset("cifar10"), {
            "data.dataset": "parquet", "data.data_uri": cifar_shaped_parquet(Path(data) / "cifar", args.per_class),
            "schedule.outer_iters": args.outer, "schedule.inner_iters": args.inner})
        results = {}
        for experts in (1, 2):
            options = RunOptions(num_actors=1, expert_actors=experts, cpus_per_actor=args.cpus_per_actor,
                                 checkpoint_every=10**6)
            results[f"1_matcher_{experts}_expert_actors"] = run(cfg, options)
            print(f"1 matcher + {experts} expert actors: "
                  f"{results[f'1_matcher_{experts}_expert_actors']['seconds_per_inner_iteration']:.2f} s per inner "
                  "iteration", flush=True)
    one, two = (results[k].pop("stored") for k in ("1_matcher_1_expert_actors", "1_matcher_2_expert_actors"))
    speedup = (results["1_matcher_1_expert_actors"]["seconds_per_inner_iteration"]
               / results["1_matcher_2_expert_actors"]["seconds_per_inner_iteration"])
    write(args.name, {"layouts": results, "same_bytes": bool(torch.equal(one, two)), "speedup": speedup,
                      "outer": args.outer, "inner": args.inner, "preset": "cifar10 (random pixels)"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
