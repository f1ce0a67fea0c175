"""Golden files: inputs, the outputs a model must give for them, and what made them.

A golden file is an npz readable without pickle: ``input/<name>`` and ``output/<name>``
arrays, and ``__meta__``, a JSON string with the source ("torch module SenseVoice", "the
model as is"), the versions of torch/onnx/onnxruntime/numpy/svsurgery that made it and
when. Save one from PyTorch when the model is known good; ``svsurgery check`` re-verifies a
deployed model against it in one command.

    import svsurgery.golden
    svsurgery.golden.save("golden.npz", inputs, module=torch_module, output_names=["ctc_logits", "lens"])
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from svsurgery.errors import BadInputError
from svsurgery.files import write_atomically
from svsurgery.parity.references import TorchReference

__all__ = ["Golden", "load", "save", "versions"]

_META = "__meta__"


@dataclasses.dataclass
class Golden:
    path: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    meta: dict


def versions() -> dict[str, str | None]:
    """Versions of what produced or checked a result (None for what is not installed)."""
    found: dict[str, str | None] = {}
    for package in ("svsurgery", "torch", "onnx", "onnxruntime", "onnx-ir", "onnxscript", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def save(
    path: str | os.PathLike,
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray] | None = None,
    *,
    module=None,
    output_names: Sequence[str] | None = None,
    source: str | None = None,
) -> Path:
    """Write a golden file atomically; returns its path.

    Give either ``outputs`` (by name) or a torch ``module`` and the ``output_names`` its
    flattened outputs take (inputs are passed to it positionally, in order).
    """
    if (outputs is None) == (module is None):
        raise BadInputError("golden.save: give either outputs or a torch module, not both or neither")
    if module is not None:
        if output_names is None:
            raise BadInputError("golden.save: a torch module needs output_names (the model's outputs, in order)")
        outputs = TorchReference(module, output_names, list(inputs)).outputs(inputs)
        source = source or f"torch module {type(module).__name__}"
    assert outputs is not None, "given, or computed from the module just above"
    arrays = {f"input/{name}": np.asarray(value) for name, value in inputs.items()}
    arrays.update({f"output/{name}": np.asarray(value) for name, value in outputs.items()})
    meta = {
        "source": source or "unknown",
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": list(inputs),
        "outputs": list(outputs),
    }
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True))
    target = Path(path).absolute()
    if target.is_dir():
        raise BadInputError(f"{path}: is a folder; give the .npz file to write")
    if not target.parent.is_dir():
        raise BadInputError(f"{path}: the folder {target.parent} does not exist")

    def write(staged: Path) -> None:
        with open(staged, "wb") as handle:  # a handle: np.savez would append .npz to a path
            # numpy's stub types **kwds as if a key could be allow_pickle (bool); none here is
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    write_atomically(target, write)
    return target


def load(path: str | os.PathLike) -> Golden:
    """Read a golden file; a file that is not one gets a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such golden file")
    try:
        with np.load(path, allow_pickle=False) as data:
            files = list(data.files)
            if _META not in files:
                raise BadInputError(f"{path}: not a golden file (no {_META} record; make one with svsurgery golden)")
            meta = json.loads(str(data[_META]))
            inputs = {k.removeprefix("input/"): data[k] for k in files if k.startswith("input/")}
            outputs = {k.removeprefix("output/"): data[k] for k in files if k.startswith("output/")}
    except BadInputError:
        raise
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path}: not a readable golden npz ({error})") from None
    if not outputs:
        raise BadInputError(f"{path}: holds no outputs to check against")
    return Golden(str(path), inputs, outputs, meta)
