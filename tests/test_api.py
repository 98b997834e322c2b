"""The public Python API (idc_ray.condense, load, evaluate, Condensed): every input kind takes
the one data path (the Parquet dataset format) and gives the bytes of the registered dataset's
run and of jobs/condense.py; bad arguments raise one error naming the argument."""

import json

import numpy as np
import pytest
import torch

import idc_ray
from idc_ray import api
from idc_ray.artifacts import formed_dataset
from idc_ray.data import channel_stats, load_dataset

SMOKE = dict(ipc=1, preset="smoke", backend="local")


def parquet_bytes(folder) -> bytes:
    return (folder / "condensed.parquet").read_bytes()


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("tiny")


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The registered ``tiny`` dataset condensed with the smoke preset through the API."""
    out = tmp_path_factory.mktemp("registered")
    return idc_ray.condense("tiny", output=out, **SMOKE)


def test_tensors_give_the_bytes_of_the_registered_run(tiny, registered, tmp_path):
    assert registered.manifest["dataset"] == "tiny" and registered.stored.shape == (4, 1, 1, 28, 28)
    condensed = idc_ray.condense((tiny.train_x, tiny.train_y), test=(tiny.test_x, tiny.test_y), output=tmp_path, **SMOKE)
    assert parquet_bytes(tmp_path) == open(f"{registered.uri}/condensed.parquet", "rb").read()
    info = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert info["name"] == "tiny" and info["splits"]["test"]["count"] == len(tiny.test_y)
    assert condensed.manifest["config"]["data"]["data_uri"] == str(tmp_path / "data")


def test_numpy_and_a_torch_dataset_of_floats_are_written_as_the_same_rows(tiny, tmp_path):
    inputs = {"numpy": (tiny.train_x.numpy(), tiny.train_y.numpy()),
              "torch_dataset": torch.utils.data.TensorDataset(tiny.train_x.float() / 255, tiny.train_y)}
    for name, data in inputs.items():
        idc_ray.condense(data, output=tmp_path / name, **SMOKE, **{"schedule.outer_iters": 0})
        written = load_dataset("parquet", tmp_path / name / "data")
        assert torch.equal(written.train_x, tiny.train_x) and torch.equal(written.train_y, tiny.train_y), name


def test_the_cli_and_the_api_write_the_same_bytes(run_job, registered, tmp_path):
    done = run_job("condense", "--preset", "smoke", "--output", str(tmp_path / "cli"), "--quiet", "--backend", "local")
    assert done.returncode == 0, done.stderr
    assert parquet_bytes(tmp_path / "cli") == open(f"{registered.uri}/condensed.parquet", "rb").read()
    assert (tmp_path / "cli" / "config.yaml").read_text() == open(f"{registered.uri}/config.yaml").read()


def test_condensed_loads_forms_and_evaluates(registered, tmp_path):
    again = idc_ray.load(registered.manifest_uri)
    assert again.uri == registered.uri and torch.equal(again.stored, registered.stored)
    x, y = registered.formed().tensors
    ref_x, ref_y = formed_dataset(registered.uri).tensors
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and len(y) == 4 * 4  # factor 2: 4 formed per stored
    raw, _ = registered.formed(normalize=False).tensors
    mean, std = registered.manifest["mean"][0], registered.manifest["std"][0]
    assert torch.allclose((raw - mean) / std, x, atol=1e-5) and not torch.equal(raw, x)
    report = idc_ray.evaluate(registered, models="convnet3", repeat=1, epochs=1, backend="local",
                              output=str(tmp_path / "eval"))
    assert set(report.accuracy) == {"convnet3"} and 0 <= report.accuracy["convnet3"] <= 1
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert written["models"]["convnet3"]["mean"] == report.accuracy["convnet3"]


def test_data_no_registered_dataset_describes_gets_its_own_mean_and_std(tiny, tmp_path):
    x = tiny.train_x[:, :, 2:26, 2:26]  # 24 x 24: not tiny's shape, so nothing registered applies
    condensed = idc_ray.condense((x, tiny.train_y), ipc=1, output=tmp_path, backend="local",
                                 **{"schedule.outer_iters": 0, "synset.factor": 1})
    mean, std = channel_stats(x)
    assert condensed.manifest["mean"] == list(mean) and condensed.manifest["std"] == list(std)
    assert condensed.manifest["dataset"] == "parquet" and condensed.stored.shape == (4, 1, 1, 24, 24)
    assert json.loads((tmp_path / "data" / "dataset.json").read_text())["family"] == "custom"


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.zeros(1, 4, 4)


@pytest.mark.parametrize("kwargs,error,argument", [
    (dict(data="tiny", ipc=0), ValueError, "ipc"),
    (dict(data="tiny", ipc="2"), TypeError, "ipc"),
    (dict(data="tiny", ipc=1, factor=0), ValueError, "factor"),
    (dict(data="tiny", ipc=1, backend="gpu"), ValueError, "backend"),
    (dict(data=42, ipc=1), TypeError, "data"),
    (dict(data="no-such-set", ipc=1), ValueError, "data"),
    (dict(data="tiny", ipc=1, preset="no-such-preset"), ValueError, "preset"),
    (dict(data="tiny", ipc=1, config=3.5), TypeError, "config"),
    (dict(data="tiny", ipc=1, storage_options="endpoint"), TypeError, "storage_options"),
    (dict(data="tiny", ipc=1, **{"schedule.no_such_field": 1}), ValueError, "schedule.no_such_field"),
    (dict(data="tiny", ipc=1, **{"match.lr_img": -1.0}), ValueError, "match.lr_img"),
    (dict(data="tiny", ipc=1, test=(torch.zeros(2, 1, 4, 4), torch.zeros(2))), ValueError, "test"),
    (dict(data=(torch.full((2, 1, 4, 4), 2.0), torch.tensor([0, 1])), ipc=1), ValueError, "data"),
    (dict(data=(torch.zeros(2, 1, 4, 4), torch.tensor([0.0, 1.0])), ipc=1), ValueError, "data"),
    (dict(data=(torch.zeros(2, 1, 4, 5), torch.tensor([0, 1])), ipc=1), ValueError, "data"),
    (dict(data=(torch.zeros(2, 1, 4, 4), torch.tensor([0, 2])), ipc=1), ValueError, "data"),
    (dict(data=_Pairs(), ipc=1), ValueError, "data"),
    (dict(data=(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1])), ipc=1, test=[1, 2, 3]), TypeError, "test"),
])
def test_bad_arguments_raise_one_error_naming_the_argument_and_condense_nothing(kwargs, error, argument, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(error, match=argument.replace(".", r"\.")):
        idc_ray.condense(output=out, **kwargs)
    assert not (out / "manifest.json").exists() and not (out / "condensed.parquet").exists()


@pytest.mark.parametrize("call,error,argument", [
    (lambda: idc_ray.load(3), TypeError, "uri"),
    (lambda: idc_ray.evaluate(3.5), TypeError, "condensed"),
    (lambda: idc_ray.evaluate("x", models=[]), TypeError, "models"),
    (lambda: idc_ray.evaluate("x", repeat=0), ValueError, "repeat"),
    (lambda: idc_ray.evaluate("x", epochs=1.5), TypeError, "epochs"),
    (lambda: idc_ray.evaluate("x", backend="slurm"), ValueError, "backend"),
])
def test_load_and_evaluate_name_a_bad_argument(call, error, argument):
    with pytest.raises(error, match=argument):
        call()


def test_the_api_is_exported_with_docstrings_and_an_example_each():
    for name in ("condense", "load", "evaluate", "Condensed", "tune_trainable"):
        assert name in idc_ray.__all__
        doc = getattr(idc_ray, name).__doc__
        example = [line for line in doc.splitlines() if line.startswith("        ") and "(" in line]
        assert example, f"{name}: no indented example in its docstring"
    assert all(getattr(api.Condensed, m).__doc__ for m in ("formed", "to_ray_dataset"))


def test_a_ray_dataset_is_written_by_ray_data_and_condenses_to_the_bytes_of_mnist5k(ray_cluster, one_thread,
                                                                                   monkeypatch, tmp_path):
    """The embedded MNIST as a ray.data.Dataset, condensed on the Ray backend while the driver's
    in-memory path and its Parquet reader raise: Ray Data workers write the shards (one class
    each) and only the matchers read them, yet the set is the registered mnist5k run's bytes."""
    import ray

    mnist = load_dataset("mnist5k")
    rows = lambda x, y: [{"image": a.numpy(), "label": int(b)} for a, b in zip(x, y)]
    train = ray.data.from_items(rows(mnist.train_x, mnist.train_y), override_num_blocks=3)
    test = ray.data.from_items(rows(mnist.test_x, mnist.test_y))
    tiny_schedule = {"schedule.outer_iters": 1, "schedule.inner_iters": 1, "expert.n_data": 32}

    def driver_copy(*args, **kwargs):
        raise AssertionError("the driver read the training set")

    with monkeypatch.context() as m:
        m.setattr(api, "_arrays", driver_copy)
        m.setattr("idc_ray.data.parquet.read_arrays", driver_copy)
        from_ray = idc_ray.condense(train, test=test, ipc=1, preset="mnist5k-demo", output=tmp_path / "ray",
                                    backend="ray", **tiny_schedule)
    info = json.loads((tmp_path / "ray" / "data" / "dataset.json").read_text())
    assert all(len(labels) == 1 for labels in info["splits"]["train"]["labels"])  # split by class in Ray Data
    assert info["splits"]["train"]["class_counts"] == torch.bincount(mnist.train_y).tolist()
    reference = idc_ray.condense("mnist5k", ipc=1, preset="mnist5k-demo", output=tmp_path / "registered",
                                 backend="local", **tiny_schedule)
    assert parquet_bytes(tmp_path / "ray") == parquet_bytes(tmp_path / "registered")
    assert torch.equal(from_ray.stored, reference.stored)
    written = load_dataset("parquet", tmp_path / "ray" / "data", classes=[3])
    assert torch.equal(written.train_x, mnist.train_x[mnist.train_y == 3])  # row order kept within the class


def _image_tree(root, mnist, classes=3, per_class=12):
    """Class folders of real images: embedded MNIST digits, resized by torchvision to mixed
    sizes and written as PNG and JPEG."""
    from torchvision.transforms.functional import resize, to_pil_image

    for c in range(classes):
        (root / f"digit{c}").mkdir(parents=True)
        for i, image in enumerate(mnist.train_x[mnist.train_y == c][:per_class]):
            picture = to_pil_image(resize(image, [28 + 4 * (i % 3), 28 + 2 * (i % 4)], antialias=True))
            picture.save(root / f"digit{c}" / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


def test_an_image_folder_is_prepared_and_condensed(run_job, tmp_path):
    mnist = load_dataset("mnist5k")
    _image_tree(tmp_path / "tree", mnist)
    done = run_job("prepare_data", "--dataset", "imagefolder", "--data-uri", str(tmp_path / "tree"), "--size", "16",
                   "--output", str(tmp_path / "prepared"))
    assert done.returncode == 0, done.stderr
    prepared = load_dataset("parquet", tmp_path / "prepared")
    assert prepared.spec.class_names == ("digit0", "digit1", "digit2") and prepared.spec.channels == 1
    # the held-out rule: the 10th image of each class (sorted names) is test, the other 11 train
    assert torch.bincount(prepared.test_y).tolist() == [1, 1, 1] and len(prepared.train_y) == 33
    assert prepared.train_x.shape[1:] == (1, 16, 16)
    assert prepared.spec.mean == channel_stats(prepared.train_x)[0]
    condensed = idc_ray.condense(f"imagefolder:{tmp_path / 'tree'}", ipc=1, image_size=16, output=tmp_path / "run",
                                 backend="local", **{"schedule.outer_iters": 1, "schedule.inner_iters": 1,
                                                     "expert.n_data": 16, "expert.width": 8, "match.batch_real": 8})
    assert condensed.stored.shape == (3, 1, 1, 16, 16)
    assert condensed.manifest["classes"] == ["digit0", "digit1", "digit2"]
    assert torch.equal(load_dataset("parquet", tmp_path / "run" / "data").train_x, prepared.train_x)


def test_a_ray_dataset_without_the_named_columns_is_refused_before_anything_runs(ray_cluster, tmp_path):
    import ray

    ds = ray.data.from_items([{"pixels": np.zeros((1, 4, 4), np.uint8), "label": 0}])
    with pytest.raises(ValueError, match="image_column"):
        idc_ray.condense(ds, ipc=1, output=tmp_path, backend="local")
    assert not (tmp_path / "data" / "dataset.json").exists()
