"""Small hand-built ONNX graphs with the patterns exporters emit, for rule tests.

Each builder returns a ModelProto whose decomposed LayerNorm / Cast chain is written the
way a given exporter writes it (axes as attribute or input, keepdims implicit or explicit,
Pow or Mul, Div or Reciprocal, operands in either order, a no-op Cast in front).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_TYPES = {
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int16): TensorProto.INT16,
    np.dtype(bool): TensorProto.BOOL,
}


@dataclasses.dataclass(frozen=True)
class LayerNormSpec:
    dtype: str = "float32"
    opset: int = 17
    rank: int = 3
    dim: int = 16
    square: str = "pow"  # pow | mul
    normalize: str = "div"  # div | mul | mul-swapped
    axes: str = "negative"  # negative (-1) | positive (rank - 1)
    keepdims: int | None = None  # None: implicit (1)
    scale: str | None = "second"  # second: Mul(y, scale) | first: Mul(scale, y) | None
    bias: str | None = "second"
    eps: float = 1e-5
    eps_first: bool = False  # Add(eps, variance)
    cast_front: bool = False  # the no-op Cast(to=x's type) FunASR's .float() leaves
    seed: int = 0

    @property
    def fusable(self) -> bool:
        return self.keepdims in (None, 1)


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name))


def layer_norm_nodes(spec: LayerNormSpec, x: str, out: str, prefix: str = "/ln") -> tuple[list, list]:
    """Nodes and initializers of one decomposed LayerNorm reading ``x`` and writing ``out``."""
    dtype = np.dtype(spec.dtype)
    rng = np.random.default_rng(spec.seed)
    nodes, initializers = [], []
    source = x
    if spec.cast_front:
        nodes.append(
            helper.make_node("Cast", [x], [f"{prefix}/Cast_output_0"], to=ONNX_TYPES[dtype], name=f"{prefix}/Cast")
        )
        source = f"{prefix}/Cast_output_0"
    axis = -1 if spec.axes == "negative" else spec.rank - 1
    reduce_kwargs = {} if spec.keepdims is None else {"keepdims": spec.keepdims}

    def reduce_mean(inp: str, out_name: str, name: str):
        if spec.opset >= 18:
            nodes.append(_const(f"{name}/axes", np.array([axis], np.int64)))
            nodes.append(helper.make_node("ReduceMean", [inp, f"{name}/axes"], [out_name], name=name, **reduce_kwargs))
        else:
            nodes.append(helper.make_node("ReduceMean", [inp], [out_name], name=name, axes=[axis], **reduce_kwargs))

    reduce_mean(source, f"{prefix}/mean", f"{prefix}/ReduceMean")
    nodes.append(helper.make_node("Sub", [source, f"{prefix}/mean"], [f"{prefix}/d"], name=f"{prefix}/Sub"))
    if spec.square == "pow":
        nodes.append(_const(f"{prefix}/two", np.array(2.0, dtype)))
        nodes.append(helper.make_node("Pow", [f"{prefix}/d", f"{prefix}/two"], [f"{prefix}/sq"], name=f"{prefix}/Pow"))
    else:
        nodes.append(helper.make_node("Mul", [f"{prefix}/d", f"{prefix}/d"], [f"{prefix}/sq"], name=f"{prefix}/Square"))
    reduce_mean(f"{prefix}/sq", f"{prefix}/var", f"{prefix}/ReduceMean_1")
    nodes.append(_const(f"{prefix}/eps", np.array(spec.eps, dtype)))
    add_inputs = [f"{prefix}/eps", f"{prefix}/var"] if spec.eps_first else [f"{prefix}/var", f"{prefix}/eps"]
    nodes.append(helper.make_node("Add", add_inputs, [f"{prefix}/vareps"], name=f"{prefix}/Add"))
    nodes.append(helper.make_node("Sqrt", [f"{prefix}/vareps"], [f"{prefix}/std"], name=f"{prefix}/Sqrt"))
    if spec.normalize == "div":
        nodes.append(helper.make_node("Div", [f"{prefix}/d", f"{prefix}/std"], [f"{prefix}/n"], name=f"{prefix}/Div"))
    else:
        nodes.append(helper.make_node("Reciprocal", [f"{prefix}/std"], [f"{prefix}/inv"], name=f"{prefix}/Reciprocal"))
        operands = [f"{prefix}/d", f"{prefix}/inv"] if spec.normalize == "mul" else [f"{prefix}/inv", f"{prefix}/d"]
        nodes.append(helper.make_node("Mul", operands, [f"{prefix}/n"], name=f"{prefix}/Mul_inv"))
    current = f"{prefix}/n"
    for role, where, op_type, values in (
        ("weight", spec.scale, "Mul", 1.0 + 0.1 * rng.standard_normal(spec.dim)),
        ("bias", spec.bias, "Add", 0.1 * rng.standard_normal(spec.dim)),
    ):
        if where is None:
            continue
        name = f"{prefix}.{role}"
        initializers.append(numpy_helper.from_array(values.astype(dtype), name))
        operands = [current, name] if where == "second" else [name, current]
        nodes.append(
            helper.make_node(op_type, operands, [f"{prefix}/{op_type}_out"], name=f"{prefix}/{op_type}_affine")
        )
        current = f"{prefix}/{op_type}_out"
    nodes.append(helper.make_node("Identity", [current], [out], name=f"{prefix}/out"))
    return nodes, initializers


def input_shape(spec: LayerNormSpec) -> list:
    return ["batch", *[f"d{i}" for i in range(1, spec.rank - 1)], spec.dim]


def layer_norm_model(spec: LayerNormSpec, extra_nodes=(), extra_outputs=()) -> onnx.ModelProto:
    """x -> decomposed LayerNorm -> Relu -> y (plus any extra nodes and outputs)."""
    dtype = np.dtype(spec.dtype)
    nodes, initializers = layer_norm_nodes(spec, "x", "ln")
    nodes.append(helper.make_node("Relu", ["ln"], ["y"], name="/relu"))
    nodes.extend(extra_nodes)
    graph = helper.make_graph(
        nodes,
        "layer_norm",
        [helper.make_tensor_value_info("x", ONNX_TYPES[dtype], input_shape(spec))],
        [helper.make_tensor_value_info("y", ONNX_TYPES[dtype], input_shape(spec)), *extra_outputs],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)], ir_version=8)


def feeds_for(spec: LayerNormSpec, batch: int = 2, seed: int = 0, offset: float = 3.0, spread: float = 4.0) -> dict:
    """Inputs with a mean offset and spread, like LayerNorm inputs deep in an encoder."""
    rng = np.random.default_rng(seed)
    shape = [batch, *[3] * (spec.rank - 2), spec.dim]
    return {"x": (offset + spread * rng.standard_normal(shape)).astype(spec.dtype)}


def cast_chain_nodes(source: str, dtypes: list[str], out: str, prefix: str = "/chain") -> list:
    """source -> Cast(dtypes[0]) -> Cast(dtypes[1]) -> ... -> out."""
    nodes, current = [], source
    for index, dtype in enumerate(dtypes):
        target = out if index == len(dtypes) - 1 else f"{prefix}/c{index}"
        nodes.append(
            helper.make_node("Cast", [current], [target], to=ONNX_TYPES[np.dtype(dtype)], name=f"{prefix}/Cast_{index}")
        )
        current = target
    return nodes


def cast_chain_model(dtypes: list[str], source_dtype: str = "float32", opset: int = 17) -> onnx.ModelProto:
    """x (source_dtype, [batch, 8]) -> Mul(x, 1) -> Cast chain -> Add(., 0) -> y (of the chain's last type)."""
    src = np.dtype(source_dtype)
    last = np.dtype(dtypes[-1])
    nodes = [
        _const("one", np.array(1, src)),
        helper.make_node("Mul", ["x", "one"], ["x1"], name="/pre"),
        *cast_chain_nodes("x1", dtypes, "chained"),
    ]
    if last == np.dtype(bool):
        nodes.append(helper.make_node("Not", ["chained"], ["y"], name="/post"))
    else:
        nodes += [_const("zero", np.array(0, last)), helper.make_node("Add", ["chained", "zero"], ["y"], name="/post")]
    graph = helper.make_graph(
        nodes,
        "cast_chain",
        [helper.make_tensor_value_info("x", ONNX_TYPES[src], ["batch", 8])],
        [helper.make_tensor_value_info("y", ONNX_TYPES[last], ["batch", 8])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
