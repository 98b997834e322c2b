"""The learned formation on the embedded MNIST at CPU scale (issue 29, part 6; the paper's Table 9
in miniature): factor 2 and 3, uniform (bilinear) vs learned (FSRCNN residual) formation, at equal
iterations, each set evaluated with the demo's 3 repeats of ConvNet-3; and the wall time of one
inner iteration of each.

    python benchmarks/learned_formation.py            # condense 4 sets, evaluate them (about 30 min)
    python benchmarks/learned_formation.py --timing   # the per-iteration cost only, 2 outer iterations

Steps, each a job of this repository run as a user runs it:
1. ``jobs/condense.py --preset mnist5k-demo --factor F --set synset.formation=M --backend local``
   for F in 2, 3 and M in uniform, learned (skipped when ``--work`` already holds the set);
2. ``jobs/evaluate.py`` over the four sets, ``--repeat 3`` (the demo's networks and recipe).
The cost of an inner iteration is the job's condensation seconds over its inner iterations (the
expert's training included, the same for both formations): run ``--timing`` on a quiet machine,
as the full run may share its cores with other work. Writes benchmarks/results/learned_formation.json
(or learned_formation_timing.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

from idc_ray.config import load_preset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = "mnist5k-demo"
FACTORS = (2, 3)
FORMATIONS = ("uniform", "learned")
TIMING_NOTE = ("the jobs run one after another; their seconds compare only when nothing else ran on the "
               "machine (what the --timing run is for)")


def job(name: str, *args: str) -> float:
    """Run jobs/<name>.py; returns its wall time in seconds (a failure stops the benchmark)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], cwd=ROOT, check=True)
    return time.perf_counter() - started


def condensed(work: Path, factor: int, formation: str, outer: int | None) -> dict:
    """The set at (factor, formation) under ``work`` (condensed now unless it is there already),
    with what its manifest says of its cost and storage."""
    out = work / f"f{factor}-{formation}"
    if not (out / "manifest.json").exists():
        extra = ["--outer-iters", str(outer)] if outer else []
        job("condense", "--preset", PRESET, "--factor", str(factor), "--set", f"synset.formation={formation}",
            "--backend", "local", "--output", str(out), "--quiet", *extra)
    manifest = json.loads((out / "manifest.json").read_text())
    schedule = manifest["config"]["schedule"]
    iterations = schedule["outer_iters"] * schedule["inner_iters"]
    return {"path": str(out), "factor": factor, "formation": formation, "iterations": iterations,
            "condense_seconds": manifest["metrics"]["seconds"],
            "seconds_per_inner": manifest["metrics"]["seconds"] / iterations, "storage": manifest["storage"]}



def accuracies(report: Path, sets: list[dict]) -> None:
    """Each set's ConvNet-3 runs, mean and std (%) from the evaluation's per-set reports, into ``sets``."""
    summary = json.loads((report / "summary.json").read_text())
    by_source = {e["source"]: json.loads((report / e["results"]).read_text()) for e in summary["sets"]}
    for s in sets:
        runs = [100 * run["last"] for run in by_source[s["path"]]["models"]["convnet3"]["runs"]]
        mean = sum(runs) / len(runs)
        std = (sum((a - mean) ** 2 for a in runs) / len(runs)) ** 0.5
        s.update(runs=runs, mean=mean, std=std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="working folder (default runs/learned_formation[_timing])")
    parser.add_argument("--timing", action="store_true", help="the per-iteration cost only: 2 outer iterations, no evaluation")
    parser.add_argument("--repeat", type=int, default=3, help="evaluation runs per set (default 3, the demo's)")
    args = parser.parse_args()
    work = args.work or ROOT / "runs" / ("learned_formation_timing" if args.timing else "learned_formation")
    work.mkdir(parents=True, exist_ok=True)
    sets = [condensed(work, f, m, 2 if args.timing else None) for f in FACTORS for m in FORMATIONS]
    payload = {"preset": PRESET, "ipc": load_preset(PRESET).synset.ipc, "sets": sets, "note": TIMING_NOTE}
    if not args.timing:
        report = work / "eval"
        payload["evaluation_seconds"] = job("evaluate", "--condensed", *(s["path"] for s in sets), "--preset", PRESET,
                                            "--repeat", str(args.repeat), "--output", str(report))
        accuracies(report, sets)
    path = write("learned_formation_timing" if args.timing else "learned_formation", payload)
    for s in sets:
        acc = f"{s['mean']:.2f} ± {s['std']:.2f}%" if "mean" in s else ""
        print(f"factor {s['factor']} {s['formation']:8s} {s['seconds_per_inner']:.3f} s/inner {acc}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
