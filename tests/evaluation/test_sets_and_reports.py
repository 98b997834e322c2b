"""Training sets (artifacts, plain tensor files, baselines) and the reports written from them."""

import json
import shutil

import pytest
import torch

from idc_ray.config import load_preset
from idc_ray.run.backend import RunOptions
from idc_ray.data import get_spec
from idc_ray.evaluation import report
from idc_ray.evaluation.protocol import form_stored
from idc_ray.evaluation.assembly import EvalOptions, SetsRequest, build_sets
from idc_ray.evaluation.executor import Sequential
from idc_ray.evaluation.report import report_folder, write_reports
from idc_ray.evaluation.run import evaluate_artifact, evaluate_sets
from idc_ray.local import LocalBackend
from idc_ray.run.job import Run, condense_to

SCHEMA = {"mean", "std", "best_mean", "best_std", "runs", "epochs", "wall_s", "device"}
QUIET = {"log": lambda _: None}
CPU = Sequential("cpu", log=lambda _: None)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    condense_to(Run(load_preset("smoke"), str(out), LocalBackend("cpu"), RunOptions(backend="local")))
    return str(out)


def test_an_artifact_is_formed_with_its_manifest_and_recipe(artifact):
    from idc_ray.artifacts import load_condensed

    (s,), data, _ = build_sets(SetsRequest(condensed=(artifact,)), EvalOptions(epochs=3), **QUIET)
    stored, labels, _ = load_condensed(artifact)
    x, y = form_stored(load_preset("smoke"), get_spec("tiny"), stored, labels)
    assert torch.equal(s.x, x) and torch.equal(s.y, y)
    assert (s.label, s.method, s.ipc, s.factor, s.stored, s.formed_per_stored) == ("run", "IDC (factor 2)", 1, 2, 4, 4)
    assert s.cfg.eval.epochs == 3 and s.cfg.eval.width == 16 and list(data) == [("tiny", None)]


def test_plain_files_in_every_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    stored = torch.rand(4, 2, 1, 28, 28, generator=g)
    labels = torch.arange(4).repeat_interleave(2)
    torch.save({"data": stored, "labels": labels}, tmp_path / "five.pt")
    mean, std = 0.0993, 0.1647  # tiny's
    torch.save({"data": (stored.flatten(0, 1) - mean) / std, "labels": labels}, tmp_path / "normed.pt")
    request = SetsRequest(condensed=(str(tmp_path / "five.pt"),), dataset="tiny")
    (s,), _, _ = build_sets(request, EvalOptions(), **QUIET)
    assert torch.equal(s.x, stored.flatten(0, 1)) and (s.ipc, s.factor, s.method) == (2, 1, "file five.pt")
    (f2,), _, _ = build_sets(SetsRequest(condensed=request.condensed, dataset="tiny", factor=2), EvalOptions(), **QUIET)
    assert f2.x.shape == (32, 1, 28, 28) and f2.formed_per_stored == 4 and f2.cfg.synset.factor == 2
    normed = SetsRequest(condensed=(str(tmp_path / "normed.pt"),), dataset="tiny", normalized=True)
    assert torch.allclose(build_sets(normed, EvalOptions(), **QUIET)[0][0].x, stored.flatten(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="pass --normalized"):
        build_sets(SetsRequest(condensed=normed.condensed, dataset="tiny"), EvalOptions(), **QUIET)
    with pytest.raises(ValueError, match=r"samples are \(1, 28, 28\) but dataset 'cifar10' has \(3, 32, 32\)"):
        build_sets(SetsRequest(condensed=request.condensed, dataset="cifar10"), EvalOptions(), **QUIET)
    torch.save({"data": stored, "labels": labels[:3]}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="labels must be 8 integers"):
        build_sets(SetsRequest(condensed=(str(tmp_path / "short.pt"),), dataset="tiny"), EvalOptions(), **QUIET)


def test_published_data_pt_is_read_and_kept_unclipped(tmp_path):
    from idc_ray.engine.formation import form_uniform

    g = torch.Generator().manual_seed(1)
    data = torch.rand(8, 1, 28, 28, generator=g) * 1.44 - 0.2  # -0.2 .. 1.24: optimised, unclamped
    labels = torch.arange(4).repeat_interleave(2)
    torch.save([data, labels], tmp_path / "data.pt")  # the published condense.py's format
    (s,), _, _ = build_sets(SetsRequest(condensed=(str(tmp_path / "data.pt"),), dataset="tiny", factor=2),
                            EvalOptions(), **QUIET)
    fx, fy = form_uniform(data, labels, 2)
    assert torch.equal(s.x, fx) and torch.equal(s.y, fy) and (s.ipc, s.factor, s.stored) == (2, 2, 8)
    assert float(s.x.min()) < -0.15 and float(s.x.max()) > 1.15  # as test.py trains on them: no clipping
    torch.save([(data.clamp(0, 1) - 0.1307) / 0.3081, labels], tmp_path / "normed.pt")  # MNIST-normalised
    with pytest.raises(ValueError, match=r"values span \[-0.424, 2.82\].*pass --normalized"):
        build_sets(SetsRequest(condensed=(str(tmp_path / "normed.pt"),), dataset="tiny"), EvalOptions(), **QUIET)


def test_baselines_get_the_recipe_of_factor_1_and_fixed_compute_divides_by_f_squared(artifact):
    options = EvalOptions(repeat=1, eval_every=2, fixed_compute=True,
                          overrides=("eval.epochs=8",))
    sets, data, _ = build_sets(SetsRequest(condensed=(artifact,), baselines=("random",), ipcs=(1, 2)), options, **QUIET)
    assert [s.label for s in sets] == ["run", "random-ipc1", "random-ipc2"]
    assert [s.cfg.synset.factor for s in sets] == [2, 1, 1] and sets[1].cfg.eval.width == 16
    results = evaluate_sets(sets, data, options, executor=CPU, **QUIET)
    assert [r["models"]["convnet3"]["epochs"] for r in results] == [2, 8, 8]  # 8 / 2^2 for the factor-2 set
    # every 2 epochs (--eval-every) and the report epochs (multiples of epochs // 4: 1, 2 for the 2-epoch run)
    assert [[e for e, _ in r["curves"]["convnet3"][0]] for r in results] == [[1, 2], [2, 4, 6, 8], [2, 4, 6, 8]]


def test_results_json_schema_and_write_order(artifact, tmp_path, monkeypatch):
    options = EvalOptions(repeat=2, epochs=2, eval_every=1)
    sets, data, _ = build_sets(SetsRequest(condensed=(artifact,), baselines=("random",), ipcs=(1,)), options, **QUIET)
    results = evaluate_sets(sets, data, options, executor=CPU, **QUIET)
    for r in results:
        assert set(r["models"]) == {"convnet3"}
        m = r["models"]["convnet3"]
        assert set(m) == SCHEMA and m["epochs"] == 2 and m["device"] == "cpu" and m["wall_s"] > 0
        assert [set(run) for run in m["runs"]] == [{"best", "last"}] * 2
        assert m["mean"] == pytest.approx(sum(run["last"] for run in m["runs"]) / 2)
        assert m["best_mean"] == pytest.approx(sum(run["best"] for run in m["runs"]) / 2)
        assert all(run["best"] >= run["last"] for run in m["runs"])
        assert r["best_selected_on"] == "test" and "SELECTED ON THE TEST SET" in r["metric"]
    written: list[str] = []
    real_write = report.storage.atomic_write_bytes
    monkeypatch.setattr(report.storage, "atomic_write_bytes",
                        lambda uri, data: (written.append(uri), real_write(uri, data)))
    index = write_reports(str(tmp_path / "out"), results)
    assert index.endswith("summary.json") and written[-1] == index
    for label in ("run", "random-ipc1"):
        mine = [w for w in written if f"/{label}/" in w]
        assert [w.rsplit("/", 1)[1] for w in mine] == ["results.md", "curves.png", "results.json"]
        saved = json.loads((tmp_path / "out" / label / "results.json").read_text())
        assert saved["models"] == next(r for r in results if r["set"]["label"] == label)["models"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["results"] for s in summary["sets"]] == ["run/results.json", "random-ipc1/results.json"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| tiny | 1 | IDC (factor 2) | 16 / 4 |" in table and "| tiny | 1 | random | 4 / 4 |" in table
    assert "(best " in table and "selected on the test set" in table
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_goes_next_to_a_single_artifact_else_needs_output(artifact):
    assert report_folder(1, None, (artifact + "/manifest.json",)) == artifact
    assert report_folder(3, "out", ()) == "out"
    with pytest.raises(ValueError, match="--output DIR is required"):
        report_folder(2, None, (artifact, artifact))


def test_option_and_request_errors_are_one_line(artifact):
    for options, message in ((EvalOptions(repeat=0), "--repeat must be at least 1"),
                             (EvalOptions(epochs=0), "--epochs must be at least 1"),
                             (EvalOptions(models=("lenet",)), "unknown model 'lenet'")):
        with pytest.raises(ValueError, match=message):
            build_sets(SetsRequest(condensed=(artifact,)), options, **QUIET)
    with pytest.raises(ValueError, match="need --dataset"):
        build_sets(SetsRequest(baselines=("random",), ipcs=(1,)), EvalOptions(), **QUIET)
    with pytest.raises(ValueError, match="needs --ipc"):
        build_sets(SetsRequest(baselines=("random",), dataset="tiny"), EvalOptions(), **QUIET)


def test_evaluate_artifact_writes_next_to_the_artifact(artifact, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(artifact, folder)
    doc = evaluate_artifact(str(folder), repeat=1, epochs=2, executor=CPU, log=lambda _: None)
    assert doc == json.loads((folder / "results.json").read_text())
    assert set(doc["models"]) == {"convnet3"} and doc["models"]["convnet3"]["epochs"] == 2
    with pytest.raises(ValueError, match="unknown model 'lenet'"):
        evaluate_artifact(str(folder), models=("lenet",), executor=CPU)


def test_best_on_validation_is_recorded_and_drawn_from_the_training_split(artifact):
    options = EvalOptions(repeat=1, epochs=4, eval_every=0,
                          overrides=("eval.best_on=val", "eval.val_per_class=2"))
    sets, data, _ = build_sets(SetsRequest(condensed=(artifact,)), options, **QUIET)
    (doc,) = evaluate_sets(sets, data, options, executor=CPU, **QUIET)
    assert doc["best_selected_on"] == "val" and "held-out real training images" in doc["metric"]
    run = doc["models"]["convnet3"]["runs"][0]
    assert run["best"] in [acc for _, acc in doc["curves"]["convnet3"][0]]
    from idc_ray.evaluation.protocol import validation_split

    vx, vy = validation_split(data[("tiny", None)], 2, 0)
    assert vx.shape[0] == 8 and vy.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_report_sizes_read_at_every_scale():
    """Soft-label storage of a 10-image set is 400 bytes: the report says so, not '0.000 MB'."""
    from idc_ray.evaluation.report import _size

    assert [_size(n) for n in (400, 4_000, 313_600, 1_600_000)] == ["400 B", "4.0 kB", "313.6 kB", "1.60 MB"]
