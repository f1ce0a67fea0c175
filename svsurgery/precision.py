"""Float16 conversion on onnx_ir, keeping the regions the precision rules mark in float32.

``convert_to_float16`` turns every float32 value, weight and constant of a model into
float16, except the nodes marked to stay in float32 (:func:`keep_in_float32`, which the
precision rules use: Softmax and its score path, positional-encoding chains...). Casts
are inserted only at the borders of those regions, so a marked region computes in float32
from end to end (blocking single ops is not enough: the epsilon Add between two blocked
ops would stay float16 and overflow). Along the way:

- ``Cast(to=FLOAT)`` nodes are retargeted to FLOAT16 outside marked regions, so every Cast
  still means what its output type says and the written model always loads (the
  onnxconverter-common converter relabels their outputs float16 without changing ``to``);
- inputs whose type the ONNX schema fixes (Resize's scales, ...) and ops with no float16
  form keep float32;
- a constant beyond float16's range becomes ±inf, as float16 defines, and is reported
  (as are small nonzero constants that become zero): nothing is changed silently
  (onnxruntime's converter clamps quietly); mask fills are made finite by the mask-fill
  rule, which the engine verifies, not by the conversion;
- graph inputs and outputs become float16, or stay float32 with ``keep_io_types``.

An already-float16 model goes through the same code: only its marked regions change.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import onnx
import onnx_ir as ir

from svsurgery import patch
from svsurgery.dtypes import LOW_PRECISION_TYPES

__all__ = [
    "FLOAT32_MARK",
    "Float16Conversion",
    "convert_to_float16",
    "keep_in_float32",
    "kept_in_float32",
    "model_precision",
]

FLOAT32_MARK = "svsurgery.precision"  # node metadata: why this node computes in float32
_FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16})
_F16_MAX = float(np.finfo(np.float16).max)
_TYPE_ATTRIBUTES = {
    "Cast": "to",
    "EyeLike": "dtype",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "Bernoulli": "dtype",
}
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_SMALL_CONSTANT = 16  # elements: scalars and short vectors (epsilons, scales), whose flush to 0 is reported


def model_precision(model: ir.Model) -> ir.DataType:
    """FLOAT16 for models whose float weights are mostly float16, FLOAT otherwise."""
    sizes: dict[ir.DataType, int] = {}
    for value in model.graph.initializers.values():
        if value.dtype is not None and value.dtype.is_floating_point():
            sizes[value.dtype] = sizes.get(value.dtype, 0) + (
                value.const_value.size if value.const_value is not None else 0
            )
    interface = [
        v.dtype
        for v in (*model.graph.inputs, *model.graph.outputs)
        if v.dtype is not None and v.dtype.is_floating_point()
    ]
    if sizes:
        return (
            max(sizes, key=sizes.__getitem__)
            if max(sizes, key=sizes.__getitem__) in LOW_PRECISION_TYPES
            else ir.DataType.FLOAT
        )
    return ir.DataType.FLOAT16 if any(t in LOW_PRECISION_TYPES for t in interface) else ir.DataType.FLOAT


def keep_in_float32(node: ir.Node, reason: str) -> None:
    """Mark ``node`` to compute in float32 when the model is converted to (or is) float16."""
    node.metadata_props[FLOAT32_MARK] = f"float32: {reason}"


def kept_in_float32(node: ir.Node) -> bool:
    return node.metadata_props.get(FLOAT32_MARK, "").startswith("float32")


@dataclasses.dataclass
class Float16Conversion:
    """What a conversion did, for reports."""

    float32_nodes: int = 0  # nodes computing in float32 (marked, or with no float16 form)
    casts_added: int = 0
    overflowed: list[str] = dataclasses.field(default_factory=list)  # constants beyond ±65504: now ±inf
    flushed: list[str] = dataclasses.field(default_factory=list)  # small nonzero constants that became 0
    notes: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> list[str]:
        nodes = "node computes" if self.float32_nodes == 1 else "nodes compute"
        casts = "Cast" if self.casts_added == 1 else "Casts"
        lines = [f"{self.float32_nodes} {nodes} in float32, {self.casts_added} {casts} at region borders"]
        if self.overflowed:
            lines.append(
                f"{len(self.overflowed)} constants beyond float16's ±65504 became ±inf (as float16 defines; "
                f"mask fills are made finite by mask-fill): {', '.join(self.overflowed[:5])}"
            )
        if self.flushed:
            lines.append(
                f"{len(self.flushed)} nonzero constants below float16's smallest value became 0: "
                f"{', '.join(self.flushed[:5])}"
            )
        return lines + self.notes


def convert_to_float16(model: ir.Model, *, keep_io_types: bool = False) -> tuple[ir.Model, Float16Conversion]:
    """A float16 copy of ``model`` (not changed itself), marked regions in float32."""
    from onnx_ir.passes.common import InlinePass

    # here, not at the top: svsurgery.rules imports this module
    from svsurgery.rules.casts import CastChainCollapsePass, IdentityCastRemovalPass

    converted = patch.clone(model)
    report = Float16Conversion()
    if converted.functions:
        InlinePass()(converted)
        report.notes.append("model-local functions were inlined")
    patch.infer_types(converted)
    opsets = converted.opset_imports
    graphs = list(converted.graphs())  # the main graph and its bodies: every function called was inlined above
    float32_nodes = {id(n) for g in graphs for n in g if _computes_in_float32(n, opsets)}
    report.float32_nodes = len(float32_nodes)
    outputs = {id(v): v.dtype for v in converted.graph.outputs}
    for graph in graphs:
        _retype(graph, float32_nodes, keep_io_types and graph is converted.graph, report)
    taken: set[str] = set()  # value names are unique model-wide (subgraphs included): casts of one
    for graph in graphs:  # outer value read in two If branches must not share a name
        report.casts_added += _fix_borders(graph, float32_nodes, opsets, taken)
    report.casts_added += _fix_interface(converted.graph, outputs, keep_io_types)
    IdentityCastRemovalPass()(converted)  # Cast(to=FLOAT16) of what is float16 now
    CastChainCollapsePass()(converted)
    return converted, report


def _computes_in_float32(node: ir.Node, opsets: dict[str, int]) -> bool:
    if kept_in_float32(node):
        return True
    if node.op_type in _CONTROL_FLOW or node.op_type in _TYPE_ATTRIBUTES or node.op_type == "Constant":
        return False
    if node.domain not in ("", "ai.onnx"):
        return any(v is not None and v.dtype in _FLOATS for v in node.inputs)  # custom ops: as they were
    schema = _schema(node, opsets)
    if schema is None:
        return False
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for index, value in enumerate(node.inputs):
        if value is None or value.dtype not in _FLOATS:
            continue
        allowed = _allowed(schema, constraints, index)
        if allowed is not None and "tensor(float16)" not in allowed and "tensor(float)" in allowed:
            return True  # the op has no float16 form
    return False


def _schema(node: ir.Node, opsets: dict[str, int]):
    version = opsets.get("", opsets.get("ai.onnx", onnx.defs.onnx_opset_version()))
    try:
        return onnx.defs.get_schema(node.op_type, version, "")
    except onnx.defs.SchemaError:
        return None


def _allowed(schema, constraints: dict[str, set[str]], index: int) -> set[str] | None:
    """Types the schema allows for input ``index`` (variadic inputs repeat the last formal one)."""
    if not schema.inputs:
        return None
    formal = schema.inputs[min(index, len(schema.inputs) - 1)]
    return constraints.get(formal.type_str, {formal.type_str})


def _target(node: ir.Node | None, float32_nodes: set[int]) -> ir.DataType:
    return ir.DataType.FLOAT if node is not None and id(node) in float32_nodes else ir.DataType.FLOAT16


def _retype(graph: ir.Graph, float32_nodes: set[int], keep_inputs: bool, report: Float16Conversion) -> None:
    """Give every float value its new type; convert weights, constants and type attributes."""
    for value in graph.inputs:
        if value.dtype in _FLOATS and not keep_inputs:
            value.dtype = ir.DataType.FLOAT16
    for value in graph.initializers.values():
        if value.dtype in _FLOATS and value.const_value is not None:
            readers = [u.node for u in value.uses()]
            wanted = (
                ir.DataType.FLOAT if readers and all(id(n) in float32_nodes for n in readers) else ir.DataType.FLOAT16
            )
            _convert_constant(value, wanted, value.name, report)
    for node in graph:
        if node.op_type == "Constant" and node.outputs[0].dtype in _FLOATS:
            readers = [u.node for u in node.outputs[0].uses()]
            wanted = (
                ir.DataType.FLOAT if readers and all(id(n) in float32_nodes for n in readers) else ir.DataType.FLOAT16
            )
            _convert_constant_node(node, wanted, report)
            continue
        target = _target(node, float32_nodes)
        attribute = _TYPE_ATTRIBUTES.get(node.op_type)
        if attribute and attribute in node.attributes and ir.DataType(node.attributes[attribute].value) in _FLOATS:
            node.attributes[attribute] = ir.AttrInt64(attribute, target)
        if node.op_type == "ConstantOfShape" and "value" in node.attributes:
            tensor = node.attributes["value"].value
            if tensor.dtype in _FLOATS:
                node.attributes["value"] = ir.AttrTensor(
                    "value", ir.tensor(_narrowed(tensor.numpy(), target, node.name or node.outputs[0].name, report))
                )
        for value in node.outputs:
            if value.dtype in _FLOATS:
                value.dtype = target


def _narrowed(array: np.ndarray, dtype: ir.DataType, name: str | None, report: Float16Conversion) -> np.ndarray:
    name = name or "(unnamed)"  # the report joins the names: an unnamed node must not make it fail
    if dtype != ir.DataType.FLOAT16:
        return array.astype(np.float32)
    if np.any(np.isfinite(array) & (np.abs(array) > _F16_MAX)):
        report.overflowed.append(name)  # float16 makes them ±inf; mask-fill makes mask fills finite first
    with np.errstate(over="ignore"):
        narrow = array.astype(np.float16)
    if array.size <= _SMALL_CONSTANT and np.any((narrow == 0) & (array != 0)):
        report.flushed.append(name)  # an epsilon gone to 0 matters; a weight's tiny entries do not
    return narrow


def _convert_constant(value: ir.Value, dtype: ir.DataType, name: str | None, report: Float16Conversion) -> None:
    assert value.const_value is not None, "called for initializers with their tensor"
    value.const_value = ir.tensor(_narrowed(value.const_value.numpy(), dtype, name, report), name=value.name)
    value.dtype = dtype


def _convert_constant_node(node: ir.Node, dtype: ir.DataType, report: Float16Conversion) -> None:
    value = node.outputs[0]
    for key in ("value_float", "value_floats"):
        if key in node.attributes:
            node.attributes["value"] = ir.AttrTensor(
                "value", ir.tensor(np.asarray(node.attributes.pop(key).value, np.float32))
            )
    tensor = node.attributes["value"].value
    node.attributes["value"] = ir.AttrTensor(
        "value", ir.tensor(_narrowed(tensor.numpy(), dtype, node.name or value.name, report))
    )
    value.dtype = dtype
    value.const_value = None


def _fix_borders(graph: ir.Graph, float32_nodes: set[int], opsets: dict[str, int], taken: set[str]) -> int:
    """A Cast wherever a node reads a float value in another type than it computes in; ``taken``
    holds the cast names given so far in the model, each new one is made unique against it."""
    added = 0
    casts: dict[tuple[int, ir.DataType], ir.Value] = {}
    for node in list(graph):
        if node.op_type in _TYPE_ATTRIBUTES or node.op_type in _CONTROL_FLOW:
            continue
        schema = _schema(node, opsets) if node.domain in ("", "ai.onnx") else None
        constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints} if schema else {}
        compute = _target(node, float32_nodes)
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype not in _FLOATS:
                continue
            wanted = compute
            allowed = _allowed(schema, constraints, index) if schema else None
            if allowed is not None and "tensor(float16)" not in allowed and "tensor(float)" in allowed:
                wanted = ir.DataType.FLOAT  # fixed by the schema (Resize scales, ...)
            if value.dtype == wanted:
                continue
            key = (id(value), wanted)
            if key not in casts:
                kind = wanted.name.lower()
                suffixes = itertools.chain([""], (f"_{copy}" for copy in itertools.count(1)))
                suffix = next(s for s in suffixes if f"svs/fp16/{value.name}/{kind}{s}" not in taken)
                taken.add(f"svs/fp16/{value.name}/{kind}{suffix}")
                cast = ir.Node(
                    "",
                    "Cast",
                    [value],
                    attributes=[ir.AttrInt64("to", wanted)],
                    name=f"svs/fp16/{value.name}/to_{kind}{suffix}",
                )
                cast.outputs[0].name = f"svs/fp16/{value.name}/{kind}{suffix}"
                cast.outputs[0].dtype, cast.outputs[0].shape = wanted, value.shape
                graph.insert_before(node, cast)
                casts[key] = cast.outputs[0]
                added += 1
            node.replace_input_with(index, casts[key])
    return added


def _fix_interface(graph: ir.Graph, original: dict[int, ir.DataType | None], keep_io_types: bool) -> int:
    """Outputs in the interface's type: float32 as before with ``keep_io_types``, else float16."""
    added = 0
    for index, value in enumerate(list(graph.outputs)):
        before = original.get(id(value))
        if value.dtype not in _FLOATS or before is None or before not in _FLOATS:
            continue
        wanted = before if keep_io_types else ir.DataType.FLOAT16
        if value.dtype == wanted:
            continue
        cast = ir.Node(
            "", "Cast", [value], attributes=[ir.AttrInt64("to", wanted)], name=f"svs/fp16/{value.name}/output"
        )
        graph.append(cast)
        result = cast.outputs[0]
        result.dtype, result.shape = wanted, value.shape
        name = value.name
        value.name = f"svs/fp16/{name}/before_output"
        result.name = name
        graph.outputs[index] = result
        added += 1
    return added
