"""Inputs for parity checks: generated from a model's signature, or read from an npz.

When the user gives no inputs, they are made from the signature with fixed seeds and
ranges a real deployment would feed, and every input records how it was made:

- the speech-feature input (float [B, T, D], found as ``fuse-preproc`` finds it) gets
  real features: Kaldi fbank + LFR of the built-in speech-like waveform (pauses of digital
  silence included), two rows of different lengths, normalised by the CMVN the model was
  shipped with (``am.mvn`` beside it, sherpa-onnx metadata) or by the statistics of their
  speech frames, as a corpus CMVN is estimated (silence then takes the large negative
  values real deployments feed encoders);
- its length input gets each row's frame count;
- integer inputs that index a table (``Gather`` into an embedding, through Cast/Reshape
  and the like) get random ids inside the table; other integers get zeros;
- other float inputs get seeded standard-normal values; bool inputs seeded coin flips.

Symbolic dimensions with the same name get the same size everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from svsurgery.errors import BadInputError

__all__ = ["ParityInputs", "check_feeds", "generate_inputs", "load_inputs", "runs_on"]

_BATCH = 2
_OTHER_DIM = 8  # size of symbolic dimensions nothing else decides
_PASS_THROUGH = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Concat"})
_FBANK_BINS = 80
_LFR_SHIFT = {7: 6, 5: 1}  # FunASR's lfr_n for the lfr_m its models use (SenseVoice/Paraformer, fsmn-vad)


@dataclasses.dataclass
class ParityInputs:
    """Feeds by input name, and for each a sentence saying how it was made."""

    feeds: dict[str, np.ndarray]
    how: dict[str, str]

    def describe(self) -> str:
        return "; ".join(f"{name}: {text}" for name, text in self.how.items())


@contextlib.contextmanager
def runs_on(inputs: ParityInputs, label: str) -> Iterator[None]:
    """Within the block, a model (or reference) that fails to run on ``inputs`` is one line
    naming the inputs, how they were made, and how to give others (``--inputs``)."""
    from svsurgery.io import describe_onnx_error
    from svsurgery.runtime import onnxruntime_errors

    try:
        yield
    except onnxruntime_errors() as error:
        shapes = "; ".join(
            f"{name} {list(array.shape)} {array.dtype} ({inputs.how.get(name, 'given')})" for name, array in inputs.feeds.items()
        )
        raise BadInputError(
            f"{label} cannot run on these inputs: {describe_onnx_error(error)} -- inputs: {shapes}; "
            f"give inputs it can run on with --inputs inputs.npz (one array per input name)"
        ) from None


def generate_inputs(model: ir.Model, model_path: str | os.PathLike | None = None, *, seed: int = 0) -> ParityInputs:
    """Inputs for every graph input of ``model`` (see the module docstring)."""
    from svsurgery.compose import find_encoder_inputs

    rng = np.random.default_rng(seed)
    dims: dict[str, int] = {}
    feeds: dict[str, np.ndarray] = {}
    how: dict[str, str] = {}
    initializer_names = set(model.graph.initializers)
    graph_inputs = [v for v in model.graph.inputs if v.name not in initializer_names]
    try:
        binding = find_encoder_inputs(model)
    except BadInputError:
        binding = None
    if binding is not None and isinstance(binding.feature_dim, int) and binding.feature_dim % _FBANK_BINS == 0:
        features, lengths, text = _speech_features(model, model_path, binding.feature_dim)
        shape = binding.features.shape
        for axis, size in ((0, features.shape[0]), (1, features.shape[1])):
            if not isinstance(shape[axis], int) and shape[axis].value is not None:
                dims[shape[axis].value] = size
        feeds[binding.features.name] = features.astype(binding.features.dtype.numpy())
        how[binding.features.name] = text
        if binding.lengths is not None:
            feeds[binding.lengths.name] = lengths.astype(binding.lengths.dtype.numpy())
            how[binding.lengths.name] = f"frames per row of '{binding.features.name}': {lengths.tolist()}"
    for value in graph_inputs:
        if value.name in feeds:
            continue
        if value.dtype is None or value.shape is None:
            raise BadInputError(f"input '{value.name}' declares no type or shape; give inputs with --inputs")
        shape = _concrete_shape(value, dims)
        feeds[value.name], how[value.name] = _fill(model, value, shape, rng)
    return ParityInputs({v.name: feeds[v.name] for v in graph_inputs}, {v.name: how[v.name] for v in graph_inputs})


def _concrete_shape(value: ir.Value, dims: dict[str, int]) -> tuple[int, ...]:
    shape = []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int):
            shape.append(dim)
            continue
        default = _BATCH if axis == 0 else _OTHER_DIM
        if dim.value is None:
            shape.append(default)
        else:
            shape.append(dims.setdefault(dim.value, default))
    return tuple(shape)


def _fill(model: ir.Model, value: ir.Value, shape: tuple[int, ...], rng) -> tuple[np.ndarray, str]:
    dtype = value.dtype
    if dtype == ir.DataType.BOOL:
        return rng.random(shape) < 0.5, "seeded random booleans"
    if dtype.is_integer():
        bound = _index_bound(value)
        if bound is not None:
            return rng.integers(0, bound, size=shape).astype(dtype.numpy()), f"random ids in [0, {bound}) (it indexes a table of {bound} rows)"
        return np.zeros(shape, dtype.numpy()), "zeros (no valid range found in the graph)"
    if dtype.is_floating_point():
        return rng.standard_normal(shape).astype(dtype.numpy()), "seeded standard-normal values"
    raise BadInputError(f"input '{value.name}' has type {dtype.name}, which svsurgery cannot generate; give --inputs")


def _index_bound(value: ir.Value) -> int | None:
    """Rows of the smallest constant table this integer input indexes (through reshapes and casts)."""
    bounds = []
    frontier, seen = [value], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for use in current.uses():
            node = use.node
            if node.op_type == "Gather" and use.idx == 1:
                table = node.inputs[0]
                axis = node.attributes.get_int("axis", 0)
                if table is not None and table.shape is not None and isinstance(table.shape[axis], int):
                    bounds.append(table.shape[axis])
            elif node.op_type in _PASS_THROUGH:
                frontier.extend(node.outputs)
    return min(bounds) if bounds else None


def _speech_features(model: ir.Model, model_path, dim: int) -> tuple[np.ndarray, np.ndarray, str]:
    from svsurgery.frontend import FbankOptions, LfrOptions, reference
    from svsurgery.parity.waveforms import speech_like

    fbank, lfr, cmvn, settings = _shipped_frontend(model, model_path, dim)
    if fbank is None:
        stack = dim // _FBANK_BINS
        fbank, lfr = FbankOptions.sensevoice(), LfrOptions(stack, _LFR_SHIFT.get(stack, 1))
        settings = f"Kaldi fbank ({_FBANK_BINS} bins) + LFR {lfr.m},{lfr.n}"
    rows = [speech_like(4.0, seed=0), speech_like(2.3, seed=1)]
    stacked = [reference.apply_lfr(reference.fbank(row, fbank), lfr) for row in rows]
    if cmvn is not None:
        stacked = [reference.apply_cmvn(s, cmvn.shift, cmvn.scale) for s in stacked]
        settings += f", CMVN from {cmvn.source}"
    else:
        mean, std = reference.speech_statistics(np.concatenate(stacked))
        stacked = [(s - mean) / std for s in stacked]
        settings += ", normalised by the mean and std of their speech frames (no CMVN shipped with the model)"
    lengths = np.array([s.shape[0] for s in stacked])
    batch = np.zeros((len(stacked), lengths.max(), dim))
    for row, features in enumerate(stacked):
        batch[row, : features.shape[0]] = features
    text = f"{settings} of the built-in speech-like waveform (rows of 4.0 s and 2.3 s)"
    return batch.astype(np.float32), lengths, text


def _shipped_frontend(model: ir.Model, model_path, dim: int):
    """(fbank, lfr, cmvn, description) the model was shipped with, when they make ``dim`` features."""
    from svsurgery.frontend.config import discover

    for use_cmvn in (True, False):
        try:
            found = discover(model, model_path, use_cmvn=use_cmvn)
        except BadInputError:
            continue
        if found.fbank.feature_dim * found.lfr.m != dim:
            return None, None, None, ""
        cmvn = found.cmvn if found.cmvn is not None and found.cmvn.dim == dim else None
        settings = f"fbank ({found.sources['fbank']}) + LFR {found.lfr.m},{found.lfr.n} ({found.sources['lfr']})"
        return found.fbank, found.lfr, cmvn, settings
    return None, None, None, ""


def load_inputs(path: str | os.PathLike, model: ir.Model) -> ParityInputs:
    """Feeds from an npz keyed by input name (``input/<name>`` keys, as golden files use, also work)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such inputs file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key.removeprefix("input/"): data[key] for key in data.files if not key.startswith(("output/", "__"))}
    except (OSError, ValueError) as error:
        raise BadInputError(f"{path}: not a readable npz of input arrays ({error})") from None
    feeds = check_feeds(arrays, model, str(path))
    return ParityInputs(feeds, {name: f"from {path}" for name in feeds})


def check_feeds(arrays: Mapping[str, np.ndarray], model: ir.Model, label: str) -> dict[str, np.ndarray]:
    """The model's inputs from ``arrays``, converted to their declared types; one clear line otherwise.

    Checked before anything runs: every input present, its rank, every fixed dimension,
    the same size wherever two inputs share a symbolic dimension (the batch), a type
    that converts without changing kind, and ids inside the table an integer input indexes.
    """
    initializer_names = set(model.graph.initializers)
    feeds = {}
    symbolic: dict[str, tuple[int, str, int]] = {}  # dimension name -> (size, input, axis) first seen
    for value in model.graph.inputs:
        if value.name in initializer_names and value.name not in arrays:
            continue
        if value.name not in arrays:
            raise BadInputError(f"{label}: has no array for model input '{value.name}' (it has: {', '.join(sorted(arrays))})")
        array = np.asarray(arrays[value.name])
        if value.shape is not None:
            if array.ndim != len(value.shape):
                raise BadInputError(
                    f"{label}: '{value.name}' has rank {array.ndim} (shape {list(array.shape)}), "
                    f"the model expects rank {len(value.shape)} ({_shape_text(value)})"
                )
            for axis, (dim, size) in enumerate(zip(value.shape, array.shape)):
                if isinstance(dim, int):
                    if dim != size:
                        raise BadInputError(
                            f"{label}: '{value.name}' has {size} along axis {axis} (shape {list(array.shape)}), "
                            f"the model fixes it to {dim} ({_shape_text(value)})"
                        )
                elif dim.value is not None:
                    seen = symbolic.setdefault(dim.value, (size, value.name, axis))
                    if seen[0] != size:
                        raise BadInputError(
                            f"{label}: '{value.name}' has {size} along axis {axis} but '{seen[1]}' has {seen[0]} along "
                            f"axis {seen[2]}; the model names both '{dim.value}', so they must be equal"
                        )
        expected = value.dtype.numpy() if value.dtype is not None else array.dtype
        if array.dtype != expected:
            if not np.can_cast(array.dtype, expected, casting="same_kind"):
                raise BadInputError(f"{label}: '{value.name}' is {array.dtype}, the model expects {np.dtype(expected)}")
            array = array.astype(expected)
        if value.dtype is not None and value.dtype.is_integer() and array.size:
            bound = _index_bound(value)
            if bound is not None and (array.min() < -bound or array.max() >= bound):
                raise BadInputError(
                    f"{label}: '{value.name}' holds ids {int(array.min())}..{int(array.max())}, but it indexes a table "
                    f"of {bound} rows (valid: 0..{bound - 1})"
                )
        feeds[value.name] = array
    return feeds


def _shape_text(value: ir.Value) -> str:
    dims = ["?" if not isinstance(d, int) and d.value is None else str(d if isinstance(d, int) else d.value) for d in value.shape]
    return f"[{', '.join(dims)}]"
