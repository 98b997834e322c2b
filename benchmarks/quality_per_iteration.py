"""Quality per inner iteration (issue 11, item 17): how much one outer x N inner iterations raise
the evaluation accuracy over the initialisation, with the published real-data streams
(``match/expert.real_sampling: stream``, the default) and with independent draws per step.

    python benchmarks/quality_per_iteration.py          # the paper's MNIST settings on mnist5k
    python benchmarks/quality_per_iteration.py --preset mnist5k-demo --inner 20 --eval-epochs 200 --eval-repeat 2
    python benchmarks/quality_per_iteration.py --tiny   # seconds, synthetic data: the test suite's run

Defaults: the `mnist` preset on the embedded MNIST split (mnist5k: 4,000 train / 1,000 test):
ipc 1, factor 2, ConvNet-3 width 128, l1, lr_img 1e-4 (1e-5 effective), n_data 500, one outer x
100 inner iterations, seeds 0 1 2; evaluation ConvNet-3, 200 epochs x 3 repeats. Every set (the
initialisation and each condensed set) is evaluated with the same test networks (the evaluation
seed is fixed), so a gain is paired: the spread across condensation seeds is what remains.
Writes benchmarks/results/quality_per_iteration.json with the git state it ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from idc_ray.config import IDCConfig, apply_overrides, load_preset  # noqa: E402
from idc_ray.data import ClassStore, load_dataset  # noqa: E402
from idc_ray.local import condense_local  # noqa: E402
from idc_ray.engine.matcher import stack_stored  # noqa: E402
from idc_ray.engine.plan import build_plan, initial_synset  # noqa: E402
from idc_ray.evaluation.protocol import evaluate_set, form_stored  # noqa: E402

MODES = {
    "stream": {"match.real_sampling": "stream", "expert.real_sampling": "stream"},
    "independent": {"match.real_sampling": "independent", "expert.real_sampling": "independent"},
}
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="condensation seeds")
    p.add_argument("--inner", type=int, default=100, help="inner iterations of the one outer iteration")
    p.add_argument("--preset", default="mnist", choices=("mnist", "mnist5k-demo"),
                   help="mnist: the paper's MNIST settings; mnist5k-demo: width 32, lr_img 1e-2, n_data 256")
    p.add_argument("--width", type=int, help="ConvNet-3 width of the expert and the test model (default: the preset's)")
    p.add_argument("--eval-epochs", type=int, default=200)
    p.add_argument("--eval-repeat", type=int, default=3)
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the test networks, the same for every set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="smoke preset (4 synthetic classes), width 8, 2 inner, 2 epochs")
    p.add_argument("--name", default=None, help="results/<name>.json (quality_per_iteration[_tiny])")
    return p.parse_args(argv)


def base_config(args: argparse.Namespace) -> IDCConfig:
    """The preset on mnist5k at ipc 1 (the smoke preset with --tiny), one outer iteration."""
    cfg = load_preset("smoke" if args.tiny else args.preset)
    cfg = apply_overrides(cfg, {"schedule.outer_iters": 1, "schedule.inner_iters": args.inner})
    if not args.tiny:
        cfg = apply_overrides(cfg, {"data.dataset": "mnist5k", "synset.ipc": 1})
    if args.width:
        cfg = apply_overrides(cfg, {"expert.width": args.width, "eval.width": args.width})
    return cfg


def accuracy(cfg: IDCConfig, data, stored: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> dict:
    """Test accuracy (%) of ConvNet-3 trained on the formed set, evaluation seed fixed."""
    eval_cfg = apply_overrides(cfg, {"schedule.seed": args.eval_seed})
    x, y = form_stored(eval_cfg, data.spec, stored, labels)
    score = evaluate_set(eval_cfg, data, x, y, models=("convnet3",), repeat=args.eval_repeat,
                         epochs=args.eval_epochs, device=args.device)["convnet3"]
    return {"last": 100 * score.mean, "best": 100 * statistics.fmean(score.best),
            "last_runs": [100 * a for a in score.last]}


def git_state() -> dict:
    """Commit, changed files and a digest of the uncommitted diff the measurement ran on."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout

    diff = git("diff", "HEAD")
    return {"commit": git("rev-parse", "HEAD").strip(), "changed": git("status", "--porcelain").splitlines(),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()}


def summary(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.tiny:
        args.width, args.inner, args.eval_epochs, args.eval_repeat = 8, 2, 2, 1
    base = base_config(args)
    data = load_dataset(base.data.dataset)
    store = ClassStore(data.train_x, data.train_y)
    inits: dict[bytes, dict] = {}  # evaluated once per distinct initialisation
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for seed in args.seeds:
        cfg = apply_overrides(base, {"schedule.seed": seed})
        init, labels = stack_stored(initial_synset(build_plan(cfg, data.spec).match, store, store.classes))
        key = hashlib.sha256(init.numpy().tobytes()).digest()
        if key not in inits:
            inits[key] = accuracy(cfg, data, init, labels, args)
            print(f"init (seed {seed}): {inits[key]['last']:.2f}%", flush=True)
        for mode, overrides in MODES.items():
            started = time.perf_counter()
            run_cfg = apply_overrides(cfg, overrides)
            stored, stored_labels, history = condense_local(run_cfg, build_plan(run_cfg, data.spec), store,
                                                            device=args.device)
            seconds = time.perf_counter() - started
            acc = accuracy(cfg, data, stored, stored_labels, args)
            gain = acc["last"] - inits[key]["last"]
            runs[mode].append({"seed": seed, "init": inits[key]["last"], **acc, "gain": gain,
                               "condense_s": seconds, "loss_history": history})
            print(f"seed {seed} {mode}: {acc['last']:.2f}% (gain {gain:+.2f}) in {seconds:.0f}s", flush=True)
    payload = {
        "settings": {"preset": "smoke" if args.tiny else args.preset, "config": base.to_dict(), "seeds": args.seeds, "inner_iters": args.inner,
                     "eval": {"model": "convnet3", "width": base.eval.width, "epochs": args.eval_epochs,
                              "repeat": args.eval_repeat, "seed": args.eval_seed}, "tiny": args.tiny},
        "git": git_state(),
        "modes": {mode: {"runs": r, "gain_over_init": summary([x["gain"] for x in r]),
                         "accuracy": summary([x["last"] for x in r])} for mode, r in runs.items()},
        "gain_per_inner_iteration": {mode: statistics.fmean(x["gain"] for x in r) / args.inner
                                     for mode, r in runs.items()},
    }
    path = write(args.name or ("quality_per_iteration_tiny" if args.tiny else "quality_per_iteration"),
                 payload, args.device)
    for mode, m in payload["modes"].items():
        g = m["gain_over_init"]
        print(f"{mode}: gain {g['mean']:+.2f} +- {g['std']:.2f} (seeds {args.seeds})")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
