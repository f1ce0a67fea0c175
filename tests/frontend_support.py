"""Helpers for front-end tests: kaldi-native-fbank with identical options, cached graph sessions."""

from __future__ import annotations

import functools

import numpy as np

from svsurgery import frontend
from svsurgery.frontend import knf as knf_reference
from svsurgery.runtime import inference_session


def knf_fbank(waveform: np.ndarray, opts: frontend.FbankOptions) -> np.ndarray:
    return knf_reference.fbank(waveform, opts)


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
    features, counts = session(fbank, lfr, cmvn_key, opset).run(
        ["features", "feature_lengths"], {"waveform": batch, "waveform_lengths": lengths}
    )
    return [features[i, : counts[i]] for i in range(len(rows))], features, counts
