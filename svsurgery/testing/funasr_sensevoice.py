"""FunASR's own SenseVoiceSmall at a tiny size, with seeded random weights, exported as FunASR does.

The reference encoder (:mod:`svsurgery.testing.encoder`) follows FunASR layer by layer,
but it is svsurgery's code. Tools that hook PyTorch modules must also be tried on the
third-party code people actually export, with its habits: FunASR's SANM attention adds
the FSMN input to the Conv output in place (``x += inputs``), its encoder scales its
input in place (``xs_pad *= sqrt(d)``), masks are float tensors returned beside the
activations. This module builds ``funasr.models.sense_voice.model.SenseVoiceSmall`` from
FunASR's classes, calls its ``export(max_seq_len=...)`` (the module whose forward FunASR
exports: ``speech, speech_lengths, language, textnorm``) and exports it as FunASR's
``export_utils`` does: the TorchScript exporter (``dynamo=False``), opset 14, constant
folding, FunASR's input/output names and dynamic axes.

Requires torch and FunASR's model classes:
``pip install --no-deps funasr==1.4.16 kaldiio librosa lazy_loader rapidfuzz six``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from svsurgery.errors import MissingDependencyError
from svsurgery.testing.third_party import torchaudio_is_broken

__all__ = ["FunasrConfig", "build_funasr_sensevoice", "export_funasr", "funasr_inputs"]


@dataclasses.dataclass(frozen=True)
class FunasrConfig:
    """SenseVoiceSmall's ``encoder_conf`` at test size (the real model: 512 wide, 50 + 20 blocks, 25 055 tokens)."""

    input_size: int = 560  # 80 mel bins x LFR m=7, as the real model
    output_size: int = 64
    attention_heads: int = 4
    linear_units: int = 128
    num_blocks: int = 3  # encoders0 (1) + encoders (num_blocks - 1)
    tp_blocks: int = 1
    kernel_size: int = 11
    vocab_size: int = 64
    max_seq_len: int = 512
    seed: int = 0


def _sense_voice_class():
    # funasr prints "Please install torch_complex firstly" (and an ffmpeg notice) while importing
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _without_broken_torchaudio():
        warnings.simplefilter("ignore")
        try:
            from funasr.models.sense_voice.model import SenseVoiceSmall
        except ImportError as error:
            raise MissingDependencyError(
                f"FunASR's SenseVoiceSmall cannot be imported ({error}): "
                "pip install --no-deps funasr==1.4.16 kaldiio librosa lazy_loader rapidfuzz six"
            ) from None
    return SenseVoiceSmall


@contextlib.contextmanager
def _without_broken_torchaudio():
    """funasr imports torchaudio for audio loading only, guarding against ImportError; a
    torchaudio whose compiled library does not load beside this torch (torchaudio 2.11 with
    torch 2.13 CPU) raises OSError instead and takes funasr down with it. While funasr is
    imported, such a torchaudio reads as not installed; afterwards it is as it was."""
    if not torchaudio_is_broken():  # not installed, or loads: funasr copes
        yield
        return
    saved = {
        name: module for name, module in sys.modules.items() if name == "torchaudio" or name.startswith("torchaudio.")
    }
    for name in saved:
        del sys.modules[name]
    sys.modules["torchaudio"] = None  # import torchaudio -> ImportError
    try:
        yield
    finally:
        del sys.modules["torchaudio"]
        sys.modules.update(saved)


def build_funasr_sensevoice(config: FunasrConfig | None = None) -> torch.nn.Module:
    """FunASR's ``SenseVoiceSmall(...).export(max_seq_len=...)`` with seeded random weights, in eval mode.

    Every parameter is drawn from a generator seeded with ``config.seed`` (LayerNorm gains
    and biases too, so a wrong LayerNorm cannot hide behind weight 1, bias 0).
    """
    config = config or FunasrConfig()
    sense_voice = _sense_voice_class()
    encoder_conf = {
        "output_size": config.output_size,
        "attention_heads": config.attention_heads,
        "linear_units": config.linear_units,
        "num_blocks": config.num_blocks,
        "tp_blocks": config.tp_blocks,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": config.kernel_size,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = sense_voice(
            encoder="SenseVoiceEncoderSmall",
            encoder_conf=encoder_conf,
            input_size=config.input_size,
            vocab_size=config.vocab_size,
        )
        generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "norm" in name:  # gains around 1, biases around 0
                    base = 1.0 if name.endswith("weight") else 0.0
                    parameter.copy_(base + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model.export(max_seq_len=config.max_seq_len).eval()


def funasr_inputs(
    config: FunasrConfig | None = None, lengths: tuple[int, ...] = (29, 17), seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded batch of feature frames with mixed lengths, language ids (auto, en) and textnorm woitn."""
    config = config or FunasrConfig()
    generator = torch.Generator().manual_seed(seed)
    batch, frames = len(lengths), max(lengths)
    speech = torch.randn((batch, frames, config.input_size), generator=generator)
    for row, length in enumerate(lengths):
        speech[row, length:] = 0.0
    language = torch.tensor([0, 4] * batch, dtype=torch.int32)[:batch]
    textnorm = torch.full((batch,), 15, dtype=torch.int32)
    return speech, torch.tensor(lengths, dtype=torch.int32), language, textnorm


def export_funasr(model: Any, path: str | os.PathLike, opset: int = 14) -> Path:
    """Export as ``funasr.utils.export_utils._onnx`` does (with ``dynamo=False``, which torch 2.13
    needs for the TorchScript exporter FunASR relies on); returns the written path. ``model``: a
    FunASR model (a torch module with FunASR's ``export_*`` methods, which nn.Module does not declare)."""
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the legacy-exporter deprecation notice
        torch.onnx.export(
            model,
            model.export_dummy_inputs(),
            str(path),
            dynamo=False,
            verbose=False,
            do_constant_folding=True,
            opset_version=opset,
            input_names=model.export_input_names(),
            output_names=model.export_output_names(),
            dynamic_axes=model.export_dynamic_axes(),
        )
    return path
