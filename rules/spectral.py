"""Spectral front ends in float32: a Fourier basis applied to the waveform keeps its float32 weights.

Models that take a raw waveform often compute their spectrogram inside the graph as a Conv
(or a MatMul over frames) whose constant weight is a windowed Fourier basis: every filter a
sinusoid at one DFT bin (silero's ``stft.forward_basis_buffer``, torch.stft exported as
convolution, STFT layers of TF/Keras ports). Rounded to float16 (a relative error of up to
2^-11 per coefficient) the basis is no longer orthogonal: each loud bin leaks into every
other at about -66 dB, and the quiet bins' magnitudes move by a large part of their own size.
On silero's shipped model this alone moves the recurrent ``stateN`` output by 0.062 (max
relative error), beyond the fp16 profile, however the rest is computed. For models that
compute in float16, this family finds every Conv with one input channel and every MatMul
whose constant weight is such a basis (at least 64 taps; nearly all of each non-zero filter's
energy in one DFT bin's main lobe) and marks it to compute in float32 with its weights
kept in float32 (the conversion keeps a weight float32 when every reader computes in float32).
Every graph of the model is searched: If/Loop/Scan bodies and model-local functions alike.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from svsurgery import patch
from svsurgery.precision import keep_in_float32
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily

__all__ = ["FAMILY", "is_fourier_basis"]

MIN_TAPS = 64  # shorter filters are learned convolutions (wav2vec2's first layer has 10 taps), not a basis
MIN_PEAK_ENERGY = 0.9  # of a filter's energy within its strongest DFT bin and two bins either side
_LOBE_BINS = 2  # a Hann window's main lobe reaches its first zeros two bins either side of the tone
MIN_SINUSOIDS = 0.9  # of the non-zero filters


def is_fourier_basis(filters: np.ndarray) -> bool:
    """Are ``filters`` ([M, N], one per row) windowed sinusoids, each at one DFT bin?

    A filter is a sinusoid when at least :data:`MIN_PEAK_ENERGY` of its energy sits in its
    strongest bin of an N-point DFT and the two bins either side (a windowed tone's main lobe;
    near DC the tone's mirror image can be the strongest bin); all-zero filters (the sine rows
    at DC and Nyquist) are not counted.
    """
    if filters.ndim != 2 or filters.shape[1] < MIN_TAPS or filters.shape[0] < 2:
        return False
    power = np.abs(np.fft.rfft(filters.astype(np.float64), axis=1)) ** 2
    total = power.sum(axis=1)
    nonzero = total > 1e-12 * max(float(total.max()), 1e-300)
    if nonzero.sum() < 2:
        return False
    peak = power.argmax(axis=1)
    padded = np.pad(power, ((0, 0), (_LOBE_BINS, _LOBE_BINS)))
    rows = np.arange(power.shape[0])
    lobe = sum(padded[rows, peak + offset] for offset in range(2 * _LOBE_BINS + 1))
    sinusoids = (lobe >= MIN_PEAK_ENERGY * total) & nonzero
    return bool(sinusoids.sum() >= MIN_SINUSOIDS * nonzero.sum())


def _basis(node: ir.Node) -> np.ndarray | None:
    """The filters [M, N] of a Conv with one input channel or of a MatMul by a constant, if constant."""
    if node.op_type == "Conv" and len(node.inputs) >= 2:
        if node.attributes.get_int("group", 1) != 1:
            return None  # a depthwise filter per channel (FSMN memory blocks), not a filter bank on one signal
        weight = ir.convenience.get_const_tensor(node.inputs[1]) if node.inputs[1] is not None else None
        if weight is None or len(weight.shape) != 3 or weight.shape[1] != 1:
            return None
        array = weight.numpy()
        return array.reshape(array.shape[0], array.shape[2])
    if node.op_type == "MatMul" and node.inputs[1] is not None:
        weight = ir.convenience.get_const_tensor(node.inputs[1])
        if weight is None or len(weight.shape) != 2:
            return None
        return weight.numpy().T  # frames [.., N] x [N, M]: the filters are the columns
    return None


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    if not options.low_precision:
        return Applied(0, notes=["the model computes in float32: its spectral front end already does"])
    marked = []
    for graph in patch.all_graphs(model):
        for node in graph:
            filters = _basis(node)
            if filters is not None and np.issubdtype(filters.dtype, np.floating) and is_fourier_basis(filters):
                keep_in_float32(node, f"{FAMILY.id}: a Fourier basis on the waveform, weights kept in float32")
                marked.append(node)
    notes = [
        f"{len(marked)} Fourier {'basis' if len(marked) == 1 else 'bases'} computed in float32: "
        + ", ".join(f"{n.op_type} {n.name}" for n in marked[:4])
    ]
    return Applied(len(marked), notes=notes if marked else [])


FAMILY = RuleFamily(
    id="spectral-fp32",
    title="Fourier bases applied to the waveform (STFT as Conv or MatMul) in float32, weights kept in float32",
    fixes=(
        "a float16 Fourier basis leaks each loud bin into the quiet ones at ~-66 dB: silero's stateN moves 0.062 "
        "(max rel) from the basis rounding alone"
    ),
    safe_when=(
        "a Conv with one input channel or a MatMul whose constant weight (>= 64 taps) is a windowed sinusoid per "
        "filter; float16 models; kept only when parity improves"
    ),
    references=("silero-vad STFT (stft.forward_basis_buffer)", "torch.stft exported as Conv1d"),
    apply=_apply,
    acceptance="improves",
)
