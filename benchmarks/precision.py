"""How far the matching paths are from the exact (float64) step, in float32.

    python benchmarks/precision.py

One matching step (ConvNet-3 width 128, 28x28x1, ipc 10, factor 2, batch_real 64, 2 classes)
run by the loop and by the vmap path in float32, against the loop in float64. In float64 the
two paths agree to rounding (~1e-16), so their float32 difference is float32 error of the
double-backward (a sum of large terms that cancel), not a difference in what they compute.
Writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paper_config, write  # noqa: E402

from idc_ray.config import apply_overrides  # noqa: E402
from idc_ray.data import ClassStore, load_dataset  # noqa: E402
from idc_ray.engine.expert import init_expert  # noqa: E402
from idc_ray.engine.loop import Matcher  # noqa: E402
from idc_ray.engine.plan import build_plan, initial_synset  # noqa: E402

CLASSES = [0, 1]


def step_update(data, path: str, dtype: torch.dtype, metric: str) -> torch.Tensor:
    """The change one step makes to the stored data, computed in ``dtype``."""
    cfg = apply_overrides(paper_config(), {"match.path": path, "match.metric": metric})
    plan = build_plan(cfg, data.spec)
    match, expert = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    matcher = Matcher(match, store, initial_synset(match, store, CLASSES))
    # The engine keeps float32; this measurement casts its state (real batches come from uint8).
    matcher._mean, matcher._std = matcher._mean.to(dtype), matcher._std.to(dtype)
    for cls in matcher.classes.values():
        cls.data = cls.data.detach().to(dtype).requires_grad_(True)
    sample = store.sample
    store.sample = lambda *a, **k: sample(*a, **k).to(dtype)
    before = {c: cls.data.detach().clone() for c, cls in matcher.classes.items()}
    matcher.step(init_expert(expert, 0).to(dtype), 0, 0)
    return torch.cat([(cls.data.detach() - before[c]).double().flatten() for c, cls in matcher.classes.items()])


def main() -> None:
    data = load_dataset("mnist5k")
    results = {}
    for metric in ("mse", "l1"):
        exact = step_update(data, "loop", torch.float64, metric)
        results[metric] = {
            "max_abs_update": exact.abs().max().item(),
            "vmap64_vs_loop64": (step_update(data, "vmap", torch.float64, metric) - exact).abs().max().item(),
            "loop32_vs_loop64": (step_update(data, "loop", torch.float32, metric) - exact).abs().max().item(),
            "lean32_vs_loop64": (step_update(data, "lean", torch.float32, metric) - exact).abs().max().item(),
            "vmap32_vs_loop64": (step_update(data, "vmap", torch.float32, metric) - exact).abs().max().item(),
        }
        print(metric, {k: f"{v:.2e}" for k, v in results[metric].items()})
    print(write("precision", {"setting": "one step, ConvNet-3 width 128, 28x28x1, ipc 10, factor 2, 2 classes",
                              "metrics": results}))


if __name__ == "__main__":
    main()
