"""The condensation job's progress line: written after inner iterations also into a job log
(at least every 10 s and at the end of each outer iteration), with the rate and the time left
for the whole job; redrawn in place on a terminal."""

import io

from idc_ray.cli import ProgressPrinter, duration
from idc_ray.run.schedule import Progress


class Clock:
    """A clock the test moves: ``step_s`` seconds per inner iteration."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(printer: ProgressPrinter, clock: Clock, outer: int, inner: int, first_outer: int = 0) -> None:
    for o in range(first_outer, outer):
        for i in range(inner):
            clock.now += clock.step_s
            printer(Progress(o, i, {0: 1.0, 1: 3.0}, 12.5))


def test_a_job_log_gets_a_line_every_10_s_and_at_each_outer_end_with_rate_and_time_left():
    log, clock = io.StringIO(), Clock(4.0)  # 4 s per inner iteration, 2 x 10 of them
    printer = ProgressPrinter(2, 10, stream=log, every_s=10.0, clock=clock)
    run(printer, clock, 2, 10)
    lines = log.getvalue().splitlines()
    # inner 3 (12 s), 6 (24 s), 9 (36 s), 10 (end of outer 1, 40 s), then 13, 16, 19 and 20
    assert [ln.split(" inner ")[1].split()[0] for ln in lines] == ["3/10", "6/10", "9/10", "10/10"] * 2
    assert lines[0].startswith("[###.....................] outer 1/2 inner 3/10 loss 2 ")
    assert "0.25 it/s 12.5 class-steps/s 12s elapsed, ~1m08s left" in lines[0]  # 17 left at 4 s each
    assert "0.25 it/s" in lines[-1] and lines[-1].endswith("1m20s elapsed, ~0s left")


def test_a_resumed_job_counts_its_rate_from_where_it_resumed():
    log, clock = io.StringIO(), Clock(2.0)
    printer = ProgressPrinter(4, 5, stream=log, every_s=1e9, clock=clock)
    run(printer, clock, 4, 5, first_outer=2)  # outer iterations 3 and 4 of 4
    first, last = log.getvalue().splitlines()
    assert "outer 3/4 inner 5/5" in first and "0.5 it/s" in first and "~10s left" in first


def test_a_terminal_line_is_redrawn_after_every_inner_iteration():
    term, clock = Terminal(), Clock(1.0)
    run(ProgressPrinter(1, 3, stream=term, clock=clock), clock, 1, 3)
    text = term.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0, 59.6, 75, 3725)] == ["0s", "1m00s", "1m15s", "1h02m"]
