"""idc_ray.storage on local disk and on a real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import json
import os

import pytest

from idc_ray import storage
from idc_ray.storage import StorageError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """The same tests on a local folder and on a bucket prefix."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3").uri("store")


def test_write_read_exists_list_remove(root):
    uri = storage.join(root, "a", "x.bin")
    assert not storage.exists(uri)
    storage.atomic_write_bytes(uri, b"hello")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"hello"
    storage.atomic_write_bytes(uri, b"replaced")
    assert storage.read_bytes(uri) == b"replaced"
    with storage.atomic_open(storage.join(root, "a", "y.bin")) as f:
        f.write(b"streamed")
    with storage.open_input(storage.join(root, "a", "y.bin")) as f:
        f.seek(2)
        assert f.read() == b"reamed"
    assert storage.listdir(storage.join(root, "a")) == ["x.bin", "y.bin"]
    assert storage.listdir(storage.join(root, "nothing-here")) == []
    storage.remove(uri)
    assert not storage.exists(uri) and storage.listdir(storage.join(root, "a")) == ["y.bin"]
    storage.remove(uri)  # missing_ok
    with pytest.raises(StorageError) as err:
        storage.read_bytes(uri)
    assert err.value.kind == "missing" and uri in str(err.value)


def test_failed_streaming_write_leaves_nothing(root):
    uri = storage.join(root, "partial.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_open(uri) as f:
            f.write(b"x" * 1000)
            raise RuntimeError("boom")
    assert not storage.exists(uri)
    assert storage.listdir(root) == []  # no temporary file left behind either


def test_local_atomic_write_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    storage.atomic_write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_local_path(target) as tmp:
            tmp.write_bytes(b"new, half written")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_join_and_is_local():
    assert storage.join("s3://b/prefix/", "x", "y") == "s3://b/prefix/x/y"
    assert storage.join("/data", "x") == os.path.join("/data", "x")
    assert storage.is_local("/data") and storage.is_local("file:///data") and not storage.is_local("s3://b/k")


def test_parse_storage_options():
    assert storage.parse_storage_options(None) is None
    assert storage.parse_storage_options('{"endpoint_url": "http://h:1"}') == {"endpoint_url": "http://h:1"}
    for bad in ("{nope", "[1, 2]"):
        with pytest.raises(StorageError, match="--storage-options"):
            storage.parse_storage_options(bad)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_commit_publishes_last_and_prunes(root):
    assert storage.latest_checkpoint(root) is None
    first = storage.commit_checkpoint(root, 1, {"state.pt": b"one", "extra.json": b"{}"}, meta={"outer": 1})
    ckpt = storage.latest_checkpoint(root)
    assert ckpt.step == 1 and ckpt.files == {"state.pt": b"one", "extra.json": b"{}"} and ckpt.meta == {"outer": 1}
    assert ckpt.uri == first
    storage.commit_checkpoint(root, 2, {"state.pt": b"two"})
    storage.commit_checkpoint(root, 2, {"state.pt": b"two again"})  # same step twice: new folder
    ckpt = storage.latest_checkpoint(root)
    assert ckpt.step == 2 and ckpt.files == {"state.pt": b"two again"}
    folders = [n for n in storage.listdir(root) if n.startswith("ckpt-")]
    assert len(folders) == 2 and first.rstrip("/").rsplit("/", 1)[-1] not in folders  # keep=2


def test_interrupted_checkpoint_keeps_the_previous_one(root, monkeypatch):
    storage.commit_checkpoint(root, 1, {"state.pt": b"one"})
    real_write = storage.atomic_write_bytes
    calls = []

    def crash_on_second_file(uri, data, options=None):
        calls.append(uri)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed mid-commit
        real_write(uri, data, options)

    monkeypatch.setattr(storage, "atomic_write_bytes", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        storage.commit_checkpoint(root, 2, {"a.pt": b"new-a", "b.pt": b"new-b"})
    monkeypatch.setattr(storage, "atomic_write_bytes", real_write)
    ckpt = storage.latest_checkpoint(root)
    assert ckpt.step == 1 and ckpt.files == {"state.pt": b"one"}
    storage.commit_checkpoint(root, 3, {"state.pt": b"three"}, keep=1)  # prunes the orphan too
    assert len([n for n in storage.listdir(root) if n.startswith("ckpt-")]) == 1


def test_corrupt_checkpoint_is_one_clear_line(tmp_path):
    root = str(tmp_path)
    folder = storage.commit_checkpoint(root, 5, {"state.pt": b"payload"})
    with open(os.path.join(folder, "state.pt"), "wb") as f:
        f.write(b"payloaX")
    with pytest.raises(StorageError, match="checksum") as err:
        storage.latest_checkpoint(root)
    assert "\n" not in str(err.value)
    (tmp_path / "latest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(StorageError, match="not an idc-ray checkpoint pointer"):
        storage.latest_checkpoint(root)


# ------------------------------------------------------------------ S3 failures
def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg


def test_missing_bucket(s3):
    uri = f"s3://no-such-bucket-{s3.bucket}/x/y.bin"
    for call in (lambda: storage.atomic_write_bytes(uri, b"1"), lambda: storage.read_bytes(uri),
                 lambda: storage.exists(uri), lambda: storage.listdir(uri)):
        with pytest.raises(StorageError) as err:
            call()
        assert err.value.kind == "bucket"
        _one_line(err, f"no-such-bucket-{s3.bucket}", "does not exist", "create it")


def test_no_credentials(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError) as err:
        storage.atomic_write_bytes(s3.uri("x"), b"1")
    assert err.value.kind == "credentials"
    _one_line(err, s3.uri("x"), "AWS_ACCESS_KEY_ID")


def test_credentials_from_storage_options_win(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = storage.parse_storage_options(json.dumps({"key": "k", "secret": "s", "endpoint_url": s3.endpoint}))
    storage.atomic_write_bytes(s3.uri("x"), b"1", options)
    assert storage.read_bytes(s3.uri("x"), options) == b"1" and s3.keys() == ["x"]


def test_unknown_storage_option_is_named(s3):
    with pytest.raises(StorageError) as err:
        storage.read_bytes(s3.uri("x"), {"retries": 1})
    assert err.value.kind == "options"
    _one_line(err, "retries", "--storage-options")


def test_endpoint_down(s3, dead_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint)
    with pytest.raises(StorageError) as err:
        storage.read_bytes(s3.uri("x"))
    assert err.value.kind == "endpoint"
    _one_line(err, dead_endpoint, s3.uri("x"), "AWS_ENDPOINT_URL")


def test_permission_denied(s3, monkeypatch):
    """A real IAM denial: a read-only user tries to write, with moto enforcing IAM."""
    import boto3
    from moto import settings

    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                                                       "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with pytest.raises(StorageError) as err:
        storage.atomic_write_bytes(s3.uri("x"), b"1")
    assert err.value.kind == "permission"
    _one_line(err, s3.uri("x"), "permission denied")
