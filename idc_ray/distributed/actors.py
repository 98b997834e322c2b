"""Ray actors of a condensation job. They place work and move tensors; the algorithm is the
engine's (``Matcher``, ``expert_trajectory``)."""

from __future__ import annotations

import os
import time

import ray
import torch
from ray.util import metrics

from idc_ray import storage
from idc_ray.data import load_dataset
from idc_ray.engine.expert import ExpertSpec, expert_trajectory, new_model
from idc_ray.engine.plan import Plan, build_matcher, shared_upsampler


# glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh mmap()ed pages and
# unmaps them at free, so every step of a CPU matcher page-faults its large activations in again
# (a 64x128x32x32 float tensor is 32 MiB): on the 2-core development machine about 0.5 s of kernel
# time in a 7.5 s step, and a fresh tensor fill 3x slower than a reused one. Serving everything
# from the heap and never trimming it makes the memory reusable (steady RSS, ~20% higher).
# glibc reads these only at process start, so they go into the actors' runtime_env.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 62)}


def actor_runtime_env(keep_freed_memory: bool) -> dict | None:
    """The runtime_env of matcher and expert actors (merged by Ray with the job's own)."""
    return {"env_vars": dict(ALLOCATOR_ENV)} if keep_freed_memory else None


def keeps_freed_memory() -> bool:
    """Whether this process started with ALLOCATOR_ENV."""
    return all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items())


def actor_device() -> torch.device:
    """The GPU Ray assigned (Ray sets CUDA_VISIBLE_DEVICES, so it is cuda:0), else the CPU.
    A GPU resource without a usable CUDA device (a declared-but-fake GPU) falls back to CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda:0")
    return torch.device("cpu")


def configure_worker(options: dict | None) -> None:
    """Storage in this Ray worker as the driver has it: every task and actor that touches storage
    takes the driver's ``storage.current()`` as an argument and calls this first. An argument, not
    a runtime_env variable: those show on the dashboard, and a key or secret must never."""
    storage.configure(options)


def use_assigned_cpus() -> int:
    """Torch threads = whole CPUs Ray assigned to this actor (at least 1)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


def placement_info(name: str, device: torch.device, threads: int) -> dict:
    """Where an actor runs: its name, node, device, torch threads and allocator setting."""
    return {"name": name, "node": ray.get_runtime_context().get_node_id(), "device": str(device),
            "threads": threads, "keeps_freed_memory": keeps_freed_memory()}


@ray.remote(max_restarts=0)
class MatcherActor:
    """Owns a contiguous shard of classes: their real images only, their stored samples and
    optimiser state. ``setup`` reads the shard and builds its matcher; ``step`` updates the shard
    against one expert state from the object store.

    Reading the data is a method, not part of the constructor, so that its errors (a wrong
    --data-uri) come back to the driver as the method's exception, which the driver reports in
    one line: Ray prints a failed constructor's traceback on the driver's stderr as well."""

    def __init__(self, name: str, plan: Plan, classes: list[int], dataset: str, data_uri: str | None,
                 state: dict | None, fault: dict | None = None, storage_options: dict | None = None):
        configure_worker(storage_options)
        self.name = name
        self.threads = use_assigned_cpus()
        self.device = actor_device()
        self.source = (plan, classes, dataset, data_uri, state)
        self.fault = fault
        tags = {"shard": name}
        self.m_loss = metrics.Gauge("idc_matching_loss", "mean matching loss of the shard's last step", tag_keys=("shard",))
        self.m_rate = metrics.Gauge("idc_class_steps_per_second", "class updates per second", tag_keys=("shard",))
        self.m_outer = metrics.Gauge("idc_outer_iteration", "current outer iteration", tag_keys=("shard",))
        for m in (self.m_loss, self.m_rate, self.m_outer):
            m.set_default_tags(tags)

    def setup(self) -> dict:
        """Read this shard's classes only (Parquet sources read just their rows) and build the
        matcher (from the checkpoint's state, if any); returns :meth:`info`."""
        plan, classes, dataset, data_uri, state = self.source
        store = load_dataset(dataset, data_uri, classes=classes).train_store(classes)
        self.upsampler = shared_upsampler(plan.match, self.device)  # learned formation: each step's weights
        self.matcher = build_matcher(plan, store, classes, state, self.device, upsampler=self.upsampler)
        self.model = new_model(plan.expert, 0, 0).to(self.device)  # weights are replaced every step
        return self.info()

    def info(self) -> dict:
        return placement_info(self.name, self.device, self.threads)

    def begin_outer(self) -> None:
        """Clamp the shard's stored data (the start of every outer iteration)."""
        self.matcher.begin_outer()

    def step(self, expert_state: dict, outer: int, inner: int, upsampler: dict | None = None) -> dict:
        """Update the shard against ``expert_state``. With a learned formation, ``upsampler`` is
        the shared upsampler's weights for this step (the driver's, after its last update), and
        the reply carries each class's upsampler gradient for the driver to sum."""
        if self.fault and (outer, inner) == (self.fault["outer"], self.fault["inner"]):
            raise RuntimeError(f"injected fault in {self.name} at outer {outer} inner {inner}")
        started = time.perf_counter()
        self.model.load_state_dict(expert_state)
        if upsampler is not None:
            self.upsampler.load_state_dict(upsampler)
        losses = self.matcher.step(self.model, outer, inner)
        seconds = time.perf_counter() - started
        self.m_loss.set(sum(losses.values()) / len(losses))
        self.m_rate.set(len(losses) / max(seconds, 1e-9))
        self.m_outer.set(outer)
        reply = {"losses": losses, "seconds": seconds}
        if self.upsampler is not None:
            grads = self.matcher.take_upsampler_grads()
            reply["upsampler_grads"] = {c: [g.cpu() for g in gs] for c, gs in grads.items()}
        return reply

    def state_dict(self) -> dict:
        return self.matcher.state_dict()


@ray.remote(max_restarts=0)
class ExpertActor:
    """Computes whole re-initialisation cycles of the expert's trajectory on real data (one of
    ``--expert-actors``: cycle c is actor c mod N's) and returns each state; the return value goes
    to the object store once and every matcher reads it from there (one copy per node).

    A cycle (``fix_iter`` outer iterations from a re-initialisation) depends only on the seed, its
    index and the real-data stream position, a function of the step (engine/streams.py), so an
    actor can start any cycle where the previous actor left off, with the bytes of one trajectory."""

    def __init__(self, name: str, expert: ExpertSpec, dataset: str, data_uri: str | None, inner_iters: int,
                 end_outer: int, storage_options: dict | None = None):
        configure_worker(storage_options)
        self.threads = use_assigned_cpus()
        self.device = actor_device()
        self.name, self.expert, self.inner_iters, self.end_outer = name, expert, inner_iters, end_outer
        self.source = (dataset, data_uri)
        self.trajectory = None
        self.next: tuple[int, int] | None = None  # the (outer, inner) the running trajectory yields next
        self.m_depth = metrics.Gauge("idc_expert_queue_depth", "expert states computed ahead of the matchers",
                                     tag_keys=("expert",))
        self.m_depth.set_default_tags({"expert": name})

    def setup(self) -> dict:
        """Read the training split (as MatcherActor.setup); returns where this actor runs."""
        self.store = load_dataset(*self.source).train_store()
        return placement_info(self.name, self.device, self.threads)

    def produce(self, outer: int, inner: int, consumed: int) -> dict:
        """The expert state for (outer, inner) (CPU tensors). ``consumed``: the global step the
        matchers work on now, for the queue-depth metric."""
        starts_cycle = inner == 0 and outer % self.expert.fix_iter == 0
        if starts_cycle or (outer, inner) != self.next:  # a cycle of its own begins (or resumes mid-cycle)
            cycle_end = min(outer - outer % self.expert.fix_iter + self.expert.fix_iter, self.end_outer)
            self.trajectory = expert_trajectory(self.expert, self.store, self.inner_iters, outer, cycle_end,
                                                self.device)
        o, i, model = next(self.trajectory)
        assert (o, i) == (outer, inner), "expert trajectory out of step"
        self.next = (o, i + 1) if i + 1 < self.inner_iters else (o + 1, 0)
        self.m_depth.set(o * self.inner_iters + i + 1 - consumed)
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
