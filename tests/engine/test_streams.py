"""Real-data streams (engine/streams.py): the published loaders' order, positions from the step."""

import itertools

import pytest
import torch

from idc_ray.config import ConfigError, apply_overrides, load_preset
from idc_ray.data import ClassStore, load_dataset
from idc_ray.engine import rng
from idc_ray.engine.expert import ExpertTrainer, expert_trajectory, init_expert
from idc_ray.engine.matcher import Matcher
from idc_ray.engine.plan import build_plan, initial_synset
from idc_ray.engine.streams import ExpertStream, class_stream_indices


def _class_loader(seed, label, count, batch):
    """A sequential emulation of the published per-class sampler: pass after pass, each a keyed
    permutation cut into count // b batches of b = min(count, batch), the tail dropped."""
    size = min(count, batch)
    for epoch in itertools.count():
        order = torch.randperm(count, generator=rng.generator(seed, "match-real", label, epoch))
        for j in range(count // size):
            yield order[j * size : (j + 1) * size]


def _expert_loader(seed, images, batch):
    """A sequential emulation of the published expert loader: epochs of keyed permutations,
    cut into batches with the partial last batch kept (drop_last=False), never rewound."""
    for epoch in itertools.count():
        order = torch.randperm(images, generator=rng.generator(seed, "expert-real", epoch))
        for start in range(0, images, batch):
            yield order[start : start + batch]


def _published_run(loader, outers, inner_iters, fix_iter, early, per_epoch, n_data):
    """Batches each update takes in the published loop: early epochs at re-initialisation, then
    per inner iteration batches until n_data images were seen. Keyed by (outer, inner) or
    (outer, 'early')."""
    taken = {}
    for outer in range(outers):
        if outer % fix_iter == 0:
            taken[(outer, "early")] = [next(loader) for _ in range(early * per_epoch)]
        for inner in range(inner_iters):
            seen, batches = 0, []
            while seen < n_data and len(batches) < per_epoch:
                batches.append(next(loader))
                seen += len(batches[-1])
            taken[(outer, inner)] = batches
    return taken


def test_a_class_stream_sees_every_image_once_per_pass():
    count, batch = 12, 4
    passes = [torch.cat([class_stream_indices(0, 3, count, batch, p * 3 + j) for j in range(3)]) for p in range(3)]
    for order in passes:
        assert sorted(order.tolist()) == list(range(count))  # no repeat, none missing
    assert not torch.equal(passes[0], passes[1])  # reshuffled every pass
    # count not divisible by the batch: each pass drops its (re-drawn) tail, nothing repeats.
    for p in range(3):
        seen = torch.cat([class_stream_indices(0, 3, 10, 3, p * 3 + j) for j in range(3)]).tolist()
        assert len(set(seen)) == 9
    # fewer images than batch_real: the whole class every step, as min(count, batch) in data.py
    assert sorted(class_stream_indices(0, 1, 5, 8, 7).tolist()) == list(range(5))


def test_class_stream_position_from_the_step_equals_the_sequential_loader():
    loader = _class_loader(seed=4, label=2, count=10, batch=3)
    for step in range(25):
        assert torch.equal(class_stream_indices(4, 2, 10, 3, step), next(loader))


def _smoke(**overrides):
    cfg = apply_overrides(load_preset("smoke"), overrides)
    data = load_dataset("tiny")
    plan = build_plan(cfg, data.spec)
    match, expert = plan.match, plan.expert
    return cfg, match, expert, ClassStore(data.train_x, data.train_y)


def test_matcher_reads_each_class_stream_across_outer_iterations():
    cfg, match, _, store = _smoke(**{"schedule.inner_iters": 3})
    assert (match.real_sampling, match.inner_iters) == ("stream", 3)  # what Ray matcher actors read
    matcher = Matcher(match, store, initial_synset(match, store, store.classes))
    for c in store.classes:
        loader = _class_loader(0, c, store.count(c), match.batch_real)
        for outer, inner in itertools.product(range(3), range(3)):
            got = matcher.real_batch(c, outer, inner, torch.Generator())
            assert torch.equal(got, store.class_tensor(c)[next(loader)])


def test_independent_option_keeps_the_fresh_draw_per_step():
    cfg, match, _, store = _smoke(**{"match.real_sampling": "independent"})
    matcher = Matcher(match, store, initial_synset(match, store, store.classes))
    got = matcher.real_batch(1, 2, 1, rng.generator(0, "match", 1, 2, 1))
    assert torch.equal(got, store.sample(1, match.batch_real, rng.generator(0, "match", 1, 2, 1)))
    with pytest.raises(ConfigError, match="match.real_sampling 'fresh' is unknown"):
        apply_overrides(cfg, ["match.real_sampling=fresh"])


def test_expert_stream_positions_equal_the_sequential_loader():
    # 50 images in batches of 8: epochs of 7 batches, the last of 2 images, so an update of
    # n_data 20 takes 3 batches, or 4 when the partial batch falls among them.
    images, batch, n_data, inner_iters, fix_iter, early = 50, 8, 20, 3, 2, 1
    stream = ExpertStream(images, batch, n_data, inner_iters, fix_iter, early, seed=5)
    taken = _published_run(_expert_loader(5, images, batch), 5, inner_iters, fix_iter, early,
                           stream.per_epoch, n_data)
    assert {len(v) for k, v in taken.items() if k[1] != "early"} == {3, 4}
    for (outer, inner), batches in taken.items():
        if inner == "early":
            continue
        fresh = ExpertStream(images, batch, n_data, inner_iters, fix_iter, early, seed=5)
        first = fresh.start(outer, inner)  # a resumed run: walked from the start, no memory
        assert first == stream.start(outer, inner)
        got = [stream.batch_indices(t) for t in range(first, first + stream.update_len(first))]
        assert len(got) == len(batches) and all(torch.equal(a, b) for a, b in zip(got, batches))


def test_expert_trajectory_trains_on_the_stream_in_the_published_order():
    overrides = {"expert.width": 4, "expert.batch_size": 48, "expert.n_data": 90, "expert.fix_iter": 2,
                 "expert.early": 1}
    cfg, _, expert, store = _smoke(**overrides)
    seen = []
    take = store.take
    store.take = lambda idx: (seen.append(idx.clone()), take(idx))[1]
    for _ in expert_trajectory(expert, store, 2, 0, 3):
        pass
    per_epoch = -(-len(store) // 48)  # 160 images: 3 batches of 48 and one of 16
    taken = _published_run(_expert_loader(0, len(store), 48), 3, 2, 2, 1, per_epoch, 90)
    # Updates after the last inner iteration of a cycle are skipped (the next re-initialisation
    # discards them) but still consume the stream, as they do in the published loop.
    skipped = {(1, 1), (2, 1)}
    expected = [b for key, batches in taken.items() if key not in skipped for b in batches]
    assert len(seen) == len(expected) and all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert {len(b) for b in seen} == {48, 16}
    assert {len(v) for k, v in taken.items() if k[1] != "early"} == {2, 3}  # 48+48, or 48+16+48


def test_independent_expert_draws_a_fresh_sample_per_update():
    cfg, _, expert, store = _smoke(**{"expert.real_sampling": "independent", "expert.width": 4})
    assert expert.real_sampling == "independent"
    states = {(o, i): {k: v.clone() for k, v in m.state_dict().items()}
              for o, i, m in expert_trajectory(expert, store, 2, 0, 1)}
    manual = ExpertTrainer(expert, init_expert(expert, 0))
    g = rng.generator(0, "expert", 0, 0)  # the update after (0, 0): 64 images, batches of 32
    manual.train_batches(*store.sample_any(64, g), g)
    assert all(torch.equal(v, states[(0, 1)][k]) for k, v in manual.model.state_dict().items())
