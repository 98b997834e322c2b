"""The one Ray session helper: joins a session in progress without closing it, refuses a dead
address in one line, and prints, next to the dashboard URL, how to get its token."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

from idc_ray.distributed.session import (ClusterError, _check_reachable, dashboard_lines, ray_session,
                                         resolve_address)


def test_the_dashboard_line_says_how_to_get_the_token():
    url, token = dashboard_lines("127.0.0.1:8265")
    assert url == "Ray dashboard: http://127.0.0.1:8265"
    ray_cli = Path(sys.executable).with_name("ray")
    assert f"{ray_cli} get-auth-token" in token and ray_cli.is_file()  # Ray 2.60's command, in this venv
    assert "~/.ray/auth_token" in token


def test_a_session_in_progress_is_joined_and_left_open(ray_cluster):
    lines = []
    with ray_session("127.0.0.1:1", log=lines.append) as url:  # the address is not even tried
        assert url is None and ray.is_initialized()
    assert ray.is_initialized() and lines == []


def test_an_address_nobody_listens_on_is_one_line():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterError, match=f"no Ray cluster at --address 127.0.0.1:{port} .*ray start --head"):
        _check_reachable(f"127.0.0.1:{port}")


def test_no_address_means_ray_address_else_a_new_local_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "local"
    assert resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    assert resolve_address(None) == "10.0.0.7:6379"


@pytest.mark.slow  # starts a Ray of its own
def test_a_stale_current_cluster_file_does_not_stop_a_new_local_ray():
    """A `ray start` killed without `ray stop` leaves ray_current_cluster naming a dead cluster;
    a job without --address still starts its own Ray, quickly, instead of trying to join it."""
    temp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
        code = ("from idc_ray.distributed.session import ray_session\nimport ray\n"
                "with ray_session(None, num_cpus=1, dashboard=False):\n"
                "    print(int(ray.cluster_resources()['CPU']))\n")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(temp)}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["1"]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
