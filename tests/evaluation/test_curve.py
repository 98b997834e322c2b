"""The checkpoint-evaluation curve: points, merge on resume, the files a watcher reads."""

import json

import pytest
from PIL import Image

from idc_ray.evaluation.curve import CURVE_JSON, CURVE_PNG, curve_point, merge_points, read_points, write_curve


def test_point_statistics_are_over_the_repeats():
    p = curve_point("convnet", 5, 12.5, [0.5, 0.7])
    assert p["mean"] == pytest.approx(0.6) and p["std"] == pytest.approx(0.1)
    assert curve_point("convnet", 0, 0.0, [0.4])["std"] == 0.0
    with pytest.raises(ValueError, match="at least one accuracy"):
        curve_point("convnet", 0, 0.0, [])


def test_merge_keeps_old_points_and_replaces_same_iteration():
    old = [curve_point("convnet", 0, 0.0, [0.5]), curve_point("convnet", 2, 10.0, [0.6])]
    new = [curve_point("convnet", 2, 11.0, [0.7]), curve_point("convnet", 4, 20.0, [0.8])]
    merged = merge_points(old, new)
    assert [(p["iteration"], p["mean"]) for p in merged] == [(0, 0.5), (2, 0.7), (4, 0.8)]


def test_written_curve_reads_back_and_draws_a_png(tmp_path):
    points = [curve_point(m, i, 3.0 * i, [0.5 + i / 100, 0.52 + i / 100]) for m in ("convnet", "resnet10") for i in (0, 2, 4)]
    assert read_points(str(tmp_path)) == []
    write_curve(str(tmp_path), points)
    assert read_points(str(tmp_path)) == points
    with Image.open(tmp_path / CURVE_PNG) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CURVE_JSON, CURVE_PNG])  # no temporary names left


def test_a_foreign_curve_file_is_refused(tmp_path):
    (tmp_path / CURVE_JSON).write_text(json.dumps({"format": "something-else", "points": []}))
    with pytest.raises(ValueError, match="not an idc-ray evaluation curve"):
        read_points(str(tmp_path))
