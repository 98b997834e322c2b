"""A learned formation's artifact (issue 29): the upsampler travels with the stored data (a file
with a sha256 sidecar), every reader forms with it, and a corrupt one is refused with one line."""

import pytest
import torch

from idc_ray import load
from idc_ray.artifacts import ArtifactError, form_training_set, formed_dataset, load_condensed
from idc_ray.config import apply_overrides, load_preset
from idc_ray.engine.upsampler import UpsamplerSpec, parameter_count
from idc_ray.evaluation.sets import artifact_set
from idc_ray.local import LocalBackend
from idc_ray.run.job import Run, condense_to


@pytest.fixture(scope="module")
def learned_set(tmp_path_factory):
    cfg = apply_overrides(load_preset("smoke"), {"synset.formation": "learned", "schedule.outer_iters": 1})
    out = tmp_path_factory.mktemp("learned")
    condense_to(Run(cfg, str(out), LocalBackend(device="cpu")))
    return out


def test_the_manifest_accounts_for_the_upsampler(learned_set):
    stored, _, manifest = load_condensed(learned_set)
    entry = manifest["formation"]["upsampler"]
    assert (learned_set / entry["file"]).exists() and (learned_set / f"{entry['file']}.sha256").exists()
    params = parameter_count(UpsamplerSpec(stored.shape[2], 2))
    assert entry["parameters"] == params
    assert manifest["storage"] == {"stored_pixels": stored.numel(), "upsampler_parameters": params}


def test_every_reader_forms_with_the_trained_upsampler(learned_set):
    stored, labels, manifest = load_condensed(learned_set)
    x, y = formed_dataset(learned_set, normalize=False).tensors
    uniform = {**manifest, "formation": {**manifest["formation"], "mode": "uniform"}}
    ux, uy = form_training_set(stored, labels, uniform, normalize=False)
    assert torch.equal(y, uy) and not torch.allclose(x, ux)  # the upsampler learned a residual
    assert torch.equal(load(learned_set).formed(normalize=False).tensors[0], x)
    assert torch.equal(artifact_set(str(learned_set), models=None).x, x)  # evaluation's formed set


def test_a_corrupt_upsampler_is_refused_with_one_line(learned_set, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(learned_set, copy)
    raw = bytearray((copy / "upsampler.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "upsampler.pt").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="upsampler is refused") as e:
        formed_dataset(copy)
    assert "\n" not in str(e.value)


def by_class(x: torch.Tensor, y: torch.Tensor) -> dict[int, list[bytes]]:
    """Each class's formed images as sorted byte strings (Ray Data may order a group's rows its own way)."""
    return {int(c): sorted(img.numpy().tobytes() for img in x[y == c]) for c in y.unique()}


def test_ray_data_forms_a_learned_set_with_its_upsampler(ray_cluster, learned_set, one_thread):
    x, y = formed_dataset(learned_set).tensors  # at the 1 thread of a Ray Data worker: the same convolutions
    rows = load(learned_set).to_ray_dataset().take_all()
    ray_x = torch.stack([torch.from_numpy(r["image"]) for r in rows])
    ray_y = torch.tensor([int(r["label"]) for r in rows])
    assert by_class(ray_x, ray_y) == by_class(x, y)


def test_the_evaluation_report_and_exports_count_the_upsampler(learned_set, tmp_path):
    from idc_ray.evaluation.report import _storage_lines
    from idc_ray.export import export

    _, _, manifest = load_condensed(learned_set)
    params = manifest["storage"]["upsampler_parameters"]
    assert params > 0
    described = artifact_set(str(learned_set), models=None).describe()
    assert described["storage"] == manifest["storage"]
    line = _storage_lines(described)[0]
    assert f"{params:,} upsampler parameters" in line and f"{manifest['storage']['stored_pixels']:,} stored" in line
    assert export(str(learned_set), "torch", str(tmp_path / "out"))["storage"] == manifest["storage"]
