"""The one training component (engine/training.py): an epoch is exactly the hand-written sequence
of shuffle, DSA, CutMix, cross-entropy and SGD step it replaced; its hooks are really applied."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from idc_ray.engine.augment import DiffAugment, cutmix
from idc_ray.engine.training import EVAL_BATCH, Normalize, SGDTrainer, accuracy

HP = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, augment="color_crop_flip_scale_rotate",
          cutmix_prob=0.5, cutmix_beta=1.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def net(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def data(n: int = 22) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3, 12, 12, generator=gen(0)), torch.arange(n) % 4


def by_hand(model, x, y, epochs, batch, shuffle, g, *, prepare=None, mask=None, term=None, milestones=(2,)):
    """The loop the evaluation protocol and the continual learner each wrote out, kept here as the
    independent reference: per-epoch permutation, then per batch DSA, CutMix, the (masked) mixed
    cross-entropy plus a term, one SGD step; MultiStepLR x0.2 after each epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=HP["lr"], momentum=HP["momentum"],
                                weight_decay=HP["weight_decay"])
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.2)
    augment = DiffAugment(HP["augment"], mode="sample")
    pick = mask or (lambda z, _: z)
    means = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=shuffle)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb = x[idx] if prepare is None else prepare(x[idx], g)
            xb = augment(xb, g)
            xb, ya, yb, lam = cutmix(xb, y[idx], g, beta=HP["cutmix_beta"], prob=HP["cutmix_prob"])
            logits = model(xb)
            loss = F.cross_entropy(pick(logits, ya), ya)
            if lam != 1.0:
                loss = lam * loss + (1.0 - lam) * F.cross_entropy(pick(logits, yb), yb)
            if term is not None:
                loss = loss + term(xb, logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        scheduler.step()
        means.append(total / len(x))
    return means


def with_trainer(model, x, y, epochs, batch, shuffle, g, *, prepare=None, mask=None, term=None, milestones=(2,)):
    trainer = SGDTrainer(model, **HP, milestones=milestones, logit_mask=mask, loss_term=term)
    return [trainer.epoch(x, y, batch, shuffle, g, prepare) for _ in range(epochs)]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_epochs_are_the_hand_written_loop_bit_for_bit():
    x, y = data()  # 22 images in batches of 8: the last batch is partial
    mine, ref = net(), net()
    got = with_trainer(mine, x, y, 3, 8, gen(1), gen(2))
    want = by_hand(ref, x, y, 3, 8, gen(1), gen(2))
    assert got == want and same_weights(mine, ref)
    assert not same_weights(mine, net())  # it trained


def test_prepare_draws_from_the_step_generator_between_the_steps():
    """Loader-side augmentation (evaluation's ImageNet recipe) draws from the same generator as
    DSA and CutMix, batch by batch: noise here, drawn where the loader would draw."""
    def noisy(xb, g):
        return xb + 0.1 * torch.randn(xb.shape, generator=g)

    x, y = data()
    mine, ref = net(), net()
    got = with_trainer(mine, x, y, 2, 8, gen(1), gen(2), prepare=noisy)
    want = by_hand(ref, x, y, 2, 8, gen(1), gen(2), prepare=noisy)
    assert got == want and same_weights(mine, ref)
    plain = net()
    with_trainer(plain, x, y, 2, 8, gen(1), gen(2))
    assert not same_weights(mine, plain)


def test_the_loss_term_and_the_logit_mask_are_trained_on():
    """The continual learner hands in LwF as a loss term and its task heads as a mask: a run with
    them is the hand-written loop with them, and not the run without them."""
    teacher = net(seed=5).eval()

    def term(xb, logits):  # LwF's shape: a frozen network's logits on the same augmented batch
        with torch.no_grad():
            soft = F.softmax(teacher(xb) / 2.0, dim=1)
        return 0.5 * F.kl_div(F.log_softmax(logits / 2.0, dim=1), soft, reduction="batchmean")

    tasks = torch.tensor([0, 0, 1, 1])

    def mask(logits, labels):
        return logits.masked_fill(tasks[labels].unsqueeze(1) != tasks.unsqueeze(0), float("-inf"))

    x, y = data()
    mine, ref = net(), net()
    got = with_trainer(mine, x, y, 2, 8, gen(1), gen(2), mask=mask, term=term)
    want = by_hand(ref, x, y, 2, 8, gen(1), gen(2), mask=mask, term=term)
    assert got == want and same_weights(mine, ref)
    for kwargs in ({"term": term}, {"mask": mask}, {}):
        other = net()
        losses = with_trainer(other, x, y, 2, 8, gen(1), gen(2), **kwargs)
        assert not same_weights(mine, other) and losses != got


def test_steps_are_steps_in_training_mode_with_their_losses_read_at_the_end():
    """The expert's updates: given batches in order, one generator, no shuffle, no schedule."""
    x, y = data(16)
    model, twin = net().eval(), net()
    losses = SGDTrainer(model, **HP).steps(((x[i : i + 8], y[i : i + 8]) for i in (0, 8)), gen(3))
    one_by_one, g = SGDTrainer(twin, **HP), gen(3)
    assert model.training and losses == [float(one_by_one.step(x[i : i + 8], y[i : i + 8], g)) for i in (0, 8)]
    assert same_weights(model, twin) and SGDTrainer(net(), **HP).steps([], gen(3)) == []


def test_normalize_scales_uint8_and_keeps_the_constants_dtype():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = torch.tensor([255, 0, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    assert torch.allclose(norm(x).flatten(), torch.tensor([1.0, -1.0, 0.2]))
    assert norm(x.double() / 255).dtype == torch.float32
    norm.mean, norm.std = norm.mean.double(), norm.std.double()  # benchmarks/precision.py's float64 run
    assert norm(torch.rand(2, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_accuracy_counts_top1_in_chunks_with_an_optional_mask():
    class Fixed(nn.Module):  # logits favour class 3 for every image, class 1 next
        def forward(self, x):
            return torch.tensor([0.0, 2.0, 1.0, 3.0]).expand(len(x), 4)

    n = EVAL_BATCH + 3  # two chunks
    x, y = torch.zeros(n, 1, 2, 2), torch.tensor([3, 1] * (n // 2) + [3])
    norm = Normalize((0.0,), (1.0,))
    assert accuracy(Fixed(), x, y, norm) == (n // 2 + 1) / n
    first_two = torch.tensor([0, 0, 1, 1])
    task = lambda logits, labels: logits.masked_fill(first_two[labels].unsqueeze(1) != first_two, -1e9)  # noqa: E731
    assert accuracy(Fixed(), x, y, norm, task) == 1.0  # within its task each label is the top logit
    assert accuracy(Fixed(), x[:0], y[:0], norm) == 0.0
