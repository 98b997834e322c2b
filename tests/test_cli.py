"""jobs' exit paths (idc_ray.cli.run_main): a user error is one line and exit 2, a bug keeps its
traceback and exits 1, and --debug shows the traceback of a user error too."""

import numpy as np
import pytest

from idc_ray.cli import run_main
from idc_ray.config import ConfigError
from idc_ray.errors import JobError


def exit_of(main, argv=(), capsys=None) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        run_main(main, list(argv))
    return stop.value.code, capsys.readouterr().err


def raise_(error: BaseException):
    raise error


@pytest.mark.parametrize("error", [ConfigError("unknown key 'match.lr'; did you mean match.lr_img?"),
                                   JobError("3 restarts used up; checkpoints kept under runs/x"),
                                   FileNotFoundError("no dataset at /data/none"),
                                   ValueError("--ipc must be at least 1, got 0")])
def test_a_user_error_is_one_line_and_exit_2(capsys, error):
    code, err = exit_of(lambda: raise_(error), capsys=capsys)
    assert code == 2 and err.splitlines() == [f"error: {error}"]


@pytest.mark.parametrize("bug", [lambda: {}["missing"], lambda: np.reshape(np.zeros(4), 3)])
def test_a_bug_keeps_its_traceback_and_exits_1(capsys, bug):
    # a KeyError, and a ValueError raised inside a library (numpy refusing a shape): not the user's
    code, err = exit_of(bug, capsys=capsys)
    assert code == 1 and err.startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in err or "ValueError: cannot reshape array of size 4" in err
    assert "error: " not in err


def test_debug_shows_the_traceback_of_a_user_error(capsys):
    error = ConfigError("unknown key 'match.lr'")
    code, err = exit_of(lambda: raise_(error), ["--preset", "smoke", "--debug"], capsys=capsys)
    assert code == 2 and err.startswith("Traceback (most recent call last):")
    assert "in raise_" in err and err.splitlines()[-1] == "error: unknown key 'match.lr'"


def test_a_clean_exit_keeps_the_jobs_code(capsys):
    assert exit_of(lambda: 3, capsys=capsys) == (3, "")
