"""Sweep condensation settings with Ray Tune: every trial condenses and evaluates a whole run.

On a laptop (starts a local Ray, or joins RAY_ADDRESS / --address):
    python jobs/tune.py --space tune_spaces/lr.yaml --preset mnist5k-demo --num-samples 8
On a cluster:
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/tune.py --space tune_spaces/cifar10_ipc10.yaml --data-uri /mnt/data --num-samples 32 \\
            --gpus-per-actor 1 --storage-path s3://bucket/tune --cache-dir /mnt/shared/tune-cache

Writes Tune's results to STORAGE/NAME, each trial's artifact to STORAGE/NAME/artifacts/<trial id>,
then STORAGE/NAME/tune_results.md (trials ranked) and STORAGE/NAME/best_config.yaml, which
`python jobs/condense.py --config best_config.yaml --output DIR` reruns. See docs/tune.md.
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import (UsageError, add_config_arguments, add_storage_arguments, config_from_args, configure_storage,
                         run_main, setup_logging)
from idc_ray.config import ConfigError
from idc_ray.data import get_spec
from idc_ray.tune.space import load_space


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, metavar="YAML", help="search space, e.g. tune_spaces/lr.yaml")
    parser.add_argument("--num-samples", type=int, default=4, help="trials sampled from the space (x grid points; default 4)")
    parser.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                        help="asha: stop weak trials at the stages' reports (default); fifo: run every trial to the end")
    parser.add_argument("--storage-path", default="runs/tune", metavar="DIR",
                        help="Tune storage: a local folder or s3://bucket/prefix (default runs/tune)")
    parser.add_argument("--name", help="experiment name (default: <space>-<date>-<time>)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="cache shared by trials and sweeps (pretrained pools; default STORAGE/cache when local); "
                             "on a multi-node cluster, a folder every node mounts")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the sampling of the space (default 0)")
    add_storage_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no Tune status tables")
    add_config_arguments(parser)
    parser.set_defaults(preset=None)  # the space's preset unless given
    for action in parser._actions:
        if action.dest == "preset":
            action.help = "named preset (default: the space's 'preset')"
    ray_args = parser.add_argument_group("Ray (per trial: one bundle per matcher actor and one for the expert)")
    ray_args.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    ray_args.add_argument("--num-actors", type=int, default=2, help="matcher actors per trial (default 2)")
    ray_args.add_argument("--cpus-per-actor", type=float,
                          help="CPUs per actor (default 1, or an equal share of a cluster too small for one trial)")
    ray_args.add_argument("--gpus-per-actor", type=float, help="GPUs per matcher (default: 1 when the cluster has GPUs, else 0)")
    ray_args.add_argument("--expert-gpus", type=float, help="GPUs for the expert actor (default: --gpus-per-actor)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    space = load_space(args.space)
    args.preset = args.preset or space.preset
    if args.preset is None:
        raise ConfigError(f"tune space '{args.space}' names no preset; pass --preset (e.g. --preset smoke)")
    configure_storage(args)
    cfg = config_from_args(args)
    base = space.base_config(cfg, get_spec(cfg.data.dataset, cfg.data.data_uri))
    if args.num_samples < 1 or args.num_actors < 1:
        raise UsageError(f"--num-samples and --num-actors must be at least 1, got {args.num_samples} and {args.num_actors}")
    if args.cpus_per_actor is not None and args.cpus_per_actor <= 0:
        raise UsageError(f"--cpus-per-actor must be > 0, got {args.cpus_per_actor:g}")

    from idc_ray.distributed.resources import default_resources  # Ray only past the input checks
    from idc_ray.distributed.session import ray_session
    from idc_ray.distributed.sweep import run_sweep

    with ray_session(args.address, log=lambda line: print(line, file=sys.stderr, flush=True)):
        resources = default_resources(args.num_actors, args.cpus_per_actor, args.gpus_per_actor, args.expert_gpus)
        result = run_sweep(space, base, preset=args.preset, num_samples=args.num_samples, scheduler=args.scheduler,
                           storage_path=args.storage_path, name=args.name, cache_dir=args.cache_dir,
                           resources=resources, search_seed=args.search_seed,
                           verbose=0 if args.quiet else 1)
    print(f"ranked results: {result.results_uri}")
    for copy in result.local_copies:
        print(f"local copy: {copy}")
    if result.best_config_uri is None:
        print("error: no trial completed every stage; see the table for their errors", file=sys.stderr)
        return 1
    print(f"best config: {result.best_config_uri} (rerun: python jobs/condense.py --config <it> --output DIR)")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
