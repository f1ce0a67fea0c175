"""The VAD front end as a model: one waveform in, the features of each segment out.

    waveform f32 [1, N] (samples in [-1, 1]), waveform_lengths i64 [1]
      -> VAD flags per frame -> segments -> spans (merged, or cut to a maximum)
      -> rows [K, Lmax] cut from the waveform -> fbank / LFR / CMVN per row
      -> features f32 [K, T, D], feature_lengths [K], segments i64 [K, 2] (ms),
         waveform_nonfinite / waveform_clipped / waveform_lengths_used i64 [1]

The waveform goes through the same entry as the plain front end
(:func:`svsurgery.frontend.build.sanitize_waveform`) before the VAD sees it.

One recording per call, as FunASR's generate() processes one input at a time: the batch
axis of the waveform is fixed at 1. No speech gives K = 0 and empty outputs.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import GraphOps
from svsurgery.frontend.build import (
    DEFAULT_OPSET,
    WAVEFORM,
    WAVEFORM_LENGTHS,
    checked_options,
    clip_limit,
    finish_frontend_model,
    frontend_metadata,
    frontend_values,
    sanitize_waveform,
)
from svsurgery.frontend.cmvn import Cmvn
from svsurgery.frontend.options import FbankOptions, LfrOptions
from svsurgery.vad.mode import VadMode
from svsurgery.vad.options import SegmentOptions
from svsurgery.vad.segment import cut_rows, segment_spans

__all__ = ["SEGMENTS", "build_vad_frontend"]

SEGMENTS = "segments"


def build_vad_frontend(
    vad: VadMode,
    segmentation: SegmentOptions | None = None,
    fbank: FbankOptions | None = None,
    lfr: LfrOptions | None = None,
    cmvn: Cmvn | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    length_dtype: ir.DataType = ir.DataType.INT32,
) -> ir.Model:
    """The VAD + segmentation + front end model (see the module docstring)."""
    segmentation = (segmentation or SegmentOptions()).validate()
    fbank, dim = checked_options(fbank, lfr, cmvn, opset, length_dtype)
    vad = vad.validate()
    if opset < vad.required_opset():
        raise BadInputError(f"the {vad.name} VAD needs ai.onnx opset {vad.required_opset()} or newer, not {opset}")
    if vad.samp_freq != fbank.frame_opts.samp_freq:
        raise BadInputError(f"the VAD runs at {vad.samp_freq} Hz but the fbank at {fbank.frame_opts.samp_freq} Hz")
    waveform = ir.val(WAVEFORM, ir.DataType.FLOAT, [1, "samples"])
    waveform_lengths = ir.val(WAVEFORM_LENGTHS, ir.DataType.INT64, [1])
    graph = ir.Graph(
        [waveform, waveform_lengths], [], nodes=[], opset_imports={"": opset}, name="svsurgery_vad_frontend"
    )
    g = GraphOps(graph, opset)
    op = g.op
    clean, length, report = sanitize_waveform(g, waveform, waveform_lengths, clip_limit(fbank))
    samples = op.Slice(op.Squeeze(clean, g.i64(0)), g.i64(0), length, g.i64(0))  # [N] of the one recording
    found = vad.graph(g, samples).segments
    spans = segment_spans(g, found, segmentation)
    rows, row_lengths = cut_rows(g, samples, spans, vad.samp_freq)
    # no speech: one empty row, cut off after the front end (its shapes need a batch of at least one)
    count = g.dim(spans, 0)
    missing = op.Sub(op.Max(count, g.i64(1)), count)
    rows = op.Pad(rows, op.Concat(g.i64(0, 0), missing, g.i64(0), axis=0))
    row_lengths = op.Pad(row_lengths, op.Concat(g.i64(0), missing, axis=0))
    features, lengths = frontend_values(g, rows, row_lengths, fbank, lfr, cmvn, length_dtype)
    features = op.Slice(features, g.i64(0), count, g.i64(0))
    lengths = op.Slice(lengths, g.i64(0), count, g.i64(0))
    spans = op.Identity(spans)
    spans.name, spans.dtype, spans.shape = SEGMENTS, ir.DataType.INT64, ir.Shape(["batch", 2])
    metadata = {
        **frontend_metadata(fbank, lfr, cmvn),
        "vad": vad.metadata(),
        "segmentation": dataclasses.asdict(segmentation),
    }
    return finish_frontend_model(graph, opset, features, lengths, dim, metadata, extra_outputs=[spans, *report])
