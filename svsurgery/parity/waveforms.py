"""A built-in speech-like waveform, so verification needs no audio files and no synthesizer.

Syllables of voiced vowels (a glottal harmonic series with a gliding pitch, shaped by
three formants), fricative noise bursts, and pauses of digital silence, quantized to
16-bit steps as a recording would be. Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_RATE", "speech_like"]

SAMPLE_RATE = 16000

# (F1, F2, F3) in Hz for a, e, i, o, u
_VOWEL_FORMANTS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))


def _formant_gain(freq: np.ndarray, formants: tuple[int, ...], bandwidth: float = 90.0) -> np.ndarray:
    gain = np.zeros_like(freq)
    for formant in formants:
        gain += 1.0 / (1.0 + ((freq - formant) / bandwidth) ** 2)
    return gain * np.exp(-freq / 4000.0)


def speech_like(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """``seconds`` of speech-like float32 samples in [-1, 1] at 16 kHz."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * SAMPLE_RATE))
    out = np.zeros(total)
    position = int(0.15 * SAMPLE_RATE)  # leading silence
    while position < total:
        if rng.random() < 0.3:  # fricative burst
            length = int(rng.uniform(0.05, 0.12) * SAMPLE_RATE)
            noise = rng.standard_normal(length)
            spectrum = np.fft.rfft(noise)
            freq = np.fft.rfftfreq(length, 1 / SAMPLE_RATE)
            spectrum *= (freq > 2500) * np.exp(-((freq - 5000) / 2000) ** 2)
            segment = np.fft.irfft(spectrum, n=length) * 0.3
        else:  # voiced vowel with a pitch glide
            length = int(rng.uniform(0.12, 0.3) * SAMPLE_RATE)
            t = np.arange(length) / SAMPLE_RATE
            f0 = rng.uniform(100, 220) * (1 + rng.uniform(-0.15, 0.15) * t / t[-1])
            phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
            formants = _VOWEL_FORMANTS[int(rng.integers(len(_VOWEL_FORMANTS)))]
            segment = np.zeros(length)
            for harmonic in range(1, int(4000 / f0.max()) + 1):
                segment += _formant_gain(harmonic * f0, formants) * np.sin(harmonic * phase) / harmonic**0.5
            segment *= 0.25 / max(np.abs(segment).max(), 1e-9)
        envelope = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.01 * SAMPLE_RATE))
        end = min(total, position + length)
        out[position:end] += (segment * envelope)[: end - position] * rng.uniform(0.3, 1.0)
        position = end + (int(rng.uniform(0.05, 0.4) * SAMPLE_RATE) if rng.random() < 0.35 else 0)
    return (np.round(np.clip(out, -1, 1) * 32767) / 32768).astype(np.float32)
