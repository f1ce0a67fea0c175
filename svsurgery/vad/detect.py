"""One entry point per question about a VAD mode: its segments as ONNX ops, its segments from
an independent implementation (to verify a fusion against), its metadata, its opset."""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np
import onnx_ir as ir

from svsurgery.frontend._ops import MIN_OPSET, GraphOps
from svsurgery.vad.options import EnergyVadOptions, FsmnVadOptions, SileroVadOptions

__all__ = ["VadOptions", "detect_segments", "metadata", "mode", "reference_segments", "required_opset", "vad_model"]

VadOptions = Union[EnergyVadOptions, SileroVadOptions, FsmnVadOptions]


def mode(vad: VadOptions) -> str:
    if isinstance(vad, EnergyVadOptions):
        return "energy"
    if isinstance(vad, SileroVadOptions):
        return "silero"
    if isinstance(vad, FsmnVadOptions):
        return "fsmn"
    raise TypeError(f"not VAD options: {type(vad).__name__}")


def required_opset(vad: VadOptions) -> int:
    """The lowest ai.onnx opset the mode's graph can be authored at."""
    from svsurgery.vad import silero

    if isinstance(vad, SileroVadOptions):
        return silero.MIN_OPSET
    if isinstance(vad, FsmnVadOptions):  # its network is grafted at our opset: at least its own
        from svsurgery.opset import ai_onnx_opset
        from svsurgery.vad.fsmn import load_fsmn_vad

        return max(MIN_OPSET, ai_onnx_opset(load_fsmn_vad(vad).model) or MIN_OPSET)
    return MIN_OPSET


def detect_segments(g: GraphOps, samples: ir.Value, vad: VadOptions) -> ir.Value:
    """[K, 2] int64 [start_ms, end_ms] of the speech in ``samples`` [N]."""
    from svsurgery.vad.energy import energy_flags
    from svsurgery.vad.segment import flags_to_segments
    from svsurgery.vad.silero import silero_segments

    vad.validate()
    if isinstance(vad, EnergyVadOptions):
        return flags_to_segments(g, energy_flags(g, samples, vad), vad.frame_ms)
    if isinstance(vad, SileroVadOptions):
        return silero_segments(g, samples, vad)[2]
    if isinstance(vad, FsmnVadOptions):
        from svsurgery.vad.fsmn import fsmn_segments, load_fsmn_vad

        return fsmn_segments(g, samples, load_fsmn_vad(vad))[1]
    raise TypeError(f"not VAD options: {type(vad).__name__}")


def reference_segments(waveform: np.ndarray, vad: VadOptions) -> tuple[np.ndarray, str]:
    """The mode's segments (ms) from an implementation independent of our graph, and its name."""
    from svsurgery.vad import reference

    if isinstance(vad, EnergyVadOptions):
        return reference.segments(reference.energy_vad(waveform, vad), vad.frame_ms), "svsurgery's numpy energy VAD"
    if isinstance(vad, SileroVadOptions):
        return _silero_reference(waveform, vad)
    if isinstance(vad, FsmnVadOptions):
        return _fsmn_reference(waveform, vad)
    raise TypeError(f"not VAD options: {type(vad).__name__}")


def _silero_reference(waveform: np.ndarray, vad: SileroVadOptions) -> tuple[np.ndarray, str]:
    """silero's own Python (its sequence runner and get_speech_timestamps_from_probs); they
    import torch, so without it the reference is our graph's VAD part run on its own."""
    from svsurgery.vad.silero import silero_model_path, silero_python_timestamps

    path = silero_model_path(vad)
    try:
        from silero_vad.sequence_vad import SileroVADSequence

        probabilities = SileroVADSequence(str(path)).audio_forward(np.ascontiguousarray(waveform, np.float32))
        samples = silero_python_timestamps(probabilities, waveform.size, vad)
    except ImportError:
        return _own_graph_segments(waveform, vad), "the VAD part of the graph run alone (silero's Python needs torch)"
    per_ms = int(vad.samp_freq // 1000)
    milliseconds = np.stack([samples[:, 0] // per_ms, -(-samples[:, 1] // per_ms)], axis=1) if len(samples) else samples
    return milliseconds, "silero-vad's Python (sequence runner + get_speech_timestamps_from_probs)"


def _fsmn_reference(waveform: np.ndarray, vad: FsmnVadOptions) -> tuple[np.ndarray, str]:
    """funasr-onnx's E2EVadModel (driven as FunASR 1.4.16's generate()) on the frame scores of
    the graph's own front end and network (the front end is checked against
    kaldi-native-fbank separately); without funasr-onnx, the VAD part run alone."""
    from svsurgery.errors import MissingDependencyError
    from svsurgery.vad.fsmn import load_fsmn_vad

    try:
        from svsurgery.vad.funasr_reference import e2e_vad_module, funasr_segments

        e2e_vad_module()
    except MissingDependencyError:
        return _own_graph_segments(waveform, vad), "the VAD part of the graph run alone (funasr-onnx not installed)"
    silence = _own_graph_outputs(waveform, vad)[0]
    found = funasr_segments(silence.astype(np.float32)[None, :, None], waveform, load_fsmn_vad(vad))
    return found, "funasr-onnx's E2EVadModel on the graph's frame scores"


def _own_graph_segments(waveform: np.ndarray, vad: VadOptions) -> np.ndarray:
    return _own_graph_outputs(waveform, vad)[-1]


def _own_graph_outputs(waveform: np.ndarray, vad: VadOptions) -> list[np.ndarray]:
    from svsurgery.runtime import inference_session

    return inference_session(vad_model(vad)).run(None, {"samples": np.ascontiguousarray(waveform, np.float32)})


def vad_model(vad: VadOptions) -> ir.Model:
    """The mode's VAD alone: ``samples`` f32 [N] -> (fsmn: ``scores`` [T], the frames' silence
    probability; silero: ``scores`` [F], speech probability per 512 samples) ``segments`` [K, 2] ms."""
    from onnx_ir.passes.common import NameFixPass

    samples = ir.val("samples", ir.DataType.FLOAT, ["samples"])
    opset = required_opset(vad)
    graph = ir.Graph([samples], [], nodes=[], opset_imports={"": opset}, name=f"svsurgery_vad_{mode(vad)}")
    g = GraphOps(graph, opset)
    if isinstance(vad, FsmnVadOptions):
        from svsurgery.vad.fsmn import fsmn_segments, load_fsmn_vad

        outputs = list(fsmn_segments(g, samples, load_fsmn_vad(vad)))
    elif isinstance(vad, SileroVadOptions):
        from svsurgery.vad.silero import silero_segments

        scores, _, found = silero_segments(g, samples, vad)
        outputs = [scores, found]
    else:
        outputs = [detect_segments(g, samples, vad)]
    for value, name in zip(outputs[::-1], ("segments", "scores")):
        value.name = name
    graph.outputs.extend(outputs)
    model = ir.Model(graph, ir_version=8)
    NameFixPass()(model)
    return model


def metadata(vad: VadOptions) -> dict:
    """The options as strict-JSON values (an infinite limit is written "inf")."""
    if isinstance(vad, FsmnVadOptions):
        from svsurgery.vad.fsmn import load_fsmn_vad

        return {"mode": "fsmn", **load_fsmn_vad(vad).metadata()}

    def plain(value):
        return str(value) if isinstance(value, float) and not np.isfinite(value) else value

    return {"mode": mode(vad), **{k: plain(v) for k, v in dataclasses.asdict(vad).items()}}
