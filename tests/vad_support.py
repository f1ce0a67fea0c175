"""A probe model around a piece of graph authoring, for the VAD tests."""

from __future__ import annotations

import onnx_ir as ir

from svsurgery.frontend._ops import GraphOps
from svsurgery.runtime import inference_session


def probe_session(build, inputs: list[ir.Value], opset: int = 17):
    """An onnxruntime session of a model whose outputs ``out0, out1, ...`` are what
    ``build(g, *inputs)`` returns."""
    from onnx_ir.passes.common import NameFixPass

    graph = ir.Graph(inputs, [], nodes=[], opset_imports={"": opset}, name="probe")
    outputs = build(GraphOps(graph, opset), *inputs)
    for index, value in enumerate(outputs):
        value.name = f"out{index}"
    graph.outputs.extend(outputs)
    model = ir.Model(graph, ir_version=8)
    NameFixPass()(model)  # subgraph builders number their values from 0
    return inference_session(model)
