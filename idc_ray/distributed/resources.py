"""What Ray is asked for: the matcher/expert layout of a condensation, a Tune trial's
reservation and the evaluation tasks' shares, planned here and nowhere else, with the one
function that turns (CPUs, GPUs) into a placement bundle."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import ray

from idc_ray.data.store import class_blocks
from idc_ray.distributed import planner
from idc_ray.distributed.planner import PartTimes
from idc_ray.distributed.session import ClusterError
from idc_ray.run.backend import RunOptions

log = logging.getLogger("idc_ray")

# A placement group not granted within this many seconds is waiting on other jobs: said once.
WAIT_NOTICE_S = 2.0


def bundle(cpus: float, gpus: float = 0.0) -> dict[str, float]:
    """One placement bundle (no GPU key when none is asked for: Ray treats a 0 as a request)."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def job_bundles(num_matchers: int, cpus: float, gpus: float, expert_gpus: float,
                experts: int = 1) -> list[dict[str, float]]:
    """A condensation's bundles: one per matcher actor, then one per expert actor."""
    return [bundle(cpus, gpus) for _ in range(num_matchers)] + [bundle(cpus, expert_gpus) for _ in range(experts)]


def task_options(spec: dict[str, float]) -> dict[str, float]:
    """The ``num_cpus``/``num_gpus`` options of a task that fills bundle ``spec``."""
    return {"num_cpus": spec.get("CPU", 0), "num_gpus": spec.get("GPU", 0)}


def cpu_share(cluster_cpus: float, actors: int) -> float:
    """An equal share of the cluster's CPUs for ``actors`` (the matchers and the expert), in
    hundredths so every actor fits, at least 0.01."""
    return max(0.01, int(100 * cluster_cpus / actors) / 100)


def _cluster() -> dict[str, float]:
    return ray.cluster_resources()


def _needed(bundles: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(b.get(key, 0.0) for b in bundles) for key in sorted({k for b in bundles for k in b})}


def cluster_holds(bundles: list[dict[str, float]]) -> bool:
    """Whether the cluster, with nothing else running, could hold ``bundles``: each on some alive
    node and all of them together. A group that fits waits only for other jobs to end."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    each = all(any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in b.items()) for node in nodes) for b in bundles)
    total = _cluster()
    return each and all(float(total.get(k, 0.0)) + 1e-9 >= v for k, v in _needed(bundles).items())


def waiting_line(bundles: list[dict[str, float]], what: str) -> str:
    """The line a job logs once when its placement group waits, e.g. ``waiting for 1 CPU for the
    placement group of 1 matcher actor + 1 expert actor (cluster busy: 0 of 2 CPUs free); it
    starts when other jobs release theirs``."""
    free, total = ray.available_resources(), _cluster()
    need = ", ".join(f"{v:g} {k}{'s' if k in ('CPU', 'GPU') and v != 1 else ''}" for k, v in _needed(bundles).items())
    have = ", ".join(f"{float(free.get(k, 0.0)):g} of {float(total.get(k, 0.0)):g} {k}s free"
                     for k in _needed(bundles))
    return (f"waiting for {need} for the placement group of {what} (cluster busy: {have}); "
            "it starts when other jobs release theirs")


@dataclass(frozen=True)
class Layout:
    shards: list[list[int]]
    cpus: float
    gpus: float
    expert_gpus: float  # per expert actor
    experts: int = 1
    reason: str = ""  # why these counts (the planner's line)

    def bundles(self) -> list[dict[str, float]]:
        return job_bundles(len(self.shards), self.cpus, self.gpus, self.expert_gpus, self.experts)


def plan_layout(num_classes: int, options: RunOptions, resources: dict[str, float] | None = None, *,
                probe: Callable[[], tuple[PartTimes, str]] | None = None, max_experts: int = 1) -> Layout:
    """Actor counts and resources from the options and the cluster's resources (default: Ray's).

    Counts the user gave are kept; the rest come from the planner (``distributed/planner.py``),
    which calls ``probe`` for the part times of an inner iteration (and a note of what the probe
    cost) when they can change its choice. Without a probe (Tune trials, continual stages, which reserve before they plan) the
    counts are the fixed defaults: one matcher per GPU, else 2, and one expert actor. Given GPU
    fractions are kept too (:func:`_given_fractions`); otherwise an expert actor gets a GPU of its
    own or sits beside a matcher with ``planner.EXPERT_SHARE`` of its GPU.
    """
    total = resources if resources is not None else _cluster()
    cluster_gpus, cluster_cpus = float(total.get("GPU", 0)), float(total.get("CPU", 1))
    if options.expert_actors is not None and options.expert_actors < 1:
        raise ValueError(f"--expert-actors must be at least 1, got {options.expert_actors}")
    on_gpus = cluster_gpus >= 1 and options.gpus_per_actor != 0
    devices = int(cluster_gpus) if on_gpus else max(1, int(cluster_cpus))
    fractions_given = options.gpus_per_actor is not None or options.expert_gpus is not None
    n, k, beside, why = _counts(num_classes, options, devices, on_gpus, None if fractions_given else probe,
                                max_experts)
    shards = class_blocks(num_classes, n, "--num-actors")
    if fractions_given:
        gpus, expert_gpus = _given_fractions(options, n, k, cluster_gpus)
    elif on_gpus:
        gpus, expert_gpus = (1.0 - planner.EXPERT_SHARE, planner.EXPERT_SHARE) if beside else (1.0, 1.0)
    else:
        gpus = expert_gpus = 0.0
    cpus = options.cpus_per_actor if options.cpus_per_actor is not None else cpu_share(cluster_cpus, n + k)
    return Layout(shards, cpus, gpus, expert_gpus, k, why)


def _counts(classes: int, options: RunOptions, devices: int, on_gpus: bool,
            probe: Callable[[], tuple[PartTimes, str]] | None,
            max_experts: int) -> tuple[int, int, bool, str]:
    """(matchers, experts, expert beside a matcher, the reason) from the planner, or the fixed
    defaults when there is nothing to probe with."""
    n, k = options.num_actors, options.expert_actors
    if probe is None:
        n = n or (min(devices, classes) if on_gpus else min(2, classes))
        k = k or 1
        return (n, k, on_gpus and n + k > devices,
                f"{planner.plural(n, 'matcher actor')} + {planner.plural(k, 'expert actor')}: the defaults")
    if n is not None:
        class_blocks(classes, n, "--num-actors")  # a count that cannot be is refused before the probe
    max_k = max(max_experts, k or 1)
    times, cost = probe() if planner.needs_times(classes, devices, on_gpus, max_k, n, k) else (None, "")
    flat = times or planner.PartTimes(1.0, 1.0)  # any times: a single candidate is chosen whatever they are
    choice = planner.choose(classes, devices, on_gpus, flat, max_experts=max_k, matchers=n, experts=k)
    why = planner.reason(choice, times, classes=classes, devices=devices, gpus=on_gpus, max_experts=max_k)
    return choice.matchers, choice.experts, choice.beside, f"{why} ({cost})" if cost else why


def _given_fractions(options: RunOptions, n: int, experts: int, cluster_gpus: float) -> tuple[float, float]:
    """GPU fractions when the user gave ``--gpus-per-actor`` or ``--expert-gpus``: kept, the
    other one filled in, and refused in one line when they do not fit the cluster.

    An expert on the CPU made every inner iteration wait for it: measured on one H200
    (benchmarks/results/gpu.json of 2026-11-30), 0.136 s per inner iteration with the expert on
    the CPU against 0.072 s with the GPU split between matcher and expert (MNIST, ConvNet-3 width
    128, ipc 10); hence the warning when the given fractions leave it there."""
    gpus = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    if gpus > 0 and n * gpus > cluster_gpus + 1e-9:
        raise ClusterError(f"{n} matcher actors x {gpus:g} GPU requested but the cluster has {cluster_gpus:g} GPUs; "
                           "use --gpus-per-actor 0 or fewer --num-actors")
    spare = cluster_gpus - n * gpus
    if options.expert_gpus is not None:
        expert_gpus = options.expert_gpus
    else:
        expert_gpus = 1.0 if spare >= experts - 1e-9 else 0.0
    if experts * expert_gpus > spare + 1e-9:
        raise ClusterError(f"--expert-gpus {expert_gpus:g} does not fit: {spare:g} GPUs left after the matchers, "
                           f"{experts * expert_gpus:g} needed by {experts} expert actor(s); lower --expert-gpus or "
                           "--expert-actors")
    if cluster_gpus >= 1 and expert_gpus == 0 and options.expert_gpus is None:
        log.warning("the expert actor runs on the CPU: the matchers' --gpus-per-actor %g leaves no GPU share for it; "
                    "for an expert on a GPU, lower --gpus-per-actor and pass --expert-gpus (e.g. %g)",
                    gpus, planner.EXPERT_SHARE)
    return gpus, expert_gpus


@dataclass(frozen=True)
class TrialResources:
    """What one Tune trial reserves: a bundle per matcher actor and one for the expert actor."""

    num_actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    expert_gpus: float = 0.0

    def bundles(self) -> list[dict[str, float]]:
        return job_bundles(self.num_actors, self.cpus_per_actor, self.gpus_per_actor, self.expert_gpus)

    def placement(self):
        """The trial's ``PlacementGroupFactory``: an empty head bundle (the trainable only
        orchestrates), then the actors' bundles, which the Ray backend (``distributed.backend``) fills exactly."""
        from ray import tune

        return tune.PlacementGroupFactory([{}, *self.bundles()], strategy="PACK")

    def run_options(self) -> RunOptions:
        """Options that make the Ray backend lay the actors out exactly as :meth:`bundles`."""
        return RunOptions(backend="ray", num_actors=self.num_actors, cpus_per_actor=self.cpus_per_actor,
                          gpus_per_actor=self.gpus_per_actor, expert_gpus=self.expert_gpus, resume=True)

    def check(self, num_classes: int) -> None:
        """Refuse a trial the cluster can never hold (it would wait forever) in one line."""
        if self.num_actors < 1 or self.num_actors > num_classes:
            raise ValueError(f"--num-actors must be between 1 and the {num_classes} classes, got {self.num_actors}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0 or self.expert_gpus < 0:
            raise ValueError("--cpus-per-actor must be > 0, --gpus-per-actor and --expert-gpus >= 0")
        total = _cluster()
        need = {k: sum(b.get(k, 0.0) for b in self.bundles()) for k in ("CPU", "GPU")}
        for key, amount in need.items():
            if amount > float(total.get(key, 0)) + 1e-9:
                raise ClusterError(f"one trial needs {amount:g} {key} ({self.num_actors} matchers + 1 expert) but the "
                                   f"cluster has {float(total.get(key, 0)):g}; lower --num-actors, --cpus-per-actor "
                                   "or the GPU shares")


def default_resources(num_actors: int = 2, cpus_per_actor: float | None = None, gpus_per_actor: float | None = None,
                      expert_gpus: float | None = None) -> TrialResources:
    """Defaults for what is not given: 1 CPU per actor, or an equal share of a cluster too small
    for that (so one trial always fits); one GPU per actor when the cluster has GPUs (the expert
    gets the matchers' share), else none."""
    total = _cluster()
    if cpus_per_actor is None:
        cpus_per_actor = min(1.0, cpu_share(float(total.get("CPU", 1)), num_actors + 1))
    gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if float(total.get("GPU", 0)) >= 1 else 0.0)
    return TrialResources(num_actors, cpus_per_actor, gpus, expert_gpus if expert_gpus is not None else gpus)


def task_bundle(num_tasks: int, num_cpus: float | None = None, num_gpus: float | None = None) -> dict[str, float]:
    """The bundle of each of ``num_tasks`` evaluation tasks: one GPU per task when the cluster has
    GPUs, else an equal whole-CPU share (at least 1, at most one node's CPUs: torch runs one
    thread per CPU, and the numbers depend on the thread count), unless given. A request no node
    can hold would wait forever, so it is refused here."""
    total = _cluster()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    gpus = num_gpus if num_gpus is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    if num_cpus is None:
        share = int(total.get("CPU", 1) // max(1, num_tasks))
        num_cpus = 1.0 if gpus > 0 else float(max(1, min(share, int(most_cpus))))
    if num_cpus <= 0 or gpus < 0:
        raise ValueError(f"--num-cpus-per-task must be > 0 and --num-gpus-per-task >= 0, got {num_cpus:g}, {gpus:g}")
    if num_cpus > most_cpus:
        raise ValueError(f"--num-cpus-per-task {num_cpus:g} is more than any node has ({most_cpus:g} CPUs); ask for fewer")
    if gpus > most_gpus:
        raise ValueError(f"{gpus:g} GPU per task requested but no node has that many ({most_gpus:g}); "
                         "use --num-gpus-per-task 0")
    return bundle(num_cpus, gpus)
