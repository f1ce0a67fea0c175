"""Assemble the front end graph: waveform -> fbank -> LFR -> CMVN -> features."""

from __future__ import annotations

import dataclasses
import json

import onnx
import onnx_ir as ir

from svsurgery._version import __version__
from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import MIN_OPSET, GraphOps
from svsurgery.frontend.cmvn import Cmvn, cmvn_graph
from svsurgery.frontend.fbank import fbank_graph
from svsurgery.frontend.lfr import lfr_graph
from svsurgery.frontend.options import FbankOptions, LfrOptions

__all__ = [
    "FEATURES",
    "FEATURE_LENGTHS",
    "NAME_PREFIX",
    "WAVEFORM",
    "WAVEFORM_LENGTHS",
    "build",
    "checked_options",
    "finish_frontend_model",
    "frontend_metadata",
    "frontend_values",
    "min_ir_version",
]

WAVEFORM, WAVEFORM_LENGTHS = "waveform", "waveform_lengths"
FEATURES, FEATURE_LENGTHS = "features", "feature_lengths"
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
    ``features`` f32 [B, T, D] (zero past each row's frames) and ``feature_lengths`` out.

    Rows of different lengths give the same valid frames as each row alone. ``lfr=None``
    and ``cmvn=None`` leave those stages out. The graph uses ai.onnx ``opset`` (>= 13).
    """
    fbank, dim = checked_options(fbank, lfr, cmvn, opset, length_dtype)
    waveform = ir.val(WAVEFORM, ir.DataType.FLOAT, ["batch", "samples"])
    waveform_lengths = ir.val(WAVEFORM_LENGTHS, ir.DataType.INT64, ["batch"])
    graph = ir.Graph([waveform, waveform_lengths], [], nodes=[], opset_imports={"": opset}, name="svsurgery_frontend")
    g = GraphOps(graph, opset)
    features, lengths = frontend_values(g, waveform, waveform_lengths, fbank, lfr, cmvn, length_dtype)
    return finish_frontend_model(graph, opset, features, lengths, dim, frontend_metadata(fbank, lfr, cmvn))


def checked_options(
    fbank: FbankOptions | None, lfr: LfrOptions | None, cmvn: Cmvn | None, opset: int, length_dtype: ir.DataType
) -> tuple[FbankOptions, int]:
    """The fbank options to use (SenseVoice's by default) and the feature width, or a clear error."""
    fbank = (fbank or FbankOptions.sensevoice()).validate()
    if lfr is not None:
        lfr.validate()
    if opset < MIN_OPSET or opset > onnx.defs.onnx_opset_version():
        raise BadInputError(f"opset {opset}: the front end can be built for ai.onnx {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
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
    model.metadata_props["svsurgery.frontend"] = json.dumps(metadata, sort_keys=True)
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


def _prefix_internal_names(graph: ir.Graph, keep: set[str] = frozenset()) -> None:
    """Everything the front end adds is named svs/frontend/... so it is recognisable after fusing."""
    for node in ir.traversal.RecursiveGraphIterator(graph):
        node.name = NAME_PREFIX + (node.name or node.op_type)
        for output in node.outputs:
            if output.name and not output.name.startswith(NAME_PREFIX) and output.name not in keep:
                output.name = NAME_PREFIX + output.name
    for name in list(graph.initializers):
        if not name.startswith(NAME_PREFIX):
            ir.convenience.rename_values(graph.initializers[name], NAME_PREFIX + name)
