"""Inputs for parity checks: generated from a model's signature, or read from an npz.

When the user gives no inputs, they are made from the signature with fixed seeds and
ranges a real deployment would feed, and every input records how it was made (and what
in the model decided it). Each input's role is read from its name, dtype, rank and fixed
dimensions *and* from how the graph uses it; names are hints, third-party names vary:

- **speech features** (float [B, T, D], found as ``fuse-preproc`` finds it, D a multiple of
  80): real features: Kaldi fbank + LFR of the built-in speech-like waveform (pauses of
  digital silence included), rows of 4.0 s and 2.3 s, normalised by the CMVN the model was
  shipped with (``am.mvn`` beside it, sherpa-onnx metadata) or by the statistics of their
  speech frames, as a corpus CMVN is estimated; its length input gets each row's frame count;
- **log-mel** (float [B, 80|128, T], ``input_features`` or read by a Conv with that many
  input channels: Whisper): Whisper's log-mel of the speech-like waveform, T fixed or 3000;
- **waveforms** (float [B, N] or [N]: a signal a Conv, STFT, DFT or Pad reads, or named
  ``input_values``, ``waveform``, ``speech``, ``x``, ``input``, ``audio``... with N not fixed):
  the speech-like waveform at the model's rate (metadata ``sample_rate``/``sampling_rate``,
  the constants a rate input is compared with, else 16 kHz), 1 s per row (1 s and 0.6 s,
  zeros after, where a mask or length input says rows differ); a streaming model (one with
  state inputs) first gets a 36 ms chunk cut where the speech is loudest: silero's 512 + 64
  samples at 16 kHz;
- **recurrent state** (float; named ``state``, ``h``, ``c``, ``*cache*``..., returned as an
  output of the same shape, or read as an LSTM/GRU/RNN initial state): zeros;
- **sample rates** (a scalar integer named ``sr``/``sample_rate`` or compared with 8000,
  16000, ...): the rate the waveform was made at;
- **masks** (integer or bool inputs that reach a Softmax through elementwise and indexing
  ops, never through a MatMul/Conv/Gather index/Shape, or named ``*mask*``): ones over each
  row's valid length, zeros after (``*padding_mask*`` bools: True after); a data input that
  shares the mask's sequence dimension is padded after each row's length (waveforms with
  zeros, ids with 0);
- **lengths** (integer [B] named ``*len*``): the valid length of each row of the input they
  describe (by name prefix, else the waveform or sequence input);
- **ids**: integers that index a table (``Gather`` into an embedding, through Cast/Reshape
  and the like) get random ids inside the table;
- otherwise: integers whose valid range the graph does not show get small non-negative
  values (0..3); bools seeded coin flips; floats seeded standard-normal values.

Dimensions: every fixed dimension is kept; the batch (axis 0 of data inputs, the symbolic
axes of state inputs) is the same everywhere: 2, or the size an input fixes it to;
symbolic dimensions with the same name get the same size; others get 8 (tokens).

When a length was guessed (a waveform or token sequence whose length nothing fixes), the
model is run once on the inputs with onnxruntime; if it fails, longer inputs are tried
(waveforms 1 s -> 4 s, tokens 8 -> 64), then one line names the inputs and ``--inputs``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from svsurgery.compose import find_encoder_inputs
from svsurgery.errors import BadInputError
from svsurgery.frontend import FbankOptions, LfrOptions, numpy_statement
from svsurgery.frontend.config import discover
from svsurgery.model_io import describe_onnx_error
from svsurgery.parity.waveforms import loudest_window, speech_like, whisper_log_mel
from svsurgery.patch import value_name
from svsurgery.runtime import inference_session, onnxruntime_errors

__all__ = ["ParityInputs", "check_feeds", "generate_inputs", "load_inputs", "runs_on"]

_BATCH = 2
_SEQUENCE_LADDER = (8, 64)  # tokens and other symbolic dimensions nothing else decides, tried in turn
_WAVEFORM_LADDER = (1.0, 4.0)  # seconds per waveform row, tried in turn
_CHUNK_SECONDS = (
    0.036  # a streaming model's first try: silero's wrapper feeds 512 + 64 samples at 16 kHz (256 + 32 at 8 kHz)
)
_SHORT_ROW = 0.6  # where a mask or a length input says rows differ, the second row's share of the length
_FEATURE_ROWS = (4.0, 2.3)  # seconds of speech per row of speech features and log-mel
_SMALL_INTEGERS = 4  # integers with no range in the graph get 0 .. _SMALL_INTEGERS - 1
_PASS_THROUGH = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Concat"})
_FBANK_BINS = 80
_LFR_SHIFT = {7: 6, 5: 1}  # FunASR's lfr_n for the lfr_m its models use (SenseVoice/Paraformer, fsmn-vad)
_DEFAULT_RATE = 16000
_RATES = frozenset({8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000})
_RATE_KEYS = ("sample_rate", "sampling_rate", "sample_frequency", "samp_freq", "sr", "fs", "audio_sample_rate")
_WHISPER_MELS = (80, 128)
_WHISPER_FRAMES = 3000  # 30 s at a 10 ms hop: what Whisper's feature extractor always pads to

# names are hints; the graph decides where it can
_WAVEFORM_NAMES = frozenset(
    {
        "input_values",
        "waveform",
        "waveforms",
        "wav",
        "wavs",
        "audio",
        "audios",
        "audio_signal",
        "audio_values",
        "speech",
        "x",
        "input",
        "samples",
        "signal",
        "pcm",
        "raw_audio",
        "raw_speech",
    }
)
_LOG_MEL_NAMES = frozenset({"input_features", "mel", "mels", "log_mel", "log_mel_spectrogram", "mel_spectrogram"})
_STATE_NAMES = frozenset(
    {"state", "states", "h", "c", "h0", "c0", "hx", "cx", "hidden", "hidden_state", "memory", "mems"}
)
_STATE_WORDS = ("cache", "state", "hidden", "past_")
_RATE_NAMES = frozenset({"sr", "sample_rate", "sampling_rate", "samplerate", "fs", "sample_rate_hz"})
_SIGNAL_READERS = frozenset({"Conv", "ConvTranspose", "STFT", "DFT", "Pad"})
_SIGNAL_THROUGH = frozenset(
    {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Mul", "Div", "Add", "Sub", "Concat", "Slice"}
)
_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
_STATE_THROUGH = frozenset(
    {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Gather", "Slice", "Split", "Transpose", "Concat"}
)
_COMPARISONS = frozenset({"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"})
# a mask's way to the scores: anything but reading it as weights' partner, an index or a shape
_MASK_STOPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "MatMulInteger",
        "QLinearMatMul",
        "Shape",
        "Size",
        "ConstantOfShape",
        "Range",
        "LSTM",
        "GRU",
        "RNN",
        "Loop",
        "Scan",
        "NonZero",
        "TopK",
    }
)
_INDEX_OPS = frozenset({"Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND", "OneHot"})


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
    try:
        yield
    except onnxruntime_errors() as error:
        shapes = "; ".join(
            f"{name} {list(array.shape)} {array.dtype} ({inputs.how.get(name, 'given')})"
            for name, array in inputs.feeds.items()
        )
        raise BadInputError(
            f"{label} cannot run on these inputs: {describe_onnx_error(error)} -- inputs: {shapes}; "
            f"give inputs it can run on with --inputs inputs.npz (one array per input name)"
        ) from None


def generate_inputs(model: ir.Model, model_path: str | os.PathLike | None = None, *, seed: int = 0) -> ParityInputs:
    """Inputs for every graph input of ``model`` (see the module docstring).

    Raises BadInputError (one line naming the inputs and ``--inputs``) when the model cannot
    run on generated inputs even at the longest length tried."""
    initializer_names = set(model.graph.initializers)
    graph_inputs = [v for v in model.graph.inputs if v.name not in initializer_names]
    for value in graph_inputs:
        if value.dtype is None or value.shape is None:
            raise BadInputError(f"input '{value.name}' declares no type or shape; give inputs with --inputs")
    roles = _roles(model, graph_inputs)
    rate = _sample_rate(model, graph_inputs, roles)
    streaming = any(role.kind == "state" for role in roles.values())
    ladders = {"waveform": ((_CHUNK_SECONDS,) if streaming else ()) + _WAVEFORM_LADDER, "sequence": _SEQUENCE_LADDER}
    label = Path(model_path).name if model_path else "the model"
    session, tried = None, []
    level, levels = 0, 1
    while True:
        steps = {kind: ladder[min(level, len(ladder) - 1)] for kind, ladder in ladders.items()}
        inputs, guessed = _make(model, model_path, graph_inputs, roles, rate, steps, seed)
        if not guessed:
            return inputs  # every length came from the model or from real features: nothing to try
        levels = max(len(ladders[kind]) for kind in guessed)
        if session is None:
            session = _probe_session(model)
            if session is False:
                return inputs  # onnxruntime cannot load it; the validity gate says why, later
        tried.append(
            ", ".join(
                f"{steps[kind]:g} s of waveform" if kind == "waveform" else f"{steps[kind]} tokens"
                for kind in sorted(guessed)
            )
        )
        if level == levels - 1:
            earlier = f" (also tried: {'; '.join(tried[:-1])})" if len(tried) > 1 else ""
            with runs_on(inputs, f"{label}{earlier}"):
                session.run(None, inputs.feeds)
            return inputs
        try:
            session.run(None, inputs.feeds)
            return inputs
        except onnxruntime_errors():
            level += 1


def _probe_session(model: ir.Model):
    """An unoptimised onnxruntime session to try generated inputs on; False when it cannot load."""
    try:
        return inference_session(model, optimize=False)
    except onnxruntime_errors():
        return False


def _shape(value: ir.Value) -> ir.Shape:
    """A graph input's shape: generate_inputs refuses inputs that declare none."""
    assert value.shape is not None, "generate_inputs refuses inputs without a shape"
    return value.shape


def _dtype(value: ir.Value) -> ir.DataType:
    """A graph input's type: generate_inputs refuses inputs that declare none."""
    assert value.dtype is not None, "generate_inputs refuses inputs without a type"
    return value.dtype


@dataclasses.dataclass
class _Role:
    """What an input is for, and what in the model said so."""

    kind: str  # features, feature-lengths, log-mel, waveform, state, rate, mask, lengths, ids, integers, bools, floats
    why: str = ""
    bound: int | None = None  # ids: rows of the table they index; log-mel: mel bins
    target: str | None = None  # lengths: the input whose rows they count
    rates: tuple[int, ...] = ()  # rate: the sample rates the graph compares it with


def _roles(model: ir.Model, graph_inputs: list[ir.Value]) -> dict[str, _Role]:
    roles: dict[str, _Role] = {}
    for value in graph_inputs:  # before the feature binding, which would take [B, 80, 3000] as [B, T, D]
        why, mels = _log_mel_evidence(value)
        if why:
            roles[value_name(value)] = _Role("log-mel", why, bound=mels)
    try:
        binding = find_encoder_inputs(model)
    except BadInputError:
        binding = None
    if (
        binding is not None
        and binding.features.name not in roles
        and isinstance(binding.feature_dim, int)
        and binding.feature_dim % _FBANK_BINS == 0
    ):
        roles[value_name(binding.features)] = _Role("features", binding.how)
        if binding.lengths is not None:
            roles[value_name(binding.lengths)] = _Role("feature-lengths", binding.how)
    outputs = list(model.graph.outputs)
    for value in graph_inputs:
        if value.name not in roles:
            roles[value_name(value)] = _classify(value, outputs)
    for value in graph_inputs:
        role = roles[value_name(value)]
        if role.kind == "lengths":
            role.target = _length_target(value, graph_inputs, roles)
            if role.target is None:
                roles[value_name(value)] = _Role("integers")
    return roles


def _classify(value: ir.Value, outputs: list[ir.Value]) -> _Role:
    name, dtype, shape = value_name(value).lower(), _dtype(value), _shape(value)
    scalar = all(isinstance(dim, int) and dim == 1 for dim in shape)  # rank 0, [1], [1, 1]
    if scalar and dtype.is_integer():
        rates = _compared_rates(value)
        if rates:
            return _Role("rate", f"compared with {', '.join(map(str, rates))}", rates=rates)
        if name in _RATE_NAMES:
            return _Role("rate", f"its name '{value.name}'")
    if dtype.is_floating_point():
        why = _state_evidence(value, outputs)
        if why:
            return _Role("state", why)
        why = _waveform_evidence(value)
        if why:
            return _Role("waveform", why)
        if "mask" in name:  # a float added to attention scores may be a bias: floats need the name
            return _Role("mask", f"its name '{value.name}'")
        return _Role("floats")
    if dtype.is_integer():
        bound = _index_bound(value)
        if bound is not None:
            return _Role("ids", bound=bound)
        if len(shape) == 1 and _LENGTH_NAME.search(name):
            return _Role("lengths", f"its name '{value.name}'")
    if dtype.is_integer() or dtype == ir.DataType.BOOL:
        why = _mask_evidence(value)
        if why:
            return _Role("mask", why)
        return _Role("integers" if dtype.is_integer() else "bools")
    raise BadInputError(f"input '{value.name}' has type {dtype.name}, which svsurgery cannot generate; give --inputs")


_LENGTH_NAME = re.compile(r"(^|_)(len|lens|length|lengths|seq_len|seqlen)$")


def _log_mel_evidence(value: ir.Value) -> tuple[str, int | None]:
    """(why, mel bins) for a Whisper-style [B, 80|128, T] input: its mel axis fixed to 80 or
    128 or read by a Conv with that many input channels, and its name or that Conv saying so."""
    shape = _shape(value)
    if not _dtype(value).is_floating_point() or len(shape) != 3 or (isinstance(shape[2], int) and shape[2] < 8):
        return "", None
    conv = _reaches(
        value,
        lambda node, idx: node.op_type == "Conv" and idx == 0,
        lambda node, idx: node.op_type in _PASS_THROUGH,
        depth=3,
    )
    weight = conv.inputs[1] if conv is not None and len(conv.inputs) > 1 else None
    channels = weight.shape[1] if weight is not None and weight.shape is not None and len(weight.shape) == 3 else None
    mels = shape[1] if isinstance(shape[1], int) else channels
    if not isinstance(mels, int) or mels not in _WHISPER_MELS or (channels is not None and channels != mels):
        return "", None
    if value_name(value).lower() in _LOG_MEL_NAMES:
        return f"its name '{value.name}' and {mels} mel bins on axis 1", mels
    if channels == mels:
        return f"a Conv reads its {mels} channels over time", mels
    return "", None


def _waveform_evidence(value: ir.Value) -> str:
    shape = _shape(value)
    if len(shape) not in (1, 2):
        return ""
    reader = _reaches(
        value,
        lambda node, idx: node.op_type in _SIGNAL_READERS and idx == 0,
        lambda node, idx: node.op_type in _SIGNAL_THROUGH,
        depth=4,
    )
    if reader is not None:
        return f"a {reader.op_type} reads it as a signal"
    if value_name(value).lower() in _WAVEFORM_NAMES and not isinstance(shape[-1], int):
        return f"its name '{value.name}' and a length axis of no fixed size"
    return ""


def _state_evidence(value: ir.Value, outputs: list[ir.Value]) -> str:
    name = value_name(value).lower()
    partners = {f"{name}n", f"{name}_n", f"next_{name}", f"new_{name}", f"out_{name}", f"{name}_out", f"{name}_next"}
    if name.startswith("in_"):
        partners.add("out_" + name[3:])
    if name.startswith("past"):
        partners.add("present" + name[4:])
    paired = next(
        (
            o
            for o in outputs
            if value_name(o).lower() in partners and (o.shape is None or len(o.shape) == len(_shape(value)))
        ),
        None,
    )
    if paired is not None:
        return f"returned as output '{paired.name}'"
    if name in _STATE_NAMES or (any(word in name for word in _STATE_WORDS) and "hidden_states" not in name):
        return f"its name '{value.name}'"
    reader = _reaches(
        value,
        lambda node, idx: node.op_type in _RECURRENT and idx in (5, 6),
        lambda node, idx: node.op_type in _STATE_THROUGH,
        depth=6,
    )
    if reader is not None:
        return f"an {reader.op_type} reads it as its initial state"
    return ""


def _compared_rates(value: ir.Value) -> tuple[int, ...]:
    found: set[int] = set()

    def compares(node: ir.Node, idx: int) -> bool:
        if node.op_type in _COMPARISONS:
            other = _constant(node.inputs[1 - idx]) if len(node.inputs) == 2 else None
            if other is not None:
                found.update(int(v) for v in np.ravel(other) if float(v).is_integer() and int(v) in _RATES)
        return False

    _reaches(value, compares, lambda node, idx: node.op_type in _PASS_THROUGH, depth=3)
    return tuple(sorted(found))


def _mask_evidence(value: ir.Value) -> str:
    if "mask" in value_name(value).lower():
        return f"its name '{value.name}'"
    if len(_shape(value)) < 2:
        return ""
    softmax = _reaches(value, lambda node, idx: node.op_type == "Softmax", _reaches_scores, limit=3000)
    if softmax is not None:
        return f"it reaches the attention scores of '{softmax.name or 'a Softmax'}' without a MatMul, Conv or index"
    return ""


_SHAPE_OPERANDS = {"Reshape": 1, "Expand": 1, "Tile": 1, "Unsqueeze": 1, "Squeeze": 1, "Split": 1, "Slice": 1, "Pad": 1}


def _reaches_scores(node: ir.Node, idx: int) -> bool:
    """Whether a mask's effect flows on through this use: not as matrix operand, index or shape."""
    if node.op_type in _MASK_STOPS or node.op_type == "If":
        return False
    if node.op_type in _INDEX_OPS and idx >= 1:
        return False
    return idx < _SHAPE_OPERANDS.get(node.op_type, len(node.inputs) + 1)


def _reaches(
    value: ir.Value,
    is_target: Callable[[ir.Node, int], bool],
    passes: Callable[[ir.Node, int], bool],
    *,
    depth: int | None = None,
    limit: int = 2000,
) -> ir.Node | None:
    """The first node (breadth first) reading ``value``'s data, directly or through nodes
    ``passes`` lets through, for which ``is_target(node, input_index)`` holds (uses inside
    If/Loop/Scan bodies included); None after ``depth`` hops or ``limit`` nodes."""
    frontier, seen = collections.deque([(value, 0)]), set()
    while frontier:
        current, hops = frontier.popleft()
        for use in current.uses():
            node = use.node
            if is_target(node, use.idx):
                return node
            if id(node) in seen or (depth is not None and hops + 1 >= depth) or not passes(node, use.idx):
                continue
            seen.add(id(node))
            if len(seen) > limit:
                return None
            frontier.extend((output, hops + 1) for output in node.outputs)
    return None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        for key in ("value", "value_int", "value_ints", "value_float", "value_floats"):
            attribute = node.attributes.get(key)
            if attribute is not None:
                data = attribute.value
                return data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    return None


def _length_target(value: ir.Value, graph_inputs: list[ir.Value], roles: dict[str, _Role]) -> str | None:
    """The input whose rows a length input counts: the one its name starts with, else the
    waveform, else the ids, else the first float with an axis of no fixed size."""
    data = [
        v for v in graph_inputs if roles.get(value_name(v), _Role("")).kind in ("waveform", "ids", "floats", "log-mel")
    ]
    data = [v for v in data if len(_shape(v)) >= (1 if roles[value_name(v)].kind == "waveform" else 2)]
    stem = _LENGTH_NAME.sub("", value_name(value).lower())
    for candidate in data:
        if value_name(candidate).lower() == stem:
            return candidate.name
    for kind in ("waveform", "ids", "floats"):
        for candidate in data:
            if roles[value_name(candidate)].kind == kind and any(not isinstance(d, int) for d in _shape(candidate)[1:]):
                return candidate.name
    return None


def _sequence_axis(value: ir.Value, role: _Role) -> int:
    """The axis rows have lengths along: a waveform's samples, a token sequence, features' frames."""
    if role.kind in ("waveform", "ids", "mask", "log-mel"):
        return len(_shape(value)) - 1
    return 1 if len(_shape(value)) > 1 else 0


def _key(value: ir.Value, axis: int) -> str:
    """What ties an axis to other inputs' axes: its symbolic name, else nothing (a key of its own)."""
    dim = _shape(value)[axis]
    if not isinstance(dim, int) and dim.value:
        return dim.value
    return f"{value.name}#{axis}"


@dataclasses.dataclass
class _SampleRate:
    rate: int
    source: str


def _sample_rate(model: ir.Model, graph_inputs: list[ir.Value], roles: dict[str, _Role]) -> _SampleRate:
    """Metadata first (``sample_rate``, ``sampling_rate``...), then the rates a rate input is
    compared with (16 kHz when among them, else the highest), else 16 kHz."""
    for key, text in model.metadata_props.items():
        if key.lower() in _RATE_KEYS:
            try:
                rate = int(float(text))
            except ValueError:
                continue
            if 1000 <= rate <= 384000:
                return _SampleRate(rate, f"metadata '{key}'")
    for value in graph_inputs:
        role = roles[value_name(value)]
        if role.kind == "rate" and role.rates:
            rate = _DEFAULT_RATE if _DEFAULT_RATE in role.rates else max(role.rates)
            return _SampleRate(rate, f"'{value.name}' is compared with {', '.join(map(str, role.rates))}")
    return _SampleRate(_DEFAULT_RATE, "16 kHz: no rate in the metadata or the graph")


def _batch_axes(value: ir.Value, role: _Role) -> list[int]:
    shape = _shape(value)
    if role.kind == "rate" or not shape or (role.kind == "waveform" and len(shape) == 1):
        return []  # a scalar; a waveform [N] is one row
    if role.kind == "state":  # [layers, B, hidden], [B, C, T, 1]...: what is not fixed is the batch
        return [axis for axis, dim in enumerate(shape) if not isinstance(dim, int)]
    return [0]


def _batch_size(graph_inputs: list[ir.Value], roles: dict[str, _Role]) -> int:
    """2, or what a data input fixes its axis 0 to (rank >= 2 first: a [2] input may be a pair, not a batch)."""
    for min_rank in (2, 1):
        for value in graph_inputs:
            first = _shape(value)[0] if len(_shape(value)) >= min_rank else None
            if _batch_axes(value, roles[value_name(value)]) == [0] and isinstance(first, int):
                return first
    return _BATCH


def _row_lengths(size: int, rows: int) -> list[int]:
    """Row 0 full, then rows alternating with a shorter one (0.6 of it), as a padded batch has."""
    return [size if row % 2 == 0 else max(1, round(size * _SHORT_ROW)) for row in range(rows)]


def _make(
    model: ir.Model,
    model_path: str | os.PathLike | None,
    graph_inputs: list[ir.Value],
    roles: dict[str, _Role],
    rate: _SampleRate,
    steps: dict,
    seed: int,
) -> tuple[ParityInputs, set[str]]:
    """One set of inputs at the lengths in ``steps``; also which guessed lengths it used."""
    rng = np.random.default_rng(seed)
    batch = _batch_size(graph_inputs, roles)
    dims: dict[str, int] = {}
    sizes: dict[tuple[str, int], int] = {}  # (input, axis) -> size decided for a dimension with no name
    guessed: set[str] = set()
    valid: dict[str, list[int]] = {}  # sequence key -> valid length of each row
    feeds: dict[str, np.ndarray] = {}
    how: dict[str, str] = {}
    for value in graph_inputs:
        for axis in _batch_axes(value, roles[value_name(value)]):
            dim = _shape(value)[axis]
            if not isinstance(dim, int) and dim.value:
                dims[dim.value] = batch

    # the inputs whose lengths real data decides
    for value in graph_inputs:
        name = value_name(value)
        role, declared = roles[name], _shape(value)
        if role.kind == "features":
            rows = declared[0] if isinstance(declared[0], int) else batch
            frames = declared[1] if isinstance(declared[1], int) else None
            dim = declared[2]
            assert isinstance(dim, int), "find_encoder_inputs binds features whose D is fixed (_roles checks it)"
            features, lengths, text = _speech_features(model, model_path, dim, rows, frames)
            _decide(value, 1, features.shape[1], dims, sizes)
            feeds[name] = features.astype(_dtype(value).numpy())
            how[name] = text
            valid[_key(value, 1)] = lengths.tolist()
            for other in graph_inputs:
                if roles[value_name(other)].kind == "feature-lengths":
                    feeds[value_name(other)] = lengths.astype(_dtype(other).numpy())
                    how[value_name(other)] = f"frames per row of '{value.name}': {lengths.tolist()}"
        elif role.kind == "log-mel":
            if not isinstance(declared[1], int):
                assert role.bound is not None, "a log-mel role always records its mel bins"
                _decide(value, 1, role.bound, dims, sizes)
            if not isinstance(declared[2], int):
                _decide(value, 2, _WHISPER_FRAMES, dims, sizes)
        elif role.kind == "waveform":
            dim = declared[-1]
            if not isinstance(dim, int) and not (dim.value and dim.value in dims):
                _decide(value, len(declared) - 1, round(steps["waveform"] * rate.rate), dims, sizes)
                guessed.add("waveform")

    shapes = {
        value_name(v): _concrete_shape(
            v, dims, sizes, _batch_axes(v, roles[value_name(v)]), batch, steps["sequence"], guessed
        )
        for v in graph_inputs
    }
    # rows of different lengths wherever a mask or a length input says which are valid
    for value in graph_inputs:
        name = value_name(value)
        role = roles[name]
        if role.kind == "mask" and shapes[name]:
            axis = len(_shape(value)) - 1
            valid.setdefault(_key(value, axis), _row_lengths(shapes[name][axis], _rows(shapes[name])))
        elif role.kind == "lengths":
            target = next(v for v in graph_inputs if v.name == role.target)
            target_name = value_name(target)
            axis = _sequence_axis(target, roles[target_name])
            valid.setdefault(_key(target, axis), _row_lengths(shapes[target_name][axis], _rows(shapes[target_name])))

    for value in graph_inputs:
        name = value_name(value)
        if name in feeds:
            continue
        role, shape, dtype = roles[name], shapes[name], _dtype(value).numpy()
        keyed = {axis: valid[_key(value, axis)] for axis in range(1, len(shape)) if _key(value, axis) in valid}
        if role.kind == "log-mel":
            feeds[name], how[name] = _log_mel(shape).astype(dtype), _log_mel_text(shape, role)
        elif role.kind == "waveform":
            feeds[name], how[name] = _waveform(value, shape, role, rate, keyed)
        elif role.kind == "state":
            fixed = "; its fixed dimensions kept" if any(isinstance(d, int) for d in _shape(value)) else ""
            tie = f"; batch {batch} as the other inputs" if _batch_axes(value, role) else ""
            feeds[name], how[name] = (
                np.zeros(shape, dtype),
                f"zeros (recurrent state: {role.why}{fixed}{tie})",
            )
        elif role.kind == "rate":
            feeds[name] = np.full(shape, rate.rate, dtype)
            how[name] = f"{rate.rate} (a sample rate: {role.why}; the rate the waveform is made at)"
        elif role.kind == "mask":
            feeds[name], how[name] = _mask(value, shape, role, valid[_key(value, len(shape) - 1)])
        elif role.kind == "lengths":
            target = next(v for v in graph_inputs if v.name == role.target)
            axis = _sequence_axis(target, roles[value_name(target)])
            row_lengths = valid[_key(target, axis)][: shape[0] if shape else 1]
            feeds[name] = np.asarray(row_lengths, dtype).reshape(shape)
            how[name] = f"valid length of each row of '{target.name}' (axis {axis}): {row_lengths} ({role.why})"
        else:
            feeds[name], how[name] = _fill(value, shape, role, rng)
        if keyed and role.kind in ("ids", "floats", "integers"):
            feeds[name] = _pad_rows(feeds[name], keyed)
            how[name] += (
                f"; 0 after each row's valid length {next(iter(keyed.values()))}"
                " (the padding a mask or length input marks)"
            )
    names = [value_name(v) for v in graph_inputs]
    ordered = ParityInputs({n: feeds[n] for n in names}, {n: how[n] for n in names})
    return ordered, guessed


def _rows(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) > 1 else 1


def _pad_rows(array: np.ndarray, keyed: dict[int, list[int]]) -> np.ndarray:
    array = array.copy()
    for axis, lengths in keyed.items():
        for row, length in enumerate(lengths[: array.shape[0]]):
            index = [row] + [slice(None)] * (array.ndim - 1)
            index[axis] = slice(length, None)
            array[tuple(index)] = 0
    return array


def _decide(value: ir.Value, axis: int, size: int, dims: dict[str, int], sizes: dict[tuple[str, int], int]) -> None:
    """Fix the size of ``value``'s symbolic ``axis`` (for every input sharing its name, if it has one)."""
    dim = _shape(value)[axis]
    if isinstance(dim, int):
        return  # fixed by the model (speech features with a fixed frame count): nothing to decide
    if dim.value:
        dims[dim.value] = size
    else:
        sizes[(value_name(value), axis)] = size


def _concrete_shape(
    value: ir.Value,
    dims: dict[str, int],
    sizes: dict[tuple[str, int], int],
    batch_axes: list[int],
    batch: int,
    sequence: int,
    guessed: set[str],
) -> tuple[int, ...]:
    shape = []
    for axis, dim in enumerate(_shape(value)):
        if isinstance(dim, int):
            shape.append(dim)
        elif (value_name(value), axis) in sizes:
            shape.append(sizes[(value_name(value), axis)])
        elif axis in batch_axes:
            shape.append(dims.get(dim.value, batch) if dim.value else batch)
        elif dim.value and dim.value in dims:
            shape.append(dims[dim.value])
        else:
            guessed.add("sequence")
            if dim.value:
                dims[dim.value] = sequence
            shape.append(sequence)
    return tuple(shape)


def _fill(value: ir.Value, shape: tuple[int, ...], role: _Role, rng) -> tuple[np.ndarray, str]:
    dtype = _dtype(value)
    if role.kind == "bools":
        return rng.random(shape) < 0.5, "seeded random booleans"
    if role.kind == "ids":
        return rng.integers(0, role.bound, size=shape).astype(
            dtype.numpy()
        ), f"random ids in [0, {role.bound}) (it indexes a table of {role.bound} rows)"
    if role.kind == "integers":
        values = rng.integers(0, _SMALL_INTEGERS, size=shape).astype(dtype.numpy())
        return values, f"small non-negative values 0..{_SMALL_INTEGERS - 1} (no valid range found in the graph)"
    return rng.standard_normal(shape).astype(dtype.numpy()), "seeded standard-normal values"


def _waveform(
    value: ir.Value, shape: tuple[int, ...], role: _Role, rate: _SampleRate, keyed: dict[int, list[int]]
) -> tuple[np.ndarray, str]:
    rows = shape[0] if len(shape) == 2 else 1
    samples = shape[-1]
    lengths = keyed.get(len(shape) - 1, [samples] * rows)
    out = np.zeros((rows, samples), np.float64)
    chunked = False
    for row in range(rows):
        length = lengths[row] if row < len(lengths) else samples
        if length < rate.rate // 2:  # a chunk (streaming models, short fixed windows): cut where the speech is
            out[row, :length] = loudest_window(speech_like(1.0, seed=row, rate=rate.rate), length)
            chunked = True
        else:
            signal = speech_like(length / rate.rate, seed=row, rate=rate.rate)[:length]
            out[row, : len(signal)] = signal
    text = (
        f"the built-in speech-like waveform at {rate.rate} Hz ({rate.source}): {_durations(lengths[:rows], rate.rate)}"
    )
    if chunked:
        text += " (chunks cut from the loudest part of 1 s of it, as a streaming model is fed)"
    if len(set(lengths[:rows])) > 1:
        text += f", zeros after each row's valid length (padded to {samples} samples)"
    text += f"; a waveform: {role.why}"
    array = out if len(shape) == 2 else out[0]
    return array.astype(_dtype(value).numpy()), text


def _durations(lengths: list[int], rate: int) -> str:
    """'2 rows of 1 s', '2 rows: 1 s and 0.6 s', '1 row of 36 ms'."""

    def text(samples: int) -> str:
        seconds = samples / rate
        return f"{seconds * 1000:.4g} ms" if seconds < 0.1 else f"{seconds:.4g} s"

    rows = f"{len(lengths)} rows" if len(lengths) > 1 else "1 row"
    if len(set(lengths)) == 1:
        return f"{rows} of {text(lengths[0])}"
    return f"{rows}: {' and '.join(text(n) for n in lengths)}"


def _mask(value: ir.Value, shape: tuple[int, ...], role: _Role, lengths: list[int]) -> tuple[np.ndarray, str]:
    lowered = value_name(value).lower()
    inverted = value.dtype == ir.DataType.BOOL and ("padding_mask" in lowered or "pad_mask" in lowered)
    valid = np.zeros(shape, dtype=bool)
    for row, length in enumerate(lengths[: shape[0]] if len(shape) > 1 else lengths[:1]):
        index = (row, ..., slice(0, length)) if len(shape) > 1 else (slice(0, length),)
        valid[index] = True
    if inverted:
        text = f"False over the valid length of each row {lengths}, True after (a padding mask: {role.why})"
        return ~valid, text
    text = f"ones over the valid length of each row {lengths}, zeros after (a mask: {role.why})"
    return valid.astype(_dtype(value).numpy()), text


def _log_mel(shape) -> np.ndarray:
    rows, mels, frames = shape
    out = [whisper_log_mel(speech_like(_FEATURE_ROWS[row % 2], seed=row), mels, frames) for row in range(rows)]
    return np.stack(out).astype(np.float32)


def _log_mel_text(shape, role: _Role) -> str:
    rows, mels, frames = shape
    seconds = " and ".join(f"{_FEATURE_ROWS[row % 2]:.1f} s" for row in range(rows))
    return (
        f"Whisper's log-mel ({mels} Slaney mel bins, 25 ms Hann window, 10 ms hop, log10 floored 8 below the maximum, "
        f"(x + 4) / 4) of the built-in speech-like waveform at 16000 Hz, rows of {seconds} padded with silence to "
        f"{frames} frames ({frames / 100:g} s); log-mel input: {role.why}"
    )


def _index_bound(value: ir.Value) -> int | None:
    """Rows of the smallest constant table this integer input indexes (through reshapes and casts)."""
    bounds: list[int] = []
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
                rows = table.shape[axis] if table is not None and table.shape is not None else None
                if isinstance(rows, int):
                    bounds.append(rows)
            elif node.op_type in _PASS_THROUGH:
                frontier.extend(node.outputs)
    return min(bounds) if bounds else None


def _speech_features(
    model: ir.Model, model_path, dim: int, rows: int, frames: int | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """``rows`` rows of real features (4.0 s, 2.3 s, 4.0 s...), cut or padded to ``frames`` when the model
    fixes them."""
    fbank, lfr, cmvn, settings = _shipped_frontend(model, model_path, dim)
    if fbank is None:
        stack = dim // _FBANK_BINS
        fbank, lfr = FbankOptions.sensevoice(), LfrOptions(stack, _LFR_SHIFT.get(stack, 1))
        settings = f"Kaldi fbank ({_FBANK_BINS} bins) + LFR {lfr.m},{lfr.n}"
    seconds = [_FEATURE_ROWS[row % 2] for row in range(rows)]
    waveforms = [speech_like(length, seed=row) for row, length in enumerate(seconds)]
    stacked = [numpy_statement.apply_lfr(numpy_statement.fbank(row, fbank), lfr) for row in waveforms]
    if cmvn is not None:
        stacked = [numpy_statement.apply_cmvn(s, cmvn.shift, cmvn.scale) for s in stacked]
        settings += f", CMVN from {cmvn.source}"
    else:
        mean, std = numpy_statement.speech_statistics(np.concatenate(stacked))
        stacked = [(s - mean) / std for s in stacked]
        settings += ", normalised by the mean and std of their speech frames (no CMVN shipped with the model)"
    if frames is not None:
        stacked = [s[:frames] for s in stacked]
    lengths = np.array([s.shape[0] for s in stacked])
    batch = np.zeros((len(stacked), frames or lengths.max(), dim))
    for row, features in enumerate(stacked):
        batch[row, : features.shape[0]] = features
    what = f"rows of {' and '.join(f'{t:.1f} s' for t in seconds)}" if rows > 1 else f"one row of {seconds[0]:.1f} s"
    fixed = f", {frames} frames as the model fixes them" if frames is not None else ""
    text = f"{settings} of the built-in speech-like waveform ({what}{fixed})"
    return batch.astype(np.float32), lengths, text


def _shipped_frontend(model: ir.Model, model_path, dim: int):
    """(fbank, lfr, cmvn, description) the model was shipped with, when they make ``dim`` features."""
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
            arrays = {
                key.removeprefix("input/"): data[key] for key in data.files if not key.startswith(("output/", "__"))
            }
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
        name = value_name(value)
        if name in initializer_names and name not in arrays:
            continue
        if name not in arrays:
            raise BadInputError(
                f"{label}: has no array for model input '{value.name}' (it has: {', '.join(sorted(arrays))})"
            )
        array = np.asarray(arrays[name])
        if value.shape is not None:
            if array.ndim != len(value.shape):
                raise BadInputError(
                    f"{label}: '{value.name}' has rank {array.ndim} (shape {list(array.shape)}), "
                    f"the model expects rank {len(value.shape)} ({_shape_text(value.shape)})"
                )
            for axis, (dim, size) in enumerate(zip(value.shape, array.shape)):
                if isinstance(dim, int):
                    if dim != size:
                        raise BadInputError(
                            f"{label}: '{value.name}' has {size} along axis {axis} (shape {list(array.shape)}), "
                            f"the model fixes it to {dim} ({_shape_text(value.shape)})"
                        )
                elif dim.value is not None:
                    seen = symbolic.setdefault(dim.value, (size, name, axis))
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
        feeds[name] = array
    return feeds


def _shape_text(shape: ir.Shape) -> str:
    dims = [
        "?" if not isinstance(d, int) and d.value is None else str(d if isinstance(d, int) else d.value) for d in shape
    ]
    return f"[{', '.join(dims)}]"
