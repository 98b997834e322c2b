"""The vmap matching path (classes batched) against the per-class loop of IDC Algorithm 1."""

from dataclasses import replace

import pytest
import torch

from idc_ray.config import ConfigError, apply_overrides, load_preset
from idc_ray.data import ClassStore, load_dataset
from idc_ray.engine import matcher as matcher_module
from idc_ray.engine.batched import batched_match_losses
from idc_ray.engine.expert import init_expert
from idc_ray.engine.matcher import Matcher, resolve_path, stack_stored
from idc_ray.engine.plan import build_plan, initial_synset
from idc_ray.engine.matching import gradient_match_loss, matched_parameters

TINY = {"synset.ipc": 2, "synset.factor": 2, "match.batch_real": 8, "expert.width": 8}


def _setup(**overrides):
    cfg = apply_overrides(load_preset("smoke"), {**TINY, **overrides})
    data = load_dataset("tiny")
    plan = build_plan(cfg, data.spec)
    match, expert = plan.match, plan.expert
    store = ClassStore(data.train_x, data.train_y)
    return cfg, match, expert, store


def _matcher(cfg, match, store, path):
    return Matcher(replace(match, path=path), store, initial_synset(match, store, store.classes))


def _two_steps(cfg, match, expert, store, path, losses=None):
    matcher = _matcher(cfg, match, store, path)
    model = init_expert(expert, 0)
    for inner in range(2):
        step_losses = matcher.step(model, 0, inner)
        if losses is not None:
            losses.append(step_losses)
    return stack_stored(matcher.stored())[0]


def _cast(batch, dtype):
    x_real, y_real, x_syn, y_syn = batch
    return x_real.to(dtype), y_real, x_syn.to(dtype), y_syn


# The cosine of a 1-D tensor (bias=True) is taken per element, ab / (|a||b| + 1e-6), whose
# gradient is ill-conditioned where |a||b| is near 1e-6: in float32 the loop itself then differs
# from its float64 value by ~2e-4, so that case compares the paths in float64 (gradients still
# flow back into the float32 stored data).
@pytest.mark.forced_isa
@pytest.mark.parametrize("metric,bias,fc,dtype", [
    ("mse", False, False, torch.float32), ("l1", False, False, torch.float32),
    ("l1_mean", False, False, torch.float32), ("cos", False, False, torch.float32),
    ("mse", True, False, torch.float32), ("l1_mean", True, True, torch.float32),
    ("cos", False, True, torch.float32), ("cos", True, True, torch.float64),
], ids=lambda v: str(v).replace("torch.", ""))
def test_batched_losses_and_gradients_equal_the_loop(metric, bias, fc, dtype):
    cfg, match, expert, store = _setup(**{"match.metric": metric, "match.bias": bias, "match.fc": fc})
    matcher = _matcher(cfg, match, store, "loop")
    model = init_expert(expert, 0).to(dtype).train()
    params = matched_parameters(model, bias=bias, fc=fc)
    classes = list(matcher.classes.values())
    loop_losses, loop_grads = [], []
    for cls in classes:
        loss = gradient_match_loss(model, params, *_cast(matcher.class_batch(cls, 0, 0), dtype), metric)
        loop_losses.append(loss.detach())
        loop_grads.append(torch.autograd.grad(loss, cls.data)[0])
    batches = [_cast(matcher.class_batch(cls, 0, 0), dtype) for cls in classes]
    losses = batched_match_losses(model, params, batches, metric)
    grads = torch.autograd.grad(losses.sum(), [cls.data for cls in classes])
    assert losses.shape == (len(classes),)
    # A loss sums thousands of float32 terms (l1 reaches ~50 here), so it is compared relatively.
    torch.testing.assert_close(losses.detach(), torch.stack(loop_losses), atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, loop_grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.forced_isa
def test_two_matcher_steps_agree_between_paths():
    cfg, match, expert, store = _setup()
    loop_losses, vmap_losses = [], []
    loop_data = _two_steps(cfg, match, expert, store, "loop", loop_losses)
    vmap_data = _two_steps(cfg, match, expert, store, "vmap", vmap_losses)
    init, _ = stack_stored(initial_synset(match, store, store.classes))
    assert not torch.equal(vmap_data, init)
    torch.testing.assert_close(vmap_data, loop_data, atol=1e-5, rtol=0)
    for got, want in zip(vmap_losses, loop_losses):
        assert list(got) == list(want)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_auto_resolves_to_lean_on_cpu_and_vmap_on_cuda():
    cfg, match, expert, store = _setup()
    assert match.path == "auto"  # build_plan keeps the configured value; the Matcher resolves it
    assert _matcher(cfg, match, store, "auto").path == "lean"
    assert resolve_path("auto", torch.device("cuda")) == "vmap"
    assert resolve_path("loop", torch.device("cuda")) == "loop"
    with pytest.raises(ValueError, match="unknown matching path 'fast'"):
        resolve_path("fast", torch.device("cpu"))


def _refuse_batching(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the batched path ran where it cannot apply")

    monkeypatch.setattr(matcher_module, "batched_match_losses", refuse)


@pytest.mark.parametrize("overrides", [
    {"match.objective": "feat"},
    {"expert.model": "resnet10"},  # BatchNorm with running statistics
], ids=["feat", "batchnorm"])
def test_fallbacks_take_the_loop_and_give_its_bytes(monkeypatch, overrides):
    cfg, match, expert, store = _setup(**overrides)
    loop_data = _two_steps(cfg, match, expert, store, "loop")
    _refuse_batching(monkeypatch)
    assert torch.equal(_two_steps(cfg, match, expert, store, "vmap"), loop_data)


def test_unequal_class_batches_fall_back_to_the_loop(monkeypatch):
    cfg, match, expert, _ = _setup()
    data = load_dataset("tiny")
    keep = torch.ones(len(data.train_y), dtype=torch.bool)
    keep[(data.train_y == 0).nonzero().flatten()[5:]] = False  # class 0 keeps 5 < batch_real images
    store = ClassStore(data.train_x[keep], data.train_y[keep])
    assert store.class_tensor(0).shape[0] < match.batch_real
    loop_data = _two_steps(cfg, match, expert, store, "loop")
    _refuse_batching(monkeypatch)
    assert torch.equal(_two_steps(cfg, match, expert, store, "vmap"), loop_data)


def test_bad_path_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        apply_overrides(load_preset("smoke"), ["match.path=fast"])
    assert str(err.value) == "match.path 'fast' is unknown; choose one of auto, loop, lean, vmap"
