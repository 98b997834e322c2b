"""The import contracts of pyproject.toml ([tool.importlinter], docs/architecture.md) hold, and
`lint-imports` really fails when code breaks one: Ray outside idc_ray.distributed, a layer
importing one above it, pyarrow in the engine, an import cycle, Ray or a backend in the run
layer, one backend importing the other. And no function in idc_ray/ is longer than
MAX_FUNCTION_LINES."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_FUNCTION_LINES = 60  # def line through last line, docstring included (decorators not counted)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` of the venv with the contracts of ``root``/pyproject.toml, on the idc_ray under ``root``."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent), "LANG": "C.UTF-8"},
                          capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in done.stdout


@pytest.mark.parametrize("module,line,contract,message", [
    ("engine/rng.py", "import ray", "Only idc_ray.distributed imports Ray BROKEN",
     "idc_ray.engine.rng -> ray"),
    ("engine/rng.py", "import idc_ray.evaluation.report", "Layers: each imports only the layers below it",
     "idc_ray.engine is not allowed to import idc_ray.evaluation"),
    ("engine/formation.py", "import pyarrow.parquet", "The engine imports no pyarrow or fsspec (pure PyTorch) BROKEN",
     "idc_ray.engine.formation -> pyarrow"),
    ("distributed/session.py", "import idc_ray.distributed.backend",
     "No import cycles between the modules of a package BROKEN", "No cycles are allowed in idc_ray.distributed"),
    # the run layer: no Ray, even through another module, and no backend
    ("run/hooks.py", "import idc_ray.distributed.session", "The run layer (Algorithm 1 and its hooks) imports no Ray",
     "idc_ray.run.hooks -> idc_ray.distributed.session"),
    ("run/hooks.py", "import idc_ray.local", "Layers: each imports only the layers below it",
     "idc_ray.run is not allowed to import idc_ray.local"),
    # the two backends are independent of each other
    ("local.py", "import idc_ray.distributed.backend", "Layers: each imports only the layers below it",
     "idc_ray.local is not allowed to import idc_ray.distributed"),
])
def test_a_violation_breaks_its_contract(tmp_path, module, line, contract, message):
    shutil.copytree(ROOT / "idc_ray", tmp_path / "idc_ray", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "idc_ray" / module
    target.write_text(target.read_text().replace("\nimport ", f"\n{line}\nimport ", 1))
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert contract in done.stdout and message in done.stdout, done.stdout[-4000:]


def test_benchmarks_open_ray_through_the_session_helper():
    """One way to start or join Ray (idc_ray.distributed.session.ray_session): the benchmarks'
    fixed-size local clusters too, so they shut down the same way and log the same way."""
    own = [f"{p.name}:{n}" for p in sorted((ROOT / "benchmarks").glob("*.py"))
           for n, line in enumerate(p.read_text().splitlines(), 1) if "ray.init(" in line or "ray.shutdown(" in line]
    assert own == [], own


def long_functions(package: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function or method under ``package`` longer than ``limit``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_the_limit():
    offenders = long_functions(ROOT / "idc_ray")
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(offenders)


def test_a_long_function_is_reported(tmp_path):
    """A function of exactly the limit passes; a method one line longer is named with its place."""
    lines = [f"x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1)]  # the def line makes the limit
    source = ["def fits():", *("    " + x for x in lines), "", "", "class C:", "    def too_long(self):",
              *("        " + x for x in lines), "        return 1", ""]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("\n".join(source))
    line = MAX_FUNCTION_LINES + 4
    assert long_functions(tmp_path / "pkg") == [f"pkg/m.py:{line} too_long ({MAX_FUNCTION_LINES + 1} lines)"]
