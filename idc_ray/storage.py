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
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_MAX_ATTEMPTS`` ... which
  botocore reads itself.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import fsspec
from fsspec.core import split_protocol

LOCAL_PROTOCOLS = (None, "file", "local")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

_configured: dict[str, Any] | None = None  # this process's storage options (configure)


class StorageError(ValueError):
    """A storage operation failed; the message is one line naming the URI and the fix.

    ``kind`` is one of ``bucket`` (bucket missing), ``credentials`` (none found), ``endpoint``
    (service unreachable), ``permission``, ``missing`` (object/file absent), ``options`` (bad
    storage options) or ``io`` (anything else the backend reported).
    """

    def __init__(self, message: str, kind: str = "io"):
        super().__init__(" ".join(message.split()))
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# The process's storage options
# ---------------------------------------------------------------------------------------------
def configure(options: Mapping[str, Any] | None) -> None:
    """Set the fsspec options every storage call of this process uses (None or empty: none, the
    AWS environment alone). A job calls it once at start; a Ray worker at the start of its task or
    actor, with the driver's :func:`current` handed over as an argument."""
    global _configured
    _configured = dict(options) if options else None


def current() -> dict[str, Any] | None:
    """A copy of the options :func:`configure` set (None when none), to hand to another process."""
    return None if _configured is None else dict(_configured)


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


def _options(uri: str) -> dict[str, Any]:
    """fsspec keyword arguments for ``uri``: the configured options plus the endpoint from the env."""
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
    return options


def _option_keys() -> list[str]:
    """The names of the configured options, for messages: never their values (keys, secrets)."""
    return sorted(_configured or {})


def _endpoint(uri: str) -> str:
    options = _options(uri)
    return options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url") or "the default AWS endpoint"


def open_fs(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path within it (``bucket/key`` for S3)."""
    uri = os.fspath(uri)
    try:
        return fsspec.core.url_to_fs(uri, **_options(uri))
    except (TypeError, ValueError) as e:
        raise StorageError(f"cannot open '{uri}' with storage options {_option_keys()}: {e}; "
                           "fix --storage-options (keys are fsspec/s3fs arguments)", "options") from None
    except ImportError as e:
        raise StorageError(f"no filesystem for '{uri}' ({e}); install the fsspec backend for this protocol", "options") from None


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
        if isinstance(e, OSError) or "BotoCoreError" in names or "ClientError" in names:
            raise _translate(e, uri, action) from e
        if isinstance(e, TypeError) and "keyword argument" in str(e):  # s3fs passes options on lazily
            raise StorageError(f"cannot {action} '{uri}': storage options {_option_keys()} were "
                               f"rejected ({e}); fix --storage-options (keys are fsspec/s3fs arguments)", "options") from e
        raise


# ---------------------------------------------------------------------------------------------
# Single objects
# ---------------------------------------------------------------------------------------------
def _check_bucket(fs: fsspec.AbstractFileSystem, uri: str, path: str) -> None:
    """Raise the ``bucket`` StorageError when ``uri``'s bucket is missing (s3fs reports a missing
    bucket and a missing key alike, as False or FileNotFoundError)."""
    if not is_local(uri) and not fs.exists(path.split("/", 1)[0]):
        raise _translate(FileNotFoundError("The specified bucket does not exist"), uri, "access")


def exists(uri: str | os.PathLike) -> bool:
    """Whether a file (or folder/prefix) exists. A missing bucket is an error, not False."""
    uri = os.fspath(uri)
    fs, path = open_fs(uri)
    with _errors(uri, "check"):
        if fs.exists(path):
            return True
        _check_bucket(fs, uri, path)
    return False


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of one file."""
    uri = os.fspath(uri)
    fs, path = open_fs(uri)
    with _errors(uri, "read"):
        return fs.cat_file(path)


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


@contextmanager
def open_input(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A seekable binary file for streaming reads (what pyarrow's ParquetFile takes)."""
    uri = os.fspath(uri)
    fs, path = open_fs(uri)
    with _errors(uri, "read"):
        f = fs.open(path, "rb")
    try:
        with _errors(uri, "read"):
            yield f
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

    Use it to stream large files (Parquet shards); :func:`atomic_write_bytes` for small ones.
    """
    uri = os.fspath(uri)
    fs, path = open_fs(uri)
    if is_local(uri):
        with _errors(uri, "write"), atomic_local_path(path) as tmp, open(tmp, "wb") as f:
            yield f
        return
    with _errors(uri, "write"):
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            # fsspec's close() would commit what was buffered; abort the upload instead.
            discard = getattr(f, "discard", None)
            if discard is not None:
                discard()
                f.closed = True  # so the file's __del__ does not try to flush the discarded buffer
            raise
        f.close()


def atomic_write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``uri`` all-or-nothing (local: temp + rename; S3: one PUT)."""
    uri = os.fspath(uri)
    if is_local(uri):
        with atomic_open(uri) as f:
            f.write(data)
        return
    fs, path = open_fs(uri)
    with _errors(uri, "write"):
        fs.pipe_file(path, data)


def listdir(uri: str | os.PathLike) -> list[str]:
    """Sorted names (not paths) directly under ``uri``; [] when the folder/prefix does not exist
    (a missing bucket is an error)."""
    uri = os.fspath(uri)
    fs, path = open_fs(uri)
    with _errors(uri, "list"):
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            _check_bucket(fs, uri, path)
            return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != path.rstrip("/"))


def remove(uri: str | os.PathLike, *, recursive: bool = False, missing_ok: bool = True) -> None:
    """Delete a file (``recursive=True``: a folder/prefix and everything under it)."""
    uri = os.fspath(uri)
    fs, path = open_fs(uri)
    with _errors(uri, "remove"):
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            if not missing_ok:
                raise


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
