"""The measured evaluation table of docs/evaluation.md (issue 27, part 5): on the embedded MNIST
at ipc 1 and 10, IDC, its initialisation, random, herding and full data, each with hard and soft
labels, with the DD-Ranking-style scores, and the wall time of the whole evaluation.

    python benchmarks/evaluation_table.py                 # the demo preset, 1 repeat
    python benchmarks/evaluation_table.py --repeat 3      # the demo's ipc-1 repeats for every arm

Steps, each a job of this repository run as a user runs it:
1. ``jobs/condense.py --preset mnist5k-demo`` at ipc 1 and 10 (in-process: the bytes are the Ray
   backend's, docs/scaling.md), skipped when ``--work`` already holds them;
2. the IDC initialisation of each (the stored images before the first update: ``initial_synset``)
   written as a plain tensor file, evaluated with the same factor;
3. ``jobs/evaluate.py`` over all of them with ``--baseline random herding full --ipc 1 10
   --labels hard soft --scores`` on a local Ray: the demo preset's networks and recipe
   (ConvNet-3 width 32, 300 epochs), one Ray task per (arm, model, repeat).
Writes benchmarks/results/evaluation_table.json (the combined summary, the per-arm accuracies and
scores, the wall times) and prints the report's results.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from idc_ray.config import apply_overrides, load_preset  # noqa: E402
from idc_ray.data import ClassStore, load_dataset  # noqa: E402
from idc_ray.engine.matcher import stack_stored  # noqa: E402
from idc_ray.engine.plan import build_plan, initial_synset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = "mnist5k-demo"
IPCS = (1, 10)


def job(name: str, *args: str) -> float:
    """Run jobs/<name>.py; returns its wall time in seconds (a failure stops the benchmark)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], cwd=ROOT, check=True)
    return time.perf_counter() - started


def condensed(work: Path, ipc: int) -> tuple[Path, float]:
    """The IDC artifact at ``ipc`` under ``work`` (condensed now unless it is there already)."""
    out = work / f"idc-ipc{ipc}"
    if (out / "manifest.json").exists():
        return out, 0.0
    seconds = job("condense", "--preset", PRESET, "--set", f"synset.ipc={ipc}", "--backend", "local",
                  "--output", str(out), "--quiet")
    return out, seconds


def initialisation(work: Path, ipc: int) -> Path:
    """The stored images IDC starts from at ``ipc``, as a plain tensor file in [0, 1]."""
    cfg = apply_overrides(load_preset(PRESET), {"synset.ipc": ipc})
    data = load_dataset(cfg.data.dataset, cfg.data.data_uri)
    store = ClassStore(data.train_x, data.train_y)
    init, labels = stack_stored(initial_synset(build_plan(cfg, data.spec).match, store, store.classes))
    path = work / f"init-ipc{ipc}.pt"
    torch.save({"data": init, "labels": labels}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "evaluation_table", help="working folder")
    parser.add_argument("--repeat", type=int, default=1, help="runs per (arm, model) (default 1)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    condense_seconds, sets = {}, []
    for ipc in IPCS:
        path, condense_seconds[ipc] = condensed(args.work, ipc)
        sets += [str(path), str(initialisation(args.work, ipc))]
    report = args.work / "eval"
    factor = str(load_preset(PRESET).synset.factor)
    seconds = job("evaluate", "--condensed", *sets, "--factor", factor, "--preset", PRESET,
                  "--baseline", "random", "herding", "full", "--ipc", *map(str, IPCS), "--labels", "hard", "soft",
                  "--scores", "--repeat", str(args.repeat), "--output", str(report))
    summary = json.loads((report / "summary.json").read_text())
    path = write("evaluation_table", {"preset": PRESET, "ipcs": list(IPCS), "repeat": args.repeat,
                                      "condense_seconds": condense_seconds, "evaluation_seconds": seconds,
                                      "summary": summary})
    print((report / "results.md").read_text())
    print(f"evaluation: {seconds / 60:.1f} min; written {path}")


if __name__ == "__main__":
    main()
