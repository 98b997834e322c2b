"""Representative real batches (DREAM; engine/representative.py), the ``match.sampling`` option."""

import pytest
import torch

from idc_ray.config import ConfigError, apply_overrides, load_preset
from idc_ray.data import ClassStore, load_dataset
from idc_ray.engine import rng
from idc_ray.engine.expert import init_expert
from idc_ray.local import condense_local
from idc_ray.engine.matcher import Matcher
from idc_ray.engine.plan import build_plan, initial_synset
from idc_ray.engine.representative import embed_images, kmeans, nearest_to_centres, representative_indices
from idc_ray.models import build_model

REPRESENTATIVE = {"match.sampling": "representative", "match.sampling_refresh": 2}


def _smoke(**overrides):
    cfg = apply_overrides(load_preset("smoke"), {"expert.width": 4, **overrides})
    data = load_dataset("tiny")
    plan = build_plan(cfg, data.spec)
    match, expert = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    return cfg, data, match, expert, store, Matcher(match, store, initial_synset(match, store, store.classes))


def _brute_nearest(x, centres):
    """For each centre, the row of x at the smallest Euclidean distance (plain Python loops)."""
    picks = []
    for c in centres.tolist():
        dists = [sum((a - b) ** 2 for a, b in zip(row, c)) for row in x.tolist()]
        picks.append(min(range(len(dists)), key=dists.__getitem__))
    return picks


def test_picks_are_the_nearest_image_to_each_centre_of_a_lloyd_fixed_point():
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    centres = kmeans(x, 4, torch.Generator().manual_seed(2))
    assign = [min(range(4), key=lambda j: float((row - centres[j]).pow(2).sum())) for row in x]
    for j in range(4):
        members = [row for row, a in zip(x, assign) if a == j]
        assert members and torch.allclose(centres[j], torch.stack(members).mean(0))  # each centre: its cluster's mean
    picks = nearest_to_centres(x, centres)
    assert picks.tolist() == _brute_nearest(x, centres)
    assert torch.equal(representative_indices(x, 4, torch.Generator().manual_seed(2)), picks)


def test_separated_groups_give_one_pick_per_group_nearest_its_mean():
    g = torch.Generator().manual_seed(0)
    groups = [torch.randn(10, 2, generator=g) + torch.tensor([100.0 * i, 0.0]) for i in range(2)]
    x = torch.cat(groups)
    for seed in range(5):
        picks = representative_indices(x, 2, torch.Generator().manual_seed(seed)).tolist()
        means = torch.stack([grp.mean(0) for grp in groups])
        assert sorted(picks) == sorted(_brute_nearest(x, means))


def test_few_images_give_the_whole_class_once():
    assert representative_indices(torch.randn(5, 3), 8, torch.Generator()).tolist() == list(range(5))
    with pytest.raises(ValueError, match="k-means needs"):
        kmeans(torch.randn(3, 2), 4, torch.Generator())


def test_representative_batches_come_from_the_class_and_follow_the_keyed_clustering():
    cfg, data, match, expert, store, matcher = _smoke(**REPRESENTATIVE)
    model = init_expert(expert, 0)
    k = match.batch_real
    for c in store.classes:
        images = store.class_tensor(c)
        got = matcher.real_batch(c, 1, 2, torch.Generator(), model)
        assert len(got) == k < store.count(c)
        # every row is one of the class's own images
        assert all((images == row).flatten(1).all(1).any() for row in got)
        features = model.embed(matcher.normalize(images)).detach()
        centres = kmeans(features, k, rng.generator(0, "representative", c, 1, 2))
        assert torch.equal(got, images[nearest_to_centres(features, centres)])


def test_clusters_are_kept_for_the_refresh_block_then_recomputed_with_the_current_expert():
    cfg, data, match, expert, store, matcher = _smoke(**REPRESENTATIVE)
    first, second = init_expert(expert, 0), init_expert(expert, 1)
    block = matcher.real_batch(0, 0, 0, torch.Generator(), first)
    assert torch.equal(matcher.real_batch(0, 0, 1, torch.Generator(), second), block)  # same block: kept
    fresh = Matcher(match, store, initial_synset(match, store, store.classes))
    assert torch.equal(matcher.real_batch(0, 0, 2, torch.Generator(), second),
                       fresh.real_batch(0, 0, 2, torch.Generator(), second))  # new block: the current expert
    assert not torch.equal(matcher.real_batch(0, 0, 2, torch.Generator(), second), block)


def test_embedding_leaves_a_batchnorm_expert_untouched():
    model = build_model("convnet3", 4, 1, 28, width=4, norm="batch").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    embed_images(model, torch.rand(7, 1, 28, 28), chunk=3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def condense(cfg, data):
    """The stored set of the one in-process loop (distributed/local.py)."""
    return condense_local(cfg, build_plan(cfg, data.spec), data.train_store())[0]


def test_option_changes_the_real_batches_and_the_result():
    *_, uniform = _smoke()
    cfg, data, match, expert, store, representative = _smoke(**REPRESENTATIVE)
    assert uniform.spec.sampling == "uniform" and match.sampling == "representative"
    model = init_expert(expert, 0)
    for c in store.classes:
        assert not torch.equal(uniform.real_batch(c, 0, 0, torch.Generator(), model),
                               representative.real_batch(c, 0, 0, torch.Generator(), model))
    small = {"schedule.outer_iters": 1}
    a = condense(apply_overrides(load_preset("smoke"), {"expert.width": 4, **small}), data)
    b = condense(apply_overrides(cfg, small), data)
    assert not torch.equal(a, b)


def test_representative_runs_are_reproducible_from_the_seed_on_every_path():
    cfg, data, *_ = _smoke(**REPRESENTATIVE, **{"schedule.outer_iters": 1, "schedule.inner_iters": 3})
    first = condense(cfg, data)
    assert torch.equal(condense(cfg, data), first)
    vmap = condense(apply_overrides(cfg, {"match.path": "vmap"}), data)  # vmap passes the expert too
    assert torch.allclose(vmap, first, atol=1e-5)
    assert not torch.equal(condense(apply_overrides(cfg, {"schedule.seed": 1}), data), first)


def test_config_rejects_unknown_sampling_and_a_zero_refresh():
    cfg = load_preset("smoke")
    assert (cfg.match.sampling, cfg.match.sampling_refresh) == ("uniform", 10)
    with pytest.raises(ConfigError, match="match.sampling 'dream' is unknown; choose one of uniform, representative"):
        apply_overrides(cfg, ["match.sampling=dream"])
    with pytest.raises(ConfigError, match="match.sampling_refresh must be at least 1"):
        apply_overrides(cfg, ["match.sampling_refresh=0"])
