"""Torch modules named on the command line (``--torch SPEC [--weights W]``).

The contract, for ``diff``, ``fix``, ``golden`` and every command that takes ``--torch``:

- ``SPEC`` is ``path/to/file.py:NAME`` or ``package.module:NAME``. The file is imported as
  a module (it may import anything installed; its folder is not added to ``sys.path``).
- ``NAME`` is a ``torch.nn.Module`` instance, or a factory **called with no arguments**
  that returns the module, or a pair ``(module, weights)`` where ``weights`` is a state
  dict or the path of a file holding one.
- ``--weights FILE`` is a state dict loaded on top (after the factory's own weights):
  ``torch.load(FILE, weights_only=True)``; a checkpoint that wraps it as
  ``{"state_dict": ...}``, ``{"model_state_dict": ...}`` or ``{"model": ...}`` is unwrapped
  (as FunASR's own loader does). Keys must match the module's exactly (strict); a
  mismatch is one line listing the missing and unexpected keys and the shape mismatches
  (the first 20 of each, and how many there are).
- The module is put in eval mode, and its ``forward`` receives the ONNX model's inputs
  **positionally, in the graph's input order**, as torch tensors of the inputs' dtypes
  (so the forward to give is the one that was exported: for FunASR, the module
  ``SenseVoiceSmall.export()`` returns, whose forward takes ``speech, speech_lengths,
  language, textnorm``).

A FunASR SenseVoiceSmall (``pip install --no-deps funasr==1.4.16 kaldiio librosa
lazy_loader rapidfuzz six`` is enough for its classes), ``sv_torch.py``::

    from funasr.models.sense_voice.model import SenseVoiceSmall

    ENCODER = dict(output_size=512, attention_heads=4, linear_units=2048, num_blocks=50, tp_blocks=20,
                   kernel_size=11, sanm_shfit=0, normalize_before=True)  # SenseVoiceSmall's config.yaml

    def build():
        model = SenseVoiceSmall(encoder="SenseVoiceEncoderSmall", encoder_conf=ENCODER,
                                input_size=560, vocab_size=25055)
        return model.export(max_seq_len=512)  # or: return model.export(max_seq_len=512), "model.pt"

then ``svsurgery diff model.onnx --torch sv_torch.py:build --weights model.pt``.

Every way this can fail is one clear line (exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path

from svsurgery.errors import BadInputError, require
from svsurgery.user_code import import_user_module

__all__ = ["load_module"]

_LISTED = 20  # keys named per kind of mismatch; the count says how many more
_WRAPPERS = ("state_dict", "model_state_dict", "model")


def load_module(spec: str, weights: str | os.PathLike | None = None):
    """The torch module a spec names, with its weights, in eval mode (see the module docstring)."""
    torch = require("torch", f"the torch module {spec}")
    if ":" not in spec:
        raise BadInputError(f"{spec}: expected FILE.py:FACTORY or package.module:FACTORY")
    where, _, attribute = spec.rpartition(":")
    module = import_user_module(where, spec)
    if not hasattr(module, attribute):
        raise BadInputError(f"{spec}: {where} has no attribute {attribute!r}")
    target = getattr(module, attribute)
    loaded = None
    if isinstance(target, torch.nn.Module):
        result = target
    elif callable(target):
        try:
            result = target()
        except Exception as error:
            raise BadInputError(f"{spec}: calling {attribute}() failed: {type(error).__name__}: {error}") from None
        if isinstance(result, tuple) and len(result) == 2:
            result, loaded = result
    else:
        raise BadInputError(f"{spec}: {attribute} is neither a torch module nor a factory")
    if not isinstance(result, torch.nn.Module):
        raise BadInputError(f"{spec}: {attribute} gave a {type(result).__name__}, not a torch.nn.Module")
    for state in (loaded, weights):
        if state is not None:
            _load_state(result, state, spec, torch)
    return result.eval()


def _load_state(module, state, spec: str, torch) -> None:
    label = spec
    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        label = f"{spec} with {path}"
        if not path.is_file():
            raise BadInputError(f"{path}: no such weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise BadInputError(f"{path}: cannot be read as a torch state dict: {error}") from None
        for wrapper in _WRAPPERS:  # checkpoints that wrap the state dict, as FunASR's loader unwraps them
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
    if not isinstance(state, dict):
        raise BadInputError(f"{label}: the weights are a {type(state).__name__}, not a state dict")
    mismatch = _mismatch(module.state_dict(), state)
    if mismatch:
        raise BadInputError(f"{label}: the weights do not fit the module: {mismatch}")
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError) as error:  # what the key and shape check above cannot see
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadInputError(f"{label}: the weights do not fit the module: {first}") from None


def _mismatch(expected: dict, given: dict) -> str:
    """Every missing and unexpected key and every shape mismatch, as one line ('' when they fit)."""
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    shapes = [
        f"{key} {list(given[key].shape)} (module {list(expected[key].shape)})"
        for key in expected
        if key in given and hasattr(given[key], "shape") and tuple(given[key].shape) != tuple(expected[key].shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            listed = ", ".join(keys[:_LISTED])
            more = f", and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
            parts.append(f"{len(keys)} {label}: {listed}{more}")
    return "; ".join(parts)
