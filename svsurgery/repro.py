"""Minimal repros: the subgraph that computes one node, with the tensors it saw, as files.

``extract_repro`` runs the whole model on the inputs with the node's inputs exposed,
cuts the node (and, with ``depth``, the nodes that feed it) out as a standalone model with
its weights, and checks that the cut model, fed the captured tensors, reproduces the
captured outputs bit for bit (both run unfused, in fp32 as they are in the graph). The
inputs and expected outputs are written as a golden file, so ``svsurgery check repro.onnx
repro.npz`` re-runs it and anyone can attach both to a bug report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from rich.markup import escape

from svsurgery import patch
from svsurgery.errors import BadInputError
from svsurgery.patch import value_name
from svsurgery.report import Report
from svsurgery.runtime import run

__all__ = ["Repro", "extract_repro"]


@dataclasses.dataclass
class Repro(Report):
    node: str
    op_type: str
    nodes: int  # nodes in the repro
    inputs: dict[str, list[int]]  # captured input shapes by name
    outputs: dict[str, list[int]]
    bit_exact: bool  # the repro reproduces the captured outputs bit for bit
    model_path: str | None = None
    data_path: str | None = None

    def render(self, console) -> None:
        verdict = (
            "[green]reproduces the captured outputs bit for bit[/green]"
            if self.bit_exact
            else "[red]differs from the captured outputs[/red]"
        )
        console.print(f"repro of node '{escape(self.node)}' ({self.op_type}): {self.nodes} nodes, {verdict}")
        for label, shapes in (("inputs", self.inputs), ("outputs", self.outputs)):
            console.print(f"  {label}: " + ", ".join(f"{escape(n)} {s}" for n, s in shapes.items()))
        if self.model_path:
            console.print(f"wrote {escape(self.model_path)} and {escape(str(self.data_path))}")


def extract_repro(
    model: ir.Model, node_name: str, inputs: Mapping[str, np.ndarray], *, depth: int = 0
) -> tuple[ir.Model, dict[str, np.ndarray], dict[str, np.ndarray], Repro]:
    """(repro model, captured inputs, captured outputs, report) for the node named ``node_name``."""
    node = patch.find_node(model, name=node_name)
    if node.graph is not model.graph:
        raise BadInputError(f"node '{node_name}' lives inside a subgraph; extract the node that holds it")
    region = _region(node, depth)
    boundary = []
    for member in region:
        for value in member.inputs:
            if value is None or value in boundary or value.is_initializer():
                continue
            producer = value.producer()
            if producer is None or id(producer) not in {id(n) for n in region}:
                boundary.append(value)
    outputs = [v for v in node.outputs if v.name]
    missing = [v.name for v in boundary if v.is_graph_input() and v.name not in inputs]
    if missing:
        raise BadInputError(f"no input array for '{missing[0]}'")
    inner = [v for v in (*boundary, *outputs) if not v.is_graph_input()]
    captured = {value_name(v): np.asarray(inputs[value_name(v)]) for v in boundary if v.is_graph_input()}
    captured.update(run(_exposed(model, inner), inputs, [value_name(v) for v in inner], optimize=False))
    repro = patch.extract(model, boundary, outputs)
    repro.producer_name = "svsurgery extract"
    feeds = {value_name(v): captured[value_name(v)] for v in boundary}
    expected = {value_name(v): captured[value_name(v)] for v in outputs}
    reproduced = run(repro, feeds, optimize=False)
    bit_exact = all(np.array_equal(reproduced[name], expected[name], equal_nan=True) for name in expected)
    report = Repro(
        node=node_name,
        op_type=node.op_type,
        nodes=len(list(repro.graph)),
        inputs={k: list(v.shape) for k, v in feeds.items()},
        outputs={k: list(v.shape) for k, v in expected.items()},
        bit_exact=bit_exact,
    )
    return repro, feeds, expected, report


def _exposed(model: ir.Model, values) -> ir.Model:
    """A copy of ``model`` with ``values`` (intermediates of the original) as extra outputs."""
    copy = patch.clone(model)
    patch.expose(copy, [v.name for v in values])
    return copy


def _region(node: ir.Node, depth: int) -> list[ir.Node]:
    """``node`` and the nodes up to ``depth`` producers above it (Constant nodes always come along)."""
    region = {id(node): node}
    frontier = [node]
    for level in range(depth + 1):
        following = []
        for member in frontier:
            for value in member.inputs:
                producer = value.producer() if value is not None else None
                if producer is None or id(producer) in region or producer.graph is not node.graph:
                    continue
                if producer.op_type == "Constant" or level < depth:
                    region[id(producer)] = producer
                    following.append(producer)
        frontier = following
    graph = node.graph
    assert graph is not None, "extract_repro checked that the node lives in the main graph"
    ordered = [n for n in graph if id(n) in region]
    return ordered
