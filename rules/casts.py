"""Casts: remove identity casts and collapse Cast chains that a type lattice proves lossless.

``Cast(x, to=T)`` where x already is T does nothing and is removed (the FunASR export
leaves one in front of every LayerNorm, from ``.float()``). ``Cast(Cast(x, to=B), to=C)``
becomes ``Cast(x, to=C)`` when every value of x's type A is exact in B: then the middle
cast changes no value, and the chain equals the single cast (and nothing at all when C
is A). Whether A -> B is lossless comes from the types' ranges and mantissas
(:mod:`svsurgery.dtypes`), never from a list: f64 -> f32 -> f64 is *not* collapsed. Lossy
round trips (A -> B -> A with A -> B lossy: f32 -> f16 -> f32, float -> int -> float,
i64 -> i32 -> i64) are reported as findings and left alone here; the ``lossy-casts``
family removes one only where the reference shows parity improves. All of this is exact:
the model computes bit for bit what it computed before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import onnx_ir as ir

from svsurgery import patch
from svsurgery.dtypes import is_lossless
from svsurgery.rules.base import Applied, ApplyOptions, RuleFamily

__all__ = [
    "FAMILY",
    "CastChainCollapsePass",
    "IdentityCastRemovalPass",
    "LossyRoundTrip",
    "cast_inputs",
    "lossy_round_trips",
    "removable_cast",
]


def _cast_target(node: ir.Node) -> ir.DataType | None:
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or "to" not in node.attributes:
        return None
    attribute = node.attributes["to"]
    if attribute.is_ref():
        return None
    return ir.DataType(attribute.value)


def removable_cast(node: ir.Node) -> bool:
    """A Cast can disappear unless its output is a graph output its input cannot take over."""
    output, source = node.outputs[0], node.inputs[0]
    if not output.is_graph_output():
        return True
    assert source is not None, "callers pass Casts whose input is present"
    return not (
        source.is_graph_input() or source.is_initializer() or source.is_graph_output() or source.graph is not node.graph
    )


class IdentityCastRemovalPass(ir.passes.InPlacePass):
    """Remove every ``Cast(x, to=T)`` whose input already has type T (readers read x)."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.removed = []
        for graph in patch.all_graphs(model):
            for node in list(graph):
                target = _cast_target(node)
                if (
                    target is None
                    or node.inputs[0] is None
                    or node.inputs[0].dtype != target
                    or not removable_cast(node)
                ):
                    continue
                self.removed.append(node.name or "")
                patch.bypass(model, node)
        return ir.passes.PassResult(model, modified=bool(self.removed))


class CastChainCollapsePass(ir.passes.InPlacePass):
    """``Cast(Cast(x, B), C)`` -> ``Cast(x, C)`` when x's type -> B is lossless; the first Cast
    goes when nothing else reads it, the second too when C is x's type."""

    def __init__(self) -> None:
        super().__init__()
        self.collapsed: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.collapsed = []
        changed = True
        while changed:  # chains of three and more collapse one link per sweep
            changed = False
            for graph in patch.all_graphs(model):
                for node in list(graph):
                    if node.graph is None:
                        continue  # removed earlier in this sweep
                    if self._collapse(model, node):
                        changed = True
        return ir.passes.PassResult(model, modified=bool(self.collapsed))

    def _collapse(self, model: ir.Model, second: ir.Node) -> bool:
        if _cast_target(second) is None or second.inputs[0] is None:
            return False
        first = second.inputs[0].producer()
        middle = _cast_target(first) if first is not None else None
        if first is None or middle is None or first.inputs[0] is None:
            return False
        source = first.inputs[0]
        if source.dtype is None or not is_lossless(source.dtype, middle):
            return False
        self.collapsed.append(f"{first.name} -> {second.name}")
        second.replace_input_with(0, source)
        if not first.outputs[0].uses() and not first.outputs[0].is_graph_output():
            assert first.graph is not None, "first produces the input of a node in a graph"
            first.graph.remove(first, safe=True)
        if source.dtype == _cast_target(second) and removable_cast(second):
            patch.bypass(model, second)
        return True


@dataclasses.dataclass(frozen=True)
class LossyRoundTrip:
    first: str  # the Cast that loses information
    second: str  # the Cast back to the original type
    source: ir.DataType
    middle: ir.DataType

    def describe(self) -> str:
        if self.source.is_floating_point() and not self.middle.is_floating_point():
            loss = "truncates to integers"
        elif self.source.is_floating_point():
            loss = "rounds to the narrower float (precision and range)"
        else:
            loss = "wraps values outside the narrower integer range"
        return (
            f"lossy round trip {self.source.name} -> {self.middle.name} -> {self.source.name} "
            f"at '{self.first}' -> '{self.second}': {loss}"
        )


def lossy_round_trips(model: ir.Model) -> Iterator[tuple[ir.Node, ir.Node, LossyRoundTrip]]:
    """Every ``Cast(Cast(x, B), A)`` with x of type A and A -> B lossy."""
    for graph in patch.all_graphs(model):
        for second in graph:
            back = _cast_target(second)
            if back is None or second.inputs[0] is None:
                continue
            first = second.inputs[0].producer()
            middle = _cast_target(first) if first is not None else None
            if first is None or middle is None or first.inputs[0] is None:
                continue
            source = first.inputs[0].dtype
            if source is not None and source == back and not is_lossless(source, middle):
                yield first, second, LossyRoundTrip(first.name or "", second.name or "", source, middle)


def cast_inputs(model: ir.Model) -> list[ir.Value | None]:
    """The inputs of every Cast in the model (their types decide everything), function bodies
    included: one untyped there makes ``patch.infer_types`` run, which types a function from its
    call sites."""
    return [node.inputs[0] for graph in patch.all_graphs(model) for node in graph if _cast_target(node) is not None]


def _apply(model: ir.Model, options: ApplyOptions) -> Applied:
    patch.infer_types(model, only_if_missing=cast_inputs(model))
    identities, chains = IdentityCastRemovalPass(), CastChainCollapsePass()
    identities(model)
    removed = list(identities.removed)
    chains(model)
    identities(model)  # a collapsed chain can leave a cast whose input now has its type
    removed += identities.removed
    notes = []
    if removed:
        notes.append(f"removed {len(removed)} identity casts")
    if chains.collapsed:
        notes.append(f"collapsed {len(chains.collapsed)} lossless cast chains")
    findings = [trip.describe() for _, _, trip in lossy_round_trips(model)]
    return Applied(len(removed) + len(chains.collapsed), notes=notes, findings=findings)


FAMILY = RuleFamily(
    id="casts",
    title="remove identity casts, collapse provably lossless cast chains, report lossy round trips",
    fixes=(
        "redundant Casts (no-op Cast(to=FLOAT) from .float(), Cast->Cast chains in mask and positional paths) "
        "block fusions and hide where precision is really lost"
    ),
    safe_when="always: only casts that change no value are touched (decided by the types' ranges and mantissas)",
    references=(
        "onnxruntime issue 17953 (f64->f32->f64 cast removal reverted over accuracy)",
        "ONNX Cast: https://onnx.ai/onnx/operators/onnx__Cast.html",
    ),
    apply=_apply,
)
