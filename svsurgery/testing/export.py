"""Export the reference encoder the two ways real SenseVoice ONNX files are made.

``export_legacy`` is FunASR's own export: the TorchScript exporter (``dynamo=False``),
opset 14, constant folding on — decomposed LayerNorm behind a no-op Cast, ``Where``
masks with -inf, a run-time positional encoding. ``export_dynamo`` is what the same
call gives through torch.export at opset 18: fused LayerNormalization and external
data. Both have dynamic batch and time axes.

Requires torch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from svsurgery.testing.encoder import EncoderConfig, SenseVoiceEncoder, build_encoder, example_inputs

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "export_dynamo", "export_legacy", "export_reference_encoders"]

INPUT_NAMES = ("speech", "speech_lengths", "language", "textnorm")
OUTPUT_NAMES = ("ctc_logits", "encoder_out_lens")


def export_legacy(model: SenseVoiceEncoder, path: str | os.PathLike, opset: int = 14) -> Path:
    """TorchScript export as FunASR does it; returns the written path."""
    path = Path(path)
    dynamic_axes = {
        "speech": {0: "batch_size", 1: "feats_length"},
        "speech_lengths": {0: "batch_size"},
        "language": {0: "batch_size"},
        "textnorm": {0: "batch_size"},
        "ctc_logits": {0: "batch_size", 1: "logits_length"},
        "encoder_out_lens": {0: "batch_size"},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the legacy-exporter deprecation notice
        torch.onnx.export(
            model,
            example_inputs(model.config),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
        )
    return path


def export_dynamo(model: SenseVoiceEncoder, path: str | os.PathLike, opset: int = 18) -> Path:
    """torch.export-based export with weights in an external data file; returns the path."""
    path = Path(path)
    batch = torch.export.Dim("batch_size", min=1, max=1024)
    frames = torch.export.Dim("feats_length", min=2, max=100_000)
    dynamic_shapes = {
        "speech": {0: batch, 1: frames},
        "speech_lengths": {0: batch},
        "language": {0: batch},
        "textnorm": {0: batch},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example_inputs(model.config),
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
        program.save(str(path), external_data=True)
    return path


def export_reference_encoders(
    out_dir: str | os.PathLike, config: EncoderConfig | None = None, dynamo: bool = True
) -> dict[str, Path]:
    """Write ``sensevoice_legacy.onnx`` (and ``sensevoice_dynamo.onnx`` + data) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_encoder(config)
    paths = {"legacy": export_legacy(model, out_dir / "sensevoice_legacy.onnx")}
    if dynamo:
        paths["dynamo"] = export_dynamo(model, out_dir / "sensevoice_dynamo.onnx")
    return paths
