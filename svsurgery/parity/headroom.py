"""Headroom: how far a float16 model is from overflowing, measured on its inputs.

float16 ends at 65504. For every value a model computes in float16 (outputs of nodes that
compute in float16, the Casts into float16 at the borders of float32 regions, float16 graph
inputs), the largest magnitude ``m`` it reaches on the inputs is measured, and for the
operations that can overflow on the way (a square, ``Pow``, ``ReduceSumSquare``, ``Exp``,
a variance) the magnitude *before* float16 rounds it: a value that overflowed to inf is
recomputed in float32 from its (finite) operands, ``Exp`` is judged by its argument, and
InstanceNormalization / GroupNormalization computing their statistics in float16 by the
sum of squared deviations inside them.

The **headroom** of a value is the factor by which the inputs can be scaled before it
passes 65504. A value's magnitude grows with the input scale ``s`` as ``s**k``, ``k`` its
degree, derived from the graph: 1 for float graph inputs, 0 for weights and constants;
Add/Sub/Where/Concat and the shape and pooling ops keep their operands' largest degree;
Mul, MatMul, Gemm and Conv add their operands' degrees, Div subtracts them, ``Pow(x, p)``
multiplies by ``p``, Sqrt halves, Reciprocal negates, ReduceSumSquare doubles;
normalisations, Softmax and bounded functions (Sigmoid, Tanh, Erf, Sin, Cos) have degree 0.
So a value of degree ``k`` overflows at ``s = (65504 / m) ** (1 / k)``: for a plain
activation (``k = 1``) the ratio 65504 / m itself, for a square (``k = 2``, its magnitude
grows with the scale squared) the **square root** of that ratio. ``Exp`` overflows when its
argument ``a`` passes ln 65504 ≈ 11.09: ``(11.09 / max a) ** (1 / k)``. Values of degree 0
or less do not grow with the inputs: their headroom is infinite while they are in range,
and 65504 / m (below 1) when they already overflow. Biases and nonlinearities make this
first order; tests check it by scaling real inputs.

The model's headroom is the smallest over its values, with the value, node and operation
where it is (:class:`Headroom`); below 1 the model overflows on the inputs measured. Its
profile, every value's headroom below :data:`PROFILE_CAP` in increasing order, tells two
models apart beyond their minimum (:func:`compare`): a rewrite that removes the second
tightest value raises the profile even when the tightest one is elsewhere. Values inside
If/Loop/Scan bodies are not measured.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import TypeGuard, cast

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from svsurgery.patch import all_graphs, value_name
from svsurgery.precision import convert_to_float16, model_precision

__all__ = [
    "DEFAULT_MIN_HEADROOM",
    "FLOAT16_MAX",
    "PROFILE_CAP",
    "Headroom",
    "Site",
    "compare",
    "format_headroom",
    "headroom_of",
    "measure",
    "measure_model",
    "measure_sites",
    "scale_degrees",
]

FLOAT16_MAX = float(np.finfo(np.float16).max)
EXP_LIMIT = math.log(FLOAT16_MAX)  # Exp(a) overflows float16 beyond a = 11.09
DEFAULT_MIN_HEADROOM = 8.0  # svsurgery fp16 --min-headroom: inputs may grow 8x before anything overflows
PROFILE_CAP = 1000.0  # values with more headroom than this do not matter for float16
_FILLED = FLOAT16_MAX / 2  # in values computed from a fill constant, entries beyond this are masked positions
_KEPT_LOWEST = 5

_BOUNDED = frozenset(
    {
        "Sigmoid",
        "Tanh",
        "Erf",
        "Sin",
        "Cos",
        "Softmax",
        "HardSigmoid",
        "Softsign",
        "Sign",
        "Exp",
        "Log",
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "LpNormalization",
        "MeanVarianceNormalization",
        "IsNaN",
        "IsInf",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Not",
        "And",
        "Or",
        "Xor",
        "Shape",
        "Size",
        "Range",
        "ConstantOfShape",
        "EyeLike",
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "ArgMax",
        "ArgMin",
        "NonZero",
    }
)
_PRODUCTS = frozenset({"Mul", "MatMul", "Einsum", "MatMulInteger", "QLinearMatMul"})
_WEIGHTED = frozenset({"Gemm", "Conv", "ConvTranspose"})  # x . W (+ bias)
_STATISTICS_IN_INPUT_TYPE = frozenset({"InstanceNormalization", "GroupNormalization"})
_FLOAT16 = ir.DataType.FLOAT16


@dataclasses.dataclass(frozen=True)
class Site:
    """One measured value: what it is, how large it got, how fast it grows, how far from 65504."""

    value: str
    node: str
    op_type: str
    what: str  # "value" | "would-be value (overflowed to inf)" | "argument of Exp" | "sum of squared deviations"
    magnitude: float  # the largest magnitude on the inputs (the Exp argument's largest value for Exp)
    degree: float  # how the magnitude grows with the input scale: as scale ** degree
    headroom: float  # the input scale at which it passes float16's range

    def describe(self) -> str:
        growth = {
            0.0: "does not grow with the inputs",
            1.0: "grows with the input scale",
            2.0: "grows with the input scale squared",
        }.get(self.degree, f"grows as the input scale ** {self.degree:g}")
        where = f"{self.op_type} {self.node}" if self.node else self.op_type
        if self.what == "argument of Exp":
            size = f"its argument reaches {self.magnitude:.3g} (Exp overflows beyond {EXP_LIMIT:.2f})"
        else:
            size = f"{self.what} up to {self.magnitude:.3g}"
        return f"{format_headroom(self.headroom)} at {self.value} ({where}: {size}, {growth})"


@dataclasses.dataclass
class Headroom:
    """The smallest headroom over a model's float16 values, where it is, and the next tightest."""

    headroom: float  # inf when nothing computed in float16 grows with the inputs
    site: Site | None
    lowest: list[Site]  # the tightest few, tightest first
    measured: int  # float16 values measured
    profile: list[float] = dataclasses.field(default_factory=list)  # every headroom below PROFILE_CAP, increasing
    # float16 values computed inside If/Loop/Scan bodies: the evaluation yields the main graph's values only
    unmeasured: int = 0

    @classmethod
    def of(cls, sites: Iterable[Site]) -> Headroom:
        """The headroom of a model whose measured values are ``sites``."""
        ordered = sorted(sites, key=lambda s: s.headroom)
        lowest = [s for s in ordered[:_KEPT_LOWEST] if math.isfinite(s.headroom)]
        profile = [s.headroom for s in ordered if s.headroom < PROFILE_CAP]
        return cls(
            ordered[0].headroom if ordered else math.inf, lowest[0] if lowest else None, lowest, len(ordered), profile
        )

    @property
    def overflows(self) -> bool:
        """Does something computed in float16 already pass its range on the inputs measured?"""
        return self.headroom < 1.0

    def describe(self) -> str:
        if self.site is None:
            text = (
                f"headroom {format_headroom(self.headroom)} ({self.measured} float16 values measured,"
                " none grows with the inputs)"
            )
        else:
            text = f"headroom {self.site.describe()}"
        if self.unmeasured:
            text += f"; {self.unmeasured} float16 values inside If/Loop/Scan bodies not measured"
        return text

    def to_dict(self) -> dict:
        return {
            "headroom": self.headroom,
            "value": self.site.value if self.site else None,
            "node": self.site.node if self.site else None,
            "op_type": self.site.op_type if self.site else None,
            "description": self.describe(),
            "measured": self.measured,
            "lowest": [dataclasses.asdict(s) for s in self.lowest],
            "below_cap": len(self.profile),
            "unmeasured_in_bodies": self.unmeasured,
        }


def compare(before: Headroom, after: Headroom, margin: float) -> tuple[int, float, float]:
    """(+1 raised, -1 lowered, 0 neither; the headroom where they first differ, before and after).

    The two profiles are compared in increasing order; the first place where they differ by
    more than ``margin`` (relative) decides. Missing places count as :data:`PROFILE_CAP`.
    """
    for index in range(max(len(before.profile), len(after.profile))):
        old = before.profile[index] if index < len(before.profile) else PROFILE_CAP
        new = after.profile[index] if index < len(after.profile) else PROFILE_CAP
        if new > old * (1 + margin):
            return 1, old, new
        if new * (1 + margin) < old:
            return -1, old, new
    return 0, before.headroom, after.headroom


def format_headroom(headroom: float) -> str:
    """``146x``, ``0.713x``, or ``inf``."""
    return "inf" if math.isinf(headroom) else f"{headroom:.3g}x"


# ----------------------------------------------------------------------------- degrees


def scale_degrees(graph: ir.Graph, masks: Iterable[str] = ()) -> dict[str, float]:
    """For each float value of the main graph (by name), how its magnitude grows with the input
    scale: ``magnitude ~ scale ** degree`` (see the module docstring); ``masks`` names float
    inputs that are not scaled (degree 0)."""
    masks = set(masks)
    degrees: dict[str, float] = {}
    for value in graph.inputs:
        scaled = value.dtype is not None and value.dtype.is_floating_point() and value.name not in masks
        degrees[value_name(value)] = 1.0 if scaled else 0.0
    for node in graph:
        degree = _node_degree(node, degrees)
        for output in node.outputs:
            degrees[value_name(output)] = degree if output.dtype is None or output.dtype.is_floating_point() else 0.0
    return degrees


def _degree(value: ir.Value | None, degrees: Mapping[str, float]) -> float:
    if value is None or value.dtype is None or not value.dtype.is_floating_point():
        return 0.0
    return degrees.get(value_name(value), 0.0)  # initializers and outer-scope values: constants


def _node_degree(node: ir.Node, degrees: Mapping[str, float]) -> float:
    op, inputs = node.op_type, list(node.inputs)
    floats = [_degree(v, degrees) for v in inputs]
    if node.domain not in ("", "ai.onnx") or op in ("If", "Loop", "Scan"):
        return max(floats, default=0.0)
    if op in _BOUNDED:
        return 0.0
    if op in _PRODUCTS:
        return sum(floats)
    if op in _WEIGHTED:
        product = sum(floats[:2])
        return max([product, *floats[2:]])
    if op == "Div":
        return floats[0] - floats[1]
    if op == "Pow":
        exponent = _constant_scalar(inputs[1])
        return floats[0] * (exponent if exponent is not None else 1.0)
    if op == "Sqrt":
        return floats[0] / 2
    if op == "Reciprocal":
        return -floats[0]
    if op == "ReduceSumSquare":
        return 2 * floats[0]
    if op == "Where":
        return max(floats[1:], default=0.0)
    if (
        op == "Cast"
        and inputs[0] is not None
        and inputs[0].dtype is not None
        and not inputs[0].dtype.is_floating_point()
    ):
        return 0.0  # positions, lengths, ids made float
    return max(floats, default=0.0)


def _constant_scalar(value: ir.Value | None) -> float | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(-1)[0])


# ----------------------------------------------------------------------------- measurement


def headroom_of(magnitude: float, degree: float) -> float:
    """The input scale at which a value of this magnitude and degree passes 65504."""
    if magnitude <= 0:
        return math.inf
    if not math.isfinite(magnitude):
        return 0.0
    ratio = FLOAT16_MAX / magnitude
    if degree <= 0:
        return math.inf if ratio >= 1 else ratio
    return ratio ** (1.0 / degree)


def _exp_headroom(argument: float, degree: float) -> float:
    if argument <= 0:
        return math.inf
    ratio = EXP_LIMIT / argument
    if degree <= 0:
        return math.inf if ratio >= 1 else ratio
    return ratio ** (1.0 / degree)


def _finite_max(array: np.ndarray, below: float = math.inf) -> tuple[float, bool]:
    """(largest finite magnitude under ``below``, whether every entry is finite)."""
    if array.size == 0:
        return 0.0, True
    if array.dtype == np.float16:
        return _finite_max_float16(array, below)
    top = max(float(array.max()), -float(array.min()))  # no temporary: two passes over the value
    if top < below:  # False for NaN too
        return top, True
    magnitudes = np.abs(array)
    kept = magnitudes < below
    return (float(magnitudes[kept].max()) if kept.any() else 0.0), bool(np.isfinite(top))


_FLOAT16_INF_BITS = 0x7C00  # |x| bits at and above this: inf or NaN


def _finite_max_float16(array: np.ndarray, below: float) -> tuple[float, bool]:
    """:func:`_finite_max` on the bits: with the sign cleared, float16 magnitudes order as
    integers (inf and NaN above every finite value), which numpy compares ten times faster
    than it compares float16."""
    bits = np.ascontiguousarray(array).view(np.uint16) & np.uint16(0x7FFF)
    top = int(bits.max())
    limit = _FLOAT16_INF_BITS if math.isinf(below) else min(_FLOAT16_INF_BITS, int(np.float16(below).view(np.uint16)))
    if top < limit:
        return float(np.uint16(top).view(np.float16)), True
    kept = bits[bits < limit]
    largest = float(np.uint16(kept.max()).view(np.float16)) if kept.size else 0.0
    return largest, top < _FLOAT16_INF_BITS


def _is_float16(value: ir.Value) -> bool:
    return value.dtype == _FLOAT16


def _is_float(value: ir.Value | None) -> TypeGuard[ir.Value]:
    return value is not None and value.dtype is not None and value.dtype.is_floating_point()


def measure(model: ir.Model, values: Mapping[str, np.ndarray], opsets: Iterable | None = None) -> Headroom:
    """The headroom of ``model`` (as evaluated) from the ``values`` a run computed, by name.

    ``model`` is the float16 model that was run (marked regions already float32), ``values``
    every value of its main graph (``Float16Evaluator.run_intermediates``). Two kinds of
    entries are not activations and are left out: float inputs holding only 0 and 1 are
    masks (degree 0: a mask is not scaled with the signal), and in values computed from a
    fill constant (a constant at or beyond ±65504: -inf or float16's finite minimum in
    attention masks) the entries beyond half of float16's range, or infinite, are the masked
    positions (a score added to -65504 rounds to -65440, not to -65504).
    """
    headroom = Headroom.of(measure_sites(model, values, opsets))
    headroom.unmeasured = sum(
        _is_float16(value)
        for graph in all_graphs(model)[1:]
        if isinstance(graph, ir.Graph)
        for node in graph
        for value in node.outputs
    )
    return headroom


def measure_sites(model: ir.Model, values: Mapping[str, np.ndarray], opsets: Iterable | None = None) -> list[Site]:
    """Every measured value of ``model`` (see :func:`measure`), in graph order."""
    return _Measurement(model.graph, values, opsets).run()


class _Measurement:
    def __init__(self, graph: ir.Graph, values: Mapping[str, np.ndarray], opsets) -> None:
        self.graph, self.values, self.opsets = graph, values, opsets
        self.degrees = scale_degrees(graph, masks=self._masks())
        self.finite: dict[str, bool] = {}
        self.fills = self._fill_constants()
        self.sites: list[Site] = []

    def _masks(self) -> set[str]:
        masks = set()
        for value in self.graph.inputs:
            array = self.values.get(value_name(value))
            if _is_float(value) and array is not None and np.asarray(array).size and np.isin(array, (0, 1)).all():
                masks.add(value_name(value))
        return masks

    def _fill_constants(self) -> set[str]:
        constants = [v for v in self.graph.initializers.values() if _is_float(v)]
        constants += [n.outputs[0] for n in self.graph if n.op_type == "Constant" and _is_float(n.outputs[0])]
        fills = set()
        for value in constants:
            array = self.values.get(value_name(value))
            if array is not None and np.asarray(array).size and not (np.abs(array) < FLOAT16_MAX).all():
                fills.add(value_name(value))
        return fills

    def run(self) -> list[Site]:
        for value in self.graph.inputs:
            name = value_name(value)
            if _is_float16(value) and name in self.values:
                top, self.finite[name] = _finite_max(np.asarray(self.values[name]))
                degree = self.degrees.get(name, 0.0)
                self.sites.append(Site(name, "", "input", "value", top, degree, headroom_of(top, degree)))
        for node in self.graph:
            self._node(node)
        return self.sites

    def _inputs_finite(self, node: ir.Node) -> bool:
        for value in node.inputs:
            if not _is_float(value):
                continue
            name = value_name(value)
            if name not in self.finite:
                array = self.values.get(name)
                self.finite[name] = array is None or bool(np.isfinite(array).all())
            if not self.finite[name]:
                return False
        return True

    def _node(self, node: ir.Node) -> None:
        filled = any(v is not None and v.name in self.fills for v in node.inputs)
        if filled:
            self.fills.update(value_name(v) for v in node.outputs)
        name = node.name or ""
        for output in node.outputs:
            output_name = value_name(output)
            if output_name not in self.values or not _is_float16(output):
                continue
            array = np.asarray(self.values[output_name])
            top, self.finite[output_name] = _finite_max(array, below=_FILLED if filled else math.inf)
            degree = self.degrees.get(output_name, 0.0)
            what = "value"
            if not filled and not self.finite[output_name] and self._inputs_finite(node):
                would_be = _would_be_magnitude(node, self.values, self.opsets)  # overflowed here, from finite operands
                if would_be > top:
                    top, what = would_be, "would-be value (overflowed to inf)"
            if node.op_type == "Exp" and node.domain in ("", "ai.onnx"):
                self.sites.append(self._exp_site(node, output))
                continue
            self.sites.append(Site(output_name, name, node.op_type, what, top, degree, headroom_of(top, degree)))
        first = node.inputs[0] if node.inputs else None
        if (
            node.op_type in _STATISTICS_IN_INPUT_TYPE
            and first is not None
            and _is_float16(first)
            and _statistics_in_input_type(node)
        ):
            first_name = value_name(first)
            if first_name in self.values:
                total = _sum_of_squared_deviations(node, np.asarray(self.values[first_name], dtype=np.float64))
                degree = 2 * self.degrees.get(first_name, 0.0)
                self.sites.append(
                    Site(
                        value_name(node.outputs[0]),
                        name,
                        node.op_type,
                        "sum of squared deviations",
                        total,
                        degree,
                        headroom_of(total, degree),
                    )
                )

    def _exp_site(self, node: ir.Node, output: ir.Value) -> Site:
        argument_name = value_name(_first_input(node))
        argument = np.asarray(self.values[argument_name], dtype=np.float64)
        largest = float(np.max(np.where(np.isfinite(argument), argument, -np.inf))) if argument.size else -math.inf
        degree = self.degrees.get(argument_name, 0.0)
        return Site(
            value_name(output),
            node.name or "",
            node.op_type,
            "argument of Exp",
            largest,
            degree,
            _exp_headroom(largest, degree),
        )


def _first_input(node: ir.Node) -> ir.Value:
    """The input of a one-input op (Exp, Cast): required, so never missing."""
    value = node.inputs[0]
    assert value is not None, f"{node.op_type} has a required input"
    return value


def _statistics_in_input_type(node: ir.Node) -> bool:
    """InstanceNormalization always; GroupNormalization unless a stash_type says float32."""
    if node.op_type == "InstanceNormalization":
        return True
    stash = node.attributes.get("stash_type")
    return stash is None or stash.value != int(ir.DataType.FLOAT)


def _sum_of_squared_deviations(node: ir.Node, x: np.ndarray) -> float:
    """The largest sum of (x - mean)^2 over one instance (or group): what a float16 variance accumulates."""
    if x.ndim < 2 or x.size == 0:
        return 0.0
    if node.op_type == "GroupNormalization":
        groups = node.attributes.get_int("num_groups", 1)
        x = x.reshape(x.shape[0], groups, -1)
    else:
        x = x.reshape(x.shape[0], x.shape[1], -1)
    deviations = x - x.mean(axis=-1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.square(deviations).sum(axis=-1)
    total = total[np.isfinite(total)]
    return float(total.max()) if total.size else 0.0


def _would_be_magnitude(node: ir.Node, values: Mapping[str, np.ndarray], opsets) -> float:
    """What a node that overflowed would have computed in float32 (its largest finite magnitude)."""
    if node.op_type == "Cast":
        top, _ = _finite_max(np.asarray(values[value_name(_first_input(node))], dtype=np.float32))
        return top
    try:
        outputs = _run_in_float32(node, values, opsets)
    except Exception:
        return math.inf
    tops = [_finite_max(np.asarray(o))[0] for o in outputs if isinstance(o, np.ndarray) and o.dtype.kind == "f"]
    return max(tops, default=math.inf)


def _run_in_float32(node: ir.Node, values: Mapping[str, np.ndarray], opsets) -> list:
    """The node alone, its float16 operands widened to float32, with onnx.reference."""
    feeds, infos = {}, []
    for index, value in enumerate(node.inputs):
        if value is None:
            continue
        array = np.asarray(values[value_name(value)])
        if array.dtype == np.float16:
            array = array.astype(np.float32)
        feeds[f"in{index}"] = array
        infos.append(
            onnx.helper.make_tensor_value_info(
                f"in{index}", onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
            )
        )
    proto = onnx.NodeProto()
    proto.CopyFrom(ir.serde.serialize_node(node))
    del proto.input[:]
    proto.input.extend(f"in{i}" if v is not None else "" for i, v in enumerate(node.inputs))
    del proto.output[:]
    proto.output.extend(f"out{i}" for i in range(len(node.outputs)))
    graph = onnx.helper.make_graph(
        [proto], "alone", infos, [onnx.ValueInfoProto(name=f"out{i}") for i in range(len(node.outputs))]
    )
    model = onnx.helper.make_model(graph, opset_imports=list(opsets or [onnx.helper.make_opsetid("", 17)]))
    with np.errstate(all="ignore"):
        # a list: onnx's annotation also allows the dict that intermediate=True returns
        return cast(list, ReferenceEvaluator(model).run(None, feeds))


# ----------------------------------------------------------------------------- convenience


def measure_model(model: ir.Model, feeds: Mapping[str, np.ndarray], *, convert: bool | None = None) -> Headroom:
    """The headroom of ``model`` on ``feeds``: converted to float16 first (the precision rules'
    marks honoured) unless it already computes in float16 (``convert`` forces either way)."""
    from svsurgery.parity.float16 import Float16Evaluator  # local: svsurgery.parity.float16 imports this module

    if convert is None:
        convert = model_precision(model) != _FLOAT16
    if convert:
        model, _ = convert_to_float16(model, keep_io_types=True)
    evaluator = Float16Evaluator(model)
    evaluator.run(dict(feeds))
    assert evaluator.headroom is not None
    return evaluator.headroom
