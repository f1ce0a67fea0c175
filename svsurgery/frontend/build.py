"""Assemble the front end graph: waveform -> fbank -> LFR -> CMVN -> features."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from svsurgery._version import __version__
from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import MIN_OPSET, GraphOps, subgraph_value
from svsurgery.frontend.cmvn import Cmvn, cmvn_graph
from svsurgery.frontend.fbank import fbank_graph
from svsurgery.frontend.lfr import lfr_graph
from svsurgery.frontend.options import FbankOptions, LfrOptions
from svsurgery.report import dumps

__all__ = [
    "FEATURES",
    "FEATURE_LENGTHS",
    "FULL_SCALE",
    "INPUT_REPORT",
    "NAME_PREFIX",
    "WAVEFORM",
    "WAVEFORM_CLIPPED",
    "WAVEFORM_LENGTHS",
    "WAVEFORM_LENGTHS_USED",
    "WAVEFORM_NONFINITE",
    "build",
    "checked_options",
    "clip_limit",
    "finish_frontend_model",
    "frontend_metadata",
    "frontend_values",
    "min_ir_version",
    "sanitize_waveform",
]

WAVEFORM, WAVEFORM_LENGTHS = "waveform", "waveform_lengths"
FEATURES, FEATURE_LENGTHS = "features", "feature_lengths"
# what the entry did to each row (int64 [B]), see sanitize_waveform
WAVEFORM_NONFINITE, WAVEFORM_CLIPPED, WAVEFORM_LENGTHS_USED = (
    "waveform_nonfinite",
    "waveform_clipped",
    "waveform_lengths_used",
)
INPUT_REPORT = (WAVEFORM_NONFINITE, WAVEFORM_CLIPPED, WAVEFORM_LENGTHS_USED)
FULL_SCALE = 32768.0  # int16 full scale, in the front end's units (after input_scale)
NAME_PREFIX = "svs/frontend/"
DEFAULT_OPSET = 17


def build(
    fbank: FbankOptions | None = None,
    lfr: LfrOptions | None = None,
    cmvn: Cmvn | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    length_dtype: ir.DataType = ir.DataType.INT32,
) -> ir.Model:
    """The front end as a model: ``waveform`` f32 [B, N] and ``waveform_lengths`` i64 [B] in,
    ``features`` f32 [B, T, D] (zero past each row's frames) and ``feature_lengths`` out,
    then what the entry did to each row: ``waveform_nonfinite``, ``waveform_clipped``,
    ``waveform_lengths_used`` (int64 [B], see :func:`sanitize_waveform`).

    Rows of different lengths give the same valid frames as each row alone. ``lfr=None``
    and ``cmvn=None`` leave those stages out. The graph uses ai.onnx ``opset`` (>= 13).
    """
    fbank, dim = checked_options(fbank, lfr, cmvn, opset, length_dtype)
    waveform = ir.val(WAVEFORM, ir.DataType.FLOAT, ["batch", "samples"])
    waveform_lengths = ir.val(WAVEFORM_LENGTHS, ir.DataType.INT64, ["batch"])
    graph = ir.Graph([waveform, waveform_lengths], [], nodes=[], opset_imports={"": opset}, name="svsurgery_frontend")
    g = GraphOps(graph, opset)
    clean, used, report = sanitize_waveform(g, waveform, waveform_lengths, clip_limit(fbank))
    features, lengths = frontend_values(g, clean, used, fbank, lfr, cmvn, length_dtype)
    return finish_frontend_model(
        graph, opset, features, lengths, dim, frontend_metadata(fbank, lfr, cmvn), extra_outputs=report
    )


def clip_limit(fbank: FbankOptions) -> float:
    """The largest sample magnitude the entry lets through: int16 full scale in the front
    end's units, 32768 / |input_scale| (1.0 for SenseVoice's x32768: any int16 recording
    read as x / 32768 is within it, as everything these models were trained on)."""
    return FULL_SCALE / abs(fbank.input_scale)


def sanitize_waveform(
    g: GraphOps, waveform: ir.Value, lengths: ir.Value, limit: float
) -> tuple[ir.Value, ir.Value, list[ir.Value]]:
    """The model's entry, the same for the plain front end and every VAD mode.

    ``waveform`` f32 [B, N], ``lengths`` int [B] -> (clean [B, N], lengths used [B] int64,
    [``waveform_nonfinite``, ``waveform_clipped``, ``waveform_lengths_used``] named int64 [B]):

    - a length is clamped into [0, N] (N, the array's width); ``waveform_lengths_used`` is the
      clamped length, so a row whose length was clamped is the one where it differs from
      ``waveform_lengths``;
    - within a row's length, a NaN or +-inf sample becomes 0 and is counted in
      ``waveform_nonfinite``; a finite sample beyond +-``limit`` (:func:`clip_limit`) is
      clipped to it and counted in ``waveform_clipped``;
    - samples past a row's length become 0 (they were never read: no frame reaches them).

    So every output downstream is finite whatever the samples, each row is computed from its
    own clean samples only (a bad row leaves the others bit for bit as they were), and the
    model's outputs for a waveform with bad samples are its outputs for the cleaned waveform,
    a deployment seeing from the three counts which rows were touched and how.
    """
    op = g.op
    used = op.Min(op.Max(op.Cast(lengths, to=ir.DataType.INT64), g.i64(0)), g.dim(waveform, 1))
    # Clean audio, the usual case, costs three reductions: any NaN or inf makes the sum
    # non-finite (so does an overflow of the sum: then the exact path runs, and finds nothing
    # to do), a sample beyond the limit shows in the maximum or minimum. Past each row's
    # length too, where a bad sample sends the batch the exact way without being counted.
    total = op.ReduceSum(op.Reshape(waveform, g.i64(-1)), g.i64(0), keepdims=0)
    suspect = op.Or(
        op.Not(op.Less(op.Abs(total), g.f32(np.inf))),
        op.Or(
            op.Greater(g.reduce("ReduceMax", waveform, [0, 1], keepdims=False), g.f32(limit)),
            op.Less(g.reduce("ReduceMin", waveform, [0, 1], keepdims=False), g.f32(-limit)),
        ),
    )
    zeros = op.Expand(g.i64(0), op.Shape(used))

    def exact(bop):
        width = bop.Squeeze(bop.Shape(waveform, start=1, end=2) if g.opset >= 15 else g.dim(waveform, 1), g.i64(0))
        positions = bop.Range(g.scalar_i64(0), width, g.scalar_i64(1))  # in the branch: only bad audio pays for it
        valid = bop.Less(bop.Unsqueeze(positions, g.i64(0)), bop.Unsqueeze(used, g.i64(1)))  # [B, N]
        magnitude = bop.Abs(waveform)
        finite = bop.Less(magnitude, g.f32(np.inf))  # NaN compares false

        def count(flags):
            return bop.ReduceSum(bop.Cast(bop.And(valid, flags), to=ir.DataType.INT64), g.i64(1), keepdims=0)

        large = bop.Greater(bop.Where(finite, magnitude, g.f32(0.0)), g.f32(limit))
        clean = bop.Where(bop.And(valid, finite), bop.Clip(waveform, g.f32(-limit), g.f32(limit)), g.f32(0.0))
        return clean, count(bop.Not(finite)), count(large)

    assert waveform.shape is not None, "the waveform input is declared with its shape"
    specs: list[tuple[str, ir.DataType, list]] = [
        ("clean", ir.DataType.FLOAT, list(waveform.shape)),
        ("nonfinite", ir.DataType.INT64, [None]),
        ("clipped", ir.DataType.INT64, [None]),
    ]
    outputs = [subgraph_value(*spec) for spec in specs]
    as_given = g.builder.subgraph(
        lambda bop: (bop.Identity(waveform), bop.Identity(zeros), bop.Identity(zeros)),
        inputs=[],
        outputs=outputs,
        name="clean_waveform",
    )
    cleaned = g.builder.subgraph(
        exact, inputs=[], outputs=[subgraph_value(*spec) for spec in specs], name="sanitized_waveform"
    )
    clean, nonfinite, clipped = op.If(suspect, then_branch=cleaned, else_branch=as_given, _outputs=3)
    clean.dtype, clean.shape = ir.DataType.FLOAT, waveform.shape
    lengths_used = op.Identity(used)
    for value, name in zip((nonfinite, clipped, lengths_used), INPUT_REPORT):
        value.name, value.dtype, value.shape = name, ir.DataType.INT64, ir.Shape(["batch"])
    return clean, used, [nonfinite, clipped, lengths_used]


def checked_options(
    fbank: FbankOptions | None, lfr: LfrOptions | None, cmvn: Cmvn | None, opset: int, length_dtype: ir.DataType
) -> tuple[FbankOptions, int]:
    """The fbank options to use (SenseVoice's by default) and the feature width, or a clear error."""
    fbank = (fbank or FbankOptions.sensevoice()).validate()
    if lfr is not None:
        lfr.validate()
    if opset < MIN_OPSET or opset > onnx.defs.onnx_opset_version():
        raise BadInputError(
            f"opset {opset}: the front end can be built for ai.onnx {MIN_OPSET}..{onnx.defs.onnx_opset_version()}"
        )
    if length_dtype not in (ir.DataType.INT32, ir.DataType.INT64):
        raise BadInputError(f"length dtype {length_dtype}: expected INT32 or INT64")
    dim = fbank.feature_dim * (lfr.m if lfr else 1)
    if cmvn is not None and cmvn.dim != dim:
        raise BadInputError(
            f"CMVN from {cmvn.source} has {cmvn.dim} values, but the features have {dim} "
            f"({fbank.feature_dim} fbank x LFR m={lfr.m if lfr else 1})"
        )
    return fbank, dim


def frontend_values(
    g: GraphOps,
    waveform: ir.Value,
    waveform_lengths: ir.Value,
    fbank: FbankOptions,
    lfr: LfrOptions | None,
    cmvn: Cmvn | None,
    length_dtype: ir.DataType,
) -> tuple[ir.Value, ir.Value]:
    """Features [B, T, D] (zero past each row's frames) and lengths of ``waveform`` rows, as values."""
    features, counts = fbank_graph(g, waveform, waveform_lengths, fbank)
    if lfr is not None:
        features, counts = lfr_graph(g, features, counts, lfr)
    if cmvn is not None:
        features = cmvn_graph(g, features, cmvn)
    features = mask_frames(g, features, counts)
    return features, g.op.Cast(counts, to=length_dtype)


def finish_frontend_model(
    graph: ir.Graph, opset: int, features: ir.Value, lengths: ir.Value, dim: int, metadata: dict, extra_outputs=()
) -> ir.Model:
    """Name, type and prefix everything, make the outputs ``features``, ``feature_lengths``
    (then ``extra_outputs``, already named) and wrap the graph as a model."""
    _prefix_internal_names(graph, keep={v.name for v in extra_outputs})
    features.name, lengths.name = FEATURES, FEATURE_LENGTHS
    features.dtype, features.shape = ir.DataType.FLOAT, ir.Shape(["batch", "frames", dim])
    lengths.shape = ir.Shape(["batch"])
    graph.outputs.extend([features, lengths, *extra_outputs])
    model = ir.Model(graph, ir_version=min_ir_version(opset), producer_name="svsurgery", producer_version=__version__)
    model.metadata_props["svsurgery.frontend"] = dumps(metadata)  # strict JSON, as every record the project writes
    NameFixPass()(model)  # subgraph builders number their values from 0: make every name unique
    return model


def mask_frames(g: GraphOps, features: ir.Value, counts: ir.Value) -> ir.Value:
    """Zero every frame at or past its row's count (Where, so NaN padding cannot leak)."""
    op = g.op
    total = g.dim(features, 1)
    valid = op.Less(op.Unsqueeze(g.range_(total), g.i64(0)), op.Unsqueeze(counts, g.i64(1)))
    return op.Where(op.Unsqueeze(valid, g.i64(2)), features, g.f32(0.0))


def frontend_metadata(fbank: FbankOptions, lfr: LfrOptions | None, cmvn: Cmvn | None) -> dict:
    return {
        "fbank": dataclasses.asdict(fbank),
        "lfr": dataclasses.asdict(lfr) if lfr else None,
        "cmvn": cmvn.source if cmvn else None,
        "svsurgery": __version__,
    }


def min_ir_version(opset: int) -> int:
    """The lowest IR version that carries this ai.onnx opset (older runtimes accept it)."""
    candidates = [ir_v for _, ir_v, ai_onnx, *_ in onnx.helper.VERSION_TABLE if ai_onnx == opset]
    return min(candidates) if candidates else onnx.IR_VERSION


def _prefix_internal_names(graph: ir.Graph, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Everything the front end adds is named svs/frontend/... so it is recognisable after fusing."""
    for node in ir.traversal.RecursiveGraphIterator(graph):
        node.name = NAME_PREFIX + (node.name or node.op_type)
        for output in node.outputs:
            if output.name and not output.name.startswith(NAME_PREFIX) and output.name not in keep:
                output.name = NAME_PREFIX + output.name
    for name in list(graph.initializers):
        if not name.startswith(NAME_PREFIX):
            ir.convenience.rename_values(graph.initializers[name], NAME_PREFIX + name)
