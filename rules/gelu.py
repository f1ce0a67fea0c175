"""GELU chains in float16 models: fused into Gelu (opset >= 20) or computed in float32, either way in float32.

Exporters below opset 20 write GELU as its arithmetic: ``x * (erf(x / sqrt 2) + 1) * 0.5``
(erf form, in the operand orders onnxscript's shipped patterns cover:
``onnxscript.rewriter.ort_fusions.gelu.GeluErfFusion`` and ``erfgelu``) or
``x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (tanh form, ``GeluTanhFusion``).
Converted to float16, each step rounds: for negative x, ``erf + 1`` cancels and keeps
almost no significant bits (at x = -3 the float16 chain is 10 % off); ``x * (erf + 1)``
is twice the result and overflows from x = 32752 on, where GELU itself is still in range;
in the tanh form ``x^3`` overflows from |x| = 40. For models computed in float16 this
family replaces each chain by ``Gelu`` (``approximate`` "none" or "tanh") at opset 20 and
above, or leaves it as it is below, and marks it to compute in float32 either way: one Cast
in, one out, and the result rounded to float16 once. The patterns are onnxscript's; only
the replacement is this family's. Float32 models are left as they are.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import erfgelu
from onnxscript.rewriter.ort_fusions.gelu import GeluErfFusion, GeluTanhFusion

from svsurgery.opset import ai_onnx_opset
from svsurgery.precision import keep_in_float32
from svsurgery.rules._matches import find_matches, known_constants, matchers, restricted, site_of
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily, apply_rewrite_rules

__all__ = ["FAMILY", "ErfGeluToGelu", "TanhGeluToGelu"]

_GELU_OPSET = 20
_PREFIX = "svs/rule/gelu"


class _ToGelu:
    """Shared by the fusions: refused below opset 20; the Gelu they write computes in float32."""

    approximate = "none"

    def check(self, context, x, **_) -> pattern.MatchResult:
        if (ai_onnx_opset(context.model) or 0) < _GELU_OPSET:
            return pattern.MatchResult().fail(f"Gelu needs ai.onnx opset {_GELU_OPSET}", x)
        self._root = context.root
        return pattern.MatchResult()

    def rewrite(self, op, x, **_):
        gelu = op.op("Gelu", x, approximate=self.approximate, _name=f"{_PREFIX}{_scope(self._root)}/Gelu")
        keep_in_float32(gelu.producer(), f"{FAMILY.id}: GELU computed in float32, rounded once")
        return gelu


# _ToGelu.check names the bindings onnxscript passes (check(context, **bindings)); PatternBase's
# signature (op, *args, **kwargs) admits no named ones
class ErfGeluToGelu(_ToGelu, GeluErfFusion):  # type: ignore[misc]
    """onnxscript's ``x * (erf(x / sqrt 2) + 1) * 0.5`` -> Gelu(x), in float32."""


# _ToGelu.check names the bindings onnxscript passes (check(context, **bindings)); PatternBase's
# signature (op, *args, **kwargs) admits no named ones
class TanhGeluToGelu(_ToGelu, GeluTanhFusion):  # type: ignore[misc]
    """onnxscript's tanh-approximation chain -> Gelu(x, approximate="tanh"), in float32."""

    approximate = "tanh"


# _ToGelu.check names the bindings onnxscript passes (check(context, **bindings)); PatternBase's
# signature (op, *args, **kwargs) admits no named ones
class _ErfGeluForm(_ToGelu, pattern.RewriteRuleClassBase):  # type: ignore[misc]
    """onnxscript's ``erfgelu`` pattern functions (``0.5 * (x * (erf + 1))``, ``x * (0.5 * (erf + 1))``)
    as a rule class."""

    def __init__(self, form) -> None:
        super().__init__(f"ErfGelu[{form.__name__}]")
        self._form = form

    def pattern(self, op, x):
        return self._form(op, x)


FUSIONS = [
    ErfGeluToGelu(),
    TanhGeluToGelu(),
    _ErfGeluForm(erfgelu.erf_gelu_pattern_1),
    _ErfGeluForm(erfgelu.erf_gelu_pattern_2),
]
CHAINS = matchers(FUSIONS, checked=False)  # the same patterns without the opset check: where the chains are


def _scope(node) -> str:
    name = node.name or node.outputs[0].name
    scope = name.rsplit("/", 1)[0] if "/" in name else name
    return scope if scope.startswith("/") else "/" + scope


def _chains(model, site: str | None = None):
    """Every GELU chain (root, nodes), whatever the opset."""
    return find_matches(model, CHAINS, site)


def _sites(model) -> list[str]:
    return [site_of(root) for root, _ in _chains(model)]


def _apply(model, options: ApplyOptions) -> Applied:
    if not options.low_precision:
        return Applied(0, notes=["the model computes in float32: GELU already does (see svsurgery fp16)"])
    opset = ai_onnx_opset(model) or 0
    known_constants(model)
    if opset >= _GELU_OPSET:
        fused = apply_rewrite_rules(model, [restricted(rule, options.site) for rule in FUSIONS], commute=True)
        chains_word = "chain" if fused == 1 else "chains"
        return Applied(
            fused, notes=[f"{fused} GELU {chains_word} fused into Gelu, computed in float32"] if fused else []
        )
    chains = _chains(model, options.site)
    for _, nodes in chains:
        for node in nodes:
            keep_in_float32(node, f"{FAMILY.id}: GELU chain computed in float32, rounded once")
    verb = "chain computes" if len(chains) == 1 else "chains compute"
    notes = [f"{len(chains)} GELU {verb} in float32 (opset {opset} < {_GELU_OPSET}: no Gelu)"] if chains else []
    return Applied(len(chains), notes=notes)


FAMILY = RuleFamily(
    id="gelu",
    title="GELU chains (erf or tanh form) in float32 in float16 models, fused into Gelu at opset >= 20",
    fixes=(
        "float16 rounds every step of a decomposed GELU: erf + 1 cancels for negative inputs, x * (erf + 1) "
        "overflows at half of float16's range, x^3 of the tanh form beyond |x| = 40"
    ),
    safe_when=(
        "float16 models; the chain's own math, computed in float32 and rounded once; kept when parity "
        "improves or headroom rises"
    ),
    references=(
        "ONNX Gelu (opset 20): https://onnx.ai/onnx/operators/onnx__Gelu.html",
        "onnxscript rewriter GeluErfFusion / GeluTanhFusion / erfgelu patterns (onnxscript/rewriter/ort_fusions)",
    ),
    apply=_apply,
    acceptance="improves",
    sites=_sites,
    sites_on_rollback=True,
)
