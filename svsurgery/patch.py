"""The scripting API for hand-written graph patches, on onnx_ir.

For people who come from onnx-graphsurgeon or from editing protos by hand: find
nodes and values (subgraphs of If/Loop/Scan included), walk producers and consumers,
and make the common edits with functions whose names say what they do. Every edit
keeps graph outputs' names (the model's interface) and names what it adds with the
``svs/patch/`` prefix so it can be recognised in Netron.

A patch is a plain callable taking the model (``def patch(model: ir.Model) -> None``);
the rule engine accepts such callables as user rules.

Example::

    import svsurgery
    from svsurgery import patch

    model = svsurgery.load("encoder.onnx")
    for softmax in patch.find_nodes(model, op_type="Softmax"):
        patch.insert_casts(model, softmax, ir.DataType.FLOAT)
    patch.expose(model, ["/encoder/encoders.0/norm1/Add_1_output_0"])
    svsurgery.save(model, "encoder.patched.onnx")
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from svsurgery.errors import BadInputError

__all__ = [
    "NodeLike",
    "Patch",
    "ValueLike",
    "all_graphs",
    "bypass",
    "clone",
    "consumers",
    "downstream",
    "expose",
    "extract",
    "find_node",
    "find_nodes",
    "find_value",
    "find_values",
    "graft",
    "infer_types",
    "insert_after",
    "insert_before",
    "insert_casts",
    "producer",
    "remove_node",
    "rename_value",
    "replace_node",
    "replace_subgraph",
    "set_metadata",
    "upstream",
]

ValueLike = ir.Value | str
NodeLike = ir.Node | str
Patch = Callable[[ir.Model], Any]
InputLike = ir.Value | str | np.ndarray | float | int | None

_PREFIX = "svs/patch"
_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


# ----------------------------------------------------------------------------- finding


def all_graphs(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """Everything a pass over "the whole model" must cover, each once: the main graph, every
    If/Loop/Scan body in it (nested ones included), every model-local function and the bodies
    inside those functions."""
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.graph.subgraphs()]
    for function in model.functions.values():
        graphs.extend([function, *function.subgraphs()])
    return graphs


def _graphs(model: ir.Model | ir.Graph, recursive: bool) -> list[ir.Graph]:
    graph = model.graph if isinstance(model, ir.Model) else model
    return [graph, *graph.subgraphs()] if recursive else [graph]


def _name_matches(actual: str | None, wanted: str | re.Pattern) -> bool:
    actual = actual or ""
    if isinstance(wanted, re.Pattern):
        return wanted.search(actual) is not None
    if any(ch in wanted for ch in "*?["):
        return fnmatch.fnmatchcase(actual, wanted)
    return actual == wanted


def find_nodes(
    model: ir.Model | ir.Graph,
    op_type: str | None = None,
    *,
    name: str | re.Pattern | None = None,
    domain: str | None = None,
    where: Callable[[ir.Node], bool] | None = None,
    recursive: bool = True,
) -> list[ir.Node]:
    """Nodes matching every given criterion, in graph order, subgraph bodies included.

    ``name`` is exact, a glob when it contains ``*?[`` (``"/encoder/encoders.*/norm1/*"``),
    or a compiled regular expression (searched). ``domain`` ``""`` and ``"ai.onnx"``
    are the same domain.
    """
    wanted_domain = None if domain is None else ("" if domain == "ai.onnx" else domain)
    found = []
    for graph in _graphs(model, recursive):
        for node in graph:
            if op_type is not None and node.op_type != op_type:
                continue
            if wanted_domain is not None and (node.domain or "") != wanted_domain:
                continue
            if name is not None and not _name_matches(node.name, name):
                continue
            if where is not None and not where(node):
                continue
            found.append(node)
    return found


def find_node(model: ir.Model | ir.Graph, op_type: str | None = None, **criteria: Any) -> ir.Node:
    """The one node matching the criteria of :func:`find_nodes`; an error names the count otherwise."""
    found = find_nodes(model, op_type, **criteria)
    if len(found) != 1:
        described = ", ".join(f"{k}={v!r}" for k, v in {"op_type": op_type, **criteria}.items() if v is not None)
        names = ", ".join(repr(n.name) for n in found[:5])
        raise BadInputError(
            f"expected exactly one node with {described}, found {len(found)}" + (f": {names}" if names else "")
        )
    return found[0]


def _all_values(model: ir.Model | ir.Graph) -> Iterator[ir.Value]:
    for graph in _graphs(model, recursive=True):
        yield from graph.inputs
        yield from graph.initializers.values()
        for node in graph:
            yield from node.outputs


def find_value(model: ir.Model | ir.Graph, name: ValueLike) -> ir.Value:
    """The value with this name anywhere in the model (subgraph bodies included)."""
    if isinstance(name, ir.Value):
        return name
    for value in _all_values(model):
        if value.name == name:
            return value
    known = {v.name for v in _all_values(model) if v.name}
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise BadInputError(f"no value named '{name}' in the model{hint}")


def find_values(model: ir.Model | ir.Graph, names: Iterable[ValueLike]) -> list[ir.Value]:
    """:func:`find_value` for many names at once, in one walk over the model."""
    names = list(names)
    wanted = {n for n in names if not isinstance(n, ir.Value)}
    index: dict[str, ir.Value] = {}
    if wanted:
        for value in _all_values(model):
            if value.name in wanted and value.name not in index:
                index[value.name] = value
    return [n if isinstance(n, ir.Value) else index.get(n) or find_value(model, n) for n in names]


def _find_node(model: ir.Model | ir.Graph, node: NodeLike) -> ir.Node:
    if isinstance(node, ir.Node):
        return node
    return find_node(model, name=node)


def producer(model: ir.Model | ir.Graph, value: ValueLike) -> ir.Node | None:
    """The node computing ``value``; None for graph inputs and initializers."""
    return find_value(model, value).producer()


def consumers(model: ir.Model | ir.Graph, value: ValueLike) -> list[ir.Node]:
    """Nodes reading ``value``, each once, in no particular order."""
    return list(dict.fromkeys(use.node for use in find_value(model, value).uses()))


def upstream(
    model: ir.Model | ir.Graph, start: ValueLike | ir.Node, *, stop: Callable[[ir.Node], bool] | None = None
) -> Iterator[ir.Node]:
    """Producers reachable backwards from a value or node, nearest first (breadth-first).

    A node for which ``stop`` is true is yielded but not walked through.
    """
    return _walk(model, start, stop, forward=False)


def downstream(
    model: ir.Model | ir.Graph, start: ValueLike | ir.Node, *, stop: Callable[[ir.Node], bool] | None = None
) -> Iterator[ir.Node]:
    """Consumers reachable forwards from a value or node, nearest first (breadth-first)."""
    return _walk(model, start, stop, forward=True)


def _walk(model, start, stop, forward: bool) -> Iterator[ir.Node]:
    def neighbours(value: ir.Value) -> list[ir.Node]:
        if forward:
            return [use.node for use in value.uses()]
        node = value.producer()
        return [node] if node is not None else []

    if isinstance(start, ir.Node):
        frontier = deque(start.outputs if forward else [v for v in start.inputs if v is not None])
    else:
        frontier = deque([find_value(model, start)])
    seen: set[int] = set()
    while frontier:
        for node in neighbours(frontier.popleft()):
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield node
            if stop is not None and stop(node):
                continue
            frontier.extend(node.outputs if forward else [v for v in node.inputs if v is not None])


# ----------------------------------------------------------------------------- naming


class _Namer:
    """Unique names for what a patch adds, checked against every name in the model."""

    def __init__(self, model: ir.Model | ir.Graph) -> None:
        self.taken = {v.name for v in _all_values(model) if v.name}
        self.taken |= {n.name for g in _graphs(model, True) for n in g if n.name}

    def __call__(self, base: str) -> str:
        candidate, counter = f"{_PREFIX}/{base}", 0
        while candidate in self.taken:
            counter += 1
            candidate = f"{_PREFIX}/{base}_{counter}"
        self.taken.add(candidate)
        return candidate


def value_name(value: ir.Value) -> str:
    """``value.name`` for a value in a graph: onnx_ir names every value a graph holds (loaded
    ones keep their names, added ones get one), so only a value outside any graph has None."""
    assert value.name is not None, "a value in a graph always has a name"
    return value.name


def _node_graph(node: ir.Node) -> ir.Graph:
    graph = node.graph
    if graph is None:
        raise BadInputError(f"node '{node.name}' ({node.op_type}) is not part of a graph")
    return graph


def _owning_graph(value: ir.Value) -> ir.Graph:
    graph = value.graph
    if graph is None:
        raise BadInputError(f"value '{value.name}' is not part of a graph")
    return graph


def _place_after(graph: ir.Graph, value: ir.Value, nodes: Sequence[ir.Node]) -> None:
    """Insert nodes right after the producer of ``value`` (first in the graph for inputs)."""
    anchor = value.producer()
    if anchor is not None and anchor.graph is graph:
        graph.insert_after(anchor, nodes)
    elif len(graph) > 0:
        graph.insert_before(next(iter(graph)), nodes)
    else:
        graph.extend(nodes)


def _as_input(model: ir.Model, graph: ir.Graph, item: InputLike, namer: _Namer, hint: str) -> ir.Value | None:
    """Values pass through, names are looked up, numbers and arrays become initializers."""
    if item is None or isinstance(item, ir.Value):
        return item
    if isinstance(item, str):
        return find_value(model, item)
    array = np.asarray(item)
    if array.dtype == np.float64 and not isinstance(item, np.ndarray):
        array = array.astype(np.float32)  # a bare Python float means float32, as in exporters
    name = namer(hint)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def _type_graph_outputs(model: ir.Model, graph: ir.Graph) -> None:
    """Graph outputs must carry a type and shape in ONNX; infer them for values an edit made."""
    if any(v.type is None or v.shape is None for v in graph.outputs):
        infer_types(model)


def _adopt_uses(old: ir.Value, new: ir.Value, *, keep_name_on: str) -> None:
    """Move every use of ``old`` (graph outputs included) onto ``new`` except ``new``'s producer.

    ``keep_name_on`` is ``"new"`` to give ``new`` the old name (``old`` is renamed),
    ``"old"`` to keep it, except that a graph output always keeps its name.
    """
    own_node = new.producer()
    for use in list(old.uses()):
        if use.node is not own_node:
            use.node.replace_input_with(use.idx, new)
    was_output = old.is_graph_output()
    if was_output:
        graph = _owning_graph(old)
        for index, output in enumerate(graph.outputs):
            if output is old:
                graph.outputs[index] = new
    if keep_name_on == "new" or was_output:
        ir.convenience.rename_values([old, new], [value_name(new), value_name(old)])


# ----------------------------------------------------------------------------- inserting


def _new_node(
    model: ir.Model,
    graph: ir.Graph,
    namer: _Namer,
    op_type: str,
    first: ir.Value,
    inputs: Sequence[InputLike],
    attributes: dict[str, Any] | None,
    domain: str,
    name: str | None,
) -> ir.Node:
    node_name = name or namer(op_type)
    resolved = [first] + [
        _as_input(model, graph, item, namer, f"{op_type}_input{i + 1}") for i, item in enumerate(inputs)
    ]
    node = ir.Node(
        domain,
        op_type,
        resolved,
        attributes=ir.convenience.convert_attributes(attributes or {}),
        name=node_name,
    )
    node.outputs[0].name = namer(f"{op_type}_output")
    return node


def insert_after(
    model: ir.Model,
    value: ValueLike,
    op_type: str,
    inputs: Sequence[InputLike] = (),
    attributes: dict[str, Any] | None = None,
    *,
    domain: str = "",
    name: str | None = None,
) -> ir.Node:
    """Put a node between ``value`` and everything that reads it.

    The new node reads ``value`` (then ``inputs``: values, names, numbers or arrays);
    all former readers now read its first output. ``value`` keeps its name unless it
    is a graph output, whose name moves to the new output so the interface stays.
    """
    value = find_value(model, value)
    graph = _owning_graph(value)
    namer = _Namer(model)
    node = _new_node(model, graph, namer, op_type, value, inputs, attributes, domain, name)
    _place_after(graph, value, [node])
    _adopt_uses(value, node.outputs[0], keep_name_on="old")
    _type_graph_outputs(model, graph)
    return node


def insert_before(
    model: ir.Model,
    value: ValueLike,
    op_type: str,
    inputs: Sequence[InputLike] = (),
    attributes: dict[str, Any] | None = None,
    *,
    domain: str = "",
    name: str | None = None,
) -> ir.Node:
    """Put a node just before ``value``: its output takes over the value's name and readers.

    The value that was there is renamed ``svs/patch/...`` and feeds the new node. Graph
    inputs cannot be preceded (their name is the interface): use :func:`insert_after`.
    """
    value = find_value(model, value)
    if value.is_graph_input():
        raise BadInputError(f"'{value.name}' is a graph input; nothing can be inserted before it (use insert_after)")
    graph = _owning_graph(value)
    namer = _Namer(model)
    node = _new_node(model, graph, namer, op_type, value, inputs, attributes, domain, name)
    _place_after(graph, value, [node])
    _adopt_uses(value, node.outputs[0], keep_name_on="new")
    _type_graph_outputs(model, graph)
    return node


def insert_casts(
    model: ir.Model,
    node: NodeLike,
    compute_type: ir.DataType,
    *,
    restore_outputs: bool = True,
) -> list[ir.Node]:
    """Run ``node`` in ``compute_type``: Cast its floating-point inputs to it, and its outputs back.

    Only this node's reading of each input is changed; other readers see the original
    value. Outputs keep their names, types and readers (a Cast back to the original type
    is inserted after each) unless ``restore_outputs`` is False. Returns the Casts added.
    """
    node = _find_node(model, node)
    infer_types(model, only_if_missing=[*node.inputs, *node.outputs])
    graph = _node_graph(node)
    namer = _Namer(model)
    added: list[ir.Node] = []
    for index, value in enumerate(node.inputs):
        if value is None or value.dtype not in _FLOAT_TYPES or value.dtype == compute_type:
            continue
        cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", compute_type)], name=namer("Cast"))
        cast.outputs[0].name = namer("Cast_output")
        cast.outputs[0].dtype = compute_type
        cast.outputs[0].shape = value.shape
        graph.insert_before(node, cast)
        node.replace_input_with(index, cast.outputs[0])
        added.append(cast)
    for value in node.outputs:
        original = value.dtype
        if original not in _FLOAT_TYPES or original == compute_type:
            continue
        value.dtype = compute_type
        if restore_outputs:
            cast = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", original)], name=namer("Cast"))
            cast.outputs[0].name = namer("Cast_output")
            cast.outputs[0].dtype = original
            cast.outputs[0].shape = value.shape
            graph.insert_after(node, cast)
            _adopt_uses(value, cast.outputs[0], keep_name_on="new")
            added.append(cast)
    _retype_attributes_for(node, compute_type)
    _type_graph_outputs(model, graph)
    return added


def _retype_attributes_for(node: ir.Node, compute_type: ir.DataType) -> None:
    """Nodes whose output type is an attribute (Cast, ConstantOfShape...) follow the new type."""
    if node.op_type in ("Cast", "CastLike") and "to" in node.attributes:
        node.attributes["to"] = ir.AttrInt64("to", compute_type)


# ----------------------------------------------------------------------------- replacing


def replace_node(
    model: ir.Model,
    node: NodeLike,
    new_nodes: ir.Node | Sequence[ir.Node],
    outputs: Sequence[ir.Value] | None = None,
) -> None:
    """Replace ``node`` by ``new_nodes``; ``outputs`` (default: the last new node's outputs)
    take over the old outputs' readers, names, types and graph-output places, in order."""
    node = _find_node(model, node)
    new_nodes = [new_nodes] if isinstance(new_nodes, ir.Node) else list(new_nodes)
    outputs = list(outputs) if outputs is not None else list(new_nodes[-1].outputs)
    if len(outputs) != len(node.outputs):
        raise BadInputError(
            f"node '{node.name}' ({node.op_type}) has {len(node.outputs)} outputs but {len(outputs)} replacements"
            " were given"
        )
    _name_unnamed(model, new_nodes)
    graph = _node_graph(node)
    ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, node.outputs, outputs)
    _type_graph_outputs(model, graph)


def _name_unnamed(model: ir.Model, nodes: Sequence[ir.Node]) -> None:
    namer = _Namer(model)
    for node in nodes:
        if not node.name:
            node.name = namer(node.op_type)
        for output in node.outputs:
            if not output.name:
                output.name = namer(f"{node.op_type}_output")


def replace_subgraph(
    model: ir.Model,
    inputs: Sequence[ValueLike],
    outputs: Sequence[ValueLike],
    build: Callable[..., ir.Value | Sequence[ir.Value]],
) -> list[ir.Node]:
    """Replace the nodes that compute ``outputs`` from ``inputs`` by what ``build`` makes.

    ``build(tape, *inputs)`` receives an ``onnx_ir.tape.Tape`` and the input values
    and returns the new output values, in order. The region is every node between the
    inputs and the outputs; initializers and constants it reads are captured. A region
    that reaches a graph input not listed, or whose intermediate values are read from
    outside it, is refused with the offending value named. Returns the new nodes.
    """
    input_values = find_values(model, inputs)
    output_values = find_values(model, outputs)
    graph = _owning_graph(output_values[0])
    region = _region_between(input_values, output_values)
    region_ids = {id(n) for n in region}
    for node in region:
        for value in node.outputs:
            if value in output_values:
                continue
            outside = [u.node for u in value.uses() if id(u.node) not in region_ids]
            if outside or value.is_graph_output():
                reader = f"node '{outside[0].name}'" if outside else "the graph outputs"
                raise BadInputError(
                    f"value '{value.name}' inside the region is also read by {reader}; add it to outputs"
                )
    tape = ir.tape.Tape()
    new_outputs = build(tape, *input_values)
    new_outputs = [new_outputs] if isinstance(new_outputs, ir.Value) else list(new_outputs)
    if len(new_outputs) != len(output_values):
        raise BadInputError(f"build returned {len(new_outputs)} values for {len(output_values)} outputs")
    for initializer in tape.initializers:
        graph.register_initializer(initializer)
    new_nodes = list(tape.nodes)
    _name_unnamed(model, new_nodes)
    ordered = [n for n in graph if id(n) in region_ids]
    ir.convenience.replace_nodes_and_values(graph, ordered[-1], ordered, new_nodes, output_values, new_outputs)
    graph.sort()
    _type_graph_outputs(model, graph)
    return new_nodes


def _region_between(inputs: Sequence[ir.Value], outputs: Sequence[ir.Value]) -> list[ir.Node]:
    boundary = {id(v) for v in inputs}
    region: dict[int, ir.Node] = {}
    stack = list(outputs)
    while stack:
        value = stack.pop()
        if id(value) in boundary or value.is_initializer():
            continue
        node = value.producer()
        if node is None:
            raise BadInputError(f"the region reaches graph input '{value.name}', which is not among its inputs")
        if id(node) in region:
            continue
        region[id(node)] = node
        stack.extend(v for v in node.inputs if v is not None)
    if not region:
        raise BadInputError("no nodes lie between the given inputs and outputs")
    return list(region.values())


def bypass(model: ir.Model, node: NodeLike, input_index: int = 0) -> None:
    """Remove a one-output node, connecting its readers to its ``input_index``-th input.

    When the output was a graph output, the name stays: the input takes it over when
    it is a plain intermediate value, otherwise an Identity keeps the interface.
    """
    node = _find_node(model, node)
    if len(node.outputs) != 1:
        raise BadInputError(f"node '{node.name}' ({node.op_type}) has {len(node.outputs)} outputs; bypass needs one")
    source = node.inputs[input_index] if input_index < len(node.inputs) else None
    if source is None:
        raise BadInputError(f"node '{node.name}' ({node.op_type}) has no input {input_index}")
    output = node.outputs[0]
    graph = _node_graph(node)
    if output.is_graph_output():
        shared = source.is_graph_input() or source.is_initializer() or source.is_graph_output()
        if shared or source.graph is not graph:
            identity = ir.Node("", "Identity", [source], name=_Namer(model)("Identity"))
            replace_node(model, node, identity)
            return
        name = output.name
        output.replace_all_uses_with(source, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        source.name = name
        return
    output.replace_all_uses_with(source)
    graph.remove(node, safe=True)


def remove_node(model: ir.Model, node: NodeLike) -> None:
    """Remove a node whose outputs nobody reads (use :func:`bypass` for one that is read)."""
    node = _find_node(model, node)
    for value in node.outputs:
        if value.uses() or value.is_graph_output():
            raise BadInputError(
                f"node '{node.name}' ({node.op_type}) cannot be removed: its output '{value.name}' is still read"
                " (use bypass)"
            )
    _node_graph(node).remove(node, safe=True)


# ----------------------------------------------------------------------------- outputs, extraction, names


def infer_types(model: ir.Model, only_if_missing: Iterable[ir.Value | None] | None = None) -> None:
    """Fill in value types and shapes with ONNX shape inference (in place).

    With ``only_if_missing``, inference runs only when one of those values has no type.
    """
    if only_if_missing is not None and all(v is None or v.type is not None for v in only_if_missing):
        return
    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    for function in model.functions.values():
        _infer_function_types(model, function)


def _infer_function_types(model: ir.Model, function: ir.Function) -> None:
    """Type a model-local function's values from its call sites (ONNX inference leaves function
    bodies untyped): when every call feeds the same input types, the body is inferred as a
    graph with those inputs. Bodies with attribute references stay untyped."""
    calls = [
        node
        for graph in all_graphs(model)
        for node in graph
        if (node.domain, node.op_type, node.overload) == function.identifier()
    ]
    if not calls:
        return
    input_types: list[ir.TypeProtocol] = []
    input_shapes: list[list[Any] | None] = []
    for index in range(len(function.inputs)):
        fed = [c.inputs[index] if index < len(c.inputs) else None for c in calls]
        present = [v for v in fed if v is not None]
        types = {str(v.type) for v in present}
        if len(present) != len(fed) or len(types) != 1 or "None" in types:
            return
        first_type = present[0].type
        assert first_type is not None, "'None' is not among the types"
        input_types.append(first_type)
        shapes = [v.shape for v in present]
        ranked = [shape for shape in shapes if shape is not None]
        if len(ranked) != len(shapes) or len({len(shape) for shape in ranked}) != 1:
            input_shapes.append(None)  # rank differs between calls: unknown
        else:  # a dimension every call agrees on is kept, the others are unknown
            input_shapes.append(
                [d if all(str(other[i]) == str(d) for other in ranked) else None for i, d in enumerate(ranked[0])]
            )
    try:
        proto = ir.serde.serialize_function(function)
        inputs = [
            onnx.helper.make_tensor_value_info(
                name,
                int(t.dtype),
                None
                if shape is None
                else [d if isinstance(d, int) else (d.value if d is not None else None) for d in shape],
            )
            for name, t, shape in zip(proto.input, input_types, input_shapes)
        ]
        graph = onnx.helper.make_graph(
            list(proto.node), "function_body", inputs, [onnx.ValueInfoProto(name=n) for n in proto.output]
        )
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
        inferred = onnx.shape_inference.infer_shapes(
            onnx.helper.make_model(graph, opset_imports=opsets), data_prop=True
        )
    except Exception:
        return
    known = {info.name: info for info in _value_infos(inferred.graph)}
    body = ir.traversal.RecursiveGraphIterator(function)  # the function's If/Loop/Scan bodies too
    for value in (*function.inputs, *(v for node in body for v in node.outputs)):
        info = known.get(value.name)
        if value.type is None and info is not None and info.type.tensor_type.elem_type:
            value.dtype = ir.DataType(info.type.tensor_type.elem_type)
            if info.type.tensor_type.HasField("shape"):
                value.shape = ir.Shape(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in info.type.tensor_type.shape.dim
                )
    for value, t, shape in zip(function.inputs, input_types, input_shapes):
        if value.type is None:
            value.type = copy.deepcopy(t)
        if value.shape is None and shape is not None:
            value.shape = ir.Shape(d if isinstance(d, int) else (d.value if d is not None else None) for d in shape)


def _value_infos(graph) -> Iterator:
    """The value infos of an inferred GraphProto and of the If/Loop/Scan bodies in it."""
    yield from (*graph.value_info, *graph.output)
    for node in graph.node:
        for attribute in node.attribute:
            for body in (attribute.g,) if attribute.HasField("g") else attribute.graphs:
                yield from _value_infos(body)


def expose(model: ir.Model, values: Sequence[ValueLike]) -> list[ir.Value]:
    """Add intermediate values of the main graph as graph outputs (types inferred if missing)."""
    found = find_values(model, values)
    for value in found:
        if value.graph is not model.graph:
            owner = value.producer()
            raise BadInputError(
                f"value '{value.name}' lives inside a subgraph (node '{owner.name if owner else '?'}' body);"
                " only main-graph values can become outputs"
            )
    infer_types(model, only_if_missing=found)
    for value in found:
        if value.type is None:
            raise BadInputError(f"the type of '{value.name}' cannot be inferred; set value.dtype before exposing it")
        if not value.is_graph_output():
            model.graph.outputs.append(value)
    return found


def extract(model: ir.Model, inputs: Sequence[ValueLike], outputs: Sequence[ValueLike]) -> ir.Model:
    """A standalone model computing ``outputs`` from ``inputs``, with the initializers it uses.

    The original model is not changed. Input types come from the model (inferred if missing).
    """
    input_values = find_values(model, inputs)
    output_values = find_values(model, outputs)
    infer_types(model, only_if_missing=[*input_values, *output_values])
    for value in [*input_values, *output_values]:
        if value.graph is not model.graph:
            raise BadInputError(f"value '{value.name}' lives inside a subgraph; extract from the main graph")
        if value.type is None:
            raise BadInputError(f"the type of '{value.name}' cannot be inferred; set it before extracting")
    _region_between(input_values, output_values)  # refuses regions that are not bounded by the inputs
    graph = ir.convenience.extract(model.graph, input_values, output_values)
    return ir.Model(
        graph,
        ir_version=model.ir_version,
        producer_name="svsurgery",
        functions=list(model.functions.values()),
    )


def rename_value(model: ir.Model, value: ValueLike, new_name: str) -> ir.Value:
    """Rename a value everywhere it is referenced; refuses a name already in use."""
    value = find_value(model, value)
    if any(v.name == new_name for v in _all_values(model) if v is not value):
        raise BadInputError(f"cannot rename '{value.name}' to '{new_name}': that name is already used")
    ir.convenience.rename_values(value, new_name)
    return value


def clone(model: ir.Model) -> ir.Model:
    """A copy of ``model`` that edits cannot reach back from (for snapshots and rollbacks).

    ``ir.Model.clone`` shares tensors (fine: edits replace tensors, they do not write into
    them) but also the type objects of values, so setting ``value.dtype`` on the copy
    would change the original; here every value gets its own type. Cloning needs nodes in
    topological order (some converters append nodes out of order): a graph that is not is
    sorted first, which changes no computation.
    """
    try:
        copied = model.clone()
    except (ValueError, RuntimeError):
        for graph in all_graphs(model):
            graph.sort()
        copied = model.clone()
    copied.meta.update(model.meta)
    for graph in all_graphs(copied):
        values = [*graph.inputs, *graph.outputs, *(v for n in graph for v in n.outputs)]
        if isinstance(graph, ir.Graph):
            values.extend(graph.initializers.values())
        for value in values:
            if value.type is not None:
                value.type = copy.deepcopy(value.type)
    return copied


def graft(graph: ir.Graph, model: ir.Model, feeds: dict[str, ir.Value], prefix: str) -> dict[str, ir.Value]:
    """Append ``model``'s computation to ``graph``, its inputs bound to ``feeds``; returns its
    outputs by name.

    For embedding a whole third-party model (a VAD network) in a graph being built: the
    model is copied (the caller's stays as it was), converted to ``graph``'s ai.onnx opset
    when it differs, and every value and node it brings gets ``prefix/`` so nothing clashes.
    Inputs not in ``feeds`` must have initializer defaults. The caller declares the opsets
    of other domains the model uses on its own model.
    """
    # local: svsurgery.opset imports svsurgery.model_io, which imports this module
    from svsurgery.opset import ai_onnx_opset, convert_opset

    label = model.graph.name or "grafted model"
    if model.functions:
        raise BadInputError(f"{label}: models with local functions cannot be grafted (inline them first)")
    target = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx"))
    source = clone(model) if ai_onnx_opset(model) == target or target is None else convert_opset(model, target, label)
    inner = source.graph
    missing = [v.name for v in inner.inputs if v.name not in feeds and v.name not in inner.initializers]
    if missing:
        raise BadInputError(f"{label}: no value given for its inputs {missing} (given: {sorted(feeds)})")
    unknown = sorted(set(feeds) - {v.name for v in inner.inputs})
    if unknown:
        raise BadInputError(f"{label}: has no inputs {unknown} (inputs: {[v.name for v in inner.inputs]})")
    outputs = {value_name(value): value for value in inner.outputs}
    for value in list(inner.inputs):
        if value.name in feeds:
            value.replace_all_uses_with(feeds[value.name])
    nodes = list(inner)
    inner.remove(nodes)
    initializers = [v for v in inner.initializers.values() if v.name not in feeds]
    inner.initializers.clear()
    inner.inputs.clear()
    inner.outputs.clear()
    for value in initializers:
        value.name = f"{prefix}/{value.name}"
        graph.register_initializer(value)
    for node in nodes:
        node.name = f"{prefix}/{node.name or node.op_type}"
        for value in node.outputs:
            if value.name:
                value.name = f"{prefix}/{value.name}"
    graph.extend(nodes)
    for domain, version in source.opset_imports.items():
        if domain not in ("", "ai.onnx"):
            graph.opset_imports.setdefault(domain, version)
    return outputs


def set_metadata(model: ir.Model, key: str, value: Any) -> None:
    """Set a model-level metadata_props entry; non-strings are stored as JSON."""
    model.metadata_props[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
