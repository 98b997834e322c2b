"""The `make demo` results table: mean ± std over several runs, the bare mean for one."""

from idc_ray.demo import Row, table


def test_table_shows_spread_over_several_runs_and_none_for_one():
    rows = [Row(1, "IDC (factor 2)", 0.9153, 0.0012, 3), Row(10, "random real", 0.958, 0.0, 1)]
    lines = table(rows, "convnet3").splitlines()
    assert lines[0] == "| ipc | training set | convnet3 test accuracy (mean ± std over runs) |"
    assert lines[2] == "| 1 | IDC (factor 2) | 91.5 ± 0.1 (3 runs) |"
    assert lines[3] == "| 10 | random real | 95.8 (1 run) |"
