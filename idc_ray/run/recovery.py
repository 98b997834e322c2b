"""Restarts around Algorithm 1: when an attempt fails the way a lost actor does, every shard goes
back to the last checkpoint (held in memory) and the schedule replays from there. The replay is
deterministic (every draw keyed by (seed, class, outer, inner)), so the job still ends with the
bytes of an uninterrupted run."""

from __future__ import annotations

import logging
from typing import Protocol

from idc_ray.checkpoint import Checkpoint
from idc_ray.config import IDCConfig
from idc_ray.errors import JobError, first_line
from idc_ray.run.hooks import RunHooks
from idc_ray.run.schedule import ExpertSource, Matchers, algorithm1

log = logging.getLogger("idc_ray")


class Attempts(Protocol):
    """A backend's matchers and expert for one job, built afresh for every attempt."""

    placement: list[dict]  # where the actors of the current attempt run, the matchers first

    def open(self, ckpt: Checkpoint | None, first_outer: int) -> tuple[Matchers, ExpertSource]: ...
    def close(self) -> None: ...
    def is_failure(self, error: BaseException) -> bool: ...


def run_with_restarts(cfg: IDCConfig, attempts: Attempts, hooks: RunHooks, *, window: int = 2,
                      max_restarts: int = 3) -> tuple[dict[int, dict], dict | None, int]:
    """Algorithm 1 to the end, restarting from the last checkpoint after a failure the backend
    recovers from (``attempts.is_failure``); returns (class states, shared state, restarts): the
    shared state is a learned formation's upsampler (``Matchers.shared``), else None."""
    restarts = 0
    while True:
        first = hooks.first_outer
        matchers, expert = attempts.open(hooks.checkpoint, first)
        try:
            hooks.begin(matchers)
            algorithm1(cfg.schedule, matchers, expert, hooks, first_outer=first, window=window)
            return (*hooks.final_states(matchers), restarts)
        except Exception as e:  # noqa: BLE001 - only what the backend calls a failure is recovered
            if not attempts.is_failure(e):
                raise
            restarts += 1
            _give_up_or_warn(e, hooks.checkpoint, restarts, max_restarts)
            hooks.rewind()
        finally:
            attempts.close()


def _give_up_or_warn(error: BaseException, ckpt: Checkpoint | None, restarts: int, max_restarts: int) -> None:
    if restarts > max_restarts:
        kept = f"; the last good checkpoint (outer {ckpt.outer}) is kept" if ckpt else ""
        raise JobError(f"actors failed {restarts} times, more than --max-restarts {max_restarts}: "
                       f"{first_line(error, typed=True)}{kept}") from None
    where = "the last checkpoint" if ckpt else "the initialisation"
    log.warning("actor failure: %s; restarting the actors from %s (outer %d), restart %d of at most %d",
                first_line(error, typed=True), where, ckpt.outer if ckpt else 0, restarts, max_restarts)
