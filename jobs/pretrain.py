"""Pre-train the pool of expert networks that `expert.pretrained` points at.

    python jobs/pretrain.py --preset imagenet100 --data-uri DIR --seeds 10 --epochs 5 --output pretrained/imagenet100

Writes OUTPUT/seed{s}/epoch{e}.pt for every seed and epoch 0..EPOCHS (epoch 0 = initial weights).
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import UsageError, add_config_arguments, config_from_args, run_main
from idc_ray.data import load_dataset
from idc_ray.pretrain import pretrain_pool
from idc_ray.device import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="DIR", help="pool folder")
    parser.add_argument("--seeds", type=int, default=10, help="networks in the pool (default 10)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per network (default 5)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 0:
        raise UsageError(f"--seeds must be >= 1 and --epochs >= 0, got {args.seeds} and {args.epochs}")
    cfg = config_from_args(args)
    data = load_dataset(cfg.data.dataset, cfg.data.data_uri)
    report = lambda s, e, loss: print(f"seed {s} epoch {e}/{args.epochs} loss {loss:.4f}", flush=True)
    paths = pretrain_pool(cfg, data, args.output, seeds=args.seeds, epochs=args.epochs,
                          device=resolve_device(args.device), on_epoch=report)
    print(f"pool of {args.seeds} networks x {args.epochs + 1} checkpoints written to {args.output} ({len(paths)} files)")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
