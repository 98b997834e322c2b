"""A run's plan: the config checked against its dataset, the dataset rules resolved ONCE, and
the matcher/expert specs built from them; the one factory of matchers for every backend.

The config (idc_ray.config) is a leaf: it knows its own fields only. What depends on the
dataset (its family's rules, its image size), the engine (formation names and formed counts)
or the model registry is checked and derived here, where those are known, from a
:class:`~idc_ray.data.DatasetSpec` the caller already has (no dataset files are read here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from idc_ray.config import ConfigError, IDCConfig, SynsetConfig
from idc_ray.data import ClassStore, DatasetSpec, with_stats
from idc_ray.engine.augment import DiffAugment
from idc_ray.engine.expert import ExpertSpec
from idc_ray.engine.formation import FORMATIONS, formed_per_sample
from idc_ray.engine.matcher import Matcher, MatchSpec
from idc_ray.engine.spec import SharedSpec
from idc_ray.engine.synset import init_synset
from idc_ray.engine.upsampler import FSRCNNUpsampler, UpsamplerSpec, UpsamplerTrainer, build_upsampler
from idc_ray.models import NORMS, UnknownModelError, available_models, check_model_input


@dataclass(frozen=True)
class Resolved:
    """Values derived from a config by the published implementation's rules (settings sheet)."""

    lr_img_scaled: float  # the data learning rate used: match.lr_img scaled (effective_lr_img)
    init: str
    formation: str  # "auto" resolved
    match_aug: str
    expert_aug: str
    expert_cutmix_prob: float
    eval_augment: str
    eval_loader_aug: str
    eval_cutmix_prob: float
    eval_epochs: int  # every test model but DenseNet on CIFAR at ipc >= 50, f > 1 (eval_epochs_for)
    eval_formation: str  # how evaluation forms the stored set
    num_classes: int
    channels: int
    size: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    """What a run executes, resolved once from (config, dataset spec) and handed to every matcher,
    the expert and the artifact's manifest."""

    match: MatchSpec
    expert: ExpertSpec
    resolved: Resolved


def check(cfg: IDCConfig, spec: DatasetSpec) -> None:
    """Reject values that are impossible for this dataset, engine or model registry (one
    :class:`ConfigError` line); the config's own checks ran when it was built."""
    s, x, ev = cfg.synset, cfg.expert, cfg.eval
    if s.factor > spec.size:
        raise ConfigError(f"synset.factor {s.factor} is larger than the image side {spec.size} of {spec.name}; "
                          f"use a factor <= {spec.size}")
    formations = ("auto", *FORMATIONS)
    if s.formation not in formations:
        raise ConfigError(f"synset.formation '{s.formation}' is unknown; choose one of {', '.join(formations)}")
    if s.formation == "learned":
        _check_learned(s, spec)
    if x.norm is not None and x.norm not in NORMS:
        raise ConfigError(f"expert.norm '{x.norm}' is unknown; choose one of {', '.join(NORMS)}")
    for key, strategy in (("match.aug", cfg.match.aug), ("expert.aug", x.aug), ("eval.augment", ev.augment)):
        if strategy is not None:
            try:
                DiffAugment(strategy)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
    names = [x.model, *ev.models]
    try:
        for name in names:
            check_model_input(name, spec.channels, spec.size)
    except UnknownModelError:
        raise ConfigError(f"unknown model in expert.model/eval.models ({', '.join(names)}); "
                          f"choose from {', '.join(available_models())}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_learned(s: SynsetConfig, spec: DatasetSpec) -> None:
    """Learned formation upsamples image crops (paper appendix D); the paper did not study it on
    1-D spectrogram formation, and factor 1 has nothing to upsample."""
    if spec.family == "speech":
        raise ConfigError(f"synset.formation=learned is for images, not the spectrograms of {spec.name} "
                          "(the paper studied it on images only); use synset.formation=1d or uniform")
    if s.factor < 2:
        raise ConfigError("synset.formation=learned needs synset.factor >= 2 (factor 1 forms nothing to upsample)")


def effective_lr_img(lr_img: float, ipc: int, size: int, base_size: int) -> float:
    """The data learning rate the published code actually uses: lr_img * (ipc/10) * (size/base)^2.

    Settings sheet, "Learning-rate scaling". Both values are recorded with every run.
    """
    return lr_img * (ipc / 10) * (size / base_size) ** 2


def resolve(cfg: IDCConfig, spec: DatasetSpec) -> Resolved:
    """Derive the values the published implementation computes from the dataset and factor.

    Explicit user values always win; only fields left as None/'auto' take the dataset rule.
    Rules by ``spec.family`` (settings sheet): init mix when f > 1; MNIST with f > 1 matches with
    color_crop and trains expert and test models without CutMix; ImageNet uses CutMix with
    probability 1; speech uses no augmentation; evaluation DSA drops flip where ``spec.flip`` is
    false and cutout when CutMix is on; SVHN at ipc 1, f 1 evaluates without CutMix. Settings
    sheet "Corrections": MNIST with f > 1 evaluates with color_crop_scale_rotate
    (misc/reproduce.py); ImageNet evaluates without DSA, with the loader-side augmentation of
    data.py (``imagenet``); evaluation forms a bounded set uniformly (test.py) unless
    ``eval.formation: condensed``.
    """
    s, m, x, ev = cfg.synset, cfg.match, cfg.expert, cfg.eval
    family = spec.family
    init = s.init if s.init != "auto" else ("mix" if s.factor > 1 else "random")
    formation = auto_formation(s, family)

    if family == "speech":
        match_aug, expert_aug, cutmix = "none", "none", 0.0
    else:
        match_aug = "color_crop" if family == "mnist" and s.factor > 1 else "color_crop_cutout"
        expert_aug = "color_crop"
        if family == "mnist" and s.factor > 1:
            cutmix = 0.0
        elif family == "imagenet":
            cutmix = 1.0
        else:
            cutmix = 0.5
    eval_cutmix = cutmix
    if family == "svhn" and s.ipc == 1 and s.factor == 1:
        eval_cutmix = 0.0
    eval_cutmix = ev.cutmix_prob if ev.cutmix_prob is not None else eval_cutmix
    if family == "speech":
        eval_aug = "none"
    else:
        tokens = ["color", "crop", "cutout", "flip", "scale", "rotate"]
        if not spec.flip:
            tokens.remove("flip")
        if eval_cutmix > 0 or (family == "mnist" and s.factor > 1):
            tokens.remove("cutout")
        eval_aug = "none" if family == "imagenet" else "_".join(tokens)
    loader_aug = "imagenet" if family == "imagenet" else "none"
    return Resolved(
        lr_img_scaled=effective_lr_img(m.lr_img, s.ipc, spec.size, spec.lr_base_size),
        init=init,
        formation=formation,
        match_aug=m.aug if m.aug is not None else match_aug,
        expert_aug=x.aug if x.aug is not None else expert_aug,
        expert_cutmix_prob=x.cutmix_prob if x.cutmix_prob is not None else cutmix,
        eval_augment=ev.augment if ev.augment is not None else eval_aug,
        eval_loader_aug=ev.loader_aug if ev.loader_aug is not None else loader_aug,
        eval_cutmix_prob=eval_cutmix,
        eval_epochs=ev.epochs if ev.epochs is not None else default_eval_epochs(family, _formed_per_class(s, formation), spec.num_classes),
        eval_formation=eval_formation(formation, ev.formation),
        num_classes=spec.num_classes,
        channels=spec.channels,
        size=spec.size,
    )


def default_eval_epochs(family: str, formed_per_class: int, num_classes: int) -> int:
    """1000 epochs for the small datasets; ImageNet by formed samples per class (3000 at 1,
    2000 up to 10, 1500 up to 50, 1000 up to 200, 500 up to 500, 300 beyond; for 100 classes
    2/3 of that rounded down to a multiple of 100: 2000, 1300, 1000, 600, 300, 200), as
    argument.py's ``ipc_epoch`` (settings sheet, "Corrections")."""
    if family != "imagenet":
        return 1000
    for limit, epochs in ((1, 3000), (10, 2000), (50, 1500), (200, 1000), (500, 500)):
        if formed_per_class <= limit:
            break
    else:
        epochs = 300
    if num_classes == 100:  # the published test is `nclass == 100`
        epochs = int(2 / 3 * epochs)
        epochs -= epochs % 100
    return epochs


DENSENET_CIFAR_EPOCHS = 400


def eval_epochs_for(cfg: IDCConfig, spec: DatasetSpec, model: str, resolved: Resolved | None = None) -> int:
    """Training epochs of test model ``model``: ``resolve(cfg, spec).eval_epochs``, except that
    DenseNet on CIFAR at ipc >= 50 with factor > 1 trains 400 epochs when ``eval.epochs`` is left
    to the dataset rule (test.py; settings sheet, "Corrections"). ``--fixed-compute`` skips this
    rule, as the published ``same_compute`` does (idc_ray.evaluation.run)."""
    r = resolved or resolve(cfg, spec)
    s = cfg.synset
    densenet_rule = (cfg.eval.epochs is None and spec.family == "cifar" and model.startswith("densenet")
                     and s.ipc >= 50 and s.factor > 1)
    return DENSENET_CIFAR_EPOCHS if densenet_rule else r.eval_epochs


def eval_formation(formation: str, mode: str) -> str:
    """The formation evaluation applies to a set condensed with ``formation``. ``published``:
    bounded sets are formed uniformly, as the published test.py decodes them (its comment: a
    bound only prevents OOM during condensation and uniform evaluates better); ``condensed``:
    exactly the formation the set was condensed with, the consistent variant."""
    if mode == "published" and formation.startswith("bounded"):
        return "uniform"
    return formation


def auto_formation(s: SynsetConfig, family: str) -> str:
    """``synset.formation: auto`` as the published code decides it (misc/reproduce.py): bounded
    for ImageNet with factor >= 3 and ipc >= 20 (to keep the formed set within memory), else
    uniform. Only the ImageNet branch of reproduce.py switches; other datasets stay uniform."""
    if s.formation != "auto":
        return s.formation
    return "bounded" if family == "imagenet" and s.factor >= 3 and s.ipc >= 20 else "uniform"


def _formed_per_class(s: SynsetConfig, formation: str) -> int:
    """Formed samples per class as the epoch rule counts them. Bounded formation: ipc * f^2
    capped at ``bound``, as the published ``ipc_epoch(..., bound=batch_syn_max)`` counts them
    (argument.py), not the exact bounded count."""
    if formation.startswith("bounded"):
        return min(s.ipc * s.factor**2, s.bound)
    return s.ipc * formed_per_sample(s.factor, formation)


def build_plan(cfg: IDCConfig, spec: DatasetSpec) -> Plan:
    """Check ``cfg`` against ``spec``, resolve the dataset rules once and build the specs."""
    check(cfg, spec)
    r = resolve(cfg, spec)
    spec = with_stats(spec, cfg.data.stats)  # the normalisation data.stats selects
    s, m, x = cfg.synset, cfg.match, cfg.expert
    shared = SharedSpec(num_classes=spec.num_classes, mean=tuple(spec.mean), std=tuple(spec.std),
                        seed=cfg.schedule.seed).shared()
    match = MatchSpec(
        **shared, objective=m.objective, metric=m.metric, bias=m.bias, fc=m.fc, aug=r.match_aug,
        batch_real=m.batch_real, batch_syn_max=s.batch_syn_max, formation=r.formation,
        factor=s.factor, formation_axis=s.formation_axis, bound=s.bound, lr_img=r.lr_img_scaled,
        mom_img=m.mom_img, momentum_mode=m.momentum_mode, ipc=s.ipc, init=r.init, path=m.path,
        init_select=s.init_select, real_sampling=m.real_sampling, inner_iters=cfg.schedule.inner_iters,
        sampling=m.sampling, sampling_refresh=m.sampling_refresh,
        upsampler=_upsampler_spec(s, r.formation, spec.channels),
    )
    expert = ExpertSpec(
        **shared, model=x.model, channels=spec.channels, size=spec.size,
        width=x.width, norm=x.norm, lr=x.lr, momentum=x.momentum, weight_decay=x.weight_decay,
        batch_size=x.batch_size, n_data=x.n_data, aug=r.expert_aug,
        cutmix_prob=r.expert_cutmix_prob, cutmix_beta=x.cutmix_beta, early=x.early,
        fix_iter=x.fix_iter, pretrained=x.pretrained, pt_from=x.pt_from, pt_num=x.pt_num, dataset=spec.name,
        real_sampling=x.real_sampling,
    )
    return Plan(match, expert, r)


def _upsampler_spec(s: SynsetConfig, formation: str, channels: int) -> UpsamplerSpec | None:
    """The FSRCNN upsampler of a learned formation (synset.learned), None for the others."""
    if formation != "learned":
        return None
    lu = s.learned
    return UpsamplerSpec(channels=channels, factor=s.factor, d=lu.d, s=lu.s, m=lu.m, lr=lu.lr)


def shared_upsampler(match: MatchSpec, device: torch.device | str = "cpu") -> FSRCNNUpsampler | None:
    """The run's shared upsampler at initialisation (learned formation), else None: the same
    weights in every process (a Ray matcher actor then receives each step's weights)."""
    return None if match.upsampler is None else build_upsampler(match.upsampler, match.seed, device)


def build_trainer(match: MatchSpec, device: torch.device | str = "cpu") -> UpsamplerTrainer | None:
    """The run's shared upsampler with its optimiser (learned formation), else None."""
    net = shared_upsampler(match, device)
    return None if net is None else UpsamplerTrainer(net, match.upsampler.lr)


def initial_synset(match: MatchSpec, store: ClassStore, classes: Sequence[int]) -> dict[int, torch.Tensor]:
    """The initial stored samples of ``classes``, keyed by (seed, class) only (engine/synset.py)."""
    return init_synset(store, classes, match.ipc, match.factor, match.init, match.seed,
                       formation=match.formation, axis=match.formation_axis, select=match.init_select)


def build_matcher(plan: Plan, store: ClassStore, classes: Sequence[int], state: dict | None = None,
                  device: torch.device | str = "cpu", upsampler: torch.nn.Module | None = None) -> Matcher:
    """The matcher of ``classes`` for every backend: initialised from ``store``, then, with
    ``state`` (a checkpoint's classes), continued from there. ``upsampler``: the run's shared
    one (:func:`build_trainer`) for a learned formation."""
    matcher = Matcher(plan.match, store, initial_synset(plan.match, store, classes), device, upsampler)
    if state is not None:
        matcher.load_state_dict(state)
    return matcher
