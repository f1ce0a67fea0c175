"""What the audit compares, decided once in the driver: the deployed model's kind and
interface, the reference (original ONNX, torch module or golden files), the reference front
end's settings and the reference VAD.

- **kind**: a model with a ``waveform`` input is fused (``fuse-preproc``); with a
  ``segments`` output it has a VAD and runs one row per span; otherwise it is an encoder and
  both sides get the reference front end's features.
- **front end of the reference**: from the reference model's folder (config.yaml
  frontend_conf, am.mvn) or ``--config``/``--cmvn``; with ``--torch``, the deployed model's folder
  (a note says so: a wrong am.mvn fused into the model cannot show then unless ``--cmvn`` names
  the right one).
- **VAD of the reference**: ``--vad`` when given; for a fused model with a VAD, the settings it
  records in its metadata (``svsurgery.frontend``), a note says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir

from svsurgery.audit.localize import encoder_inside
from svsurgery.audit.spec import (
    ENCODER,
    FUSED,
    FUSED_VAD,
    AuditSpec,
    OtherInput,
    ReferenceSpec,
    file_digest,
    model_digest,
)
from svsurgery.compose import find_encoder_inputs
from svsurgery.errors import BadInputError, require
from svsurgery.frontend.config import discover
from svsurgery.model_io import load
from svsurgery.patch import value_name
from svsurgery.vad.mode import from_metadata
from svsurgery.vad.options import SegmentOptions

__all__ = ["prepare", "vad_from_metadata"]

FUSED_EXTRA_OUTPUTS = (
    "segments",
    "waveform_nonfinite",
    "waveform_clipped",
    "waveform_lengths_used",
    "features",
    "feature_lengths",
)


def _other(value: ir.Value) -> OtherInput:
    rank = len(value.shape) if value.shape is not None else 1
    assert value.dtype is not None, "graph inputs declare their type (onnx.checker refuses them otherwise)"
    return OtherInput(value_name(value), np.dtype(value.dtype.numpy()).name, rank)


def model_kind(model: ir.Model) -> str:
    inputs = {v.name for v in model.graph.inputs}
    outputs = {v.name for v in model.graph.outputs}
    if "waveform" in inputs:
        return FUSED_VAD if "segments" in outputs else FUSED
    return ENCODER


def vad_from_metadata(model: ir.Model):
    """(VAD options, segmentation) a fused model records in ``svsurgery.frontend``; (None, None) without."""
    text = model.metadata_props.get("svsurgery.frontend")
    if not text:
        return None, None
    try:
        recorded = json.loads(text)
    except json.JSONDecodeError:
        return None, None
    segmentation = recorded.get("segmentation")
    segments = SegmentOptions(**segmentation) if isinstance(segmentation, dict) else None
    return from_metadata(recorded.get("vad")), segments


def prepare(
    model_path: str,
    *,
    reference_model: str | None = None,
    torch_spec: str | None = None,
    weights: str | None = None,
    golden_dir: str | None = None,
    vad=None,
    segmentation=None,
    config: str | None = None,
    cmvn: str | None = None,
) -> tuple[AuditSpec, list[str], dict[str, str]]:
    """(the spec, notes for the report, sha256 of every model file involved)."""
    notes: list[str] = []
    model_path = str(Path(model_path).absolute())
    model = load(model_path)
    kind = model_kind(model)
    digests = {"model": model_digest(model_path)}

    if kind == ENCODER:
        binding = find_encoder_inputs(model)
        deployed_inputs = (value_name(binding.features), value_name(binding.lengths) if binding.lengths else None)
        deployed_length_dtype = _length_dtype(binding)
        others = [v for v in model.graph.inputs if v is not binding.features and v is not binding.lengths]
        outputs = [value_name(v) for v in model.graph.outputs]
        inner: ir.Model | None = model
    else:
        others = [v for v in model.graph.inputs if v.name not in ("waveform", "waveform_lengths")]
        outputs = [value_name(v) for v in model.graph.outputs if v.name not in FUSED_EXTRA_OUTPUTS]
        inner = encoder_inside(model_path)  # the encoder inside the fused model (for its interface)
        deployed_inputs, deployed_length_dtype = ("", None), "int64"
        if inner is not None:
            binding = find_encoder_inputs(inner)
            deployed_inputs = (value_name(binding.features), value_name(binding.lengths) if binding.lengths else None)
            deployed_length_dtype = _length_dtype(binding)

    frontend = None
    if golden_dir is not None:
        reference = ReferenceSpec("golden", str(Path(golden_dir).absolute()))
        reference_inputs, reference_length_dtype = deployed_inputs, deployed_length_dtype
    elif reference_model is not None:
        reference = ReferenceSpec("onnx", str(Path(reference_model).absolute()))
        original = load(reference_model)
        digests["reference"] = model_digest(reference_model)
        binding = find_encoder_inputs(original)
        reference_inputs = (value_name(binding.features), value_name(binding.lengths) if binding.lengths else None)
        reference_length_dtype = _length_dtype(binding)
        theirs = {value_name(v) for v in original.graph.outputs}
        missing = [name for name in outputs if name not in theirs]
        if len(missing) == len(outputs):
            raise BadInputError(
                f"--reference-model {reference_model}: it has none of the model's outputs ({', '.join(outputs)}); "
                f"its outputs are {', '.join(sorted(theirs))}"
            )
        if missing:
            notes.append(f"outputs the reference does not have are not compared: {', '.join(missing)}")
            outputs = [name for name in outputs if name in theirs]
        ours = {o.name for o in others}
        extra = [
            v
            for v in original.graph.inputs
            if v is not binding.features and v is not binding.lengths and v.name not in ours
        ]
        if extra:
            raise BadInputError(
                f"--reference-model {reference_model}: inputs {', '.join(value_name(v) for v in extra)}"
                " are not inputs of the model"
            )
        frontend = discover(original, reference_model, config=config, cmvn=cmvn)
    elif torch_spec is not None:
        require("torch", "an audit against a torch module")
        reference = ReferenceSpec("torch", None, torch_spec, weights)
        reference_inputs, reference_length_dtype = deployed_inputs, deployed_length_dtype
        if not reference_inputs[0]:
            reference_inputs, reference_length_dtype = ("features", "lengths"), "int32"
        for name, path in (("torch module file", torch_spec.rpartition(":")[0]), ("weights", weights)):
            if path and Path(path).is_file():
                digests[name] = model_digest(path) if path.endswith(".onnx") else _file_digest(path)
        frontend = discover(model, model_path, config=config, cmvn=cmvn)
        if not cmvn and not config:
            notes.append(
                "the reference front end's settings come from the deployed model's folder (a --torch reference has "
                "none); give --cmvn/--config of the original to catch a wrong CMVN fused into the model"
            )
    else:
        raise BadInputError("give the reference: --reference-model ORIG.onnx, --torch MODULE_SPEC or --golden-dir DIR")

    if vad is None and kind == FUSED_VAD and reference.kind != "golden":
        vad, recorded_segmentation = vad_from_metadata(model)
        if vad is None:
            raise BadInputError(
                f"{model_path}: a fused model with a VAD whose metadata names no VAD settings;"
                " give --vad silero|fsmn:DIR|energy"
            )
        segmentation = segmentation or recorded_segmentation
        notes.append("the reference VAD's settings are those the model records in its metadata (svsurgery.frontend)")
    if vad is not None and kind == FUSED:
        notes.append("--vad is ignored: the model has no VAD (one span per utterance on both sides)")
        vad = None
    if vad is not None:
        vad.validate()
    sample_rate = int(frontend.fbank.frame_opts.samp_freq) if frontend is not None else 16000
    spec = AuditSpec(
        model=model_path,
        model_kind=kind,
        reference=reference,
        frontend=frontend,
        vad=vad,
        segmentation=(segmentation or SegmentOptions()).validate(),
        sample_rate=sample_rate,
        deployed_inputs=deployed_inputs,
        deployed_length_dtype=deployed_length_dtype,
        reference_inputs=reference_inputs,
        reference_length_dtype=reference_length_dtype,
        others=tuple(_other(v) for v in others),
        outputs=tuple(outputs),
    )
    if frontend is not None:
        notes.extend(frontend.notices)
    return spec, notes, digests


def _length_dtype(binding) -> str:
    return np.dtype(binding.length_dtype.numpy()).name if binding.lengths is not None else "int64"


def _file_digest(path: str) -> str:
    return file_digest(path)
