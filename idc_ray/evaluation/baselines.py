"""Coreset baselines the paper compares against (Table 1): ``random`` and ``herding``.

Both return ``ipc`` REAL training images per class, class-major, as (classes, ipc, C, H, W)
floats in [0, 1] with labels (classes * ipc,), so they go through exactly the same evaluation
(formation = identity, same recipe and augmentation) as a condensed set; the paper (Section 4)
re-evaluates every baseline with IDC's augmentation for a fair comparison.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from idc_ray import storage
from idc_ray.config import IDCConfig
from idc_ray.data import ClassStore, RealData, with_stats
from idc_ray.engine import rng
from idc_ray.errors import first_line
from idc_ray.engine.plan import resolve
from idc_ray.engine.training import EVAL_BATCH, Normalize
from idc_ray.evaluation.protocol import as_float_images, random_real
from idc_ray.evaluation.train import TrainRecipe, train_and_evaluate
from idc_ray.models import build_model

BASELINES = ("random", "herding", "full")  # full: the whole training split (evaluation.full)


@dataclass
class FeatureNet:
    """The network whose embedding space herding selects in, and how it came to be."""

    model: nn.Module
    name: str
    width: int | None
    norm: str | None
    epochs: int  # 0 when loaded
    test_acc: float | None  # on the real test split, when trained here
    source: str  # "trained" or the path it was loaded from

    def to_bytes(self, dataset: str) -> bytes:
        """A torch file that :func:`load_feature_net` reads back (``--herding-net``)."""
        buffer = io.BytesIO()
        torch.save({"state_dict": self.model.state_dict(), "model": self.name, "width": self.width,
                    "norm": self.norm, "dataset": dataset, "epochs": self.epochs, "test_acc": self.test_acc}, buffer)
        return buffer.getvalue()


def _new_feature_model(cfg: IDCConfig, data: RealData) -> nn.Module:
    spec, x = data.spec, cfg.expert
    with rng.seeded_global_rng(cfg.schedule.seed, "herding-net"):
        return build_model(x.model, spec.num_classes, spec.channels, spec.size, width=x.width, norm=x.norm,
                           dataset=spec.name)


def train_feature_net(cfg: IDCConfig, data: RealData, epochs: int, *, device: str | torch.device = "cpu",
                      progress=None) -> FeatureNet:
    """Train ``cfg.expert.model`` on the whole real training split with the expert recipe
    (lr, momentum, weight decay, batch size, augmentation and CutMix of ``cfg.expert`` after the
    dataset rules), as the herding baseline of DC/DSA and the paper does. Seeded: same bytes on CPU."""
    if epochs < 1:
        raise ValueError(f"--herding-epochs must be at least 1, got {epochs}")
    r, x = resolve(cfg, data.spec), cfg.expert
    recipe = TrainRecipe(epochs=epochs, lr=x.lr, momentum=x.momentum, weight_decay=x.weight_decay,
                         batch_size=x.batch_size, augment="" if r.expert_aug == "none" else r.expert_aug,
                         cutmix_prob=r.expert_cutmix_prob, cutmix_beta=x.cutmix_beta)
    model = _new_feature_model(cfg, data)
    stats = with_stats(data.spec, cfg.data.stats)
    result = train_and_evaluate(model, as_float_images(data.train_x), data.train_y, as_float_images(data.test_x),
                                data.test_y, recipe, mean=stats.mean, std=stats.std,
                                seed=rng.derive_seed(cfg.schedule.seed, "herding-net-train"), device=device,
                                progress=progress)
    return FeatureNet(model, x.model, x.width, x.norm, epochs, result.last_acc, "trained")


def load_feature_net(cfg: IDCConfig, data: RealData, path: str | Path) -> FeatureNet:
    """A feature network from a torch file: a bare state dict of ``cfg.expert.model`` or a file
    written by :meth:`FeatureNet.to_bytes` (whose model, width and norm then take precedence).
    A file with a sha256 sidecar (jobs/evaluate.py writes ``herding_net.pt`` so) is checked
    against it: a corrupt or truncated one is refused with one line (ValueError) naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--herding-net '{path}' not found; pass a state dict file or omit it to train one")
    try:
        raw = storage.read_checked(path) if Path(storage.sidecar(path)).is_file() else path.read_bytes()
    except storage.ChecksumError as e:
        raise ValueError(f"--herding-net {e}; pass an intact file, or omit it to train the network again") from None
    payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and "state_dict" in payload:
        x = replace(cfg.expert, model=payload.get("model", cfg.expert.model), width=payload.get("width"),
                    norm=payload.get("norm"))
        cfg, state = replace(cfg, expert=x), payload["state_dict"]
    else:
        state = payload
    model = _new_feature_model(cfg, data)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"--herding-net '{path}' does not fit {cfg.expert.model} (width {cfg.expert.width}) on "
                         f"{data.spec.name}: {first_line(e, 160)}") from None
    return FeatureNet(model, cfg.expert.model, cfg.expert.width, cfg.expert.norm, 0, None, str(path))


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, mean, std, device: str | torch.device = "cpu") -> torch.Tensor:
    """``model.embed`` of [0, 1] images (normalised here), in eval mode, as float64 on the CPU."""
    normalize = Normalize(mean, std, device)
    model.to(normalize.device).eval()
    parts = [model.embed(normalize(x[i : i + EVAL_BATCH])).double().cpu() for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)


def herding_select(features: torch.Tensor, k: int) -> list[int]:
    """Herding (Welling 2009) in the greedy form iCaRL (Rebuffi et al. 2017, Alg. 4) and DC's
    baseline use: pick, without replacement, the sample that brings the mean of the picked
    features closest to the class mean. Returns indices in pick order; ties go to the lowest
    index, so the choice is deterministic."""
    n = len(features)
    if k > n:
        raise ValueError(f"herding needs {k} samples of a class that holds only {n}")
    feats = features.double()
    mu = feats.mean(0)
    total = torch.zeros_like(mu)
    free = torch.ones(n, dtype=torch.bool)
    chosen: list[int] = []
    for step in range(1, k + 1):
        dist = ((mu - (total + feats) / step) ** 2).sum(1)
        dist[~free] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        free[i] = False
        total += feats[i]
    return chosen


def herding(data: RealData, ipc: int, net: FeatureNet, *,
            device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` real images per class chosen by herding in ``net``'s feature space."""
    store = ClassStore(data.train_x, data.train_y)
    xs = []
    for c in store.classes:
        images = store.class_tensor(c)
        picked = herding_select(embed(net.model, images, data.spec.mean, data.spec.std, device), ipc)
        xs.append(images[picked])
    return torch.stack(xs), torch.tensor(store.classes).repeat_interleave(ipc)


def baseline_set(name: str, cfg: IDCConfig, data: RealData, ipc: int, *, net: FeatureNet | None = None,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The stored set (classes, ipc, C, H, W) and labels of baseline ``name`` ("random" or
    "herding"; herding needs ``net``)."""
    smallest = int(torch.bincount(data.train_y, minlength=data.spec.num_classes).min())
    if ipc > smallest:
        raise ValueError(f"--ipc {ipc} is more than the {smallest} training images of the smallest class of {data.spec.name}")
    if name == "random":
        return random_real(data, ipc, cfg.schedule.seed)
    if name == "herding":
        if net is None:
            raise ValueError("the herding baseline needs a feature network (train one or pass --herding-net)")
        return herding(replace(data, spec=with_stats(data.spec, cfg.data.stats)), ipc, net, device=device)
    raise ValueError(f"unknown baseline '{name}'; choose one of {', '.join(BASELINES)}")
