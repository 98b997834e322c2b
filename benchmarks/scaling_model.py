"""The scaling model (idc_ray/distributed/planner.py) against real runs, and the paper's schedules
predicted on 1, 8 and 64 GPUs.

    python benchmarks/scaling_model.py check [--outer 3] [--inner 2]   # ~10 min on 2 cores
    python benchmarks/scaling_model.py hours                            # seconds, no runs

``check``: in ONE run (this machine's speed drifts between runs), the part times at one torch
thread (the actors') and at all threads (the in-process run) measured by the planner's probe
(engine/probe.py) plus one state's trip through the object store, then every layout that can
really run here through the Ray job: in-process; 1 matcher + 1 expert actor; 2 + 1; 1 + 2; 2 + 2,
each with its prediction beside its measurement (the mean gap between inner iterations after the
first cycle). The expert states computed ahead are limited to one cycle and one state, so two
expert actors can both work and the short run reaches its steady state.
CIFAR-10's shapes (ConvNet-3 width 128, ipc 10, factor 2, n_data 2,000) on random pixels.
Writes benchmarks/results/scaling_model.json.

``hours``: the paper's full schedules (outer x inner iterations of each preset) for CIFAR-10,
CIFAR-100, ImageNet-10 and ImageNet-100 on 1, 8 and 64 GPUs, one expert actor against the
planner's layout. GPU part times: the H200 breakdown of benchmarks/results/gpu.json (MNIST's
shapes, ConvNet-3 width 128), scaled to each preset by that preset's ratio to MNIST on the CPU
(benchmarks/results/expert_share.json): CPU-derived, as the docs say. Writes
benchmarks/results/predicted_hours.json and prints the table of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import results_dir, timed_job, write  # noqa: E402
from expert_actors import cifar_shaped_parquet  # noqa: E402
from expert_share import transfer_seconds  # noqa: E402

from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.data import get_spec  # noqa: E402
from idc_ray.distributed.backend import busy_experts, state_bytes  # noqa: E402
from idc_ray.distributed.planner import (PartTimes, choose, in_process_seconds, predict)  # noqa: E402
from idc_ray.distributed.session import ray_session  # noqa: E402
from idc_ray.engine.plan import build_plan  # noqa: E402
from idc_ray.engine.probe import probe_parts  # noqa: E402
from idc_ray.run.backend import RunOptions  # noqa: E402

LAYOUTS = ((1, 1), (2, 1), (1, 2), (2, 2))  # (matchers, expert actors) that 2 cores can run
HOURS_PRESETS = ("cifar10", "cifar100", "imagenet10", "imagenet100")
GPUS = (1, 8, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="predictions against real runs on this machine")
    check.add_argument("--outer", type=int, default=6, help="re-initialisation cycles (fix_iter 1)")
    check.add_argument("--inner", type=int, default=3, help="inner iterations per cycle")
    check.add_argument("--per-class", type=int, default=250, help="random images per class")
    sub.add_parser("hours", help="the paper's schedules predicted on 1, 8 and 64 GPUs")
    return p.parse_args(argv)


def parts_at(threads: int, plan, spec) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        probed = probe_parts(plan, spec, "cpu", repeat=3)
    finally:
        torch.set_num_threads(before)
    return {"threads": threads, "matching_s": probed.matching_s, "expert_s": probed.expert_s}


def check(args: argparse.Namespace) -> int:
    cores = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as data, ray_session("local", num_cpus=cores, dashboard=False):
        cfg = apply_overrides(load_preset("cifar10"), {
            "data.dataset": "parquet", "data.data_uri": cifar_shaped_parquet(Path(data) / "cifar", args.per_class),
            "schedule.outer_iters": args.outer, "schedule.inner_iters": args.inner})
        spec = get_spec(cfg.data.dataset, cfg.data.data_uri)
        plan = build_plan(cfg, spec)
        one, every = parts_at(1, plan, spec), parts_at(cores, plan, spec)
        transfer = transfer_seconds(plan, 3)
        actors = PartTimes(one["matching_s"], one["expert_s"], transfer)
        # the states computed ahead: one cycle and one state, so two expert actors can both work
        # and the run reaches its steady state within a few cycles instead of living off a head start
        memory_mb = (args.inner + 1.5) * state_bytes(plan) / 2**20
        max_experts = busy_experts(cfg, plan, memory_mb)
        updates = 1 - 1 / (plan.expert.fix_iter * args.inner)  # none after a cycle's last iteration
        never = 10**6  # no checkpoint inside the timings but the last
        # window 1: the in-process run reports each inner iteration as it ends (with 2 in flight
        # its reports come in pairs, and the gaps between them say nothing)
        runs = {"in-process": (RunOptions(backend="local", checkpoint_every=never, window=1),
                               in_process_seconds(PartTimes(every["matching_s"], every["expert_s"]), updates))}
        for n, k in LAYOUTS:
            runs[f"{n}+{k}"] = (RunOptions(num_actors=n, expert_actors=k, checkpoint_every=never,
                                           expert_memory_mb=memory_mb),
                                predict(n, k, classes=spec.num_classes, devices=cores, gpus=False, times=actors,
                                        max_experts=max_experts, expert_updates=updates))
        layouts = {}
        for name, (options, predicted) in runs.items():
            _, timing = timed_job(cfg, options)
            steady = timing["gaps_s"][args.inner:]  # after the first cycle: start-up and head start
            measured = sum(steady) / len(steady)  # the mean: every update and step counts
            layouts[name] = {"predicted_s": predicted, "measured_s": measured, "error": predicted / measured - 1,
                             "gaps_s": timing["gaps_s"]}
            print(f"{name}: predicted {predicted:.2f} s, measured {measured:.2f} s per inner iteration "
                  f"({100 * layouts[name]['error']:+.0f}%)", flush=True)
    write("scaling_model", {"preset": "cifar10 shapes (random pixels)", "outer": args.outer, "inner": args.inner,
                            "cores": cores, "parts_1_thread": one, f"parts_{cores}_threads": every,
                            "transfer_s": transfer, "max_experts": max_experts, "layouts": layouts,
                            "all_within_25_percent": all(abs(v["error"]) <= 0.25 for v in layouts.values())})
    return 0


def gpu_part_times(preset: str) -> PartTimes:
    """The H200's MNIST parts scaled by ``preset``'s CPU ratio to MNIST (CPU-derived)."""
    gpu = json.loads((results_dir() / "gpu.json").read_text())["breakdown"]["seconds"]
    cpu = {r["preset"]: r for r in json.loads((results_dir() / "expert_share.json").read_text())["parts"]}
    m, p = cpu["mnist"], cpu[preset]
    return PartTimes(gpu["matching"] * p["matching_all_classes_s"] / m["matching_all_classes_s"],
                     gpu["expert"] * p["expert_update_s"] / m["expert_update_s"],
                     gpu["transfer"] * p["state_mb"] / m["state_mb"])


def hours() -> int:
    rows = []
    for preset in HOURS_PRESETS:
        cfg = load_preset(preset)
        classes, iterations = get_spec(cfg.data.dataset).num_classes, cfg.schedule.outer_iters * cfg.schedule.inner_iters
        times = gpu_part_times(preset)
        for gpus in GPUS:
            alone = choose(classes, gpus, True, times, max_experts=1, experts=1)
            planned = choose(classes, gpus, True, times, max_experts=cfg.schedule.outer_iters)
            rows.append({"preset": preset, "classes": classes, "iterations": iterations, "gpus": gpus,
                         "part_times": times.__dict__,
                         "one_expert": {"layout": [alone.matchers, 1], "hours": alone.seconds * iterations / 3600},
                         "planner": {"layout": [planned.matchers, planned.experts], "beside": planned.beside,
                                     "hours": planned.seconds * iterations / 3600}})
    write("predicted_hours", {"source": "gpu.json H200 breakdown (MNIST shapes) x CPU ratios of expert_share.json",
                              "rows": rows})
    print("| preset | iterations | GPUs | one expert actor: layout, hours | planner: layout, hours |")
    print("|---|---|---|---|---|")
    for r in rows:
        o, p = r["one_expert"], r["planner"]
        where = " beside" if p["beside"] else ""
        print(f"| {r['preset']} | {r['iterations']:,} | {r['gpus']} | {o['layout'][0]}+1, {o['hours']:.1f} | "
              f"{p['layout'][0]}+{p['layout'][1]}{where}, {p['hours']:.1f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return check(args) if args.command == "check" else hours()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
