"""IDC in the task-incremental setting at CPU scale, on a stand-in for SVHN -> MNIST -> USPS.

Where the real SVHN and USPS files are absent, the three tasks are built from the embedded MNIST
subset (mnist5k, 4,000 train / 1,000 test), split into three disjoint thirds (every third image
of each class), each written in its dataset's own on-disk format so the `digits-task` preset
reads them through the real loaders:

* "svhn": the first third at 32x32, each digit painted in a foreground colour on a background
  colour drawn per image (train_32x32.mat / test_32x32.mat, label 10 for the digit 0);
* "mnist": the second third as it is (MNIST/raw idx files);
* "usps": the last third downscaled to 16x16 grey (usps.bz2 / usps.t.bz2, libsvm, [-1, 1]).

Not the paper's data: the tasks share MNIST's writers and differ only in colour and size, so the
numbers say that the task-incremental job works end to end with IDC exemplars, not what the paper
measures. Writes benchmarks/results/continual_digits_standin.json (the table and the command).

    python benchmarks/digits_standin.py            # about 10 minutes on 2 idle cores
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from idc_ray.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import write  # noqa: E402

# CPU scale: the svhn preset's condensation (10 x 10 iterations instead of 2000 x 100, ConvNet-3 of
# width 32), 2 stored images per class, learners of width 32 trained 200 epochs per stage, 2 repeats.
FLAGS = ["--preset", "digits-task", "--memory-ipc", "2", "--exemplars", "idc,herding,random,none",
         "--epochs", "200", "--repeat", "2", "--herding-epochs", "5", "--width", "32",
         "--set", "schedule.outer_iters=10", "--set", "schedule.inner_iters=10", "--set", "expert.width=32",
         "--set", "expert.n_data=256", "--set", "eval.width=32", "--address", "local"]


def thirds(x: torch.Tensor, y: torch.Tensor, part: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every third image of each class, starting at ``part``: three disjoint, balanced parts."""
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        keep[torch.nonzero(y == c).flatten()[part::3]] = True
    return x[keep], y[keep]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def coloured(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Grey digits (N, 1, H, W) painted: background + (foreground - background) * ink, per image."""
    g = torch.Generator().manual_seed(seed)
    fg, bg = torch.rand(len(x), 3, 1, 1, generator=g), torch.rand(len(x), 3, 1, 1, generator=g)
    ink = x.float() / 255
    return ((bg + (fg - bg) * ink) * 255).round().clamp(0, 255).to(torch.uint8)


def write_svhn(folder: Path, split: str, x: torch.Tensor, y: torch.Tensor) -> None:
    import scipy.io as sio

    labels = y.clone()
    labels[labels == 0] = 10
    sio.savemat(folder / f"{split}_32x32.mat", {"X": x.permute(2, 3, 1, 0).numpy(), "y": labels.view(-1, 1).numpy()})


def write_idx(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_usps(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    values = x.flatten(1).float() / 255 * 2 - 1
    lines = [f"{int(label) + 1} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(row.tolist()))
             for label, row in zip(y, values)]
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def write_standin(folder: Path) -> Path:
    """The three tasks' files under ``folder`` (one --data-uri for all three, torchvision layouts)."""
    data = load_dataset("mnist5k")
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        sx, sy = thirds(x, y, 0)
        write_svhn(folder, split, coloured(resize(sx, 32), seed=0 if split == "train" else 1), sy)
        mx, my = thirds(x, y, 1)
        prefix = "train" if split == "train" else "t10k"
        write_idx(raw / f"{prefix}-images-idx3-ubyte", mx[:, 0].numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", my.numpy())
        ux, uy = thirds(x, y, 2)
        write_usps(folder / ("usps.bz2" if split == "train" else "usps.t.bz2"), resize(ux, 16), uy)
    return folder


def main() -> None:
    spec = importlib.util.spec_from_file_location("continual_job", ROOT / "jobs" / "continual.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with tempfile.TemporaryDirectory(prefix="digits-standin-") as tmp:
        data = write_standin(Path(tmp) / "data")
        out = Path(tmp) / "run"
        started = time.perf_counter()
        assert job.main([*FLAGS, "--data-uri", str(data), "--output", str(out)]) == 0
        doc = json.loads((out / "results.json").read_text())
        table = (out / "results.md").read_text()
    write("continual_digits_standin", {
        "command": "python benchmarks/digits_standin.py", "job_flags": FLAGS, "wall_s": time.perf_counter() - started,
        "exemplar_s": doc["exemplar_seconds"], "stages": doc["stages"], "memory_per_stage": doc["memory_per_stage"],
        "results": doc["results"], "table": table})
    print(table)


if __name__ == "__main__":
    main()
