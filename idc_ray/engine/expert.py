"""The expert network theta^T of Algorithm 1: (re-)initialised every ``fix_iter`` outer
iterations, then trained on real data only, with per-sample augmentation and CutMix, after each
inner iteration (paper Section 4.3, settings sheet). Its trajectory depends on the seed and the
real data, never on the synthetic set, which is what lets it run ahead of the matchers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from idc_ray import storage
from idc_ray.engine import rng
from idc_ray.engine.spec import SharedSpec
from idc_ray.engine.streams import ExpertStream
from idc_ray.engine.training import Normalize, SGDTrainer
from idc_ray.models import build_model


@dataclass(frozen=True)
class ExpertSpec(SharedSpec):
    """Everything the expert's trajectory depends on besides the real data."""

    model: str
    channels: int
    size: int
    width: int | None
    norm: str | None
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    n_data: int
    aug: str
    cutmix_prob: float
    cutmix_beta: float
    early: int
    fix_iter: int
    pretrained: str | None = None
    pt_from: int = 0
    pt_num: int = 1
    real_sampling: str = "stream"  # "stream": the published persistent loader; "independent": a fresh draw per update
    dataset: str | None = None  # its name picks the published CIFAR branch of the ResNets (build_model)


def new_model(spec: ExpertSpec, seed: int, *keys: int) -> nn.Module:
    """A freshly initialised network whose weights depend only on (seed, keys), built on the CPU."""
    with rng.seeded_global_rng(seed, "weights", *keys):
        return build_model(spec.model, spec.num_classes, spec.channels, spec.size,
                           width=spec.width, norm=spec.norm, dataset=spec.dataset)


def pool_checkpoint(pool: str | Path, pool_seed: int, epoch: int) -> Path:
    """Where jobs/pretrain.py stores the network of one pool seed after ``epoch`` epochs."""
    return Path(pool) / f"seed{pool_seed}" / f"epoch{epoch}.pt"


def pool_seeds(pool: str | Path) -> list[int]:
    seeds = sorted(int(p.name[4:]) for p in Path(pool).glob("seed*") if p.name[4:].isdigit())
    if not seeds:
        raise FileNotFoundError(f"pretrained pool '{pool}' holds no seed*/ folders; run jobs/pretrain.py first")
    return seeds


def init_expert(spec: ExpertSpec, outer: int) -> nn.Module:
    """The expert at the start of ``outer``: random init, or a pool checkpoint drawn uniformly
    over seeds and epochs pt_from..pt_from+pt_num-1 (keyed by (seed, outer))."""
    model = new_model(spec, spec.seed, outer)
    if spec.pretrained:
        g = rng.generator(spec.seed, "pool", outer)
        seeds = pool_seeds(spec.pretrained)
        pool_seed = seeds[int(torch.randint(len(seeds), (1,), generator=g))]
        epoch = spec.pt_from + int(torch.randint(spec.pt_num, (1,), generator=g))
        path = pool_checkpoint(spec.pretrained, pool_seed, epoch)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained pool is missing {path}; pretrain at least {epoch} epochs")
        if Path(storage.sidecar(path)).is_file():  # pools written before checksums have none
            storage.check_file(path)  # a corrupt network is refused in one line, never trained from
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


class ExpertTrainer:
    """The expert's real-data training: SGD (lr 0.01, momentum 0.9, wd 5e-4 by default), a
    fresh optimiser at every re-initialisation, batches of ``batch_size`` with per-sample DSA
    and CutMix. Normalisation happens here; the store holds [0, 1] images.

    ``stream``: the run's real-data stream (``real_sampling: stream``), shared by the trainers
    of successive re-initialisations as the published loader is; when None, one is made on first
    use that counts each (outer, inner) as if an outer iteration had one inner iteration (enough
    for benchmarks that only time updates)."""

    def __init__(self, spec: ExpertSpec, model: nn.Module, device: torch.device | str = "cpu",
                 stream: ExpertStream | None = None):
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.sgd = SGDTrainer(model, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                              augment=spec.aug, cutmix_prob=spec.cutmix_prob, cutmix_beta=spec.cutmix_beta)
        self.normalize = Normalize(spec.mean, spec.std, self.device)
        self.stream = stream

    def _steps(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], generator: torch.Generator) -> float:
        """One SGD step (DSA, CutMix) per real batch (x, y), normalised here; the mean loss."""
        losses = self.sgd.steps(((self.normalize(x), y.to(self.device)) for x, y in batches), generator)
        return sum(losses) / max(len(losses), 1)

    def train_batches(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> float:
        """One SGD step per ``batch_size`` slice of (x, y); returns the mean loss."""
        size = self.spec.batch_size
        return self._steps(((x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)), generator)

    def _stream_of(self, store) -> ExpertStream:
        if self.stream is None:
            self.stream = expert_stream(self.spec, store, inner_iters=1)
        return self.stream

    def _train_stream(self, store, batches: range, generator: torch.Generator) -> float:
        """One SGD step per global batch index of the stream in ``batches``; the mean loss."""
        stream = self._stream_of(store)
        return self._steps((store.take(stream.batch_indices(t)) for t in batches), generator)

    def train_inner(self, store, outer: int, inner: int) -> float:
        """The update after inner iteration ``inner``: batches of real data until at least
        ``n_data`` samples were seen (train.py ``train_epoch`` stops at the first batch that
        brings the count to ``n_data``). ``stream``: the next batches of the run's stream, an
        epoch's partial batch included; ``independent``: ceil(n_data / batch) full batches of a
        fresh draw keyed by (seed, outer, inner)."""
        if self.spec.n_data == 0:
            return 0.0
        g = rng.generator(self.spec.seed, "expert", outer, inner)
        if self.spec.real_sampling == "independent":
            n = math.ceil(self.spec.n_data / self.spec.batch_size) * self.spec.batch_size
            x, y = store.sample_any(n, g)
            return self.train_batches(x, y, g)
        stream = self._stream_of(store)
        first = stream.start(outer, inner)
        return self._train_stream(store, range(first, first + stream.update_len(first)), g)

    def train_early(self, store, outer: int) -> float:
        """The ``early`` epochs right after the re-initialisation at ``outer`` (ImageNet-10).
        ``stream``: each takes one epoch's count of batches from the run's stream where it
        stands (the published loader is not rewound); ``independent``: full shuffled passes."""
        if self.spec.real_sampling == "independent":
            return self.train_epochs(store, self.spec.early, outer)
        stream = self._stream_of(store)
        first = stream.start(outer, 0) - stream.early_len(outer * stream.inner_iters)
        loss = 0.0
        for epoch in range(self.spec.early):
            g = rng.generator(self.spec.seed, "epoch", outer, epoch)
            begin = first + epoch * stream.per_epoch
            loss = self._train_stream(store, range(begin, begin + stream.per_epoch), g)
        return loss

    def train_epochs(self, store, epochs: int, *keys: int) -> float:
        """Full passes over the real data in shuffled order (pretraining; ``early`` epochs with
        ``real_sampling: independent``)."""
        loss = 0.0
        for epoch in range(epochs):
            g = rng.generator(self.spec.seed, "epoch", *keys, epoch)
            x, y = store.sample_any(sum(store.count(c) for c in store.classes), g)
            loss = self.train_batches(x, y, g)
        return loss


def expert_stream(spec: ExpertSpec, store, inner_iters: int) -> ExpertStream:
    """The run's real-data stream for the expert over ``store`` (engine/streams.py)."""
    return ExpertStream(len(store), spec.batch_size, spec.n_data, inner_iters, spec.fix_iter,
                        spec.early, spec.seed)


def expert_trajectory(spec: ExpertSpec, store, inner_iters: int, start_outer: int, end_outer: int,
                      device: torch.device | str = "cpu") -> Iterator[tuple[int, int, nn.Module]]:
    """Yield (outer, inner, expert) for every inner iteration of outers start..end-1, in order.

    The expert is re-initialised at every outer iteration divisible by ``fix_iter`` (then trained
    for ``early`` epochs) and trained on real data after each inner iteration. Starting in the
    middle of a re-initialisation cycle replays the cycle from its start, so a resumed run sees
    the same states. The update after the last inner iteration of a cycle is skipped: the next
    re-initialisation discards it, so skipping it changes no bytes (the real-data stream still
    counts it: positions come from the step, engine/streams.py). Yields the live module:
    use (or copy) a state before asking for the next.
    """
    trainer = None
    stream = expert_stream(spec, store, inner_iters)  # one for the run, as the published loader
    for outer in range(start_outer - start_outer % spec.fix_iter, end_outer):
        if outer % spec.fix_iter == 0:
            trainer = ExpertTrainer(spec, init_expert(spec, outer), device, stream)
            if spec.early:
                trainer.train_early(store, outer)
        cycle_ends = (outer + 1) % spec.fix_iter == 0 or outer + 1 == end_outer
        for inner in range(inner_iters):
            if outer >= start_outer:
                yield outer, inner, trainer.model
            if not (cycle_ends and inner + 1 == inner_iters):
                trainer.train_inner(store, outer, inner)
