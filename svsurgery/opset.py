"""The ai.onnx opset of a model, and raising it with onnx's version converter."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.model_io import EXTERNAL_DATA_THRESHOLD, estimated_size, to_proto

__all__ = ["ai_onnx_opset", "convert_opset"]


def ai_onnx_opset(model: ir.Model) -> int | None:
    """The model's ai.onnx opset version (``""`` or ``"ai.onnx"`` domain); None if it imports none."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def convert_opset(model: ir.Model, target: int, label: str = "model", *, infer_types: bool = False) -> ir.Model:
    """A new model at ai.onnx ``target``, converted by ``onnx.version_converter``.

    Tensors that lived in external data files stay there (the converter only sees their
    references); the model's ``meta`` (where it was loaded from) carries over. With
    ``infer_types``, ONNX shape inference runs on the converted proto, so the new model
    comes with value types at little extra cost.
    """
    from onnx import version_converter

    current = ai_onnx_opset(model)
    if estimated_size(model) > EXTERNAL_DATA_THRESHOLD:
        raise BadInputError(f"{label}: too large for onnx's version converter (over protobuf's 2 GB limit)")
    try:
        converted = version_converter.convert_version(to_proto(model), target)
    except Exception as error:
        raise BadInputError(
            f"{label}: onnx's version converter cannot take ai.onnx opset {current} to {target}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
        ) from None
    if infer_types:
        try:
            converted = onnx.shape_inference.infer_shapes(converted, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, RuntimeError):
            pass  # types stay unknown; rules that need them infer on the IR
    upgraded = ir.from_proto(converted)
    _restore_external_tensors(model, upgraded)
    upgraded.meta.update(model.meta)
    return upgraded


def _restore_external_tensors(original: ir.Model, upgraded: ir.Model) -> None:
    """Point initializers that were external data in ``original`` at the same files again."""
    external = {
        name: value.const_value
        for name, value in original.graph.initializers.items()
        if isinstance(value.const_value, ir.ExternalTensor)
    }
    for name, value in upgraded.graph.initializers.items():
        if name in external:
            value.const_value = external[name]
