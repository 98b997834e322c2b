"""One storage layer for every file idc-ray reads or writes: local paths and fsspec URLs (``s3://``).

Connection settings are never hard-coded. They come from, in order of precedence:

* the process's storage options: a dict handed to fsspec, set once per process with
  :func:`configure` (a job passes its ``--storage-options '{"endpoint_url": ...}'``, parsed by
  :func:`parse_storage_options`; :func:`configured` sets them for a block only, as tests do).
  They are not passed from function to function: a Ray task or actor that touches storage gets the
  driver's :func:`current` options as an explicit argument and configures its own process with
  them first (``idc_ray.distributed.actors.configure_worker``), never through runtime_env
  variables, which the dashboard shows;
* the usual AWS environment: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (read here, so the
  endpoint works whatever the installed botocore honours), and ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` ... which botocore reads
  itself (not ``AWS_MAX_ATTEMPTS``: the retries are this module's, see Outages below).

Atomicity: a local file is written under a temporary name in the same folder, fsynced and renamed
(``os.replace`` is atomic on POSIX). An S3 object appears only when its PUT (or multipart upload)
completes, so an interrupted upload leaves nothing; a failed streaming upload is aborted. A set of
files is committed by writing the files first and a small pointer or manifest LAST
(the checkpoints' ``latest.json``, the artifact's ``manifest.json``, the dataset's ``dataset.json``).

Checksums: every file idc-ray reads back carries a sha256 recorded when it was written, in the
pointer or manifest that publishes it (checkpoints, artifacts) or, for a single cached file, in a
sidecar ``<file>.sha256`` written LAST (:func:`write_checked`, :func:`seal`). A file whose bytes
do not match is refused with one line naming it (:class:`ChecksumError`); a cache
(:func:`cache_intact`) is then rebuilt, never silently used.

Every failure of the backend surfaces as one :class:`StorageError` line naming the URI and the fix
(and the storage options by their keys, never their values: they may hold secrets).

Outages: every operation on a remote URI is retried, with exponential backoff (:func:`retry`),
while the storage does not answer (timeouts, connection failures, 5xx and throttling replies),
for at most the storage timeout (``--storage-timeout``, :data:`DEFAULT_TIMEOUT_S` by default);
then it stops with one line, ``storage at <uri> did not answer for N s``. Each attempt's connect
and read timeouts, and the whole blocking call (fsspec's ``sync`` timeout: the read timeout does
not cover every wait, a PUT's ``Expect: 100-continue`` has none), are capped by what is left of
that bound, and the libraries' own retries are
switched off (s3fs ``retries=1``, botocore ``max_attempts=1``): their retries count attempts,
not time, and multiply (s3fs's 5 tries of botocore's 5 attempts of a 15 s read made a paused
server hang one read for about 7 minutes), so neither gives a total deadline. An endpoint that
has never answered this process fails at once when the connection is refused (a wrong endpoint
is far likelier than an outage at that moment).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.core import split_protocol

LOCAL_PROTOCOLS = (None, "file", "local")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

DEFAULT_TIMEOUT_S = 180.0
TIMEOUT_KEY = "idc_storage_timeout_s"  # the bound, handed to another process inside current()
ATTEMPT_TIMEOUTS_S = (5.0, 15.0)  # connect, read: s3fs's defaults, capped by what is left of the bound
MIN_ATTEMPT_TIMEOUT_S = 1.0
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 15.0
TRANSIENT = ("endpoint", "timeout", "unavailable")  # StorageError kinds an outage produces

_configured: dict[str, Any] | None = None  # this process's storage options (configure)
_timeout_s = DEFAULT_TIMEOUT_S  # this process's storage timeout (configure)
_reached: set[str] = set()  # endpoints that answered this process at least once


class StorageError(ValueError):
    """A storage operation failed; the message is one line naming the URI and the fix.

    ``kind`` is one of ``bucket`` (bucket missing), ``credentials`` (none found), ``endpoint``
    (service unreachable), ``timeout`` (no answer in time), ``unavailable`` (a 5xx or throttling
    reply), ``outage`` (one of those three for longer than the storage timeout), ``permission``,
    ``missing`` (object/file absent), ``options`` (bad storage options) or ``io`` (anything else
    the backend reported).
    """

    def __init__(self, message: str, kind: str = "io"):
        super().__init__(" ".join(message.split()))
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# The process's storage options
# ---------------------------------------------------------------------------------------------
def configure(options: Mapping[str, Any] | None, timeout_s: float | None = None) -> None:
    """Set the fsspec options every storage call of this process uses (None or empty: none, the
    AWS environment alone) and how long an operation waits for storage that does not answer
    (``timeout_s``; None: the one ``options`` carries under :data:`TIMEOUT_KEY`, else
    :data:`DEFAULT_TIMEOUT_S`). A job calls it once at start; a Ray worker at the start of its
    task or actor, with the driver's :func:`current` handed over as an argument."""
    global _configured, _timeout_s
    options = dict(options or {})
    carried = options.pop(TIMEOUT_KEY, None)
    _timeout_s = float(timeout_s if timeout_s is not None else carried if carried is not None else DEFAULT_TIMEOUT_S)
    _configured = options or None


def current() -> dict[str, Any] | None:
    """A copy of what :func:`configure` set (None when nothing), to hand to another process: the
    options, and the storage timeout under :data:`TIMEOUT_KEY` when it is not the default."""
    handed = dict(_configured or {})
    if _timeout_s != DEFAULT_TIMEOUT_S:
        handed[TIMEOUT_KEY] = _timeout_s
    return handed or None


def timeout_s() -> float:
    """How long this process waits for storage that does not answer (:func:`configure`)."""
    return _timeout_s


@contextmanager
def configured(options: Mapping[str, Any] | None) -> Iterator[None]:
    """:func:`configure` for the block only: the previous options are back afterwards."""
    previous = current()
    configure(options)
    try:
        yield
    finally:
        configure(previous)


# ---------------------------------------------------------------------------------------------
# URIs and filesystems
# ---------------------------------------------------------------------------------------------
def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """Parse a ``--storage-options`` JSON object, or ``@FILE``: the object in a local file (None or
    empty: None). The file form keeps keys off the command line, which ``ps`` shows every user of
    the machine and Ray records as the job's entrypoint (the dashboard's Jobs page)."""
    if not text:
        return None
    source = "--storage-options"
    if text.startswith("@"):
        source, text = _options_file(text[1:])
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise StorageError(f"{source} is not valid JSON ({e.msg} at char {e.pos}); "
                           'pass an object such as \'{"endpoint_url": "http://host:9000"}\'', "options") from None
    if not isinstance(value, dict):
        raise StorageError(f"{source} must be a JSON object, got {type(value).__name__}", "options")
    return value


def _options_file(path: str) -> tuple[str, str]:
    """``--storage-options @path``: the file's name (for messages) and its text."""
    try:
        return f"--storage-options file '{path}'", Path(path).expanduser().read_text()
    except OSError as e:
        raise StorageError(f"--storage-options @{path}: cannot read the file ({e.strerror or e}); "
                           "pass @ and the path of a JSON file of fsspec/s3fs options", "options") from None


def is_local(uri: str | os.PathLike) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return split_protocol(os.fspath(uri))[0] in LOCAL_PROTOCOLS


def join(uri: str | os.PathLike, *names: str) -> str:
    """``uri`` with path components appended (``/`` separated for URLs, os.path for local paths)."""
    uri = os.fspath(uri)
    if split_protocol(uri)[0] is None:
        return os.path.join(uri, *names)
    return posixpath.join(uri.rstrip("/"), *names)


def _options(uri: str, attempt_s: float | None = None) -> dict[str, Any]:
    """fsspec keyword arguments for ``uri``: the configured options plus the endpoint from the env;
    for S3, connect/read timeouts of at most ``attempt_s`` (what is left of the storage timeout)
    and no retries of botocore's own (:func:`retry` is the one retry policy; :func:`open_fs` turns
    s3fs's off). Options the user passed in ``config_kwargs`` win."""
    options = dict(_configured or {})
    protocol = split_protocol(uri)[0]
    if protocol in ("s3", "s3a"):
        nested = (options.get("client_kwargs") or {}).get("endpoint_url")
        if "endpoint_url" not in options and not nested:
            endpoint = next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)
            if endpoint:
                options["endpoint_url"] = endpoint
        # A fresh instance per call: fsspec's instance cache would keep credentials and listings
        # from before an environment change or another process's write.
        options.setdefault("skip_instance_cache", True)
        limit = max(MIN_ATTEMPT_TIMEOUT_S, attempt_s if attempt_s is not None else _timeout_s)
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", min(ATTEMPT_TIMEOUTS_S[0], limit))
        config.setdefault("read_timeout", min(ATTEMPT_TIMEOUTS_S[1], limit))
        config.setdefault("retries", {"max_attempts": 1})
        options["config_kwargs"] = config
    return options


def _option_keys() -> list[str]:
    """The names of the configured options, for messages: never their values (keys, secrets)."""
    return sorted(_configured or {})


def _endpoint(uri: str) -> str:
    options = _options(uri)
    return options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url") or "the default AWS endpoint"


def open_fs(uri: str | os.PathLike, attempt_s: float | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path within it (``bucket/key`` for S3); its
    requests time out after at most ``attempt_s`` seconds (default: the storage timeout)."""
    uri = os.fspath(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **_options(uri, attempt_s))
    except (TypeError, ValueError) as e:
        raise StorageError(f"cannot open '{uri}' with storage options {_option_keys()}: {e}; "
                           "fix --storage-options (keys are fsspec/s3fs arguments)", "options") from None
    except ImportError as e:
        raise StorageError(f"no filesystem for '{uri}' ({e}); install the fsspec backend for this protocol", "options") from None
    if hasattr(fs, "retries"):  # s3fs's own retry count (a class attribute, no option): retry() is the policy
        fs.retries = 1
    return fs, path


_TIMEOUTS = {"ReadTimeoutError", "FSTimeoutError", "ResponseStreamingError", "IncompleteRead", "ClientPayloadError",
             "ServerTimeoutError"}
_BUSY_CODES = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "ServiceUnavailable", "InternalError"}


def _unavailable(err: BaseException, names: set[str]) -> bool:
    """A 5xx or throttling reply (s3fs turns them into OSError EBUSY/EREMOTEIO; botocore's
    ClientError carries the code and status)."""
    if isinstance(err, OSError) and err.errno in (errno.EBUSY, errno.EREMOTEIO):
        return True
    response = getattr(err, "response", None) if "ClientError" in names else None
    if not isinstance(response, dict):
        return False
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    return status >= 500 or (response.get("Error") or {}).get("Code") in _BUSY_CODES


def _translate(err: BaseException, uri: str, action: str) -> StorageError:
    """One clear line for a backend exception (botocore errors recognised without importing it)."""
    names = {c.__name__ for c in type(err).__mro__}
    detail = " ".join(str(err).split())[:200] or type(err).__name__
    remote = not is_local(uri)
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return StorageError(f"no credentials to {action} '{uri}': set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE), or pass key and secret in --storage-options", "credentials")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
                "ConnectionRefusedError", "ServerDisconnectedError"} or (remote and isinstance(err, ConnectionError)):
        return StorageError(f"cannot reach the storage endpoint {_endpoint(uri)} to {action} '{uri}' "
                            "(connection refused or timed out): start the service or fix AWS_ENDPOINT_URL / "
                            "endpoint_url in --storage-options", "endpoint")
    if remote and (names & _TIMEOUTS or isinstance(err, TimeoutError)):
        return StorageError(f"no answer in time from {_endpoint(uri)} to {action} '{uri}' ({detail[:120]})", "timeout")
    if remote and _unavailable(err, names):
        return StorageError(f"the storage at {_endpoint(uri)} is unavailable to {action} '{uri}' ({detail[:120]})",
                            "unavailable")
    if isinstance(err, FileNotFoundError) and remote and ("bucket" in detail.lower() or "NoSuchBucket" in detail):
        bucket = split_protocol(uri)[1].split("/", 1)[0]
        return StorageError(f"bucket '{bucket}' does not exist (while trying to {action} '{uri}'): "
                            "create it first or fix the URI", "bucket")
    if isinstance(err, FileNotFoundError):
        return StorageError(f"'{uri}' does not exist (while trying to {action} it): check the path", "missing")
    if isinstance(err, PermissionError):
        where = "bucket policy and the credentials' permissions" if remote else "file permissions"
        return StorageError(f"permission denied to {action} '{uri}' ({detail}): check the {where}", "permission")
    return StorageError(f"cannot {action} '{uri}': {detail}", "io")


@contextmanager
def _errors(uri: str, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        names = {c.__name__ for c in type(e).__mro__}
        if isinstance(e, OSError) or names & ({"BotoCoreError", "ClientError"} | _TIMEOUTS):
            raise _translate(e, uri, action) from e
        if isinstance(e, TypeError) and "keyword argument" in str(e):  # s3fs passes options on lazily
            raise StorageError(f"cannot {action} '{uri}': storage options {_option_keys()} were "
                               f"rejected ({e}); fix --storage-options (keys are fsspec/s3fs arguments)", "options") from e
        raise


# ---------------------------------------------------------------------------------------------
# Outages: one retry policy with a total deadline
# ---------------------------------------------------------------------------------------------
class Unanswered(Exception):
    """:func:`retry` gave up: ``last`` is the last transient error, after ``attempts`` attempts."""

    def __init__(self, last: BaseException, attempts: int):
        super().__init__(str(last))
        self.last, self.attempts = last, attempts


def backoff(first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S) -> Iterator[float]:
    """The waits between attempts: ``first``, then doubled each time, at most ``cap`` seconds."""
    delay = first
    while True:
        yield delay
        delay = min(cap, 2 * delay)


def retry(attempt: Callable[[float], Any], timeout_s: float, transient: Callable[[BaseException], bool], *,
          delays: Iterable[float] | None = None, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Any:
    """``attempt(left)`` until it returns, ``left`` being the seconds left of ``timeout_s`` (for
    the attempt's own timeouts). An error ``transient`` accepts is retried after the next wait of
    ``delays`` (default :func:`backoff`), the last wait cut to end at the deadline; once
    ``timeout_s`` seconds have passed since the first attempt, :class:`Unanswered` is raised from
    the last error. Any other error passes at once."""
    start, waits, attempts = clock(), iter(delays if delays is not None else backoff()), 0
    while True:
        attempts += 1
        try:
            return attempt(timeout_s - (clock() - start))
        except Exception as e:  # noqa: BLE001 - ``transient`` decides; the others are re-raised
            if not transient(e):
                raise
            left = timeout_s - (clock() - start)
            if left <= 0:
                raise Unanswered(e, attempts) from e
            sleep(min(next(waits), left))


_CAUSES = {"endpoint": "connection failed", "timeout": "no answer in time", "unavailable": "busy or failing replies"}


def _outage(uri: str, gave_up: Unanswered) -> StorageError:
    cause = _CAUSES.get(getattr(gave_up.last, "kind", ""), "no answer")
    return StorageError(f"storage at {uri} did not answer for {_timeout_s:g} s ({cause}, {gave_up.attempts} "
                        f"attempt{'s' if gave_up.attempts > 1 else ''}); check the service at {_endpoint(uri)} and run the job again once it answers "
                        "(a condensation goes on from its last checkpoint with --resume); --storage-timeout "
                        "sets how long to wait", "outage")


def _retried(uri: str, action: str, attempt: Callable[[float], Any]) -> Any:
    """``attempt(left)`` on the remote ``uri``, its errors one StorageError line, retried through
    an outage for at most the storage timeout. A connection refused by an endpoint that never
    answered this process is not retried (a wrong endpoint, most likely)."""
    endpoint = _endpoint(uri)

    def once(left: float) -> Any:
        with _errors(uri, action):
            result = attempt(left)
        _reached.add(endpoint)
        return result

    def transient(e: BaseException) -> bool:
        kind = getattr(e, "kind", None) if isinstance(e, StorageError) else None
        return kind in TRANSIENT and (kind != "endpoint" or endpoint in _reached)

    try:
        return retry(once, _timeout_s, transient)
    except Unanswered as e:
        raise _outage(uri, e) from e.last


def _bound(fs: fsspec.AbstractFileSystem, left: float) -> dict[str, float]:
    """The keyword that bounds one blocking call of an async filesystem (s3fs) to ``left``
    seconds (fsspec's ``sync`` timeout). Needed beside the connect/read timeouts: those do not
    bound every wait (a PUT's ``Expect: 100-continue`` waits for the server without one)."""
    return {"timeout": max(MIN_ATTEMPT_TIMEOUT_S, left)} if isinstance(fs, AsyncFileSystem) else {}


Op = Callable[[fsspec.AbstractFileSystem, str, dict], Any]


def _run(uri: str, action: str, op: Op) -> Any:
    """``op(fs, path, bound)`` on ``uri``, every backend error one StorageError line; ``bound`` is
    the keyword to pass to each of its blocking calls (:func:`_bound`). On a remote URI a fresh
    filesystem per attempt, its timeouts cut to what is left of the bound (:func:`_retried`)."""
    if is_local(uri):
        fs, path = open_fs(uri)
        with _errors(uri, action):
            return op(fs, path, {})

    def attempt(left: float) -> Any:
        fs, path = open_fs(uri, left)
        return op(fs, path, _bound(fs, left))

    return _retried(uri, action, attempt)


# ---------------------------------------------------------------------------------------------
# Single objects
# ---------------------------------------------------------------------------------------------
def _check_bucket(fs: fsspec.AbstractFileSystem, uri: str, path: str, bound: dict) -> None:
    """Raise the ``bucket`` StorageError when ``uri``'s bucket is missing (s3fs reports a missing
    bucket and a missing key alike, as False or FileNotFoundError)."""
    if not is_local(uri) and not fs.exists(path.split("/", 1)[0], **bound):
        raise _translate(FileNotFoundError("The specified bucket does not exist"), uri, "access")


def exists(uri: str | os.PathLike) -> bool:
    """Whether a file (or folder/prefix) exists. A missing bucket is an error, not False."""
    uri = os.fspath(uri)

    def check(fs: fsspec.AbstractFileSystem, path: str, bound: dict) -> bool:
        if fs.exists(path, **bound):
            return True
        _check_bucket(fs, uri, path, bound)
        return False

    return _run(uri, "check", check)


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of one file."""
    uri = os.fspath(uri)
    return _run(uri, "read", lambda fs, path, bound: fs.cat_file(path, **bound))


def read_required(uri: str | os.PathLike, missing: Exception) -> bytes:
    """``read_bytes``, raising ``missing`` (the caller's one line, naming its fix) when nothing is
    at ``uri``; other storage errors pass through unchanged."""
    try:
        return read_bytes(uri)
    except StorageError as e:
        if e.kind != "missing":
            raise
        raise missing from None


def read_json(uri: str | os.PathLike, *, fmt: str, version: int, kind: str,
              error: Callable[[str], Exception] = StorageError, fix: str, missing: Exception | None = None,
              version_key: str = "version", implied: bool = False) -> dict[str, Any]:
    """A required JSON object carrying ``"format": fmt`` and ``version_key: version``.

    Every problem is one line naming ``uri``: ``missing`` (when given) if nothing is there, else
    ``error(message)`` for a file that is not JSON, not an object, of another format (``kind``
    says what was expected, ``fix`` what to do) or of another version. ``implied``: a file
    without format/version keys (hand-written) counts as the expected ones.
    """
    uri = os.fspath(uri)
    raw = read_bytes(uri) if missing is None else read_required(uri, missing)
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"'{uri}' is not valid JSON ({type(e).__name__}), not an {kind} (foreign or damaged file); {fix}") from None
    found = value.get("format", fmt if implied else None) if isinstance(value, dict) else None
    if found != fmt:
        raise error(f"'{uri}' is not an {kind} (format {found!r}, foreign or damaged file); {fix}")
    found = value.get(version_key, version if implied else None)
    if found != version:
        raise error(f"'{uri}' has format version {found!r}; this idc_ray reads {fmt!r} version {version}: {fix}")
    return value


class _RetriedReads:
    """A remote file whose reads are retried through an outage like every other operation (a
    failed read leaves the file's position where it was, so it can be repeated); everything else
    is the file's own."""

    def __init__(self, f: IO[bytes], uri: str):
        self._f, self._uri = f, uri

    def read(self, size: int = -1) -> bytes:
        return _retried(self._uri, "read", lambda left: self._f.read(size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextmanager
def open_input(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A seekable binary file for streaming reads (what pyarrow's ParquetFile takes)."""
    uri = os.fspath(uri)
    f = _run(uri, "read", lambda fs, path, bound: fs.open(path, "rb"))
    try:
        with _errors(uri, "read"):
            yield f if is_local(uri) else _RetriedReads(f, uri)
    finally:
        f.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_local_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed onto ``path`` when the block succeeds.

    Readers never see a half-written file: the data is fsynced before the atomic ``os.replace``,
    and the temporary file is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A writable binary file whose content appears at ``uri`` only if the block succeeds.

    Use it to stream large files (Parquet shards); :func:`atomic_write_bytes` for small ones. A
    remote file is spooled to a local temporary file and uploaded whole when the block ends, so
    an upload an outage cuts is retried like every other operation.
    """
    uri = os.fspath(uri)
    if is_local(uri):
        _, path = open_fs(uri)
        with _errors(uri, "write"), atomic_local_path(path) as tmp, open(tmp, "wb") as f:
            yield f
        return
    folder = tempfile.mkdtemp(prefix="idc-upload-")
    try:
        spool = os.path.join(folder, "data")
        with _errors(uri, "write"), open(spool, "wb") as f:
            yield f
        _run(uri, "write", lambda fs, path, bound: fs.put_file(spool, path, **bound))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``uri`` all-or-nothing (local: temp + rename; S3: one PUT)."""
    uri = os.fspath(uri)
    if is_local(uri):
        with atomic_open(uri) as f:
            f.write(data)
        return
    _run(uri, "write", lambda fs, path, bound: fs.pipe_file(path, data, **bound))


def listdir(uri: str | os.PathLike) -> list[str]:
    """Sorted names (not paths) directly under ``uri``; [] when the folder/prefix does not exist
    (a missing bucket is an error)."""
    uri = os.fspath(uri)

    def names(fs: fsspec.AbstractFileSystem, path: str, bound: dict) -> list[str]:
        try:
            entries = fs.ls(path, detail=False, **bound)
        except FileNotFoundError:
            _check_bucket(fs, uri, path, bound)
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != path.rstrip("/"))

    return _run(uri, "list", names)


def remove(uri: str | os.PathLike, *, recursive: bool = False, missing_ok: bool = True) -> None:
    """Delete a file (``recursive=True``: a folder/prefix and everything under it)."""
    uri = os.fspath(uri)

    def delete(fs: fsspec.AbstractFileSystem, path: str, bound: dict) -> None:
        try:
            fs.rm(path, recursive=recursive, **bound)
        except FileNotFoundError:
            if not missing_ok:
                raise

    _run(uri, "remove", delete)


# ---------------------------------------------------------------------------------------------
# Checksums: the one sha256 mechanism of every file read back
# ---------------------------------------------------------------------------------------------
SHA256_SUFFIX = ".sha256"
_CHUNK = 1 << 20

log = logging.getLogger("idc_ray")


class ChecksumError(StorageError):
    """A file whose bytes do not match the sha256 recorded when it was written (corrupt,
    truncated or modified), or whose checksum is missing; one line naming the file."""

    def __init__(self, message: str):
        super().__init__(message, "checksum")


def sha256(data: bytes) -> str:
    """The hex sha256 of ``data`` (what pointers, manifests and sidecars record)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(uri: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``uri``, read in chunks (decode caches are gigabytes)."""
    digest = hashlib.sha256()
    with open_input(uri) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(data: bytes, expected: str | None, error: Exception) -> bytes:
    """``data`` when its sha256 is ``expected``; else raise ``error`` (the caller's one line)."""
    if sha256(data) != expected:
        raise error
    return data


def sidecar(uri: str | os.PathLike) -> str:
    """Where the sha256 of the file at ``uri`` is kept: ``<uri>.sha256``."""
    return os.fspath(uri) + SHA256_SUFFIX


def seal(uri: str | os.PathLike, digest: str | None = None) -> str:
    """Record the sha256 of the (already written) file at ``uri`` in its sidecar, atomically;
    call it LAST, so a file counts as written only once its checksum is there. ``digest``: the
    sha256 when the caller has the bytes (else the file is read)."""
    digest = digest or file_sha256(uri)
    atomic_write_bytes(sidecar(uri), f"{digest}\n".encode())
    return digest


def write_checked(uri: str | os.PathLike, data: bytes) -> str:
    """``data`` at ``uri`` atomically, then its sha256 sidecar (:func:`seal`); returns the sha256."""
    atomic_write_bytes(uri, data)
    return seal(uri, sha256(data))


def _expected(uri: str) -> str:
    try:
        return read_bytes(sidecar(uri)).decode("ascii", "replace").strip()
    except StorageError as e:
        if e.kind != "missing":
            raise
        raise ChecksumError(f"'{uri}' has no sha256 ({sidecar(uri)} is missing): written by an older "
                            "idc_ray or not completely") from None


def _mismatch(uri: str) -> ChecksumError:
    return ChecksumError(f"'{uri}' does not match its sha256 in {os.path.basename(sidecar(uri))} "
                         "(corrupt, truncated or modified)")


def check_file(uri: str | os.PathLike) -> None:
    """Raise :class:`ChecksumError` unless the file at ``uri`` matches its sidecar (read in chunks)."""
    uri = os.fspath(uri)
    if file_sha256(uri) != _expected(uri):
        raise _mismatch(uri)


def read_checked(uri: str | os.PathLike) -> bytes:
    """The bytes at ``uri``, checked against its sidecar (:class:`ChecksumError` if not)."""
    uri = os.fspath(uri)
    return verify(read_bytes(uri), _expected(uri), _mismatch(uri))


def cache_intact(uri: str | os.PathLike, what: str = "rebuilding the cache") -> bool:
    """Whether the cache file at ``uri`` can be used: False when it is absent, or refused (no or
    a mismatching sha256), in which case one warning line names it and says ``what`` happens
    now. The caller then rebuilds it; the refused file stays refused until its rebuilt bytes
    and their sidecar replace it."""
    uri = os.fspath(uri)
    if not exists(uri):
        return False
    try:
        check_file(uri)
        return True
    except ChecksumError as e:
        log.warning("%s; %s", e, what)
    return False
