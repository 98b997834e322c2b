"""The `make demo` run: condense the embedded MNIST subset at ipc 1 and ipc 10 and compare the
condensed set with its own initialisation and with random real images (ConvNet-3, same recipe).

    python jobs/demo.py --output runs/demo

Writes OUTPUT/ipc1/ and OUTPUT/ipc10/ (condensed.pt, config.yaml, preview.png) and
OUTPUT/results.md / results.json, and prints the results table.
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import add_config_arguments, config_from_args, run_main
from idc_ray.demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--ipc10-repeat", type=int, default=1,
                        help="evaluation runs per set at ipc 10 (default 1, to fit the demo's time budget)")
    add_config_arguments(parser, default_preset="mnist5k-demo")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    print(run_demo(cfg, args.output, device=args.device, ipc10_repeat=args.ipc10_repeat))
    print(f"\nstored sets, previews and results in {args.output}/")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
