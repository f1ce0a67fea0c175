"""CMVN applied after LFR as FunASR does: (x + shift) * scale, per feature column.

Sources: a Kaldi nnet text ``am.mvn`` (``<AddShift>`` then ``<Rescale>``, as FunASR ships
it), arrays, or sherpa-onnx metadata (``neg_mean`` and ``inv_stddev``, comma-separated).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import GraphOps

__all__ = ["Cmvn", "cmvn_graph"]

_TOKEN = re.compile(r"\[|\]|[^\s\[\]]+")


@dataclasses.dataclass(frozen=True)
class Cmvn:
    shift: np.ndarray  # added first (FunASR's means: the negated mean)
    scale: np.ndarray  # then multiplied (FunASR's vars: the inverse standard deviation)
    source: str = "arrays"

    def __post_init__(self) -> None:
        shift = np.asarray(self.shift, dtype=np.float64).reshape(-1)
        scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if shift.shape != scale.shape:
            raise BadInputError(f"CMVN from {self.source}: shift has {shift.size} values but scale has {scale.size}")
        if not (np.isfinite(shift).all() and np.isfinite(scale).all()):
            raise BadInputError(f"CMVN from {self.source}: shift and scale must be finite")
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "scale", scale)

    @property
    def dim(self) -> int:
        return int(self.shift.size)

    @classmethod
    def from_arrays(cls, shift, scale, source: str = "arrays") -> Cmvn:
        return cls(np.asarray(shift), np.asarray(scale), source)

    @classmethod
    def from_am_mvn(cls, path: str | os.PathLike) -> Cmvn:
        """Parse FunASR's ``am.mvn`` (Kaldi nnet text); errors name the file and line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadInputError(f"{path}: no such file (expected a Kaldi am.mvn)") from None
        except (OSError, UnicodeDecodeError) as error:
            raise BadInputError(f"{path}: cannot be read as text: {error}") from None
        tokens = [(m.group(), line) for line, row in enumerate(text.splitlines(), 1) for m in _TOKEN.finditer(row)]
        shift = _component_vector(tokens, "<AddShift>", path)
        scale = _component_vector(tokens, "<Rescale>", path)
        if shift.size != scale.size:
            raise BadInputError(f"{path}: <AddShift> has {shift.size} values but <Rescale> has {scale.size}")
        return cls(shift, scale, f"am.mvn ({path})")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str = "metadata") -> Cmvn:
        """sherpa-onnx's ``neg_mean`` / ``inv_stddev`` metadata (comma-separated floats)."""
        missing = [k for k in ("neg_mean", "inv_stddev") if k not in metadata]
        if missing:
            raise BadInputError(f"{source}: metadata has no {' or '.join(missing)} (sherpa-onnx CMVN keys)")
        arrays = []
        for key in ("neg_mean", "inv_stddev"):
            try:
                arrays.append(np.array([float(v) for v in metadata[key].replace(",", " ").split()]))
            except ValueError:
                raise BadInputError(f"{source}: metadata '{key}' is not a list of numbers") from None
        return cls(arrays[0], arrays[1], f"{source} neg_mean/inv_stddev")


def _component_vector(tokens: list[tuple[str, int]], tag: str, path: Path) -> np.ndarray:
    """The bracketed vector of a Kaldi nnet component such as ``<AddShift> 560 560 ... [ v ... ]``."""
    starts = [i for i, (token, _) in enumerate(tokens) if token == tag]
    if not starts:
        raise BadInputError(f"{path}: no {tag} component (not a FunASR/Kaldi am.mvn?)")
    i = starts[0]
    line = tokens[i][1]
    try:
        declared = int(tokens[i + 1][0])
    except (IndexError, ValueError):
        raise BadInputError(f"{path}:{line}: {tag} should be followed by its dimensions") from None
    while i < len(tokens) and tokens[i][0] != "[":
        if tokens[i][0].startswith("<") and tokens[i][0] not in (tag, "<LearnRateCoef>"):
            raise BadInputError(f"{path}:{tokens[i][1]}: {tag} has no [ ... ] vector before {tokens[i][0]}")
        i += 1
    if i == len(tokens):
        raise BadInputError(f"{path}:{line}: {tag} has no [ ... ] vector")
    open_line = tokens[i][1]
    values = []
    for token, token_line in tokens[i + 1 :]:
        if token == "]":
            break
        try:
            values.append(float(token))
        except ValueError:
            raise BadInputError(f"{path}:{token_line}: {tag} value {token!r} is not a number") from None
    else:
        raise BadInputError(f"{path}:{open_line}: the {tag} vector opened here is never closed with ]")
    if len(values) != declared:
        raise BadInputError(f"{path}:{open_line}: {tag} declares {declared} values but lists {len(values)}")
    return np.array(values)


def cmvn_graph(g: GraphOps, features: ir.Value, cmvn: Cmvn) -> ir.Value:
    """(x + shift) * scale over the last axis."""
    op = g.op
    return op.Mul(op.Add(features, g.const(cmvn.shift)), g.const(cmvn.scale))
