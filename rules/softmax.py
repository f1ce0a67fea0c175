"""Softmax precision: Softmax and the score path feeding it compute in float32, and fully
masked rows give 0, not NaN ("safe softmax").

In float16, attention scores with a mask added (or filled in by Where) and scaled lose
most of their resolution near the row maximum, and exp/sum of a long row rounds badly.
For models that compute in float16, this family marks each Softmax, the scale (Mul/Div),
mask (Add/Where) and shape ops between it and the MatMul that makes the scores, and the
Where/Mul that re-zeroes masked positions after it, to compute in float32: the float16
conversion casts once into the region and once out. It also makes the Softmax safe: a
row whose scores are all -inf gives NaN, which ``Where(IsNaN(y), 0, y)`` turns into the
zeros the masked row means. Float32 models are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from svsurgery import patch
from svsurgery.precision import keep_in_float32
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily

__all__ = ["FAMILY", "score_path"]

_SCORE_PATH = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Where",
        "Cast",
        "Reshape",
        "Transpose",
        "Unsqueeze",
        "Squeeze",
        "Expand",
        "Identity",
    }
)
_SCORE_SOURCES = frozenset({"MatMul", "Gemm", "Einsum", "FusedMatMul"})
_AFTER = frozenset({"Where", "Mul", "Cast"})
_MAX_DEPTH = 6
_PREFIX = "svs/rule/softmax-fp32"


def score_path(softmax: ir.Node) -> list[ir.Node]:
    """The nodes between the scores' MatMul and the Softmax (scale, mask, shape ops), nearest
    first; empty when the input does not come from a MatMul within a few ops."""
    path: list[ir.Node] = []
    current = softmax.inputs[0]
    for _ in range(_MAX_DEPTH):
        node = current.producer() if current is not None else None
        if node is None:
            return []
        if node.op_type in _SCORE_SOURCES:
            return path
        if node.op_type not in _SCORE_PATH:
            return []
        path.append(node)
        # follow the float operand that is not a constant or a mask (the scores)
        operands = [v for v in node.inputs if v is not None and v.dtype != ir.DataType.BOOL and not _constant(v)]
        if not operands:
            return []
        current = max(operands, key=lambda v: _depth_to_matmul(v))
    return []


def _constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.is_initializer() or (producer is not None and producer.op_type == "Constant")


def _depth_to_matmul(value: ir.Value) -> int:
    """1 when ``value`` comes from a MatMul within a few ops (the scores), 0 otherwise (a mask)."""
    current = value
    for _ in range(_MAX_DEPTH):
        node = current.producer() if current is not None else None
        if node is None:
            return 0
        if node.op_type in _SCORE_SOURCES:
            return 1
        floats = [v for v in node.inputs if v is not None and not _constant(v)]
        if not floats:
            return 0
        current = floats[0]
    return 0


def _make_safe(graph: ir.Graph | ir.Function, softmax: ir.Node) -> list[ir.Node]:
    """y -> Where(IsNaN(y), 0, y) for every reader of the Softmax output."""
    y = softmax.outputs[0]
    name = f"{_PREFIX}{softmax.name or '/Softmax'}"
    is_nan = ir.Node("", "IsNaN", [y], name=f"{name}/IsNaN")
    zero = ir.Node(
        "",
        "Constant",
        [],
        attributes=[ir.AttrTensor("value", ir.tensor(np.array(0, dtype=(y.dtype or ir.DataType.FLOAT).numpy())))],
        name=f"{name}/zero",
    )
    safe = ir.Node("", "Where", [is_nan.outputs[0], zero.outputs[0], y], name=f"{name}/Where")
    for value, suffix in ((is_nan.outputs[0], "is_nan"), (zero.outputs[0], "zero"), (safe.outputs[0], "safe")):
        value.name = f"{name}/{suffix}"
    is_nan.outputs[0].dtype = ir.DataType.BOOL
    if y.dtype is not None:
        safe.outputs[0].dtype, safe.outputs[0].shape = y.dtype, y.shape
        zero.outputs[0].dtype = y.dtype
    graph.insert_after(softmax, [is_nan, zero, safe])
    for use in list(y.uses()):
        if use.node is not is_nan and use.node is not safe:
            use.node.replace_input_with(use.idx, safe.outputs[0])
    if y.is_graph_output():
        graph.outputs[list(graph.outputs).index(y)] = safe.outputs[0]
        safe.outputs[0].name, y.name = y.name, f"{name}/unsafe"
    return [is_nan, zero, safe]


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    if not options.low_precision:
        return Applied(0, notes=["the model computes in float32: Softmax already does (see svsurgery fp16)"])
    softmaxes = [n for g in patch.all_graphs(model) for n in g if n.op_type == "Softmax"]
    patch.infer_types(model, only_if_missing=[v for n in softmaxes for v in (*n.inputs, *n.outputs)])
    count, marked = 0, 0
    for graph in patch.all_graphs(model):
        for softmax in [n for n in graph if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]:
            if softmax.metadata_props.get("svsurgery.rule") == FAMILY.id:
                continue  # made safe already
            region = [softmax, *score_path(softmax)]
            safe_nodes = _make_safe(graph, softmax)
            region += safe_nodes
            readers = [use.node for use in safe_nodes[-1].outputs[0].uses()]
            region += [n for n in readers if n.op_type in _AFTER]  # re-zeroing masked positions
            for node in region:
                keep_in_float32(node, f"{FAMILY.id}: Softmax and its score path")
            softmax.metadata_props["svsurgery.rule"] = FAMILY.id
            count += 1
            marked += len(region)
    notes = [f"{count} Softmax made safe; {marked} nodes (score paths included) compute in float32"] if count else []
    return Applied(count, notes=notes)


FAMILY = RuleFamily(
    id="softmax-fp32",
    title="Softmax and its score path in float32 in float16 models; fully masked rows give 0, not NaN",
    fixes="float16 Softmax loses resolution near the row maximum; all -inf rows give NaN",
    safe_when="float16 models (svsurgery fp16, or a float16 export); kept only when parity improves",
    references=("FunASR issue 1889 (NaN in the SANM encoder in fp16)",),
    apply=_apply,
    acceptance="improves",
)
