"""The continual learner's parts: head expansion, LwF distillation, task heads, the schedule."""

import pytest
import torch
import torch.nn.functional as F

from idc_ray.continual.learner import (
    LearnerRun, StageRecipe, distillation_loss, expand_head, mask_to_task, run_learner, stage_milestones,
)
from idc_ray.engine import rng
from idc_ray.models import build_model


def _classifier_input(model, x):
    """(logits, the classifier's input) of ``model`` on ``x``."""
    seen = []
    hook = model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        return model(x), seen[0]
    finally:
        hook.remove()


def float32_dot_bound(weight, bias, features):
    """How far two float32 evaluations of ``features @ weight.T + bias`` may lie apart when each
    adds its n + 1 terms in its own order (a GEMM kernel's blocking depends on the output width and
    the CPU: AVX-512 vs AVX2 MKL kernels differ in the last bits). Each is within
    gamma_{n+1} * (|b| + |w| @ |h|) of the exact value, gamma_k = k u / (1 - k u), u = 2^-24
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5, any order, with or
    without FMA), so two of them are within twice that. Computed in float64."""
    u = 2.0**-24
    k = weight.shape[1] + 1
    gamma = k * u / (1 - k * u)
    magnitude = features.double().abs() @ weight.double().abs().T + bias.double().abs()
    return 2 * gamma * magnitude


@pytest.mark.forced_isa
@pytest.mark.parametrize("name,size", [("convnet3", 28), ("resnet10", 32)])
def test_head_expansion_keeps_old_logits_unchanged_before_training(name, size):
    """What is guaranteed: the network below the head computes exactly what it computed before
    (the same operation on the same shapes: bit for bit), and the old classes' logits come from
    the same rows and biases, so they agree up to the rounding of a GEMM of another width (3 vs 7
    outputs; docs/testing.md). The new rows are drawn, not zero."""
    with rng.seeded_global_rng(0, "test"):
        model = build_model(name, 3, 1, size, width=8 if name == "convnet3" else None).eval()
    x = torch.rand(5, 1, size, size)
    with torch.no_grad():
        before, features_before = _classifier_input(model, x)
        old_weight, old_bias = model.classifier.weight.clone(), model.classifier.bias.clone()
        expand_head(model, 7, 0, 1, 0)
        after, features_after = _classifier_input(model, x)
    assert after.shape == (5, 7)
    assert torch.equal(features_after, features_before)
    assert torch.equal(model.classifier.weight[:3], old_weight) and torch.equal(model.classifier.bias[:3], old_bias)
    bound = float32_dot_bound(old_weight, old_bias, features_before)
    assert ((after[:, :3].double() - before.double()).abs() <= bound).all()
    assert bound.max() < 1e-2 * before.abs().max()  # worst-case rounding: far below a wrong row's error
    assert not torch.equal(after[:, 3:], torch.zeros_like(after[:, 3:]))


def test_new_head_rows_are_keyed_by_seed_and_stage():
    def new_rows(seed, stage):
        with rng.seeded_global_rng(0, "test"):
            model = build_model("convnet3", 2, 1, 28, width=8)
        return expand_head(model, 4, seed, stage, 0).classifier.weight[2:].detach()

    assert torch.equal(new_rows(0, 1), new_rows(0, 1))
    assert not torch.equal(new_rows(0, 1), new_rows(0, 2)) and not torch.equal(new_rows(0, 1), new_rows(1, 1))


def test_distillation_equals_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    new, old, T = torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g), 2.0
    p_old = torch.exp(old / T) / torch.exp(old / T).sum(1, keepdim=True)
    p_new = torch.exp(new[:, :3] / T) / torch.exp(new[:, :3] / T).sum(1, keepdim=True)
    expected = T**2 * (p_old * (p_old.log() - p_new.log())).sum(1).mean()
    assert torch.allclose(distillation_loss(new, old, T), expected, atol=1e-6)
    # per task (task-incremental): one softmax per old task, summed
    groups = torch.tensor([0, 0, 1])
    per_task = sum(distillation_loss(new[:, idx], old[:, idx], T) for idx in ([0, 1], [2]))
    assert torch.allclose(distillation_loss(new, old, T, groups), per_task, atol=1e-6)
    assert distillation_loss(new, old, T) > 0


def test_distillation_is_zero_when_the_old_model_equals_the_new_one():
    with rng.seeded_global_rng(0, "test"):
        model = build_model("convnet3", 3, 1, 28, width=8).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
    assert float(distillation_loss(logits, logits.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(torch.cat([logits, torch.randn(6, 2)], 1), logits)) == pytest.approx(0.0, abs=1e-6)


def test_task_heads_mask_other_tasks_logits():
    logits = torch.zeros(2, 4)
    masked = mask_to_task(logits, torch.tensor([1, 3]), torch.tensor([0, 0, 1, 1]))
    assert torch.isinf(masked[0, 2:]).all() and torch.isfinite(masked[0, :2]).all()
    assert torch.isinf(masked[1, :2]).all() and torch.isfinite(masked[1, 2:]).all()
    assert mask_to_task(logits, torch.tensor([1, 3]), None) is logits


def test_schedule_decays_at_600_and_800_of_1000():
    assert stage_milestones(1000) == [600, 800]


def _run(lwf_weight):
    g = torch.Generator().manual_seed(0)
    memories = [(torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 0, 1, 1])),
                (torch.rand(4, 1, 28, 28, generator=g), torch.tensor([2, 2, 3, 3]))]
    tests = [(torch.rand(6, 1, 28, 28, generator=g), torch.tensor([0, 1, 0, 1, 0, 1])),
             (torch.rand(6, 1, 28, 28, generator=g), torch.tensor([2, 3, 2, 3, 2, 3]))]
    run = LearnerRun("random", "convnet3", 0, 0, 8, 1, 28, (0.5,), (0.5,), None,
                     StageRecipe(epochs=2, batch_size=4, lwf_weight=lwf_weight))
    return run_learner(run, memories, tests)


def test_learner_is_reproducible_and_the_distillation_term_is_trained_on():
    a, b, off = _run(1.0), _run(1.0), _run(0.0)
    assert len(a.accuracy) == 2 and a.accuracy == b.accuracy and a.final_loss == b.final_loss
    assert a.final_loss[0] == off.final_loss[0]  # no old model at the first stage
    assert a.final_loss[1] != off.final_loss[1]


def test_cross_entropy_uses_only_the_task_head():
    logits = torch.tensor([[5.0, 0.0, 9.0, 9.0]])
    masked = mask_to_task(logits, torch.tensor([0]), torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(F.cross_entropy(masked, torch.tensor([0])), F.cross_entropy(logits[:, :2], torch.tensor([0])))
