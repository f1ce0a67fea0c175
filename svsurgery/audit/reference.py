"""The reference side: the pipeline a user runs in Python, step by step.

- the VAD in Python, as the mode's own end-to-end reference gives it: silero-vad's sequence
  runner and ``get_speech_timestamps_from_probs`` (silero mode; ``OnnxWrapper`` and
  ``get_speech_timestamps`` for a streaming model), funasr-onnx's front end + the fsmn network +
  FunASR's ``E2EVadModel`` driven as FunASR 1.4.16's ``generate()`` drives it (fsmn mode), or
  the numpy statement of the energy VAD;
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
from svsurgery.frontend import knf
from svsurgery.frontend import numpy_statement as frontend_statement
from svsurgery.frontend.config import FrontendConfig
from svsurgery.parity.references import TorchReference
from svsurgery.torchspec import load_module
from svsurgery.vad import numpy_statement as vad_statement

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
    """The spec's VAD mode as a user runs it in Python: the mode's own end-to-end reference
    (:meth:`svsurgery.vad.mode.VadMode.reference` with ``pipeline=True``; see the module docstring)."""

    def __init__(self, options) -> None:
        self.options = options
        self.mode = options.name
        reference = options.reference(pipeline=True)
        self.description = reference.description
        self._segments = reference.segments

    def segments(self, waveform: np.ndarray) -> np.ndarray:
        """[K, 2] int64 ms of the speech in ``waveform``."""
        return self._segments(waveform)


class ReferencePipeline:
    """The reference side of one worker (one encoder session or torch module, one VAD)."""

    def __init__(self, spec: AuditSpec) -> None:
        self.spec = spec
        self.vad = PythonVad(spec.vad) if spec.vad is not None else None
        reference = spec.reference
        self.session = self.module = None
        if reference.kind == "onnx":
            assert reference.path is not None, "an onnx reference names its model"
            self.session = spec.setting.session(reference.path)
        elif reference.kind == "torch":
            assert reference.torch is not None, "a torch reference names its module"
            import torch  # optional: only a torch reference needs it

            torch.set_num_threads(1)
            features, lengths = spec.reference_inputs
            names = [features, *([lengths] if lengths else []), *(o.name for o in spec.others)]
            self.module = TorchReference(load_module(reference.torch, reference.weights), spec.outputs, names)
        self.use_knf = knf.available()

    @property
    def frontend_description(self) -> str:
        return (
            knf.version() if self.use_knf else "the float64 Kaldi fbank statement (kaldi-native-fbank not installed)"
        ) + " + LFR + CMVN in numpy"

    def spans(self, waveform: np.ndarray) -> np.ndarray:
        """The encoder rows' [start_ms, end_ms]: the VAD's segments, merged or cut as FunASR does."""
        if self.vad is None:
            return whole_span(waveform.size, self.spec.sample_rate)
        return vad_statement.segment(self.vad.segments(waveform), self.spec.segmentation)

    def _frontend(self) -> FrontendConfig:
        config = self.spec.frontend
        assert config is not None, "only a golden reference has no front end, and it builds no pipeline"
        return config

    def stacked(self, piece: np.ndarray) -> np.ndarray:
        """[T, D]: kaldi-native-fbank + LFR of one span's samples (before CMVN)."""
        config = self._frontend()
        if piece.size == 0:
            return np.zeros((0, config.fbank.feature_dim * config.lfr.m), np.float32)
        fbank = knf.fbank(piece, config.fbank) if self.use_knf else frontend_statement.fbank(piece, config.fbank)
        return frontend_statement.apply_lfr(fbank, config.lfr)

    def features(self, piece: np.ndarray) -> np.ndarray:
        """[T, D] float32: kaldi-native-fbank + LFR + CMVN of one span's samples."""
        config = self._frontend()
        stacked = self.stacked(piece)
        if config.cmvn is not None:
            stacked = frontend_statement.apply_cmvn(stacked, config.cmvn.shift, config.cmvn.scale)
        return stacked.astype(np.float32)

    def encoder(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The reference encoder on one span alone; outputs without the batch axis."""
        spec = self.spec
        feeds = spec.span_feeds(features, "reference")
        if self.session is not None:
            values = dict(zip(spec.outputs, self.session.run(list(spec.outputs), feeds)))
        else:
            assert self.module is not None, "a pipeline has an encoder session or a torch module"
            values = self.module.outputs(feeds)
        return {k: np.asarray(v)[0] if np.ndim(v) else np.asarray(v) for k, v in values.items()}

    def run(self, waveform: np.ndarray) -> SideRun:
        start = time.perf_counter()
        spans = self.spans(waveform)
        pieces = vad_statement.cut_rows(waveform, spans, self.spec.sample_rate) if self.vad is not None else [waveform]
        features = [self.features(piece) for piece in pieces]
        rows = [self.encoder(f) for f in features]
        return SideRun(spans, rows, time.perf_counter() - start, features, pieces)
