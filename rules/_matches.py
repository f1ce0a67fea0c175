"""Shared by the normalisation and GELU families: sites, site-restricted rewrite rules, matches.

A family verified site by site names each site by the root node of its match (the node
that computes the pattern's output). :func:`restricted` wraps an onnxscript rule class
instance so that it rewrites only the site being verified (all sites when none is given),
and :func:`find_matches` runs a pattern without rewriting it, for families that only mark
what they matched (float32 regions).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from onnxscript.rewriter import pattern

from svsurgery.patch import all_graphs

__all__ = ["find_matches", "known_constants", "matchers", "reduced_axes", "restricted", "site_of"]


def site_of(node: ir.Node) -> str:
    """The name a site goes by: its root node's name, or (unnamed) the op and its output."""
    return node.name or f"{node.op_type} -> {node.outputs[0].name}"


def known_constants(model: ir.Model) -> None:
    """Give every Constant node's output its value (``const_value``), as onnxscript's own
    optimizer does, so patterns with literal constants (``x / sqrt(2)``) match them; nothing
    in the graph changes."""
    for graph in all_graphs(model):
        for node in graph:
            if (
                node.op_type != "Constant"
                or node.domain not in ("", "ai.onnx")
                or node.outputs[0].const_value is not None
            ):
                continue
            attribute = node.attributes.get("value")
            if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
                node.outputs[0].const_value = attribute.value


def restricted(instance: pattern.RewriteRuleClassBase, site: str | None) -> pattern.RewriteRule:
    """``instance`` as a rule that rewrites only the match that includes the node named by
    ``site`` (every match for None)."""

    def check(context, **bindings) -> pattern.MatchResult:
        if site is not None and not any(site_of(node) == site for node in context.nodes):
            return pattern.MatchResult().fail(f"not the site being verified ({site})")
        return instance.check(context, **bindings)

    return pattern.RewriteRule(
        instance.pattern,
        instance.rewrite,
        check,
        name=instance.name,
        remove_nodes=instance.remove_nodes,
        graph_pre_visitor=instance.setup,
        graph_post_visitor=instance.cleanup,
    )


def matchers(
    instances: Sequence[pattern.PatternBase], *, checked: bool = True, commute: bool = True
) -> list[pattern.Pattern]:
    """The instances' patterns as matchers for :func:`find_matches`: with their checks (or
    without: ``checked=False``), in every operand order of commutative ops (``commute``)."""
    rules: list[pattern.Pattern] = []
    for instance in instances:
        check = instance.check if checked else None
        rule = pattern.RewriteRule(instance.pattern, _nothing, check, name=instance.name)
        rules.extend(rule.commute() if commute else [rule])
    return rules


def _nothing(op, **_):  # a matcher's replacement: never applied
    raise AssertionError("a matcher rewrites nothing")


def find_matches(
    model: ir.Model, patterns: Sequence[pattern.Pattern | pattern.PatternBase], site: str | None = None
) -> list[tuple[ir.Node, list[ir.Node]]]:
    """(root node, matched nodes) of every match of ``patterns``, a node in at most one match;
    only the match rooted at ``site`` when one is given. Nothing is rewritten."""
    known_constants(model)
    found: list[tuple[ir.Node, list[ir.Node]]] = []
    taken: set[int] = set()
    for graph in all_graphs(model):
        for node in list(graph):
            if id(node) in taken or (site is not None and site_of(node) != site):
                continue
            for candidate in patterns:
                match = candidate.match(model, graph, node, check_nodes_are_removable=False)
                if match and not any(id(n) in taken for n in match.nodes):
                    found.append((node, list(match.nodes)))
                    taken.update(id(n) for n in match.nodes)
                    break
    return found


def reduced_axes(node: ir.Node, rank: int | None) -> list[int] | None:
    """The sorted negative axes a Reduce* node reduces; None if unknown, empty or all axes."""
    if "axes" in node.attributes:
        axes = list(node.attributes.get_ints("axes"))
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        tensor = ir.convenience.get_const_tensor(node.inputs[1])
        if tensor is None:
            return None
        axes = [int(a) for a in tensor.numpy().reshape(-1)]
    else:
        return None  # no axes: every axis (or none, with noop_with_empty_axes)
    if not axes:
        return None
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = [a - rank if a >= 0 else a for a in axes]
    return sorted(axes)
