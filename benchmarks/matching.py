"""Class-steps per second of the matching step, and the expert-training share.

    python benchmarks/matching.py [--steps 3] [--device cpu|cuda]

ConvNet-3 (width 128), ipc 10, factor 2, batch_real 64, on 28x28x1 (real MNIST) and 32x32x3
(random data of CIFAR's shape: speed does not depend on content). The path measured is the
per-class autograd loop the paper's code uses; it is the only path built so far. The first step
is a warm-up (oneDNN builds kernels per shape) and is reported separately.
Writes benchmarks/results/matching.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paper_config, write  # noqa: E402

from idc_ray.data import ClassStore, RealData, get_spec, load_dataset  # noqa: E402
from idc_ray.engine.expert import ExpertTrainer, init_expert  # noqa: E402
from idc_ray.engine.loop import Matcher, build_specs, initial_synset  # noqa: E402


def cifar_shaped(per_class: int = 500) -> RealData:
    g = torch.Generator().manual_seed(0)
    spec = get_spec("cifar10")
    x = torch.randint(0, 256, (10 * per_class, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(10).repeat_interleave(per_class)
    return RealData(spec, x, y, x[:10], y[:10])


def measure(data: RealData, steps: int, device: torch.device) -> dict:
    cfg = paper_config()  # shapes come from data.spec; the MNIST rules only set lr and augmentation
    match, expert_spec, _ = build_specs(cfg, data.spec)
    store = ClassStore(data.train_x, data.train_y)
    matcher = Matcher(match, store, initial_synset(cfg, store, store.classes), device)
    model = init_expert(expert_spec, 0).to(device)
    trainer = ExpertTrainer(expert_spec, model, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    started = time.perf_counter()
    matcher.step(model, 0, 0)
    sync()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(steps):
        matcher.step(model, 0, i + 1)
    sync()
    match_s = (time.perf_counter() - started) / steps
    trainer.train_inner(store, 0, 0)  # warm-up of the expert's shapes
    started = time.perf_counter()
    for i in range(steps):
        trainer.train_inner(store, 0, i + 1)
    sync()
    expert_s = (time.perf_counter() - started) / steps
    classes = len(store.classes)
    return {
        "paths": {"loop": {"class_steps_per_s": classes / match_s, "step_s": match_s}},
        "chosen_path": "loop",
        "warmup_step_s": warmup,
        "expert_inner_update_s": expert_s,
        "expert_share": expert_s / (expert_s + match_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    mnist = load_dataset("mnist5k")
    results = {
        "setting": "ConvNet-3 width 128, ipc 10, factor 2, batch_real 64, n_data 500",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "28x28x1": measure(mnist, args.steps, device),
        "32x32x3": measure(cifar_shaped(), args.steps, device),
    }
    print(write("matching", results))
    for shape in ("28x28x1", "32x32x3"):
        r = results[shape]
        print(f"{shape}: loop {r['paths']['loop']['class_steps_per_s']:.2f} class-steps/s, "
              f"expert share {100 * r['expert_share']:.0f}%")


if __name__ == "__main__":
    main()
