"""The forced-instruction-set run of `make test` (tests/forced_isa.py) checks that its switches
took effect, so it cannot pass on the machine's native kernels."""

import importlib.util
import os
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("forced_isa", Path(__file__).with_name("forced_isa.py"))
forced_isa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(forced_isa)


def test_the_check_refuses_native_kernels_and_accepts_the_forced_ones():
    native = torch.backends.cpu.get_cpu_capability()
    if native not in forced_isa.NARROWER:  # nothing narrower to force: the launcher says so and runs nothing
        assert forced_isa.main([]) == 0
        return
    name, switches = forced_isa.NARROWER[native]
    plain = {k: v for k, v in os.environ.items() if k not in switches}
    problems = forced_isa.check_forced(name, forced_isa.probe(plain))
    assert any("ATEN_CPU_CAPABILITY" in p for p in problems)
    assert any("ONEDNN_MAX_CPU_ISA" in p for p in problems)
    assert torch.backends.mkl.is_available() == any("MKL_ENABLE_INSTRUCTIONS" in p for p in problems)
    assert forced_isa.check_forced(name, forced_isa.probe({**plain, **switches})) == []
