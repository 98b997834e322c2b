"""Evaluate condensed sets and baselines with the paper's protocol: train each test model from
scratch on the formed set, --repeat times, and test it on the real test split.

A condensed set (report written into its folder unless --output):
    python jobs/evaluate.py --condensed runs/mnist --models convnet3,resnet10 --repeat 3
Baselines (random / herding real images) with the same recipe:
    python jobs/evaluate.py --dataset mnist5k --preset mnist5k-demo --baseline random herding --ipc 1 10 \\
        --models convnet3 --output runs/baselines
Several sets (accuracy vs ipc in curves.png), a plain tensor file made elsewhere, on a cluster:
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/evaluate.py \\
        --condensed s3://bucket/runs/c10-ipc10 s3://bucket/runs/c10-ipc50 dsa_c10.pt --output s3://bucket/eval

Every (set, model, repeat) is a Ray task (one GPU each when the cluster has GPUs, else a CPU
share), retried when its worker dies. Writes results.json, results.md and curves.png (per set
under OUTPUT/<label>/ plus summary.json when several sets are given).
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.backends import backend_for
from idc_ray.cli import add_debug_argument, add_storage_arguments, comma_list, configure_storage, run_main
from idc_ray.device import resolve_device
from idc_ray.run.backend import RunOptions, stderr_line
from idc_ray.evaluation.baselines import BASELINES
from idc_ray.evaluation.assembly import EvalOptions, SetsRequest, build_sets
from idc_ray.evaluation.report import report_folder, table, write_reports
from idc_ray.evaluation.run import evaluate_sets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sets = p.add_argument_group("what to evaluate")
    sets.add_argument("--condensed", nargs="+", default=[], metavar="URI",
                      help="artifact folders/URIs of jobs/condense.py, or torch files with 'data' and 'labels' "
                           "(a dict, or the published code's data.pt list [data, labels])")
    sets.add_argument("--baseline", nargs="+", default=[], choices=BASELINES,
                      help="coreset baselines of real images (random, herding at each --ipc); full: the whole training "
                           "split, cached per (dataset, model, recipe, seed) for the next report")
    sets.add_argument("--ipc", nargs="+", type=int, default=[], metavar="N", help="images per class of each baseline")
    sets.add_argument("--dataset", help="dataset of baselines and plain files (default: the first artifact's)")
    sets.add_argument("--data-uri", help="the real data's root (also replaces the artifacts' recorded data_uri)")
    sets.add_argument("--factor", type=int, help="plain files: uniform formation factor (default 1, identity)")
    sets.add_argument("--normalized", action="store_true", help="plain files: data normalised with the dataset mean/std")
    sets.add_argument("--herding-net", metavar="PATH", help="herding: load this feature network instead of training one")
    sets.add_argument("--herding-epochs", type=int, default=20, help="herding: epochs of the feature network (default 20)")
    proto = p.add_argument_group("protocol (defaults: each set's config, the paper's settings)")
    proto.add_argument("--models", help="comma-separated test models, e.g. convnet3,resnet10")
    proto.add_argument("--repeat", type=int, help="runs per model (default: eval.repeat, 3)")
    proto.add_argument("--epochs", type=int, help="training epochs (default: the dataset rule, 1000 for small datasets)")
    proto.add_argument("--fixed-compute", action="store_true", help="divide epochs by formed samples per stored one (f^2)")
    proto.add_argument("--eval-every", type=int, help="also test every N epochs for the curves (default epochs/20; 0: "
                       "only at the published 1/4, 1/2, 3/4, end)")
    proto.add_argument("--labels", nargs="+", default=["hard"], metavar="hard|soft",
                       help="hard: the class labels (default); soft: the full-data arm's model of the same architecture "
                            "gives each augmented batch its soft targets (KL at --temperature); both: every set twice")
    proto.add_argument("--temperature", type=float, default=4.0, help="soft labels: the KL temperature (default 4)")
    proto.add_argument("--scores", action="store_true",
                       help="add the arms the DD-Ranking-style scores need: random at each set's ipc, full data, hard "
                            "labels and no augmentation (docs/evaluation.md)")
    proto.add_argument("--seed", type=int, help="seed of the test networks and the random baseline (schedule.seed)")
    proto.add_argument("--preset", help="config of baselines and plain files (default: the first artifact's, else the "
                                        "preset named like the dataset, else the paper's defaults)")
    proto.add_argument("--config", metavar="FILE", help="YAML config of baselines and plain files, over --preset")
    proto.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field of every set, e.g. --set eval.width=32 (repeatable)")
    run = p.add_argument_group("where and how")
    run.add_argument("--output", metavar="DIR", help="report folder (default: the single artifact's own folder)")
    run.add_argument("--backend", choices=("ray", "local"), default="ray",
                     help="ray: one task per (set, model, repeat) (default); local: one after another in this process")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    run.add_argument("--num-cpus-per-task", type=float, help="CPUs per task (default: an equal share, 1 with GPUs)")
    run.add_argument("--num-gpus-per-task", type=float, help="GPUs per task (default: 1 when the cluster has GPUs)")
    run.add_argument("--max-retries", type=int, default=3, help="re-runs of a task whose worker died (default 3)")
    run.add_argument("--device", default="auto", help="local backend and the herding network: auto, cpu, cuda[:N]")
    add_storage_arguments(run)
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = comma_list(args.models) if args.models is not None else None
    options = EvalOptions(models=models, repeat=args.repeat, epochs=args.epochs, fixed_compute=args.fixed_compute,
                          eval_every=args.eval_every, seed=args.seed, overrides=tuple(args.set),
                          labels=tuple(dict.fromkeys(args.labels)), temperature=args.temperature, scores=args.scores)
    request = SetsRequest(condensed=tuple(args.condensed), baselines=tuple(dict.fromkeys(args.baseline)),
                          ipcs=tuple(dict.fromkeys(args.ipc)), dataset=args.dataset, data_uri=args.data_uri,
                          preset=args.preset, config=args.config, factor=args.factor, normalized=args.normalized,
                          herding_net=args.herding_net, herding_epochs=args.herding_epochs)
    options.check()
    request.check()
    configure_storage(args)
    more_arms = options.scores or options.labels != ("hard",)  # several sets: --output needed
    folder = report_folder(request.count + more_arms, args.output, request.condensed)
    backend = backend_for(RunOptions(backend=args.backend), address=args.address, device=args.device, log=stderr_line)
    executor = backend.executor(args.num_cpus_per_task, args.num_gpus_per_task, args.max_retries)
    sets, data, extra = build_sets(request, options, device=str(resolve_device(args.device)), log=stderr_line)
    with backend.session():
        results = evaluate_sets(sets, data, options, executor=executor, log=stderr_line)
    index = write_reports(folder, results, extra)
    print(table(results))
    print(f"\nreport written to {index}")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
