"""Convert a dataset into Parquet shards + dataset.json, locally or on S3.

    python jobs/prepare_data.py --dataset cifar10 --data-uri ~/data --output s3://bucket/cifar10
    python jobs/prepare_data.py --dataset speech --data-uri ~/mini_speech_commands --output /data/speech-pq
    python jobs/prepare_data.py --dataset imagenet-subset --class-list my100.txt --size 128 \\
        --data-uri /imagenet --output s3://bucket/in100-128
    python jobs/prepare_data.py --dataset imagefolder --data-uri ~/photos --size 64 --output /data/photos-pq

imagefolder: one sub-folder of PNG/JPEG images per class (or train/ beside val/ or test/), any
sizes, resized and centre-cropped to --size (default 32); without a test folder every 10th image
of a class (sorted names) is held out as test (docs/python.md).

Then condense from it with --dataset cifar10 (or --dataset parquet) --data-uri <output>.
S3 endpoint and credentials: the AWS environment variables, or --storage-options JSON.
Writes OUTPUT/{train,test}-NNNNN.parquet, then OUTPUT/dataset.json last.
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import add_debug_argument, add_storage_arguments, configure_storage, run_main
from idc_ray.data.prepare import SOURCES, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help=f"source dataset: {', '.join(SOURCES)}")
    parser.add_argument("--data-uri", help="the source's root folder (ignored by mnist5k and tiny)")
    parser.add_argument("--output", required=True, metavar="URI", help="output folder: a local path or s3://bucket/prefix")
    add_storage_arguments(parser)
    parser.add_argument("--encoding", default="png", choices=("png", "raw"),
                        help="image column: PNG bytes (default) or raw uint8 lists (CHW)")
    parser.add_argument("--rows-per-shard", type=int, default=10_000, help="rows per Parquet file (default 10000)")
    parser.add_argument("--row-group-size", type=int, default=1_000, help="rows per row group (default 1000)")
    parser.add_argument("--size", type=int, help="ImageNet sources and imagefolder: resize + center-crop side (default 224; imagefolder 32)")
    parser.add_argument("--class-list", metavar="FILE", help="ImageNet sources: class-list file, one wnid per line")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already at --output")
    add_debug_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_storage(args)
    target = prepare(args.dataset, args.data_uri, args.output, size=args.size, class_list=args.class_list,
                     rows_per_shard=args.rows_per_shard, row_group_size=args.row_group_size, encoding=args.encoding,
                     overwrite=args.overwrite)
    print(f"dataset written to {target}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
