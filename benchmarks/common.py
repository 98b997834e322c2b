"""Shared helpers for the benchmarks: the paper's matching setting and where results go."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from idc_ray.config import apply_overrides, load_preset

RESULTS = Path(__file__).resolve().parent / "results"

# ConvNet-3 (width 128) at ipc 10, factor 2, batch_real 64, as in the benchmark issue.
PAPER_STEP = {
    "synset.ipc": 10,
    "synset.factor": 2,
    "match.batch_real": 64,
    "expert.model": "convnet3",
    "expert.width": 128,
    "expert.n_data": 500,
}


def paper_config(dataset: str = "mnist5k"):
    return apply_overrides(load_preset("mnist5k-demo"), {**PAPER_STEP, "data.dataset": dataset})


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               **payload}, indent=2))
    tmp.replace(path)
    return path
