"""Class-steps per second of the matching step on each path, and the expert-training share.

    python benchmarks/matching.py [--steps 5] [--device cpu|cuda] [--width 128]

ConvNet-3 (width 128), ipc 10, factor 2, batch_real 64, on 28x28x1 (real MNIST) and 32x32x3
(random data of CIFAR's shape: speed does not depend on content). Every matching path is
measured: ``loop`` (one autograd call per class, as the paper's code does), ``lean`` (the same
loop, convolutions without the unused double-backward weight term, engine/leanconv.py) and
``vmap`` (the classes batched with torch.func, engine/batched.py); ``chosen_path`` is what
``match.path: auto`` picks on the device, and ``max_abs_diff_vs_loop`` compares the stored data
after one step on each path with the loop's. Other ideas measured and dropped, on this CPU:
channels-last tensors (1.5x slower: GroupNorm and the pools have no fast NHWC kernels here);
torch.compile (it does not compile a create_graph double backward).
The first step of each path is a warm-up (oneDNN / cuDNN pick kernels per shape) and is reported
separately; then the paths take turns, step by step, and each reports its median step. Writes benchmarks/results/matching.json (matching_width<W>.json for other widths).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paper_config, use_actor_allocator, write  # noqa: E402

from idc_ray.config import apply_overrides  # noqa: E402
from idc_ray.data import ClassStore, RealData, get_spec, load_dataset  # noqa: E402
from idc_ray.engine.expert import ExpertTrainer, init_expert  # noqa: E402
from idc_ray.engine.matcher import Matcher, resolve_path, stack_stored  # noqa: E402
from idc_ray.engine.plan import build_plan, initial_synset  # noqa: E402

PATHS = ("loop", "lean", "vmap")
DEFAULT_WIDTH = 128


def cifar_shaped(per_class: int = 500) -> RealData:
    g = torch.Generator().manual_seed(0)
    spec = get_spec("cifar10")
    x = torch.randint(0, 256, (10 * per_class, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(10).repeat_interleave(per_class)
    return RealData(spec, x, y, x[:10], y[:10])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_step(matcher: Matcher, model: torch.nn.Module, inner: int, device: torch.device) -> float:
    started = time.perf_counter()
    matcher.step(model, 0, inner)
    _sync(device)
    return time.perf_counter() - started


def _peak_step_bytes(matcher: Matcher, model: torch.nn.Module, inner: int, device: torch.device) -> int | None:
    """CUDA memory a step holds at its peak beyond what was allocated before it (None on the CPU,
    where torch keeps no such counter)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    matcher.step(model, 0, inner)
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def time_paths(matchers: dict[str, Matcher], model: torch.nn.Module, steps: int,
               device: torch.device) -> tuple[dict, dict]:
    """Per path: the warm-up step's seconds and the median of ``steps`` more; also the data after
    the warm-up. The paths take turns step by step, so a machine that slows down or speeds up
    during the run (a shared VM does) weighs on every path alike."""
    warmup, after_one = {}, {}
    for path, matcher in matchers.items():
        warmup[path] = _timed_step(matcher, model, 0, device)
        after_one[path] = stack_stored(matcher.stored())[0]
    times: dict[str, list[float]] = {path: [] for path in matchers}
    for i in range(steps):
        for path, matcher in matchers.items():
            times[path].append(_timed_step(matcher, model, i + 1, device))
    results = {}
    for path, matcher in matchers.items():
        step_s = statistics.median(times[path])
        results[path] = {"class_steps_per_s": len(matcher.classes) / step_s, "step_s": step_s,
                         "step_s_all": times[path], "warmup_step_s": warmup[path],
                         "peak_step_bytes": _peak_step_bytes(matcher, model, steps + 1, device)}
    return results, after_one


def time_expert(trainer: ExpertTrainer, store: ClassStore, steps: int, device: torch.device) -> float:
    trainer.train_inner(store, 0, 0)  # warm-up of the expert's shapes
    started = time.perf_counter()
    for i in range(steps):
        trainer.train_inner(store, 0, i + 1)
    _sync(device)
    return (time.perf_counter() - started) / steps


def measure(data: RealData, steps: int, device: torch.device, width: int = DEFAULT_WIDTH) -> dict:
    # Shapes come from data.spec; the MNIST rules only set lr and augmentation.
    cfg = apply_overrides(paper_config(), {"expert.width": width})
    plan = build_plan(cfg, data.spec)
    match, expert_spec = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    init = initial_synset(match, store, store.classes)
    model = init_expert(expert_spec, 0).to(device)
    matchers = {path: Matcher(replace(match, path=path), store, init, device) for path in PATHS}
    paths, after_one = time_paths(matchers, model, steps, device)
    expert_s = time_expert(ExpertTrainer(expert_spec, model, device), store, steps, device)
    chosen = resolve_path("auto", device)
    rates = {path: r["class_steps_per_s"] for path, r in paths.items()}
    return {
        "class_steps_per_s": rates,
        "speedup_best_vs_loop": max(rates.values()) / rates["loop"],
        "speedup_chosen_vs_loop": rates[chosen] / rates["loop"],  # the CPU goal: never below 1
        "paths": paths,
        "max_abs_diff_vs_loop": {p: float((after_one[p] - after_one["loop"]).abs().max()) for p in PATHS},
        "chosen_path": chosen,
        "expert_inner_update_s": expert_s,
        "expert_share": expert_s / (expert_s + paths[chosen]["step_s"]),
    }


def main() -> None:
    use_actor_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (the median is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="ConvNet-3 width (small: a quick check)")
    args = parser.parse_args()
    device = torch.device(args.device)
    mnist = load_dataset("mnist5k")
    shapes = {"28x28x1": measure(mnist, args.steps, device, args.width),
              "32x32x3": measure(cifar_shaped(), args.steps, device, args.width)}
    results = {
        "setting": f"ConvNet-3 width {args.width}, ipc 10, factor 2, batch_real 64, n_data 500",
        # The headline keys are the 28x28x1 (MNIST) numbers; each shape has its own below.
        "class_steps_per_s": shapes["28x28x1"]["class_steps_per_s"],
        "speedup_best_vs_loop": shapes["28x28x1"]["speedup_best_vs_loop"],
        **shapes,
    }
    print(write("matching" if args.width == DEFAULT_WIDTH else f"matching_width{args.width}", results, device))
    for shape in ("28x28x1", "32x32x3"):
        r = results[shape]
        rates = ", ".join(f"{p} {r['paths'][p]['class_steps_per_s']:.2f}" for p in PATHS)
        diffs = ", ".join(f"{p} {d:.1e}" for p, d in r["max_abs_diff_vs_loop"].items() if p != "loop")
        print(f"{shape}: class-steps/s {rates} (auto: {r['chosen_path']}); max |path - loop| after a step: "
              f"{diffs}; expert share {100 * r['expert_share']:.0f}%")


if __name__ == "__main__":
    main()
