"""Shared fixtures: a real S3-compatible server (moto's server mode) on 127.0.0.1, the
session's one local Ray cluster, and the jobs' ``main()`` run in this process.

``s3`` gives each test a fresh bucket and points the usual AWS environment variables at the
server (fake credentials, endpoint, no instance-metadata lookups, no ~/.aws files), so library
code and job subprocesses reach it exactly as they would reach AWS, with nothing hard-coded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import select
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session):
    """The forced-instruction-set run (tests/forced_isa.py) checks in its own process too that
    torch runs the kernels it was told to, so it cannot pass on the machine's native ones."""
    forced = os.environ.get("IDC_FORCED_ISA")
    if forced:
        import torch

        running = torch.backends.cpu.get_cpu_capability()
        if running != forced:
            pytest.exit(f"IDC_FORCED_ISA={forced}, but torch runs its {running} kernels", returncode=1)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (2 CPUs, like CI's machine); jobs join it with
    ``--address``. Metrics are reported every second (read when Ray starts), so a test sees a
    gauge point within a second of its task."""
    import ray

    os.environ["RAY_metrics_report_interval_ms"] = "1000"
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)
    finally:
        del os.environ["RAY_metrics_report_interval_ms"]
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@dataclass(frozen=True)
class JobRun:
    returncode: int
    stdout: str
    stderr: str


_JOBS: dict[str, ModuleType] = {}


def load_job(name: str) -> ModuleType:
    """jobs/<name>.py as a module (jobs/ is not a package)."""
    if name not in _JOBS:
        spec = importlib.util.spec_from_file_location(f"jobs_{name}", ROOT / "jobs" / f"{name}.py")
        _JOBS[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_JOBS[name])
    return _JOBS[name]


@pytest.fixture
def run_job(capsys):
    """``run_job("condense", *argv)``: the job's ``main(argv)`` in this process exactly as its
    ``__main__`` runs it (bad input: one line, exit 2), with its exit code, stdout and stderr;
    no new Python importing torch per call. Logging handlers the job adds (bound to this call's
    captured stderr), environment variables it sets and the storage options it configures are
    undone after each call."""
    from idc_ray import storage
    from idc_ray.cli import run_main

    def run(name: str, *argv: str) -> JobRun:
        logger = logging.getLogger("idc_ray")
        handlers, environ = list(logger.handlers), dict(os.environ)
        capsys.readouterr()
        try:
            with storage.configured(storage.current()):
                run_main(lambda: load_job(name).main(list(argv)))
            raise AssertionError("run_main returned without exiting")
        except SystemExit as e:
            code = e.code or 0
        finally:
            logger.handlers[:] = handlers
            os.environ.clear()
            os.environ.update(environ)
        out = capsys.readouterr()
        return JobRun(code, out.out, out.err)

    return run


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the test's bucket (sorted)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto S3 server for the whole session, on a free local port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path, moto_endpoint):
    """The AWS environment a user would set for an S3-compatible endpoint (fake credentials)."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe 169.254.169.254
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    return moto_endpoint


@pytest.fixture
def s3(aws_env) -> S3:
    """A fresh, empty bucket on the local S3 server, with the AWS env vars pointing at it."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    store = S3(aws_env, bucket)
    store.client().create_bucket(Bucket=bucket)
    return store


@pytest.fixture
def dead_endpoint(monkeypatch) -> str:
    """An S3 endpoint URL on a local port nobody listens on; one attempt per request (fast)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _storage_unconfigured():
    """Each test starts with no storage options configured (idc_ray.storage.configure) and leaves
    none behind, as a fresh process would: a job run in this process configures them."""
    from idc_ray import storage

    with storage.configured(None):
        yield


@pytest.fixture(autouse=True)
def _decode_cache(monkeypatch, tmp_path):
    """Each test's decode cache (idc_ray/data/cache.py) in its own temporary folder, never the
    user's ~/.cache."""
    monkeypatch.setenv("IDC_CACHE_DIR", str(tmp_path / "idc-cache"))


class _Messages(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def idc_log():
    """``seen(level)``: a list that collects the idc_ray logger's messages at ``level`` and above
    from then on (its handlers may not propagate to pytest's caplog)."""
    logger, handlers = logging.getLogger("idc_ray"), []
    before = logger.level

    def seen(level: int = logging.INFO) -> list[str]:
        handlers.append(_Messages(level))
        logger.addHandler(handlers[-1])
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
        return handlers[-1].lines

    yield seen
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(before)



def _damage(path, how: str) -> None:
    """Corrupt a written file as a bad disk or a killed copy would: ``flip`` one byte in its
    middle, or ``truncate`` it to its first half."""
    path = Path(path)
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raise ValueError(how)
    path.write_bytes(bytes(raw))


@pytest.fixture
def damage():
    """``damage(path, how)``: corrupt the file at ``path`` (``how``: ``flip`` or ``truncate``)."""
    return _damage


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server that can stop answering, as a paused
    server does: while paused, connections are still accepted (the kernel's backlog would take
    them) but not a byte passes either way, so clients see their connect succeed and their reads
    time out. The moto server runs in this test process (a thread), so it cannot be SIGSTOPped;
    and moto keeps its buckets in memory, so it must not be restarted."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit("//", 1)[1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.running = threading.Event()
        self.running.set()
        self.closed = threading.Event()
        self.trigger: tuple[bytes, bytes] | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def pause(self) -> None:
        self.running.clear()

    def pause_at(self, method: str, path_part: str) -> None:
        """Pause when a request ``method ...path_part... HTTP/1.1`` reaches the proxy, holding that
        request too: the outage begins at that exact point of a job."""
        self.trigger = (f"{method} ".encode(), path_part.encode())

    def resume(self) -> None:
        self.running.set()

    def close(self) -> None:
        self.closed.set()
        self.running.set()
        self.listener.close()

    def _triggered(self, data: bytes) -> bool:
        trigger, line = self.trigger, data.split(b"\r\n", 1)[0]
        if trigger and line.startswith(trigger[0]) and trigger[1] in line:
            self.trigger = None
            self.pause()
            return True
        return False

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.running.wait()
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        with client, server:
            self._pump(client, server)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Forward bytes both ways until either side closes; hold everything while paused."""
        peers = {client: server, server: client}
        while not self.closed.is_set():
            self.running.wait()
            ready, _, _ = select.select(list(peers), [], [], 0.05)
            for sock in ready:
                if not self.running.is_set():
                    break
                try:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if sock is client and self._triggered(data):
                        self.running.wait()
                    peers[sock].sendall(data)
                except OSError:
                    return


@pytest.fixture
def s3_proxy(s3, monkeypatch) -> Iterator[StallingProxy]:
    """The ``s3`` bucket reached through a :class:`StallingProxy` (``AWS_ENDPOINT_URL`` points
    at the proxy); ``s3.keys`` still reads the server directly."""
    proxy = StallingProxy(s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def one_thread():
    """Matching results depend on torch's thread count (parallel reductions add in another order),
    so the in-process reference runs with the 1 thread each Ray actor gets on this machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
