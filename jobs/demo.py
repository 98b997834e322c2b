"""The `make demo` run: condense the embedded MNIST subset at ipc 1 and ipc 10 on a local Ray
(matcher actors + expert actor) and compare the condensed set with its own initialisation and
with random real images (ConvNet-3, same recipe).

    python jobs/demo.py --output runs/demo

Writes OUTPUT/ipc1/ and OUTPUT/ipc10/ (condensed.parquet, manifest.json, config.yaml, previews) and
OUTPUT/results.md / results.json, and prints the results table.
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import UsageError, add_config_arguments, config_from_args, run_main, setup_logging
from idc_ray.demo import run_demo
from idc_ray.run.backend import RunOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--ipc10-repeat", type=int, default=1,
                        help="evaluation runs per set at ipc 10 (default 1, to fit the demo's time budget)")
    parser.add_argument("--backend", choices=("ray", "local"), default="ray",
                        help="ray: matcher actors + expert actor on a local (or --address) Ray (default); local: one process")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    add_config_arguments(parser, default_preset="mnist5k-demo")
    args = parser.parse_args(argv)
    if args.ipc10_repeat < 1:
        raise UsageError(f"--ipc10-repeat must be at least 1, got {args.ipc10_repeat}")
    setup_logging()
    cfg = config_from_args(args)
    options = RunOptions(backend=args.backend, checkpoint_every=5)
    print(run_demo(cfg, args.output, device=args.device, ipc10_repeat=args.ipc10_repeat, options=options,
                   address=args.address))
    print(f"\nstored sets, previews and results in {args.output}/")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
