"""The table of bad inputs (issue 28; docs/reliability.md lists it): every job and every file we
read, each case one line ``error: ...`` naming the problem (and, where there is one, the fix),
exit 2, and nothing written. Run in this process (``run_job``), on the local backend: the checks
run before any work."""

import json
from pathlib import Path

import pytest


def write(rel: str, text: str):
    def setup(tmp: Path) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def parquet_dataset(mutate):
    """A real Parquet dataset of the tiny set (as jobs/prepare_data.py writes it), then damaged."""
    def setup(tmp: Path) -> None:
        from idc_ray.data import load_dataset
        from idc_ray.data.parquet import write_dataset
        from idc_ray.data.prepare import dataset_info

        data = load_dataset("tiny")
        write_dataset(str(tmp / "pq"), {"train": (data.train_x, data.train_y), "test": (data.test_x, data.test_y)},
                      dataset_info(data.spec, {}), encoding="raw")
        mutate(tmp / "pq")
    return setup


def bad_json(folder: Path) -> None:
    (folder / "dataset.json").write_text("{not json")


def no_class_names(folder: Path) -> None:
    doc = json.loads((folder / "dataset.json").read_text())
    doc.pop("class_names")
    (folder / "dataset.json").write_text(json.dumps(doc))


def corrupt_shard(folder: Path) -> None:
    sorted(folder.rglob("*.parquet"))[0].write_bytes(b"PAR1" + b"\0" * 40)


def no_label_column(folder: Path) -> None:
    import pyarrow.parquet as pq

    for shard in folder.rglob("*.parquet"):
        pq.write_table(pq.read_table(shard).drop(["label"]), shard)


def existing_dataset(tmp: Path) -> None:
    write("out/dataset.json", "{}")(tmp)


SMOKE = ["--preset", "smoke", "--backend", "local"]
TINY_BASELINE = ["--baseline", "random", "--dataset", "tiny", "--backend", "local"]
CONTINUAL = ["--base", "smoke", "--stages", "2", "--backend", "local"]
CASES = [
    # jobs/condense.py: flags, presets, YAML, --set values, data sources, faults, evaluation, storage
    ("condense", [*SMOKE, "--ipc", "0"], None, "synset.ipc must be at least 1, got 0"),
    ("condense", [*SMOKE, "--factor", "64"], None, "synset.factor 64 is larger than the image side 28"),
    ("condense", [*SMOKE, "--set", "expert.model=lenet"], None, "unknown model in expert.model"),
    ("condense", [*SMOKE, "--set", "match.colour=red"], None, "unknown key 'match.colour'; valid keys:"),
    ("condense", [*SMOKE, "--set", "schedule.outer_iters=abc"], None, "'schedule.outer_iters' must be an integer"),
    ("condense", [*SMOKE, "--set", "schedule.outer_iters"], None, "must look like section.key=value"),
    ("condense", ["--preset", "nope", "--backend", "local"], None, "unknown preset 'nope'; choose one of"),
    ("condense", [*SMOKE, "--config", "{tmp}/missing.yaml"], None, "missing.yaml' not found; pass an existing"),
    ("condense", [*SMOKE, "--config", "{tmp}/bad.yaml"], write("bad.yaml", "a: [1, 2\n"), "is not valid YAML"),
    ("condense", [*SMOKE, "--config", "{tmp}/list.yaml"], write("list.yaml", "- 1\n"), "must hold a mapping of sections"),
    ("condense", [*SMOKE, "--config", "{tmp}/key.yaml"], write("key.yaml", "synset: {colour: 1}\n"),
     "unknown key 'synset.colour'"),
    ("condense", [*SMOKE, "--config", "{tmp}/type.yaml"], write("type.yaml", "synset: {ipc: many}\n"),
     "'synset.ipc' must be an integer, got 'many'"),
    ("condense", [*SMOKE, "--dataset", "cifar11"], None, "unknown dataset 'cifar11'; valid names:"),
    ("condense", [*SMOKE, "--dataset", "cifar10", "--data-uri", "{tmp}/none"], None, "but it does not exist; put the"),
    ("condense", [*SMOKE, "--dataset", "parquet", "--data-uri", "{tmp}/empty"], write("empty/.keep", ""),
     "no dataset.json at"),
    ("condense", [*SMOKE, "--dataset", "parquet", "--data-uri", "{tmp}/pq"], parquet_dataset(bad_json),
     "dataset.json' is not valid JSON"),
    ("condense", [*SMOKE, "--dataset", "parquet", "--data-uri", "{tmp}/pq"], parquet_dataset(no_class_names),
     "dataset.json lacks class_names; regenerate it"),
    ("condense", [*SMOKE, "--dataset", "parquet", "--data-uri", "{tmp}/pq"], parquet_dataset(corrupt_shard),
     "is not a readable Parquet file"),
    ("condense", [*SMOKE, "--dataset", "parquet", "--data-uri", "{tmp}/pq"], parquet_dataset(no_label_column),
     "has columns ['image']; needs 'image' and 'label'"),
    ("condense", [*SMOKE, "--set", "synset.formation=learned", "--factor", "1"], None,
     "synset.formation=learned needs synset.factor >= 2"),
    ("condense", [*SMOKE, "--checkpoint-every", "0"], None, "--checkpoint-every must be >= 1"),
    ("condense", [*SMOKE, "--max-restarts", "-1"], None, "--max-restarts >= 0"),
    ("condense", [*SMOKE, "--expert-actors", "0"], None, "--expert-actors must be >= 1"),
    ("condense", [*SMOKE, "--expert-memory-mb", "0"], None, "--expert-memory-mb > 0"),
    ("condense", [*SMOKE, "--inject-fault", "{actor: 1"], None, "--inject-fault must be JSON like"),
    ("condense", [*SMOKE, "--inject-fault", '{"evaluation": 2}'], None, "is neither"),
    ("condense", [*SMOKE, "--eval-every", "2"], None, "--eval-every needs --eval-models"),
    ("condense", [*SMOKE, "--eval-models", "lenet"], None, "unknown model 'lenet'; available:"),
    ("condense", [*SMOKE, "--eval-models", "convnet3", "--eval-repeat", "0"], None, "--eval-repeat must be at least 1"),
    ("condense", [*SMOKE, "--storage-options", "not json"], None, "--storage-options is not valid JSON"),
    ("condense", [*SMOKE, "--storage-options", "@{tmp}/missing.json"], None,
     "cannot read the file (No such file or directory); pass @ and the path of a JSON file"),
    ("condense", [*SMOKE, "--storage-options", "@{tmp}/opts.json"], write("opts.json", "[1]"),
     "opts.json' must be a JSON object, got list"),
    ("condense", [*SMOKE, "--storage-timeout", "0"], None, "--storage-timeout must be a positive number of seconds"),
    ("condense", [*SMOKE, "--set", "expert.pretrained=auto", "--pool-seeds", "0"], None, "--pool-seeds must be at least 1"),
    # jobs/evaluate.py: artifact manifests, plain files, baselines
    ("evaluate", ["--condensed", "{tmp}/missing", "--backend", "local"], None, "no manifest.json at"),
    ("evaluate", ["--condensed", "{tmp}/art", "--backend", "local"], write("art/manifest.json", "{garbage"),
     "manifest.json' is not valid JSON"),
    ("evaluate", ["--condensed", "{tmp}/art", "--backend", "local"],
     write("art/manifest.json", json.dumps({"format": "other", "version": 1})), "is not an idc-ray condensed-set manifest"),
    ("evaluate", ["--condensed", "{tmp}/x.pt", "--dataset", "tiny", "--backend", "local"],
     write("x.pt", "not a tensor file"), "is not a torch file of tensors"),
    ("evaluate", [*TINY_BASELINE, "--ipc", "0"], None, "--ipc must be at least 1, got 0"),
    ("evaluate", [*TINY_BASELINE, "--ipc", "1", "--models", "lenet"], None, "unknown model 'lenet'"),
    ("evaluate", [*TINY_BASELINE, "--ipc", "1", "--repeat", "0"], None, "--repeat must be at least 1, got 0"),
    ("evaluate", [*TINY_BASELINE, "--ipc", "1", "--epochs", "0"], None, "--epochs must be at least 1, got 0"),
    # jobs/tune.py: search spaces
    ("tune", ["--space", "{tmp}/missing.yaml"], None, "missing.yaml' not found; pass a YAML file"),
    ("tune", ["--space", "{tmp}/space.yaml"], write("space.yaml", "preset: [smoke\n"), "is not valid YAML"),
    ("tune", ["--space", "{tmp}/space.yaml"],
     write("space.yaml", "preset: smoke\nparams: {synset.colour: {choice: [1, 2]}}\n"), "unknown config key 'synset.colour'"),
    ("tune", ["--space", "tune_spaces/lr.yaml"], None, "names no preset; pass --preset"),
    ("tune", ["--space", "tune_spaces/lr.yaml", "--preset", "smoke", "--num-samples", "0"], None,
     "--num-samples and --num-actors must be at least 1"),
    # jobs/pretrain.py, jobs/prepare_data.py, jobs/demo.py
    ("pretrain", ["--seeds", "0"], None, "--seeds must be >= 1"),
    ("prepare_data", ["--dataset", "nope"], None, "unknown source dataset 'nope'"),
    ("prepare_data", ["--dataset", "tiny", "--rows-per-shard", "0"], None, "--rows-per-shard and --row-group-size"),
    ("prepare_data", ["--dataset", "tiny"], existing_dataset, "already holds a dataset (dataset.json); choose an empty"),
    ("demo", ["--ipc10-repeat", "0", "--backend", "local"], None, "--ipc10-repeat must be at least 1, got 0"),
    # jobs/export.py: formats, artifacts, the output folder
    ("export", ["--format", "onnx", "--condensed", "{tmp}/art"], None, "unknown --format 'onnx'; choose one of torch"),
    ("export", ["--format", "torch", "--condensed", "{tmp}/missing"], None, "no manifest.json at"),
    ("export", ["--format", "torch", "--condensed", "{tmp}/art"], write("out/keep.txt", "mine"),
     "exists and is not empty; choose a new or empty folder"),
    # jobs/continual.py: continual presets and flags
    ("continual", ["--preset", "nope", "--backend", "local"], None, "unknown continual preset 'nope'"),
    ("continual", [*CONTINUAL[:2], "--stages", "0", "--backend", "local"], None, "--stages must be at least 1, got 0"),
    ("continual", [*CONTINUAL, "--memory-ipc", "0"], None, "--memory-ipc must be at least 1"),
    ("continual", [*CONTINUAL, "--exemplars", "bogus"], None, "--exemplars entry 'bogus' is unknown"),
    ("continual", [*CONTINUAL, "--stage-cpus", "0"], None, "--stage-cpus must be > 0, got 0"),
]


def test_the_table_is_long_enough_and_covers_every_job():
    assert len(CASES) >= 40
    assert {job for job, *_ in CASES} == {"condense", "evaluate", "tune", "pretrain", "prepare_data", "demo", "continual",
                                      "export"}


@pytest.mark.parametrize("job,args,setup,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_nothing_written(run_job, tmp_path, job, args, setup, message):
    if setup is not None:
        setup(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    output = ["--storage-path", str(tmp_path / "out")] if job == "tune" else ["--output", str(tmp_path / "out")]
    done = run_job(job, *(a.replace("{tmp}", str(tmp_path)) for a in args), *output)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written, nothing touched
