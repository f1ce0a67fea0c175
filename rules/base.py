"""Rule families: what the engine applies, one verified pass at a time.

A family is a named group of rewrites that fix one kind of divergence, with the facts
a reviewer needs (what it fixes, when it is safe, references) and an ``apply`` that
changes the model in place and says how many places it changed. Families are built from
onnxscript rewrite rules (:func:`from_rewrite_rules`), onnx_ir passes
(:func:`from_pass`) or plain patch callables (:func:`from_patch`), so a user's own rules
go through exactly the engine's verification. :func:`load_rules_module` turns a module
path given on the command line (``--rules-module pkg.mod`` or ``path/to/file.py``) into
families.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import onnx_ir as ir
from onnxscript.rewriter import pattern

from svsurgery.errors import BadInputError
from svsurgery.patch import all_graphs
from svsurgery.user_code import import_user_module

__all__ = [
    "Applied",
    "ApplyOptions",
    "RuleFamily",
    "as_family",
    "from_pass",
    "from_patch",
    "from_rewrite_rules",
    "graph_fingerprint",
    "load_rules_module",
]

Acceptance = Literal["no-worse", "improves"]


@dataclasses.dataclass(frozen=True)
class ApplyOptions:
    """What the engine lets a family do."""

    raise_opset: bool = True  # may a family raise the model's ai.onnx opset (with onnx's version converter)?
    site: str | None = None  # for families verified site by site: the one site to change
    precision: ir.DataType = ir.DataType.FLOAT  # what the model computes in when verified and shipped
    # (FLOAT16 for `svsurgery fp16` and for float16 models: precision rules act only then)

    @property
    def low_precision(self) -> bool:
        return self.precision in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclasses.dataclass
class Applied:
    """What one application of a family did."""

    matches: int | None  # places changed; None when unknown (a plain patch that changed something)
    model: ir.Model | None = None  # a new model object when the family had to rebuild the model
    notes: list[str] = dataclasses.field(default_factory=list)  # what the report should say it did
    findings: list[str] = dataclasses.field(default_factory=list)  # what it found but left alone
    # values whose contents the family changed on purpose (a mask constant -inf -> finite): recorded in
    # the model's provenance so a comparison with the original does not report them as divergences
    changed_values: list[str] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.matches is None or self.matches > 0


@dataclasses.dataclass(frozen=True)
class RuleFamily:
    """One entry of the catalog.

    ``apply(model, options)`` changes ``model`` in place (or returns a new one in
    :attr:`Applied.model`). ``acceptance`` is what the engine requires of the parity
    afterwards: ``"no-worse"`` (within the margin of before, and within tolerance if it
    was) or ``"improves"`` (strictly better: for rewrites that change the computed values
    on purpose). A family with ``sites`` is applied and verified one site at a time, so
    one bad site is rolled back without losing the good ones; with ``sites_on_rollback``
    it is applied whole first (one verification), and one site at a time only when that
    whole pass is rolled back.
    """

    id: str
    title: str
    fixes: str
    safe_when: str
    apply: Callable[[ir.Model, ApplyOptions], Applied]
    references: tuple[str, ...] = ()
    acceptance: Acceptance = "no-worse"
    sites: Callable[[ir.Model], list[str]] | None = None
    sites_on_rollback: bool = False  # with sites: applied whole first, site by site only if that is rolled back
    origin: str = "svsurgery"

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "fixes": self.fixes,
            "safe_when": self.safe_when,
            "references": list(self.references),
            "acceptance": self.acceptance,
            "origin": self.origin,
        }


# ----------------------------------------------------------------------------- adapters


def apply_rewrite_rules(model: ir.Model, rules: Sequence[pattern.RewriteRule], *, commute: bool = False) -> int:
    """Apply onnxscript rules everywhere in the model (subgraphs and functions included);
    returns how many places were rewritten. Constants that only the rewritten nodes read
    (epsilons, exponents) are removed with them; other dead code is left as it was."""
    if not rules:
        return 0
    live = _live_constants(model)
    count = pattern.RewriteRuleSet(list(rules), commute=commute).apply_to_model(model)
    if count:
        for graph, value in live:
            if value.uses() or value.is_graph_output() or value.is_graph_input():
                continue
            producer = value.producer()
            if producer is not None and producer.graph is not None:  # a function's nodes live in its .graph
                producer.graph.remove(producer, safe=True)
            elif isinstance(graph, ir.Graph) and value.name is not None and graph.initializers.get(value.name) is value:
                graph.initializers.pop(value.name)
    return count


def _live_constants(model: ir.Model) -> list[tuple[ir.Graph | ir.Function, ir.Value]]:
    """(graph, value) of every read Constant-node output and initializer."""
    live: list[tuple[ir.Graph | ir.Function, ir.Value]] = []
    for graph in all_graphs(model):
        if isinstance(graph, ir.Graph):
            live.extend((graph, v) for v in graph.initializers.values() if v.uses())
        live.extend(
            (graph, n.outputs[0]) for n in graph if n.op_type == "Constant" and n.outputs and n.outputs[0].uses()
        )
    return live


def from_rewrite_rules(
    id: str,
    rules: Sequence[pattern.RewriteRule],
    *,
    title: str,
    fixes: str = "",
    safe_when: str = "",
    commute: bool = False,
    **kwargs,
) -> RuleFamily:
    """A family of onnxscript rewrite rules (``RewriteRuleClassBase.rule()`` objects);
    ``commute`` also tries every operand order of commutative ops."""
    rules = list(rules)

    def apply(model: ir.Model, options: ApplyOptions) -> Applied:
        return Applied(apply_rewrite_rules(model, rules, commute=commute))

    return RuleFamily(id=id, title=title, fixes=fixes, safe_when=safe_when, apply=apply, **kwargs)


def from_pass(id: str, ir_pass: ir.passes.PassBase, *, title: str | None = None, **kwargs) -> RuleFamily:
    """A family made of one onnx_ir pass; it counts as one match when the pass modified the model."""

    def apply(model: ir.Model, options: ApplyOptions) -> Applied:
        result = ir_pass(model)
        return Applied(int(result.modified), model=result.model if result.model is not model else None)

    doc = (inspect.getdoc(ir_pass) or "").split("\n\n")[0].replace("\n", " ")
    kwargs.setdefault("fixes", doc)
    kwargs.setdefault("safe_when", "")
    return RuleFamily(id=id, title=title or type(ir_pass).__name__, apply=apply, **kwargs)


def from_patch(id: str, function: Callable[[ir.Model], object], *, title: str | None = None, **kwargs) -> RuleFamily:
    """A family made of a plain patch (``def patch(model) -> None``, as the patch API writes them).

    A patch that returns an int reports that many matches; otherwise the engine compares
    the graph before and after to tell whether it changed anything.
    """

    def apply(model: ir.Model, options: ApplyOptions) -> Applied:
        before = graph_fingerprint(model)
        returned = function(model)
        if isinstance(returned, bool) or not isinstance(returned, int):
            return Applied(None if graph_fingerprint(model) != before else 0)
        return Applied(returned)

    doc = (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ")
    kwargs.setdefault("fixes", doc)
    kwargs.setdefault("safe_when", "")
    return RuleFamily(id=id, title=title or function.__name__, apply=apply, **kwargs)


def graph_fingerprint(model: ir.Model) -> tuple:
    """A cheap structural summary (nodes, names, wiring, attributes, initializer identities,
    opsets, metadata) that changes whenever a patch edits the model."""
    items: list[tuple] = []
    for graph in all_graphs(model):
        for node in graph:
            attributes = tuple(
                (name, repr(attr.value) if attr.type != ir.AttributeType.TENSOR else id(attr.value))
                for name, attr in node.attributes.items()
                if attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            )
            outputs = tuple(v.name for v in node.outputs)
            items.append((node.op_type, node.domain, node.name, tuple(id(v) for v in node.inputs), outputs, attributes))
        items.append(tuple(id(v) for v in graph.outputs))
        if isinstance(graph, ir.Graph):
            items.append(tuple((name, id(v.const_value)) for name, v in graph.initializers.items()))
    items.append(tuple(sorted(model.opset_imports.items())))
    items.append(tuple(sorted(model.metadata_props.items())))
    return tuple(items)


# ----------------------------------------------------------------------------- user modules


def load_rules_module(spec: str) -> list[RuleFamily]:
    """Families from a user module: ``pkg.mod`` (importable) or ``path/to/rules.py``.

    The module's ``SVSURGERY_RULES`` list, if present, is used as is, in order. Its
    items may be RuleFamily objects, onnxscript ``RewriteRule``/``RewriteRuleSet``
    objects, ``RewriteRuleClassBase`` subclasses, onnx_ir passes or plain patch
    callables. Without it, every RuleFamily, RewriteRule, RewriteRuleSet and pass
    instance defined at the module's top level is taken, in definition order (plain
    functions only through ``SVSURGERY_RULES``: a module's helpers are not rules).
    """
    module = import_user_module(spec, f"--rules-module {spec}")
    label = Path(spec).stem if spec.endswith(".py") else spec
    if hasattr(module, "SVSURGERY_RULES"):
        items = list(module.SVSURGERY_RULES)
        explicit = True
    else:
        items = [
            value
            for name, value in vars(module).items()
            if not name.startswith("_") and not (inspect.isclass(value) and value.__module__ != module.__name__)
        ]  # rule classes count only where they are defined, not where they are imported
        explicit = False
    families = []
    for index, item in enumerate(items):
        family = _as_family(item, f"{label}.{_name_of(item, index)}", explicit)
        if family is not None:
            families.append(dataclasses.replace(family, origin=f"user module {spec}"))
    if not families:
        raise BadInputError(
            f"--rules-module {spec}: defines no rules (expected SVSURGERY_RULES, or RewriteRule / RuleFamily / "
            "pass objects at the top level)"
        )
    return families


def _name_of(item: object, index: int) -> str:
    name = getattr(item, "id", None) or getattr(item, "name", None) or getattr(item, "__name__", None)
    return str(name) if name else f"rule{index}"


def as_family(item: object, id: str) -> RuleFamily:
    """A RuleFamily from any kind of rule: a RuleFamily, RewriteRule(Set), rule class, pass or patch callable."""
    family = _as_family(item, id, explicit=True)
    if family is None:  # explicit: only an abstract rule class is neither taken nor refused there
        raise BadInputError(f"rule {item!r} is an abstract rule class: it has no pattern or rewrite to apply")
    return family


def _as_family(item: object, id: str, explicit: bool) -> RuleFamily | None:
    if isinstance(item, RuleFamily):
        return item
    if isinstance(item, pattern.RewriteRule):
        return _rules_family(id, [item])
    if isinstance(item, pattern.RewriteRuleSet):
        return _rules_family(id, list(item.rules))
    if (
        inspect.isclass(item)
        and issubclass(item, pattern.RewriteRuleClassBase)
        and item is not pattern.RewriteRuleClassBase
    ):
        if inspect.isabstract(item):
            return None
        return _rules_family(id, [item.rule()], doc=inspect.getdoc(item))
    if isinstance(item, ir.passes.PassBase):
        return from_pass(id, item)
    if explicit and callable(item):
        return from_patch(id, item)
    if explicit:
        raise BadInputError(f"SVSURGERY_RULES item {item!r} is not a rule, pass or callable")
    return None


def _rules_family(id: str, rules: list[pattern.RewriteRule], doc: str | None = None) -> RuleFamily:
    title = (doc or "").split("\n")[0] or ", ".join(str(r) for r in rules)
    return from_rewrite_rules(id, rules, title=title, fixes=doc or "")
