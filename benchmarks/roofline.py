"""Achieved FLOP/s of one matching step against this machine's dense-matmul FLOP/s.

    python benchmarks/roofline.py [--steps 3] [--width 128]

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one 10-class matching step
(ConvNet-3 width 128, 28x28x1, ipc 10, factor 2, batch_real 64); the step is then timed without
the counter, in the two layouts that run it on a CPU machine:

* ``in_process``: one process, one matcher for all classes, all torch threads (how a
  single-process implementation runs it, and what ``--backend local`` does);
* ``ray_actors``: the Ray job's default layout here, one matcher actor per core with one torch
  thread each, every actor stepping its shard of classes against the same expert state (the
  MatcherActor of the job, placed by Ray); the wall time is the slowest shard's.

The matmul peak is measured in the same run (float32 2048x2048 torch.mm with all threads, and
with one). ``fraction_of_matmul_peak`` is the faster layout's; both are recorded. The goal in
the benchmark issue is >= 40%. Writes benchmarks/results/roofline.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paper_config, use_actor_allocator, write  # noqa: E402

from idc_ray.config import apply_overrides  # noqa: E402
from idc_ray.data import ClassStore, DatasetSpec, load_dataset  # noqa: E402
from idc_ray.data.store import class_blocks  # noqa: E402
from idc_ray.engine.expert import init_expert  # noqa: E402
from idc_ray.engine.matcher import Matcher  # noqa: E402
from idc_ray.engine.plan import build_plan, initial_synset  # noqa: E402

GOAL = 0.4


def matmul_flops_per_s(n: int = 2048, repeats: int = 10, trials: int = 3) -> float:
    """The best of ``trials`` timings of ``repeats`` float32 n x n products (a peak is a maximum)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 * repeats / best


def in_process_step_s(matcher: Matcher, model: torch.nn.Module, steps: int) -> float:
    matcher.step(model, 0, 0)  # warm-up: oneDNN picks its kernels per shape
    started = time.perf_counter()
    for i in range(steps):
        matcher.step(model, 0, 2 + i)
    return (time.perf_counter() - started) / steps


def ray_actors_step_s(cfg, spec: DatasetSpec, expert_state: dict, actors: int, steps: int) -> float:
    """Seconds per step with ``actors`` MatcherActors of one thread each, stepping together."""
    import ray

    from idc_ray.distributed.actors import MatcherActor, actor_runtime_env
    from idc_ray.distributed.session import ray_session

    plan = build_plan(cfg, spec)
    with ray_session("local", num_cpus=actors, dashboard=False):
        actor = MatcherActor.options(num_cpus=1, runtime_env=actor_runtime_env(True))
        group = [actor.remote(f"shard{i}", plan, classes, cfg.data.dataset, None, None)
                 for i, classes in enumerate(class_blocks(spec.num_classes, actors, "--actors"))]
        infos = ray.get([a.setup.remote() for a in group])
        assert all(i["threads"] == 1 and i["keeps_freed_memory"] for i in infos), infos
        state = ray.put(expert_state)
        ray.get([a.step.remote(state, 0, 0) for a in group])  # warm-up
        started = time.perf_counter()
        for i in range(steps):
            ray.get([a.step.remote(state, 0, 2 + i) for a in group])
        return (time.perf_counter() - started) / steps


def main() -> None:
    use_actor_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--width", type=int, default=128, help="ConvNet-3 width (small: a quick check)")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1, help="matcher actors (default: one per core)")
    args = parser.parse_args()
    cfg = apply_overrides(paper_config(), {"expert.width": args.width})
    data = load_dataset(cfg.data.dataset)
    plan = build_plan(cfg, data.spec)
    match, expert_spec = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    matcher = Matcher(match, store, initial_synset(match, store, store.classes))
    model = init_expert(expert_spec, 0)
    matcher.step(model, 0, 0)  # the counted step must not be the first (lazy init is not FLOPs)
    with FlopCounterMode(display=False) as counter:
        matcher.step(model, 0, 1)
    flops = counter.get_total_flops()

    threads = torch.get_num_threads()
    layouts = {f"in_process_{threads}_threads": in_process_step_s(matcher, model, args.steps)}
    layouts[f"ray_actors_{args.actors}x1_thread"] = ray_actors_step_s(cfg, data.spec, model.state_dict(), args.actors, args.steps)
    peak = matmul_flops_per_s()
    torch.set_num_threads(1)
    peak_one = matmul_flops_per_s()
    torch.set_num_threads(threads)

    results = {name: {"step_s": s, "achieved_flops_per_s": flops / s, "fraction_of_matmul_peak": flops / s / peak}
               for name, s in layouts.items()}
    best = min(layouts, key=layouts.get)
    path = write("roofline", {
        "setting": f"one 10-class step, ConvNet-3 width {args.width}, 28x28x1, ipc 10, factor 2, batch_real 64",
        "step_flops": flops, "matmul_flops_per_s": peak, "matmul_flops_per_s_1_thread": peak_one,
        "layouts": results, "best_layout": best,
        "fraction_of_matmul_peak": results[best]["fraction_of_matmul_peak"], "goal_fraction": GOAL,
    })
    print(path)
    print(f"{flops / 1e9:.1f} GFLOP per step; matmul {peak / 1e9:.1f} GFLOP/s ({peak_one / 1e9:.1f} on 1 thread)")
    for name, r in results.items():
        print(f"{name}: {r['step_s']:.2f} s/step = {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% (goal {100 * GOAL:.0f}%)")


if __name__ == "__main__":
    main()
