"""How far the matching paths are from the exact (float64) step, in float32.

    python benchmarks/precision.py [--tiny]

One matching step (ConvNet-3 width 128, 28x28x1, ipc 10, factor 2, batch_real 64, 2 classes)
run by the loop and by the vmap path in float32, against the loop in float64. In float64 the
two paths agree to rounding (~1e-16), so their float32 difference is float32 error of the
double-backward (a sum of large terms that cancel), not a difference in what they compute.
Writes benchmarks/results/precision.json (``--tiny``: width 8, ipc 2, batch_real 16, seconds,
the test suite's run; precision_tiny.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paper_config, write  # noqa: E402

from idc_ray.config import apply_overrides  # noqa: E402
from idc_ray.data import ClassStore, load_dataset  # noqa: E402
from idc_ray.engine.expert import init_expert  # noqa: E402
from idc_ray.engine.matcher import Matcher  # noqa: E402
from idc_ray.engine.plan import build_plan, initial_synset  # noqa: E402

CLASSES = [0, 1]
TINY = {"expert.width": 8, "synset.ipc": 2, "match.batch_real": 16}


def step_update(data, path: str, dtype: torch.dtype, metric: str, tiny: bool = False) -> torch.Tensor:
    """The change one step makes to the stored data, computed in ``dtype``."""
    cfg = apply_overrides(paper_config(), {**(TINY if tiny else {}), "match.path": path, "match.metric": metric})
    plan = build_plan(cfg, data.spec)
    match, expert = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    matcher = Matcher(match, store, initial_synset(match, store, CLASSES))
    # The engine keeps float32; this measurement casts its state (real batches come from uint8).
    matcher.normalize.mean, matcher.normalize.std = matcher.normalize.mean.to(dtype), matcher.normalize.std.to(dtype)
    for cls in matcher.classes.values():
        cls.data = cls.data.detach().to(dtype).requires_grad_(True)
    sample = store.sample
    store.sample = lambda *a, **k: sample(*a, **k).to(dtype)
    before = {c: cls.data.detach().clone() for c, cls in matcher.classes.items()}
    matcher.step(init_expert(expert, 0).to(dtype), 0, 0)
    return torch.cat([(cls.data.detach() - before[c]).double().flatten() for c, cls in matcher.classes.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="width 8, ipc 2, batch_real 16 (seconds; the tests' run)")
    tiny = parser.parse_args().tiny
    data = load_dataset("mnist5k")
    results = {}
    for metric in ("mse", "l1"):
        update = {(path, bits): step_update(data, path, dtype, metric, tiny)
                  for path, bits, dtype in (("loop", 64, torch.float64), ("vmap", 64, torch.float64),
                                            ("loop", 32, torch.float32), ("lean", 32, torch.float32),
                                            ("vmap", 32, torch.float32))}
        diff = lambda a, b: (update[a] - update[b]).abs().max().item()  # noqa: E731
        exact = ("loop", 64)
        results[metric] = {
            "max_abs_update": update[exact].abs().max().item(),
            "vmap64_vs_loop64": diff(("vmap", 64), exact),
            "loop32_vs_loop64": diff(("loop", 32), exact),
            "lean32_vs_loop64": diff(("lean", 32), exact),
            "vmap32_vs_loop64": diff(("vmap", 32), exact),
            "lean32_vs_loop32": diff(("lean", 32), ("loop", 32)),  # 0: lean is the loop, bit for bit
        }
        print(metric, {k: f"{v:.2e}" for k, v in results[metric].items()})
    setting = "width 8, ipc 2, batch_real 16" if tiny else "width 128, ipc 10, batch_real 64"
    print(write("precision_tiny" if tiny else "precision",
                {"setting": f"one step, ConvNet-3 {setting}, 28x28x1, factor 2, 2 classes", "metrics": results}))


if __name__ == "__main__":
    main()
