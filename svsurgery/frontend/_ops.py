"""Authoring helpers over onnxscript's GraphBuilder: constants and opset-dependent op forms.

The front end is authored once and emitted at the opset of the encoder it will be fused
with (13 and newer), so every op whose signature changed across opsets (reduction axes
as attribute or input) goes through here.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript import GraphBuilder

__all__ = ["MIN_OPSET", "GraphOps", "subgraph_value"]

MIN_OPSET = 13  # Unsqueeze/Squeeze/ReduceSum take axes as inputs from here on


def subgraph_value(name: str, dtype: ir.DataType, shape: tuple | list | None = ()) -> ir.Value:
    """A typed input or output for ``builder.subgraph`` (Loop/If/Scan bodies): a scalar by
    default, ``[None]`` a vector of unknown length, None a tensor of any shape."""
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=None if shape is None else ir.Shape(list(shape)))


class GraphOps:
    """``self.op`` is the onnxscript op builder; the rest are helpers that know the opset."""

    def __init__(self, graph: ir.Graph, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.builder = GraphBuilder(graph)
        self.op = self.builder.op
        self._constants: dict[tuple, ir.Value] = {}
        self._count = 0

    def const(self, array, dtype=None) -> ir.Value:
        """An initializer holding ``array`` (float64 arrays become float32 unless dtype says)."""
        array = np.asarray(array)
        if dtype is None and array.dtype == np.float64:
            dtype = np.float32
        if dtype is not None:
            array = array.astype(dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        self._count += 1
        while f"const_{self._count}" in self.graph.initializers:  # a graph that already has some (fusing)
            self._count += 1
        name = f"const_{self._count}"
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.dtype = ir.DataType.from_numpy(array.dtype)
        value.shape = ir.Shape(array.shape)
        self.graph.register_initializer(value)
        if key is not None:
            self._constants[key] = value
        return value

    def i64(self, *values: int) -> ir.Value:
        """A 1-D int64 constant."""
        return self.const(np.array(values, dtype=np.int64))

    def scalar_i64(self, value: int) -> ir.Value:
        return self.const(np.array(value, dtype=np.int64))

    def f32(self, value) -> ir.Value:
        return self.const(np.asarray(value, dtype=np.float32))

    def reduce(self, op_type: str, x: ir.Value, axes: list[int], keepdims: bool) -> ir.Value:
        """ReduceMean/ReduceMax/ReduceSumSquare/...: axes as input from opset 18 (ReduceSum: 13)."""
        takes_input = self.opset >= 18 or op_type == "ReduceSum"
        builder = getattr(self.op, op_type)
        if takes_input:
            return builder(x, self.i64(*axes), keepdims=int(keepdims))
        return builder(x, axes=list(axes), keepdims=int(keepdims))

    def dims(self, x: ir.Value, start: int, end: int) -> ir.Value:
        """Sizes of axes start..end-1 as a 1-D int64 tensor (Shape's start/end exist from opset 15)."""
        if self.opset >= 15:
            return self.op.Shape(x, start=start, end=end)
        return self.op.Slice(self.op.Shape(x), self.i64(start), self.i64(end), self.i64(0))

    def dim(self, x: ir.Value, axis: int) -> ir.Value:
        """Size of one axis as a 1-D int64 tensor of one element."""
        return self.dims(x, axis, axis + 1)

    def range_(self, count: ir.Value) -> ir.Value:
        """0 .. count-1 (count a 1-element tensor)."""
        scalar = self.op.Squeeze(count, self.i64(0))
        return self.op.Range(self.scalar_i64(0), scalar, self.scalar_i64(1))
