"""The one way into Ray: open a local Ray or join a cluster for the length of a job, and say
where its dashboard is and how to get the token it asks for."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import ray

Log = Callable[[str], None]


class ClusterError(ValueError):
    """The cluster cannot run the job as asked (one line, with the fix)."""


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    match = re.fullmatch(r"(?:ray://)?([^:/]+):(\d+)", address or "")
    if not match:
        return  # None, "auto", "local" or another form: ray.init decides
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"no Ray cluster at --address {address} ({e.strerror or e}); "
                           "start one with `ray start --head` or omit --address to run locally") from None


def resolve_address(address: str | None) -> str:
    """``address``, else RAY_ADDRESS (set by `ray job submit`), else ``"local"``: a new local Ray.

    ``ray.init(address=None)`` would also join whatever cluster /tmp/ray/ray_current_cluster
    names, and waits for minutes when that file outlived its cluster (a killed `ray start`); the
    jobs promise "RAY_ADDRESS, else a new local Ray", so None never reaches Ray."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _connect(address: str | None, local: Mapping[str, Any]) -> str | None:
    """Join the cluster at ``address`` (or RAY_ADDRESS, as under `ray job submit`), else start a
    local one with the ``ray.init`` options ``local``; returns the dashboard URL. A bad address
    is one clear line, not a traceback."""
    address = resolve_address(address)
    _check_reachable(address)
    try:
        context = ray.init(address=address, logging_level=logging.ERROR, log_to_driver=True, **local)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"no Ray cluster at --address {address} ({str(e).splitlines()[0][:120]}); "
                           "start one with `ray start --head` or omit --address to run locally") from None
    return context.dashboard_url or None


def printable_url(url: str) -> str:
    """``url`` as we print it: http:// added where it has no scheme, and without what could hold a
    secret (a user:password@ part, a query string such as ``?token=``, a fragment): the address
    printed goes to logs and terminals; the token is fetched on its own (``dashboard_lines``)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def dashboard_lines(url: str) -> list[str]:
    """The dashboard's address and, next to it, how to get the token Ray 2.60's token
    authentication asks for in the browser: ``ray get-auth-token`` (the ``ray`` of this
    environment) prints it; it is read from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH,
    else ``~/.ray/auth_token`` (``ray._private.authentication.authentication_token_setup``)."""
    ray_cli = Path(sys.executable).with_name("ray")
    return [f"Ray dashboard: {printable_url(url)}",
            f"  its token, if it asks for one: {ray_cli} get-auth-token "
            "(kept in $RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token)"]


@contextmanager
def ray_session(address: str | None = None, log: Log | None = None, *, num_cpus: int | None = None,
                num_gpus: int | None = None, dashboard: bool = True) -> Iterator[str | None]:
    """Use the Ray session this process already has, else join ``address`` (or RAY_ADDRESS),
    else start a local Ray; yields the dashboard URL (None when the session was already open).
    Shuts down only a Ray this call started: a joined cluster, or the caller's session, stays up.

    ``num_cpus``, ``num_gpus`` and ``dashboard=False`` shape a local Ray this call starts
    (``address="local"`` always starts one: the benchmarks' fixed-size clusters); a cluster
    being joined has its own resources, and Ray refuses them there.

    Raises:
        ClusterError: nothing listens at ``address``, or Ray refused to connect.
    """
    if ray.is_initialized():
        yield None
        return
    local = {k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None}
    url = _connect(address, local if dashboard else {**local, "include_dashboard": False})
    if url and log is not None:
        for line in dashboard_lines(url):
            log(line)
    try:
        yield url
    finally:
        ray.shutdown()


def object_store_use() -> dict[str, int]:
    """What the object stores of the cluster this process is connected to hold now, over all
    nodes: ``bytes`` and ``objects`` (what ``ray memory --stats-only`` prints). Ray 2.60 has no
    public call for it (``ray.available_resources()["object_store_memory"]`` is a scheduling
    resource that does not move with use, and the state API needs the dashboard); this is the
    raylet's memory report, the one ``ray memory`` reads."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return {"bytes": int(stats.object_store_bytes_used), "objects": int(stats.num_local_objects)}
