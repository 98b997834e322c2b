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


def test_ray_data_forming_refuses_a_learned_set_with_one_line(learned_set):
    from idc_ray.distributed.interop import formed_ray_dataset

    with pytest.raises(ArtifactError, match="learned formation, which to_ray_dataset does not form yet"):
        formed_ray_dataset(str(learned_set))
