"""Ray Tune sweeps: search spaces, the shared caches, a trial inside its placement group, and a
2-trial sweep on the smoke preset whose best config reruns to the same bytes."""

import importlib.util
import json
from pathlib import Path

import pytest
import ray
import torch
import yaml

from idc_ray.artifacts import load_condensed
from idc_ray.config import ConfigError, apply_overrides, load_preset
from idc_ray.data import get_spec, load_dataset
from idc_ray.backends import condense_job
from idc_ray.run.backend import RunOptions
from idc_ray.distributed.sweep_space import search_space
from idc_ray.engine.expert import init_expert
from idc_ray.engine.plan import build_plan
from idc_ray.storage import ChecksumError
from idc_ray.tune.cache import data_settings, ensure_pool, pool_dir, pool_settings, pool_shared, settings_key
from idc_ray.tune.results import TrialRow, results_markdown
from idc_ray.tune.space import config_keys, load_space, space_from_dict, stage_outers, trial_config

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))


def load_job(name: str):
    """A job script as a module (jobs/ is not a package), to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    """The session's 2-CPU local Ray (tests/conftest.py)."""
    return ray_cluster


def run_tune(args: list[str], capsys) -> tuple[int, str, str]:
    """jobs/tune.py as the command line runs it (one error line and exit 2 for bad input), in
    this process: (exit code, stdout, stderr)."""
    from idc_ray.cli import run_main

    job = load_job("tune")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        run_main(lambda: job.main(args))
    out, err = capsys.readouterr()
    return done.value.code, out, err


def write_space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Spaces
# ---------------------------------------------------------------------------------------------

def test_the_five_spaces_ship():
    assert {p.name for p in SPACES} == {"lr.yaml", "factor.yaml", "eval_models.yaml", "cifar10_ipc10.yaml",
                                         "mnist5k_ipc10.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_space_loads_and_validates(path):
    space = load_space(path)
    presets = [space.preset] if space.preset else ["smoke", "mnist5k-demo", "cifar10"]
    for preset in presets:
        load_space(path, load_preset(preset))  # every swept value fits the preset
    assert all(f in config_keys() for p in space.params for f in p.fields())
    assert set(search_space(space)) == {p.key for p in space.params}
    assert "python jobs/tune.py --space tune_spaces/" in path.read_text()  # its header shows the command


def test_the_cifar10_space_combines_the_others():
    combined = {p.key for p in load_space(ROOT / "tune_spaces/cifar10_ipc10.yaml").params}
    parts = {p.key for name in ("lr", "factor", "eval_models") for p in load_space(ROOT / f"tune_spaces/{name}.yaml").params}
    assert combined == parts == {"match.lr_img", "expert.lr", "synset.factor", "synset.formation", "eval.models"}


def test_ranges_become_tune_samplers():
    space = load_space(ROOT / "tune_spaces/factor.yaml")
    factor = search_space(space)["synset.factor"]
    assert (factor.lower, factor.upper) == (1, 5)  # randint's high is inclusive in the space, exclusive in Tune
    lr = search_space(load_space(ROOT / "tune_spaces/lr.yaml"))["match.lr_img"]
    assert (lr.lower, lr.upper) == (1e-4, 1e-1)


@pytest.mark.parametrize(
    "text,message",
    [
        ("params: {match.colour: {type: choice, values: [red]}}", "unknown config key 'match.colour'"),
        ("params: {match: {type: choice, values: [1]}}", "params.match: choice over a section needs a non-empty list of non-empty mappings"),
        ("params: {schedule: {type: randint, low: 1, high: 4}}", "params.schedule: a section is swept with a choice or grid of mappings"),
        ("params: {schedule: {type: choice, values: [{inner: 5}]}}", "unknown key 'schedule.inner'"),
        ("params: {schedule: {type: grid, values: [{inner_iters: five}]}}", "'schedule.inner_iters' must be an integer, got 'five'"),
        ("params: {schedule: {type: choice, values: [{inner_iters: 5}]}, schedule.inner_iters: {type: choice, values: [5]}}",
         "params.schedule.inner_iters and params.schedule both set 'schedule.inner_iters'"),
        ("fixed: {schedule.outer_iters: 5}\nparams: {schedule: {type: choice, values: [{outer_iters: 5, inner_iters: 2}]}}",
         "'schedule.outer_iters' is both fixed and swept \\(params.schedule\\)"),
        ("params: {match.lr_img: {type: loguniform, low: 0.1, high: 0.01}}", "low 0.1 must be less than high 0.01"),
        ("params: {match.lr_img: {type: uniform, low: 0.1, high: 0.1}}", "low 0.1 must be less than high 0.1"),
        ("params: {match.lr_img: {type: loguniform, low: 0, high: 0.1}}", "loguniform needs positive bounds"),
        ("params: {synset.formation: {type: choice, values: []}}", "choice needs a non-empty list"),
        ("params: {synset.factor: {type: randint, low: 1.5, high: 4}}", "'synset.factor' must be an integer, got 1.5"),
        ("params: {match.lr_img: {type: randint, low: 0.5, high: 4}}", "randint needs integer bounds"),
        ("params: {match.lr_img: {type: normal, low: 0, high: 1}}", "unknown type 'normal'"),
        ("params: {match.lr_img: {type: uniform, low: 0.1}}", "needs 'low' and 'high'"),
        ("params: {match.lr_img: {type: uniform, low: a, high: 1}}", "params.match.lr_img.low: 'match.lr_img' must be a number, got 'a'"),
        ("params: {match.lr_img: {type: choice, values: [1], low: 0}}", "'low' does not apply to type choice"),
        ("params: {match.lr_img: 0.1}", "must be a mapping with a 'type'"),
        ("params: {synset.ipc: {type: uniform, low: 1, high: 4}}", "'synset.ipc' must be an integer, got 0.5 \\(a uniform draw\\); use randint or choice"),
        ("params: {synset.formation: {type: randint, low: 1, high: 4}}", "randint draws integers but synset.formation takes str values; use choice"),
        ("params: {}", "'params' must map at least one config field"),
        ("paramz: {}", "unknown key 'paramz'"),
        ("metric: f1\nparams: {match.lr_img: {type: choice, values: [0.1]}}", "metric 'f1' is not reported"),
        ("mode: up\nparams: {match.lr_img: {type: choice, values: [0.1]}}", "mode 'up' must be max or min"),
        ("stages: 0\nparams: {match.lr_img: {type: choice, values: [0.1]}}", "stages must be at least 1, got 0"),
        ("fixed: {match.lr_img: 0.1}\nparams: {match.lr_img: {type: choice, values: [0.1]}}", "both fixed and swept"),
        ("fixed: {expert.colour: 1}\nparams: {match.lr_img: {type: choice, values: [0.1]}}", "unknown config key 'expert.colour'"),
        ("stages: x\nparams: {match.lr_img: {type: choice, values: [0.1]}}", "'stages' must be an integer, got 'x'"),
        ("asha: {reduction_factor: 1}\nparams: {match.lr_img: {type: choice, values: [0.1]}}", "must be a number > 1"),
        ("params: {match.lr_img: {type: choice, values: [0.1, fast]}}", "'match.lr_img' must be a number, got 'fast'"),
        ("[1, 2]", "must be a mapping"),
    ],
)
def test_bad_spaces_give_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_space(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"synset.formation": {"type": "choice", "values": ["uniform", "zigzag"]}}, "value 'zigzag': .*formation 'zigzag' is unknown"),
        ({"synset.factor": {"type": "randint", "low": 1, "high": 64}}, "value 64: .*larger than the image side"),
        ({"synset.ipc": {"type": "randint", "low": 0, "high": 4}}, "value 0: .*synset.ipc must be at least 1"),
        ({"eval.models": {"type": "choice", "values": [["convnet3"], ["lenet"]]}}, "unknown model"),
    ],
)
def test_values_that_do_not_fit_the_preset_are_refused(params, message):
    space = space_from_dict({"params": params}, source="s.yaml")
    with pytest.raises(ConfigError, match=message) as info:
        cfg = load_preset("smoke")
        space.base_config(cfg, get_spec(cfg.data.dataset, cfg.data.data_uri))
    assert "\n" not in str(info.value)


def test_a_section_choice_moves_its_fields_together():
    """The outer/inner split at a fixed budget (tune_spaces/mnist5k_ipc10.yaml): one draw sets
    both fields, every value is checked against the preset, and the table shows the pair."""
    space = load_space(ROOT / "tune_spaces/mnist5k_ipc10.yaml", load_preset("mnist5k-demo"))
    split = next(p for p in space.params if p.key == "schedule")
    assert split.fields() == ["schedule.inner_iters", "schedule.outer_iters"]
    assert {v["outer_iters"] * v["inner_iters"] for v in split.values} == {200}  # the demo's budget, 20 x 10
    draws = [search_space(space)["schedule"].sample() for _ in range(20)]
    assert {tuple(d.items()) for d in draws} <= {tuple(v.items()) for v in split.values}
    cfg = trial_config(space.base_config(load_preset("mnist5k-demo")), {"schedule": draws[0], "match.lr_img": 0.02})
    assert (cfg.schedule.outer_iters, cfg.schedule.inner_iters) == (draws[0]["outer_iters"], draws[0]["inner_iters"])
    assert cfg.schedule.seed == 0 and cfg.synset.ipc == 10 and cfg.match.lr_img == 0.02
    bad = space_from_dict({"params": {"schedule": {"type": "choice", "values": [{"outer_iters": -1}]}}}, source="s.yaml")
    with pytest.raises(ConfigError, match="params.schedule value \\{'outer_iters': -1\\}"):
        bad.base_config(load_preset("mnist5k-demo"))
    row = TrialRow("t1", {"schedule": draws[0]}, {"accuracy": 0.9, "outer": 40, "final": True})
    table = results_markdown([row], title="t", space=space, preset="mnist5k-demo", scheduler="fifo",
                             storage_uri="x", best_config=None)
    assert f"outer_iters={draws[0]['outer_iters']}, inner_iters={draws[0]['inner_iters']}" in table


def test_stages_are_spread_over_the_outer_iterations():
    assert stage_outers(2000, 4) == [500, 1000, 1500, 2000]
    assert stage_outers(2, 4) == [1, 2]
    assert stage_outers(10, 3) == [4, 7, 10]
    assert stage_outers(0, 4) == [0]


def test_tune_job_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {match.lr_img: {type: loguniform, low: 1, high: 0.5}}\n")
    for args, message in [
        (["--space", str(bad), "--preset", "smoke"], "low 1 must be less than high 0.5"),
        (["--space", str(ROOT / "tune_spaces/lr.yaml")], "names no preset; pass --preset"),
    ]:
        code, _, err = run_tune(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


# ---------------------------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------------------------

def test_cache_keys_follow_only_the_settings_they_depend_on():
    base = load_preset("smoke")
    pool = settings_key(pool_settings(base, 2))
    assert settings_key(pool_settings(apply_overrides(base, {"match.lr_img": 0.5, "synset.factor": 3}), 2)) == pool
    assert settings_key(pool_settings(apply_overrides(base, {"expert.lr": 0.5}), 2)) != pool
    assert settings_key(pool_settings(base, 3)) != pool
    assert settings_key(data_settings(apply_overrides(base, {"expert.lr": 0.5}))) == settings_key(data_settings(base))

    auto = apply_overrides(base, {"expert.pretrained": "auto"})
    assert pool_shared(load_space(ROOT / "tune_spaces/factor.yaml"), auto)  # computed once by the driver
    assert not pool_shared(load_space(ROOT / "tune_spaces/lr.yaml"), auto)  # expert.lr: one pool per value
    assert not pool_shared(load_space(ROOT / "tune_spaces/factor.yaml"), base)  # no pool requested


def test_the_pool_is_pretrained_once_and_found_again(tmp_path, monkeypatch):
    import idc_ray.tune.cache

    calls = []
    real_pretrain = idc_ray.tune.cache.pretrain_pool
    monkeypatch.setattr(idc_ray.tune.cache, "pretrain_pool", lambda *a, **k: calls.append(1) or real_pretrain(*a, **k))
    cfg = apply_overrides(load_preset("smoke"), {"expert.pretrained": "auto", "expert.pt_num": 2})
    data = load_dataset("tiny", None)
    first = ensure_pool(cfg, lambda: data, tmp_path, 2, log=lambda _: None)
    again = ensure_pool(apply_overrides(cfg, {"match.lr_img": 0.5}), lambda: data, tmp_path, 2, log=lambda _: None)
    assert first == again == str(pool_dir(tmp_path, cfg, 2).absolute()) and len(calls) == 1
    assert sorted(p.name for p in Path(first).iterdir()) == ["seed0", "seed1", "settings.json"]
    assert sorted(p.name for p in (Path(first) / "seed1").iterdir()) == [
        "epoch0.pt", "epoch0.pt.sha256", "epoch1.pt", "epoch1.pt.sha256"]
    assert json.loads((Path(first) / "settings.json").read_text())["expert"]["lr"] == cfg.expert.lr


@pytest.mark.parametrize("how", ["flip"])  # a flipped byte loads silently; a cut-off file would fail to load
def test_a_corrupt_pool_network_is_refused_in_one_line_and_the_pool_built_again(tmp_path, damage, how):
    """Each pool network carries its sha256: damaged networks (a flipped byte, a cut-off file)
    are refused by the engine in one line, and in the cache with one line naming the first,
    after which the pool is pretrained again into the same weights. Without the check the damaged
    pool would be handed out and trained from (no line, no rebuild)."""
    cfg = apply_overrides(load_preset("smoke"), {"expert.pretrained": "auto", "expert.pt_num": 2})
    data = load_dataset("tiny", None)
    lines = []
    pool = Path(ensure_pool(cfg, lambda: data, tmp_path, 2, log=lines.append))
    files = sorted(pool.glob("seed*/epoch*.pt"))
    weights = lambda: {p: torch.load(p, weights_only=True) for p in files}  # torch.save's bytes vary by a file id
    before = weights()
    for path in files:
        damage(path, how)
    expert = build_plan(apply_overrides(cfg, {"expert.pretrained": str(pool)}), data.spec).expert
    with pytest.raises(ChecksumError, match="does not match its sha256"):
        init_expert(expert, 0)
    lines.clear()
    assert ensure_pool(cfg, lambda: data, tmp_path, 2, log=lines.append) == str(pool)
    refusals = [line for line in lines if "sha256" in line]
    assert len(refusals) == 1 and str(files[0]) in refusals[0] and "again" in refusals[0], lines
    after = weights()
    assert all(torch.equal(after[p][k], before[p][k]) for p in files for k in before[p])
    lines.clear()
    assert ensure_pool(cfg, lambda: data, tmp_path, 2, log=lines.append) == str(pool) and not lines  # intact now


# ---------------------------------------------------------------------------------------------
# Ray: a job inside a placement group, and a whole sweep
# ---------------------------------------------------------------------------------------------

def test_a_job_inside_a_placement_group_uses_its_bundles(ray_local, one_thread, tmp_path):
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    def _job_in_group(cfg, out, options):  # a local function: Ray ships it by value (tests/ is no package)
        """Run a condensation from a task inside a placement group, as a Tune trial does."""
        from ray.util.placement_group import get_current_placement_group

        from idc_ray.backends import condense_job

        return condense_job(cfg, out, options).stored, get_current_placement_group().id.hex()

    cfg = apply_overrides(load_preset("smoke"), {"schedule.outer_iters": 1})
    options = RunOptions(backend="ray", num_actors=2, cpus_per_actor=0.5, gpus_per_actor=0, expert_gpus=0)
    pg = placement_group([{"CPU": 0.5}] * 3)  # one bundle per matcher, one for the expert
    ray.get(pg.ready())
    in_group = ray.remote(_job_in_group).options(
        num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True))
    try:
        before = set(placement_group_table())
        stored, seen = ray.get(in_group.remote(cfg, str(tmp_path / "in"), options), timeout=300)
        assert seen == pg.id.hex()
        assert set(placement_group_table()) == before  # no second group was asked for
        assert placement_group_table(pg)["state"] == "CREATED"  # and the caller's group is left in place
        reference = condense_job(cfg, str(tmp_path / "local"), RunOptions(backend="local"))  # 1 thread, like the actors
        assert torch.equal(stored, reference.stored)

        wrong = RunOptions(backend="ray", num_actors=3, cpus_per_actor=0.5, gpus_per_actor=0, expert_gpus=0)
        with pytest.raises(ray.exceptions.RayTaskError, match=r"its actors need .*\(one bundle per matcher, then one per expert actor\)"):
            ray.get(in_group.remote(cfg, str(tmp_path / "wrong"), wrong), timeout=120)
    finally:
        remove_placement_group(pg)


def test_a_two_trial_sweep_reports_ranks_and_its_best_config_reruns_to_the_same_bytes(ray_local, one_thread,
                                                                                      tmp_path, capsys):
    storage_path = tmp_path / "tune"
    code = load_job("tune").main([
        "--space", "tune_spaces/lr.yaml", "--preset", "smoke", "--num-samples", "2", "--scheduler", "asha",
        "--storage-path", str(storage_path), "--name", "sweep", "--num-actors", "1", "--cpus-per-actor", "0.5",
        "--set", "expert.pretrained=auto", "--quiet",
    ])
    assert code == 0
    experiment = storage_path / "sweep"
    assert "best config:" in capsys.readouterr().out

    # Every trial reported after each stage it reached (the ASHA rungs: outer 1 of 2, then the end).
    reports = {p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
               for p in experiment.glob("trial_*/result.json")}
    assert len(reports) == 2
    for history in reports.values():
        assert [r["stage"] for r in history] == list(range(1, len(history) + 1))
        assert all(0 <= r["accuracy"] <= 1 and r["stages"] == 2 for r in history)
    assert any(len(h) == 2 and h[-1]["final"] for h in reports.values())

    table = (experiment / "tune_results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 2 and rows[0].startswith("| 1 | ") and "completed" in rows[0]
    assert "`match.lr_img`" in table and "`expert.lr`" in table

    # The shared work: one pool per expert.lr value (the swept value it depends on), in the cache.
    pools = [p for p in (storage_path / "cache" / "pools").iterdir() if p.is_dir()]
    assert len(pools) == 2 and all((p / "settings.json").is_file() for p in pools)

    best = experiment / "best_config.yaml"
    text = best.read_text()
    artifact = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("# artifact: "))
    cfg = yaml.safe_load(text)
    assert cfg["expert"]["pretrained"] in {str(p) for p in pools}
    assert cfg["schedule"]["outer_iters"] == 2
    best_id = rows[0].split(" | ")[1]
    assert artifact == str(experiment / "artifacts" / best_id)

    # The rerun: jobs/condense.py in this process, with the 1 torch thread the trial's actors had
    # (0.5 CPU each); the in-process backend gives the Ray backend's bytes (tests/distributed).
    rerun = tmp_path / "rerun"
    code = load_job("condense").main(["--config", str(best), "--output", str(rerun), "--quiet", "--backend", "local",
                                      "--device", "cpu"])
    assert code == 0
    assert torch.equal(load_condensed(rerun)[0], load_condensed(artifact)[0])
    assert yaml.safe_load((rerun / "config.yaml").read_text()) == yaml.safe_load((Path(artifact) / "config.yaml").read_text())


def test_asha_stops_a_clearly_worse_trial_early(ray_local, tmp_path, capsys):
    """Two trials, lr_img seven decades apart, run one at a time (each takes the whole cluster):
    the first (the preset's lr_img) sets the rung, and the second, whose images blow up, falls
    below it at stage 1 of 2, is stopped there and shows so in the table (with fifo, or without a
    scheduler, both would finish)."""
    space = write_space(tmp_path, "preset: smoke\nstages: 2\ninterim_epochs: 5\n"
                                  "asha: {grace_period: 1, reduction_factor: 2}\n"
                                  "params: {match.lr_img: {type: grid, values: [1.0e-2, 1.0e+5]}}\n")
    storage_path = tmp_path / "tune"
    code, out, err = run_tune(["--space", space, "--num-samples", "1", "--scheduler", "asha", "--address", ray_local,
                               "--storage-path", str(storage_path), "--name", "asha", "--num-actors", "1",
                               "--cpus-per-actor", "1", "--quiet"], capsys)
    assert code == 0, err
    experiment = storage_path / "asha"
    reports = {p.parent.name.removeprefix("trial_"): [json.loads(line) for line in p.read_text().splitlines()]
               for p in experiment.glob("trial_*/result.json")}
    assert len(reports) == 2
    stopped = [t for t, history in reports.items() if len(history) == 1 and not history[-1]["final"]]
    finished = [t for t, history in reports.items() if len(history) == 2 and history[-1]["final"]]
    assert stopped and finished
    assert max(reports[t][0]["accuracy"] for t in stopped) < min(reports[t][0]["accuracy"] for t in finished)
    rows = {line.split(" | ")[1]: line for line in (experiment / "tune_results.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| rank")}
    assert all("stopped at stage 1/2" in rows[t] for t in stopped)
    assert all("completed" in rows[t] for t in finished)


def test_a_trial_larger_than_the_cluster_is_one_line_and_exit_2(ray_local, tmp_path, capsys):
    storage_path = tmp_path / "tune"
    code, _, err = run_tune(["--space", str(ROOT / "tune_spaces/lr.yaml"), "--preset", "smoke", "--address", ray_local,
                             "--storage-path", str(storage_path), "--num-actors", "2", "--cpus-per-actor", "1",
                             "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: one trial needs 3 CPU") and "cluster has 2" in lines[0], err
    assert not storage_path.exists()


def test_an_unreachable_bucket_is_one_line_and_exit_2(ray_local, aws_env, dead_endpoint, monkeypatch, tmp_path,
                                                     capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint)
    monkeypatch.chdir(tmp_path)  # where a remote sweep would keep its local copies (runs/tune/<name>)
    code, _, err = run_tune(["--space", str(ROOT / "tune_spaces/lr.yaml"), "--preset", "smoke",
                             "--address", ray_local, "--storage-path", "s3://sweeps/tune", "--name", "dead",
                             "--num-actors", "1", "--cpus-per-actor", "0.5", "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and dead_endpoint in lines[0] and "s3://sweeps/tune" in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_where_no_trial_completes_exits_1_and_says_so(ray_local, tmp_path, capsys):
    """Every trial fails where it writes its artifact (a file stands where the artifacts folder
    goes), after every check the driver does: exit 1, no best config, each error in the table."""
    space = write_space(tmp_path, "preset: smoke\nstages: 1\n"
                                  "params: {match.lr_img: {type: grid, values: [1.0e-2, 1.0e-1]}}\n")
    experiment = tmp_path / "tune" / "broken"
    experiment.mkdir(parents=True)
    (experiment / "artifacts").write_text("not a folder")
    code, out, err = run_tune(["--space", space, "--num-samples", "1", "--address", ray_local,
                               "--storage-path", str(tmp_path / "tune"), "--name", "broken", "--num-actors", "1",
                               "--cpus-per-actor", "0.5", "--quiet"], capsys)
    assert code == 1
    assert "error: no trial completed every stage" in err
    assert not (experiment / "best_config.yaml").exists()
    table = (experiment / "tune_results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 2 and all(" | error: " in row and "Not a directory" in row for row in rows), table
    assert "No trial completed every stage, so no best config was written." in table
