"""The reference side: the pipeline a user runs in Python, step by step.

- the VAD in Python: silero-vad's own sequence runner and ``get_speech_timestamps_from_probs``
  (silero mode), funasr-onnx's front end + the fsmn network + FunASR's ``E2EVadModel`` driven as
  FunASR 1.4.16's ``generate()`` drives it (fsmn mode), or the numpy statement of the energy VAD;
- FunASR's segmentation (``merge_vad``, or each segment cut to a maximum) and its slicing of
  the waveform;
- per span, kaldi-native-fbank + LFR + CMVN in numpy (the float64 statement of Kaldi's fbank when
  kaldi-native-fbank is not installed), with the front-end settings of the *reference* model's
  folder (so a deployed model fused with another model's am.mvn differs);
- per span, the reference encoder alone (the original ONNX in onnxruntime, or the PyTorch module),
  as FunASR decodes each span alone.

Or, with ``--golden-dir``, outputs stored earlier for each utterance's stored inputs.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from svsurgery.audit.spec import AuditSpec

__all__ = ["PythonVad", "ReferencePipeline", "SideRun", "whole_span"]


@dataclasses.dataclass
class SideRun:
    """One side's result for one utterance: its spans and, per span, its outputs without the batch axis."""

    spans: np.ndarray  # [K, 2] int64 ms
    rows: list[dict[str, np.ndarray]]
    seconds: float  # time spent on this side
    features: list[np.ndarray] | None = None  # the reference's features per span (encoder models are fed them)
    pieces: list[np.ndarray] | None = None  # the waveform of each span


def whole_span(samples: int, rate: int) -> np.ndarray:
    """One span covering the whole recording, in ms (end rounded up)."""
    return np.array([[0, math.ceil(samples * 1000 / rate)]], dtype=np.int64)


class PythonVad:
    """The spec's VAD mode as a user runs it in Python (see the module docstring)."""

    def __init__(self, options) -> None:
        from svsurgery.vad.detect import mode

        self.options = options
        self.mode = mode(options)
        if self.mode == "silero":
            from silero_vad.sequence_vad import SileroVADSequence

            from svsurgery.vad.silero import silero_model_path

            self.runner = SileroVADSequence(str(silero_model_path(options)))
            self.description = "silero-vad's Python (sequence runner + get_speech_timestamps_from_probs)"
        elif self.mode == "fsmn":
            from svsurgery.vad.fsmn import load_fsmn_vad
            from svsurgery.vad.funasr_reference import FunasrOnnxFsmnVad

            self.fsmn = load_fsmn_vad(options)
            self.pipeline = FunasrOnnxFsmnVad(options.folder)
            self.description = "funasr-onnx's WavFrontend + the fsmn network + E2EVadModel (FunASR 1.4.16's generate())"
        else:
            self.description = "the energy VAD's numpy statement (svsurgery.vad.reference)"

    def segments(self, waveform: np.ndarray) -> np.ndarray:
        """[K, 2] int64 ms of the speech in ``waveform``."""
        if self.mode == "silero":
            from svsurgery.vad.silero import silero_python_timestamps

            probabilities = self.runner.audio_forward(np.ascontiguousarray(waveform, np.float32))
            samples = silero_python_timestamps(probabilities, waveform.size, self.options)
            per_ms = int(self.options.samp_freq // 1000)
            if not len(samples):
                return samples.reshape(0, 2)
            return np.stack([samples[:, 0] // per_ms, -(-samples[:, 1] // per_ms)], axis=1).astype(np.int64)
        if self.mode == "fsmn":
            return self._fsmn_segments(waveform)
        from svsurgery.vad import reference

        return reference.segments(reference.energy_vad(waveform, self.options), self.options.frame_ms)

    def _fsmn_segments(self, waveform: np.ndarray) -> np.ndarray:
        from svsurgery.vad.funasr_reference import funasr_segments

        pipeline = self.pipeline
        fbank, _ = pipeline.frontend.fbank(waveform)
        features, count = pipeline.frontend.lfr_cmvn(fbank)
        if int(count) == 0:
            return np.zeros((0, 2), np.int64)
        caches = [np.zeros(pipeline.cache_shape, np.float32) for _ in range(pipeline.cache_count)]
        names = [i.name for i in pipeline.session.get_inputs()]
        scores = pipeline.session.run(None, dict(zip(names, [features[None].astype(np.float32), *caches])))[0]
        return funasr_segments(scores, waveform, self.fsmn)


class ReferencePipeline:
    """The reference side of one worker (one encoder session or torch module, one VAD)."""

    def __init__(self, spec: AuditSpec) -> None:
        self.spec = spec
        self.vad = PythonVad(spec.vad) if spec.vad is not None else None
        reference = spec.reference
        self.session = self.module = None
        if reference.kind == "onnx":
            self.session = spec.setting.session(reference.path)
        elif reference.kind == "torch":
            import torch

            from svsurgery.parity.references import TorchReference
            from svsurgery.torchspec import load_module

            torch.set_num_threads(1)
            features, lengths = spec.reference_inputs
            names = [features, *([lengths] if lengths else []), *(o.name for o in spec.others)]
            self.module = TorchReference(load_module(reference.torch, reference.weights), spec.outputs, names)
        from svsurgery.frontend import knf

        self.use_knf = knf.available()

    @property
    def frontend_description(self) -> str:
        from svsurgery.frontend import knf

        return (knf.version() if self.use_knf else "the float64 Kaldi fbank statement (kaldi-native-fbank not installed)") + " + LFR + CMVN in numpy"

    def spans(self, waveform: np.ndarray) -> np.ndarray:
        """The encoder rows' [start_ms, end_ms]: the VAD's segments, merged or cut as FunASR does."""
        if self.vad is None:
            return whole_span(waveform.size, self.spec.sample_rate)
        from svsurgery.vad import reference

        return reference.segment(self.vad.segments(waveform), self.spec.segmentation)

    def stacked(self, piece: np.ndarray) -> np.ndarray:
        """[T, D]: kaldi-native-fbank + LFR of one span's samples (before CMVN)."""
        from svsurgery.frontend import knf, reference

        config = self.spec.frontend
        if piece.size == 0:
            return np.zeros((0, config.fbank.feature_dim * config.lfr.m), np.float32)
        fbank = knf.fbank(piece, config.fbank) if self.use_knf else reference.fbank(piece, config.fbank)
        return reference.apply_lfr(fbank, config.lfr)

    def features(self, piece: np.ndarray) -> np.ndarray:
        """[T, D] float32: kaldi-native-fbank + LFR + CMVN of one span's samples."""
        from svsurgery.frontend import reference

        config = self.spec.frontend
        stacked = self.stacked(piece)
        if config.cmvn is not None:
            stacked = reference.apply_cmvn(stacked, config.cmvn.shift, config.cmvn.scale)
        return stacked.astype(np.float32)

    def encoder(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The reference encoder on one span alone; outputs without the batch axis."""
        spec = self.spec
        name, lengths = spec.reference_inputs
        feeds = {name: features[None]}
        if lengths:
            feeds[lengths] = np.array([features.shape[0]], spec.reference_length_dtype)
        feeds.update({o.name: o.zeros() for o in spec.others})
        if self.session is not None:
            values = dict(zip(spec.outputs, self.session.run(list(spec.outputs), feeds)))
        else:
            values = self.module.outputs(feeds)
        return {k: np.asarray(v)[0] if np.ndim(v) else np.asarray(v) for k, v in values.items()}

    def run(self, waveform: np.ndarray) -> SideRun:
        from svsurgery.vad import reference

        start = time.perf_counter()
        spans = self.spans(waveform)
        pieces = reference.cut_rows(waveform, spans, self.spec.sample_rate) if self.vad is not None else [waveform]
        features = [self.features(piece) for piece in pieces]
        rows = [self.encoder(f) for f in features]
        return SideRun(spans, rows, time.perf_counter() - start, features, pieces)
