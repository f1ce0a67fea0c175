"""onnx-graphsurgeon interop: hand a model to gs-based scripts and take it back.

onnx-graphsurgeon's ``gs.Graph`` keeps the graph, opsets, functions, producer and IR
version but not the model-level fields ``metadata_props``, ``doc_string``, ``domain``
and ``model_version``; :func:`to_graphsurgeon` stores them on the graph object and
:func:`from_graphsurgeon` restores them, so a round trip loses nothing. External data
is read into the gs graph (gs holds tensors in memory).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
import onnx_ir as ir

from svsurgery.model_io import to_proto
from svsurgery.patch import infer_types

__all__ = ["from_graphsurgeon", "to_graphsurgeon"]

_MODEL_FIELDS_ATTR = "svsurgery_model_fields"


def to_graphsurgeon(model: ir.Model):
    """The model as an ``onnx_graphsurgeon.Graph`` (the model itself is not changed)."""
    graph = gs.import_onnx(to_proto(model, inline_external_data=True))
    setattr(
        graph,
        _MODEL_FIELDS_ATTR,
        {
            "metadata_props": dict(model.metadata_props),
            "doc_string": model.doc_string,
            "domain": model.domain,
            "model_version": model.model_version,
        },
    )
    return graph


def from_graphsurgeon(graph, *, cleanup: bool = False) -> ir.Model:
    """An onnx_ir model from a ``gs.Graph`` (model-level fields restored when it came from
    :func:`to_graphsurgeon`). ``cleanup`` runs gs's ``cleanup().toposort()`` first, as gs
    scripts usually do before export."""
    if cleanup:
        graph.cleanup().toposort()
    proto = gs.export_onnx(graph)
    model = ir.from_proto(proto)
    if any(v.type is None or v.shape is None for v in model.graph.outputs):
        infer_types(model)  # gs scripts often leave new outputs untyped; ONNX requires types there
    fields = getattr(graph, _MODEL_FIELDS_ATTR, None)
    if fields:
        model.metadata_props.update(fields["metadata_props"])
        model.doc_string = fields["doc_string"]
        model.domain = fields["domain"]
        model.model_version = fields["model_version"]
    return model
