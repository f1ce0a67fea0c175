"""A built-in speech-like waveform, so verification needs no audio files and no synthesizer.

Syllables of voiced vowels (a glottal harmonic series with a gliding pitch, shaped by
three formants), fricative noise bursts, and pauses of digital silence, quantized to
16-bit steps as a recording would be. Deterministic for a seed; at any sample rate
(16 kHz unless asked; the same samples as before the rate was a parameter).

:func:`whisper_log_mel` is Whisper's feature extractor in numpy (what Hugging Face's
``WhisperFeatureExtractor`` computes), so Whisper encoders get real log-mel input.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_RATE", "loudest_window", "speech_like", "whisper_log_mel"]

SAMPLE_RATE = 16000

# (F1, F2, F3) in Hz for a, e, i, o, u
_VOWEL_FORMANTS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))


def _formant_gain(freq: np.ndarray, formants: tuple[int, ...], bandwidth: float = 90.0) -> np.ndarray:
    gain = np.zeros_like(freq)
    for formant in formants:
        gain += 1.0 / (1.0 + ((freq - formant) / bandwidth) ** 2)
    return gain * np.exp(-freq / 4000.0)


def speech_like(seconds: float = 4.0, seed: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``seconds`` of speech-like float32 samples in [-1, 1] at ``rate`` Hz (16 kHz by default).

    Harmonics stop at 4 kHz (below 0.45 × the rate for rates under 8.9 kHz); fricatives
    keep what of their 2.5–7 kHz band lies below the rate's Nyquist frequency."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * rate))
    out = np.zeros(total)
    position = int(0.15 * rate)  # leading silence
    while position < total:
        if rng.random() < 0.3:  # fricative burst
            length = int(rng.uniform(0.05, 0.12) * rate)
            noise = rng.standard_normal(length)
            spectrum = np.fft.rfft(noise)
            freq = np.fft.rfftfreq(length, 1 / rate)
            spectrum *= (freq > 2500) * np.exp(-(((freq - 5000) / 2000) ** 2))
            segment = np.fft.irfft(spectrum, n=length) * 0.3
        else:  # voiced vowel with a pitch glide
            length = int(rng.uniform(0.12, 0.3) * rate)
            t = np.arange(length) / rate
            f0 = rng.uniform(100, 220) * (1 + rng.uniform(-0.15, 0.15) * t / t[-1])
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formants = _VOWEL_FORMANTS[int(rng.integers(len(_VOWEL_FORMANTS)))]
            segment = np.zeros(length)
            for harmonic in range(1, int(min(4000.0, 0.45 * rate) / f0.max()) + 1):
                segment += _formant_gain(harmonic * f0, formants) * np.sin(harmonic * phase) / harmonic**0.5
            segment *= 0.25 / max(np.abs(segment).max(), 1e-9)
        envelope = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.01 * rate))
        end = min(total, position + length)
        out[position:end] += (segment * envelope)[: end - position] * rng.uniform(0.3, 1.0)
        position = end + (int(rng.uniform(0.05, 0.4) * rate) if rng.random() < 0.35 else 0)
    return (np.round(np.clip(out, -1, 1) * 32767) / 32768).astype(np.float32)


def loudest_window(waveform: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` consecutive samples of ``waveform`` with the most energy (windows
    start every ``length // 2`` samples), so a short chunk cut from speech holds speech."""
    if length >= len(waveform):
        return waveform[:length]
    step = max(1, length // 2)
    starts = range(0, len(waveform) - length + 1, step)
    best = max(starts, key=lambda start: float(np.square(waveform[start : start + length], dtype=np.float64).sum()))
    return waveform[best : best + length]


# Whisper's feature extractor (openai/whisper audio.py; transformers' WhisperFeatureExtractor)
WHISPER_RATE = 16000
_WHISPER_N_FFT = 400
_WHISPER_HOP = 160


def _slaney_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def whisper_mel_filters(n_mels: int, rate: int = WHISPER_RATE, n_fft: int = _WHISPER_N_FFT) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters on Slaney's mel scale with Slaney area
    normalisation, as ``librosa.filters.mel(sr, n_fft, n_mels)`` gives (Whisper's ``mel_filters.npz``)."""
    fft_freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_slaney_mel(0.0), _slaney_mel(rate / 2), n_mels + 2)
    hz_points = _slaney_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(lower, upper))
    return filters * (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]


def whisper_log_mel(waveform: np.ndarray, n_mels: int = 80, frames: int = 3000) -> np.ndarray:
    """Whisper's input features [n_mels, frames] of a 16 kHz waveform, in float64.

    The waveform is zero-padded (or cut) to ``frames`` hops of 10 ms (3000 frames: the
    30 s Whisper always sees), framed with a centred 25 ms periodic Hann window (reflect
    padding), power spectrum, Slaney mel filters, ``log10(max(·, 1e-10))``, floored at 8
    below the maximum, then ``(x + 4) / 4``; the last STFT frame is dropped, as Whisper does."""
    samples = np.zeros(frames * _WHISPER_HOP, dtype=np.float64)
    used = np.asarray(waveform, dtype=np.float64)[: len(samples)]
    samples[: len(used)] = used
    half = _WHISPER_N_FFT // 2
    padded = np.pad(samples, half, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_WHISPER_N_FFT) / _WHISPER_N_FFT)  # periodic Hann
    starts = np.arange(frames) * _WHISPER_HOP  # frames + 1 centred frames exist; the last is dropped
    framed = padded[starts[:, None] + np.arange(_WHISPER_N_FFT)[None, :]] * window
    power = np.abs(np.fft.rfft(framed, axis=1)) ** 2
    mel = whisper_mel_filters(n_mels) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
