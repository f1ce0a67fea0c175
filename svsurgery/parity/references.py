"""What a model is verified against: the outputs it should give for given inputs.

- :class:`TorchReference`: the PyTorch module the model was exported from (needs torch).
- :class:`GoldenReference`: inputs and outputs saved earlier (``svsurgery.golden``),
  typically from PyTorch; it brings its own inputs.
- :class:`Float64Reference`: the original ONNX evaluated in float64, a PyTorch-free
  stand-in for the exact math when fixing exports nobody here made.
- :class:`ModelReference`: the original ONNX as is, in onnxruntime (non-regression).

A reference is evaluated once per verification session; every pass is compared with
the same expected outputs.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from svsurgery.errors import BadInputError, require
from svsurgery.model_io import load
from svsurgery.parity.float64 import float64_shadow
from svsurgery.runtime import run

__all__ = ["Float64Reference", "GoldenReference", "ModelReference", "Reference", "TorchReference", "flatten_outputs"]


class Reference(abc.ABC):
    """Expected outputs by name for the model's inputs."""

    kind: str
    description: str

    @abc.abstractmethod
    def outputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def own_inputs(self) -> dict[str, np.ndarray] | None:
        """Inputs the reference was made with (golden files), or None when any inputs will do."""
        return None


class ModelReference(Reference):
    """A model run as is in onnxruntime (the original, for non-regression)."""

    kind = "onnx"

    def __init__(self, model: ir.Model | str | os.PathLike, label: str | None = None) -> None:
        self.model = load(model) if isinstance(model, (str, os.PathLike)) else model
        self.description = f"{label or 'the original model'} as is (onnxruntime)"

    def outputs(self, feeds):
        return run(self.model, feeds)


class Float64Reference(Reference):
    """The model evaluated in float64 (see :mod:`svsurgery.parity.float64`)."""

    kind = "fp64"

    def __init__(self, model: ir.Model | str | os.PathLike) -> None:
        self.shadow = float64_shadow(load(model) if isinstance(model, (str, os.PathLike)) else model)

    @property
    def description(self) -> str:  # type: ignore[override]  # ops narrowed at run time change it
        return self.shadow.describe()

    def outputs(self, feeds):
        return self.shadow.run(dict(feeds))


class TorchReference(Reference):
    """A torch module: ONNX inputs are passed positionally in the model's input order
    (or by name, when ``by_name``), and its outputs, flattened, name the model's outputs in order."""

    kind = "torch"

    def __init__(
        self, module, output_names: Sequence[str], input_names: Sequence[str] | None = None, *, by_name: bool = False
    ) -> None:
        require("torch", "parity against a torch module")
        self.module = module
        self.output_names = list(output_names)
        self.input_names = list(input_names) if input_names is not None else None
        self.by_name = by_name
        self.description = f"the torch module {type(module).__name__}"

    def outputs(self, feeds):
        import torch

        names = self.input_names or list(feeds)
        # copies: a module may change its inputs in place (FunASR scales xs_pad *= sqrt(d)), and the
        # same feeds serve every later comparison
        tensors = {name: torch.from_numpy(np.array(feeds[name], copy=True)) for name in names}
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                result = self.module(**tensors) if self.by_name else self.module(*tensors.values())
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            shapes = ", ".join(f"{name} {list(t.shape)}" for name, t in tensors.items())
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise BadInputError(
                f"{self.description} cannot run on the inputs ({shapes}, passed "
                f"{'by name' if self.by_name else 'positionally in the ONNX input order'}): "
                f"{type(error).__name__}: {first}; give inputs it can run on with --inputs"
            ) from None
        finally:
            self.module.train(was_training)
        flat = flatten_outputs(result)
        if len(flat) != len(self.output_names):
            raise BadInputError(
                f"the torch module returned {len(flat)} tensors but the model has {len(self.output_names)} outputs "
                f"({', '.join(self.output_names)})"
            )
        return dict(zip(self.output_names, flat))


class GoldenReference(Reference):
    """Outputs recorded in a golden file for the inputs recorded with them."""

    kind = "golden"

    def __init__(self, golden) -> None:
        self.golden = golden
        self.description = f"golden outputs from {golden.path} ({golden.meta.get('source', 'unknown source')})"

    def outputs(self, feeds):
        return dict(self.golden.outputs)

    def own_inputs(self):
        return dict(self.golden.inputs)


def flatten_outputs(result) -> list[np.ndarray]:
    """A module's return value (tensor, tuple/list/dict of them, nested) as a flat list of arrays."""
    if isinstance(result, Mapping):
        return [a for value in result.values() for a in flatten_outputs(value)]
    if isinstance(result, (tuple, list)):
        return [a for value in result for a in flatten_outputs(value)]
    if hasattr(result, "detach"):
        return [result.detach().cpu().numpy()]
    if result is None:
        return []
    return [np.asarray(result)]
