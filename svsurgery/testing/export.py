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

import svsurgery
from svsurgery import patch
from svsurgery.frontend import FbankOptions, LfrOptions, numpy_statement
from svsurgery.parity.waveforms import speech_like
from svsurgery.testing.encoder import EncoderConfig, SenseVoiceEncoder, build_encoder, example_inputs

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "cmvn_statistics",
    "export_dynamo",
    "export_legacy",
    "write_am_mvn",
    "write_model_folders",
]

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
        assert program is not None, "dynamo=True returns the ONNXProgram"
        program.save(str(path), external_data=True)
    return path


def cmvn_statistics(seconds: float = 8.0):
    """(shift, scale) = (-mean, 1/std) of SenseVoice LFR features of the built-in waveform's
    speech frames, standing in for the am.mvn a trained model ships."""
    stacked = numpy_statement.apply_lfr(
        numpy_statement.fbank(speech_like(seconds, seed=7), FbankOptions.sensevoice()), LfrOptions(7, 6)
    )
    mean, std = numpy_statement.speech_statistics(stacked)
    return -mean, 1.0 / std


def write_am_mvn(path: str | os.PathLike, shift, scale) -> Path:
    """A Kaldi nnet text am.mvn as FunASR ships it (<AddShift> then <Rescale>)."""
    dim = len(shift)
    text = (
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ "
        + " ".join(f"{v:.8f}" for v in shift)
        + f" ]\n<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ "
        + " ".join(f"{v:.8f}" for v in scale)
        + " ]\n</Nnet>\n"
    )
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)


FUNASR_CONFIG = """# FunASR-style model config (the parts the front end reads)
frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
"""


def write_model_folders(out_dir: str | os.PathLike, config: EncoderConfig | None = None) -> dict[str, Path]:
    """Model folders as they are shipped, each holding ``model.onnx``:

    - ``funasr/``: the legacy export + ``config.yaml`` (frontend_conf) + ``am.mvn``
    - ``dynamo/``: the torch.export export (external data) + ``config.yaml`` + ``am.mvn``
    - ``sherpa/``: sherpa-onnx's signature (``x``, ``x_length``, ``language``, ``text_norm``)
      with LFR and CMVN in metadata (``lfr_window_size``, ``neg_mean``, ``inv_stddev``, ...)
    """
    out_dir = Path(out_dir)
    model = build_encoder(config)
    shift, scale = cmvn_statistics()
    folders = {}
    for kind, exporter in (("funasr", export_legacy), ("dynamo", export_dynamo)):
        folder = out_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("model.onnx*"):
            stale.unlink()
        exporter(model, folder / "model.onnx")
        (folder / "config.yaml").write_text(FUNASR_CONFIG, encoding="utf-8")
        write_am_mvn(folder / "am.mvn", shift, scale)
        folders[kind] = folder / "model.onnx"
    sherpa = out_dir / "sherpa"
    sherpa.mkdir(parents=True, exist_ok=True)
    onnx_model = svsurgery.load(folders["funasr"])
    for old, new in (("speech", "x"), ("speech_lengths", "x_length"), ("textnorm", "text_norm")):
        patch.rename_value(onnx_model, old, new)
    onnx_model.metadata_props.update(
        {
            "model_type": "sense_voice_ctc",
            "lfr_window_size": "7",
            "lfr_window_shift": "6",
            "normalize_samples": "0",
            "neg_mean": ",".join(f"{-v:.8f}" for v in shift),
            "inv_stddev": ",".join(f"{v:.8f}" for v in scale),
        }
    )
    folders["sherpa"] = svsurgery.save(onnx_model, sherpa / "model.onnx")
    return folders
