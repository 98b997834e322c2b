"""Condense a dataset with IDC and write the stored set.

    python jobs/condense.py --preset mnist5k-demo --output runs/demo
    python jobs/condense.py --preset cifar10 --data-uri ~/data --ipc 10 --factor 2 --output runs/c10

Writes DIR/condensed.pt (stored tensor + labels), DIR/config.yaml and DIR/preview.png.
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import add_config_arguments, config_from_args, run_main
from idc_ray.runner import condense_to


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created; files replaced atomically)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    path = condense_to(cfg, args.output, device=args.device, progress=not args.quiet)
    print(f"condensed set written to {path}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
