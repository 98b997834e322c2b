"""Shared fixtures: a real S3-compatible server (moto's server mode) on 127.0.0.1.

``s3`` gives each test a fresh bucket and points the usual AWS environment variables at the
server (fake credentials, endpoint, no instance-metadata lookups, no ~/.aws files), so library
code and job subprocesses reach it exactly as they would reach AWS, with nothing hard-coded.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass

import pytest


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
def _decode_cache(monkeypatch, tmp_path):
    """Each test's decode cache (idc_ray/data/cache.py) in its own temporary folder, never the
    user's ~/.cache."""
    monkeypatch.setenv("IDC_CACHE_DIR", str(tmp_path / "idc-cache"))
