"""The Ray backend: matcher actors over class shards and an expert actor, in one placement
group (so a Tune trial or a cluster scheduler reserves the whole job at once)."""

from __future__ import annotations

import itertools
import logging
import re
import socket
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable

import ray
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec
from idc_ray.distributed.actors import ExpertActor, MatcherActor, actor_runtime_env
from idc_ray.checkpoint import Checkpoint, CheckpointStore
from idc_ray.distributed.schedule import RunOptions, run_schedule, shard_classes
from idc_ray.engine.loop import Progress
from idc_ray.engine.plan import Plan
from idc_ray.errors import first_line

log = logging.getLogger("idc_ray")
PLACEMENT_TIMEOUT_S = 120


class ClusterError(ValueError):
    """The cluster cannot run the job as asked (one line, with the fix)."""


def connect(address: str | None) -> str | None:
    """Join the cluster at ``address`` (or RAY_ADDRESS, as under `ray job submit`), else start a
    local one; returns the dashboard URL. A bad address is one clear line, not a traceback."""
    if ray.is_initialized():
        return None
    _check_reachable(address)
    try:
        context = ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True)
        return context.dashboard_url or None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"no Ray cluster at --address {address} ({first_line(e, 120)}); "
                           "start one with `ray start --head` or omit --address to run locally") from None


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    match = re.fullmatch(r"(?:ray://)?([^:/]+):(\d+)", address or "")
    if not match:
        return  # None, "auto", "local" or another form: ray.init decides
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"no Ray cluster at --address {address} ({e.strerror or e}); "
                           "start one with `ray start --head` or omit --address to run locally") from None


@dataclass(frozen=True)
class Layout:
    shards: list[list[int]]
    cpus: float
    gpus: float
    expert_gpus: float


# What the expert actor asks of a GPU it shares with a matcher. Ray's GPU fractions only place
# work (CUDA time-slices the device), so the number just has to fit beside a matcher's share.
EXPERT_GPU_SHARE = 0.25


def plan_layout(num_classes: int, options: RunOptions, resources: dict[str, float] | None = None) -> Layout:
    """Actor count and resources from the options and the cluster's resources (default: Ray's).

    On a GPU cluster the matchers take one GPU each by default. When that leaves no whole GPU for
    the expert, matchers and expert share: each matcher asks for 1 - EXPERT_GPU_SHARE and the
    expert for EXPERT_GPU_SHARE, so it lands beside one of them. An expert on the CPU instead made
    every inner iteration wait for it: measured on one H200 (benchmarks/results/gpu.json of
    2026-11-30), 0.136 s per inner iteration with the expert on the CPU against 0.072 s with the
    GPU split between matcher and expert (MNIST, ConvNet-3 width 128, ipc 10).
    """
    total = resources if resources is not None else ray.cluster_resources()
    cluster_gpus = float(total.get("GPU", 0))
    cluster_cpus = float(total.get("CPU", 1))
    n = options.num_actors or (int(cluster_gpus) if cluster_gpus >= 1 else 2)
    n = min(n, num_classes) if options.num_actors is None else n
    shards = shard_classes(num_classes, n)
    share_gpu = (cluster_gpus >= 1 and options.gpus_per_actor is None and options.expert_gpus is None
                 and n <= cluster_gpus < n + 1)
    if options.gpus_per_actor is not None:
        gpus = options.gpus_per_actor
    else:
        gpus = (1.0 - EXPERT_GPU_SHARE if share_gpu else 1.0) if cluster_gpus >= 1 else 0.0
    if gpus > 0 and n * gpus > cluster_gpus + 1e-9:
        raise ClusterError(f"{n} matcher actors x {gpus:g} GPU requested but the cluster has {cluster_gpus:g} GPUs; "
                           "use --gpus-per-actor 0 or fewer --num-actors")
    spare = cluster_gpus - n * gpus
    if options.expert_gpus is not None:
        expert_gpus = options.expert_gpus
    else:
        expert_gpus = EXPERT_GPU_SHARE if share_gpu else (1.0 if spare >= 1 - 1e-9 else 0.0)
    if expert_gpus > spare + 1e-9:
        raise ClusterError(f"--expert-gpus {expert_gpus:g} does not fit: {spare:g} GPUs left after the matchers")
    if cluster_gpus >= 1 and expert_gpus == 0 and options.expert_gpus is None:
        log.warning("the expert actor runs on the CPU: the matchers' --gpus-per-actor %g leaves no GPU share for it; "
                    "for an expert on a GPU, lower --gpus-per-actor and pass --expert-gpus (e.g. %g)",
                    gpus, EXPERT_GPU_SHARE)
    cpus = options.cpus_per_actor
    if cpus is None:
        cpus = max(0.01, int(100 * cluster_cpus / (n + 1)) / 100)
    return Layout(shards, cpus, gpus, expert_gpus)


def shard_name(index: int, classes: list[int]) -> str:
    return f"matcher-{index}[classes {classes[0]}-{classes[-1]}]" if len(classes) > 1 else f"matcher-{index}[class {classes[0]}]"


class RayGroup:
    """Matcher actors + expert actor for one attempt of the schedule (built from a checkpoint)."""

    def __init__(self, cfg: IDCConfig, plan: Plan, layout: Layout, pg, ckpt: Checkpoint | None,
                 first_outer: int, options: RunOptions, faults: list[dict], tag: str, storage_options: dict | None):
        self.cfg = cfg
        self.options = options
        strategy = lambda i: PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)
        runtime_env = actor_runtime_env(options.keep_freed_memory)
        self.names = [shard_name(i, cls) for i, cls in enumerate(layout.shards)]
        self.matchers = []
        for i, classes in enumerate(layout.shards):
            state = {c: ckpt.classes[c] for c in classes} if ckpt else None
            fault = next((f for f in faults if f["actor"] == i), None)
            self.matchers.append(MatcherActor.options(
                name=f"{self.names[i]}@{tag}", num_cpus=layout.cpus, num_gpus=layout.gpus, scheduling_strategy=strategy(i),
                runtime_env=runtime_env,
            ).remote(self.names[i], plan, classes, cfg.data.dataset, cfg.data.data_uri, state, fault, storage_options))
        sched = cfg.schedule
        self.expert = ExpertActor.options(
            name=f"expert@{tag}", num_cpus=layout.cpus, num_gpus=layout.expert_gpus, scheduling_strategy=strategy(len(layout.shards)),
            runtime_env=runtime_env,
        ).remote(plan.expert, cfg.data.dataset, cfg.data.data_uri, sched.inner_iters, first_outer, sched.outer_iters,
                 storage_options)
        self.steps = [(o, i) for o in range(first_outer, sched.outer_iters) for i in range(sched.inner_iters)]
        self.states_ahead: deque = deque()
        self.requested = 0
        self.consumed = 0

    def setup(self) -> list[dict]:
        """Let every actor read its data; returns where each matcher runs. Bad data (a wrong
        --data-uri, say: the actor's ValueError) is a user error, not a failure to recover from:
        one line. Any other exception propagates with its cause. Every reply is fetched, so Ray
        reports no other actor's failure as an unhandled error on stderr."""
        refs = [*(m.setup.remote() for m in self.matchers), self.expert.setup.remote()]
        replies, failure = [], None
        for ref in refs:
            try:
                replies.append(ray.get(ref))
            except ray.exceptions.RayError as e:
                failure = failure or e
        cause = getattr(failure, "cause", None)
        if isinstance(cause, ValueError):
            raise ValueError((str(cause).strip().splitlines() or [type(cause).__name__])[0]) from None
        if failure is not None:
            raise failure
        return replies[:-1]

    def _expert_state(self):
        """The ref of the next expert state, keeping ``lookahead`` more requested ahead."""
        while len(self.states_ahead) <= self.options.lookahead and self.requested < len(self.steps):
            self.states_ahead.append(self.expert.produce.remote(self.consumed))
            self.requested += 1
        return self.states_ahead.popleft()

    def submit(self, outer: int, inner: int) -> list:
        state = self._expert_state()  # a ref: matchers wait for it, the driver does not
        return [m.step.remote(state, outer, inner) for m in self.matchers]

    def collect(self, handle: list) -> tuple[dict[int, float], dict[str, float]]:
        results = ray.get(handle)
        self.consumed += 1
        losses: dict[int, float] = {}
        shards: dict[str, float] = {}
        for name, r in zip(self.names, results):
            losses.update(r["losses"])
            shards[name.split("[")[0]] = sum(r["losses"].values()) / len(r["losses"])
        return losses, shards

    def states(self) -> dict[int, dict]:
        merged: dict[int, dict] = {}
        for part in ray.get([m.state_dict.remote() for m in self.matchers]):
            merged.update(part)
        return merged

    def close(self) -> None:
        for actor in [*self.matchers, self.expert]:
            ray.kill(actor, no_restart=True)


def is_ray_failure(e: BaseException) -> bool:
    """Failures worth a restart: lost actors and errors raised in steps. An actor whose
    constructor raised (missing data, bad input) would fail the same way again."""
    return isinstance(e, ray.exceptions.RayError) and not getattr(e, "actor_init_failed", False)


def setup_error(e: BaseException) -> ValueError:
    """The one-line error an actor's constructor raised, from Ray's formatted traceback."""
    lines = [ln.strip() for ln in str(getattr(e, "error_msg", e)).splitlines()]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
    return ValueError(raised[-1].split(": ", 1)[1] if raised else lines[0] if lines else type(e).__name__)


def check_fits(available: list[dict], needed: list[dict]) -> None:
    """The current placement group must hold the layout bundle for bundle: one per matcher, then
    the expert's (a Tune trial reserves them with an empty head bundle, see idc_ray.distributed.sweep)."""
    fits = len(available) == len(needed) and all(
        have.get(key, 0.0) + 1e-9 >= amount for have, need in zip(available, needed) for key, amount in need.items())
    if not fits:
        raise ClusterError(f"this job runs inside a placement group with bundles {available}, but its actors need "
                           f"{needed} (one bundle per matcher, then one for the expert); reserve exactly those "
                           "bundles or set --num-actors/--cpus-per-actor/--gpus-per-actor to match")


def run_on_ray(cfg: IDCConfig, plan: Plan, spec: DatasetSpec, ckpts: CheckpointStore, start: Checkpoint | None,
               options: RunOptions, on_progress: Callable[[Progress], None] | None,
               storage_options: dict | None = None):
    """Place the actors and drive the schedule; returns (states, history, restarts, placement)."""
    layout = plan_layout(spec.num_classes, options)
    bundles = [{"CPU": layout.cpus, **({"GPU": layout.gpus} if layout.gpus else {})} for _ in layout.shards]
    bundles.append({"CPU": layout.cpus, **({"GPU": layout.expert_gpus} if layout.expert_gpus else {})})
    # Inside a placement group (a Tune trial's), the actors go into its bundles: asking for another
    # group outside that reservation could wait forever on a small cluster. Its owner removes it.
    pg = get_current_placement_group()
    owned = pg is None
    if owned:
        pg = placement_group(bundles, strategy="SPREAD" if options.spread else "PACK")
        try:
            ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            raise ClusterError(f"the cluster could not reserve {bundles} within {PLACEMENT_TIMEOUT_S}s "
                               f"(it has {ray.cluster_resources()}); use fewer --num-actors or smaller shares") from None
    else:
        check_fits(pg.bundle_specs, bundles)
    faults = list(options.faults)
    placement: list[dict] = []
    run_id = uuid.uuid4().hex[:6]
    attempts = itertools.count()

    def make_group(ckpt: Checkpoint | None, first: int) -> RayGroup:
        # Readable, unique actor names for the dashboard: matcher-0[classes 0-4]@<run>.<attempt>
        group = RayGroup(cfg, plan, layout, pg, ckpt, first, options, faults, f"{run_id}.{next(attempts)}",
                         storage_options)
        faults[:] = [f for f in faults if f.get("repeat")]  # others fire in the first incarnation only
        placement[:] = group.setup()
        for p in placement:
            log.info("%s on node %s (%s, %d threads)", p["name"], p["node"][:12], p["device"], p["threads"])
        return group

    try:
        states, history, restarts = run_schedule(cfg, make_group, ckpts=ckpts, start=start, options=options,
                                                 on_progress=on_progress, is_failure=is_ray_failure)
    except ray.exceptions.RayActorError as e:
        if getattr(e, "actor_init_failed", False):
            raise setup_error(e) from None
        raise
    finally:
        if owned:
            remove_placement_group(pg)
    return states, history, restarts, placement
