"""jobs/condense.py with expert.pretrained=auto (how the imagenet100 preset runs), on the smoke
preset: the first run pretrains the pool as Ray tasks into the keyed cache, a later run reuses it
untouched, and a setting that shapes the pool gives another key."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from idc_ray.artifacts import load_condensed
from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import load_dataset
from idc_ray.backends import condense_job
from idc_ray.run.backend import RunOptions
from idc_ray.pretrain import pretrain_pool
from idc_ray.tune.cache import pool_dir

AUTO = {"expert.pretrained": "auto", "expert.pt_from": 1, "schedule.outer_iters": 1, "schedule.inner_iters": 1}


@pytest.fixture
def condense(run_job):
    """jobs/condense.py's main() in this process, joined to the session's cluster."""

    def run(address: str, out: Path, cache: Path, *extra: str):
        settings = [a for k, v in AUTO.items() for a in ("--set", f"{k}={v}")]
        return run_job("condense", "--preset", "smoke", *settings, "--pool-seeds", "2", "--pool-cache", str(cache),
                       "--address", address, "--output", str(out), "--quiet", *extra)

    return run


def _pool_files(pool: Path) -> dict[str, int]:
    return {p.relative_to(pool).as_posix(): p.stat().st_mtime_ns for p in pool.rglob("*") if p.is_file()}


def _pool_of(out: Path) -> str:
    return yaml.safe_load((out / "config.yaml").read_text())["expert"]["pretrained"]


def test_condense_builds_the_keyed_pool_once_then_reuses_it(ray_cluster, one_thread, condense, tmp_path):
    cache = tmp_path / "cache"
    cfg = apply_overrides(load_preset("smoke"), AUTO)
    pool = pool_dir(cache, cfg, 2)

    first = condense(ray_cluster, tmp_path / "first", cache)
    assert first.returncode == 0, first.stderr
    assert "pretrained 2 pool networks x 1 epochs as Ray tasks" in first.stderr
    files = _pool_files(pool)
    assert sorted(files) == [f"seed{s}/epoch{e}.pt{sealed}" for s in (0, 1) for e in (0, 1)
                             for sealed in ("", ".sha256")] + ["settings.json"]  # each network with its sha256
    assert _pool_of(tmp_path / "first") == str(pool.absolute())
    # The tasks ran the one pretraining implementation: their networks are jobs/pretrain.py's.
    reference = tmp_path / "reference"
    plain = replace(cfg, expert=replace(cfg.expert, pretrained=None))
    pretrain_pool(plain, load_dataset("tiny"), reference, seeds=2, epochs=1)
    for name in (n for n in files if n.endswith(".pt")):
        ours, theirs = (torch.load(d / name, weights_only=True) for d in (pool, reference))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    # The pool changes the bytes: without it (a fresh expert) the same run condenses another set.
    fresh = condense_job(plain, str(tmp_path / "fresh"), RunOptions(backend="local"))
    assert not torch.equal(load_condensed(tmp_path / "first")[0], fresh.stored)

    # A setting the pool does not depend on: the same pool, not pretrained again.
    again = condense(ray_cluster, tmp_path / "again", cache, "--set", "match.lr_img=0.02")
    assert again.returncode == 0, again.stderr
    assert "pretrained" not in again.stderr
    assert _pool_files(pool) == files
    assert _pool_of(tmp_path / "again") == str(pool.absolute())

    # The expert's learning rate shapes the pool: another key, the first pool untouched (built in
    # this run's own process: the local backend's path to the same cache).
    other = condense(ray_cluster, tmp_path / "other", cache, "--set", "expert.lr=0.02", "--outer-iters", "0",
                      "--backend", "local")
    assert other.returncode == 0, other.stderr
    new_pool = pool_dir(cache, apply_overrides(cfg, {"expert.lr": 0.02}), 2)
    assert new_pool != pool and (new_pool / "settings.json").is_file()
    assert _pool_of(tmp_path / "other") == str(new_pool.absolute())
    assert sorted(p.name for p in (cache / "pools").iterdir() if p.is_dir()) == sorted([pool.name, new_pool.name])
    assert _pool_files(pool) == files


def test_pool_key_changes_with_the_networks_revision(monkeypatch, tmp_path):
    """Pools trained before a network changed shape or init under the same name are not reused."""
    import idc_ray.models

    cfg = apply_overrides(load_preset("smoke"), AUTO)
    before = pool_dir(tmp_path, cfg, 2)
    monkeypatch.setattr(idc_ray.models, "NETWORKS_REVISION", idc_ray.models.NETWORKS_REVISION + 1)
    assert pool_dir(tmp_path, cfg, 2) != before
