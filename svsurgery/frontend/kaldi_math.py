"""Kaldi's window functions and mel filter banks, in float64 numpy.

Shared by the ONNX graph (which bakes them into constant matrices) and by the float64
reference implementation, so the two can only differ in how they compute, never in
what they compute.
"""

from __future__ import annotations

import numpy as np

from svsurgery.frontend.options import FrameExtractionOptions, MelBanksOptions

__all__ = ["mel_banks", "mel_scale", "window_function"]


def window_function(opts: FrameExtractionOptions) -> np.ndarray:
    """Kaldi's FeatureWindowFunction: the window over ``window_size`` samples, float64."""
    size = opts.window_size
    i = np.arange(size, dtype=np.float64)
    a = 2 * np.pi / (size - 1)
    kind = opts.window_type
    if kind == "hanning":
        return 0.5 - 0.5 * np.cos(a * i)
    if kind == "sine":
        return np.sin(0.5 * a * i)
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(a * i)
    if kind == "povey":
        return np.power(0.5 - 0.5 * np.cos(a * i), 0.85)
    if kind == "rectangular":
        return np.ones(size)
    if kind == "blackman":
        c = opts.blackman_coeff
        return c - 0.5 * np.cos(a * i) + (0.5 - c) * np.cos(2 * a * i)
    raise ValueError(f"unknown window_type {kind!r}")


def mel_scale(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_banks(mel_opts: MelBanksOptions, frame_opts: FrameExtractionOptions) -> np.ndarray:
    """Kaldi's MelBanks as a dense [padded_window_size // 2, num_bins] weight matrix (float64).

    Row ``i`` is FFT bin ``i`` (frequency ``i * samp_freq / padded``); the Nyquist bin
    never has weight in Kaldi, so it is not a row.
    """
    padded = frame_opts.padded_window_size
    num_fft_bins = padded // 2
    nyquist = 0.5 * frame_opts.samp_freq
    high = mel_opts.high_freq if mel_opts.high_freq > 0 else nyquist + mel_opts.high_freq
    mel_low, mel_high = mel_scale(mel_opts.low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / (mel_opts.num_bins + 1)
    fft_mel = mel_scale(np.arange(num_fft_bins) * frame_opts.samp_freq / padded)
    weights = np.zeros((num_fft_bins, mel_opts.num_bins))
    for b in range(mel_opts.num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        inside = (fft_mel > left) & (fft_mel < right)
        rising = (fft_mel - left) / (center - left)
        falling = (right - fft_mel) / (right - center)
        weights[:, b] = np.where(inside, np.where(fft_mel <= center, rising, falling), 0.0)
    if mel_opts.htk_mode and mel_low != 0.0:
        # Kaldi replicates an HTK bug: the first weight of the first bin is zeroed.
        weights[np.flatnonzero(weights[:, 0])[0], 0] = 0.0
    return weights
