"""Representative real batches against uniform ones (issue 13, part 3): accuracy at equal wall time.

    python benchmarks/representative_sampling.py                      # mnist5k-demo at ipc 1 and 10
    python benchmarks/representative_sampling.py --ipc 1 --eval-every 10 --name representative_sampling_ipc1
    python benchmarks/representative_sampling.py --tiny               # seconds, synthetic data

Each ipc and each ``match.sampling`` (uniform, the default, and representative: DREAM's k-means
picks, engine/representative.py) condenses the demo preset (embedded MNIST, 20 outer x 10 inner
iterations, ConvNet-3 width 32) in this process, keeping the stored set at the initialisation
and every ``--eval-every`` outer iterations with the condensation's own wall time so far (the
evaluations are not counted). Every kept set is evaluated afterwards with the preset's protocol
(ConvNet-3, 300 epochs, 3 repeats, the same test networks for every set), giving one accuracy
curve per mode against wall time. Accuracy at equal wall time: at the shorter run's total time,
each mode's latest kept set by then. Writes benchmarks/results/<name>.json.

The condensation is the job's one in-process loop (idc_ray/local.py condense_local) with the stored set kept
through its snapshot hook, so the evaluations are outside the timed condensation;
``jobs/condense.py --eval-every`` draws the same curves through the job while it runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402
from quality_per_iteration import git_state  # noqa: E402

from idc_ray.config import IDCConfig, apply_overrides, load_preset  # noqa: E402
from idc_ray.data import ClassStore, RealData, load_dataset  # noqa: E402
from idc_ray.local import condense_local  # noqa: E402
from idc_ray.run.hooks import Snapshots  # noqa: E402
from idc_ray.engine.matcher import stack_stored  # noqa: E402
from idc_ray.engine.plan import build_plan  # noqa: E402
from idc_ray.evaluation.protocol import evaluate_set, form_stored  # noqa: E402

MODES = ("uniform", "representative")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--outer", type=int, help="outer iterations (default: the preset's)")
    p.add_argument("--eval-every", type=int, default=5, help="keep the stored set every K outer iterations")
    p.add_argument("--eval-epochs", type=int, help="default: the preset's")
    p.add_argument("--eval-repeat", type=int, default=3)
    p.add_argument("--refresh", type=int, default=10, help="match.sampling_refresh of the representative runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="smoke preset (4 synthetic classes), width 8, 2x2 iterations")
    p.add_argument("--name", default=None, help="results/<name>.json (representative_sampling[_tiny])")
    return p.parse_args(argv)


def base_config(args: argparse.Namespace, ipc: int) -> IDCConfig:
    if args.tiny:
        return apply_overrides(load_preset("smoke"), {"expert.width": 8, "eval.width": 8, "synset.ipc": ipc})
    cfg = apply_overrides(load_preset("mnist5k-demo"), {"synset.ipc": ipc})
    return apply_overrides(cfg, {"schedule.outer_iters": args.outer}) if args.outer else cfg


def condense_with_checkpoints(cfg: IDCConfig, data: RealData, every: int, device: str) -> list[dict]:
    """The stored set at outer 0 and every ``every`` outer iterations (and the last), each with
    the seconds of condensation before it (the job's one in-process loop, its --eval-every hook)."""
    kept: list[dict] = []

    def take(outer: int, states: dict, shared: dict | None) -> None:
        kept.append({"outer": outer, "seconds": time.perf_counter(),
                     "stored": stack_stored({c: s["data"] for c, s in states.items()})})

    store = ClassStore(data.train_x, data.train_y)
    condense_local(cfg, build_plan(cfg, data.spec), store, device=device, snapshots=Snapshots(every, take))
    start = kept[0]["seconds"]
    return [{**k, "seconds": k["seconds"] - start} for k in kept]


def accuracy(cfg: IDCConfig, data: RealData, stored, args: argparse.Namespace) -> dict:
    """ConvNet-3 test accuracy (%) over the repeats; the same test networks for every set."""
    x, y = form_stored(cfg, data.spec, *stored)
    score = evaluate_set(cfg, data, x, y, models=("convnet3",), repeat=args.eval_repeat,
                         epochs=args.eval_epochs, device=args.device)["convnet3"]
    runs = [100 * a for a in score.last]
    return {"mean": statistics.fmean(runs), "std": statistics.stdev(runs) if len(runs) > 1 else 0.0, "runs": runs}


def at_time(curve: list[dict], seconds: float) -> dict:
    """The latest point of ``curve`` kept at or before ``seconds`` of condensation."""
    return [p for p in curve if p["seconds"] <= seconds + 1e-9][-1]


def measure_ipc(args: argparse.Namespace, data: RealData, ipc: int) -> dict:
    base = base_config(args, ipc)
    curves: dict[str, list[dict]] = {}
    init = None
    for mode in MODES:
        cfg = apply_overrides(base, {"match.sampling": mode, "match.sampling_refresh": args.refresh})
        kept = condense_with_checkpoints(cfg, data, args.eval_every, args.device)
        curve = []
        for point in kept:
            if point["outer"] == 0 and init is not None:
                acc = init  # the same initialisation for both modes, evaluated once
            else:
                acc = accuracy(cfg, data, point["stored"], args)
            init = init or acc
            curve.append({"outer": point["outer"], "seconds": point["seconds"], "accuracy": acc})
            print(f"ipc {ipc} {mode} outer {point['outer']:3d} at {point['seconds']:6.1f}s: "
                  f"{acc['mean']:.2f} +- {acc['std']:.2f}%", flush=True)
        curves[mode] = curve
    budget = min(c[-1]["seconds"] for c in curves.values())
    return {
        "config": base.to_dict(), "initialisation": init, "curves": curves,
        "equal_wall_time": {"seconds": budget, **{m: at_time(c, budget) for m, c in curves.items()}},
        "final": {m: c[-1] for m, c in curves.items()},
        "time_per_outer_s": {m: c[-1]["seconds"] / c[-1]["outer"] for m, c in curves.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.tiny:
        args.ipc, args.eval_every, args.eval_epochs, args.eval_repeat, args.refresh = [1], 1, 2, 2, 1
    data = load_dataset("tiny" if args.tiny else "mnist5k")
    results = {str(ipc): measure_ipc(args, data, ipc) for ipc in args.ipc}
    payload = {
        "settings": {"preset": "smoke" if args.tiny else "mnist5k-demo", "ipc": args.ipc, "outer": args.outer,
                     "eval_every": args.eval_every, "eval_epochs": args.eval_epochs, "eval_repeat": args.eval_repeat,
                     "refresh": args.refresh, "tiny": args.tiny},
        "git": git_state(),
        "ipc": results,
    }
    path = write(args.name or ("representative_sampling_tiny" if args.tiny else "representative_sampling"),
                 payload, args.device)
    for ipc, r in results.items():
        eq = r["equal_wall_time"]
        line = ", ".join(f"{m} {eq[m]['accuracy']['mean']:.2f}% (outer {eq[m]['outer']})" for m in MODES)
        print(f"ipc {ipc}: init {r['initialisation']['mean']:.2f}%; at {eq['seconds']:.0f}s: {line}")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
