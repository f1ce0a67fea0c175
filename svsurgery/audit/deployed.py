"""The deployed side: the model under audit, run as it is deployed (one onnxruntime session).

- a fused model with a VAD (``fuse-preproc --vad``: waveform in, one output row per span and
  ``segments`` [K, 2] ms) gets the recording, once;
- a fused model without one gets the recording as a batch of one: one span, the whole of it;
- an encoder (features in) gets the reference front end's features of each span, one span per
  call, as the reference encoder does.
"""

from __future__ import annotations

import time

import numpy as np

from svsurgery.audit.reference import SideRun, whole_span
from svsurgery.audit.spec import ENCODER, FUSED, FUSED_VAD, AuditSpec, RuntimeSetting

__all__ = ["WAVEFORM", "WAVEFORM_LENGTHS", "DeployedModel", "fused_feeds"]

WAVEFORM, WAVEFORM_LENGTHS, SEGMENTS = "waveform", "waveform_lengths", "segments"


def fused_feeds(spec: AuditSpec, waveform: np.ndarray) -> dict[str, np.ndarray]:
    """A fused model's inputs for one recording (its other inputs zeros)."""
    feeds: dict[str, np.ndarray] = {
        WAVEFORM: np.ascontiguousarray(waveform, np.float32)[None],
        WAVEFORM_LENGTHS: np.array([waveform.size], np.int64),
    }
    feeds.update({o.name: o.zeros() for o in spec.others})
    return feeds


class DeployedModel:
    def __init__(self, spec: AuditSpec, setting: RuntimeSetting | None = None) -> None:
        self.spec = spec
        self.setting = setting or spec.setting
        self.session = self.setting.session(spec.model)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, waveform: np.ndarray) -> dict[str, np.ndarray]:
        return fused_feeds(self.spec, waveform)

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def run(self, waveform: np.ndarray, reference: SideRun | None = None) -> SideRun:
        """This utterance through the model (an encoder gets ``reference``'s features per span)."""
        spec = self.spec
        if spec.model_kind == ENCODER:
            assert reference is not None and reference.features is not None, (
                "an encoder is fed the reference's features"
            )
            start = time.perf_counter()
            rows = [self.encoder(features) for features in reference.features]
            return SideRun(reference.spans, rows, time.perf_counter() - start)
        start = time.perf_counter()
        outputs = self.run_feeds(self.feeds(waveform))
        seconds = time.perf_counter() - start
        return self.side_run(outputs, waveform.size, seconds)

    def side_run(self, outputs: dict[str, np.ndarray], samples: int, seconds: float) -> SideRun:
        """Per-span rows of a fused model's outputs."""
        spec = self.spec
        if spec.model_kind == FUSED_VAD:
            spans = np.asarray(outputs[SEGMENTS], np.int64).reshape(-1, 2)
        else:
            assert spec.model_kind == FUSED
            spans = whole_span(samples, spec.sample_rate)
        rows = [{name: np.asarray(outputs[name])[k] for name in spec.outputs} for k in range(len(spans))]
        return SideRun(spans, rows, seconds)

    def encoder(self, features: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.spec
        values = self.session.run(list(spec.outputs), spec.span_feeds(features, "deployed"))
        return {k: np.asarray(v)[0] for k, v in zip(spec.outputs, values)}
