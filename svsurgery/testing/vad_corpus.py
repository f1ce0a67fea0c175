"""The vad-dev corpus (shared/data/vad-dev): recordings, frame labels, noise at a chosen SNR.

As the corpus README asks: noise (white, pink, or babble cut from ``babble_src.wav``) is
mixed at an SNR measured over the speech frames of the clean clip, with a fixed seed per
recording and condition, so every tool in a comparison hears the same samples.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path

import numpy as np

from svsurgery.testing.audio import read_wav

__all__ = [
    "CONDITIONS",
    "NOISES",
    "SNRS_DB",
    "Recording",
    "corpus_dir",
    "frame_scores",
    "mix",
    "recordings",
    "require_corpus",
    "segments_to_frames",
]

NOISES = ("white", "pink", "babble")
SNRS_DB = (20.0, 10.0, 5.0)
CONDITIONS: tuple[tuple[str, float | None], ...] = (("clean", None), *((n, s) for n in NOISES for s in SNRS_DB))
LABEL_HOP = 160  # the labels' 10 ms frames


def corpus_dir() -> Path | None:
    """$SVSURGERY_VAD_DEV, else shared/data/vad-dev beside the checkout (../shared); None when absent."""
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (os.environ.get("SVSURGERY_VAD_DEV"), checkout.parent / "shared" / "data" / "vad-dev"):
        if candidate and (Path(candidate) / "rec00.wav").is_file():
            return Path(candidate)
    return None


def require_corpus() -> Path:
    """The corpus folder for a test: in CI (``$CI`` set) a missing corpus fails the test, since
    CI always lays shared/ beside the checkout; elsewhere the test is skipped, saying why."""
    import pytest

    folder = corpus_dir()
    if folder is not None:
        return folder
    message = "the vad-dev corpus is neither at $SVSURGERY_VAD_DEV nor at ../shared/data/vad-dev beside the checkout"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclasses.dataclass(frozen=True)
class Recording:
    name: str
    waveform: np.ndarray  # float32 in [-1, 1], clean
    labels: np.ndarray  # bool per 10 ms frame (the corpus's primary "env" labels)


def recordings(folder: Path | None = None) -> list[Recording]:
    folder = folder or corpus_dir()
    if folder is None:
        return []
    found = []
    for path in sorted(folder.glob("rec*.wav")):
        labels = np.load(path.with_suffix(".labels.npz"))["env"].astype(bool)
        found.append(Recording(path.stem, read_wav(path), labels))
    return found


def _noise(kind: str, size: int, rng: np.random.Generator, folder: Path | None) -> np.ndarray:
    if kind == "white":
        return rng.standard_normal(size)
    if kind == "pink":  # 1/f power: white noise shaped by 1/sqrt(f) in the frequency domain
        spectrum = np.fft.rfft(rng.standard_normal(size))
        frequencies = np.arange(spectrum.size, dtype=np.float64)
        frequencies[0] = 1.0
        return np.fft.irfft(spectrum / np.sqrt(frequencies), n=size)
    if kind == "babble":
        corpus = folder or corpus_dir()
        if corpus is None:
            raise ValueError("babble noise is cut from the vad-dev corpus's babble_src.wav, and there is no corpus")
        source = read_wav(corpus / "babble_src.wav").astype(np.float64)
        start = int(rng.integers(source.size))
        return np.resize(np.roll(source, -start), size)  # loops when the recording is longer
    raise ValueError(f"unknown noise {kind!r} (one of {NOISES})")


def mix(recording: Recording, kind: str, snr_db: float | None, folder: Path | None = None) -> np.ndarray:
    """The recording with ``kind`` noise at ``snr_db`` over its speech frames (None: clean)."""
    if snr_db is None or kind == "clean":
        return recording.waveform
    seed = zlib.crc32(f"{recording.name}/{kind}/{snr_db}".encode())
    noise = _noise(kind, recording.waveform.size, np.random.default_rng(seed), folder)
    clean = recording.waveform.astype(np.float64)
    frames = np.flatnonzero(recording.labels)
    speech = np.concatenate([clean[f * LABEL_HOP : (f + 1) * LABEL_HOP] for f in frames]) if frames.size else clean
    speech_power = float(np.mean(speech**2))
    noise_power = float(np.mean(noise**2))
    noise *= np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (clean + noise).astype(np.float32)


def frame_scores(decided: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Frame-level F1, false-alarm rate (of non-speech frames) and miss rate (of speech frames)."""
    count = min(decided.size, labels.size)
    decided, labels = decided[:count].astype(bool), labels[:count].astype(bool)
    hits = int(np.sum(decided & labels))
    false_alarms = int(np.sum(decided & ~labels))
    misses = int(np.sum(~decided & labels))
    f1 = 2 * hits / max(2 * hits + false_alarms + misses, 1)
    return {
        "f1": f1,
        "false_alarm": false_alarms / max(int(np.sum(~labels)), 1),
        "miss": misses / max(int(np.sum(labels)), 1),
    }


def segments_to_frames(segments_ms: np.ndarray, frames: int, hop_ms: float = 10.0) -> np.ndarray:
    """bool per 10 ms frame: inside some [start, end) ms segment (a frame counts if its centre is)."""
    flags = np.zeros(frames, bool)
    centres = (np.arange(frames) + 0.5) * hop_ms
    for start, end in np.asarray(segments_ms, dtype=np.float64).reshape(-1, 2):
        flags |= (centres >= start) & (centres < end)
    return flags
