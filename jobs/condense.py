"""Condense a dataset with IDC and write the stored set.

On a laptop (starts a local Ray, or pass --backend local for the in-process reference):
    python jobs/condense.py --preset mnist5k-demo --output runs/demo
On a cluster:
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/condense.py --preset cifar10 --data-uri s3://bucket/cifar10 --output s3://bucket/runs/c10

The same as idc_ray.condense(...) from Python (docs/python.md): both call idc_ray.api.run_condensation.

Writes the artifact to DIR (a local path or s3://...): condensed.parquet, config.yaml,
preview.png, preview_formed.png and manifest.json (last), and checkpoints under DIR/checkpoints
every --checkpoint-every outer iterations (--resume continues from the last one).

With expert.pretrained=auto (the imagenet100 preset) the pool of pretrained experts is taken from
--pool-cache (default DIR/cache), keyed by the settings that shape it, or pretrained there first,
one Ray task per seed; the written config.yaml names the pool's folder.
"""

from __future__ import annotations

import argparse
import json
import sys

from idc_ray.api import run_condensation
from idc_ray.backends import backend_for
from idc_ray.cli import (ProgressPrinter, UsageError, add_config_arguments, comma_list, config_from_args,
                         add_storage_arguments, configure_storage, run_main, setup_logging)
from idc_ray.run.backend import RunOptions, stderr_line
from idc_ray.run.curve import EvalEvery, EvaluationsFailed
from idc_ray.run.job import FinalEval, PoolOptions, Run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (created; files replaced atomically)")
    parser.add_argument("--device", default="auto", help="local backend: auto (CUDA when available, else CPU), cpu, cuda[:N]")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_storage_arguments(parser)
    add_config_arguments(parser)
    ray_args = parser.add_argument_group("Ray")
    ray_args.add_argument("--backend", choices=("ray", "local"), default="ray",
                          help="ray: class-sharded matcher actors + expert actor (default); local: one process")
    ray_args.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    ray_args.add_argument("--num-actors", type=int,
                          help="matcher actors (default: the layout planner's choice, docs/scaling.md)")
    ray_args.add_argument("--gpus-per-actor", type=float,
                          help="GPUs per matcher (default: 1 when the cluster has GPUs, 0.75 when an expert actor "
                               "shares its GPU, else 0)")
    ray_args.add_argument("--cpus-per-actor", type=float, help="CPUs per actor (default: an equal share of the cluster)")
    ray_args.add_argument("--expert-gpus", type=float,
                          help="GPUs per expert actor (default: 1 if one is left for each, else a 0.25 share beside "
                               "a matcher on a GPU cluster; 0 puts them on the CPU)")
    ray_args.add_argument("--expert-actors", type=int, metavar="N",
                          help="expert actors computing the expert's re-initialisation cycles side by side: cycle c "
                               "is actor c mod N's (default: the layout planner's choice, docs/scaling.md)")
    ray_args.add_argument("--expert-memory-mb", type=float, default=256.0, metavar="MB",
                          help="object-store memory the expert states computed ahead of the matchers may hold "
                               "(default 256; at least one state ahead)")
    ray_args.add_argument("--spread", action="store_true", help="spread actors over nodes (placement strategy SPREAD)")
    ray_args.add_argument("--system-malloc", action="store_true",
                          help="keep glibc's default allocator settings in the actors (by default they keep freed "
                               "memory for reuse: faster CPU steps, ~20%% more resident memory)")
    run_args = parser.add_argument_group("checkpoints and faults")
    run_args.add_argument("--checkpoint-every", type=int, default=10, metavar="K",
                          help="checkpoint every K outer iterations and at the end (default 10)")
    run_args.add_argument("--resume", action="store_true", help="continue from the last checkpoint under --output")
    run_args.add_argument("--max-restarts", type=int, default=3, help="actor failures survived before the job fails (default 3)")
    run_args.add_argument("--inject-fault", action="append", default=[], metavar="JSON",
                          help='testing aid: make matcher ACTOR raise at a step, e.g. \'{"actor": 1, "outer": 1, '
                               '"inner": 0}\', or the --eval-every evaluation of an outer iteration: \'{"eval": 2}\'')
    pool_args = parser.add_argument_group("pretrained expert pool (expert.pretrained=auto, e.g. the imagenet100 preset)")
    pool_args.add_argument("--pool-cache", metavar="DIR",
                           help="cache of pools, <DIR>/pools/<key> by the settings that shape a pool (default: "
                                "OUTPUT/cache); a missing pool is pretrained first, one Ray task per seed. Share it "
                                "between runs (and with Tune's cache); on several nodes it must be a shared mount")
    pool_args.add_argument("--pool-seeds", type=int, metavar="N", help="networks in the pool (default 10, as published)")
    eval_args = parser.add_argument_group("evaluation of the finished set (the paper's protocol, as jobs/evaluate.py)")
    eval_args.add_argument("--eval-models", metavar="M1,M2",
                           help="comma-separated test models to train on the finished set, e.g. convnet3,resnet10; "
                                "one Ray task per (model, repeat); report next to the artifact, accuracy in the manifest")
    eval_args.add_argument("--eval-repeat", type=int, help="runs per model (default: eval.repeat, 3)")
    eval_args.add_argument("--eval-epochs", type=int, help="training epochs (default: the dataset rule)")
    eval_args.add_argument("--eval-every", type=int, metavar="K",
                           help="also evaluate the stored set (with --eval-models) at outer iteration 0 and every K "
                                "while the job runs: CPU Ray tasks beside the matchers; curve.png and eval_curve.json "
                                "in the output, the idc_eval_accuracy{model,iteration} gauge, metrics.eval_curve")
    eval_args.add_argument("--strict-eval", action="store_true",
                           help="exit 1 at the end when an --eval-every evaluation failed (default: the failed "
                                "point is recorded with a warning and the job exits 0)")
    return parser.parse_args(argv)


def final_eval(args: argparse.Namespace) -> FinalEval | None:
    if args.eval_models is None:
        if args.eval_repeat is not None or args.eval_epochs is not None:
            raise UsageError("--eval-repeat/--eval-epochs need --eval-models, e.g. --eval-models convnet3")
        return None
    models = comma_list(args.eval_models)
    if not models:
        raise UsageError("--eval-models needs at least one model name, e.g. convnet3,resnet10")
    for flag, value in (("--eval-repeat", args.eval_repeat), ("--eval-epochs", args.eval_epochs)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    return FinalEval(models, args.eval_repeat, args.eval_epochs)


def eval_every(args: argparse.Namespace, final: FinalEval | None) -> EvalEvery | None:
    if args.eval_every is None:
        return None
    if final is None:
        raise UsageError("--eval-every needs --eval-models, e.g. --eval-every 5 --eval-models convnet3")
    fail_at = tuple(int(f["eval"]) for f in faults(args) if "eval" in f)
    return EvalEvery(args.eval_every, final.models, final.repeat, final.epochs, strict=args.strict_eval,
                     fail_at=fail_at)


def faults(args: argparse.Namespace) -> tuple[dict, ...]:
    """The --inject-fault values: {"actor", "outer", "inner"[, "repeat"]} or {"eval"}."""
    try:
        found = tuple(json.loads(f) for f in args.inject_fault)
    except json.JSONDecodeError as e:
        raise UsageError(f"--inject-fault must be JSON like '{{\"actor\": 0, \"outer\": 1, \"inner\": 0}}' ({e.msg})") from None
    for f in found:
        if not isinstance(f, dict) or not ({"actor", "outer", "inner"} <= set(f) or set(f) == {"eval"}):
            raise UsageError(f"--inject-fault {json.dumps(f)} is neither {{\"actor\", \"outer\", \"inner\"}} nor "
                             "{\"eval\": OUTER}")
    return found


def run_options(args: argparse.Namespace) -> RunOptions:
    if args.checkpoint_every < 1 or args.max_restarts < 0:
        raise UsageError("--checkpoint-every must be >= 1 and --max-restarts >= 0")
    if (args.expert_actors is not None and args.expert_actors < 1) or args.expert_memory_mb <= 0:
        raise UsageError("--expert-actors must be >= 1 and --expert-memory-mb > 0")
    return RunOptions(backend=args.backend, num_actors=args.num_actors, gpus_per_actor=args.gpus_per_actor,
                      cpus_per_actor=args.cpus_per_actor, expert_gpus=args.expert_gpus,
                      expert_actors=args.expert_actors, expert_memory_mb=args.expert_memory_mb,
                      checkpoint_every=args.checkpoint_every, resume=args.resume, max_restarts=args.max_restarts,
                      spread=args.spread, keep_freed_memory=not args.system_malloc,
                      faults=tuple(f for f in faults(args) if "actor" in f))


def pool_options(args: argparse.Namespace) -> PoolOptions | None:
    if args.pool_cache is None and args.pool_seeds is None:
        return None
    return PoolOptions(args.pool_cache, 10 if args.pool_seeds is None else args.pool_seeds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    configure_storage(args)
    cfg = config_from_args(args)
    options = run_options(args)
    final = final_eval(args)
    backend = backend_for(options, address=args.address, device=args.device, log=None if args.quiet else stderr_line)
    printer = None if args.quiet else ProgressPrinter(cfg.schedule.outer_iters, cfg.schedule.inner_iters)
    try:
        condensed = run_condensation(Run(cfg, args.output, backend, options, on_progress=printer, final_eval=final,
                                         pool=pool_options(args), eval_every=eval_every(args, final)))
    except EvaluationsFailed as e:  # --strict-eval: the set is written, the run is not clean
        print(f"condensed set written to {e.path}")
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"condensed set written to {condensed.manifest_uri}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
