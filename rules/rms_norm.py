"""RMSNorm: fused into RMSNormalization where the opset has it, its statistics in float32 otherwise.

Exporters below opset 23 (and torch's dynamo exporter at 18) write RMSNorm as::

    mean_square = ReduceMean(Pow(x, 2) | Mul(x, x), axes=[-1])
    y           = x / Sqrt(mean_square + eps)  |  x * Reciprocal(Sqrt(mean_square + eps))
    y           = y * scale                                   (usually)

In float16 the square overflows once |x| passes 256 (its magnitude grows with the input
scale squared), and the row collapses to zero. At opset 23 and above this family fuses the
chain into ``RMSNormalization`` with ``stash_type=FLOAT`` (statistics in float32 whatever
the input type): onnxscript's shipped ``RmsNormFusion`` rules for the Reciprocal form
(``onnxscript.rewriter.rules.fusion._rms_normalization``) and the same rule written with Div.
Below opset 23 (the opset is not raised for it), in models computed in float16, the
normalisation core (square, mean, epsilon, Sqrt, Reciprocal, Div/Mul) is marked to compute
in float32: the conversion casts into it and out of it once. The variance chain of a
decomposed LayerNorm that ``layer-norm`` did not fuse has this form too and gets the same
protection. Matches are refused when the reduction is not over the last axis alone, keeps
no dims, or when epsilon or the exponent is not a constant (2).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, pattern

# a private module: onnxscript exports its ONNX-domain RMSNormalization rule nowhere else (its own
# onnx_fusions imports it from here); only this module depends on the path
from onnxscript.rewriter.rules.fusion._rms_normalization import RmsNormFusion

from svsurgery import patch
from svsurgery.opset import ai_onnx_opset
from svsurgery.precision import keep_in_float32
from svsurgery.rules._matches import find_matches, known_constants, matchers, reduced_axes, restricted, site_of
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily, apply_rewrite_rules

__all__ = ["FAMILY", "DecomposedRmsNorm", "RmsNormDivFusion", "RmsNormalizationFusion"]

_RMS_NORMALIZATION_OPSET = 23
_PREFIX = "svs/rule/rms-norm"
_FORMS = ("div", "mul", "mul-swapped")


class RmsNormalizationFusion(RmsNormFusion):
    """onnxscript's shipped rule (``x * Reciprocal(Sqrt(mean(x^2) + eps)) * scale``), refused below
    opset 23 and writing a named node."""

    # onnxscript calls check(context, **bindings); the base's (op, *args, **kwargs) admits no named bindings
    def check(self, context, x, scale, epsilon, compute_dtype, target_dtype, **_) -> MatchResult:  # type: ignore[override]
        if (ai_onnx_opset(context.model) or 0) < _RMS_NORMALIZATION_OPSET:
            return pattern.MatchResult().fail(f"RMSNormalization needs ai.onnx opset {_RMS_NORMALIZATION_OPSET}", x)
        self._scope = _scope(context.root)
        return super().check(context, x, scale, epsilon, compute_dtype, target_dtype)

    def rewrite(self, op, x, scale, epsilon, **_):
        return op.op(
            "RMSNormalization",
            x,
            scale,
            axis=-1,
            epsilon=_scalar(epsilon),
            stash_type=int(self._stash_dtype),
            _name=f"{_PREFIX}{self._scope}/RMSNormalization",
        )


class RmsNormDivFusion(RmsNormalizationFusion):
    """The same rule for ``x / Sqrt(mean(x^2) + eps) * scale``."""

    def pattern(self, op, x, scale, epsilon, compute_dtype, target_dtype):
        x = pattern.OrValue([op.Cast(x, to=compute_dtype), x])
        mean_square = op.ReduceMean(op.Pow(x, 2.0), [-1], keepdims=1, noop_with_empty_axes=0)
        normalized = op.Div(x, op.Sqrt(op.Add(mean_square, epsilon)))
        normalized = pattern.OrValue([op.Cast(normalized, to=target_dtype), normalized])
        return op.Mul(normalized, scale) if self._mul_order else op.Mul(scale, normalized)


class DecomposedRmsNorm(pattern.PatternBase):
    """The normalisation core ``x / sqrt(mean(x^2) + eps)`` in any of the forms exporters write
    (axes as attribute or input, Pow or Mul, Div or Reciprocal), found to be computed in float32."""

    def __init__(self, normalize: str) -> None:
        super().__init__(f"DecomposedRmsNorm[{normalize}]")
        self._normalize = normalize

    def pattern(self, op, x, exponent, epsilon):
        squared = pattern.OrValue([op.Pow(x, exponent), op.Mul(x, x)])
        mean_square = op.ReduceMean(
            squared, _allow_other_attributes=True, _allow_other_inputs=True, _outputs=["mean_square"]
        )
        rms = op.Sqrt(op.Add(mean_square, epsilon))
        if self._normalize == "div":
            return op.Div(x, rms)
        if self._normalize == "mul":
            return op.Mul(x, op.Reciprocal(rms))
        return op.Mul(op.Reciprocal(rms), x)

    # onnxscript calls check(context, **bindings); the base's (op, *args, **kwargs) admits no named bindings
    def check(self, context, x, exponent, epsilon, mean_square, **_) -> MatchResult:  # type: ignore[override]
        result = pattern.MatchResult()
        node = mean_square.producer()
        if node.attributes.get_int("keepdims", 1) != 1:
            return result.fail("keepdims=0: the mean square does not broadcast back over the row", node)
        rank = len(x.shape) if x.shape is not None else None
        if reduced_axes(node, rank) != [-1]:
            return result.fail("the mean square is not taken over the last axis alone", node)
        if exponent is not None and _scalar(exponent) != 2.0:
            return result.fail("the square is a Pow with an exponent other than the constant 2", exponent)
        if _scalar(epsilon) is None:
            return result.fail("epsilon is not a constant scalar", epsilon)
        return result


FUSIONS = [
    cls(f"{cls.__name__}[{order}]", mul_order=order == "scale-last")
    for cls in (RmsNormalizationFusion, RmsNormDivFusion)
    for order in ("scale-last", "scale-first")
]
CORES = matchers([DecomposedRmsNorm(form) for form in _FORMS])


def _scalar(value: ir.Value | None) -> float | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(-1)[0])


def _scope(node: ir.Node) -> str:
    name = node.name or node.outputs[0].name
    assert name is not None, "a node in a graph has its outputs named"
    scope = name.rsplit("/", 1)[0] if "/" in name else name
    return scope if scope.startswith("/") else "/" + scope


def explicit_defaults(model: ir.Model) -> None:
    """Write out the default ``keepdims=1`` / ``noop_with_empty_axes=0`` of ReduceMean nodes that
    average a square (exact: the defaults are what they compute), so the shipped pattern, which
    names them, matches exporters that leave them implicit."""
    for graph in patch.all_graphs(model):
        for node in graph:
            source = (
                node.inputs[0].producer()
                if node.op_type == "ReduceMean" and node.inputs and node.inputs[0] is not None
                else None
            )
            if source is None or source.op_type not in ("Pow", "Mul"):
                continue
            for name, default in (("keepdims", 1), ("noop_with_empty_axes", 0)):
                if name not in node.attributes:
                    node.attributes[name] = ir.AttrInt64(name, default)


def _sites(model: ir.Model) -> list[str]:
    return [site_of(root) for root, _ in find_matches(model, CORES)]


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    patch.infer_types(
        model,
        only_if_missing=[
            n.inputs[0] for g in patch.all_graphs(model) for n in g if n.op_type == "ReduceMean" and n.inputs
        ],
    )
    fused = 0
    known_constants(model)
    if (ai_onnx_opset(model) or 0) >= _RMS_NORMALIZATION_OPSET:
        explicit_defaults(model)
        fused = apply_rewrite_rules(model, [restricted(rule, options.site) for rule in FUSIONS])
    notes = [f"{fused} RMSNorm chains fused into RMSNormalization (statistics in float32)"] if fused else []
    marked = 0
    if options.low_precision:
        for _, nodes in find_matches(model, CORES, options.site):
            for node in nodes:
                keep_in_float32(node, f"{FAMILY.id}: RMSNorm statistics in float32")
            marked += 1
        if marked:
            notes.append(
                f"{marked} RMSNorm cores compute in float32 (opset {ai_onnx_opset(model)} has no "
                "RMSNormalization, or no scale followed)"
            )
    elif not fused:
        notes.append(
            f"opset {ai_onnx_opset(model)} < {_RMS_NORMALIZATION_OPSET}: no RMSNormalization; the "
            "model computes in float32"
        )
    return Applied(fused + marked, notes=notes)


FAMILY = RuleFamily(
    id="rms-norm",
    title=(
        "fuse decomposed RMSNorm into RMSNormalization (opset >= 23), else its statistics in float32 in float16 models"
    ),
    fixes="in float16 the square of a decomposed RMSNorm overflows beyond |x| = 256 and the row collapses to zero",
    safe_when=(
        "the mean square is over the last axis with keepdims, epsilon and the exponent (2) constant; "
        "fusion keeps the same math; the float32 core costs two Casts per norm"
    ),
    references=(
        "ONNX RMSNormalization (opset 23): https://onnx.ai/onnx/operators/onnx__RMSNormalization.html",
        "onnxscript rewriter RmsNormFusion (onnxscript/rewriter/rules/fusion/_rms_normalization.py)",
    ),
    apply=_apply,
    sites=_sites,
    sites_on_rollback=True,
)
