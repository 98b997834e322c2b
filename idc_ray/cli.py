"""Shared command-line plumbing for jobs/: config flags, one-line errors, exit codes, the progress line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from idc_ray import storage
from idc_ray.config import IDCConfig, apply_overrides, load_preset, load_yaml, preset_names, validate
from idc_ray.errors import JobError
from idc_ray.run.schedule import Progress

EXIT_BAD_INPUT = 2
EXIT_BUG = 1
DEBUG_FLAG = "--debug"
PACKAGE_DIR = Path(__file__).resolve().parent
# What a user can fix: the project's errors (ConfigError, StorageError, ArtifactError, ClusterError,
# the dataset errors: all ValueErrors), a missing file, a job that cannot go on (JobError).
USER_ERRORS = (ValueError, FileNotFoundError, JobError)


class UsageError(ValueError):
    """A job's own check of its flags failed (one line, exit 2), wherever main() is called from."""


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="print the traceback of an error too (a bug's traceback is always printed)")


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str = "mnist5k-demo") -> None:
    """The flags every job shares to build an IDCConfig."""
    g = parser.add_argument_group("configuration (applied in this order: preset, --config, flags, --set)")
    g.add_argument("--preset", default=default_preset,
                   help=f"named preset (default: {default_preset}); one of: {', '.join(preset_names())}")
    g.add_argument("--config", metavar="FILE", help="YAML file applied on top of the preset (e.g. a saved config.yaml)")
    g.add_argument("--dataset", help="dataset name (data.dataset)")
    g.add_argument("--data-uri", help="dataset root directory (data.data_uri)")
    g.add_argument("--ipc", type=int, help="stored images per class (synset.ipc)")
    g.add_argument("--factor", type=int, help="multi-formation factor; 1 = IDC-I (synset.factor)")
    g.add_argument("--seed", type=int, help="seed of every random draw (schedule.seed)")
    g.add_argument("--outer-iters", type=int, help="outer iterations; 0 keeps the initialisation (schedule.outer_iters)")
    g.add_argument("--inner-iters", type=int, help="inner iterations per outer iteration (schedule.inner_iters)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set match.lr_img=0.01 (repeatable)")
    add_debug_argument(parser)


_FLAG_KEYS = {
    "dataset": "data.dataset",
    "data_uri": "data.data_uri",
    "ipc": "synset.ipc",
    "factor": "synset.factor",
    "seed": "schedule.seed",
    "outer_iters": "schedule.outer_iters",
    "inner_iters": "schedule.inner_iters",
}


def config_from_args(args: argparse.Namespace) -> IDCConfig:
    """Preset, then --config, flags and --set on top; the result is validated once (a value
    may be out of range in between, e.g. --ipc above the preset's bound with --set synset.bound)."""
    cfg = load_preset(args.preset, validated=False)
    if args.config:
        cfg = load_yaml(args.config, base=cfg, validated=False)
    flags = {key: getattr(args, attr) for attr, key in _FLAG_KEYS.items() if getattr(args, attr) is not None}
    if flags:
        cfg = apply_overrides(cfg, flags, validated=False)
    if args.set:
        cfg = apply_overrides(cfg, args.set, validated=False)
    validate(cfg)
    return cfg


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--storage-options`` and ``--storage-timeout``, the flags of every job that reads or writes
    storage (read by :func:`configure_storage`)."""
    parser.add_argument("--storage-options", metavar="JSON",
                        help='fsspec/s3fs options for s3:// paths, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
                             "or @FILE, a JSON file of them that keeps keys off the command line (default: the usual AWS "
                             "environment variables)")
    parser.add_argument("--storage-timeout", type=float, default=storage.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="how long an operation on s3:// storage is retried, with backoff, while the storage "
                             f"does not answer, before the job stops (default {storage.DEFAULT_TIMEOUT_S:g})")


def configure_storage(args: argparse.Namespace) -> None:
    """Configure this process's storage once, at the job's start, from ``--storage-options`` and
    ``--storage-timeout``: every read and write uses them, and the Ray workers the job starts are
    handed them (idc_ray.storage)."""
    if not args.storage_timeout > 0:
        raise UsageError(f"--storage-timeout must be a positive number of seconds, got {args.storage_timeout:g}")
    storage.configure(storage.parse_storage_options(args.storage_options), args.storage_timeout)


def comma_list(text: str) -> tuple[str, ...]:
    """``"convnet3, resnet10,"`` -> ``("convnet3", "resnet10")``: a comma-separated flag's items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def setup_logging() -> None:
    """Our messages at INFO on stderr as ``[idc-ray] ...``; other libraries' loggers (botocore,
    ray) keep their own levels instead of inheriting a root INFO handler."""
    logger = logging.getLogger("idc_ray")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[idc-ray] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def is_user_error(error: BaseException, job_dir: Path | None = None) -> bool:
    """An error the user can fix (one line, exit 2) rather than a bug (traceback, exit 1).

    The project's own error classes and FileNotFoundError always are; a plain ValueError is when
    our code raised it (a check of the input), in ``idc_ray`` or the job's folder; raised inside a
    library (torch refusing a shape, say) it is a bug in how we called it.
    """
    if not isinstance(error, USER_ERRORS):
        return False
    if type(error).__module__.startswith("idc_ray") or isinstance(error, (FileNotFoundError, JobError)):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return True
    raised_in = Path(frames[-1].filename).resolve()
    return any(folder in raised_in.parents for folder in (PACKAGE_DIR, job_dir) if folder is not None)


def run_main(main: Callable[[], int], argv: Sequence[str] | None = None) -> None:
    """Run a job's main and exit with its code. A user error (:func:`is_user_error`) prints one
    line, ``error: ...``, and exits with 2; any other exception is a bug: its traceback and exit
    1. ``--debug`` in ``argv`` (default ``sys.argv``) prints the traceback of user errors too."""
    debug = DEBUG_FLAG in (sys.argv[1:] if argv is None else argv)
    job_dir = Path(main.__code__.co_filename).resolve().parent
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        user = is_user_error(e, job_dir)
        if debug or not user:
            traceback.print_exc()
        if not user:
            sys.exit(EXIT_BUG)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code or 0)


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressPrinter:
    """The job's progress line, after every inner iteration: on a terminal it is redrawn in
    place; otherwise (a job log) a line is written at the end of every outer iteration and, in
    between, whenever ``every_s`` seconds have passed since the last one, so a log never goes
    quiet for a whole outer iteration (at the paper's 100 inner iterations, minutes on a CPU).
    Each line has the rate in inner iterations per second since the first one this process saw
    (the first alone also carries the actors' start-up; a resumed job counts from where it
    resumed) and the estimated time left for the whole job at that rate."""

    def __init__(self, outer_iters: int, inner_iters: int, stream=None, every_s: float = 10.0,
                 clock=time.perf_counter):
        # sys.stderr when called, not when this module was imported (a notebook or a test may replace it)
        self.outer_iters, self.inner_iters = outer_iters, inner_iters
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.clock = every_s, clock
        self.tty = self.stream.isatty()
        self.losses: list[float] = []
        self.started = clock()
        self.last_line = self.started
        self.first: tuple[int, float] | None = None  # (steps done, time) at the first report

    def line(self, p: Progress, done: int, now: float) -> str:
        total = self.outer_iters * self.inner_iters
        width = 24
        bar = "#" * (width * done // total) + "." * (width - width * done // total)
        shards = "".join(f" {name} {loss:.4g}" for name, loss in p.shards.items())
        elapsed = now - self.started
        first_done, first_time = self.first
        if done > first_done:
            rate = (done - first_done) / max(now - first_time, 1e-9)
        else:
            rate = 1 / elapsed if elapsed > 0 else 0.0
        left = f"~{duration((total - done) / rate)} left" if rate > 0 else "time left unknown"
        ahead = f" expert +{p.expert_ahead} ahead" if p.expert_ahead is not None else ""
        return (f"[{bar}] outer {p.outer + 1}/{self.outer_iters} inner {p.inner + 1}/{self.inner_iters} "
                f"loss {sum(self.losses) / len(self.losses):.4g}{' (' + shards.strip() + ')' if shards else ''} "
                f"{rate:.3g} it/s {p.class_steps_per_s:.1f} class-steps/s{ahead} {duration(elapsed)} elapsed, {left}")

    def __call__(self, p: Progress) -> None:
        now = self.clock()
        self.losses.extend(p.losses.values())
        done = p.outer * self.inner_iters + p.inner + 1
        if self.first is None:
            self.first = (done, now)
        end_of_outer = p.inner + 1 == self.inner_iters
        if self.tty:
            last = done == self.outer_iters * self.inner_iters
            self.stream.write("\r" + self.line(p, done, now) + ("\n" if last else ""))
        elif end_of_outer or now - self.last_line >= self.every_s:
            self.stream.write(self.line(p, done, now) + "\n")
            self.last_line = now
        self.stream.flush()
        if end_of_outer:
            self.losses = []
