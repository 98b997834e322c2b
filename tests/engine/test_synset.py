import pytest
import torch

from idc_ray.engine.formation import form_uniform
from idc_ray.engine.synset import ClassOptimizer, init_class, sample_formed


@pytest.mark.forced_isa
def test_shared_momentum_per_class_equals_one_sgd_over_all_classes():
    """The published optimiser: one SGD(momentum 0.5) over every class's rows, stepped after each
    class's loss. Per-class ClassOptimizers must reproduce it over several iterations."""
    n_cls, lr, mom = 4, 0.1, 0.5
    g = torch.Generator().manual_seed(0)
    start = torch.rand(n_cls, 2, 3, generator=g)
    grads = torch.randn(5, n_cls, 2, 3, generator=g)  # (inner iterations, class)

    shared = start.clone().requires_grad_(True)
    opt = torch.optim.SGD([shared], lr=lr, momentum=mom)
    separate = [start[c].clone() for c in range(n_cls)]
    opts = [ClassOptimizer(lr, mom, position=c, num_classes=n_cls) for c in range(n_cls)]
    for it in range(5):
        for c in range(n_cls):
            opt.zero_grad()
            grad = torch.zeros_like(shared)
            grad[c] = grads[it, c] * (1 + shared.detach()[c])  # depends on the current value
            shared.grad = grad
            opt.step()
        for c in range(n_cls):
            opts[c].before_update(separate[c])
            opts[c].step(separate[c], grads[it, c] * (1 + separate[c]))
    # torch's SGD and ours are different kernels over different shapes (one tensor vs one per
    # class): each step agrees up to float32 rounding, not bit for bit (docs/testing.md)
    torch.testing.assert_close(torch.stack(separate), shared.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.forced_isa
def test_per_class_mode_is_plain_sgd():
    lr, mom = 0.1, 0.5
    g = torch.Generator().manual_seed(1)
    p = torch.rand(3, generator=g)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=lr, momentum=mom)
    mine = ClassOptimizer(lr, mom, position=2, num_classes=5, mode="per_class")
    for _ in range(4):
        grad = torch.randn(3, generator=g)
        ref.grad = grad.clone()
        opt.step()
        mine.before_update(p)
        mine.step(p, grad)
    torch.testing.assert_close(p, ref.detach(), rtol=1e-6, atol=1e-6)  # another kernel: rounding only


def test_optimizer_state_round_trip():
    opt = ClassOptimizer(0.1, 0.5, position=0, num_classes=2)
    p = torch.zeros(2)
    opt.step(p, torch.ones(2))
    other = ClassOptimizer(0.1, 0.5, position=0, num_classes=2)
    other.load_state_dict(opt.state_dict())
    assert torch.equal(other.buffer, opt.buffer)


def _real(n=16, size=8):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(3))


def test_random_init_picks_real_samples():
    real = _real()
    out = init_class(real, 3, 1, "random", torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 8, 8)
    assert all(any(torch.equal(o, r) for r in real) for o in out)


def test_mix_init_forms_back_to_downsampled_real_samples():
    real = _real()
    stored = init_class(real, 2, 2, "mix", torch.Generator().manual_seed(0))
    assert stored.shape == (2, 1, 8, 8)
    # Each quadrant of each stored sample is a nearest-downsampled real image.
    quads = [stored[..., :4, :4], stored[..., :4, 4:], stored[..., 4:, :4], stored[..., 4:, 4:]]
    down = torch.nn.functional.interpolate(real, size=(4, 4))
    for q in quads:
        for s in q:
            assert any(torch.equal(s, d) for d in down)
    formed, _ = form_uniform(stored, torch.zeros(2, dtype=torch.long), 2)
    assert formed.shape == (8, 1, 8, 8)


def test_mix_init_for_odd_sides_and_1d():
    real = _real(size=9)
    assert init_class(real, 2, 2, "mix", torch.Generator().manual_seed(0)).shape == (2, 1, 9, 9)
    one_d = init_class(real, 2, 2, "mix", torch.Generator().manual_seed(0), formation="1d")
    assert one_d.shape == (2, 1, 9, 9)


def test_noise_init_is_gaussian_around_one_half_clamped_to_unit_range():
    # Published Synthesizer: clamp(N(0, 1) / 4 + 0.5, 0, 1). About 2.3 % of the pixels sit on each
    # bound (uniform noise puts none there) and the spread is near 0.25 (uniform: 0.29).
    a = init_class(_real(), 64, 2, "noise", torch.Generator().manual_seed(5))
    b = init_class(_real(), 64, 2, "noise", torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (64, 1, 8, 8)
    assert 0.01 < float((a == 0).float().mean()) < 0.04 and 0.01 < float((a == 1).float().mean()) < 0.04
    assert abs(float(a.mean()) - 0.5) < 0.02 and 0.22 < float(a.std()) < 0.26


def test_init_takes_the_first_images_of_the_class_by_default():
    # The published init reads class_sample(c, n): the class's first n images in dataset order.
    real = _real()
    assert torch.equal(init_class(real, 3, 1, "random", torch.Generator().manual_seed(0)), real[:3])
    stored = init_class(real, 2, 2, "mix", torch.Generator().manual_seed(0))
    down = torch.nn.functional.interpolate(real[:8], size=(4, 4))
    quads = [stored[..., :4, :4], stored[..., :4, 4:], stored[..., 4:, :4], stored[..., 4:, 4:]]
    for k, quad in enumerate(quads):  # piece k of stored sample i is image k * ipc + i
        assert torch.equal(quad, down[2 * k : 2 * k + 2])


def test_random_selection_keeps_the_seeded_permutation():
    real = _real()
    out = init_class(real, 3, 1, "random", torch.Generator().manual_seed(0), select="random")
    expected = real[torch.randperm(16, generator=torch.Generator().manual_seed(0))[:3]]
    assert torch.equal(out, expected) and not torch.equal(out, real[:3])
    with pytest.raises(ValueError, match="unknown init selection"):
        init_class(real, 1, 1, "random", torch.Generator(), select="last")


def test_sample_formed_caps_at_batch_syn_max():
    stored = torch.rand(10, 1, 8, 8)
    former = lambda x, y: form_uniform(x, y, 4)  # 160 formed
    x, y = sample_formed(stored, 7, former, 128, torch.Generator().manual_seed(0))
    assert x.shape[0] == 128 and (y == 7).all()
    x2, _ = sample_formed(stored, 7, former, 200, torch.Generator().manual_seed(0))
    assert x2.shape[0] == 160


def test_unknown_init():
    with pytest.raises(ValueError, match="unknown init"):
        init_class(_real(), 1, 1, "zeros", torch.Generator())
