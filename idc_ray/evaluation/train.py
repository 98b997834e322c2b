"""IDC's evaluation protocol: train a freshly initialised test model from scratch on a (formed)
training set and report top-1 accuracy on a test set.

Settings sheet, "Evaluation protocol" and "Corrections": SGD lr 0.01, momentum 0.9, weight decay
5e-4, batch 64, MultiStepLR x0.2 at 2/3 and 5/6 of the epochs, 1000 epochs for the small datasets;
per-sample DSA (color_crop_cutout_flip_scale_rotate, cutout dropped when CutMix is on; one of
crop/scale/rotate per call, as the published DiffAug's single_aug) plus CutMix (beta 1,
probability 0.5); ImageNet: the loader-side augmentation of :mod:`idc_ray.evaluation.loader_aug`
instead of DSA, CutMix probability 1. Normalisation happens here (after the loader-side
augmentation, before DSA, as published); callers pass [0, 1] images, as the store holds them.

Test accuracy is measured where the published train.py measures it, every ``epochs // 4`` epochs
(test.py ``num_val=4``: at 1/4, 1/2, 3/4 and all of the epochs when 4 divides them): ``last`` is
the last of these, ``best`` the highest, i.e. a checkpoint selected on the test set. Given
held-out validation images, ``best`` is instead the test accuracy at the report epoch with the
highest validation accuracy (``eval.best_on: val``, the corrected variant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from idc_ray.engine import rng
from idc_ray.engine.training import Normalize, SGDTrainer, cutmix
from idc_ray.engine.training import accuracy as evaluate  # top-1 on the test (or validation) images
from idc_ray.evaluation.loader_aug import build_loader_aug


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: str = "color_crop_flip_scale_rotate"  # per-sample DSA strategy ('' for none)
    aug_single: bool = True  # DSA: one of crop/scale/rotate per call (published); False: all of them
    loader_aug: str = "none"  # before normalisation: none | imagenet (RRC, flip, jitter, lighting)
    cutmix_prob: float = 0.5  # 0 disables CutMix
    cutmix_beta: float = 1.0
    eval_every: int = 0  # test also every eval_every epochs (curves); 0: only at the report epochs


class SoftLabelTrainer(SGDTrainer):
    """:class:`SGDTrainer` whose targets are a teacher's soft labels, as SRe2L and RDED evaluate:
    each augmented (DSA, then CutMix) batch goes through the teacher, and the loss is the KL
    divergence between the teacher's and the student's softmax at ``temperature``, times
    temperature^2 (Hinton et al. 2015), instead of the cross-entropy with the class labels."""

    def __init__(self, model: nn.Module, *, teacher: nn.Module, temperature: float, **kwargs):
        super().__init__(model, **kwargs)
        self.teacher, self.temperature = teacher.eval(), temperature

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        xb = self.augment(x, generator)
        xb, _, _, _ = cutmix(xb, y, generator, beta=self.cutmix_beta, prob=self.cutmix_prob)
        t = self.temperature
        with torch.no_grad():
            target = F.log_softmax(self.teacher(xb) / t, dim=1)
        student = F.log_softmax(self.model(xb) / t, dim=1)
        loss = F.kl_div(student, target, reduction="batchmean", log_target=True) * t * t
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def make_trainer(model: nn.Module, recipe: "TrainRecipe", teacher: nn.Module | None, temperature: float) -> SGDTrainer:
    """The trainer of ``recipe``: with class labels, or a teacher's soft labels."""
    kwargs = dict(lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, augment=recipe.augment,
                  aug_single=recipe.aug_single, cutmix_prob=recipe.cutmix_prob, cutmix_beta=recipe.cutmix_beta,
                  milestones=lr_milestones(recipe.epochs))
    if teacher is None:
        return SGDTrainer(model, **kwargs)
    return SoftLabelTrainer(model, teacher=teacher, temperature=temperature, **kwargs)


@dataclass
class TrainResult:
    best_acc: float  # highest test accuracy at the report epochs (or at the best validation accuracy)
    last_acc: float  # test accuracy at the last report epoch (the final epoch when 4 divides epochs)
    history: list[tuple[int, float]] = field(default_factory=list)  # (epochs done, test accuracy)


def lr_milestones(epochs: int) -> list[int]:
    """The published schedule's decay epochs: 2/3 and 5/6 of training (666 and 833 of 1000)."""
    return [2 * epochs // 3, 5 * epochs // 6]


def report_epochs(epochs: int) -> list[int]:
    """Where the published train.py tests: every ``epochs // 4`` epochs (test.py ``num_val=4``),
    i.e. 250, 500, 750, 1000 of 1000; 62, 124, 186, 248 of 250 (the last epochs untested)."""
    every = max(1, epochs // 4)  # the published code divides by zero below 4 epochs
    return list(range(every, epochs + 1, every))


def select_best(history: Sequence[tuple[int, float]], reported: Sequence[int],
                val_acc: dict[int, float] | None = None) -> tuple[float, float]:
    """(best, last) test accuracy over the report epochs of ``history``. ``best`` is the highest
    test accuracy (the published choice, made on the test set) or, given ``val_acc``, the test
    accuracy where the validation accuracy is highest (the earliest such epoch)."""
    at_report = {epoch: acc for epoch, acc in history if epoch in reported}
    if not at_report:
        return 0.0, 0.0
    last = at_report[max(at_report)]
    if val_acc:
        return at_report[max(at_report, key=lambda e: (val_acc[e], -e))], last
    return max(at_report.values()), last


def train_and_evaluate(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    recipe: TrainRecipe,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
) -> TrainResult:
    """Train ``model`` (in place, moved to ``device``) on (train_x, train_y) and test it.

    Images are un-normalised floats in [0, 1], shape (N, C, H, W). The batch order and the
    augmentation draw from two CPU generators derived from ``seed``, so on the CPU the same
    inputs, seed and initial weights give identical results. ``progress(epoch, acc)`` is called
    after every evaluation (at :func:`report_epochs`, every ``eval_every`` epochs and after the
    last one); ``best_acc``/``last_acc`` come from the report epochs only (see :func:`select_best`;
    ``val``: validation images and labels tested at the report epochs to select ``best``;
    ``teacher``: train on its soft labels at ``temperature``, see :class:`SoftLabelTrainer`).
    """
    device = torch.device(device)
    model.to(device)
    normalize = Normalize(mean, std, device)
    loader_aug = build_loader_aug(recipe.loader_aug)
    x_train = normalize(train_x) if loader_aug is None else train_x.to(device, torch.float32)
    prepare = None if loader_aug is None else (lambda xb, g: normalize(loader_aug(xb, g)))
    y_train = train_y.to(device, torch.long)
    trainer = make_trainer(model, recipe, None if teacher is None else teacher.to(device), temperature)
    shuffle_gen = rng.generator(seed, "eval-shuffle")
    aug_gen = rng.generator(seed, "eval-augment")

    history: list[tuple[int, float]] = []
    val_acc: dict[int, float] = {}
    reported = report_epochs(recipe.epochs)
    for epoch in range(1, recipe.epochs + 1):
        trainer.epoch(x_train, y_train, recipe.batch_size, shuffle_gen, aug_gen, prepare)
        if epoch == recipe.epochs or epoch in reported or (recipe.eval_every > 0 and epoch % recipe.eval_every == 0):
            acc = evaluate(model, test_x, test_y, normalize)
            history.append((epoch, acc))
            if val is not None and epoch in reported:
                val_acc[epoch] = evaluate(model, val[0], val[1], normalize)
            if progress is not None:
                progress(epoch, acc)
    best, last = select_best(history, reported, val_acc if val is not None else None)
    return TrainResult(best_acc=best, last_acc=last, history=history)
