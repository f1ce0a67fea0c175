"""Run models with onnxruntime: sessions from in-memory onnx_ir models or files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from svsurgery.model_io import EXTERNAL_DATA_THRESHOLD, estimated_size, to_proto

__all__ = ["inference_session", "onnxruntime_errors", "run"]


def onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """The exception types onnxruntime raises when a model fails to load or run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "Fail",
        "InvalidArgument",
        "RuntimeException",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
        "NoSuchFile",
        "NoModel",
        "ModelLoaded",
        "InvalidProtobuf",
        "EngineError",
    )
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def inference_session(
    model: ir.Model | str | os.PathLike,
    *,
    intra_op_threads: int | None = None,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    optimize: bool = True,
):
    """An onnxruntime session for a model object or a file (external data followed).

    ``optimize=False`` disables onnxruntime's graph optimizations. Use it to compare two
    graphs for *semantic* equality: which fusions onnxruntime applies depends on which
    values are graph outputs, and a fused kernel rounds differently from the ops it replaces.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions; nothing on stderr
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
    if isinstance(model, (str, Path, os.PathLike)):
        return ort.InferenceSession(str(model), sess_options=options, providers=list(providers))
    if estimated_size(model) > EXTERNAL_DATA_THRESHOLD:
        # over protobuf's limit: onnxruntime reads it from files (external data beside it)
        with tempfile.TemporaryDirectory(prefix="svsurgery-session-") as staging:
            path = Path(staging) / "model.onnx"
            ir.save(model, path, external_data="model.onnx.data", size_threshold_bytes=1024)
            return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    source = to_proto(model, inline_external_data=True).SerializeToString()
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


def run(
    model: ir.Model | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    output_names: list[str] | None = None,
    *,
    optimize: bool = True,
) -> dict[str, np.ndarray]:
    """Run once on CPU and return outputs by name."""
    session = inference_session(model, optimize=optimize)
    names = output_names or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))
