"""kaldi-native-fbank with every option set from FbankOptions (its own defaults differ:
dither 3e-5 and a povey window), for reference pipelines and tests."""

from __future__ import annotations

import numpy as np

from svsurgery.errors import require
from svsurgery.frontend.options import FbankOptions

__all__ = ["available", "fbank", "version"]


def available() -> bool:
    try:
        import kaldi_native_fbank  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    from importlib.metadata import version as package_version

    return f"kaldi-native-fbank {package_version('kaldi-native-fbank')}"


def fbank(waveform: np.ndarray, opts: FbankOptions) -> np.ndarray:
    """[num_frames, feature_dim] float32 features of a 1-D waveform in [-1, 1] (input_scale applied)."""
    knf = require("kaldi_native_fbank", "the kaldi-native-fbank reference")
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
