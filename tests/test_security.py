"""Security (issue 28, items 4-6): no file we load with torch may run pickled code, no credential
reaches what we write or log, and the dashboard address we print carries no token."""

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import torch

from idc_ray.distributed.session import dashboard_lines, printable_url

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("idc_ray", "jobs", "benchmarks")


def _torch_loads(tree: ast.AST):
    """Every call of torch.load (as ``torch.load`` or an imported ``load``) in ``tree``."""
    aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "torch" for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name)
                    and f.value.id == "torch") or (isinstance(f, ast.Name) and f.id in aliases):
                yield node


def test_every_torch_load_in_the_source_passes_weights_only_true():
    """A torch.load without weights_only=True would unpickle arbitrary objects: code run on load."""
    calls, unsafe = 0, []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for call in _torch_loads(ast.parse(path.read_text(), str(path))):
                calls += 1
                flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert calls >= 6  # the scan sees the real calls (checkpoints, caches, sets, baselines, experts)
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_the_scan_catches_an_unsafe_call():
    code = "import torch\nfrom torch import load as L\ntorch.load(p)\nL(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
    found = [(c.lineno, next((k.value.value for k in c.keywords if k.arg == "weights_only"), None))
             for c in _torch_loads(ast.parse(code))]
    assert found == [(3, None), (4, False), (5, True)]


class Payload:
    """An object a pickle would rebuild by calling ``Path.touch(marker)``: code run on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_holding_a_pickled_object_is_refused_in_one_line(run_job, tmp_path):
    out = tmp_path / "run"
    common = ["--preset", "smoke", "--backend", "local", "--output", str(out), "--quiet"]
    assert run_job("condense", *common, "--outer-iters", "1", "--set", "expert.width=4").returncode == 0
    folder, marker = out / "checkpoints", tmp_path / "code-ran"
    good = torch.load(folder / "ckpt-0000001.pt", weights_only=True)
    evil = folder / "ckpt-0000001.pt"
    torch.save({**good, "extra": Payload(marker)}, evil)  # a valid payload, and one pickled object
    pointer = json.loads((folder / "latest.json").read_text())
    pointer["checkpoints"] = [{"outer": 1, "file": evil.name, "sha256": hashlib.sha256(evil.read_bytes()).hexdigest()}]
    (folder / "latest.json").write_text(json.dumps(pointer))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    done = run_job("condense", *common, "--outer-iters", "2", "--set", "expert.width=4", "--resume")
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(evil) in lines[0], done.stderr
    assert "unreadable" in lines[0]
    assert not marker.exists()  # the object was never rebuilt
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written


@pytest.mark.parametrize("url,printed", [
    ("127.0.0.1:8265", "http://127.0.0.1:8265"),
    ("http://10.0.0.5:8265", "http://10.0.0.5:8265"),
    ("http://10.0.0.5:8265/?token=s3cr3t", "http://10.0.0.5:8265/"),
    ("https://head:8265/#/jobs?auth_token=s3cr3t&x=1", "https://head:8265/"),
    ("http://user:s3cr3t@head:8265/api", "http://head:8265/api"),
    ("user:s3cr3t@head:8265", "http://head:8265"),
])
def test_the_printed_dashboard_address_never_carries_a_token(url, printed):
    assert printable_url(url) == printed
    lines = dashboard_lines(url)
    assert lines[0] == f"Ray dashboard: {printed}"
    assert not any("s3cr3t" in line for line in lines)


def _holding(folder: Path, secrets: list[str]) -> list[str]:
    """Every file under ``folder`` whose bytes hold one of ``secrets``, with the secret found."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                raw = path.read_bytes()
            except OSError:  # a socket or a file gone meanwhile
                continue
            found += [f"{path}: {s}" for s in secrets if s.encode() in raw]
    return found


@pytest.mark.slow  # a Ray job of its own, reading and writing S3
def test_no_credential_reaches_what_the_job_writes_or_logs(s3, run_job, tmp_path):
    """A Ray condensation from S3 to S3 with distinctive keys in the AWS variables AND in
    --storage-options (the path by which they could be echoed into a manifest, config.yaml, a
    log line or a Ray task's logs): none of the four strings is in any object written to the
    bucket, the job's stdout or stderr, its caches, or any file of its Ray session (logs included:
    RAY_TMPDIR gives the job's Ray a temp folder of its own)."""
    tag = uuid.uuid4().hex[:10].upper()
    env_key, env_secret, opt_key, opt_secret = (f"{kind}{tag}" for kind in ("AKENV", "SKENV", "AKOPT", "SKOPT"))
    assert run_job("prepare_data", "--dataset", "tiny", "--output", s3.uri("data")).returncode == 0
    ray_tmp = Path(tempfile.mkdtemp(prefix="raysec"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, "AWS_ACCESS_KEY_ID": env_key, "AWS_SECRET_ACCESS_KEY": env_secret,
           "RAY_TMPDIR": str(ray_tmp), "IDC_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, "jobs/condense.py", "--preset", "smoke", "--data-uri", s3.uri("data"),
             "--output", s3.uri("run"), "--outer-iters", "2", "--checkpoint-every", "1", "--address", "local",
             "--storage-options", json.dumps({"key": opt_key, "secret": opt_secret})],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        written = s3.keys("run/")
        assert {"run/manifest.json", "run/config.yaml", "run/condensed.parquet", "run/checkpoints/latest.json"} <= set(written)
        secrets = [env_key, env_secret, opt_key, opt_secret]
        body = lambda key: s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        leaks = [f"s3://{s3.bucket}/{k}: {s}" for k in s3.keys() for s in secrets if s.encode() in body(k)]
        leaks += [f"{name}: {s}" for name, text in (("stdout", done.stdout), ("stderr", done.stderr))
                  for s in secrets if s in text]
        sessions = list((ray_tmp / "ray").glob("session_*/logs/*"))
        assert len(sessions) > 5, "the job's Ray session logs were not found"
        leaks += _holding(ray_tmp, secrets) + _holding(tmp_path, secrets)
        assert not leaks, leaks
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
