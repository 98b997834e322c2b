"""Continual learning with condensed exemplars (paper section 5.3, appendix C.3).

The classes arrive in stages; each stage's exemplars (IDC condensed, Herding or Random real
images, or a set made elsewhere) are made from that stage's real data only, in parallel Ray tasks,
and cached under OUTPUT so a rerun resumes. A learner then trains stage after stage purely on
the memory so far, from the previous stage's weights (head grown for the new classes, LwF
distillation on the old classes' logits); after each stage it is tested on every class seen.

CPU proof (embedded MNIST, 5 stages of 2 classes, about 5 minutes on 2 idle cores; docs/continual.md):
    python jobs/continual.py --preset mnist5k-continual --output runs/continual
The paper's CIFAR-100 setting on a GPU cluster:
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/continual.py \\
        --preset cifar100-continual --data-uri /data --output /shared/c100-continual
Task-incremental SVHN -> MNIST -> USPS (one head per task, tested with task identity):
    python jobs/continual.py --preset digits-task --data-uri /data --output runs/digits

Writes OUTPUT/results.json, results.md (accuracy per stage per method) and continual.png.
Bad input (memory budget below 1, more stages than classes, an exemplar file of the wrong
shape, ...) prints one line and exits with 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys

from idc_ray.cli import UsageError, comma_list, run_main, setup_logging
from idc_ray.backends import backend_for
from idc_ray.run.backend import RunOptions, stderr_line
from idc_ray.continual.settings import load_preset, preset_names, with_values
from idc_ray.continual.job import base_config, run_continual
from idc_ray.continual.report import markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("setting (defaults: the preset)")
    s.add_argument("--preset", default="mnist5k-continual", help=f"continual preset: {', '.join(preset_names())}")
    s.add_argument("--base", help="condensation preset of the exemplars and the augmentation (idc_ray/presets)")
    s.add_argument("--scenario", choices=("class", "task"), help="class-incremental or task-incremental")
    s.add_argument("--tasks", type=comma_list, help="task scenario: datasets in order, e.g. svhn,mnist,usps")
    s.add_argument("--stages", type=int, help="class scenario: number of stages (classes split evenly, in order)")
    s.add_argument("--memory-ipc", type=int, help="stored images per class, every method (paper: 20)")
    s.add_argument("--exemplars", type=comma_list, help="comma-separated: idc, herding, random, none (no memory: "
                   "each stage trains on Random's picks of its new classes only), NAME=FILE (a condensed set of the "
                   "whole dataset made elsewhere: artifact folder or torch file)")
    s.add_argument("--models", type=comma_list, help="learner networks, e.g. convnet3,resnet10")
    s.add_argument("--repeat", type=int, help="learners per (method, model); mean and std over them")
    s.add_argument("--epochs", type=int, help="epochs per stage (paper: 1000; lr x0.2 at 3/5 and 4/5)")
    s.add_argument("--lwf-weight", type=float, help="weight of the LwF distillation term (default 1; 0: off)")
    s.add_argument("--lwf-temperature", type=float, help="temperature of LwF's soft targets (default 2)")
    s.add_argument("--herding-epochs", type=int, help="epochs of herding's feature network per stage")
    s.add_argument("--width", type=int, help="ConvNet width of the learners (default: the base preset's eval.width)")
    s.add_argument("--data-uri", help="real data root (task scenario: one folder with every dataset's files)")
    s.add_argument("--seed", type=int, help="seed of every draw (schedule.seed)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the base condensation config, e.g. --set schedule.outer_iters=50")
    r = p.add_argument_group("where and how")
    r.add_argument("--output", required=True, metavar="DIR", help="output folder (local or shared by every node)")
    r.add_argument("--backend", choices=("ray", "local"), default="ray",
                   help="ray: stages and learners as parallel Ray tasks (default); local: in this process")
    r.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--device", default="auto", help="local backend: cpu, cuda, auto")
    r.add_argument("--stage-cpus", type=float, default=1.0,
                   help="ray: CPUs of each of a stage's two actors (its matcher and expert; a GPU each where the "
                        "cluster has them), reserved when free as the stage starts, else the stage condenses inside "
                        "its task (default 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    flags = {"base": args.base, "scenario": args.scenario, "tasks": args.tasks, "stages": args.stages,
             "memory_ipc": args.memory_ipc, "exemplars": args.exemplars, "models": args.models,
             "repeat": args.repeat, "epochs": args.epochs, "lwf_weight": args.lwf_weight,
             "lwf_temperature": args.lwf_temperature, "herding_epochs": args.herding_epochs, "width": args.width}
    c = with_values(load_preset(args.preset), flags)
    base = base_config(c, args.set, args.data_uri, args.seed)
    if args.stage_cpus <= 0:
        raise UsageError(f"--stage-cpus must be > 0, got {args.stage_cpus:g}")
    options = RunOptions(backend=args.backend, num_actors=1, cpus_per_actor=args.stage_cpus)
    backend = backend_for(options, address=args.address, device=args.device, log=stderr_line)
    with backend.session():
        doc = run_continual(c, base, args.output, backend, stderr_line)
    print(markdown(doc["results"], doc["classes_seen"], c.name))
    print(f"written to {args.output} in {doc['seconds']:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
