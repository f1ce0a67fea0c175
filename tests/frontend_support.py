"""Helpers for front-end tests: kaldi-native-fbank with identical options, cached graph sessions."""

from __future__ import annotations

import functools

import kaldi_native_fbank as knf
import numpy as np

from svsurgery import frontend
from svsurgery.runtime import inference_session


def knf_fbank(waveform: np.ndarray, opts: frontend.FbankOptions) -> np.ndarray:
    """kaldi-native-fbank with every option set explicitly (its own defaults differ: dither, window)."""
    config = knf.FbankOptions()
    frame, ours = config.frame_opts, opts.frame_opts
    frame.samp_freq = ours.samp_freq
    frame.frame_shift_ms = ours.frame_shift_ms
    frame.frame_length_ms = ours.frame_length_ms
    frame.dither = 0.0
    frame.preemph_coeff = ours.preemph_coeff
    frame.remove_dc_offset = ours.remove_dc_offset
    frame.window_type = ours.window_type
    frame.round_to_power_of_two = ours.round_to_power_of_two
    frame.blackman_coeff = ours.blackman_coeff
    frame.snip_edges = ours.snip_edges
    mel, mel_ours = config.mel_opts, opts.mel_opts
    mel.num_bins = mel_ours.num_bins
    mel.low_freq = mel_ours.low_freq
    mel.high_freq = mel_ours.high_freq
    mel.htk_mode = mel_ours.htk_mode
    config.use_energy = opts.use_energy
    config.energy_floor = opts.energy_floor
    config.raw_energy = opts.raw_energy
    config.htk_compat = opts.htk_compat
    config.use_log_fbank = opts.use_log_fbank
    config.use_power = opts.use_power
    online = knf.OnlineFbank(config)
    online.accept_waveform(ours.samp_freq, (np.asarray(waveform, np.float32) * opts.input_scale).tolist())
    online.input_finished()
    frames = [online.get_frame(i) for i in range(online.num_frames_ready)]
    return np.array(frames, dtype=np.float32).reshape(len(frames), opts.feature_dim)


@functools.lru_cache(maxsize=32)
def session(fbank: frontend.FbankOptions, lfr=None, cmvn_key=None, opset: int = 17):
    cmvn = None if cmvn_key is None else frontend.Cmvn(*cmvn_key_arrays[cmvn_key])
    return inference_session(frontend.build(fbank, lfr, cmvn, opset=opset), intra_op_threads=1)


cmvn_key_arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def graph_features(waveforms, fbank: frontend.FbankOptions, lfr=None, cmvn=None, opset: int = 17):
    """Run the front end on one waveform (1-D) or a list of rows; returns a list of [T_b, D] arrays."""
    single = isinstance(waveforms, np.ndarray) and waveforms.ndim == 1
    rows = [waveforms.astype(np.float32)] if single else [np.asarray(w, np.float32) for w in waveforms]
    width = max(1, max(r.size for r in rows))
    batch = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
        batch[i, : row.size] = row
    cmvn_key = None
    if cmvn is not None:
        cmvn_key = cmvn.source + str(hash(cmvn.shift.tobytes()))
        cmvn_key_arrays[cmvn_key] = (cmvn.shift, cmvn.scale)
    lengths = np.array([r.size for r in rows], np.int64)
    features, counts = session(fbank, lfr, cmvn_key, opset).run(None, {"waveform": batch, "waveform_lengths": lengths})
    return [features[i, : counts[i]] for i in range(len(rows))], features, counts
