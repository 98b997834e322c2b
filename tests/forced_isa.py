"""The second run of `make test`: the `forced_isa` tests again, with a narrower instruction set
forced through torch's and its BLAS libraries' own switches (docs/testing.md).

Why: a float32 result computed by two different kernels (another GEMM shape, another code
path) may differ in the last bits, and which kernels run depends on the CPU. A test suite that
passes on the machine it was written on can fail on another (issue 20: AVX-512 MKL kernels on
an Intel CPU, AVX2 ones on an AMD EPYC). Running the tests whose equalities are most exposed on
another instruction set makes such an assertion fail here, before a user sees it.

The switches, each read by its library at process start:
  ATEN_CPU_CAPABILITY      torch's own vectorised kernels (reductions, pointwise ops)
  MKL_ENABLE_INSTRUCTIONS  MKL's GEMM (nn.Linear, matmul, small convolutions): the one that
                           reproduces issue 20's failure on an AVX-512 machine
  ONEDNN_MAX_CPU_ISA       oneDNN's convolutions
Before the tests, a probe process with the same environment checks that each switch took
effect (torch's reported capability, MKL's and oneDNN's verbose banners), so the run cannot
pass vacuously on a machine whose native instruction set is already the forced one: there the
launcher forces the next narrower set instead.

Usage: python tests/forced_isa.py [extra pytest args]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# native capability -> (name, environment, what each library must then report, what it must not)
NARROWER = {
    "AVX512": ("AVX2", {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                        "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "AVX2": ("DEFAULT", {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                         "ONEDNN_MAX_CPU_ISA": "SSE41"}),
}
# what the libraries' banners say under each forced set: (must contain, must not contain)
BANNERS = {"AVX2": ("AVX2", ("AVX-512", "AVX512")), "DEFAULT": ("SSE4", ("AVX",))}

PROBE = """
import torch
print("capability", torch.backends.cpu.get_cpu_capability(), flush=True)
torch.rand(64, 64) @ torch.rand(64, 3)                               # MKL SGEMM
torch.nn.functional.conv2d(torch.rand(4, 3, 32, 32), torch.rand(8, 3, 3, 3))  # oneDNN
"""


def probe(env: dict[str, str]) -> dict[str, str]:
    """What torch, MKL and oneDNN report about the instruction set under ``env``."""
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    found = {"capability": next((ln.split()[1] for ln in out if ln.startswith("capability ")), "")}
    found["mkl"] = next((ln for ln in out if ln.startswith("MKL_VERBOSE") and "architecture" in ln), "")
    found["onednn"] = next((ln for ln in out if ln.startswith("onednn_verbose") and ",isa:" in ln), "")
    return found


def check_forced(name: str, found: dict[str, str]) -> list[str]:
    """The switches that did not take effect (empty when all did)."""
    want, banned = BANNERS[name]
    problems = []
    if found["capability"] != name:
        problems.append(f"torch reports capability {found['capability'] or '?'}, not {name} (ATEN_CPU_CAPABILITY)")
    for lib, variable in (("mkl", "MKL_ENABLE_INSTRUCTIONS"), ("onednn", "ONEDNN_MAX_CPU_ISA")):
        banner = found[lib]
        if lib == "mkl" and not torch.backends.mkl.is_available():
            continue  # a torch build without MKL (ARM): nothing to force
        if want not in banner or any(b in banner for b in banned):
            problems.append(f"{lib} reports '{banner or 'nothing'}' ({variable} did not take effect)")
    return problems


def main(argv: list[str]) -> int:
    native = torch.backends.cpu.get_cpu_capability()
    if native not in NARROWER:
        print(f"forced_isa: this CPU's capability is {native}; there is no narrower x86 instruction set to force, "
              "so the second run is not made (docs/testing.md)")
        return 0
    name, switches = NARROWER[native]
    env = {**os.environ, **switches, "IDC_FORCED_ISA": name}
    problems = check_forced(name, probe(env))
    if problems:
        print("forced_isa: the forced instruction set did not take effect: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"forced_isa: native {native}, forcing {name} ({' '.join(f'{k}={v}' for k, v in switches.items())})",
          flush=True)
    return subprocess.run([sys.executable, "-m", "pytest", "-m", "forced_isa", *argv], env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
