"""Torch modules named on the command line: ``path/to/file.py:factory`` or ``pkg.mod:factory``.

The factory is called with no arguments and returns the module, or a pair
``(module, weights)`` where weights is a state dict or the path of one. The name may
also point at a module object directly. ``--weights ckpt.pt`` loads a state dict on top.
Every way this can fail is one clear line.
"""

from __future__ import annotations

import os
from pathlib import Path

from svsurgery.errors import BadInputError, require
from svsurgery.user_code import import_user_module

__all__ = ["load_module"]


def load_module(spec: str, weights: str | os.PathLike | None = None):
    """The torch module a spec names, in eval mode."""
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
        except Exception as error:  # noqa: BLE001 - the user's factory may raise anything
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
    if isinstance(state, (str, os.PathLike)):
        path = Path(state)
        if not path.is_file():
            raise BadInputError(f"{path}: no such weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001
            raise BadInputError(f"{path}: cannot be read as a torch state dict: {error}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadInputError(f"{spec}: the weights do not fit the module: {first}") from None
