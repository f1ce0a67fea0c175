"""The float64 shadow of a model: the same graph with every floating-point tensor in double.

A PyTorch-free stand-in for the exact math of a model whose exporter nobody here
controls: initializers, constants, float graph inputs and outputs and every Cast or
``dtype`` attribute that names a float type become float64, so the graph computes what
its author wrote without float32 or float16 rounding (a Cast to float16 becomes a Cast
to double: the shadow states the intended math, not the precision loss). Integer and
bool computation is unchanged.

onnxruntime's CPU provider lacks double kernels for a few ops (Conv, Erf, ...) and some
inputs are float by schema (Resize's scales). The shadow is loaded in onnxruntime, and
every op type it refuses is run in float32 between Casts, one op type per retry; the
ops kept in float32 are listed in :attr:`Float64Shadow.float32_ops` so a report can say
exactly which semantics the reference used.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from svsurgery.dtypes import FLOAT_TYPES
from svsurgery.errors import CheckFailedError

__all__ = ["Float64Shadow", "float64_shadow"]

_TYPE_ATTRIBUTES = ("to", "dtype")
_MAX_RETRIES = 64
_REFUSED_OP = (
    re.compile(r"Could not find an implementation for (?P<op>\w+)\(\d+\)"),
    re.compile(r"of operator \((?P<op>\w+)\)"),
    re.compile(r"Op \((?P<op>\w+)\)"),
)


@dataclasses.dataclass
class Float64Shadow:
    model: ir.Model
    session: object  # the onnxruntime session the shadow loaded in
    float32_ops: list[str]  # op types onnxruntime cannot run in double, computed in float32

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name; float inputs are widened to float64 exactly."""
        wide = {}
        for value in self.model.graph.inputs:
            if value.name in feeds:
                array = np.asarray(feeds[value.name])
                wide[value.name] = array.astype(np.float64) if value.dtype == ir.DataType.DOUBLE else array
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, wide)))

    def describe(self) -> str:
        if not self.float32_ops:
            return "the model evaluated in float64 (every op in double)"
        return f"the model evaluated in float64, except {', '.join(self.float32_ops)} in float32 (no double kernel)"


def float64_shadow(model: ir.Model) -> Float64Shadow:
    """Build and load the float64 shadow of ``model`` (which is not changed)."""
    from svsurgery import patch
    from svsurgery.runtime import inference_session

    shadow = patch.clone(model)
    patch.infer_types(shadow)  # types decide what widens, and which inputs a float32 op must narrow back
    for graph in (shadow.graph, *shadow.graph.subgraphs(), *shadow.functions.values()):
        _widen_graph(graph)
    float32_ops: list[str] = []
    for _ in range(_MAX_RETRIES):
        try:
            session = inference_session(shadow)
            return Float64Shadow(shadow, session, float32_ops)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types
            op_type = _refused_op(str(error))
            if op_type is None or op_type in float32_ops:
                raise CheckFailedError(f"the float64 evaluation of the model cannot be loaded: {_first_line(error)}") from None
        float32_ops.append(op_type)
        _narrow_op(shadow, op_type)
    raise CheckFailedError(f"the float64 evaluation of the model still fails after keeping {float32_ops} in float32")


def _narrow_op(model: ir.Model, op_type: str) -> None:
    """Run every ``op_type`` node in float32: Casts to float32 before its double inputs,
    back to double after its outputs (its own type attributes follow)."""
    double, single = ir.DataType.DOUBLE, ir.DataType.FLOAT
    for graph in (model.graph, *model.graph.subgraphs(), *model.functions.values()):
        for node in [n for n in graph if n.op_type == op_type]:
            for index, value in enumerate(node.inputs):
                if value is not None and value.dtype == double:
                    cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", single)], name=f"{node.name}/to_float32_{index}")
                    cast.outputs[0].dtype, cast.outputs[0].shape = single, value.shape
                    graph.insert_before(node, cast)
                    node.replace_input_with(index, cast.outputs[0])
            for value in node.outputs:
                if value.dtype != double:
                    continue
                back = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", double)], name=f"{node.name}/to_float64")
                back.outputs[0].dtype, back.outputs[0].shape = double, value.shape
                graph.insert_after(node, back)
                value.replace_all_uses_with(back.outputs[0], replace_graph_outputs=True)
                back.replace_input_with(0, value)
                back.outputs[0].name, value.name = value.name, f"{value.name}/float32"
                value.dtype = single
            for name, attribute in list(node.attributes.items()):
                if name in _TYPE_ATTRIBUTES and attribute.type == ir.AttributeType.INT and attribute.value == double:
                    node.attributes[name] = ir.AttrInt64(name, single)


def _refused_op(message: str) -> str | None:
    for pattern in _REFUSED_OP:
        match = pattern.search(message)
        if match:
            return match["op"]
    return None


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _widen(tensor: ir.TensorProtocol) -> ir.Tensor:
    return ir.Tensor(tensor.numpy().astype(np.float64), name=tensor.name)


def _widen_graph(graph: ir.Graph | ir.Function) -> None:
    values: list[ir.Value] = list(graph.inputs) + list(graph.outputs)
    if isinstance(graph, ir.Graph):
        for value in graph.initializers.values():
            if value.const_value is not None and value.const_value.dtype in FLOAT_TYPES:
                value.const_value = _widen(value.const_value)
            values.append(value)
    for node in graph:
        values.extend(node.outputs)
        _widen_attributes(node)
    for value in values:
        if value.dtype in FLOAT_TYPES:
            value.dtype = ir.DataType.DOUBLE


def _widen_attributes(node: ir.Node) -> None:
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        for name in ("value_float", "value_floats"):
            if name in node.attributes and not node.attributes[name].is_ref():
                array = np.asarray(node.attributes.pop(name).value, dtype=np.float64)
                node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(array))
    for name, attribute in list(node.attributes.items()):
        if attribute.is_ref():
            continue
        if attribute.type == ir.AttributeType.TENSOR and attribute.value.dtype in FLOAT_TYPES:
            node.attributes[name] = ir.AttrTensor(name, _widen(attribute.value))
        elif name in _TYPE_ATTRIBUTES and attribute.type == ir.AttributeType.INT and node.domain in ("", "ai.onnx"):
            if attribute.value in {int(t) for t in FLOAT_TYPES}:
                node.attributes[name] = ir.AttrInt64(name, ir.DataType.DOUBLE)
