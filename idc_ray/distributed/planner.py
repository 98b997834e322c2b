"""How many matcher and expert actors a condensation runs, and how they share the devices: the
scaling model of one inner iteration, and the layout it predicts fastest. Pure arithmetic (no Ray):
``resources.plan_layout`` feeds it the cluster and the probed part times, and
``benchmarks/scaling_model.py`` checks its predictions against real runs.

The model (docs/scaling.md). An inner iteration is the matching of every class against one
expert state, then the next state. With ``n`` matchers the slowest shard takes
``M * ceil(C / n) / C`` (M: one matcher step over all C classes on one device). The expert states
come from ``k`` expert actors computing different re-initialisation cycles side by side, so the
matchers get one every ``E / k`` (E: one expert update on one device; k is capped by the cycles
the object-store budget lets them run ahead, ``max_experts``). What runs on one device adds up:

- GPUs: each matcher has a device of its own; expert actors take free devices (``dedicated``) or
  sit beside a matcher, one per device (``beside``: matcher 1 - s, expert s of it). Side by side
  on one GPU the two overlap: the device takes the longer part plus ``interference`` of the
  shorter one (``BESIDE_INTERFERENCE`` unless given).
- CPU slots: the operating system spreads every actor's threads over all the cores, so an
  iteration also takes at least the total work ``(n * shard + E) / D`` on ``D`` cores.

An iteration also pays ``overhead``: the state's trip through the object store and the calls.
The planner takes the fastest layout; among layouts within ``TIE`` of it, the one with the fewest
actors (fewer experts first): more actors cost memory and start-up and buy nothing there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TIE = 0.02  # layouts this close (relative) to the fastest count as equally fast
EXPERT_SHARE = 0.25  # of a GPU, for an expert actor beside a matcher (CUDA time-slices the device)
# What of the shorter part a matcher and an expert beside it on one GPU do not overlap: one H200,
# MNIST at the paper's settings (benchmarks/results/gpu.json, 2026-11-30): matching 0.0669 s,
# expert 0.0567 s, transfer 0.0016 s apart; 0.0720 s per inner iteration side by side, so
# (0.0720 - 0.0016 - 0.0669) / 0.0567 = 0.06. Small ConvNet kernels leave the GPU mostly idle;
# a network that fills it would be nearer 1 (fully additive). docs/scaling.md.
BESIDE_INTERFERENCE = 0.06


@dataclass(frozen=True)
class PartTimes:
    """Seconds of an inner iteration's parts on one device (engine/probe.py measures them)."""

    matching_s: float  # one matcher step over all classes
    expert_s: float  # one expert update
    overhead_s: float = 0.0  # per iteration: the state through the object store, the actor calls
    interference: float = BESIDE_INTERFERENCE  # of the shorter part, for a matcher and expert on one GPU


@dataclass(frozen=True)
class Choice:
    """A layout and what the model predicts for it."""

    matchers: int
    experts: int
    beside: bool  # expert actors on matchers' GPUs (one each) instead of devices of their own
    seconds: float  # predicted per inner iteration

    @property
    def actors(self) -> int:
        return self.matchers + self.experts


def shard_seconds(classes: int, matchers: int, times: PartTimes) -> float:
    """The slowest matcher's step: the largest contiguous shard's share of the matching."""
    return times.matching_s * math.ceil(classes / matchers) / classes


def predict(matchers: int, experts: int, *, classes: int, devices: int, gpus: bool, times: PartTimes,
            max_experts: int, beside: bool = False, expert_updates: float = 1.0) -> float:
    """Predicted seconds per inner iteration of a layout (see the module's model).
    ``expert_updates``: expert updates per inner iteration, ``1 - 1 / (fix_iter x inner_iters)``
    exactly (none follows a cycle's last iteration); 0.99 in the paper's schedules, so the planner
    takes 1."""
    shard = shard_seconds(classes, matchers, times)
    per_state = times.expert_s * expert_updates / min(experts, max_experts)
    if gpus:  # more matchers than GPUs (given counts): a GPU runs its matchers' shards one after another
        shard *= math.ceil(matchers / devices)
        busiest = max(shard, per_state) + (times.interference * min(shard, per_state) if beside else 0.0)
    else:
        busiest = max(shard, per_state, (matchers * shard + times.expert_s * expert_updates) / devices)
    return busiest + times.overhead_s


def in_process_seconds(times: PartTimes, expert_updates: float = 1.0) -> float:
    """One process, one device: the matching and the expert update one after the other."""
    return times.matching_s + times.expert_s * expert_updates


def candidates(classes: int, devices: int, gpus: bool, max_experts: int,
               matchers: int | None = None, experts: int | None = None) -> list[tuple[int, int, bool]]:
    """Every (matchers, experts, beside) that fits: on GPUs a device per matcher and per expert,
    or one expert beside each of up to all matchers when every device has one; on CPU slots at
    most one actor of each kind per core. Given counts are kept as they are."""
    ns = [matchers] if matchers else range(1, min(classes, devices) + 1)
    ks = [experts] if experts else range(1, max(1, max_experts) + 1)
    found = []
    for n in ns:
        for k in ks:
            if not gpus:  # a given count may oversubscribe the cores; a chosen one does not
                if (n <= devices or matchers) and (k <= devices or experts):
                    found.append((n, k, False))
                continue
            if n + k <= devices:
                found.append((n, k, False))
            elif k <= n and (n >= devices or (matchers and experts)):
                found.append((n, k, True))
    return found


def choose(classes: int, devices: int, gpus: bool, times: PartTimes, *, max_experts: int,
           matchers: int | None = None, experts: int | None = None) -> Choice:
    """The fastest layout by :func:`predict`, the fewest actors among those within ``TIE`` of it.
    ``matchers``/``experts``: counts the user fixed (the planner fills in the rest)."""
    options = [Choice(n, k, beside, predict(n, k, classes=classes, devices=devices, gpus=gpus, times=times,
                                            max_experts=max_experts, beside=beside))
               for n, k, beside in candidates(classes, devices, gpus, max_experts, matchers, experts)]
    if not options:
        raise ValueError(f"no layout of {matchers or 'any number of'} matcher and {experts or 'any number of'} "
                         f"expert actors fits {devices} {'GPU' if gpus else 'CPU'}s; give fewer actors")
    fastest = min(c.seconds for c in options)
    near = [c for c in options if c.seconds <= fastest * (1 + TIE)]
    return min(near, key=lambda c: (c.actors, c.experts, c.beside, c.seconds))


def needs_times(classes: int, devices: int, gpus: bool, max_experts: int,
                matchers: int | None, experts: int | None) -> bool:
    """Whether the part times can change the choice (else the probe is skipped)."""
    return len(candidates(classes, devices, gpus, max_experts, matchers, experts)) > 1


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def reason(choice: Choice, times: PartTimes | None, *, classes: int, devices: int, gpus: bool,
           max_experts: int) -> str:
    """One line: the choice, the part times it rests on and the gain over one actor of each kind."""
    kind = "GPU" if gpus else "CPU"
    where = " (each beside a matcher)" if choice.beside else ""
    head = (f"{plural(choice.matchers, 'matcher actor')} + {plural(choice.experts, 'expert actor')}{where} "
            f"on {plural(devices, kind)}")
    if times is None:
        return f"{head}: the only layout that fits the given counts"
    one = predict(1, 1, classes=classes, devices=devices, gpus=gpus, times=times, max_experts=max_experts,
                  beside=gpus and devices < 2)
    return (f"{head}: matching {times.matching_s:.3g} s over {classes} classes and an expert update "
            f"{times.expert_s:.3g} s per device; predicted {choice.seconds:.3g} s per inner iteration "
            f"against {one:.3g} s with one actor of each kind")


__all__ = ["BESIDE_INTERFERENCE", "Choice", "EXPERT_SHARE", "PartTimes", "candidates", "choose", "in_process_seconds", "needs_times",
           "predict", "reason", "shard_seconds"]
