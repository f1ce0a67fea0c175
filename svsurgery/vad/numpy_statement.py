"""The VAD and segmentation restated in numpy: the yardstick the graphs are tested against.

``merge_vad`` reproduces FunASR's function of that name (AutoModel.generate with
merge_vad=True), quirks included: boundaries are packed greedily into contiguous spans
starting at 0 ms, and a list of one segment or none comes back unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from svsurgery.vad.energy import EnergyVadOptions
    from svsurgery.vad.options import SegmentOptions

__all__ = ["cut_rows", "energy_db", "energy_vad", "frame_decisions", "merge_vad", "segment", "segments", "split_long"]


def energy_db(waveform: np.ndarray, opts: EnergyVadOptions) -> np.ndarray:
    """Per-frame energy in dB of full frames (samples in [-1, 1])."""
    hop = opts.hop
    count = waveform.size // hop
    frames = np.asarray(waveform[: count * hop], dtype=np.float64).reshape(count, hop)
    return 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-10)


def _nearest_rank(values: np.ndarray, percentile: float) -> float:
    ordered = np.sort(values)
    rank = int(np.ceil(percentile / 100.0 * ordered.size))
    return float(ordered[min(max(rank, 1), ordered.size) - 1])


def frame_decisions(energy: np.ndarray, opts: EnergyVadOptions) -> np.ndarray:
    """Speech flags per frame, before gap closing and island removal."""
    if energy.size == 0:
        return np.zeros(0, bool)
    threshold = max(
        _nearest_rank(energy, opts.speech_percentile) + opts.relative_threshold_db,
        _nearest_rank(energy, opts.floor_percentile) + opts.noise_margin_db,
    )
    return energy > threshold


def energy_vad(waveform: np.ndarray, opts: EnergyVadOptions) -> np.ndarray:
    """Speech flags per 10 ms frame after gap closing and island removal."""
    opts.validate()
    flags = frame_decisions(energy_db(waveform, opts), opts).copy()
    gap, island = opts.frames(opts.close_gaps_ms), opts.frames(opts.drop_islands_ms)
    for start, end in _value_runs(flags, False):
        if start > 0 and end < flags.size and end - start < gap:
            flags[start:end] = True  # a silence between speech, shorter than the gap: speech
    for start, end in _value_runs(flags, True):
        if end - start < island:
            flags[start:end] = False
    return flags


def _value_runs(flags: np.ndarray, value: bool) -> list[tuple[int, int]]:
    match = (flags == value).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], match, [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def segments(flags: np.ndarray, frame_ms: float) -> np.ndarray:
    """[K, 2] int64 [start_ms, end_ms] of every speech run."""
    runs = _value_runs(flags, True)
    return np.array([[round(a * frame_ms), round(b * frame_ms)] for a, b in runs], dtype=np.int64).reshape(-1, 2)


def merge_vad(found: np.ndarray, max_length_ms: float, min_length_ms: float = 0) -> np.ndarray:
    """FunASR's merge_vad: contiguous spans of at most ``max_length_ms`` from 0 ms."""
    found = np.asarray(found, dtype=np.int64).reshape(-1, 2)
    if len(found) <= 1:
        return found
    steps = np.unique(found.reshape(-1))
    spans, begin = [], 0
    for i in range(len(steps) - 1):
        time = int(steps[i])
        if steps[i + 1] - begin < max_length_ms:
            continue
        if time - begin > min_length_ms:
            spans.append([begin, time])
        begin = time
    spans.append([begin, int(steps[-1])])
    return np.array(spans, dtype=np.int64).reshape(-1, 2)


def split_long(found: np.ndarray, max_length_ms: float) -> np.ndarray:
    """Every segment cut into pieces of at most ``max_length_ms`` from its start."""
    pieces = []
    for start, end in np.asarray(found, dtype=np.int64).reshape(-1, 2):
        for piece in range(int(start), int(end), int(max_length_ms)):
            pieces.append([piece, min(piece + int(max_length_ms), int(end))])
    return np.array(pieces, dtype=np.int64).reshape(-1, 2)


def segment(found: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    """The encoder rows' [start_ms, end_ms] for these VAD segments."""
    if opts.merge:
        return merge_vad(found, opts.merge_length_s * 1000)
    return split_long(found, opts.max_segment_s * 1000)


def cut_rows(waveform: np.ndarray, spans: np.ndarray, samp_freq: float = 16000.0) -> list[np.ndarray]:
    """The waveform of each span, as FunASR cuts it: samples [start*sr/1000, min(end*sr/1000, N))."""
    per_ms = samp_freq / 1000
    return [waveform[int(s * per_ms) : min(int(e * per_ms), waveform.size)] for s, e in spans]
