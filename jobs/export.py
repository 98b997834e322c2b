"""Export a condensed set's formed images for other tools: DD-Ranking (torch tensor file, or an
image folder), torchvision's ImageFolder, DC-BENCH's distilled_results layout.

    python jobs/export.py --format torch --condensed runs/mnist --output exports/mnist-torch
    python jobs/export.py --format imagefolder --condensed s3://bucket/runs/c10 --output exports/c10-png
    python jobs/export.py --format dcbench --condensed runs/mnist --output dc_benchmark_root

OUTPUT must be new or empty; export.json inside says how many stored and formed images per class
the export holds (compare methods at equal storage, not equal images). Details: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import add_debug_argument, add_storage_arguments, configure_storage, run_main
from idc_ray.export import FORMATS, MANIFEST, export


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--condensed", required=True, metavar="URI", help="artifact folder/URI of jobs/condense.py")
    p.add_argument("--output", required=True, metavar="DIR", help="a new or empty local folder")
    add_storage_arguments(p)
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_storage(args)
    doc = export(args.condensed, args.format, args.output)
    print(f"{args.format}: {sum(doc['formed_per_class'].values())} formed images "
          f"({doc['stored_per_class']} stored per class) written to {args.output} ({MANIFEST} last)")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
