"""The Ray backend: matcher actors over class shards and an expert actor, in one placement group
(so a Tune trial or a cluster scheduler reserves the whole job at once); the pretrained pool, the
evaluation and the ``--eval-every`` curve as Ray tasks."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import time
import uuid
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import ray
import torch
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from idc_ray import storage
from idc_ray.checkpoint import Checkpoint
from idc_ray.config import IDCConfig
from idc_ray.data import DatasetSpec
from idc_ray.device import resolve_device
from idc_ray.distributed.actors import ExpertActor, MatcherActor, actor_device, actor_runtime_env, use_assigned_cpus
from idc_ray.distributed.continual import ray_map
from idc_ray.distributed.evaluation import RayExecutor
from idc_ray.distributed.pool import ensure_pool_on_ray
from idc_ray.distributed.planner import PartTimes, plural
from idc_ray.distributed.resources import WAIT_NOTICE_S, Layout, cluster_holds, plan_layout, waiting_line
from idc_ray.distributed.session import ClusterError, ray_session
from idc_ray.distributed.watch import RayCurveRunner
from idc_ray.engine.expert import new_model
from idc_ray.engine.plan import Plan, build_trainer
from idc_ray.engine.probe import Probed, probe_parts
from idc_ray.engine.upsampler import UpsamplerTrainer
from idc_ray.run.backend import RunOptions, stderr_line
from idc_ray.run.curve import RunnerFactory
from idc_ray.run.schedule import Progress

log = logging.getLogger("idc_ray")
PLACEMENT_TIMEOUT_S = 120
STAGE_RESERVE_S = 1.0  # how long a continual stage waits for actors of its own before running in its task
Log = Callable[[str], None]


def shard_name(index: int, classes: list[int]) -> str:
    return f"matcher-{index}[classes {classes[0]}-{classes[-1]}]" if len(classes) > 1 else f"matcher-{index}[class {classes[0]}]"


def expert_name(index: int, experts: int) -> str:
    """``expert-1[cycles 1,3,5,...]``: the re-initialisation cycles an expert actor computes."""
    if experts == 1:
        return "expert-0[cycles all]"
    return f"expert-{index}[cycles {index},{index + experts},{index + 2 * experts},...]"


def state_bytes(plan: Plan) -> int:
    """The bytes of one expert state in the object store (its state_dict)."""
    return sum(t.numel() * t.element_size() for t in new_model(plan.expert, 0, 0).state_dict().values())


def states_ahead(plan: Plan, memory_mb: float) -> int:
    """How many expert states may be computed ahead of the matchers: as many as ``memory_mb`` of
    object store holds, at least one (the look-ahead across cycles, with back-pressure)."""
    return max(1, int(memory_mb * 2**20 // state_bytes(plan)))


def busy_experts(cfg: IDCConfig, plan: Plan, memory_mb: float) -> int:
    """How many expert actors can work at once: one per re-initialisation cycle the states
    computed ahead reach into (:func:`states_ahead`), and no more than the run has cycles."""
    cycles = -(-cfg.schedule.outer_iters // plan.expert.fix_iter)
    return max(1, min(cycles, 1 + states_ahead(plan, memory_mb) // cfg.schedule.inner_iters))


@ray.remote(max_retries=0)
def _probe_task(plan: Plan, spec: DatasetSpec) -> Probed:
    use_assigned_cpus()
    return probe_parts(plan, spec, actor_device())


def probe_times(plan: Plan, spec: DatasetSpec) -> tuple[PartTimes, str]:
    """The planner's part times, measured where the actors will run: on one GPU by a Ray task
    when the cluster has GPUs, else here at one thread (one CPU slot); and what the probe cost."""
    if float(ray.cluster_resources().get("GPU", 0)) >= 1:
        probed = ray.get(_probe_task.options(num_cpus=1, num_gpus=1, runtime_env=actor_runtime_env(True)).remote(
            plan, spec))
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            probed = probe_parts(plan, spec, "cpu")
        finally:
            torch.set_num_threads(threads)
    return PartTimes(probed.matching_s, probed.expert_s), f"probe {probed.probe_s:.1f} s"


class RayExperts:
    """The expert actors' states as object-store refs, in the schedule's order: cycle c (``fix_iter``
    outer iterations) is actor c mod N's, and states are asked for up to ``ahead`` beyond the
    matchers, so the actors of the next cycles compute while the matchers work on this one."""

    def __init__(self, actors: list, names: list[str], first_outer: int, schedule, fix_iter: int, ahead: int):
        self.actors, self.names, self.fix_iter, self.ahead = actors, names, fix_iter, ahead
        self.inner_iters = schedule.inner_iters
        self.steps = [(o, i) for o in range(first_outer, schedule.outer_iters) for i in range(schedule.inner_iters)]
        self.queue: deque = deque()  # refs asked for, not yet handed to the matchers
        self.requested = 0
        self.consumed = 0  # steps the matchers finished

    def state(self, outer: int, inner: int):
        while len(self.queue) <= self.ahead and self.requested < len(self.steps):
            o, i = self.steps[self.requested]
            actor = self.actors[(o // self.fix_iter) % len(self.actors)]
            now = self.steps[min(self.consumed, len(self.steps) - 1)]
            self.queue.append(actor.produce.remote(o, i, now[0] * self.inner_iters + now[1]))
            self.requested += 1
        return self.queue.popleft()  # a ref: the matchers wait for it, the driver does not

    def computed_ahead(self) -> int:
        """States the expert actors have finished beyond those handed to the matchers."""
        if not self.queue:
            return 0
        done, _ = ray.wait(list(self.queue), num_returns=len(self.queue), timeout=0)
        return len(done)


class RayMatchers:
    """The matcher actors of one attempt; a step is one call per actor with the expert state's ref.

    With a learned formation the driver holds the shared upsampler (``trainer``): before a step
    is submitted it sums the previous step's per-class gradients, which the actors return, in
    class order and takes one optimiser step (``UpsamplerTrainer.apply``, as the in-process
    backend does), then puts the weights in the object store once for every actor. A step thus
    waits for the one before it (the expert states are still computed ahead)."""

    def __init__(self, actors: list, names: list[str], expert: RayExperts, trainer: UpsamplerTrainer | None = None):
        self.actors, self.names, self.expert, self.trainer = actors, names, expert, trainer
        self.unapplied: deque = deque()  # steps whose upsampler gradients the trainer has not applied

    def begin_outer(self, outer: int) -> None:
        for m in self.actors:  # actor calls from one caller run in order: before this outer's steps
            m.begin_outer.remote()

    def submit(self, expert_state, outer: int, inner: int) -> tuple:
        weights = None
        if self.trainer is not None:
            self._apply_upsampler_grads()
            weights = ray.put(self.trainer.net.state_dict())
        refs = [m.step.remote(expert_state, outer, inner, weights) for m in self.actors]
        if self.trainer is not None:
            self.unapplied.append(refs)
        return outer, inner, time.perf_counter(), refs

    def _apply_upsampler_grads(self) -> None:
        """One upsampler update per submitted step not applied yet, in step order."""
        while self.unapplied:
            grads: dict[int, list[torch.Tensor]] = {}
            for reply in ray.get(self.unapplied.popleft()):
                grads.update(reply["upsampler_grads"])
            self.trainer.apply(grads)

    def collect(self, handle: tuple) -> Progress:
        outer, inner, submitted, refs = handle
        results = ray.get(refs)
        self.expert.consumed += 1
        losses: dict[int, float] = {}
        shards: dict[str, float] = {}
        for name, r in zip(self.names, results):
            losses.update(r["losses"])
            shards[name.split("[")[0]] = sum(r["losses"].values()) / len(r["losses"])
        rate = len(losses) / max(time.perf_counter() - submitted, 1e-9)
        return Progress(outer, inner, losses, rate, shards, expert_ahead=self.expert.computed_ahead())

    def shared(self) -> dict | None:
        if self.trainer is None:
            return None
        self._apply_upsampler_grads()
        return self.trainer.state_dict()

    def states(self) -> dict[int, dict]:
        merged: dict[int, dict] = {}
        for part in ray.get([m.state_dict.remote() for m in self.actors]):
            merged.update(part)
        return merged


class RayAttempts:
    """Matcher and expert actors in the job's placement group, built afresh for every attempt."""

    def __init__(self, cfg: IDCConfig, plan: Plan, layout: Layout, pg, options: RunOptions):
        self.cfg, self.plan, self.layout, self.pg, self.options = cfg, plan, layout, pg, options
        self.faults = list(options.faults)
        self.run_id, self.count = uuid.uuid4().hex[:6], itertools.count()
        self.placement: list[dict] = []
        self.actors: list = []
        self.layout_logged = False  # the layout line is said once, not per restart

    def open(self, ckpt: Checkpoint | None, first_outer: int) -> tuple[RayMatchers, RayExperts]:
        tag = f"{self.run_id}.{next(self.count)}"  # readable, unique names: matcher-0[classes 0-4]@<run>.<attempt>
        names = [shard_name(i, cls) for i, cls in enumerate(self.layout.shards)]
        matchers = [self._matcher(i, names[i], classes, ckpt, tag) for i, classes in enumerate(self.layout.shards)]
        expert_names = [expert_name(k, self.layout.experts) for k in range(self.layout.experts)]
        experts = [self._expert(k, expert_names[k], tag) for k in range(self.layout.experts)]
        self.actors = [*matchers, *experts]
        self.faults = [f for f in self.faults if f.get("repeat")]  # others fire in the first attempt only
        self.placement = setup_actors(matchers, experts)
        if not self.layout_logged:  # once the actors read their data: bad input stays one line
            log.info("layout: %s", self.layout.reason)
            self.layout_logged = True
        for p in self.placement:
            log.info("%s on node %s (%s, %d threads)", p["name"], p["node"][:12], p["device"], p["threads"])
        source = RayExperts(experts, expert_names, first_outer, self.cfg.schedule, self.plan.expert.fix_iter,
                            states_ahead(self.plan, self.options.expert_memory_mb))
        trainer = build_trainer(self.plan.match)  # learned formation: the shared upsampler, on the driver
        if trainer is not None and ckpt is not None:
            trainer.load_state_dict(ckpt.upsampler)
        return RayMatchers(matchers, names, source, trainer), source

    def _strategy(self, index: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=index)

    def _matcher(self, index: int, name: str, classes: list[int], ckpt: Checkpoint | None, tag: str):
        state = {c: ckpt.classes[c] for c in classes} if ckpt else None
        fault = next((f for f in self.faults if f["actor"] == index), None)
        return MatcherActor.options(
            name=f"{name}@{tag}", num_cpus=self.layout.cpus, num_gpus=self.layout.gpus,
            scheduling_strategy=self._strategy(index), runtime_env=actor_runtime_env(self.options.keep_freed_memory),
        ).remote(name, self.plan, classes, self.cfg.data.dataset, self.cfg.data.data_uri, state, fault, storage.current())

    def _expert(self, index: int, name: str, tag: str):
        sched = self.cfg.schedule
        return ExpertActor.options(
            name=f"{name}@{tag}", num_cpus=self.layout.cpus, num_gpus=self.layout.expert_gpus,
            scheduling_strategy=self._strategy(len(self.layout.shards) + index),
            runtime_env=actor_runtime_env(self.options.keep_freed_memory),
        ).remote(name, self.plan.expert, self.cfg.data.dataset, self.cfg.data.data_uri, sched.inner_iters,
                 sched.outer_iters, storage.current())

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def is_failure(self, error: BaseException) -> bool:
        """Failures worth a restart: lost actors and errors raised in steps. An actor whose
        constructor raised (missing data, bad input) would fail the same way again."""
        return isinstance(error, ray.exceptions.RayError) and not getattr(error, "actor_init_failed", False)


def setup_actors(matchers: list, experts: list) -> list[dict]:
    """Let every actor read its data; returns where each runs, the matchers first. Bad data (a wrong
    --data-uri, say: the actor's ValueError) is a user error, not a failure to recover from:
    one line. Any other exception propagates with its cause. Every reply is fetched, so Ray
    reports no other actor's failure as an unhandled error on stderr."""
    refs = [*(m.setup.remote() for m in matchers), *(e.setup.remote() for e in experts)]
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
    return replies


def setup_error(e: BaseException) -> ValueError:
    """The one-line error an actor's constructor raised, from Ray's formatted traceback."""
    lines = [ln.strip() for ln in str(getattr(e, "error_msg", e)).splitlines()]
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
    return ValueError(raised[-1].split(": ", 1)[1] if raised else lines[0] if lines else type(e).__name__)


def check_fits(available: list[dict], needed: list[dict]) -> None:
    """The current placement group must hold the layout bundle for bundle: one per matcher, then
    the expert actors' (a Tune trial reserves them with an empty head bundle, see idc_ray.distributed.trial)."""
    fits = len(available) == len(needed) and all(
        have.get(key, 0.0) + 1e-9 >= amount for have, need in zip(available, needed) for key, amount in need.items())
    if not fits:
        raise ClusterError(f"this job runs inside a placement group with bundles {available}, but its actors need "
                           f"{needed} (one bundle per matcher, then one per expert actor); reserve exactly those "
                           "bundles or set --num-actors/--cpus-per-actor/--gpus-per-actor to match")


@contextmanager
def job_placement_group(bundles: list[dict], spread: bool, reserved=None, what: str = "the job's actors") -> Iterator:
    """The job's placement group: ``reserved`` (made for this job, removed at its end), else the
    current one (a Tune trial's: the actors go into its bundles, since asking for another group
    outside that reservation could wait forever on a small cluster; its owner removes it), else a
    new one, waited for as long as other jobs hold what it needs (:func:`reserve`)."""
    current = reserved or get_current_placement_group()
    if current is not None:
        check_fits(current.bundle_specs, bundles)
        try:
            yield current
        finally:
            if reserved is not None:
                remove_placement_group(reserved)
        return
    pg = reserve(bundles, spread, None, what=what)
    if pg is None:
        raise ClusterError(f"the cluster cannot hold {bundles} (it has {ray.cluster_resources()}) and no node that "
                           f"could joined within {PLACEMENT_TIMEOUT_S}s; use fewer --num-actors or smaller shares")
    try:
        yield pg
    finally:
        remove_placement_group(pg)


def reserve(bundles: list[dict], spread: bool, timeout_s: float | None, name: str = "",
            what: str = "the job's actors"):
    """A placement group holding ``bundles`` once it is ready within ``timeout_s``, else None.

    ``timeout_s`` None: wait as long as the cluster could hold the group with nothing else
    running (other jobs hold what it needs: it is granted when they release it, so several jobs
    queue on one cluster); a group the cluster cannot hold waits ``PLACEMENT_TIMEOUT_S`` for a
    node to join. A wait beyond ``WAIT_NOTICE_S`` is logged once, naming what it waits for.

    ``name``: a group of that name left by an earlier attempt is removed first. A placement group
    lives as long as the job that made it, not the task: a stage task killed while it held (or
    waited for) its group would leave it reserved, and its retry reclaims it by the name."""
    if name:
        try:
            remove_placement_group(ray.util.get_placement_group(name))
        except ValueError:  # none of that name: the first attempt
            pass
    pg = placement_group(bundles, strategy="SPREAD" if spread else "PACK", name=name)
    if granted(pg, timeout_s, what):
        return pg
    remove_placement_group(pg)
    return None


def granted(pg, timeout_s: float | None, what: str) -> bool:
    """Whether ``pg`` is ready within ``timeout_s`` (None: see :func:`reserve`); says once, after
    ``WAIT_NOTICE_S``, that it waits."""
    ready, started, said = pg.ready(), time.monotonic(), False
    while True:
        waited = time.monotonic() - started
        limit = timeout_s if timeout_s is not None else (None if cluster_holds(pg.bundle_specs) else PLACEMENT_TIMEOUT_S)
        if limit is not None and waited >= limit:
            return False
        step = max(WAIT_NOTICE_S - waited, 0.0) if not said else 5.0
        try:
            ray.get(ready, timeout=step if limit is None else min(step, limit - waited))
            return True
        except ray.exceptions.GetTimeoutError:
            pass
        if not said and time.monotonic() - started >= WAIT_NOTICE_S:
            log.info(waiting_line(pg.bundle_specs, what))
            said = True


class RayBackend:
    """Everything on the Ray cluster this process joins (``address``, else RAY_ADDRESS, else a
    local Ray started for the job); ``options`` sets the actors' layout."""

    name = "ray"

    def __init__(self, options: RunOptions = RunOptions(), *, address: str | None = None,
                 device: str = "auto", log: Log | None = None, reserved=None):
        self.options, self.address, self.log = options, address, log
        self.device = str(resolve_device(device))  # the driver's (the manifest records it)
        self.reserved = reserved  # a placement group made for this backend's one job (stage_backend)

    def session(self):
        return ray_session(self.address, log=self.log)

    @contextmanager
    def place(self, cfg: IDCConfig, plan: Plan, spec: DatasetSpec) -> Iterator[RayAttempts]:
        # a reserved group (a continual stage) was sized by the default counts: no probe, same layout
        probe = None if self.reserved is not None else (lambda: probe_times(plan, spec))
        layout = plan_layout(spec.num_classes, self.options, probe=probe,
                             max_experts=busy_experts(cfg, plan, self.options.expert_memory_mb))
        what = f"{plural(len(layout.shards), 'matcher actor')} + {plural(layout.experts, 'expert actor')}"
        with job_placement_group(layout.bundles(), self.options.spread, self.reserved, what) as pg:
            try:
                yield RayAttempts(cfg, plan, layout, pg, self.options)
            except ray.exceptions.RayActorError as e:
                if getattr(e, "actor_init_failed", False):
                    raise setup_error(e) from None
                raise

    def stage_backend(self, num_classes: int, key: str) -> RayBackend | None:
        """Actors of its own for one continual stage when the cluster has the resources free now,
        else None (the stage then condenses in its task's process). The resources are reserved,
        not just looked at, so stages running side by side never wait on each other; the group is
        named by the job and ``key`` (the stage's output), so a retried stage reclaims it."""
        job = ray.get_runtime_context().get_job_id()
        name = f"idc-stage-{job}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        pg = reserve(plan_layout(num_classes, self.options).bundles(), self.options.spread, STAGE_RESERVE_S, name)
        return None if pg is None else RayBackend(self.options, device=self.device, log=self.log, reserved=pg)

    def pretrained_pool(self, cfg: IDCConfig, cache: str, seeds: int, log: Log) -> str:
        return ensure_pool_on_ray(cfg, cache, seeds, self.options, log=log)

    def executor(self, num_cpus: float | None = None, num_gpus: float | None = None, max_retries: int = 3) -> RayExecutor:
        return RayExecutor(num_cpus, num_gpus, max_retries, log=self.log or stderr_line)

    def map(self, fn: Callable, items: Sequence[tuple], names: Sequence[str]) -> list:
        return ray_map(fn, items, names, log=self.log or stderr_line)

    def curve_runner(self) -> RunnerFactory:
        return RayCurveRunner
