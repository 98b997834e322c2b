"""One inner iteration's parts at each preset's real shapes: the matching of all classes (one
matcher step on the default path), the expert's update on real data, and the transfer of one
expert state through the object store; the expert's share says how much more expert actors
(``--expert-actors``) can gain.

    python benchmarks/expert_share.py [--presets mnist cifar10 ...] [--device cpu|cuda] [--max-classes 10]

Random pixels of each preset's shape (speed does not depend on content). Presets with more than
``--max-classes`` classes (CIFAR-100, ImageNet-100) are timed on that many classes and the
matching scaled linearly to all of them (it is one independent update per class); the expert's
update does not depend on the class count and is timed as it is (its classifier has every class).
The pretrained pool of ImageNet-100 is replaced by a fresh network (same shapes, same time).
Each part: one warm-up, then the median of ``--repeat`` timings (idc_ray/engine/probe.py, the
layout planner's probe). Writes
benchmarks/results/expert_share[_<device>].json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.data import get_spec  # noqa: E402
from idc_ray.distributed.session import ray_session  # noqa: E402
from idc_ray.engine.expert import new_model  # noqa: E402
from idc_ray.engine.matcher import resolve_path  # noqa: E402
from idc_ray.engine.plan import build_plan  # noqa: E402
from idc_ray.engine.probe import probe_parts  # noqa: E402

PRESETS = ("mnist", "fashion", "svhn", "cifar10", "cifar100", "imagenet10", "imagenet100", "speech")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-classes", type=int, default=10, help="classes timed per preset (the rest scaled linearly)")
    p.add_argument("--repeat", type=int, default=3, help="timings per part after a warm-up (the median is kept)")
    p.add_argument("--name", help="results/<name>.json (default expert_share, expert_share_cuda on a GPU)")
    return p.parse_args(argv)


@ray.remote(num_cpus=0)
def load_state(state: dict, model: torch.nn.Module) -> int:
    """What a matcher does with a state: read it from the object store into its network."""
    model.load_state_dict(state, strict=bool(state))  # the empty state: the round trip's own cost
    return len(state)


def transfer_seconds(plan, repeat: int) -> float:
    """``ray.put`` of one state (CPU tensors, as the expert actor returns it) and its load into a
    network in another worker, minus the same round trip with an empty state."""
    model = new_model(plan.expert, 0, 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model_ref = ray.put(model)

    def round_trip(payload: dict) -> float:
        call = lambda: ray.get(load_state.remote(ray.put(payload), model_ref))
        call()  # warm-up: the worker and its imports
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    return max(0.0, round_trip(state) - round_trip({}))


def measure(preset: str, device: torch.device, max_classes: int, repeat: int) -> dict:
    cfg = load_preset(preset)
    cfg = apply_overrides(cfg, {"expert.pretrained": None}) if cfg.expert.pretrained else cfg
    spec = get_spec(cfg.data.dataset, cfg.data.data_uri)
    plan = build_plan(cfg, spec)
    probed = probe_parts(plan, spec, device, max_classes=max_classes, repeat=repeat)
    matching, update, timed = probed.matching_s, probed.expert_s, probed.classes_timed
    expert = new_model(plan.expert, 0, 0)
    transfer = transfer_seconds(plan, repeat)
    print(f"{preset}: matching {matching:.3f}s, expert {update:.3f}s, transfer {transfer * 1000:.1f}ms", flush=True)
    return {"preset": preset, "classes": spec.num_classes, "classes_timed": timed, "shape": [spec.channels, spec.size],
            "model": plan.expert.model, "ipc": cfg.synset.ipc, "factor": cfg.synset.factor,
            "batch_real": plan.match.batch_real, "n_data": plan.expert.n_data, "path": resolve_path(plan.match.path, device),
            "matching_all_classes_s": matching, "expert_update_s": update, "state_transfer_s": transfer,
            "expert_share": update / (matching + update),
            "state_mb": sum(t.numel() * t.element_size() for t in expert.state_dict().values()) / 2**20}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    with ray_session(None):
        rows = [measure(p, device, args.max_classes, args.repeat) for p in args.presets]
    name = args.name or ("expert_share" if device.type == "cpu" else f"expert_share_{device.type}")
    write(name, {"parts": rows, "torch_threads": torch.get_num_threads(), "max_classes": args.max_classes,
                 "repeat": args.repeat, "note": "random pixels; matching scaled linearly from classes_timed"}, device)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
