"""Achieved FLOP/s of one matching step against this machine's dense-matmul FLOP/s.

    python benchmarks/roofline.py

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one 10-class matching step
(ConvNet-3 width 128, 28x28x1, ipc 10, factor 2, batch_real 64); the step is then timed without
the counter. The matmul peak is measured in the same run (float32 2048x2048 torch.mm). The goal
in the benchmark issue is >= 40%. Writes benchmarks/results/roofline.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paper_config, write  # noqa: E402

from idc_ray.data import ClassStore, load_dataset  # noqa: E402
from idc_ray.engine.expert import init_expert  # noqa: E402
from idc_ray.engine.loop import Matcher, build_specs, initial_synset  # noqa: E402


def matmul_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def main() -> None:
    data = load_dataset("mnist5k")
    cfg = paper_config()
    match, expert_spec, _ = build_specs(cfg, data.spec)
    store = ClassStore(data.train_x, data.train_y)
    matcher = Matcher(match, store, initial_synset(cfg, store, store.classes))
    model = init_expert(expert_spec, 0)
    matcher.step(model, 0, 0)  # warm-up
    with FlopCounterMode(display=False) as counter:
        matcher.step(model, 0, 1)
    flops = counter.get_total_flops()
    steps = 3
    started = time.perf_counter()
    for i in range(steps):
        matcher.step(model, 0, 2 + i)
    step_s = (time.perf_counter() - started) / steps
    peak = matmul_flops_per_s()
    achieved = flops / step_s
    path = write("roofline", {"threads": torch.get_num_threads(), "step_flops": flops, "step_s": step_s,
                              "achieved_flops_per_s": achieved, "matmul_flops_per_s": peak,
                              "fraction_of_matmul": achieved / peak, "goal_fraction": 0.4})
    print(path)
    print(f"{flops / 1e9:.1f} GFLOP per step in {step_s:.2f}s = {achieved / 1e9:.1f} GFLOP/s; "
          f"matmul {peak / 1e9:.1f} GFLOP/s; {100 * achieved / peak:.0f}% (goal 40%)")


if __name__ == "__main__":
    main()
