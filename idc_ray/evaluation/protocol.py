"""The paper's evaluation protocol applied to a stored set: form it, train test models from
scratch with the dataset's recipe (settings sheet, "Evaluation protocol"), report test accuracy.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import torch

from idc_ray.config import IDCConfig
from idc_ray.data import ClassStore, DatasetSpec, RealData, with_stats
from idc_ray.engine import rng
from idc_ray.engine.formation import form_classes, get_former
from idc_ray.engine.plan import eval_epochs_for, resolve
from idc_ray.evaluation.train import TrainRecipe, train_and_evaluate
from idc_ray.models import build_model, check_model_input, uses_net_width


@dataclass
class ModelScore:
    model: str
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.last)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.last) if len(self.last) > 1 else 0.0


def recipe_for(cfg: IDCConfig, spec: DatasetSpec, epochs: int | None = None, model: str | None = None) -> TrainRecipe:
    """The training recipe of test model ``model`` under a config (dataset rules resolved;
    ``epochs`` overrides the epoch rule, which may depend on the model: see ``eval_epochs_for``)."""
    r = resolve(cfg, spec)
    return TrainRecipe(
        epochs=epochs or (eval_epochs_for(cfg, spec, model, r) if model else r.eval_epochs),
        lr=cfg.eval.lr,
        weight_decay=cfg.eval.weight_decay,
        batch_size=cfg.eval.batch_size,
        augment="" if r.eval_augment == "none" else r.eval_augment,
        aug_single=cfg.eval.aug_single,
        loader_aug=r.eval_loader_aug,
        cutmix_prob=r.eval_cutmix_prob,
    )


def form_stored(cfg: IDCConfig, spec: DatasetSpec, stored: torch.Tensor, labels: torch.Tensor,
                upsampler: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Formed training set of a stored set (classes, ipc, C, H, W) for evaluation: the
    condensation's formation (``auto`` resolved for ``spec`` as condensation resolves it), except that a
    bounded set is formed uniformly, as the published test.py does (``eval.formation``). A
    learned formation forms with the set's ``upsampler`` (``artifacts.load_upsampler``)."""
    s = cfg.synset
    formation = resolve(cfg, spec).eval_formation
    return form_classes(stored, labels, get_former(formation, s.factor, axis=s.formation_axis, bound=s.bound,
                                                   upsampler=upsampler))


def random_real(data: RealData, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random baseline: ``ipc`` real training images per class, drawn with (seed, class)."""
    store = ClassStore(data.train_x, data.train_y)
    xs = [store.sample(c, ipc, rng.generator(seed, "random-baseline", c)) for c in store.classes]
    return torch.stack(xs), torch.tensor(store.classes).repeat_interleave(ipc)


def validation_split(data: RealData, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` real training images per class, drawn with (seed, class), on which
    ``eval.best_on: val`` picks the report epoch of ``best`` instead of the test set. The test
    model never trains on them, though condensation saw the whole training split."""
    store = ClassStore(data.train_x, data.train_y)
    xs = [store.sample(c, min(per_class, store.count(c)), rng.generator(seed, "eval-val", c)) for c in store.classes]
    ys = [torch.full((len(x),), c, dtype=torch.long) for c, x in zip(store.classes, xs)]
    return torch.cat(xs), torch.cat(ys)


@dataclass(frozen=True)
class EvalTask:
    """One (model, repeat) of the protocol: everything a worker needs besides the tensors.

    Repetition ``repeat`` of ``model`` starts from weights keyed by (seed, model, repeat) and
    draws its batches and augmentation from ``repeat``, so every set evaluated with the same
    seed sees the same networks (the paper's point about fair comparison).
    """

    set_label: str
    model: str
    repeat: int
    repeats: int  # how many repeats the model gets (for progress lines)
    recipe: TrainRecipe
    seed: int
    width: int | None
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None = None  # its name picks the published CIFAR branch of the ResNets (build_model)
    labels: str = "hard"  # soft: targets from the teacher handed to run_task (KL at ``temperature``)
    temperature: float = 4.0
    keep_model: bool = False  # return the trained weights (the full-data arm: cached, the soft labels' teacher)


@dataclass
class RunRecord:
    """The outcome of one :class:`EvalTask`; accuracies are top-1 in [0, 1]."""

    set_label: str
    model: str
    repeat: int
    best: float
    last: float
    history: list[tuple[int, float]]  # (epochs done, test accuracy)
    wall_s: float
    device: str
    threads: int
    node: str = "local"
    state: bytes | None = None  # the trained weights (torch.save of the state dict) when the task kept them


@dataclass(frozen=True)
class Work:
    """A task and the tensors it trains and tests on: what every backend executes."""

    task: EvalTask
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None  # eval.best_on: val
    val_y: torch.Tensor | None = None
    teacher: bytes | None = None  # soft labels: the weights of the teacher (same model, full data)


def check_models(models: Iterable[str], channels: int, size: int) -> None:
    """Raise ValueError (one line) for an unknown model or one that cannot take C x size x size
    inputs, before anything is trained."""
    for name in models:
        check_model_input(name, channels, size)


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (as datasets hold them) to [0, 1] floats; float images pass through."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def without_augmentation(recipe: TrainRecipe) -> TrainRecipe:
    """``recipe`` with no DSA, no CutMix and no loader-side augmentation (the ARS arms)."""
    return replace(recipe, augment="", cutmix_prob=0.0, loader_aug="none")


def plan_tasks(cfg: IDCConfig, spec: DatasetSpec, set_label: str, *, models: Sequence[str] | None = None,
               repeat: int | None = None, epochs: int | None = None, eval_every: int | None = 0,
               augment: bool = True, labels: str = "hard", temperature: float = 4.0,
               keep_model: bool = False) -> list[EvalTask]:
    """The (model, repeat) tasks of one set under ``cfg``'s evaluation recipe, each model with
    its own epochs (``epochs`` overrides them all). ``eval_every``: extra test evaluations for
    the curves, 0 for none, None for every epochs // 20 of each model. ``augment`` False: the
    recipe :func:`without_augmentation`; ``labels``, ``temperature``, ``keep_model``: see EvalTask."""
    recipes = {name: recipe_for(cfg, spec, epochs, name) for name in (models or cfg.eval.models)}
    recipes = {name: replace(r if augment else without_augmentation(r),
                             eval_every=max(1, r.epochs // 20) if eval_every is None else eval_every)
               for name, r in recipes.items()}
    spec = with_stats(spec, cfg.data.stats)  # the normalisation data.stats selects
    models = tuple(models or cfg.eval.models)
    repeats = repeat or cfg.eval.repeat
    # eval.width reaches only the models the published code applies net_width to (ConvNets)
    return [EvalTask(set_label, name, k, repeats, recipes[name], cfg.schedule.seed,
                     cfg.eval.width if uses_net_width(name) else None, spec.num_classes,
                     spec.channels, spec.size, tuple(spec.mean), tuple(spec.std), spec.name, labels, temperature,
                     keep_model)
            for name in models for k in range(repeats)]


Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    """The default ``log`` of an evaluation: one line on stderr (the job log)."""
    print(message, file=sys.stderr, flush=True)


def progress_line(task: EvalTask, epoch: int, acc: float) -> str:
    """The job-log line for one test evaluation during training."""
    return (f"[eval] {task.set_label} {task.model} repeat {task.repeat + 1}/{task.repeats} "
            f"epoch {epoch}/{task.recipe.epochs} acc {100 * acc:.2f}%")


def done_line(record: RunRecord, repeats: int) -> str:
    """The job-log line when a (model, repeat) finishes."""
    return (f"[eval] done {record.set_label} {record.model} repeat {record.repeat + 1}/{repeats}: "
            f"best {100 * record.best:.2f}% last {100 * record.last:.2f}% ({record.wall_s:.0f}s on {record.device}, "
            f"{record.threads} threads, node {record.node})")


def new_model(task: EvalTask, state: bytes | None = None) -> torch.nn.Module:
    """The task's test model: initial weights keyed by (seed, model, repeat), or ``state``."""
    with rng.seeded_global_rng(task.seed, f"eval-weights-{task.model}", task.repeat):
        model = build_model(task.model, task.num_classes, task.channels, task.size, width=task.width,
                            dataset=task.dataset)
    if state is not None:
        model.load_state_dict(torch.load(io.BytesIO(state), map_location="cpu", weights_only=True))
    return model


def model_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def run_task(task: EvalTask, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
             test_y: torch.Tensor, *, device: str | torch.device = "cpu",
             progress: Callable[[int, float], None] | None = None,
             val: tuple[torch.Tensor, torch.Tensor] | None = None, teacher: bytes | None = None) -> RunRecord:
    """Train one freshly initialised test model on (train_x, train_y) and test it (``val``:
    held-out images on which ``best`` is chosen instead of the test set; ``teacher``: the
    weights whose outputs are the soft labels when ``task.labels`` is soft).

    The single unit of work of every backend: the sequential loop and the Ray tasks both call
    it, which is what makes their numbers identical (given the same torch thread count).
    """
    started = time.perf_counter()
    if task.labels == "soft" and teacher is None:
        raise ValueError(f"{task.set_label}: soft labels need the full-data arm's {task.model} as teacher")
    model = new_model(task)
    result = train_and_evaluate(model, train_x, train_y, as_float_images(test_x), test_y, task.recipe,
                                mean=task.mean, std=task.std, seed=task.repeat, device=device, progress=progress,
                                val=None if val is None else (as_float_images(val[0]), val[1]),
                                teacher=None if task.labels != "soft" else new_model(task, teacher),
                                temperature=task.temperature)
    dev = torch.device(device)
    name = f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "cpu"
    return RunRecord(task.set_label, task.model, task.repeat, result.best_acc, result.last_acc, result.history,
                     time.perf_counter() - started, name, torch.get_num_threads(),
                     state=model_bytes(model) if task.keep_model else None)


def evaluate_set(cfg: IDCConfig, data: RealData, train_x: torch.Tensor, train_y: torch.Tensor, *,
                 models: tuple[str, ...] | None = None, repeat: int | None = None,
                 epochs: int | None = None, device: str | torch.device = "cpu",
                 on_run: Callable[[str, int, float], None] | None = None) -> dict[str, ModelScore]:
    """Train each test model ``repeat`` times on (train_x, train_y) and test on the real test split,
    sequentially in this process (scores only; ``run.evaluate_sets`` adds Ray, curves and reports)."""
    scores: dict[str, ModelScore] = {}
    for task in plan_tasks(cfg, data.spec, "set", models=models, repeat=repeat, epochs=epochs):
        record = run_task(task, train_x, train_y, data.test_x, data.test_y, device=device)
        score = scores.setdefault(task.model, ModelScore(task.model))
        score.best.append(record.best)
        score.last.append(record.last)
        if on_run:
            on_run(task.model, task.repeat, record.last)
    return scores
