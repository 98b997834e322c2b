"""One inner step of Algorithm 1 over a shard of classes.

``Matcher`` owns a shard of classes (their real images, stored samples and optimiser state)
and updates them against a given expert. Algorithm 1 as a whole (outer and inner loops) is
``idc_ray.run.schedule``, over a group of matchers in this process or as Ray actors;
engine/plan.py builds matchers for both.

Three paths compute the per-class gradients of one step: ``loop`` (one autograd call per class,
as the published code does), ``lean`` (the same loop, its convolutions recorded with a leaner
double backward, see ``engine/leanconv.py``) and ``vmap`` (the classes batched, see
``engine/batched.py``). All draw the same batches from the same generators; ``match.path: auto``
picks vmap on CUDA, lean on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from idc_ray.config import MATCH_PATHS
from idc_ray.data import ClassStore
from idc_ray.engine import rng
from idc_ray.engine.augment import DiffAugment
from idc_ray.engine.batched import Batch, batched_match_losses, has_running_stats, same_shapes
from idc_ray.engine.formation import get_former
from idc_ray.engine.matching import feature_match_loss, gradient_match_loss, matched_parameters
from idc_ray.engine.representative import RepresentativeBatches
from idc_ray.engine.spec import SharedSpec
from idc_ray.engine.streams import class_stream_indices, global_step
from idc_ray.engine.synset import ClassOptimizer, SyntheticClass, sample_formed
from idc_ray.engine.upsampler import UpsamplerSpec
from idc_ray.engine.training import Normalize


@dataclass(frozen=True)
class MatchSpec(SharedSpec):
    """Everything a matcher needs besides its classes' data and the expert."""

    objective: str
    metric: str
    bias: bool
    fc: bool
    aug: str
    batch_real: int
    batch_syn_max: int
    formation: str
    factor: int
    formation_axis: int
    bound: int
    lr_img: float
    mom_img: float
    momentum_mode: str
    ipc: int  # stored samples per class, with init: the matcher's starting point (plan.initial_synset)
    init: str  # "auto" resolved: mix, random or noise
    path: str = "auto"  # "auto" | "loop" | "lean" | "vmap"; auto is resolved per device by the Matcher
    init_select: str = "first"  # real images the init takes: first of each class (published) or random
    real_sampling: str = "stream"  # real batch per class: the published per-class stream, or "independent"
    inner_iters: int = 100  # with outer and inner, gives a class stream's position (engine/streams.py)
    sampling: str = "uniform"  # "representative": DREAM's k-means picks (engine/representative.py)
    sampling_refresh: int = 10  # inner iterations between two k-means refreshes (DREAM's --interval)
    upsampler: UpsamplerSpec | None = None  # formation "learned": the shared FSRCNN upsampler


def resolve_path(path: str, device: torch.device) -> str:
    """The matching path a configured value means on ``device``.

    ``auto``: vmap on CUDA, where batching the classes replaces many small kernel launches by a
    few large ones; on the CPU, where a few cores gain little from larger kernels, ``lean``: the
    per-class loop of the published code with convolutions whose double backward skips an
    unused weight term (engine/leanconv.py; about 5% faster, same bytes in tests/engine).
    """
    if path not in MATCH_PATHS:
        raise ValueError(f"unknown matching path '{path}'; choose one of {', '.join(MATCH_PATHS)}")
    if path == "auto":
        return "vmap" if device.type == "cuda" else "lean"
    return path


class Matcher:
    """Updates a shard of classes of the stored set (Algorithm 1, the inner ``for c`` loop).

    Lifecycle: construct with the shard's real data and initial stored samples, call
    ``begin_outer()`` at each outer iteration, ``step(expert, outer, inner)`` per inner iteration;
    ``state_dict``/``load_state_dict`` for checkpoints. Every draw is keyed by
    (seed, class, outer, inner), so the shard a class lands in never changes its bytes.

    With a learned formation, ``upsampler`` is the run's shared FSRCNN (engine/upsampler.py),
    held fixed during a step: each class's loss also gives it a gradient, kept per class for
    :meth:`take_upsampler_grads`, whose caller sums them in class order and steps it.
    """

    def __init__(self, spec: MatchSpec, store: ClassStore, init: dict[int, torch.Tensor],
                 device: torch.device | str = "cpu", upsampler: nn.Module | None = None):
        self.spec = spec
        self.store = store
        self.device = torch.device(device)
        self.path = resolve_path(spec.path, self.device)
        self.upsampler = upsampler
        self.upsampler_grads: dict[int, list[torch.Tensor]] = {}
        self.former = get_former(spec.formation, spec.factor, axis=spec.formation_axis, bound=spec.bound,
                                 upsampler=upsampler)
        self.augment = DiffAugment(spec.aug, mode="batch")
        self.normalize = Normalize(spec.mean, spec.std, self.device)
        self.classes: dict[int, SyntheticClass] = {}
        for c in sorted(init):
            data = init[c].to(self.device, dtype=torch.float32).clone().requires_grad_(True)
            opt = ClassOptimizer(spec.lr_img, spec.mom_img, position=c, num_classes=spec.num_classes,
                                 mode=spec.momentum_mode)
            self.classes[c] = SyntheticClass(c, data, opt)
        self.representatives = RepresentativeBatches(spec.seed, spec.batch_real, spec.sampling_refresh,
                                                     self.normalize)

    def begin_outer(self) -> None:
        for cls in self.classes.values():
            cls.clamp_()

    def class_batch(self, cls: SyntheticClass, outer: int, inner: int, model: nn.Module | None = None) -> Batch:
        """One class's augmented (x_real, y_real, x_syn, y_syn), differentiable in the stored data.

        The real batch is the class's at this step (:meth:`real_batch`); the batch_syn_max
        subsampling of the formed set, then ONE siamese augmentation of [real; synthetic] come
        from the generator keyed by (seed, "match", class, outer, inner) (IDC Algorithm 1;
        settings sheet, "Algorithm 1 as the published code runs it"). Every path calls this, so
        they all see the same batches.
        """
        g = rng.generator(self.spec.seed, "match", cls.label, outer, inner)
        real = self.real_batch(cls.label, outer, inner, g, model).to(self.device)
        formed, y_syn = sample_formed(cls.data, cls.label, self.former, self.spec.batch_syn_max, g)
        batch = self.augment(torch.cat([self.normalize(real), self.normalize(formed)]), g)
        y_real = torch.full((len(real),), cls.label, dtype=torch.long, device=self.device)
        return batch[: len(real)], y_real, batch[len(real):], y_syn

    def real_batch(self, label: int, outer: int, inner: int, g: torch.Generator,
                   model: nn.Module | None = None) -> torch.Tensor:
        """Class ``label``'s real images at (outer, inner). ``match.sampling: representative``:
        the images nearest the k-means centres of the class in ``model``'s embedding, refreshed
        every sampling_refresh inner iterations (engine/representative.py). Otherwise (uniform)
        ``stream`` (published): the slice of the class's current pass that the step's position
        selects, without replacement across steps (engine/streams.py); ``independent``: a fresh
        draw of batch_real from ``g``."""
        if self.spec.sampling == "representative":
            if model is None:
                raise ValueError("representative sampling embeds the class with the expert; pass model")
            images = self.store.class_tensor(label)
            return images[self.representatives.indices(label, images, model, outer, inner)]
        if self.spec.real_sampling == "independent":
            return self.store.sample(label, self.spec.batch_real, g)
        step = global_step(outer, inner, self.spec.inner_iters)
        idx = class_stream_indices(self.spec.seed, label, self.store.count(label), self.spec.batch_real, step)
        return self.store.class_tensor(label)[idx]

    def class_loss(self, cls: SyntheticClass, model: nn.Module, params: list, outer: int, inner: int) -> torch.Tensor:
        """The matching loss of one class against the expert, differentiable in the stored data."""
        x_real, y_real, x_syn, y_syn = self.class_batch(cls, outer, inner, model)
        if self.spec.objective == "feat":
            return feature_match_loss(model, x_real, x_syn)
        return gradient_match_loss(model, params, x_real, y_real, x_syn, y_syn, self.spec.metric,
                                   lean=self.path == "lean")

    def uses_vmap(self, model: nn.Module) -> bool:
        """Whether this step can batch the classes: the vmap path was chosen, the objective is
        gradient matching (feature matching has no per-class gradients to batch) and the expert
        keeps no BatchNorm running statistics (vmap cannot replay the loop's in-place updates).
        A learned formation takes the loop too: it needs each class's own upsampler gradient."""
        return (self.path == "vmap" and self.spec.objective == "grad" and not has_running_stats(model)
                and self.upsampler is None)

    def step(self, model: nn.Module, outer: int, inner: int) -> dict[int, float]:
        """Update every class of the shard once against ``model``; returns the losses."""
        model.train()
        params = matched_parameters(model, bias=self.spec.bias, fc=self.spec.fc)
        if self.uses_vmap(model):
            return self._step_vmap(model, params, outer, inner)
        return self._step_loop(model, params, outer, inner)

    def _step_loop(self, model: nn.Module, params: list, outer: int, inner: int) -> dict[int, float]:
        """The published order: each class's momentum catch-up, loss, gradient and step in turn."""
        losses = {}
        for c, cls in self.classes.items():
            cls.optimizer.before_update(cls.data)
            losses[c] = self._descend(cls, self.class_loss(cls, model, params, outer, inner))
        return losses

    def _descend(self, cls: SyntheticClass, loss: torch.Tensor) -> float:
        """One optimiser step of a class's stored data down its loss (keeping the class's
        upsampler gradient with a learned formation); returns the loss value."""
        shared = [] if self.upsampler is None else list(self.upsampler.parameters())
        grad, *up = torch.autograd.grad(loss, [cls.data, *shared])
        if shared:
            self.upsampler_grads[cls.label] = [g.detach() for g in up]
        cls.optimizer.step(cls.data, grad)
        return float(loss.detach())

    def take_upsampler_grads(self) -> dict[int, list[torch.Tensor]]:
        """The per-class upsampler gradients of the last step (class -> one per parameter)."""
        grads, self.upsampler_grads = self.upsampler_grads, {}
        return grads

    def _step_vmap(self, model: nn.Module, params: list, outer: int, inner: int) -> dict[int, float]:
        """All classes' gradients from one batched call, then the per-class optimiser steps.

        A class's momentum catch-up, batch and step touch only its own data, so doing every
        catch-up first and every step last gives the loop's values. Classes whose batches differ
        in shape (e.g. a class with fewer real images than batch_real) cannot be stacked; their
        already drawn batches then go through the loop's per-class loss instead.
        """
        classes = list(self.classes.values())
        if not classes:
            return {}
        for cls in classes:
            cls.optimizer.before_update(cls.data)
        batches = [self.class_batch(cls, outer, inner, model) for cls in classes]
        if not same_shapes(batches):
            return self._finish_per_class(model, params, classes, batches)
        losses = batched_match_losses(model, params, batches, self.spec.metric)
        grads = torch.autograd.grad(losses.sum(), [cls.data for cls in classes])
        for cls, grad in zip(classes, grads):
            cls.optimizer.step(cls.data, grad)
        return dict(zip((cls.label for cls in classes), losses.detach().cpu().tolist()))  # one device sync

    def _finish_per_class(self, model: nn.Module, params: list, classes: list[SyntheticClass],
                          batches: list[Batch]) -> dict[int, float]:
        """The loop's loss, gradient and step for batches drawn already (their catch-up is done)."""
        return {cls.label: self._descend(cls, gradient_match_loss(model, params, *batch, self.spec.metric))
                for cls, batch in zip(classes, batches)}

    def stored(self) -> dict[int, torch.Tensor]:
        return {c: cls.data.detach().cpu().clone() for c, cls in self.classes.items()}

    def state_dict(self) -> dict:
        return {c: {"data": cls.data.detach().cpu().clone(), "optimizer": cls.optimizer.state_dict()}
                for c, cls in self.classes.items()}

    def load_state_dict(self, state: dict) -> None:
        for c, cls in self.classes.items():
            with torch.no_grad():
                cls.data.copy_(state[c]["data"].to(self.device))
            cls.optimizer.load_state_dict(state[c]["optimizer"], self.device)


def stack_stored(stored: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    classes = sorted(stored)
    data = torch.stack([stored[c] for c in classes])
    labels = torch.tensor(classes).repeat_interleave(data.shape[1])
    return data, labels
