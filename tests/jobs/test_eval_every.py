"""``jobs/condense.py --eval-every K``: the stored set evaluated while the job runs (issue 13)."""

import json
import threading
import time
import urllib.request

import pytest
import ray
import torch

from idc_ray.artifacts import load_condensed
from idc_ray.run.hooks import RunHooks, Snapshots
from idc_ray.run.schedule import Progress, algorithm1
from idc_ray.evaluation.curve import CURVE_JSON, CURVE_PNG

SMOKE = ("--preset", "smoke", "--quiet", "--set", "expert.width=4")
EVAL = ("--eval-models", "convnet3", "--eval-repeat", "2", "--eval-epochs", "2", "--set", "eval.width=4")


@pytest.fixture
def condense(run_job):
    return lambda *args: run_job("condense", *SMOKE, *args)


def curve(folder) -> list[dict]:
    return json.loads((folder / CURVE_JSON).read_text())["points"]


class FakeMatchers:
    """Matchers whose state is the number of inner steps they ran (enough to see what is handed over)."""

    steps = 0

    def begin_outer(self, outer):
        pass

    def submit(self, expert, outer, inner):
        self.steps += 1
        return Progress(outer, inner, {0: 0.0}, 1.0)

    def collect(self, handle):
        return handle

    def states(self):
        return {0: {"data": self.steps}}

    def shared(self):
        return {"steps": self.steps}  # as a learned formation's upsampler: the state every class shares


class NoExpert:
    def state(self, outer, inner):
        return None


def test_snapshots_are_taken_at_zero_every_kth_and_the_last(tmp_path):
    from idc_ray.config import apply_overrides, load_preset

    cfg = apply_overrides(load_preset("smoke"), {"schedule.outer_iters": 7, "schedule.inner_iters": 2})
    taken = []
    take = lambda outer, states, shared: taken.append((outer, states[0]["data"], shared["steps"]))
    hooks = RunHooks(cfg, every=3, snapshots=Snapshots(3, take))
    matchers = FakeMatchers()
    hooks.begin(matchers)
    algorithm1(cfg.schedule, matchers, NoExpert(), hooks)
    # the state after exactly `outer` outer iterations, the shared state with it (from the checkpoint at 3, 6, 7)
    assert taken == [(0, 0, 0), (3, 6, 6), (6, 12, 12), (7, 14, 14)]


class CapturingRunner:
    """A curve runner that keeps the formed training set of each snapshot and runs nothing."""

    busy_seconds = 0.0

    def __init__(self, test, options):
        self.formed: list[torch.Tensor] = []

    def submit(self, key, tasks, x, y):
        self.formed.append(x)

    def ready(self):
        return []

    drain = ready

    def export(self, point):
        pass

    def close(self):
        pass


def test_a_learned_formation_snapshot_is_formed_with_the_upsampler_of_its_iteration(tmp_path):
    from idc_ray.config import apply_overrides, load_preset
    from idc_ray.data import get_spec
    from idc_ray.engine.plan import build_plan, build_trainer
    from idc_ray.evaluation.protocol import form_stored
    from idc_ray.run.curve import CurveWatcher, EvalEvery

    cfg = apply_overrides(load_preset("smoke"), {"synset.formation": "learned"})
    spec = get_spec("tiny")
    trainer = build_trainer(build_plan(cfg, spec).match)
    for p in trainer.net.parameters():  # a trained upsampler: its residual is no longer zero
        p.grad = torch.ones_like(p)
    trainer.optimizer.step()
    stored = torch.rand(spec.num_classes, 1, spec.channels, spec.size, spec.size)
    states = {c: {"data": stored[c]} for c in range(spec.num_classes)}
    watcher = CurveWatcher(cfg, spec, str(tmp_path), EvalEvery(1, ("convnet3",)), CapturingRunner, lambda line: None)
    watcher.take(1, states, trainer.state_dict())
    watcher.take(1, states, build_trainer(build_plan(cfg, spec).match).state_dict())  # the initial upsampler
    labels = torch.arange(spec.num_classes)
    assert torch.equal(watcher.runner.formed[0], form_stored(cfg, spec, stored, labels, trainer.net)[0])
    assert not torch.equal(watcher.runner.formed[0], watcher.runner.formed[1])


def test_local_eval_every_with_a_learned_formation_writes_the_curve(condense, tmp_path):
    out = tmp_path / "learned"
    done = condense("--backend", "local", "--outer-iters", "2", "--output", str(out), "--set", "synset.formation=learned",
                    "--eval-every", "2", *EVAL)
    assert done.returncode == 0, done.stderr
    assert [p["iteration"] for p in curve(out)] == [0, 2]
    assert (out / "upsampler.pt").exists()


def test_local_eval_every_keeps_the_bytes_and_writes_the_curve(condense, tmp_path):
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    assert condense("--backend", "local", "--outer-iters", "2", "--output", str(plain)).returncode == 0
    done = condense("--backend", "local", "--outer-iters", "2", "--output", str(watched), "--eval-every", "1", *EVAL)
    assert done.returncode == 0, done.stderr
    assert torch.equal(load_condensed(watched)[0], load_condensed(plain)[0])  # evaluation changes nothing
    points = curve(watched)
    assert [(p["model"], p["iteration"]) for p in points] == [("convnet3", 0), ("convnet3", 1), ("convnet3", 2)]
    assert all(len(p["accs"]) == 2 and 0 <= p["mean"] <= 1 for p in points)
    assert points[0]["seconds"] <= points[1]["seconds"] <= points[2]["seconds"]
    assert (watched / CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_condensed(watched)[2]["metrics"]["eval_curve"] == points
    assert "[curve] outer 2 convnet3:" in done.stderr and "(initialisation" in done.stderr


def test_resume_keeps_the_points_it_had(condense, tmp_path):
    out = tmp_path / "run"
    args = ("--backend", "local", "--output", str(out), "--eval-every", "1", "--checkpoint-every", "1", *EVAL)
    assert condense("--outer-iters", "1", *args).returncode == 0
    first = curve(out)
    assert [p["iteration"] for p in first] == [0, 1]
    done = condense("--outer-iters", "2", "--resume", *args)
    assert done.returncode == 0, done.stderr
    points = curve(out)
    assert [p["iteration"] for p in points] == [0, 1, 2]
    assert points[:2] == first  # the earlier points, untouched (iteration 0 was not evaluated again)


def test_bad_eval_every_is_one_line(condense, tmp_path):
    done = condense("--backend", "local", "--output", str(tmp_path / "x"), "--eval-every", "2")
    assert done.returncode == 2 and "--eval-every needs --eval-models" in done.stderr
    done = condense("--backend", "local", "--output", str(tmp_path / "y"), "--eval-every", "0", *EVAL)
    assert done.returncode == 2 and "--eval-every must be at least 1" in done.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ray_eval_every_runs_beside_the_matchers_and_exports_the_gauge(condense, ray_cluster, tmp_path):
    port = ray.nodes()[0]["MetricsExportPort"]
    seen: list[str] = []
    stop = threading.Event()

    def scrape():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    seen.extend(ln for ln in r.read().decode().splitlines()
                                if ln.startswith("ray_idc_eval_accuracy{") and "iteration=" in ln)
            except OSError:
                pass
            time.sleep(0.25)

    plain, watched = tmp_path / "plain", tmp_path / "watched"
    common = ("--address", ray_cluster, "--num-actors", "2", "--outer-iters", "2")
    assert condense(*common, "--output", str(plain)).returncode == 0
    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        done = condense(*common, "--output", str(watched), "--eval-every", "2", *EVAL)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        stop.set()
        scraper.join()
    assert done.returncode == 0, done.stderr
    assert torch.equal(load_condensed(watched)[0], load_condensed(plain)[0])
    assert [p["iteration"] for p in curve(watched)] == [0, 2]
    assert any('iteration="0"' in ln and 'model="convnet3"' in ln for ln in seen), seen[:5]


def _failed_once(done, out, outer: int) -> list[dict]:
    """One warning line for the failed point, recorded as failed in eval_curve.json and the manifest."""
    warnings = [ln for ln in done.stderr.splitlines() if "[curve] warning:" in ln]
    assert len(warnings) == 1 and f"the evaluation of convnet3 at outer iteration {outer} failed" in warnings[0]
    assert "injected evaluation failure" in warnings[0] and "the condensation goes on" in warnings[0]
    points = curve(out)
    failed = [p for p in points if "failed" in p]
    assert [(p["model"], p["iteration"]) for p in failed] == [("convnet3", outer)] and "mean" not in failed[0]
    manifest = load_condensed(out)[2]["metrics"]
    assert manifest["eval_curve"] == points and manifest["restarts"] == 0  # the matchers were never restarted
    return points


def test_a_failing_evaluation_is_recorded_and_the_condensation_goes_on(condense, tmp_path):
    out = tmp_path / "run"
    done = condense("--backend", "local", "--outer-iters", "2", "--output", str(out), "--eval-every", "1", *EVAL,
                    "--inject-fault", '{"eval": 1}')
    assert done.returncode == 0, done.stderr
    points = _failed_once(done, out, 1)
    assert [(p["iteration"], "mean" in p) for p in points] == [(0, True), (1, False), (2, True)]
    assert (out / CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn from the good points


def test_a_failing_ray_evaluation_neither_stops_nor_restarts_the_job_and_strict_eval_exits_1(condense, ray_cluster,
                                                                                               tmp_path):
    out = tmp_path / "run"
    done = condense("--address", ray_cluster, "--num-actors", "2", "--outer-iters", "2", "--output", str(out),
                    "--eval-every", "2", *EVAL, "--inject-fault", '{"eval": 2}', "--strict-eval")
    assert done.returncode == 1, done.stderr
    points = _failed_once(done, out, 2)
    assert [(p["iteration"], "mean" in p) for p in points] == [(0, True), (2, False)]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: 1 evaluation(s) during the condensation failed (convnet3 at outer 2); the condensed "
                      f"set is written to {out / 'manifest.json'} (--strict-eval)"]
    assert "Traceback" not in done.stderr


def test_an_unknown_fault_is_one_line(condense, tmp_path):
    done = condense("--backend", "local", "--output", str(tmp_path / "x"), "--inject-fault", '{"evaluation": 2}')
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        'error: --inject-fault {"evaluation": 2} is neither {"actor", "outer", "inner"} nor {"eval": OUTER}']
    assert not (tmp_path / "x").exists()


def test_the_last_curve_point_equals_the_final_evaluation(condense, tmp_path):
    """The same set, models, seeds, epochs and thread count: the curve's last point and
    --eval-models are one computation, bit for bit on the CPU."""
    out = tmp_path / "run"
    done = condense("--backend", "local", "--outer-iters", "2", "--output", str(out), "--eval-every", "2", *EVAL)
    assert done.returncode == 0, done.stderr
    last = curve(out)[-1]
    runs = json.loads((out / "results.json").read_text())["models"]["convnet3"]["runs"]
    assert last["iteration"] == 2 and last["accs"] == [r["last"] for r in runs]
    assert load_condensed(out)[2]["metrics"]["eval"]["convnet3"]["mean"] == last["mean"]
