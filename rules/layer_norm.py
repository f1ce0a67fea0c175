"""LayerNorm: fuse the decomposed forms exporters emit into LayerNormalization.

Exporters below opset 17 write LayerNorm as its arithmetic::

    mean     = ReduceMean(x, axes)                    axes: attribute (< 18) or input (>= 18)
    d        = Sub(x, mean)
    variance = ReduceMean(Pow(d, 2) | Mul(d, d), axes)
    y        = d / Sqrt(variance + eps)  |  d * Reciprocal(Sqrt(variance + eps))
    y        = y * scale + bias                        (each optional)

which this family replaces by ``LayerNormalization(x, scale, bias, axis, epsilon,
stash_type=FLOAT)`` (DOUBLE for double inputs), epsilon carried over bit for bit. The fused op computes its
statistics in float32 whatever the input type, so in float16 graphs ``Pow(d, 2)`` can no
longer overflow (values around 1e5 do in real SenseVoice exports) and rows no longer
collapse to the bias. Matches are refused when ``keepdims=0`` (the mean would broadcast
over the wrong axis: onnxruntime's own fusion once accepted that and silently gave wrong
results, issue 30513), when the reduced axes are not the trailing ones, when epsilon or
the exponent is not a constant, or when the chain mixes precisions.

LayerNormalization exists from opset 17. A model below it is converted with onnx's
version converter when the family has a match and the engine allows raising the opset
(and the model has no model-local functions: the converter drops them, and the calls left
behind would name nothing); otherwise the decomposed form stays, and float16 chains are
made robust instead: they compute in float32 between two Casts. The report says which
happened. Every graph is rewritten: the main graph, If/Loop/Scan bodies, model-local
functions and the bodies inside them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern

from svsurgery import patch
from svsurgery.dtypes import LOW_PRECISION_TYPES
from svsurgery.errors import BadInputError
from svsurgery.opset import ai_onnx_opset, convert_opset
from svsurgery.precision import keep_in_float32
from svsurgery.rules._matches import reduced_axes
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily, apply_rewrite_rules

__all__ = ["FAMILY", "BiasAbsorption", "LayerNormFusion", "LayerNormInFloat32", "ScaleAbsorption", "constants_last"]

_LAYER_NORM_OPSET = 17
_NORMALIZABLE = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
_PREFIX = "svs/rule/layer-norm"


class _DecomposedLayerNorm(pattern.RewriteRuleClassBase):
    """The normalisation core, ``(x - mean) / sqrt(variance + eps)``, and the checks both rules
    share; subclasses say what replaces it. The affine part that usually follows is absorbed
    afterwards (:class:`ScaleAbsorption`, :class:`BiasAbsorption`), so three patterns cover
    what would otherwise take twelve (scale and bias each optional)."""

    def __init__(self, normalize: str) -> None:
        super().__init__(f"{type(self).__name__}[{normalize}]")
        self._normalize = normalize  # "div": d / std; "mul": d * (1/std); "mul-swapped": (1/std) * d

    def pattern(self, op, x, exponent, epsilon):
        mean = op.ReduceMean(x, _allow_other_attributes=True, _allow_other_inputs=True, _outputs=["mean"])
        deviation = op.Sub(x, mean)
        squared = pattern.OrValue([op.Pow(deviation, exponent), op.Mul(deviation, deviation)])
        variance = op.ReduceMean(squared, _allow_other_attributes=True, _allow_other_inputs=True, _outputs=["variance"])
        std = op.Sqrt(op.Add(variance, epsilon))
        if self._normalize == "div":
            return op.Div(deviation, std)
        if self._normalize == "mul":
            return op.Mul(deviation, op.Reciprocal(std))
        return op.Mul(op.Reciprocal(std), deviation)

    # onnxscript calls check(context, **bindings); the base's (op, *args, **kwargs) admits no named bindings
    def check(self, context, x, exponent, epsilon, mean, variance, **_) -> MatchResult:  # type: ignore[override]
        result = pattern.MatchResult()
        if x.dtype not in _NORMALIZABLE:
            return result.fail("the input's element type is unknown or not floating point (run shape inference)", x)
        rank = len(x.shape) if x.shape is not None else None
        axes = []
        for reduced in (mean, variance):
            node = reduced.producer()
            if node.attributes.get_int("keepdims", 1) != 1:
                return result.fail(
                    "keepdims=0: the mean no longer broadcasts over the normalised axes the way "
                    "LayerNormalization's does (onnxruntime issue 30513)",
                    node,
                )
            node_axes = reduced_axes(node, rank)
            if node_axes is None:
                return result.fail("the reduced axes are not constant, or reduce over every axis", node)
            axes.append(node_axes)
        if axes[0] != axes[1]:
            return result.fail(f"the mean reduces axes {axes[0]} but the variance {axes[1]}", variance)
        normalized_axes = axes[0]
        if normalized_axes != list(range(-len(normalized_axes), 0)):
            return result.fail(f"the reduced axes {normalized_axes} are not the trailing axes", mean)
        if exponent is not None:
            power = _scalar(exponent)
            if power is None or power != 2.0:
                return result.fail("the variance uses Pow with an exponent other than the constant 2", exponent)
        eps = _scalar(epsilon)
        if eps is None:
            return result.fail("epsilon is not a constant scalar", epsilon)
        if epsilon.dtype is not None and epsilon.dtype != x.dtype:
            return result.fail(
                f"epsilon is {epsilon.dtype.name} but the input {x.dtype.name}: a mixed-precision chain", epsilon
            )
        normalized_shape = _trailing_dims(x, len(normalized_axes))
        if normalized_shape is None or not all(isinstance(d, int) for d in normalized_shape):
            return result.fail(f"the normalised shape {normalized_shape} is not static", x)
        self._normalized_shape = normalized_shape
        self._epsilon = eps
        return self.extra_check(context, x, result)

    def extra_check(self, context, x, result: MatchResult) -> MatchResult:
        return result


class LayerNormFusion(_DecomposedLayerNorm):
    """Decomposed LayerNorm -> LayerNormalization (opset >= 17), epsilon kept exactly; the scale is
    ones until :class:`ScaleAbsorption` takes in the Mul that follows."""

    def extra_check(self, context, x, result):
        if (ai_onnx_opset(context.model) or 0) < _LAYER_NORM_OPSET:
            return result.fail(f"LayerNormalization needs ai.onnx opset {_LAYER_NORM_OPSET}", x)
        return result

    def rewrite(self, op, x, mean, **_):
        scope = _scope(mean.producer())
        # a Constant node, not an initializer: functions cannot hold initializers
        ones = op.op(
            "Constant",
            value=ir.tensor(np.ones(self._normalized_shape, x.dtype.numpy())),
            _name=f"{_PREFIX}{scope}/ones",
        )
        return op.op(
            "LayerNormalization",
            x,
            ones,
            axis=-len(self._normalized_shape),
            epsilon=self._epsilon,
            stash_type=int(_stash_type(x.dtype)),
            _name=f"{_PREFIX}{scope}/LayerNormalization",
        )


class _AffineAbsorption(pattern.RewriteRuleClassBase):
    """Shared checks: only LayerNormalization nodes this family just made take in the Mul/Add after
    them (an export's own LayerNormalization is left as it was), and the operand must be a
    constant of the normalised size or a value of exactly the normalised shape."""

    def _check_operand(self, x, operand, normalized) -> MatchResult:
        result = pattern.MatchResult()
        node = normalized.producer()
        if not (node.name or "").startswith(_PREFIX):
            return result.fail("not a LayerNormalization this rule family made", node)
        shape = _trailing_dims(x, -node.attributes.get_int("axis", -1))
        self._tensor = _as_normalized_tensor(operand, shape)
        if self._tensor is None and not _has_shape(operand, shape):
            return result.fail(f"the operand does not have the normalised shape {shape}", operand)
        if operand.dtype is not None and operand.dtype != x.dtype:
            return result.fail(f"the operand is {operand.dtype.name}, the input {x.dtype.name}", operand)
        return result

    def _value(self, op, operand, normalized, role: str):
        """The operand as LayerNormalization wants it: a tensor of the normalised shape."""
        if self._tensor is None or list(self._tensor.shape) == list(operand.shape or []):
            return operand
        return op.op("Constant", value=self._tensor, _name=f"{normalized.producer().name}/{role}")


class ScaleAbsorption(_AffineAbsorption):
    """LayerNormalization(x, ones) * scale -> LayerNormalization(x, scale)."""

    def pattern(self, op, x, ones, operand):
        return op.Mul(op.LayerNormalization(x, ones, _allow_other_attributes=True, _outputs=["normalized"]), operand)

    # onnxscript calls check(context, **bindings); the base's (op, *args, **kwargs) admits no named bindings
    def check(self, context, x, ones, operand, normalized, **_) -> MatchResult:  # type: ignore[override]
        result = self._check_operand(x, operand, normalized)
        if result and not _all_equal(ones, 1.0):
            return result.fail("the LayerNormalization already has a scale", ones)
        return result

    def rewrite(self, op, x, ones, operand, normalized, **_):
        node = normalized.producer()
        scale = self._value(op, operand, normalized, "scale")
        return op.op("LayerNormalization", x, scale, **node.attributes, _name=node.name)


class BiasAbsorption(_AffineAbsorption):
    """LayerNormalization(x, scale) + bias -> LayerNormalization(x, scale, bias)."""

    def pattern(self, op, x, scale, operand):
        return op.Add(op.LayerNormalization(x, scale, _allow_other_attributes=True, _outputs=["normalized"]), operand)

    # onnxscript calls check(context, **bindings); the base's (op, *args, **kwargs) admits no named bindings
    def check(self, context, x, scale, operand, normalized, **_) -> MatchResult:  # type: ignore[override]
        return self._check_operand(x, operand, normalized)

    def rewrite(self, op, x, scale, operand, normalized, **_):
        node = normalized.producer()
        bias = self._value(op, operand, normalized, "bias")
        return op.op("LayerNormalization", x, scale, bias, **node.attributes, _name=node.name)


class LayerNormInFloat32(_DecomposedLayerNorm):
    """Decomposed float16/bfloat16 LayerNorm kept decomposed but computed in float32 between Casts
    (for models that stay below opset 17); the affine part after it is left as it was."""

    def extra_check(self, context, x, result):
        if x.dtype not in LOW_PRECISION_TYPES:
            return result.fail("already computed in float32 or double", x)
        return result

    def rewrite(self, op, x, mean, **_):
        name = f"{_PREFIX}{_scope(mean.producer())}"
        f32 = int(ir.DataType.FLOAT)
        wide = op.op("Cast", x, to=f32, _name=f"{name}/Cast_to_float32")
        axes = list(range(-len(self._normalized_shape), 0))
        mean32 = op.op("ReduceMean", wide, axes=axes, keepdims=1, _name=f"{name}/ReduceMean")
        deviation = op.op("Sub", wide, mean32, _name=f"{name}/Sub")
        squared = op.op("Mul", deviation, deviation, _name=f"{name}/Square")
        variance = op.op("ReduceMean", squared, axes=axes, keepdims=1, _name=f"{name}/ReduceMean_1")
        eps = op.op("Constant", value=ir.tensor(np.array(self._epsilon, dtype=np.float32)), _name=f"{name}/epsilon")
        shifted = op.op("Add", variance, eps, _name=f"{name}/AddEps")
        std = op.op("Sqrt", shifted, _name=f"{name}/Sqrt")
        normalized = op.op("Div", deviation, std, _name=f"{name}/Div")
        for value in (wide, mean32, deviation, squared, variance, eps, shifted, std, normalized):
            keep_in_float32(value.producer(), "layer-norm: decomposed LayerNorm widened to float32")
        return op.op("Cast", normalized, to=int(x.dtype), _name=f"{name}/Cast_back")


_NORMALIZE_FORMS = ("div", "mul", "mul-swapped")


def _stash_type(dtype: ir.DataType) -> ir.DataType:
    """Statistics in float32, or in double for double inputs (float32 would lose precision there)."""
    return ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT


def _scalar(value: ir.Value | None) -> float | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(-1)[0])


def _trailing_dims(x: ir.Value, count: int) -> list[int | ir.SymbolicDim] | None:
    if x.shape is None or len(x.shape) < count:
        return None
    return list(x.shape)[len(x.shape) - count :]


def _all_equal(value: ir.Value, number: float) -> bool:
    tensor = ir.convenience.get_const_tensor(value)
    return tensor is not None and bool(np.all(tensor.numpy() == number))


def _as_normalized_tensor(value: ir.Value, shape) -> ir.TensorProtocol | None:
    """A constant operand reshaped (or broadcast, for scalars) to the normalised shape."""
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or shape is None or not all(isinstance(d, int) for d in shape):
        return None
    array = tensor.numpy()
    target = tuple(shape)
    if array.size == int(np.prod(target)):
        return ir.tensor(array.reshape(target))
    if array.size == 1:
        return ir.tensor(np.broadcast_to(array.reshape(()), target).copy())
    return None


def _has_shape(value: ir.Value, shape) -> bool:
    return shape is not None and value.shape is not None and list(value.shape) == list(shape)


_TAKEN: set[str] = set()  # node names in the model being fused (filled by _fuse)


def _scope(node: ir.Node) -> str:
    """'/encoder/encoders.0/norm1' from '/encoder/encoders.0/norm1/ReduceMean' (the module path, for
    readers), made unique among the names in the model."""
    name = node.name or ""
    scope = name.rsplit("/", 1)[0] if "/" in name else name
    scope = scope if scope.startswith("/") else "/" + scope
    unique, counter = scope, 1
    while f"{_PREFIX}{unique}/LayerNormalization" in _TAKEN:
        unique, counter = f"{scope}_{counter}", counter + 1
    _TAKEN.add(f"{_PREFIX}{unique}/LayerNormalization")
    return unique


FUSION_RULES = [
    *(LayerNormFusion.rule(form) for form in _NORMALIZE_FORMS),
    ScaleAbsorption.rule(),
    BiasAbsorption.rule(),
]
FLOAT32_RULES = [LayerNormInFloat32.rule(form) for form in _NORMALIZE_FORMS]


def constants_last(model: ir.Model) -> int:
    """Swap the operands of Add and Mul whose first operand is a constant and second is not.

    Exact (both ops are commutative in IEEE arithmetic, broadcasting included); it puts
    ``Mul(scale, x)`` and ``Add(eps, variance)`` in the order the patterns are written in.
    """
    swapped = 0
    for graph in patch.all_graphs(model):
        for node in graph:
            if node.op_type not in ("Add", "Mul") or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
                continue
            first, second = node.inputs
            if first is not None and second is not None and _is_constant(first) and not _is_constant(second):
                node.replace_input_with(0, second)
                node.replace_input_with(1, first)
                swapped += 1
    return swapped


def _is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.is_initializer() or (producer is not None and producer.op_type == "Constant")


def _candidates(model: ir.Model) -> list[ir.Value]:
    """Inputs of ReduceMean -> Sub -> (Pow | Mul) chains: where a decomposed LayerNorm may be."""
    found = []
    for graph in patch.all_graphs(model):
        for node in graph:
            if node.op_type != "ReduceMean" or not node.inputs or node.inputs[0] is None:
                continue
            subs = [use.node for use in node.outputs[0].uses() if use.node.op_type == "Sub"]
            if any(use.node.op_type in ("Pow", "Mul") for sub in subs for use in sub.outputs[0].uses()):
                found.append(node.inputs[0])
    return found


def _rewrite(model: ir.Model, rules: list[pattern.RewriteRule]) -> int:
    """Apply ``rules`` with the model's node names known, so the names added are unique."""
    global _TAKEN
    _TAKEN = {n.name for g in patch.all_graphs(model) for n in g if n.name}
    try:
        return apply_rewrite_rules(model, rules)
    finally:
        _TAKEN = set()


def _fuse(model: ir.Model) -> int:
    """Apply the fusion rules; returns how many LayerNormalization nodes they made."""
    _rewrite(model, FUSION_RULES)
    fused = 0
    for graph in patch.all_graphs(model):
        ours = [n for n in graph if (n.name or "").startswith(_PREFIX)]
        fused += sum(1 for n in ours if n.op_type == "LayerNormalization")
        for node in ours:
            if node.op_type == "Constant" and not node.outputs[0].uses():  # ones that a scale replaced
                graph.remove(node, safe=True)
    return fused


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    candidates = _candidates(model)
    if not candidates:
        return Applied(0)
    constants_last(model)
    opset = ai_onnx_opset(model) or 0
    reason = "the engine was told to keep the opset (--keep-opset)"
    if opset < _LAYER_NORM_OPSET and options.raise_opset and model.functions:
        options = dataclasses.replace(options, raise_opset=False)
        reason = "onnx's version converter drops model-local functions, and the model has some"
    if opset < _LAYER_NORM_OPSET and options.raise_opset:
        try:
            upgraded = convert_opset(model, _LAYER_NORM_OPSET, infer_types=True)
        except BadInputError as error:
            reason = str(error)
        else:
            patch.infer_types(upgraded, only_if_missing=_candidates(upgraded))
            count = _fuse(upgraded)
            if count == 0:
                return Applied(0)
            note = (
                f"raised ai.onnx opset {opset} -> {_LAYER_NORM_OPSET} (onnx.version_converter) for LayerNormalization"
            )
            return Applied(count, model=upgraded, notes=[note])
    patch.infer_types(model, only_if_missing=candidates)
    if opset >= _LAYER_NORM_OPSET:
        return Applied(_fuse(model))
    count = _rewrite(model, FLOAT32_RULES)
    note = (
        f"kept the decomposed form (opset {opset} < {_LAYER_NORM_OPSET}: {reason}); "
        f"{count} float16 chains now compute in float32"
    )
    return Applied(count, notes=[note])


FAMILY = RuleFamily(
    id="layer-norm",
    title="fuse decomposed LayerNorm into LayerNormalization (statistics in float32)",
    fixes=(
        "decomposed LayerNorm rounds differently from PyTorch's fused kernel, and in float16 its "
        "Pow(x - mean, 2) overflows and rows collapse to the bias"
    ),
    safe_when=(
        "always for the matched form: keepdims=1, trailing axes, constant epsilon and exponent 2, one precision; "
        "below opset 17 the model's opset is raised (or, with --keep-opset, float16 chains are widened to float32)"
    ),
    references=(
        "ONNX LayerNormalization (opset 17): https://onnx.ai/onnx/operators/onnx__LayerNormalization.html",
        "onnxruntime issue 30513 (keepdims=0 fused wrongly)",
        "FunASR issue 1889 (NaN in the SANM encoder in fp16)",
    ),
    apply=_apply,
)
