"""idc_ray.storage on local disk and on a real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
import torch

from idc_ray import storage
from idc_ray.checkpoint import Checkpoint, CheckpointError, CheckpointStore
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


def test_storage_options_from_a_file_keep_keys_off_the_command_line(tmp_path):
    (tmp_path / "s3.json").write_text('{"key": "K", "secret": "S", "client_kwargs": {"region_name": "r"}}')
    assert storage.parse_storage_options(f"@{tmp_path}/s3.json") == {
        "key": "K", "secret": "S", "client_kwargs": {"region_name": "r"}}
    (tmp_path / "bad.json").write_text("{key")
    with pytest.raises(StorageError, match=r"--storage-options file '.*bad.json' is not valid JSON"):
        storage.parse_storage_options(f"@{tmp_path}/bad.json")


def test_parse_storage_options():
    assert storage.parse_storage_options(None) is None
    assert storage.parse_storage_options('{"endpoint_url": "http://h:1"}') == {"endpoint_url": "http://h:1"}
    for bad in ("{nope", "[1, 2]"):
        with pytest.raises(StorageError, match="--storage-options"):
            storage.parse_storage_options(bad)


# ------------------------------------------------------------------ checkpoints (idc_ray/checkpoint.py)
def _ckpt(outer: int) -> Checkpoint:
    g = torch.Generator().manual_seed(outer)
    classes = {c: {"data": torch.rand(2, 1, 4, 4, generator=g), "optimizer": {"buffer": None}} for c in (0, 1)}
    return Checkpoint(outer, classes, {"name": "test"}, [0.5] * outer)


def _same(a: Checkpoint, b: Checkpoint) -> bool:
    return (a.outer, a.config, a.loss_history, sorted(a.classes)) == (b.outer, b.config, b.loss_history, sorted(b.classes)) \
        and all(torch.equal(a.classes[c]["data"], b.classes[c]["data"]) for c in a.classes)


def _files(store: CheckpointStore) -> list[str]:
    return [n for n in storage.listdir(store.root) if n.startswith("ckpt-")]


@pytest.fixture
def warnings_seen(idc_log):
    return idc_log(logging.WARNING)


def test_checkpoint_save_publishes_pointer_last_and_keeps_the_newest_two(root):
    store = CheckpointStore(root)
    store.check_reachable()
    assert store.latest() is None
    for outer in (1, 2, 3):
        uri = store.save(_ckpt(outer))
    assert uri == storage.join(root, "checkpoints", "ckpt-0000003.pt")
    assert _same(store.latest(), _ckpt(3)) and _files(store) == ["ckpt-0000002.pt", "ckpt-0000003.pt"]
    pointer = json.loads(storage.read_bytes(storage.join(store.root, "latest.json")))
    assert (pointer["outer"], [e["outer"] for e in pointer["checkpoints"]]) == (3, [3, 2])
    assert pointer["checkpoints"][0]["sha256"] == hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def test_crash_between_checkpoint_file_and_pointer_keeps_the_previous_one(root, monkeypatch):
    store = CheckpointStore(root)
    store.save(_ckpt(1))
    published = storage.read_bytes(storage.join(store.root, "ckpt-0000001.pt"))
    real_write = storage.atomic_write_bytes

    def killed_before_the_pointer(uri, data):
        if str(uri).endswith("latest.json"):
            raise KeyboardInterrupt  # the process dies after the checkpoint file, before its pointer
        real_write(uri, data)

    monkeypatch.setattr(storage, "atomic_write_bytes", killed_before_the_pointer)
    with pytest.raises(KeyboardInterrupt):
        store.save(_ckpt(2))
    monkeypatch.setattr(storage, "atomic_write_bytes", real_write)
    assert "ckpt-0000002.pt" in _files(store)  # the orphan was written ...
    again = CheckpointStore(root)
    assert _same(again.latest(), _ckpt(1))  # ... but the previous checkpoint is still the latest
    assert storage.read_bytes(storage.join(store.root, "ckpt-0000001.pt")) == published
    again.save(_ckpt(5))
    assert _files(again) == ["ckpt-0000001.pt", "ckpt-0000005.pt"]  # the orphan is pruned


def test_corrupt_checkpoint_is_refused_in_one_line_and_the_previous_one_used(root, warnings_seen):
    store = CheckpointStore(root)
    store.save(_ckpt(1))
    newest = store.save(_ckpt(2))
    raw = bytearray(storage.read_bytes(newest))
    raw[len(raw) // 2] ^= 0xFF
    storage.atomic_write_bytes(newest, bytes(raw))
    entry = json.loads(storage.read_bytes(storage.join(store.root, "latest.json")))["checkpoints"][0]
    with pytest.raises(CheckpointError) as err:
        store.load(entry)
    assert "\n" not in str(err.value) and newest in str(err.value) and "sha256" in str(err.value)
    assert _same(store.latest(), _ckpt(1))
    assert len(warnings_seen) == 1 and newest in warnings_seen[0] and "falling back" in warnings_seen[0]


def test_unreadable_checkpoints_with_no_good_one_left_are_one_line(tmp_path, warnings_seen):
    store = CheckpointStore(str(tmp_path))
    store.save(_ckpt(1))
    pointer_uri = storage.join(store.root, "latest.json")
    pointer = json.loads(storage.read_bytes(pointer_uri))
    garbage = b"not a torch file"  # its checksum matches: refused because it does not load
    storage.atomic_write_bytes(storage.join(store.root, "ckpt-0000001.pt"), garbage)
    pointer["checkpoints"][0]["sha256"] = hashlib.sha256(garbage).hexdigest()
    storage.atomic_write_bytes(pointer_uri, json.dumps(pointer).encode())
    with pytest.raises(CheckpointError) as err:
        store.latest()
    message = str(err.value)
    assert "\n" not in message and "ckpt-0000001.pt' is unreadable" in message and "no earlier good checkpoint" in message
    storage.atomic_write_bytes(pointer_uri, json.dumps({"format": 1, "outer": 1, "file": "ckpt-0000001.pt"}).encode())
    with pytest.raises(CheckpointError, match="not an idc-ray checkpoint pointer") as err:
        store.latest()  # the first release's pointer, without checksums
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ read_json
def test_a_checked_file_carries_its_sha256_written_last_and_is_refused_when_damaged(root, warnings_seen):
    """The one sha256 mechanism of the caches: the sidecar is written after the file; a flipped,
    truncated or unsealed file is refused in one line naming it, and a cache then says so once."""
    uri = storage.join(root, "c", "cache.bin")
    data = bytes(range(256)) * 8
    assert storage.write_checked(uri, data) == hashlib.sha256(data).hexdigest()
    assert storage.read_bytes(storage.sidecar(uri)).decode().strip() == hashlib.sha256(data).hexdigest()
    assert storage.read_checked(uri) == data and storage.cache_intact(uri) and not warnings_seen
    storage.check_file(uri)
    for damaged in (data[:100], data[:1000] + b"\x00" + data[1001:]):
        storage.atomic_write_bytes(uri, damaged)
        with pytest.raises(storage.ChecksumError, match="does not match its sha256") as refused:
            storage.read_checked(uri)
        assert uri in str(refused.value) and "\n" not in str(refused.value)
        with pytest.raises(storage.ChecksumError):
            storage.check_file(uri)
    assert not storage.cache_intact(uri, "rebuilding it")
    assert len(warnings_seen) == 1 and uri in warnings_seen[0] and warnings_seen[0].endswith("; rebuilding it")
    storage.remove(storage.sidecar(uri))
    with pytest.raises(storage.ChecksumError, match="has no sha256"):
        storage.check_file(uri)
    assert not storage.cache_intact(storage.join(root, "c", "absent.bin")) and len(warnings_seen) == 1  # absent: silent


def test_read_json_checks_format_and_version(tmp_path):
    uri = str(tmp_path / "doc.json")
    read = lambda **kw: storage.read_json(uri, fmt="f", version=2, kind="f document", fix="fix it", **kw)  # noqa: E731
    with pytest.raises(ValueError, match="nothing here"):
        read(missing=ValueError("nothing here"))
    for text, message in (("{oops", "is not valid JSON"), ("[1]", "not an f document"),
                          ('{"format": "g", "version": 2}', "format 'g'"),
                          ('{"format": "f", "version": 3}', "format version 3")):
        (tmp_path / "doc.json").write_text(text)
        with pytest.raises(StorageError) as err:
            read()
        assert message in str(err.value) and uri in str(err.value) and str(err.value).endswith("fix it")
    (tmp_path / "doc.json").write_text('{"format": "f", "version": 2, "x": 1}')
    assert read()["x"] == 1
    (tmp_path / "doc.json").write_text('{"x": 1}')
    assert read(implied=True) == {"x": 1}


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


def test_credentials_from_configured_storage_options_win(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    storage.configure(storage.parse_storage_options(json.dumps({"key": "k", "secret": "s", "endpoint_url": s3.endpoint})))
    storage.atomic_write_bytes(s3.uri("x"), b"1")
    assert storage.read_bytes(s3.uri("x")) == b"1" and s3.keys() == ["x"]


def test_configured_options_serve_reads_and_writes_within_their_scope(s3, dead_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint comes from the configured options alone
    uri = s3.uri("scoped.bin")
    with storage.configured({"endpoint_url": s3.endpoint}):
        storage.atomic_write_bytes(uri, b"1")
        assert storage.read_bytes(uri) == b"1" and storage.listdir(s3.uri()) == ["scoped.bin"]
        with storage.configured({"endpoint_url": dead_endpoint}):
            with pytest.raises(StorageError) as err:
                storage.read_bytes(uri)
            assert err.value.kind == "endpoint"
            _one_line(err, dead_endpoint, uri)
        assert storage.current() == {"endpoint_url": s3.endpoint}
        assert storage.exists(uri) and storage.read_bytes(uri) == b"1"
    assert storage.current() is None


def test_configured_scope_is_undone_when_the_block_raises():
    storage.configure({"endpoint_url": "http://outer:1"})
    with pytest.raises(RuntimeError):
        with storage.configured({"endpoint_url": "http://inner:1"}):
            raise RuntimeError("boom")
    assert storage.current() == {"endpoint_url": "http://outer:1"}
    storage.configure(None)
    assert storage.current() is None


def test_option_errors_name_keys_never_values(s3):
    with storage.configured({"key": "AKIDSECRETKEYID", "secret": "hunter2-secret", "retries": 1}):
        with pytest.raises(StorageError) as err:
            storage.read_bytes(s3.uri("x"))
    assert err.value.kind == "options"
    _one_line(err, "'key'", "'retries'", "'secret'", "--storage-options")
    assert "AKIDSECRETKEYID" not in str(err.value) and "hunter2" not in str(err.value)


def test_unknown_storage_option_is_named(s3):
    with storage.configured({"retries": 1}), pytest.raises(StorageError) as err:
        storage.read_bytes(s3.uri("x"))
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


# ------------------------------------------------------------------ a job's Ray workers
def test_ray_job_on_s3_with_the_endpoint_only_in_storage_options(s3, ray_cluster, run_job, monkeypatch):
    """The session's Ray started before any test's AWS variables, so its workers have none: the
    actors read the bucket only because the job hands them its --storage-options."""
    import ray

    from idc_ray.artifacts import load_condensed

    worker_env = ray.get(ray.remote(lambda: [v for v in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID") if v in os.environ])
                         .options(num_cpus=0).remote())
    assert worker_env == [], "the session's Ray workers see AWS variables: this test would prove nothing"
    assert run_job("prepare_data", "--dataset", "tiny", "--output", s3.uri("data")).returncode == 0
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    options = {"endpoint_url": s3.endpoint, "key": "idc-test-key-id", "secret": "idc-test-secret-value"}
    done = run_job("condense", "--preset", "smoke", "--outer-iters", "1", "--data-uri", s3.uri("data"),
                   "--output", s3.uri("run"), "--address", ray_cluster, "--storage-options", json.dumps(options),
                   "--quiet")
    assert done.returncode == 0, done.stderr
    assert "idc-test-secret-value" not in done.stdout + done.stderr
    with storage.configured(options):
        stored, labels, manifest = load_condensed(s3.uri("run"))
    assert manifest["metrics"]["backend"] == "ray" and len(manifest["metrics"]["placement"]) >= 2
    assert stored.shape[0] == 4 and "run/checkpoints/latest.json" in s3.keys("run/")


# ------------------------------------------------------------------ outages: the retry policy
class _Clock:
    """A fake clock that moves only when slept on, or when an attempt takes time."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_doubles_up_to_its_cap():
    waits = storage.backoff(0.5, 15.0)
    assert [next(waits) for _ in range(8)] == [0.5, 1, 2, 4, 8, 15, 15, 15]


def test_retry_backs_off_until_the_deadline_then_gives_up_from_the_last_error():
    clock, lefts = _Clock(), []

    def attempt(left):
        lefts.append(left)
        clock.now += 0.25  # each attempt takes a quarter second to fail
        raise storage.StorageError(f"timed out #{len(lefts)}", "timeout")

    with pytest.raises(storage.Unanswered) as gave_up:
        storage.retry(attempt, 10.0, lambda e: e.kind == "timeout", clock=lambda: clock.now, sleep=clock.sleep)
    # 0.5, 1, 2, 4 of backoff; the next wait (8 s) is cut to end at the deadline
    assert clock.sleeps == [0.5, 1, 2, 4, 1.25]
    assert clock.now == pytest.approx(10.25) and gave_up.value.attempts == 6  # the last attempt began at 10
    assert str(gave_up.value.last) == "timed out #6"
    assert lefts[0] == 10.0 and lefts == sorted(lefts, reverse=True)


def test_retry_returns_once_the_storage_answers_and_passes_other_errors_at_once():
    clock, calls = _Clock(), []

    def flaky(left):
        calls.append(left)
        if len(calls) < 3:
            raise storage.StorageError("no answer", "timeout")
        return "bytes"

    transient = lambda e: getattr(e, "kind", None) == "timeout"  # noqa: E731
    assert storage.retry(flaky, 60.0, transient, clock=lambda: clock.now, sleep=clock.sleep) == "bytes"
    assert clock.sleeps == [0.5, 1.0]

    def missing(left):
        raise storage.StorageError("absent", "missing")

    with pytest.raises(storage.StorageError, match="absent"):
        storage.retry(missing, 60.0, transient, clock=lambda: clock.now, sleep=clock.sleep)
    assert clock.sleeps == [0.5, 1.0]


def test_the_storage_timeout_travels_with_the_options_to_another_process():
    with storage.configured({"endpoint_url": "http://x"}):
        assert storage.timeout_s() == storage.DEFAULT_TIMEOUT_S
        assert storage.current() == {"endpoint_url": "http://x"}
    storage.configure(None, 7)
    handed = storage.current()
    assert handed == {storage.TIMEOUT_KEY: 7.0}
    storage.configure(None)
    assert storage.timeout_s() == storage.DEFAULT_TIMEOUT_S
    storage.configure(handed)  # what a Ray worker does with the driver's current()
    assert storage.timeout_s() == 7.0 and storage.current() == handed


def test_an_unanswered_operation_stops_in_one_line_within_the_bound(s3, s3_proxy):
    """A paused server: connect succeeds, nothing answers (without the bound, s3fs and botocore
    retried one read for about 7 minutes)."""
    uri = s3.uri("ckpt.pt")
    storage.atomic_write_bytes(uri, b"state")
    storage.configure(None, 1)
    s3_proxy.pause()
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(uri)
    assert err.value.kind == "outage" and str(err.value).startswith(f"storage at {uri} did not answer for 1 s")
    s3_proxy.resume()
    # the next read may first meet a pooled connection the pause left dead: allow the retry its time
    storage.configure(None, 30)
    assert storage.read_bytes(uri) == b"state"
