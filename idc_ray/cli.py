"""Shared command-line plumbing for jobs/: config flags, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from idc_ray import storage
from idc_ray.config import IDCConfig, apply_overrides, load_preset, load_yaml, preset_names, validate
from idc_ray.distributed.schedule import JobError

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


def configure_storage(args: argparse.Namespace) -> None:
    """Configure this process's storage once, at the job's start, from ``--storage-options``: every
    read and write uses it, and the Ray workers the job starts are handed it (idc_ray.storage)."""
    storage.configure(storage.parse_storage_options(args.storage_options))


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
