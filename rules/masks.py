"""Mask fill values: -inf and out-of-range constants that mask attention scores become finite.

Attention masks are written as ``Where(mask, -inf, scores)`` (FunASR's ``masked_fill``),
``Where(mask, -3.4e38, scores)`` (Hugging Face's sdpa path) or ``scores + (1 - m) *
finfo(float32).min`` (its eager path). In float16, -1e10 and float32's minimum become
-inf, ``0 * -inf`` is NaN at every unmasked position, and a row whose every score is -inf
gives NaN out of Softmax. This family finds constants that are -inf or below the compute
type's finite range and whose values flow (through Where/Add/Mul/Cast/reshapes) into a
Softmax, and sets them to the compute type's finite minimum: float16's -65504 when the
model computes in float16, float32's minimum for -inf in float32 models. Softmax then
gives exact zeros where it gave ~0 before, and no NaN.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx_ir as ir

from svsurgery.patch import all_graphs
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily

__all__ = ["FAMILY", "mask_constants"]

_FLOWS_TO_SCORES = frozenset(
    {
        "Where",
        "Add",
        "Sub",
        "Mul",
        "Cast",
        "Reshape",
        "Unsqueeze",
        "Squeeze",
        "Expand",
        "Transpose",
        "Concat",
        "Slice",
        "Tile",
        "Identity",
    }
)
_MAX_HOPS = 8


def _constant_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    producer = value.producer()
    if value.is_initializer() and not value.is_graph_input():
        return value.const_value
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value
    return None


def _reaches_softmax(value: ir.Value) -> bool:
    """Does ``value`` flow into a Softmax input through mask-building ops, within a few hops?"""
    frontier, seen = deque([(value, 0)]), set()
    while frontier:
        current, hops = frontier.popleft()
        for use in current.uses():
            node = use.node
            if node.op_type in ("Softmax", "LogSoftmax") and use.idx == 0:
                return True
            if node.op_type in _FLOWS_TO_SCORES and hops < _MAX_HOPS and id(node) not in seen:
                seen.add(id(node))
                frontier.extend((out, hops + 1) for out in node.outputs)
    return False


def mask_constants(model: ir.Model, precision: ir.DataType) -> list[tuple[ir.Value, float]]:
    """(value, its fill) for every constant fill below ``precision``'s finite range that masks scores."""
    lowest = float(np.finfo(precision.numpy()).min)
    found = []
    for graph in all_graphs(model):
        candidates = [n.outputs[0] for n in graph if n.op_type == "Constant"]
        if isinstance(graph, ir.Graph):
            candidates += list(graph.initializers.values())
        for value in candidates:
            tensor = _constant_tensor(value)
            if tensor is None or not tensor.dtype.is_floating_point() or tensor.size == 0:
                continue
            array = tensor.numpy()
            fill = float(array.reshape(-1)[0])
            if not np.all(array == fill) or not fill < lowest:  # one value, below the range (-inf included)
                continue
            if _reaches_softmax(value):
                found.append((value, fill))
    return found


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    precision = options.precision if options.low_precision else ir.DataType.FLOAT
    lowest = float(np.finfo(precision.numpy()).min)
    changed = []
    found = mask_constants(model, precision)
    for value, fill in found:
        tensor = _constant_tensor(value)
        assert tensor is not None, "mask_constants found only values with a constant tensor"
        replacement = ir.tensor(np.full(tensor.shape.numpy(), lowest, dtype=tensor.dtype.numpy()), name=tensor.name)
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant":
            producer.attributes["value"] = ir.AttrTensor("value", replacement)
            producer.metadata_props["svsurgery.rule"] = "mask-fill"
            value.const_value = None
        else:
            value.const_value = replacement
        changed.append(f"'{value.name}' {fill:g} -> {lowest:g}")
    notes = [f"mask fills set to {precision.name}'s finite minimum: {'; '.join(changed[:6])}"] if changed else []
    return Applied(len(changed), notes=notes, changed_values=[value.name for value, _ in found])


FAMILY = RuleFamily(
    id="mask-fill",
    title="attention-mask fills (-inf, -1e10, float32 min) set to the compute type's finite minimum",
    fixes=(
        "-inf or out-of-range mask constants overflow in float16: 0 * -inf = NaN at unmasked positions, "
        "and fully masked rows give NaN out of Softmax"
    ),
    safe_when="the constant only masks scores on their way into a Softmax, where exp of the finite minimum is 0",
    references=(
        "FunASR issue 1889 (NaN in the SANM encoder in fp16)",
        "transformers: finfo(dtype).min attention masks",
    ),
    apply=_apply,
)
