"""The float64 shadow of a model: the same graph with every floating-point tensor in double.

A PyTorch-free stand-in for the exact math of a model whose exporter nobody here
controls: initializers, constants, float graph inputs and outputs and every Cast or
``dtype`` attribute that names a float type become float64, so the graph computes what
its author wrote without float32 or float16 rounding (a Cast to float16 becomes a Cast
to double: the shadow states the intended math, not the precision loss). Integer and
bool computation is unchanged.

onnxruntime's CPU provider lacks double kernels for a few ops (Conv, Erf, ...) and some
inputs are float by schema (Resize's scales). Each op type is probed with a one-node
model, and the ones onnxruntime refuses (or that the full load still refuses, one op type
per retry) run in float32 between Casts; they are listed in
:attr:`Float64Shadow.float32_ops` so a report can say exactly which semantics the
reference used.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import helper

from svsurgery import patch
from svsurgery.dtypes import FLOAT_TYPES
from svsurgery.errors import CheckFailedError
from svsurgery.runtime import inference_session, onnxruntime_errors

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
    session: ort.InferenceSession  # the onnxruntime session the shadow loaded in
    float32_ops: list[str]  # op types onnxruntime cannot run in double, computed in float32

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name; float inputs are widened to float64 exactly.

        A kernel that loads for double but refuses it when it runs (LSTM, GRU, RNN inside an
        If or a Loop: onnxruntime checks their type at run time) is narrowed to float32
        like the ones refused at load, and the run repeated.
        """
        wide = {}
        for value in self.model.graph.inputs:
            if value.name in feeds:
                array = np.asarray(feeds[value.name])
                wide[value.name] = array.astype(np.float64) if value.dtype == ir.DataType.DOUBLE else array
        for _ in range(_MAX_RETRIES):
            names = [o.name for o in self.session.get_outputs()]
            try:
                return dict(zip(names, self.session.run(names, wide)))
            except onnxruntime_errors() as error:
                op_type = _refused_at_run_time(str(error))
                if op_type is None or op_type in self.float32_ops:
                    raise
                self.float32_ops.append(op_type)
                _narrow_op(self.model, op_type)
                self.session = inference_session(self.model, optimize=False)
        raise CheckFailedError(f"the float64 evaluation still fails after keeping {self.float32_ops} in float32")

    def describe(self) -> str:
        if not self.float32_ops:
            return "the model evaluated in float64 (every op in double)"
        return f"the model evaluated in float64, except {', '.join(self.float32_ops)} in float32 (no double kernel)"


def float64_shadow(model: ir.Model) -> Float64Shadow:
    """Build and load the float64 shadow of ``model`` (which is not changed)."""
    # Types decide what widens and which inputs a float32 op must narrow back. They are
    # inferred on the model itself (types only, semantics unchanged) when it lacks them, so
    # the copies the engine makes of it later come typed too, instead of inferring again.
    patch.infer_types(
        model, only_if_missing=[v for node in ir.traversal.RecursiveGraphIterator(model.graph) for v in node.outputs]
    )
    shadow = patch.clone(model)
    for graph in patch.all_graphs(shadow):
        _widen_graph(graph)
    float32_ops = _ops_without_double_kernels(shadow)
    for refused in float32_ops:
        _narrow_op(shadow, refused)
    for _ in range(_MAX_RETRIES):
        try:
            session = inference_session(shadow, optimize=False)  # the graph as written, in double
            return Float64Shadow(shadow, session, float32_ops)
        except Exception as error:
            op_type = _refused_op(str(error))
            if op_type is None or op_type in float32_ops:
                raise CheckFailedError(
                    f"the float64 evaluation of the model cannot be loaded: {_first_line(error)}"
                ) from None
        float32_ops.append(op_type)
        _narrow_op(shadow, op_type)
    raise CheckFailedError(f"the float64 evaluation of the model still fails after keeping {float32_ops} in float32")


_KERNEL_PROBES: dict[tuple, bool] = {}


def _ops_without_double_kernels(model: ir.Model) -> list[str]:
    """Op types whose double-typed nodes onnxruntime's CPU provider has no kernel for.

    Each distinct (op, input types) is probed with a one-node model, a few milliseconds
    each and cached, instead of loading the whole model once per missing kernel.
    """
    refused: list[str] = []
    opset = model.opset_imports
    for graph in patch.all_graphs(model):
        for node in graph:
            if node.op_type in refused or any(
                a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()
            ):
                continue
            types = tuple(v.dtype if v is not None else None for v in node.inputs)
            if ir.DataType.DOUBLE not in types or any(t is None for t, v in zip(types, node.inputs) if v is not None):
                continue
            key = (node.domain, node.op_type, opset.get(node.domain, opset.get("", 0)), types)
            if key not in _KERNEL_PROBES:
                probe = _probe_model(node, opset, model.ir_version)
                options = ort.SessionOptions()
                options.log_severity_level = 4
                try:
                    ort.InferenceSession(probe, sess_options=options, providers=["CPUExecutionProvider"])
                    _KERNEL_PROBES[key] = True
                except Exception as error:
                    _KERNEL_PROBES[key] = "Could not find an implementation" not in str(error)
            if not _KERNEL_PROBES[key]:
                refused.append(node.op_type)
    return refused


def _probe_model(node: ir.Node, opset: dict[str, int], ir_version: int) -> bytes:
    """A model made of ``node`` alone, its inputs typed as in the graph, shapes unknown."""
    proto = ir.serde.serialize_node(node)
    proto.ClearField("input")
    proto.ClearField("output")
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    proto.input.extend(names)
    proto.output.extend(f"out{i}" for i in range(len(node.outputs)))
    inputs = []
    for n, v in zip(names, node.inputs):
        if v is not None:
            assert v.dtype is not None, "_ops_without_double_kernels probes nodes whose inputs are all typed"
            inputs.append(helper.make_tensor_value_info(n, int(v.dtype), None))
    outputs = [helper.make_value_info(f"out{i}", onnx.TypeProto()) for i in range(len(node.outputs))]
    graph = helper.make_graph([proto], "probe", inputs, outputs)
    imports = [helper.make_opsetid(domain, version) for domain, version in opset.items()]
    return helper.make_model(graph, opset_imports=imports, ir_version=ir_version).SerializeToString()


def _narrow_op(model: ir.Model, op_type: str) -> None:
    """Run every ``op_type`` node in float32: Casts to float32 before its double inputs,
    back to double after its outputs (its own type attributes follow)."""
    double, single = ir.DataType.DOUBLE, ir.DataType.FLOAT
    count = 0
    for graph in patch.all_graphs(model):
        for node in [n for n in graph if n.op_type == op_type]:
            count += 1
            prefix = f"svs/fp64/{node.name or op_type}_{count}"
            for index, value in enumerate(node.inputs):
                if value is not None and value.dtype == double:
                    cast = ir.Node(
                        "",
                        "Cast",
                        [value],
                        attributes=[ir.AttrInt64("to", single)],
                        name=f"{prefix}/to_float32_{index}",
                    )
                    cast.outputs[0].dtype, cast.outputs[0].shape = single, value.shape
                    cast.outputs[0].name = f"{prefix}/input_{index}"
                    graph.insert_before(node, cast)
                    node.replace_input_with(index, cast.outputs[0])
            for index, value in enumerate(node.outputs):
                if value.dtype != double:
                    continue
                back = ir.Node(
                    "", "Cast", [value], attributes=[ir.AttrInt64("to", double)], name=f"{prefix}/to_float64_{index}"
                )
                back.outputs[0].dtype, back.outputs[0].shape = double, value.shape
                graph.insert_after(node, back)
                value.replace_all_uses_with(back.outputs[0], replace_graph_outputs=True)
                back.replace_input_with(0, value)
                back.outputs[0].name, value.name = value.name, f"{prefix}/output_{index}"
                value.dtype = single
            for name, attribute in list(node.attributes.items()):
                if name in _TYPE_ATTRIBUTES and attribute.type == ir.AttributeType.INT and attribute.value == double:
                    node.attributes[name] = ir.AttrInt64(name, single)


_RUNNING = re.compile(r"running (?P<op>\w+) node")


def _refused_at_run_time(message: str) -> str | None:
    """The op type of a kernel that refused double when it ran (the innermost node named)."""
    if "not support double" not in message and "double is not supported" not in message.lower():
        return None
    found = _RUNNING.findall(message)
    return found[-1] if found else None


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
