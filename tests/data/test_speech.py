"""Mini Speech Commands layout with synthetic tones written as 16 kHz WAV files."""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idc_ray.data import channel_stats, get_spec, load_dataset
from idc_ray.data import speech
from idc_ray.data.sources import DatasetFormatError, DatasetNotFoundError

LABELS = get_spec("speech").class_names


def pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2")


def write_wav(path, samples: np.ndarray, rate: int = 16_000, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16(samples).tobytes())


def tone(label: int, k: int, seconds: float = 1.0) -> np.ndarray:
    """Class ``label``: a sine at 400 * (label + 1) Hz; ``k`` varies amplitude and phase."""
    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 + 0.05 * k) * np.sin(2 * math.pi * 400 * (label + 1) * t + k)


def write_speech(root, per_label: int = 9, nested: bool = False):
    base = root / "mini_speech_commands" if nested else root
    for label, name in enumerate(LABELS):
        (base / name).mkdir(parents=True)
        for k in range(per_label):
            write_wav(base / name / f"{k:02d}_clip.wav", tone(label, k, seconds=0.6 if k == 3 else 1.0))
    return root


def reference_unit_spectrogram(samples: np.ndarray) -> torch.Tensor:
    """The published pipeline computed with numpy's FFT (not torchaudio), mapped onto [0, 1]."""
    samples = pcm16(samples).astype(np.float64) / 32768  # what the WAV file holds
    x = np.pad(samples[:16_000], (0, max(0, 16_000 - len(samples))))
    x = np.pad(x, (127, 127), mode="reflect")  # centred frames, reflect padding (librosa/torch)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(255) / 255)  # periodic Hann
    frames = np.stack([x[i * 128 : i * 128 + 255] * window for i in range((len(x) - 255) // 128 + 1)])
    mag = np.abs(np.fft.rfft(frames, n=255, axis=1)).T  # (128, 125)
    mag = F.pad(torch.tensor(mag, dtype=torch.float32)[None, None], (1, 2))
    mag = F.interpolate(mag, size=(64, 64), mode="bilinear", align_corners=False)
    return (torch.log(mag + 1e-3) - math.log(1e-3)) / (math.log(127.5 + 1e-3) - math.log(1e-3))


@pytest.fixture(scope="module")
def speech_root(tmp_path_factory):
    return write_speech(tmp_path_factory.mktemp("speech"))


def test_split_shapes_and_published_every_8th_rule(speech_root):
    data = load_dataset("speech", str(speech_root))
    assert data.train_x.shape == (8 * 7, 1, 64, 64) and data.test_x.shape == (8 * 2, 1, 64, 64)
    assert data.train_x.dtype == torch.uint8
    assert torch.bincount(data.test_y).tolist() == [2] * 8  # files 00 and 08 of each label
    splits = speech.split_files(str(speech_root), LABELS)
    assert [p.rsplit("/", 1)[-1] for p, y in splits["test"] if y == 0] == ["00_clip.wav", "08_clip.wav"]


def test_spectrogram_matches_an_independent_computation(speech_root):
    data = load_dataset("speech", str(speech_root))
    for label in (0, 5):
        ref = reference_unit_spectrogram(tone(label, 0))[0]
        got = data.test_x[data.test_y == label][0].float() / 255  # file 00 of the label
        assert (got - ref).abs().max() <= 1 / 255 + 1e-4  # within one quantisation step
    short = reference_unit_spectrogram(tone(2, 3, seconds=0.6))[0]  # zero-padded clip
    got = data.train_x[data.train_y == 2][2].float() / 255  # file 03 is the third train file
    assert (got - short).abs().max() <= 1 / 255 + 1e-4


def test_tone_pitch_orders_the_spectrogram_rows(speech_root):
    data = load_dataset("speech", str(speech_root))
    peaks = [int(data.train_x[data.train_y == c].float().mean((0, 1, 3)).argmax()) for c in range(8)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 8  # 400..3200 Hz -> increasing frequency rows


def test_mean_std_are_measured_on_the_training_split(speech_root):
    data = load_dataset("speech", str(speech_root))
    mean, std = channel_stats(data.train_x)
    assert data.spec.mean == mean and data.spec.std == std and 0 < mean[0] < 1 and std[0] > 0.01
    x = data.train_x.double() / 255
    assert mean[0] == pytest.approx(float(x.mean()), abs=1e-6) and std[0] == pytest.approx(float(x.std(correction=0)), abs=1e-6)
    part = load_dataset("speech", str(speech_root), classes=[1, 6])
    assert part.spec.mean == mean and sorted(set(part.train_y.tolist())) == [1, 6]  # stats cover every class


def test_nested_archive_folder_and_cache(tmp_path, monkeypatch):
    write_speech(tmp_path, per_label=2, nested=True)
    first = load_dataset("speech", str(tmp_path))
    def no_decoding(path):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(speech, "read_wav", no_decoding)
    again = load_dataset("speech", str(tmp_path))
    assert torch.equal(first.train_x, again.train_x) and len(first.test_x) == 8
    meta = torch.load(next((tmp_path / "idc-cache").glob("speech-*.pt")), weights_only=True)["meta"]
    assert meta["test"][0].endswith("00_clip.wav") and len(meta["train"]) == 8  # the split, kept with the data


def test_wrong_wav_format_and_missing_label(tmp_path):
    write_speech(tmp_path, per_label=1)
    write_wav(tmp_path / "yes" / "00_clip.wav", tone(0, 0), rate=8_000)
    with pytest.raises(DatasetFormatError, match="8000 Hz"):
        load_dataset("speech", str(tmp_path))
    (tmp_path / "yes" / "00_clip.wav").unlink()
    (tmp_path / "yes").rmdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("speech", str(tmp_path))
    assert "yes" in str(err.value) and "\n" not in str(err.value)


def test_speech_preset_end_to_end_on_generated_wavs(speech_root, tmp_path):
    """The speech preset (ConvNet-4, 1-D formation along time) condenses the generated WAVs and
    its artifact forms strips along the time axis with the measured normalisation."""
    from idc_ray.artifacts import formed_dataset, load_condensed, save_condensed
    from idc_ray.config import apply_overrides, load_preset
    from idc_ray.local import condense_local
    from idc_ray.engine.plan import build_plan

    cfg = apply_overrides(load_preset("speech"), {
        "data.data_uri": str(speech_root), "synset.ipc": 1, "schedule.outer_iters": 1, "schedule.inner_iters": 1,
        "expert.n_data": 8, "match.batch_real": 4, "expert.width": 8})
    data = load_dataset("speech", str(speech_root))
    result_stored, result_labels, history = condense_local(cfg, build_plan(cfg, data.spec), data.train_store())
    assert result_stored.shape == (8, 1, 1, 64, 64) and len(history) == 1
    meta = {"dataset": "speech", "ipc": 1, "factor": 2, "formation": "1d", "formation_axis": -1, "bound": 128}
    save_condensed(tmp_path, result_stored, result_labels, config_yaml=cfg.to_yaml(), meta=meta, spec=data.spec)
    stored, labels, manifest = load_condensed(tmp_path)
    assert torch.equal(stored, result_stored) and manifest["mean"] == list(data.spec.mean)
    formed = formed_dataset(tmp_path, normalize=False)
    assert len(formed) == 8 * 2
    left = F.interpolate(stored[0, :, :, :, :32], size=(64, 64), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(formed[0][0], left, atol=1e-6)  # strip 0 = first half of the time axis
