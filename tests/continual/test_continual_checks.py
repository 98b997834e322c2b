"""What the continual job gives its learners, what the memory is worth, and what its exemplar
cache is keyed by: asserted on the learner's inputs (recorded at the call), never on logs."""

import dataclasses
from pathlib import Path

import pytest
import torch

from idc_ray.continual import learner
from idc_ray.continual.job import base_config, exemplar_key, run_continual
from idc_ray.continual.settings import ContinualConfig, with_values
from idc_ray.data import load_dataset
from idc_ray.local import LocalBackend

# 4 synthetic classes in 3 stages ([0, 1], [2], [3]); Random's picks with and without the memory
SETTING = {"base": "smoke", "stages": 3, "memory_ipc": 2, "exemplars": "random,none", "models": "convnet3",
           "repeat": 2, "epochs": 10, "width": 8, "herding_epochs": 1}


class RecordingBackend(LocalBackend):
    """The in-process backend, keeping every item its ``map`` hands to a function."""

    def __init__(self):
        super().__init__("cpu")
        self.calls: list[tuple[str, tuple]] = []

    def map(self, fn, items, names):
        self.calls += [(fn.__name__, item) for item in items]
        return super().map(fn, items, names)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The job run in this process, every (train_stage, accuracy) call's tensors recorded as the
    learner makes it, per learner in call order."""
    c = with_values(ContinualConfig(), SETTING)
    backend, trained, tested = RecordingBackend(), [], []
    real_train, real_accuracy = learner.train_stage, learner.accuracy

    def train_stage(model, old, x, y, *args, **kwargs):
        trained.append((x.clone(), y.clone()))
        return real_train(model, old, x, y, *args, **kwargs)

    def accuracy(model, x, y, *args):
        tested.append((x.clone(), y.clone()))
        return real_accuracy(model, x, y, *args)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a busy machine, and pinned
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(learner, "train_stage", train_stage)
            mp.setattr(learner, "accuracy", accuracy)
            doc = run_continual(c, base_config(c), tmp_path_factory.mktemp("checks"), backend, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return doc, backend.calls, trained, tested


def test_stage_s_trains_on_the_memories_of_stages_0_to_s_and_is_tested_on_their_classes(recorded):
    doc, calls, trained, tested = recorded
    stages = [[0, 1], [2], [3]]
    assert doc["stages"] == stages
    learners = [item for name, item in calls if name == "run_learner"]
    assert [(run.method, run.repeat, run.replay) for run, *_ in learners] == [
        ("random", 0, True), ("random", 1, True), ("none", 0, False), ("none", 1, False)]
    data = load_dataset("tiny")
    for k, (run, memories, tests, groups) in enumerate(learners):
        assert groups is None  # class-incremental: one head
        for s, (x, y) in enumerate(memories):  # stage s's memory: its own classes, memory_ipc each
            assert sorted(y.tolist()) == sorted(stages[s] * 2)
            blocks = [torch.isin(data.test_y, torch.tensor(block)) for block in stages[: s + 1]]
            tx, ty = tested[3 * k + s]  # tested on every test image of the classes seen, stage by stage
            assert torch.equal(ty, torch.cat([data.test_y[keep] for keep in blocks]))
            assert torch.equal(tx, torch.cat([data.test_x[keep] for keep in blocks]))
            given = memories[: s + 1] if run.replay else memories[s : s + 1]  # none: no memory kept
            x_train, y_train = trained[3 * k + s]
            assert torch.equal(x_train, torch.cat([m[0] for m in given]))
            assert torch.equal(y_train, torch.cat([m[1] for m in given]))
    assert len(trained) == len(tested) == 3 * len(learners)
    for (_, picks, *_), (_, same, *_) in zip(learners[:2], learners[2:]):  # none trains on Random's picks
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(picks, same))


def test_the_memory_beats_fine_tuning_without_it(recorded):
    """Random's exemplars replayed vs the same exemplars with no memory: from stage 2 on every
    repeat with the memory is more accurate on the classes seen, as the class-incremental table
    shows (without it the old classes are forgotten)."""
    doc = recorded[0]
    with_memory, without = doc["results"]["random"]["convnet3"]["runs"], doc["results"]["none"]["convnet3"]["runs"]
    assert doc["memory_per_stage"]["none"] == doc["memory_per_stage"]["random"] == [4, 2, 2]
    for stage in (1, 2):
        assert min(r[stage] for r in with_memory) > max(r[stage] for r in without), (with_memory, without)


def _changed(value):
    """A different value of the same kind (the key only hashes; nothing here is validated)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, tuple):
        return (*value, "x")
    return 1 if value is None else pytest.fail(f"no change for {value!r}")


def _base_leaves(cfg, prefix: str = ""):
    """(dotted name, config with it changed) for every leaf of the base condensation config,
    nested sections (e.g. synset.learned) included."""
    for f in dataclasses.fields(cfg):
        part = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(part):
            yield prefix + f.name, dataclasses.replace(cfg, **{f.name: _changed(part)})
            continue
        for name, changed in _base_leaves(part, f"{prefix}{f.name}."):
            yield name, dataclasses.replace(cfg, **{f.name: changed})


# What makes the exemplars (stage_jobs: the base config, the budget, Herding's epochs; the stream:
# the stages, or the task datasets at their common side) and what only the learner reads.
SHAPING = {"class": {"scenario", "stages", "memory_ipc", "herding_epochs", "base"},
           "task": {"scenario", "tasks", "image_size", "memory_ipc", "herding_epochs", "base"}}
LEARNER_ONLY = {"name", "exemplars", "models", "repeat", "epochs", "lr", "momentum", "weight_decay", "batch_size",
                "lwf_weight", "lwf_temperature", "width"}


@pytest.mark.parametrize("scenario", ["class", "task"])
def test_the_exemplar_cache_key_changes_with_every_setting_that_shapes_exemplars_and_no_other(scenario):
    c = ContinualConfig(base="smoke", scenario=scenario, tasks=("tiny", "usps") if scenario == "task" else ())
    base = base_config(c)
    key = exemplar_key(c, base)
    fields = {f.name for f in dataclasses.fields(c)}
    other_stream = SHAPING["task" if scenario == "class" else "class"] - SHAPING[scenario]
    assert SHAPING[scenario] | other_stream | LEARNER_ONLY == fields  # a new setting must be classified here
    for name in fields - {"base"}:
        changed = exemplar_key(dataclasses.replace(c, **{name: _changed(getattr(c, name))}), base)
        assert (changed != key) == (name in SHAPING[scenario]), name
    leaves = list(_base_leaves(base))
    assert len(leaves) > 50 and {"schedule.seed", "synset.factor", "expert.model", "data.data_uri"} <= dict(leaves).keys()
    for name, changed in leaves:
        assert exemplar_key(c, changed) != key, name


def test_the_exemplars_are_cached_under_the_key(recorded):
    c = with_values(ContinualConfig(), SETTING)
    folders = {Path(item[0].folder).parent for name, item in recorded[1] if name == "make_exemplars"}
    assert [f.name for f in folders] == [exemplar_key(c, base_config(c))]
