import pytest
import torch
import torch.nn.functional as F

from idc_ray.config import apply_overrides, load_preset
from idc_ray.data import ClassStore, load_dataset
from idc_ray.local import condense_local
from idc_ray.engine import rng
from idc_ray.engine.expert import expert_trajectory, init_expert
from idc_ray.engine.matcher import Matcher, stack_stored
from idc_ray.engine.plan import build_plan, initial_synset
from idc_ray.engine.synset import init_class


def _setup(**overrides):
    cfg = apply_overrides(load_preset("smoke"), overrides)
    data = load_dataset("tiny")
    plan = build_plan(cfg, data.spec)
    match, expert = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    return cfg, data, match, expert, store


def _condense(cfg, data):
    """The stored set and labels of the one in-process loop (the local backend's schedule)."""
    stored, labels, _ = condense_local(cfg, build_plan(cfg, data.spec), data.train_store())
    return stored, labels


def test_matching_loss_falls_on_a_fixed_problem():
    cfg, data, match, expert, store = _setup(**{"match.lr_img": 0.1, "match.metric": "mse"})
    matcher = Matcher(match, store, initial_synset(match, store, store.classes))
    model = init_expert(expert, 0)
    # Same (outer, inner) keys every step: same real batch and augmentation, so only S changes.
    losses = [sum(matcher.step(model, 0, 0).values()) for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.forced_isa
def test_same_seed_gives_identical_bytes_and_seed_matters():
    cfg, data, *_ = _setup()
    a = _condense(cfg, data)[0]
    b = _condense(cfg, data)[0]
    assert torch.equal(a, b)
    c = _condense(apply_overrides(cfg, ["schedule.seed=1"]), data)[0]
    assert not torch.equal(a, c)


def test_outer_iters_zero_returns_the_initialisation():
    cfg, data, match, expert, store = _setup(**{"schedule.outer_iters": 0})
    stored, stored_labels = _condense(cfg, data)
    init, labels = stack_stored(initial_synset(match, store, store.classes))
    assert torch.equal(stored, init) and torch.equal(stored_labels, labels)
    assert stored.shape == (4, 1, 1, 28, 28)


def test_initialisation_follows_init_select():
    cfg, data, _, _, store = _setup(**{"schedule.outer_iters": 0})
    first = _condense(cfg, data)[0]  # smoke: ipc 1, factor 2: a mosaic of 4 real images per class
    for c in store.classes:  # top-left piece: the class's first image in dataset order
        top_left = F.interpolate(store.class_tensor(c)[:1], size=(14, 14))
        assert torch.equal(first[c, 0, :, :14, :14], top_left[0])
    random_cfg = apply_overrides(cfg, {"synset.init_select": "random"})
    drawn = _condense(random_cfg, data)[0]
    for c in store.classes:  # the (seed, "init", class) generator's permutation, as before
        expected = init_class(store.class_tensor(c), 1, 2, "mix", rng.generator(0, "init", c), select="random")
        assert torch.equal(drawn[c], expected)
    assert not torch.equal(first, drawn)
    assert build_plan(random_cfg, data.spec).match.init_select == "random"  # what Ray matcher actors read


def test_condensation_changes_the_initialisation():
    cfg, data, match, expert, store = _setup()
    stored, _ = _condense(cfg, data)
    init, _ = stack_stored(initial_synset(match, store, store.classes))
    assert not torch.equal(stored, init)
    assert stored.min() >= -0.5 and stored.max() <= 1.5


@pytest.mark.forced_isa
def test_class_shards_give_the_same_bytes_as_one_matcher():
    """The fact the Ray layer rests on: any sharding of classes over matchers, each with its own
    copy of the expert state, gives the same stored set as one matcher with the live expert."""
    cfg, data, match, expert, store = _setup(**{"schedule.outer_iters": 2, "schedule.inner_iters": 2})
    whole = Matcher(match, store, initial_synset(match, store, store.classes))
    shards = [
        Matcher(match, store.subset(cls), initial_synset(match, store, cls)) for cls in ([0], [1, 2], [3])
    ]
    sched = cfg.schedule
    for outer, inner, model in expert_trajectory(expert, store, sched.inner_iters, 0, sched.outer_iters):
        if inner == 0:
            whole.begin_outer()
            for s in shards:
                s.begin_outer()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for s in shards:
            copy = init_expert(expert, 99)
            copy.load_state_dict(state)
            s.step(copy, outer, inner)
        whole.step(model, outer, inner)
    merged = {}
    for s in shards:
        merged.update(s.stored())
    assert torch.equal(stack_stored(merged)[0], stack_stored(whole.stored())[0])


def test_expert_trajectory_resumes_mid_cycle_with_the_same_states():
    cfg, data, match, expert, store = _setup(**{"expert.fix_iter": 2, "schedule.inner_iters": 2})
    full = {(o, i): {k: v.clone() for k, v in m.state_dict().items()}
            for o, i, m in expert_trajectory(expert, store, 2, 0, 3)}
    resumed = {(o, i): {k: v.clone() for k, v in m.state_dict().items()}
               for o, i, m in expert_trajectory(expert, store, 2, 1, 3)}
    assert set(resumed) == {(1, 0), (1, 1), (2, 0), (2, 1)}
    for key, state in resumed.items():
        assert all(torch.equal(state[k], full[key][k]) for k in state)
    # fix_iter 2: outer 1 continues outer 0's expert instead of re-initialising it.
    assert not torch.equal(full[(1, 0)]["classifier.weight"], init_expert(expert, 1).state_dict()["classifier.weight"])


def test_optimizer_state_round_trip_continues_identically():
    cfg, data, match, expert, store = _setup()
    model = init_expert(expert, 0)
    a = Matcher(match, store, initial_synset(match, store, store.classes))
    a.step(model, 0, 0)
    b = Matcher(match, store, initial_synset(match, store, store.classes))
    b.load_state_dict(a.state_dict())
    a.step(model, 0, 1)
    b.step(model, 0, 1)
    assert torch.equal(stack_stored(a.stored())[0], stack_stored(b.stored())[0])


def test_pretrained_pool_draws_a_checkpoint_at_the_chosen_epochs(tmp_path):
    from dataclasses import replace

    from idc_ray.pretrain import pretrain_pool

    cfg, data, match, expert, store = _setup()
    pretrain_pool(cfg, data, tmp_path, seeds=2, epochs=2)
    spec = replace(expert, pretrained=str(tmp_path), pt_from=1, pt_num=2)
    candidates = [torch.load(tmp_path / f"seed{s}" / f"epoch{e}.pt") for s in (0, 1) for e in (1, 2)]
    drawn = set()
    for outer in range(8):
        state = init_expert(spec, outer).state_dict()
        hits = [i for i, c in enumerate(candidates) if all(torch.equal(state[k], c[k]) for k in c)]
        assert len(hits) == 1
        drawn.add(hits[0])
    assert len(drawn) > 1  # the draw varies with the outer iteration
    assert init_expert(spec, 3).state_dict()["classifier.weight"].equal(
        init_expert(spec, 3).state_dict()["classifier.weight"])
