"""The one Ray session helper: joins a session in progress without closing it, refuses a dead
address in one line, and prints, next to the dashboard URL, how to get its token."""

import socket
import sys
from pathlib import Path

import pytest
import ray

from idc_ray.distributed.session import ClusterError, _check_reachable, dashboard_lines, ray_session


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
