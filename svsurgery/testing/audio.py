"""Test and benchmark audio: espeak-ng speech at 16 kHz, noise, silence.

espeak-ng and sox are Debian packages (``apt-get install espeak-ng sox``); speech
synthesis fails with a clear error when they are missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from svsurgery.errors import MissingDependencyError

__all__ = ["SAMPLE_RATE", "read_wav", "speech", "white_noise"]

SAMPLE_RATE = 16000

_SENTENCES = (
    ("en-us", "The quick brown fox jumps over the lazy dog while the radio plays softly in the kitchen."),
    ("de", "Heute scheint die Sonne und wir gehen gemeinsam in den Park, um Fußball zu spielen."),
    ("fr", "Le petit chat dort tranquillement sur le canapé pendant que la pluie tombe dehors."),
    ("es", "Mañana viajaremos a la montaña para ver el amanecer con nuestros amigos."),
    ("en-gb", "Please remember to switch off the lights and lock the door before you leave the office."),
    ("cmn", "今天天气很好，我们一起去公园散步吧。"),
)


def read_wav(path: str | Path) -> np.ndarray:
    """A mono 16-bit WAV as float32 samples in [-1, 1]."""
    with wave.open(str(path), "rb") as handle:
        if handle.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM")
        data = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
        channels = handle.getnchannels()
    if channels > 1:
        data = data.reshape(-1, channels)[:, 0]
    return data.astype(np.float32) / 32768.0


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """About ``seconds`` of multilingual espeak-ng speech with short pauses, float32 at 16 kHz.

    Deterministic for a given seed (espeak-ng is); exactly ``round(seconds * 16000)`` samples.
    """
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise MissingDependencyError(f"synthesizing test speech needs {tool} (apt-get install espeak-ng sox)")
    rng = np.random.default_rng(seed)
    wanted = int(round(seconds * SAMPLE_RATE))
    pieces: list[np.ndarray] = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="svsurgery-speech-") as folder:
        index = 0
        while total < wanted:
            voice, text = _SENTENCES[int(rng.integers(len(_SENTENCES)))]
            rate, pitch = int(rng.integers(140, 200)), int(rng.integers(30, 70))
            path = Path(folder) / f"{index}.wav"
            synth = subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                capture_output=True,
                check=True,
            )
            subprocess.run(
                ["sox", "-R", "-D", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", str(path)],
                input=synth.stdout,
                capture_output=True,
                check=True,
            )
            clip = read_wav(path)
            pause = np.zeros(int(rng.integers(SAMPLE_RATE // 10, SAMPLE_RATE // 2)), np.float32)
            pieces += [clip, pause]
            total += clip.size + pause.size
            index += 1
    return np.concatenate(pieces)[:wanted]


def white_noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(round(seconds * SAMPLE_RATE))) * level).astype(np.float32)
