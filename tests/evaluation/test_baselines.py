"""The random and herding baselines: seeded, real images, herding's greedy mean matching."""

import pytest
import torch

from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import load_dataset
from idc_ray.evaluation.assembly import HERDING_NET
from idc_ray.evaluation.baselines import (baseline_set, herding, herding_select, load_feature_net,
                                          train_feature_net)
from idc_ray.evaluation.report import write_reports


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("tiny")


@pytest.fixture(scope="module")
def net(tiny):
    return train_feature_net(load_preset("smoke"), tiny, epochs=1)


def test_herding_picks_the_sample_that_keeps_the_running_mean_closest():
    # mean 3.25: first the nearest point (2), then the one making the pair's mean nearest (1: 1.5)
    features = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert herding_select(features, 2) == [2, 1]
    assert herding_select(features, 4) == [2, 1, 3, 0]  # without replacement
    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(200, 8, generator=g)
    picked = herding_select(cloud, 10)
    herd_gap = (cloud[picked].mean(0) - cloud.mean(0)).norm()
    random_gaps = [(cloud[torch.randperm(200, generator=g)[:10]].mean(0) - cloud.mean(0)).norm() for _ in range(50)]
    assert herd_gap < min(random_gaps)
    with pytest.raises(ValueError, match="holds only 4"):
        herding_select(features, 5)


def test_herding_selects_real_images_of_each_class_reproducibly(tiny, net, tmp_path):
    x, y = herding(tiny, 2, net)
    assert x.shape == (4, 2, 1, 28, 28) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    train = tiny.train_x.float() / 255
    for c in range(4):
        for image in x[c]:
            matches = (train == image).flatten(1).all(1).nonzero().flatten()
            assert len(matches) and int(tiny.train_y[matches[0]]) == c
    assert torch.equal(herding(tiny, 2, net)[0], x)
    again = train_feature_net(load_preset("smoke"), tiny, epochs=1)  # training is seeded too
    assert torch.equal(herding(tiny, 2, again)[0], x)
    path = tmp_path / "net.pt"
    path.write_bytes(net.to_bytes("tiny"))
    loaded = load_feature_net(load_preset("smoke"), tiny, path)
    assert loaded.source == str(path) and torch.equal(herding(tiny, 2, loaded)[0], x)


def test_a_feature_net_of_another_shape_is_one_clear_error(tiny, net, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="does not fit convnet3"):
        load_feature_net(load_preset("smoke"), tiny, path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_feature_net(load_preset("smoke"), tiny, tmp_path / "missing.pt")


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_corrupt_herding_net_is_refused_in_one_line(tiny, net, tmp_path, damage, monkeypatch, how):
    """The herding feature network jobs/evaluate.py writes carries its sha256 sidecar; read back
    with --herding-net, a flipped byte or a cut-off file is refused with one line naming it (it
    is an input, not a cache: omit --herding-net to train it again). Without the check the
    flipped byte would load as a silently different network."""
    import idc_ray.evaluation.report as report

    monkeypatch.setattr(report, "write_report", lambda folder, results, index=None: folder)
    write_reports(str(tmp_path), [{}], {HERDING_NET: net.to_bytes("tiny")})
    path = tmp_path / HERDING_NET
    assert (tmp_path / f"{HERDING_NET}.sha256").is_file()
    cfg = load_preset("smoke")
    assert torch.equal(herding(tiny, 2, load_feature_net(cfg, tiny, path))[0], herding(tiny, 2, net)[0])
    damage(path, how)
    with pytest.raises(ValueError, match="does not match its sha256") as refused:
        load_feature_net(cfg, tiny, path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_random_baseline_is_seeded(tiny):
    cfg = load_preset("smoke")
    x, y = baseline_set("random", cfg, tiny, 3)
    assert x.shape == (4, 3, 1, 28, 28) and y.tolist() == [c for c in range(4) for _ in range(3)]
    assert torch.equal(baseline_set("random", cfg, tiny, 3)[0], x)
    other = baseline_set("random", apply_overrides(cfg, {"schedule.seed": 1}), tiny, 3)[0]
    assert not torch.equal(other, x)
    with pytest.raises(ValueError, match="unknown baseline 'kcenter'"):
        baseline_set("kcenter", cfg, tiny, 1)
