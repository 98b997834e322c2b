"""Learned multi-formation (paper appendix D): the FSRCNN upsampler, its formation and its joint
optimisation with the stored data in the in-process matcher group."""

import pytest
import torch

from idc_ray.config import ConfigError, apply_overrides, load_preset
from idc_ray.data import get_spec, load_dataset
from idc_ray.engine.formation import form_learned, form_uniform, get_former
from idc_ray.engine.plan import build_plan, build_trainer
from idc_ray.engine.upsampler import UpsamplerSpec, UpsamplerTrainer, build_upsampler, parameter_count
from idc_ray.checkpoint import CheckpointStore
from idc_ray.local import LocalAttempts, LocalExpert, LocalMatchers
from idc_ray.run.hooks import RunHooks
from idc_ray.run.recovery import run_with_restarts
from idc_ray.run.schedule import algorithm1


@pytest.mark.parametrize("channels,side,factor", [(3, 32, 2), (1, 28, 3), (3, 32, 3), (1, 17, 4)])
def test_learned_formation_equals_bilinear_at_initialisation(channels, side, factor):
    # Same partition (28 px at f 3: padded with 0.5 to 30, crops of 10) and a zero residual.
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, channels, side, side, generator=g), torch.arange(3)
    net = build_upsampler(UpsamplerSpec(channels, factor), seed=0)
    fx, fy = form_learned(x, y, factor, net)
    ux, uy = form_uniform(x, y, factor)
    assert torch.equal(fx, ux) and torch.equal(fy, uy)


def test_learned_formation_differs_once_the_residual_is_nonzero():
    x, y = torch.rand(2, 3, 32, 32), torch.arange(2)
    net = build_upsampler(UpsamplerSpec(3, 2), seed=0)
    with torch.no_grad():
        net.deconv.weight.fill_(0.01)
    fx, _ = get_former("learned", 2, upsampler=net)(x, y)
    assert not torch.allclose(fx, form_uniform(x, y, 2)[0])


def test_parameter_count_of_the_default_sizes():
    # 5x5 conv 3->16, 1x1 16->8, two 3x3 8->8, 1x1 8->16, PReLUs, 9x9 deconv 16->3 (docs/formation.md)
    assert parameter_count(UpsamplerSpec(3, 3)) == 6611
    assert parameter_count(UpsamplerSpec(3, 2)) == 6611


def test_trainer_sums_class_gradients_in_class_order():
    net = build_upsampler(UpsamplerSpec(1, 2, d=4, s=2, m=1), seed=0)
    twin = build_upsampler(UpsamplerSpec(1, 2, d=4, s=2, m=1), seed=0)
    grads = {c: [torch.full_like(p, float(c + 1)) for p in net.parameters()] for c in range(3)}
    UpsamplerTrainer(net, 0.1).apply({c: grads[c] for c in (2, 0, 1)})
    UpsamplerTrainer(twin, 0.1).apply({0: [sum(g) for g in zip(*grads.values())]})
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))
    assert not torch.equal(net.deconv.weight, torch.zeros_like(net.deconv.weight))


def _learned_run(**overrides):
    """The smoke preset at formation learned through Algorithm 1 in-process: (stored, upsampler)."""
    cfg = apply_overrides(load_preset("smoke"), {"synset.formation": "learned", **overrides})
    data = load_dataset("tiny")
    plan = build_plan(cfg, data.spec)
    store = data.train_store()
    matchers = LocalMatchers(plan, store, None, torch.device("cpu"))
    expert = LocalExpert(plan, store, cfg.schedule, 0, torch.device("cpu"))
    algorithm1(cfg.schedule, matchers, expert, RunHooks(cfg))
    return matchers.matcher.stored(), matchers.trainer.state_dict()["net"]


def test_upsampler_learns_with_the_stored_data_deterministically(one_thread):
    stored, weights = _learned_run()
    initial = build_trainer(build_plan(apply_overrides(load_preset("smoke"), {"synset.formation": "learned"}),
                                       load_dataset("tiny").spec).match).net.state_dict()
    assert initial["deconv.weight"].abs().sum() == 0
    assert weights["deconv.weight"].abs().sum() > 0  # the residual left zero: the formation learned
    assert any(not torch.equal(weights[k], initial[k]) for k in initial if k.startswith("body"))
    stored2, weights2 = _learned_run()
    assert all(torch.equal(stored[c], stored2[c]) for c in stored)
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)


def test_learned_formation_config_errors():
    base = load_preset("smoke")
    tiny = load_dataset("tiny").spec
    with pytest.raises(ConfigError, match="factor >= 2"):
        build_plan(apply_overrides(base, {"synset.formation": "learned", "synset.factor": 1}), tiny)
    with pytest.raises(ConfigError, match="synset.learned needs"):
        apply_overrides(base, {"synset.formation": "learned", "synset.learned.d": 0})
    speech = apply_overrides(load_preset("speech"), {"synset.formation": "learned"})
    with pytest.raises(ConfigError, match="for images, not the spectrograms"):
        build_plan(speech, get_spec("speech"))


def _checkpointed_run(cfg, output, start=None):
    """Algorithm 1 in-process with checkpoints under ``output``: (stored, upsampler state)."""
    data = load_dataset("tiny")
    store = CheckpointStore(str(output))
    hooks = RunHooks(cfg, store=store, every=1, start=start)
    attempts = LocalAttempts(build_plan(cfg, data.spec), data.train_store(), cfg.schedule, torch.device("cpu"))
    states, shared, _ = run_with_restarts(cfg, attempts, hooks)
    return {c: s["data"] for c, s in states.items()}, shared, store


def test_resume_from_a_checkpoint_gives_the_bytes_of_an_uninterrupted_run(tmp_path, one_thread):
    learned = {"synset.formation": "learned", "schedule.outer_iters": 2}
    cfg = apply_overrides(load_preset("smoke"), learned)
    whole, whole_up, _ = _checkpointed_run(cfg, tmp_path / "whole")
    _, half_up, half = _checkpointed_run(apply_overrides(cfg, {"schedule.outer_iters": 1}), tmp_path / "half")
    ckpt = half.latest()  # read back from the file: the upsampler's weights and Adam moments
    assert ckpt.outer == 1 and torch.equal(ckpt.upsampler["net"]["deconv.weight"], half_up["net"]["deconv.weight"])
    resumed, resumed_up, _ = _checkpointed_run(cfg, tmp_path / "half", start=ckpt)
    assert all(torch.equal(whole[c], resumed[c]) for c in whole)
    assert all(torch.equal(whole_up["net"][k], resumed_up["net"][k]) for k in whole_up["net"])
    assert not torch.equal(half_up["net"]["deconv.weight"], whole_up["net"]["deconv.weight"])
