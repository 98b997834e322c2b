"""Mini Speech Commands as 64x64 log-magnitude spectrograms (IDC paper, appendix B).

Layout: ``<root>/<label>/*.wav`` (or ``<root>/mini_speech_commands/<label>/*.wav``, as the
archive unpacks), 16 kHz mono 16-bit PCM, read with the stdlib ``wave`` module.

Pipeline (the published ``speech/speech.py``): pad or cut each clip to 1 s; magnitude STFT with
n_fft 255, hop 128, periodic Hann window, centred with reflect padding (128 x 125); zero-pad the
time axis by (1, 2) to 128 x 128; bilinear resize to 64 x 64; ``log(x + 1e-3)``.

Split (published rule): per label, files sorted by name; every 8th file (index % 8 == 0) is
test, the other 7/8 train. Deterministic, and stored with the decoded cache.

Storage as uint8: the log spectrogram is mapped affinely onto [0, 1] with EXACT bounds, then
quantised. A 16-bit sample is in [-1, 1) and the Hann window sums to 255 / 2, so every magnitude
lies in [0, 127.5] (bilinear resizing only averages), hence ``log(x + eps)`` lies in
[log(eps), log(127.5 + eps)]. An affine map commutes with the mean/std normalisation, so the
network sees the published normalised input up to the 8-bit quantisation (steps of 0.046 in log
magnitude). The normalisation constants are measured on the training split at load
(``DatasetSpec.measure_stats``): the published code also computes them from the data.
"""

from __future__ import annotations

import math
import os
import wave
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cache import cache_path, cached
from .sources import Arrays, DatasetFormatError, DatasetNotFoundError, _require_root

SAMPLE_RATE = 16_000
N_FFT, HOP = 255, 128
SIDE = 64
EPS = 1e-3
LOG_MIN, LOG_MAX = math.log(EPS), math.log(N_FFT / 2 + EPS)
TEST_EVERY = 8


def read_wav(path: str) -> np.ndarray:
    """Samples of a 16 kHz mono 16-bit PCM WAV as float32 in [-1, 1)."""
    try:
        with wave.open(path, "rb") as w:
            params = (w.getnchannels(), w.getsampwidth(), w.getframerate())
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise DatasetFormatError(f"cannot read WAV file {path} ({e}); expected 16 kHz mono 16-bit PCM") from None
    if params != (1, 2, SAMPLE_RATE):
        raise DatasetFormatError(f"WAV file {path} is {params[0]} channel(s), {8 * params[1]}-bit, {params[2]} Hz; "
                                 f"expected 1 channel, 16-bit, {SAMPLE_RATE} Hz (resample it first)")
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


def fix_length(samples: np.ndarray, length: int = SAMPLE_RATE) -> np.ndarray:
    """Cut or zero-pad to ``length`` samples (published FixAudioLength, 1 s)."""
    return np.pad(samples[:length], (0, max(0, length - len(samples))))


def log_spectrograms(waves: torch.Tensor) -> torch.Tensor:
    """(N, 16000) float waves -> (N, 1, 64, 64) log-magnitude spectrograms mapped onto [0, 1]."""
    import torchaudio

    stft = torchaudio.transforms.Spectrogram(n_fft=N_FFT, hop_length=HOP, power=1.0, center=True, pad_mode="reflect")
    mag = F.pad(stft(waves).unsqueeze(1), (1, 2))  # (N, 1, 128, 125) -> (N, 1, 128, 128)
    mag = F.interpolate(mag, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return ((torch.log(mag + EPS) - LOG_MIN) / (LOG_MAX - LOG_MIN)).clamp_(0, 1)


def _speech_folder(root: str, labels: Sequence[str]) -> str:
    nested = os.path.join(root, "mini_speech_commands")
    folder = nested if os.path.isdir(nested) else root
    missing = [c for c in labels if not os.path.isdir(os.path.join(folder, c))]
    if missing:
        raise DatasetNotFoundError(f"dataset 'speech': label folders {', '.join(missing)} missing under {folder}; "
                                   f"expected {folder}/<label>/*.wav for labels {', '.join(labels)} (pass --data-uri)")
    return folder


def split_files(folder: str, labels: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """{"train": [(path, label)], "test": [...]} by the published every-8th-file rule."""
    out: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label, name in enumerate(labels):
        files = sorted(f for f in os.listdir(os.path.join(folder, name)) if f.lower().endswith(".wav"))
        if not files:
            raise DatasetNotFoundError(f"dataset 'speech': no .wav files in {os.path.join(folder, name)}")
        for i, f in enumerate(files):
            out["test" if i % TEST_EVERY == 0 else "train"].append((os.path.join(folder, name, f), label))
    return out


def _encode(files: list[tuple[str, int]], batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.empty((len(files), 1, SIDE, SIDE), dtype=torch.uint8)
    for start in range(0, len(files), batch):
        part = files[start : start + batch]
        waves = torch.from_numpy(np.stack([fix_length(read_wav(p)) for p, _ in part]))
        x[start : start + len(part)] = (log_spectrograms(waves) * 255).round_().to(torch.uint8)
    return x, torch.tensor([label for _, label in files], dtype=torch.int64)


def load_speech(root=None, *, labels: Sequence[str]) -> Arrays:
    """Train/test spectrograms of Mini Speech Commands as uint8 (N, 1, 64, 64), cached."""
    root = _require_root("speech", root, "<label>/*.wav")
    folder = _speech_folder(root, labels)
    splits = split_files(folder, labels)
    key = {"loader": "speech", "n_fft": N_FFT, "hop": HOP, "side": SIDE, "eps": EPS, "labels": list(labels),
           "files": {s: [(os.path.relpath(p, root), os.path.getsize(p)) for p, _ in v] for s, v in splits.items()}}

    def build():
        meta = {s: [os.path.relpath(p, root) for p, _ in v] for s, v in splits.items()}  # the split, kept with the data
        return (*_encode(splits["train"]), *_encode(splits["test"])), meta

    arrays, _ = cached(cache_path(root, "speech", key), build)
    return arrays
