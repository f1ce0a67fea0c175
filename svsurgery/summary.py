"""What a model is: its signature, opsets, producer, operators, parameters and metadata."""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import TYPE_CHECKING, Any

import onnx_ir as ir
from rich.markup import escape
from rich.table import Table

from svsurgery.model_io import SOURCE_PATH_KEY, all_tensors, external_tensors
from svsurgery.patch import all_graphs
from svsurgery.report import Report

if TYPE_CHECKING:  # only inspect --fp16 builds one; its evaluator stays unloaded otherwise
    from svsurgery.fp16_outlook import Float16Outlook

__all__ = ["ModelSummary", "TensorSignature", "summarize"]

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclasses.dataclass
class TensorSignature:
    name: str
    dtype: str | None
    shape: list[Dim] | None  # None when the rank is unknown

    @classmethod
    def of(cls, value: ir.Value) -> TensorSignature:
        dtype = value.dtype.name if value.dtype is not None else None
        shape: list[Dim] | None = None
        if value.shape is not None:
            # an unknown dim is None (it was the SymbolicDim itself: not JSON, printed as "None")
            shape = [d if isinstance(d, int) else None if d.value is None else str(d.value) for d in value.shape]
        return cls(value.name or "", dtype, shape)

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclasses.dataclass
class ModelSummary(Report):
    path: str | None
    ir_version: int
    producer_name: str | None
    producer_version: str | None
    opset_imports: dict[str, int]
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    node_count: int
    op_types: dict[str, int]  # every graph and subgraph, most frequent first
    subgraph_count: int
    function_count: int
    initializer_count: int
    parameter_count: int  # elements in initializers and Constant tensors
    parameter_bytes: int
    external_data_files: list[str]
    metadata_props: dict[str, str]
    fp16: Float16Outlook | None = None  # inspect --fp16: the float16 headroom on the model's inputs

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["fp16"] = self.fp16.to_dict() if self.fp16 is not None else None
        return data

    def render(self, console) -> None:
        title = os.path.basename(self.path) if self.path else "model"
        producer = " ".join(filter(None, [self.producer_name, self.producer_version])) or "unknown"
        opsets = ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in self.opset_imports.items())
        console.print(f"[bold]{escape(title)}[/bold]  IR {self.ir_version} · opsets: {opsets} · producer: {producer}")
        signature = Table(title="Signature", title_justify="left")
        for column in ("", "name", "dtype", "shape"):
            signature.add_column(column)
        for kind, entries in (("input", self.inputs), ("output", self.outputs)):
            for entry in entries:
                signature.add_row(kind, escape(entry.name), entry.dtype or "?", escape(entry.shape_text()))
        console.print(signature)
        console.print(
            f"{self.node_count} nodes · {self.subgraph_count} subgraphs · {self.function_count} functions · "
            f"{self.initializer_count} initializers · {self.parameter_count:,} parameters "
            f"({_human_bytes(self.parameter_bytes)})"
            + (f" · external data: {', '.join(self.external_data_files)}" if self.external_data_files else ""),
            markup=False,
        )
        ops = Table(title="Operators", title_justify="left")
        ops.add_column("op type")
        ops.add_column("count", justify="right")
        for op_type, count in self.op_types.items():
            ops.add_row(escape(op_type), str(count))
        console.print(ops)
        if self.metadata_props:
            meta = Table(title="metadata_props", title_justify="left")
            meta.add_column("key")
            meta.add_column("value", overflow="fold")
            for key, value in self.metadata_props.items():
                meta.add_row(escape(key), escape(value if len(value) <= 200 else value[:200] + "…"))
            console.print(meta)
        if self.fp16 is not None:
            self.fp16.render(console)


def summarize(model: ir.Model) -> ModelSummary:
    """The summary of ``model``; nodes are counted in every graph: bodies, functions and the bodies in those."""
    graphs = all_graphs(model)
    bodies = [graph for graph in graphs if isinstance(graph, ir.Graph)]  # the main graph and every If/Loop/Scan body
    op_types: collections.Counter[str] = collections.Counter()
    for graph in graphs:
        for node in graph:
            op_types[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
    tensors = list(all_tensors(model))
    data_files = sorted({str(t.location) for t in external_tensors(model)})
    return ModelSummary(
        path=model.meta.get(SOURCE_PATH_KEY),
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        opset_imports=dict(model.opset_imports),
        inputs=[TensorSignature.of(v) for v in model.graph.inputs],
        outputs=[TensorSignature.of(v) for v in model.graph.outputs],
        node_count=sum(op_types.values()),
        op_types=dict(op_types.most_common()),
        subgraph_count=len(bodies) - 1,
        function_count=len(model.functions),
        initializer_count=sum(len(g.initializers) for g in bodies),
        parameter_count=sum(t.size for t in tensors),
        parameter_bytes=sum(t.nbytes for t in tensors),
        external_data_files=data_files,
        metadata_props=dict(model.metadata_props),
    )


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"  # pragma: no cover
