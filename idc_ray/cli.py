"""Shared command-line plumbing for jobs/: config flags, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from idc_ray.config import ConfigError, IDCConfig, apply_overrides, load_preset, load_yaml, preset_names, validate

EXIT_BAD_INPUT = 2


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


def run_main(main: Callable[[], int]) -> None:
    """Run a job's main: a bad-input error prints one line to stderr and exits with 2."""
    try:
        code = main()
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
