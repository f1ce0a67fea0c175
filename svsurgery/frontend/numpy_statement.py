"""The front end restated in float64 numpy: Kaldi fbank, FunASR's apply_lfr and apply_cmvn.

This is the exact math the graph approximates in float32: the yardstick in tests, and
the reference pipeline of ``fuse-preproc`` when kaldi-native-fbank is not installed.
It favours being obviously right over being fast.
"""

from __future__ import annotations

import numpy as np

from svsurgery.frontend.kaldi_math import mel_banks, window_function
from svsurgery.frontend.options import FbankOptions, LfrOptions

__all__ = ["FLT_EPSILON", "apply_cmvn", "apply_lfr", "fbank", "frame_indices", "speech_statistics"]

FLT_EPSILON = float(np.finfo(np.float32).eps)


def frame_indices(num_samples: int, opts: FbankOptions) -> np.ndarray:
    """[T, window_size] sample indices of every frame, Kaldi's edge reflection applied."""
    frame = opts.frame_opts
    size, shift = frame.window_size, frame.window_shift
    count = frame.num_frames(num_samples)
    if frame.snip_edges:
        starts = np.arange(count) * shift
    else:
        starts = np.arange(count) * shift + shift // 2 - size // 2
    index = starts[:, None] + np.arange(size)[None, :]
    if not frame.snip_edges and count:
        # Kaldi reflects repeatedly (s < 0 -> -s - 1; s >= N -> 2N - 1 - s): period 2N.
        folded = np.mod(index, 2 * num_samples)
        index = np.where(folded < num_samples, folded, 2 * num_samples - 1 - folded)
    return index


def fbank(waveform: np.ndarray, opts: FbankOptions) -> np.ndarray:
    """Kaldi fbank of a 1-D waveform in float64: [num_frames, feature_dim]."""
    opts.validate()
    frame_opts = opts.frame_opts
    samples = np.asarray(waveform, dtype=np.float64).reshape(-1) * opts.input_scale
    index = frame_indices(samples.shape[0], opts)
    frames = samples[index] if index.size else np.zeros((index.shape[0], frame_opts.window_size))
    if frame_opts.remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    energy = None
    if opts.use_energy and opts.raw_energy:
        energy = np.sum(frames**2, axis=1)
    if frame_opts.preemph_coeff != 0.0:
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames - frame_opts.preemph_coeff * previous
    frames = frames * window_function(frame_opts)[None, :]
    if opts.use_energy and not opts.raw_energy:
        energy = np.sum(frames**2, axis=1)
    padded = frame_opts.padded_window_size
    spectrum = np.fft.rfft(frames, n=padded, axis=1)[:, : padded // 2]
    power = spectrum.real**2 + spectrum.imag**2
    if not opts.use_power:
        power = np.sqrt(power)
    mel = power @ mel_banks(opts.mel_opts, frame_opts)
    if opts.mel_opts.htk_mode:
        mel = np.maximum(mel, 1.0)
    if opts.use_log_fbank:
        mel = np.log(np.maximum(mel, FLT_EPSILON))
    if energy is None:
        return mel
    log_energy = np.log(np.maximum(energy, FLT_EPSILON))
    if opts.energy_floor > 0:
        log_energy = np.maximum(log_energy, np.log(opts.energy_floor))
    columns = [mel, log_energy[:, None]] if opts.htk_compat else [log_energy[:, None], mel]
    return np.concatenate(columns, axis=1)


def apply_lfr(features: np.ndarray, lfr: LfrOptions) -> np.ndarray:
    """FunASR's apply_lfr, restated: m frames stacked every n, first frame repeated (m-1)//2
    times on the left, the last frame repeated to fill the right; T_lfr = ceil(T / n)."""
    features = np.asarray(features)
    count, dim = features.shape
    if count == 0:
        return np.zeros((0, lfr.m * dim), dtype=features.dtype)
    left = (lfr.m - 1) // 2
    padded = np.vstack([np.tile(features[0], (left, 1)), features])
    total = count + left
    stacked = []
    for i in range(lfr.num_frames(count)):
        if lfr.m <= total - i * lfr.n:
            stacked.append(padded[i * lfr.n : i * lfr.n + lfr.m].reshape(-1))
        else:
            frame = padded[i * lfr.n :].reshape(-1)
            missing = lfr.m - (total - i * lfr.n)
            stacked.append(np.hstack([frame] + [padded[-1]] * missing))
    return np.vstack(stacked)


def apply_cmvn(features: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """FunASR's apply_cmvn: (x + shift) * scale, per feature column."""
    return (np.asarray(features, dtype=np.float64) + shift[None, :]) * scale[None, :]


def speech_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per dimension over the frames that are not digital silence, as a corpus
    CMVN (``am.mvn``) is estimated: on speech. Digital silence (log-mel at log(FLT_EPSILON))
    then normalises to the large negative values real deployments feed their encoders."""
    audible = features.min(axis=1) > np.log(FLT_EPSILON) + 1.0  # no bin (of any stacked frame) at the floor
    speech = features[audible] if audible.any() else features
    return speech.mean(axis=0), np.maximum(speech.std(axis=0), 1e-3)
