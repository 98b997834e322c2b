"""The continual learner of appendix C.3: one network trained stage after stage, purely on the
memory so far (every exemplar of every class seen), continuing from the previous stage's weights.

* Head expansion (Rebuffi et al. 2017): the last fully connected layer (``model.classifier``)
  grows by the new classes' rows; the old rows are kept as they are, the new ones drawn like
  ``nn.Linear``'s default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from a generator
  keyed by (seed, "continual-head", stage, repeat).
* Learning without Forgetting (Li & Hoiem 2017): the loss adds ``lwf_weight * T^2 *
  KL(softmax(old/T) || softmax(new/T))`` over the OLD classes' logits, ``old`` being the previous
  stage's network (frozen) on the same augmented batch; T = 2 and weight 1 as in LwF. The T^2
  keeps the gradient scale independent of T (Hinton et al. 2015). In the task-incremental
  setting the soft targets are per old task (one softmax per head), summed over the old tasks.
* Schedule per stage (C.3): SGD lr 0.01, momentum 0.9, weight decay 5e-4, x0.2 at 3/5 and 4/5
  of the epochs (600 and 800 of 1000), batch 64, the evaluation protocol's augmentation (DSA
  strategy and CutMix of the dataset rule, ``recipe_for``); CutMix is off in the task-incremental
  setting, where a pasted box could carry another task's label.

Everything draws from generators keyed by (seed, stage, repeat), so a run is reproducible.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from idc_ray.engine import rng
from idc_ray.engine.training import LogitMask, LossTerm, Normalize, SGDTrainer, accuracy
from idc_ray.evaluation.train import TrainRecipe
from idc_ray.models import build_model


@dataclass(frozen=True)
class StageRecipe(TrainRecipe):
    """One stage's training (appendix C.3: the evaluation recipe's SGD schedule, lr decayed at
    600/800 of 1000 epochs by :func:`stage_milestones`) plus the LwF distillation term."""

    augment: str = ""  # DSA strategy of the evaluation protocol ('' for none)
    cutmix_prob: float = 0.0
    lwf_weight: float = 1.0
    temperature: float = 2.0


def stage_milestones(epochs: int) -> list[int]:
    """lr x0.2 at 3/5 and 4/5 of the epochs: 600 and 800 of 1000 (appendix C.3)."""
    return [3 * epochs // 5, 4 * epochs // 5]


def expand_head(model: nn.Module, num_classes: int, seed: int, *keys: int) -> nn.Module:
    """``model`` with ``model.classifier`` grown to ``num_classes`` outputs (in place; returned).
    Old rows and biases are copied unchanged, so before training the old logits equal the old
    head's up to float32 rounding: a GEMM of another width may add in another order (docs/testing.md)."""
    old = model.classifier
    if num_classes < old.out_features:
        raise ValueError(f"cannot shrink the head from {old.out_features} to {num_classes} classes")
    if num_classes == old.out_features:
        return model
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    g = rng.generator(seed, "continual-head", *keys)
    bound = 1 / math.sqrt(old.in_features)
    added = num_classes - old.out_features
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.weight[old.out_features :] = (torch.rand(added, old.in_features, generator=g) * 2 - 1).mul(bound)
        if old.bias is not None:
            new.bias[: old.out_features] = old.bias
            new.bias[old.out_features :] = (torch.rand(added, generator=g) * 2 - 1).mul(bound)
    model.classifier = new
    return model


def distillation_loss(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0,
                      groups: torch.Tensor | None = None) -> torch.Tensor:
    """LwF's term on the old classes: ``T^2 * KL(softmax(old/T) || softmax(new/T))``, summed over
    classes, mean over the batch; ``new_logits`` are the new network's logits of the OLD classes
    (the first ``old_logits.shape[1]`` columns). ``groups``: the task of each old class, one
    softmax per task (task-incremental), the task terms summed. Zero when the logits are equal."""
    new_logits = new_logits[:, : old_logits.shape[1]]
    if groups is None:
        parts = [slice(None)]
    else:
        parts = [groups == g for g in torch.unique(groups)]
    total = new_logits.new_zeros(())
    for part in parts:
        log_p_new = F.log_softmax(new_logits[:, part] / temperature, dim=1)
        p_old = F.softmax(old_logits[:, part] / temperature, dim=1)
        total = total + F.kl_div(log_p_new, p_old, reduction="batchmean")
    return total * temperature**2


def mask_to_task(logits: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Task-incremental heads: logits of classes outside each sample's task set to -inf (the
    task's own head, as with one head per task); unchanged when ``groups`` is None."""
    if groups is None:
        return logits
    g = groups.to(logits.device)[: logits.shape[1]]
    allowed = g[y].unsqueeze(1) == g.unsqueeze(0)
    return logits.masked_fill(~allowed, float("-inf"))


def task_mask(groups: torch.Tensor | None) -> LogitMask | None:
    """:func:`mask_to_task` for ``groups`` as the training component's logit mask; None when
    there are no tasks (class-incremental)."""
    return None if groups is None else partial(mask_to_task, groups=groups)


def lwf_term(old: nn.Module, weight: float, temperature: float, groups: torch.Tensor | None) -> LossTerm:
    """LwF as a loss term of the training step: ``weight *`` :func:`distillation_loss` of the
    new logits against the frozen ``old`` network's on the same augmented batch."""
    old.eval()
    for p in old.parameters():
        p.requires_grad_(False)

    def term(xb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            old_logits = old(xb)
        return weight * distillation_loss(logits, old_logits, temperature, groups)

    return term


def train_stage(model: nn.Module, old: nn.Module | None, x: torch.Tensor, y: torch.Tensor, recipe: StageRecipe,
                normalize: Normalize, *, seed: int, keys: tuple[int, ...], device: torch.device,
                groups: torch.Tensor | None = None) -> list[float]:
    """Train ``model`` on the memory (x in [0, 1], global labels y) for one stage, with LwF
    against ``old`` (None at the first stage). Returns the mean loss per epoch."""
    model.to(device)
    lwf = None
    if old is not None and recipe.lwf_weight > 0:
        old_groups = None if groups is None else groups[: old.classifier.out_features].to(device)
        lwf = lwf_term(old.to(device), recipe.lwf_weight, recipe.temperature, old_groups)
    trainer = SGDTrainer(model, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                         augment=recipe.augment, aug_single=recipe.aug_single, cutmix_prob=recipe.cutmix_prob,
                         cutmix_beta=recipe.cutmix_beta, milestones=stage_milestones(recipe.epochs),
                         logit_mask=task_mask(groups), loss_term=lwf)
    x_train, y_train = normalize(x), y.to(device, torch.long)
    shuffle_gen = rng.generator(seed, "continual-shuffle", *keys)
    aug_gen = rng.generator(seed, "continual-augment", *keys)
    return [trainer.epoch(x_train, y_train, recipe.batch_size, shuffle_gen, aug_gen) for _ in range(recipe.epochs)]


@dataclass(frozen=True)
class LearnerRun:
    """One (exemplar method, model, repeat): everything a worker needs to train all stages."""

    method: str
    model: str
    repeat: int
    seed: int
    width: int | None
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None
    recipe: StageRecipe
    replay: bool = True  # False: stage s trains on memories[s] alone (exemplars `none`: no memory kept)


@dataclass
class LearnerResult:
    method: str
    model: str
    repeat: int
    accuracy: list[float] = field(default_factory=list)  # per stage, on the test images of all classes seen
    final_loss: list[float] = field(default_factory=list)  # per stage, the last epoch's mean loss
    seconds: float = 0.0


def run_learner(run: LearnerRun, memories: list[tuple[torch.Tensor, torch.Tensor]],
                tests: list[tuple[torch.Tensor, torch.Tensor]], groups: torch.Tensor | None = None,
                device: str | torch.device = "cpu") -> LearnerResult:
    """All stages of one learner. ``memories[s]``: the exemplars (formed, [0, 1]) and global
    labels of stage s's new classes; ``tests[s]``: the real test images of stage s's classes.
    Stage s trains on memories[0..s] (memories[s] alone without ``run.replay``) and is tested on
    tests[0..s]."""
    started = time.perf_counter()
    device = torch.device(device)
    normalize = Normalize(run.mean, run.std, device)
    result = LearnerResult(run.method, run.model, run.repeat)
    model, old, seen = None, None, 0
    for s, _ in enumerate(memories):
        seen += len(torch.unique(memories[s][1]))
        keys = (s, run.repeat)
        if model is None:
            with rng.seeded_global_rng(run.seed, f"continual-weights-{run.model}", run.repeat):
                model = build_model(run.model, seen, run.channels, run.size, width=run.width, dataset=run.dataset)
        else:
            old = copy.deepcopy(model)
            expand_head(model, seen, run.seed, *keys)
        kept = memories[: s + 1] if run.replay else memories[s : s + 1]
        x, y = torch.cat([m[0] for m in kept]), torch.cat([m[1] for m in kept])
        losses = train_stage(model, old, x, y, run.recipe, normalize, seed=run.seed, keys=keys, device=device,
                             groups=groups)
        tx = torch.cat([t[0] for t in tests[: s + 1]])
        ty = torch.cat([t[1] for t in tests[: s + 1]])
        result.accuracy.append(accuracy(model, tx, ty, normalize, task_mask(groups)))
        result.final_loss.append(losses[-1])
    result.seconds = time.perf_counter() - started
    return result
