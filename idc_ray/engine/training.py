"""Training a network on images, as the expert, the evaluation protocol and the continual learner
all do: per-sample DSA, then CutMix, then one SGD step on the mixed cross-entropy (settings
sheet, "Evaluation protocol"; the expert's training in paper Section 4.3 is the same step), with
the normaliser and the top-1 accuracy that go with it.

Every random draw of a step (the DSA parameters, the CutMix coin, box and permutation) comes from
the one generator the caller hands in, in that order; an epoch's batch order comes from a second
one. The same generators, inputs and weights therefore give the same bytes on the CPU.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from idc_ray.engine.augment import DiffAugment, cutmix, mixed_cross_entropy

EVAL_BATCH = 500  # images per forward pass when testing

# (logits, labels) -> the logits the cross-entropy sees for those labels (task-incremental heads)
LogitMask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (augmented batch, logits) -> a loss added to the cross-entropy (LwF's distillation term)
LossTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (a batch of [0, 1] images, the augmentation generator) -> the batch the step trains on
Prepare = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Normalize:
    """``(x - mean) / std`` per channel on ``device``, in the constants' dtype (float32); uint8
    images are first scaled to [0, 1]. The store and the artifacts hold un-normalised images in
    [0, 1], so every consumer normalises right before the network (the published order)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        return (x.to(self.device, self.mean.dtype) - self.mean) / self.std


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalize: Normalize,
             mask: LogitMask | None = None) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on (x, y), in eval mode, ``EVAL_BATCH`` images at a
    time; ``mask`` restricts each sample's prediction to its task's classes (task identity given)."""
    model.eval()
    correct = 0
    for start in range(0, len(x), EVAL_BATCH):
        yb = y[start : start + EVAL_BATCH].to(normalize.device)
        logits = model(normalize(x[start : start + EVAL_BATCH]))
        if mask is not None:
            logits = mask(logits, yb)
        correct += int((logits.argmax(1) == yb).sum())
    return correct / max(len(x), 1)


class SGDTrainer:
    """SGD on ``model`` (moved to its device by the caller) with per-sample DSA and CutMix.

    ``step`` trains on one batch, ``steps`` on a sequence of batches (the expert's updates),
    ``epoch`` on one shuffled pass (evaluation, continual stages). ``milestones``: lr x0.2 at
    each of these epochs (MultiStepLR, stepped after every epoch), as the evaluation protocol and
    the continual schedule decay it. ``logit_mask`` and ``loss_term`` shape the loss (see
    :data:`LogitMask`, :data:`LossTerm`); without them it is the mixed cross-entropy of CutMix.
    """

    def __init__(self, model: nn.Module, *, lr: float, momentum: float, weight_decay: float, augment: str,
                 cutmix_prob: float, cutmix_beta: float, aug_single: bool = True,
                 milestones: Sequence[int] | None = None, logit_mask: LogitMask | None = None,
                 loss_term: LossTerm | None = None):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.scheduler = None if milestones is None else torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, list(milestones), gamma=0.2)
        self.augment = DiffAugment(augment, mode="sample", single=aug_single)
        self.cutmix_prob, self.cutmix_beta = cutmix_prob, cutmix_beta
        self.logit_mask, self.loss_term = logit_mask, loss_term

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One SGD step on the (normalised) batch (x, y) after DSA and CutMix, both drawn from
        ``generator``; returns the loss, detached and left on the device."""
        xb = self.augment(x, generator)
        xb, y_a, y_b, lam = cutmix(xb, y, generator, beta=self.cutmix_beta, prob=self.cutmix_prob)
        logits = self.model(xb)
        loss = mixed_cross_entropy(logits, y_a, y_b, lam, self.logit_mask)
        if self.loss_term is not None:
            loss = loss + self.loss_term(xb, logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def steps(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], generator: torch.Generator) -> list[float]:
        """:meth:`step` on each (x, y) of ``batches`` in turn, in training mode; their losses, read
        once at the end (one host sync). ``batches`` may be lazy: each is made after the step
        before it, so draws it makes from ``generator`` fall between the steps' draws."""
        self.model.train()
        losses = [self.step(x, y, generator) for x, y in batches]
        return torch.stack(losses).tolist() if losses else []

    def epoch(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: torch.Generator,
              generator: torch.Generator, prepare: Prepare | None = None) -> float:
        """One pass over (x, y) in the order of a permutation drawn from ``shuffle``,
        ``batch_size`` at a time (the last batch partial), each batch passed through
        ``prepare(batch, generator)`` first if given (loader-side augmentation); then the lr
        schedule's step. Returns the mean loss per sample."""
        order = torch.randperm(len(x), generator=shuffle).to(x.device)
        parts = order.split(batch_size)
        batches = ((x[i] if prepare is None else prepare(x[i], generator), y[i]) for i in parts)
        losses = self.steps(batches, generator)
        if self.scheduler is not None:
            self.scheduler.step()
        return sum(loss * len(i) for loss, i in zip(losses, parts)) / max(len(x), 1)
