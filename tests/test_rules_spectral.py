"""spectral-fp32: a Fourier basis applied to the waveform keeps float32 weights in float16 models."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import svsurgery
from svsurgery.precision import kept_in_float32
from svsurgery.rules import CATALOG
from svsurgery.rules.spectral import FAMILY, is_fourier_basis

FP16_MAX_REL = 0.05  # the fp16 profile's bound


def _dft_basis(n_fft: int, window: np.ndarray) -> np.ndarray:
    """[2 (n_fft/2 + 1), n_fft]: windowed cos then sin rows, as torch.stft exported as Conv1d."""
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(n_fft)[None, :]
    padded = np.pad(window, (0, n_fft - window.size))
    return np.concatenate([np.cos(2 * np.pi * k * n / n_fft), -np.sin(2 * np.pi * k * n / n_fft)]) * padded


def test_fourier_bases_are_told_from_learned_filters():
    rng = np.random.default_rng(0)
    assert is_fourier_basis(_dft_basis(256, np.hanning(256)))
    assert is_fourier_basis(_dft_basis(512, np.hamming(400)))  # Kaldi's 25 ms window in a 512-point frame
    assert not is_fourier_basis(rng.standard_normal((64, 400)))  # learned filters
    assert not is_fourier_basis(_dft_basis(32, np.hanning(32)))  # too short to be a spectral front end
    assert not is_fourier_basis(np.zeros((10, 256)))


@pytest.fixture(scope="module")
def silero():
    from svsurgery.testing.third_party import silero_model

    return silero_model()


def test_silero_fp16_needs_its_stft_basis_in_float32(silero):
    """Guards: silero's shipped model failed `svsurgery fp16` (stateN max rel 0.117 > 0.05) because its
    STFT basis was rounded to float16; with spectral-fp32 it is within the fp16 profile, and only the
    STFT Convs compute in float32 (both If branches: 16 kHz and 8 kHz)."""
    without = [family for family in CATALOG if family.id != FAMILY.id]
    _, report = svsurgery.fix(svsurgery.load(silero), without, precision=ir.DataType.FLOAT16)
    state = next(o for o in report.final.outputs if o.name == "stateN")
    assert not report.passed and state.max_rel > FP16_MAX_REL

    half, report = svsurgery.fix(svsurgery.load(silero), precision=ir.DataType.FLOAT16)
    assert report.passed, report.final.failures()
    step = next(s for s in report.steps if s.family == FAMILY.id)
    assert step.status == "accepted" and step.matches == 2
    state = next(o for o in report.final.outputs if o.name == "stateN")
    assert state.max_rel < FP16_MAX_REL and state.cosine > 0.99999
    kept = [n for g in svsurgery.patch.all_graphs(half) for n in g if kept_in_float32(n)]
    assert {n.op_type for n in kept} == {"Conv"} and all("stft" in n.name for n in kept)
    # the basis stays float32 in the written model, the rest is float16
    weights = {n.inputs[1].dtype for n in kept}
    assert weights == {ir.DataType.FLOAT}


def test_float32_models_are_left_alone(silero):
    _, report = svsurgery.fix(svsurgery.load(silero), [FAMILY])
    step = report.steps[0]
    assert step.matches == 0 and "float32" in " ".join(step.notes)


def test_only_filter_banks_on_one_signal_are_marked():
    """A one-channel Conv by a Fourier basis is marked; the same filters as a depthwise Conv
    (group > 1: one filter per channel, as FSMN memory blocks are) and random filters are not."""
    from onnx import TensorProto, helper, numpy_helper

    from svsurgery.rules.base import ApplyOptions

    basis = _dft_basis(64, np.hanning(64))[:4]  # 4 filters: cos at bins 0..3

    def conv_model(weight: np.ndarray, group: int) -> ir.Model:
        channels = weight.shape[0] if group > 1 else 1
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], group=group, name="/stft/Conv")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 256])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight[:, None, :].astype(np.float32), "w")],
        )
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    half = ApplyOptions(precision=ir.DataType.FLOAT16)
    assert FAMILY.apply(conv_model(basis, 1), half).matches == 1
    assert FAMILY.apply(conv_model(basis, 4), half).matches == 0
    random_filters = np.random.default_rng(1).standard_normal((4, 64))
    assert FAMILY.apply(conv_model(random_filters, 1), half).matches == 0
