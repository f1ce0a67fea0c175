"""The fsmn mode (``--vad fsmn:DIR``): FunASR's fsmn-vad inside the graph, its front end, its
network, its E2EVadModel state machine.

- the features are the project's fbank with the folder's own frontend_conf, LFR and am.mvn;
- the folder's ``model.onnx`` (FunASR's export: ``speech`` [1, T, D] plus zeroed
  ``in_cache*`` inputs -> ``logits`` [1, T, classes]) scores every frame: read layer by layer
  when it is FunASR's FSMN export and run channels-first (no transposes around the memory
  blocks), else grafted in as it is;
- FunASR's per-frame decision (GetFrameState: ``exp(log(1 - p_sil)) >= exp(log(p_sil) *
  speech_2_noise_ratio) + speech_noise_thres``, with the decibel and SNR gates and the running
  noise level) for all frames at once; the SNR gate's running noise level (a recurrence) and
  the frames' decibels are computed, in an If, only when some frame's SNR can fall below
  ``snr_thres``;
- its WindowDetector (a 200 ms window with 150 ms hysteresis) as vectors: the window sums of
  all frames and, from each frame on, where the window next turns to speech or to silence;
- its E2EVadModel (start back-off by the window and ``lookback_time_start_point``, end after
  ``max_end_silence_time`` with ``lookahead_time_end_point``, the ``max_single_segment_time``
  cut, single/multiple utterance, and the buffer bookkeeping that decides where a segment may
  start) as one ONNX Loop whose iterations are the frames where something happens (a window
  turn, a pause reaching the end silence, a segment's maximum, the last frame, a chunk start),
  not every frame: about 1.6 iterations per audio-second on speech instead of 100;
- the dynamic end-silence schedule of FunASR 1.4.16's ``generate()`` steps at the frames
  where its 60 s chunks begin (FunASR's online front end emits 5996 frames for the first
  chunk and 6000 for each next one; computed here from the settings).

Every quantity the state machine compares is an integer frame or millisecond count, as in
FunASR; float limits are turned into the integers that compare the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
import yaml

from svsurgery.errors import BadInputError, MissingDependencyError
from svsurgery.frontend._ops import MIN_OPSET, GraphOps, subgraph_value
from svsurgery.frontend.build import frontend_values
from svsurgery.frontend.config import FrontendConfig, discover
from svsurgery.model_io import load, value_names
from svsurgery.opset import ai_onnx_opset
from svsurgery.patch import graft
from svsurgery.runtime import inference_session
from svsurgery.vad.loop_state import GOING, LoopState
from svsurgery.vad.mode import VadGraph, VadMode, VadReference, graph_alone, vad_model

__all__ = [
    "DYNAMIC_SILENCE_SCHEDULE",
    "FsmnVad",
    "FsmnVadOptions",
    "StateMachineOptions",
    "chunk_starts",
    "decide_segments",
    "frame_decibels",
    "fsmn_segments",
    "load_fsmn_vad",
    "segments_from_scores",
]

# FunASR 1.4.16 DEFAULT_SILENCE_SCHEDULE: (speech accumulated over chunks in ms, end silence in ms)
DYNAMIC_SILENCE_SCHEDULE = (
    (10000, 2000),
    (20000, 1000),
    (30000, 800),
    (40000, 600),
    (50000, 400),
    (60000, 200),
    (math.inf, 100),
)
DYNAMIC_SPEECH_NOISE_THRES = 0.5  # what the schedule sets with every step
_INT64, _BOOL, _DOUBLE = ir.DataType.INT64, ir.DataType.BOOL, ir.DataType.DOUBLE


@dataclasses.dataclass(frozen=True)
class FsmnVadOptions(VadMode):
    """FunASR's fsmn-vad from the user's model folder (model.onnx, am.mvn, config.yaml).

    The state machine's parameters come from config.yaml ``model_conf`` (FunASR's
    VADXOptions names). By default the end-silence follows FunASR 1.4.16's ``generate()``:
    its dynamic schedule (2000 ms end silence and speech_noise_thres 0.5 for the first 60 s
    chunk, shorter after long speech); ``dynamic_silence=False`` gives the static config
    behaviour (``max_end_silence_time`` from config.yaml, or the one given here, which is
    also what FunASR does when the caller passes it). :meth:`validate` reads the folder.
    """

    name: ClassVar[str] = "fsmn"
    argument: ClassVar[str] = "DIR"
    cli_help: ClassVar[str] = "'fsmn:DIR' (a FunASR fsmn-vad folder: model.onnx, am.mvn, config.yaml)"

    folder: str  # the fsmn-vad model folder
    dynamic_silence: bool = True  # FunASR >= 1.3.9 generate()'s schedule; False: config.yaml's static value
    max_end_silence_time: float | None = None  # ms; given: static end silence (as FunASR's generate kwarg)
    max_single_segment_time: float | None = None  # ms; None: config.yaml's (SenseVoice's pipeline passes 30000)
    chunk_size_ms: float = 60000.0  # ms; FunASR's offline chunk, the schedule's step
    samp_freq: float = 16000.0  # Hz

    def validate(self) -> FsmnVadOptions:
        self.check_values()
        load_fsmn_vad(self)  # model.onnx, config.yaml and am.mvn read and checked now
        return self

    def check_values(self) -> FsmnVadOptions:
        """The options' values and the folder's existence (its files not read)."""
        if not Path(self.folder).is_dir():
            raise BadInputError(f"--vad fsmn:{self.folder}: no such folder (expected model.onnx, am.mvn, config.yaml)")
        if self.chunk_size_ms <= 0 or (self.max_single_segment_time is not None and self.max_single_segment_time <= 0):
            raise BadInputError("fsmn-vad: chunk_size_ms and max_single_segment_time must be positive")
        return self

    def files(self) -> list[tuple[Path, str]]:
        return [(Path(self.folder) / name, "fsmn-vad folder file") for name in ("model.onnx", "am.mvn", "config.yaml")]

    def required_opset(self) -> int:
        """Its network is grafted at our opset: at least its own."""
        return max(MIN_OPSET, ai_onnx_opset(load_fsmn_vad(self).model) or MIN_OPSET)

    def graph(self, g: GraphOps, samples: ir.Value) -> VadGraph:
        return fsmn_segments(g, samples, load_fsmn_vad(self))

    def reference(self, *, pipeline: bool = False) -> VadReference:
        """``pipeline=True``: funasr-onnx's front end + the folder's network + E2EVadModel driven
        as FunASR 1.4.16's generate() drives it. ``pipeline=False``: E2EVadModel on the frame
        scores of the graph's own front end and network (the front end is checked against
        kaldi-native-fbank separately); without funasr-onnx, the graph's VAD part alone."""
        # local: svsurgery.vad.funasr_reference imports this module
        from svsurgery.vad.funasr_reference import e2e_vad_module, funasr_segments

        vad = load_fsmn_vad(self)
        if pipeline:
            from svsurgery.vad.funasr_reference import FunasrOnnxFsmnVad  # local: it imports this module

            return VadReference(
                "funasr-onnx's WavFrontend + the fsmn network + E2EVadModel (FunASR 1.4.16's generate())",
                functools.partial(_funasr_pipeline_segments, FunasrOnnxFsmnVad(self.folder), vad),
            )
        try:
            e2e_vad_module()
        except MissingDependencyError:
            return graph_alone(self, "funasr-onnx not installed")

        session = inference_session(vad_model(self))

        def segments(waveform: np.ndarray) -> np.ndarray:
            silence = session.run(["scores"], {"samples": np.ascontiguousarray(waveform, np.float32)})[0]
            return funasr_segments(silence.astype(np.float32)[None, :, None], waveform, vad)

        return VadReference("funasr-onnx's E2EVadModel on the graph's frame scores", segments)

    def metadata(self) -> dict:
        return {"mode": self.name, **load_fsmn_vad(self).metadata()}

    @classmethod
    def from_metadata(cls, recorded: dict) -> FsmnVadOptions:
        machine = recorded.get("state_machine") or {}
        return cls(
            folder=recorded["folder"],
            dynamic_silence=bool(recorded.get("dynamic_silence", True)),
            max_end_silence_time=recorded.get("max_end_silence_time"),
            max_single_segment_time=machine.get("max_single_segment_time"),
            chunk_size_ms=recorded.get("chunk_size_ms", 60000.0),
        )

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument(
            "--static-silence",
            action="store_true",
            help="fsmn: config.yaml's fixed max_end_silence_time instead of FunASR 1.4.16's dynamic schedule",
        )
        group.add_argument(
            "--max-end-silence-ms", type=float, help="fsmn: a fixed end silence (as FunASR's generate kwarg)"
        )
        group.add_argument(
            "--max-single-segment-ms",
            type=float,
            help="fsmn: cut segments longer than this (default config.yaml's; SenseVoice's pipeline passes 30000)",
        )

    @classmethod
    def from_arguments(cls, argument: str | None, args=None) -> FsmnVadOptions:
        if argument is None:  # vad.mode.parse() never passes None to a mode that takes an argument
            raise BadInputError("--vad fsmn needs its folder: 'fsmn:DIR'")
        if args is None:
            return cls(folder=argument)
        return cls(
            folder=argument,
            dynamic_silence=not args.static_silence,
            max_end_silence_time=args.max_end_silence_ms,
            max_single_segment_time=args.max_single_segment_ms,
        )


def _funasr_pipeline_segments(pipeline, vad: FsmnVad, waveform: np.ndarray) -> np.ndarray:
    """funasr-onnx's Fsmn_vad parts, step by step: its front end, the network, then E2EVadModel."""
    from svsurgery.vad.funasr_reference import funasr_segments  # local: it imports this module

    fbank, _ = pipeline.frontend.fbank(waveform)
    features, count = pipeline.frontend.lfr_cmvn(fbank)
    if int(count) == 0:
        return np.zeros((0, 2), np.int64)
    caches = [np.zeros(pipeline.cache_shape, np.float32) for _ in range(pipeline.cache_count)]
    names = [i.name for i in pipeline.session.get_inputs()]
    scores = pipeline.session.run(None, dict(zip(names, [features[None].astype(np.float32), *caches])))[0]
    return funasr_segments(scores, waveform, vad)


@dataclasses.dataclass(frozen=True)
class StateMachineOptions:
    """E2EVadModel's settings (config.yaml model_conf), FunASR's names and defaults (ms unless said)."""

    sample_rate: int = 16000  # Hz
    detect_mode: int = 1  # 1: multiple utterances; 0: stop after the first
    max_end_silence_time: float = 800
    max_start_silence_time: float = 3000  # single-utterance mode only
    window_size_ms: float = 200
    sil_to_speech_time_thres: float = 150
    speech_to_sil_time_thres: float = 150
    speech_2_noise_ratio: float = 1.0
    do_extend: int = 1
    lookback_time_start_point: float = 200
    lookahead_time_end_point: float = 100
    max_single_segment_time: float = 60000
    snr_thres: float = -100.0  # dB
    noise_frame_num_used_for_snr: int = 100  # frames
    decibel_thres: float = -100.0  # dB
    speech_noise_thres: float = 0.6
    fe_prior_thres: float = 1e-4
    sil_pdf_ids: tuple[int, ...] = (0,)
    frame_in_ms: int = 10
    frame_length_ms: int = 25

    @classmethod
    def from_model_conf(cls, conf: dict, where: str) -> StateMachineOptions:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in conf.items():
            if key not in known:
                continue  # FunASR ignores the rest too (snr_mode, nn_eval_block_size, ...)
            default: Any = known[key].default  # every field has a default of the field's type
            try:
                values[key] = tuple(int(v) for v in value) if key == "sil_pdf_ids" else type(default)(value)
            except (TypeError, ValueError):
                raise BadInputError(f"{where}: model_conf {key}={value!r} is not a {type(default).__name__}") from None
        options = cls(**values)
        if options.frame_in_ms <= 0 or options.window_size_ms < options.frame_in_ms or not options.sil_pdf_ids:
            raise BadInputError(
                f"{where}: model_conf needs frame_in_ms > 0, window_size_ms >= frame_in_ms and sil_pdf_ids"
            )
        return options

    def frames(self, milliseconds: float) -> int:
        """Python's int(ms / frame_in_ms), as FunASR converts."""
        return int(milliseconds / self.frame_in_ms)


@dataclasses.dataclass
class FsmnVad:
    """Everything the fsmn mode needs, read from the folder."""

    options: FsmnVadOptions
    model: ir.Model
    frontend: FrontendConfig
    machine: StateMachineOptions

    @property
    def dynamic(self) -> bool:
        return self.options.dynamic_silence and self.options.max_end_silence_time is None

    @property
    def speech_noise_thres(self) -> float:
        return DYNAMIC_SPEECH_NOISE_THRES if self.dynamic else self.machine.speech_noise_thres

    @property
    def static_end_silence(self) -> float:
        given = self.options.max_end_silence_time
        return self.machine.max_end_silence_time if given is None else given

    def metadata(self) -> dict:
        return {
            "folder": str(Path(self.options.folder).resolve()),
            "dynamic_silence": self.dynamic,
            "max_end_silence_time": None if self.dynamic else self.static_end_silence,
            "chunk_size_ms": self.options.chunk_size_ms,
            "state_machine": {**dataclasses.asdict(self.machine), "sil_pdf_ids": list(self.machine.sil_pdf_ids)},
        }


@functools.lru_cache(maxsize=4)
def load_fsmn_vad(options: FsmnVadOptions) -> FsmnVad:
    """Read model.onnx, config.yaml (frontend_conf, model_conf) and am.mvn from the folder
    (cached per options: building, verifying and recording a fusion each need it; grafting
    copies the model, so the cached one is never changed)."""
    options.check_values()
    folder = Path(options.folder)
    model_path, config_path = folder / "model.onnx", folder / "config.yaml"
    for path in (model_path, config_path):
        if not path.is_file():
            raise BadInputError(
                f"--vad fsmn:{folder}: no {path.name} (a FunASR fsmn-vad export has model.onnx, am.mvn, config.yaml)"
            )
    model = load(model_path)
    frontend = discover(model, model_path, preset="fsmn-vad")
    data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    conf = data.get("model_conf") or {}
    if not isinstance(conf, dict):
        raise BadInputError(f"{config_path}: model_conf should be a mapping")
    machine = StateMachineOptions.from_model_conf(conf, str(config_path))
    if options.max_single_segment_time is not None:
        machine = dataclasses.replace(machine, max_single_segment_time=float(options.max_single_segment_time))
    if machine.sample_rate != frontend.fbank.frame_opts.samp_freq or machine.sample_rate != options.samp_freq:
        raise BadInputError(f"{config_path}: model_conf sample_rate {machine.sample_rate} differs from the front end's")
    return FsmnVad(options, model, frontend, machine)


def chunk_starts(vad: FsmnVad) -> tuple[int, int]:
    """(first, period): the frames at which FunASR's 2nd, 3rd, ... offline chunks begin.

    Replays the sample and frame bookkeeping of FunASR's online front end (WavFrontendOnline:
    leftover samples carried to the next chunk, LFR frames held back until their right
    context arrives) for non-final chunks.
    """
    fbank, lfr = vad.frontend.fbank, vad.frontend.lfr
    rate = fbank.frame_opts.samp_freq
    window = int(fbank.frame_opts.frame_length_ms * rate / 1000)
    shift = int(fbank.frame_opts.frame_shift_ms * rate / 1000)
    chunk = int(vad.options.chunk_size_ms * rate / 1000)
    m, n = (lfr.m, lfr.n) if lfr is not None else (1, 1)
    leftover, held, starts, emitted = 0, None, [], 0
    for _ in range(6):
        available = leftover + chunk
        frames = (available - window) // shift + 1 if available >= window else 0
        leftover = available - frames * shift
        held = (m - 1) // 2 if held is None else held
        rows = held + frames
        if m == 1 and n == 1:
            out, held = rows, 0
        elif rows >= m:
            last = (rows - m) // n + 1
            out = last if m - (rows - last * n) > 0 else math.ceil((rows - (m - 1) // 2) / n)
            held = rows - min(rows - 1, out * n)
        else:
            out, held = 0, rows
        emitted += out
        starts.append(emitted)
    period = starts[1] - starts[0]
    if any(b - a != period for a, b in itertools.pairwise(starts[1:])) or period <= 0:
        raise BadInputError(f"fsmn-vad: chunks of {vad.options.chunk_size_ms} ms do not give a steady frame count")
    return starts[0], period


def _frame_scores(g: GraphOps, samples: ir.Value, vad: FsmnVad) -> ir.Value:
    """The silence probability [T] (double) of the T fbank frames of ``samples``."""
    op = g.op
    found = vad.frontend
    rows = op.Unsqueeze(samples, g.i64(0))
    features, count = frontend_values(g, rows, g.dim(samples, 0), found.fbank, found.lfr, found.cmvn, _INT64)
    computed = op.Max(count, g.i64(1))  # the network needs one frame; cut back after
    features = op.Pad(features, op.Concat(g.i64(0, 0, 0, 0), op.Sub(computed, count), g.i64(0), axis=0))
    layers = _fsmn_layers(vad.model)
    if layers is not None:
        probabilities = _fsmn_channels_first(g, op.Squeeze(features, g.i64(0)), layers)
    else:
        probabilities = op.Squeeze(_grafted_network(g, features, vad.model), g.i64(0))
    probabilities = op.Slice(probabilities, g.i64(0), count, g.i64(0))  # [T, classes]
    silence = None
    for pdf in vad.machine.sil_pdf_ids:  # summed left to right, in double, as FunASR's sum() does
        column = op.Cast(op.Gather(probabilities, g.scalar_i64(pdf), axis=1), to=_DOUBLE)
        silence = column if silence is None else op.Add(silence, column)
    assert silence is not None, "sil_pdf_ids is never empty (from_model_conf requires it)"
    return silence


def _grafted_network(g: GraphOps, features: ir.Value, model: ir.Model) -> ir.Value:
    """The folder's network grafted in as it is: ``features`` [1, T, D] -> its first output
    (``logits``) [1, T, classes], the cache inputs zero."""
    inputs = dict(zip(value_names(model.graph.inputs), model.graph.inputs))
    floats = [name for name, v in inputs.items() if v.shape is not None and len(v.shape) == 3]
    if not floats:
        raise BadInputError("fsmn-vad model.onnx: no [1, T, D] feature input")
    feeds = {floats[0]: features}
    for name, value in inputs.items():
        if name == floats[0]:
            continue
        if value.shape is None or not all(isinstance(d, int) for d in value.shape):
            raise BadInputError(f"fsmn-vad model.onnx: cache input '{name}' has no fixed shape to fill with zeros")
        if value.dtype is None:
            raise BadInputError(f"fsmn-vad model.onnx: cache input '{name}' has no element type to fill with zeros")
        feeds[name] = g.const(np.zeros(tuple(value.shape), value.dtype.numpy()))
    outputs = graft(g.graph, model, feeds, "svs/vad/fsmn")
    return outputs.get("logits", next(iter(outputs.values())))


# FunASR's FSMN network, laid out channels-first
@dataclasses.dataclass(frozen=True)
class _Layer:
    kind: str  # "linear", "relu", "memory" or "softmax"
    weight: np.ndarray | None = None  # linear: [in, out]; memory: [channels, taps], the oldest frame's tap first
    bias: np.ndarray | None = None  # linear: [out] or None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """An initializer's or a Constant node's array, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


def _attribute(node: ir.Node, name: str, default=None):
    found = node.attributes.get(name)
    return default if found is None else found.value


def _fsmn_layers(model: ir.Model) -> list[_Layer] | None:
    """The layers of FunASR's FSMN export (``FSMNExport``), walked from the feature input to
    the first output: linear layers (MatMul with a constant [in, out], maybe an Add of a
    constant bias), Relu, memory blocks (Unsqueeze -> Transpose to [1, C, T, 1] -> Concat
    after the zeroed cache -> depthwise Conv over ``lorder`` frames -> Add to its input ->
    Transpose -> Squeeze; the cache holds lorder - 1 frames) and a final Softmax over the
    last axis. None for any other graph: it is then grafted as it is."""
    inputs = list(model.graph.inputs)
    features = [v for v in inputs if v.shape is not None and len(v.shape) == 3]
    if len(features) != 1 or features[0].dtype != ir.DataType.FLOAT or not model.graph.outputs:
        return None
    caches = {v for v in inputs if v is not features[0]}
    cache_outputs = {id(v) for v in model.graph.outputs[1:]}

    def only_user(value: ir.Value, cache_slice: bool = False) -> ir.Node | None:
        """The one node reading ``value``; with ``cache_slice``, besides a Slice writing an
        out_cache output (the memory block's history, which the fsmn mode does not keep)."""
        users = [use.node for use in value.uses()]
        if cache_slice:
            users = [n for n in users if not (n.op_type == "Slice" and id(n.outputs[0]) in cache_outputs)]
        return users[0] if len(users) == 1 else None

    layers, value = [], features[0]
    while True:
        node = only_user(value)
        if node is None:
            return None
        kind = node.op_type
        if kind == "MatMul" and node.inputs[0] is value and (weight := _constant(node.inputs[1])) is not None:
            if weight.ndim != 2 or weight.dtype != np.float32:
                return None
            value, bias = node.outputs[0], None
            after = only_user(value)
            if after is not None and after.op_type == "Add":
                other = [v for v in after.inputs if v is not value]
                found = _constant(other[0]) if len(other) == 1 else None
                if found is not None and found.shape == (weight.shape[1],):
                    value, bias = after.outputs[0], found
            layers.append(_Layer("linear", weight, bias))
        elif kind == "Relu":
            value = node.outputs[0]
            layers.append(_Layer("relu"))
        elif kind == "Unsqueeze":
            block = _memory_block(node, caches, only_user)
            if block is None:
                return None
            taps, value = block
            layers.append(_Layer("memory", taps))
        elif kind == "Softmax" and _attribute(node, "axis", -1) in (-1, 2):
            layers.append(_Layer("softmax"))
            if node.outputs[0] is not model.graph.outputs[0]:
                return None
            break
        else:
            return None
    if layers[0].kind != "linear" or layers[-2].kind != "linear":
        return None
    return layers


def _memory_block(unsqueeze: ir.Node, caches: set, only_user) -> tuple[np.ndarray, ir.Value] | None:
    """(taps [C, L], the block's output [1, T, C]) of an FSMN memory block starting at
    ``unsqueeze``, or None."""
    axes = _constant(unsqueeze.inputs[1]) if len(unsqueeze.inputs) > 1 else _attribute(unsqueeze, "axes")
    if axes is None or list(np.atleast_1d(axes)) != [1]:
        return None
    transpose = only_user(unsqueeze.outputs[0])
    if transpose is None or transpose.op_type != "Transpose" or list(_attribute(transpose, "perm", ())) != [0, 3, 2, 1]:
        return None
    moved = transpose.outputs[0]
    users = {use.node.op_type: use.node for use in moved.uses()}
    concat, add = users.get("Concat"), users.get("Add")
    if len(users) != 2 or concat is None or add is None or _attribute(concat, "axis") != 2 or len(concat.inputs) != 2:
        return None
    cache = concat.inputs[0]
    while cache.producer() is not None and cache.producer().op_type == "Cast":
        cache = cache.producer().inputs[0]
    conv = only_user(concat.outputs[0], cache_slice=True)
    if cache not in caches or concat.inputs[1] is not moved or conv is None or conv.op_type != "Conv":
        return None
    taps = _depthwise_taps(conv, cache)
    if taps is None:
        return None
    if only_user(conv.outputs[0]) is not add or set(map(id, add.inputs)) != {id(moved), id(conv.outputs[0])}:
        return None
    back = only_user(add.outputs[0])
    if back is None or back.op_type != "Transpose" or list(_attribute(back, "perm", ())) != [0, 3, 2, 1]:
        return None
    squeeze = only_user(back.outputs[0])
    if squeeze is None or squeeze.op_type != "Squeeze":
        return None
    axes = _constant(squeeze.inputs[1]) if len(squeeze.inputs) > 1 else _attribute(squeeze, "axes")
    if axes is None or list(np.atleast_1d(axes)) != [1]:
        return None
    return taps, squeeze.outputs[0]


def _depthwise_taps(conv: ir.Node, cache: ir.Value) -> np.ndarray | None:
    """[C, L] of a depthwise Conv over the frame axis of [1, C, L - 1 + T, 1] (a float32
    [C, 1, L, 1] kernel, no bias, padding, stride or dilation) whose cache holds L - 1 frames."""
    weight = _constant(conv.inputs[1])
    if weight is None or weight.dtype != np.float32 or weight.ndim != 4 or len(conv.inputs) > 2:
        return None
    channels, per_group, taps, width = weight.shape
    plain = not any(_attribute(conv, "pads", (0,))) and all(
        v == 1 for v in (*_attribute(conv, "strides", (1,)), *_attribute(conv, "dilations", (1,)))
    )
    cache_frames = None if cache.shape is None else list(cache.shape)
    if not plain or per_group != 1 or width != 1 or _attribute(conv, "group") != channels:
        return None
    if cache_frames != [1, channels, taps - 1, 1]:
        return None
    return weight[:, 0, :, 0]


def _fsmn_channels_first(g: GraphOps, features: ir.Value, layers: list[_Layer]) -> ir.Value:
    """The FSMN of ``layers`` on ``features`` [T, D] -> probabilities [T, classes].

    FunASR's export keeps frames first ([1, T, C]) and transposes to [1, C, T, 1] and back
    around every memory block's convolution; those transposes cost the network a third of its
    time in onnxruntime. Here the activations stay channels-first ([C, T]) from the first
    layer to the last: each linear layer is one Gemm of the transposed weight (bias and Relu
    fused by onnxruntime), the first reading the frames-first features transposed and the last
    writing frames-first logits for the softmax; a memory block is its depthwise Conv over the
    frames left-padded with the lorder - 1 zero frames of the cache, added to its input.
    """
    op = g.op
    last_linear = max(i for i, layer in enumerate(layers) if layer.kind == "linear")
    x = features
    for index, layer in enumerate(layers):
        if layer.kind == "linear":
            assert layer.weight is not None, "a linear layer has its weight"
            weight = layer.weight.astype(np.float32)
            if index == last_linear:  # [in, T] (the features: [T, in]) -> [T, out]
                inputs = [x, g.const(weight)] + ([] if layer.bias is None else [g.const(layer.bias.astype(np.float32))])
                x = op.Gemm(*inputs, transA=0 if index == 0 else 1)
            else:  # [in, T] (the features: [T, in]) -> [out, T]
                inputs = [g.const(np.ascontiguousarray(weight.T)), x]
                if layer.bias is not None:
                    inputs.append(g.const(layer.bias.astype(np.float32)[:, None]))
                x = op.Gemm(*inputs, transB=1 if index == 0 else 0)
        elif layer.kind == "relu":
            x = op.Relu(x)
        elif layer.kind == "memory":
            assert layer.weight is not None, "a memory block has its taps"
            channels, taps = layer.weight.shape
            history = op.Unsqueeze(op.Pad(x, g.i64(0, taps - 1, 0, 0)), g.i64(0, 3))  # [1, C, L - 1 + T, 1]
            kernel = g.const(layer.weight.astype(np.float32)[:, None, :, None])
            memory = op.Conv(history, kernel, group=channels, kernel_shape=[taps, 1])
            x = op.Add(x, op.Squeeze(memory, g.i64(0, 3)))
        else:
            x = op.Softmax(x, axis=-1)
    return x


def frame_decibels(g: GraphOps, samples: ir.Value, count: ir.Value, machine: StateMachineOptions) -> ir.Value:
    """FunASR's decibel of each of ``count`` [1] frames: 10 log10(sum of squares + 1e-6) over
    frame_length_ms windows of the samples in [-1, 1], frame_in_ms apart (in double)."""
    op = g.op
    window = int(machine.frame_length_ms * machine.sample_rate / 1000)
    hop = int(machine.frame_in_ms * machine.sample_rate / 1000)
    starts = op.Mul(g.range_(count), g.i64(hop))
    index = op.Add(op.Unsqueeze(starts, g.i64(1)), g.const(np.arange(window, dtype=np.int64)[None]))
    frames = op.Cast(op.Gather(op.Concat(samples, g.f32(np.zeros(window)), axis=0), index, axis=0), to=_DOUBLE)
    energy = op.Add(
        g.reduce("ReduceSum", op.Mul(frames, frames), [1], keepdims=False), g.const(np.array(1e-6), np.float64)
    )
    return op.Mul(op.Log(energy), g.const(np.array(10 / np.log(10)), np.float64))


def fsmn_segments(g: GraphOps, samples: ir.Value, vad: FsmnVad) -> VadGraph:
    """The speech in ``samples`` [N] in [-1, 1]: ``scores`` the frames' silence probability
    (double [T]), ``segments`` [K, 2] int64 ms."""
    silence = _frame_scores(g, samples, vad)
    return VadGraph(segments=segments_from_scores(g, silence, samples, vad), scores=silence)


def segments_from_scores(g: GraphOps, silence: ir.Value, samples: ir.Value, vad: FsmnVad) -> ir.Value:
    """[K, 2] int64 ms from the frames' silence probability (double [T]) and the samples [N]
    they were computed from (the frames' decibels are computed only where the SNR gate can
    bind)."""
    op, machine = g.op, vad.machine
    count = g.dim(silence, 0)
    # the loudest frame's decibel bounds every frame's: window * max(x^2) >= each frame's sum of squares
    window = int(machine.frame_length_ms * machine.sample_rate / 1000)
    peak = op.Cast(
        g.reduce("ReduceMax", op.Abs(op.Concat(samples, g.f32([0.0]), axis=0)), [0], keepdims=False), to=_DOUBLE
    )
    energy = op.Add(op.Mul(op.Mul(peak, peak), _double(g, window)), _double(g, 1e-6))
    loudest = op.Mul(op.Log(energy), _double(g, 10 / np.log(10)))
    speech = _frame_states(g, silence, lambda ops: frame_decibels(ops, samples, count, machine), loudest, vad)
    return _detect_segments(g, speech, g.dim(samples, 0), vad)


def decide_segments(g: GraphOps, silence: ir.Value, decibels: ir.Value, samples: ir.Value, vad: FsmnVad) -> ir.Value:
    """[K, 2] int64 ms from the silence probability and decibels of each frame (double [T])
    and the sample count [1] (FunASR's chunking depends on it)."""
    loudest = g.reduce("ReduceMax", g.op.Concat(decibels, _double(g, [-100.0]), axis=0), [0], keepdims=False)
    speech = _frame_states(g, silence, lambda ops: decibels, loudest, vad)
    return _detect_segments(g, speech, samples, vad)


def _double(g: GraphOps, value) -> ir.Value:
    return g.const(np.array(value, np.float64), np.float64)


# FunASR's E2EVadModel.GetFrameState, for all frames at once
_QUIETEST_DB = -60.0  # 10 log10(0 + 1e-6): no frame is quieter
_SNR_MARGIN_DB = 1e-6  # rounding of the running average and of the bound


def _frame_states(g: GraphOps, silence: ir.Value, decibels, loudest: ir.Value, vad: FsmnVad) -> ir.Value:
    """Speech (bool [T]) per frame, as GetFrameState decides it: the scores say speech
    (``exp(log(1 - p_sil)) >= exp(log(p_sil) * speech_2_noise_ratio) + speech_noise_thres``),
    the frame is not below ``decibel_thres`` and its SNR against the running noise level (the
    average of the frames the scores call silence over ``noise_frame_num_used_for_snr``) is at
    least ``snr_thres``.

    No frame is below -60 dB and ``decibel_thres`` above that is refused, so the decibel gate
    never binds; the SNR gate binds only if some frame's SNR can fall below ``snr_thres``: the
    noise level is an average of decibels, at most ``loudest`` (a bound on every frame's
    decibel, double scalar). Only then (an If) are the decibels (``decibels(ops)``, built in the
    branch) and the running noise level (a Loop over the frames that update it) computed.
    """
    op, machine = g.op, vad.machine
    if machine.decibel_thres > _QUIETEST_DB:
        raise BadInputError(
            f"fsmn-vad: decibel_thres {machine.decibel_thres} > -60 dB (FunASR then runs its window twice per quiet "
            "frame); not supported"
        )
    noise_log = op.Mul(op.Log(silence), _double(g, machine.speech_2_noise_ratio))
    speech_log = op.Log(op.Sub(_double(g, 1.0), silence))
    scores_say_speech = op.GreaterOrEqual(
        op.Exp(speech_log), op.Add(op.Exp(noise_log), _double(g, vad.speech_noise_thres))
    )
    candidate = scores_say_speech
    if not 1.0 > machine.fe_prior_thres:  # DetectOneFrame: speech only if fabs(1.0) > fe_prior_thres
        candidate = op.And(candidate, g.const(np.array(False)))
    lowest_snr = op.Sub(_double(g, _QUIETEST_DB - _SNR_MARGIN_DB), op.Max(loudest, _double(g, -100.0)))
    gate_binds = op.Less(lowest_snr, _double(g, machine.snr_thres))

    def gated(bop):
        ops = _in_branch(g, bop)
        levels = decibels(ops)
        heard = bop.Compress(levels, bop.Not(scores_say_speech), axis=0)  # the frames that update the noise level
        state = LoopState(ops)
        state.carry("noise_average_decibel", -100.0)
        state.scan("after", _DOUBLE)
        frames_used = float(machine.noise_frame_num_used_for_snr)

        def update(lop, index, now):
            decibel = lop.Gather(heard, index, axis=0)
            averaged = lop.Div(
                lop.Add(decibel, lop.Mul(now.noise_average_decibel, _double(g, frames_used - 1))),
                _double(g, frames_used),
            )
            noise = lop.Where(lop.Less(now.noise_average_decibel, _double(g, -99.9)), decibel, averaged)
            return {"noise_average_decibel": noise, "after": noise}

        _, scanned = state.loop(bop.Squeeze(ops.dim(heard, 0), g.i64(0)), update, name="noise_level", op=bop)
        after = bop.Concat(_double(g, [-100.0]), scanned.after, axis=0)
        updates_before = bop.CumSum(bop.Cast(bop.Not(scores_say_speech), to=_INT64), g.scalar_i64(0), exclusive=1)
        noise = bop.Gather(after, updates_before, axis=0)  # the level each frame is compared with
        return bop.And(candidate, bop.GreaterOrEqual(bop.Sub(levels, noise), _double(g, machine.snr_thres)))

    gated_out = [subgraph_value("gated", _BOOL, [None])]
    then_branch = g.builder.subgraph(gated, inputs=[], outputs=gated_out, name="snr_gate")
    else_branch = g.builder.subgraph(
        lambda bop: bop.Identity(candidate),
        inputs=[],
        outputs=[subgraph_value("ungated", _BOOL, [None])],
        name="snr_gate_open",
    )
    return op.If(gate_binds, then_branch=then_branch, else_branch=else_branch)


def _in_branch(g: GraphOps, bop) -> GraphOps:
    """``g``'s helpers adding their ops with an If/Loop body's op builder ``bop`` (constants
    stay initializers of the main graph, visible inside)."""
    ops = copy.copy(g)
    ops.op = bop
    return ops


# FunASR's WindowDetector, for all frames at once
@dataclasses.dataclass(frozen=True)
class _Window:
    """Where the 200 ms window (``win_size_frame`` decisions summed) turns, as vectors.

    ``speech_before`` [T+1]: speech frames before frame t; ``speech_frames`` [S+1]: the speech
    frames' indices, then T; ``next_full_speech`` / ``next_full_silence`` [T+1]: from frame t on,
    the first frame whose full window (the last ``win_size_frame`` frames, fewer at the start of
    the recording) sums to at least ``sil_to_speech_frmcnt_thres`` / at most
    ``speech_to_sil_frmcnt_thres``, else T.
    """

    frames: ir.Value  # T, scalar
    speech_before: ir.Value
    speech_frames: ir.Value
    speech_count: ir.Value  # S, scalar
    next_full_speech: ir.Value
    next_full_silence: ir.Value


def _window_turns(g: GraphOps, speech: ir.Value, frames: ir.Value, machine: StateMachineOptions) -> _Window:
    op = g.op
    size = machine.frames(machine.window_size_ms)
    counted = op.Concat(g.i64(0), op.CumSum(op.Cast(speech, to=_INT64), g.scalar_i64(0)), axis=0)  # [T+1]
    t = op.Range(g.scalar_i64(0), frames, g.scalar_i64(1))
    oldest = op.Max(op.Sub(t, g.scalar_i64(size - 1)), g.scalar_i64(0))
    win_sum = op.Sub(
        op.Slice(counted, g.i64(1), g.i64(np.iinfo(np.int64).max), g.i64(0)), op.Gather(counted, oldest, axis=0)
    )
    up, down = machine.frames(machine.sil_to_speech_time_thres), machine.frames(machine.speech_to_sil_time_thres)
    return _Window(
        frames=frames,
        speech_before=counted,
        speech_frames=_indices_then(g, speech, frames),
        speech_count=op.Gather(counted, frames, axis=0),
        next_full_speech=_next_true(g, op.GreaterOrEqual(win_sum, g.scalar_i64(up)), frames),
        next_full_silence=_next_true(g, op.LessOrEqual(win_sum, g.scalar_i64(down)), frames),
    )


def _indices_then(g: GraphOps, flags: ir.Value, frames: ir.Value) -> ir.Value:
    """The indices where ``flags`` (bool [T]) holds, then T."""
    op = g.op
    return op.Concat(op.Reshape(op.NonZero(flags), g.i64(-1)), op.Unsqueeze(frames, g.i64(0)), axis=0)


def _next_true(g: GraphOps, flags: ir.Value, frames: ir.Value) -> ir.Value:
    """[T+1]: for each t, the first index >= t where ``flags`` holds, else T."""
    op = g.op
    before = op.Concat(g.i64(0), op.CumSum(op.Cast(flags, to=_INT64), g.scalar_i64(0)), axis=0)
    return op.Gather(_indices_then(g, flags, frames), before, axis=0)


# FunASR's E2EVadModel.DetectOneFrame, as a Loop over the frames where something happens
_NEVER = 1 << 40  # a frame index past any recording
# VadStateMachine: start point not detected, in speech segment, end point detected
_WAITING, _IN_SEGMENT, _ENDED = 1, 2, 3


def _end_silence_frames(vad: FsmnVad) -> list[tuple[int, int]]:
    """Per step of the end-silence schedule (one step when static): (the pause length in frames
    that ends a segment, the lookback from there to the end frame).

    FunASR ends a segment when ``continous_silence_frame_count * frame_in_ms >=
    max_end_sil_frame_cnt_thresh`` (the end silence minus ``speech_to_sil_time_thres``; 1.4.16's
    schedule clips it at 0) and ends it ``int(thresh / frame_in_ms)`` frames back, less
    ``lookahead_time_end_point`` and one more frame with do_extend (at least 0). Dynamic: step k
    is the schedule after k chunks of open speech.
    """
    m = vad.machine
    thresholds: list[float] = []
    if vad.dynamic:
        k = 0
        while True:
            accumulated = k * vad.options.chunk_size_ms
            silence = next(ms for limit, ms in DYNAMIC_SILENCE_SCHEDULE if accumulated <= limit)
            thresholds.append(max(silence - int(m.speech_to_sil_time_thres), 0))
            if accumulated > DYNAMIC_SILENCE_SCHEDULE[-2][0]:
                break
            k += 1
    else:
        thresholds = [vad.static_end_silence - m.speech_to_sil_time_thres]
    steps = []
    for thresh in thresholds:
        frames = max(1, math.ceil(thresh / m.frame_in_ms))  # the count starts at 1 on the first silent frame
        lookback = int(thresh / m.frame_in_ms)
        if m.do_extend:
            lookback = max(0, lookback - m.frames(m.lookahead_time_end_point) - 1)
        steps.append((frames, lookback))
    return steps


def _detect_segments(g: GraphOps, speech: ir.Value, samples: ir.Value, vad: FsmnVad) -> ir.Value:
    """[K, 2] int64 ms: E2EVadModel run over the frames' speech decisions (bool [T]) of a
    recording of ``samples`` [1] samples (FunASR's chunking depends on it).

    Frame by frame, E2EVadModel turns decisions into a window sum, the window into changes
    (silence -> speech when the sum reaches ``sil_to_speech_frmcnt_thres``, speech -> silence
    when it falls to ``speech_to_sil_frmcnt_thres``) and changes into segments. Between two
    changes nothing happens but counting, so each iteration jumps from the current frame to
    the next frame where something does (found in the vectors of :func:`_window_turns`):
    - waiting for a start: the window's first turn to speech starts a segment, backed off by
      the latency (the window plus ``lookback_time_start_point``) but never before the data
      buffer already popped; none before the last frame (or single-utterance mode's start
      silence timeout): detection is over;
    - in a segment, speaking: the window's turn to silence starts a pause; the segment ends
      instead at its ``max_single_segment_time`` frame or at the last frame, if earlier;
    - in a pause: the window's turn back to speech resumes the segment; it ends instead when
      the pause reaches the end silence (ending ``lookahead_time_end_point`` after the pause's
      start), at its maximum length, or at the last frame;
    - a chunk start of FunASR 1.4.16 (dynamic end silence) before any of these: the end
      silence is set from the speech accumulated while a segment stays open across chunks.
    The frames on the way are voiced as E2EVadModel voices them; that moves the data buffer's
    start and with it where the next segment may start.
    """
    op = g.op
    m = vad.machine
    frames = op.Squeeze(g.dim(speech, 0), g.i64(0))
    last = op.Sub(frames, g.scalar_i64(1))
    win = _window_turns(g, speech, frames, m)
    end_silences = _end_silence_frames(vad)

    state = LoopState(g)
    state.carry("frame", 0)  # the next frame to decide
    state.carry("vad_state_machine", _WAITING)
    state.carry("window_says_speech", False)  # WindowDetector.pre_frame_state
    state.carry("window_start", 0)  # the first frame the window has counted since its last Reset
    state.carry("pause_start", 0)  # the frame whose speech -> silence began the current pause
    state.carry("confirmed_start_frame", -1)
    state.carry("latest_confirmed_speech_frame", 0)
    state.carry("data_buf_start_frame", 0)
    chunks = _ChunkSchedule(g, state, samples, vad) if vad.dynamic else None
    state.scan("closed", _BOOL)
    state.scan("start_ms", _INT64)
    state.scan("end_ms", _INT64)

    def step(bop, index, now):
        decided = _decide_event(bop, g, now, win, last, vad, end_silences, chunks)
        if chunks is None:
            return decided
        return chunks.first(bop, now, decided)  # a chunk start before the event comes first

    # a bound: each event decides at least one frame, each chunk start none
    trips = op.Add(op.Mul(frames, g.scalar_i64(2)), g.scalar_i64(2))
    final, scanned = state.loop(trips, step, name="e2e_vad_event", going=op.Greater(frames, g.scalar_i64(0)))
    shift = g.scalar_i64(m.frame_in_ms)
    starts = op.Compress(scanned.start_ms, scanned.closed, axis=0)
    ends = op.Compress(scanned.end_ms, scanned.closed, axis=0)
    # a segment started on the last frame is still open: FunASR's final call outputs it as it stands
    still_open = op.Unsqueeze(op.Equal(final.vad_state_machine, g.scalar_i64(_IN_SEGMENT)), g.i64(0))
    open_start = op.Unsqueeze(op.Mul(final.confirmed_start_frame, shift), g.i64(0))
    open_end = op.Unsqueeze(op.Mul(frames, shift), g.i64(0))
    starts = op.Concat(starts, op.Compress(open_start, still_open, axis=0), axis=0)
    ends = op.Concat(ends, op.Compress(open_end, still_open, axis=0), axis=0)
    return op.Concat(op.Unsqueeze(starts, g.i64(1)), op.Unsqueeze(ends, g.i64(1)), axis=1)


def _decide_event(bop, g: GraphOps, now, win: _Window, last: ir.Value, vad: FsmnVad, end_silences, chunks) -> dict:
    """One iteration: the next frame where something happens from ``now.frame`` on, and what
    E2EVadModel has done by the end of it (see :func:`_detect_segments`)."""
    m = vad.machine
    shift = m.frame_in_ms
    window = m.frames(m.window_size_ms)

    def c(value):
        return g.scalar_i64(value)

    def where(flag, a, b):
        return bop.Where(flag, a, b)

    frame = now.frame
    waiting = bop.Equal(now.vad_state_machine, c(_WAITING))
    speaking = bop.And(bop.Not(waiting), now.window_says_speech)
    pausing = bop.And(bop.Not(waiting), bop.Not(now.window_says_speech))
    to_speech, to_silence = _next_window_changes(bop, g, win, frame, now.window_start, window, m)
    turn = where(speaking, to_silence, to_speech)
    # in a segment, the frames at which it must end: over max_single_segment_time (frame - start + 1 > it) ...
    too_long = bop.Max(frame, bop.Add(now.confirmed_start_frame, c(math.floor(m.max_single_segment_time / shift))))
    # ... and the pause reaching the end silence (the frame count starts at 1 after the speech -> silence frame)
    if chunks is not None:
        pause_frames, lookback = chunks.end_silence(bop, now, end_silences)
    else:
        pause_frames, lookback = c(end_silences[0][0]), c(end_silences[0][1])
    silence_end = bop.Max(frame, bop.Add(now.pause_start, pause_frames))
    silence_end = where(bop.And(pausing, bop.Less(silence_end, turn)), silence_end, c(_NEVER))
    in_segment_event = bop.Min(turn, silence_end, too_long, last)
    event = where(waiting, to_speech, in_segment_event)
    ends = bop.And(
        bop.Not(waiting),
        bop.Or(bop.Or(bop.Less(event, turn), bop.GreaterOrEqual(event, too_long)), bop.Equal(event, last)),
    )
    end_frame = where(bop.Equal(event, silence_end), bop.Sub(event, lookback), event)
    # waiting: a start, unless none comes before the last frame (or the start-silence timeout)
    single = m.detect_mode == 0
    timeout = math.floor(m.max_start_silence_time) // shift if single else _NEVER  # silence count * shift > limit
    starts = bop.And(waiting, bop.LessOrEqual(event, bop.Min(last, c(timeout))))
    begin, popped_started, latest_started = _on_voice_start(bop, g, now, event, m)
    popped, latest = _voice_to_event(bop, g, now, event, end_frame, speaking, ends, m)
    popped = where(waiting, where(starts, popped_started, now.data_buf_start_frame), popped)
    latest = where(waiting, where(starts, latest_started, now.latest_confirmed_speech_frame), latest)
    # after an end, one utterance is all (single mode) or the detector resets (ResetDetection)
    after = bop.Add(event, c(1))
    going = bop.And(bop.Or(starts, bop.Not(waiting)), bop.LessOrEqual(after, last))
    if single:
        going = bop.And(going, bop.Not(ends))
    state_after_end = c(_ENDED if single else _WAITING)
    return {
        "frame": after,
        "vad_state_machine": where(ends, state_after_end, where(starts, c(_IN_SEGMENT), now.vad_state_machine)),
        "window_says_speech": bop.And(bop.Or(starts, pausing), bop.Not(ends)),
        "window_start": where(ends, after, now.window_start),
        "pause_start": where(bop.And(speaking, bop.Not(ends)), event, now.pause_start),
        "confirmed_start_frame": where(ends, c(-1), where(starts, begin, now.confirmed_start_frame)),
        "latest_confirmed_speech_frame": where(ends, c(0), latest),
        "data_buf_start_frame": popped,
        GOING: going,
        "closed": ends,
        "start_ms": bop.Mul(now.confirmed_start_frame, c(shift)),
        "end_ms": bop.Mul(bop.Add(end_frame, c(1)), c(shift)),
    }


def _next_window_changes(bop, g: GraphOps, win: _Window, frame, window_start, window: int, m: StateMachineOptions):
    """(the first frame >= ``frame`` whose window sum reaches sil_to_speech_frmcnt_thres, the
    first whose sum is at most speech_to_sil_frmcnt_thres), the window restarted at
    ``window_start``: until it is full its sum counts the speech since ``window_start`` only,
    which never falls, so the first is found by counting speech frames and the second is the
    current frame or none before the window is full."""
    up, down = m.frames(m.sil_to_speech_time_thres), m.frames(m.speech_to_sil_time_thres)
    filling_until = bop.Add(window_start, g.scalar_i64(window - 1))  # the first frame with a full window
    full_from = bop.Min(bop.Max(frame, filling_until), win.frames)
    counted_before = bop.Gather(win.speech_before, window_start, axis=0)
    if up >= 1:  # the up-th speech frame since window_start
        nth = bop.Min(bop.Add(counted_before, g.scalar_i64(up - 1)), win.speech_count)
        filling_speech = bop.Max(frame, bop.Gather(win.speech_frames, nth, axis=0))
    else:
        filling_speech = frame
    to_speech = bop.Where(
        bop.Less(filling_speech, filling_until), filling_speech, bop.Gather(win.next_full_speech, full_from, axis=0)
    )
    sum_now = bop.Sub(bop.Gather(win.speech_before, bop.Add(frame, g.scalar_i64(1)), axis=0), counted_before)
    silent_now = bop.And(bop.Less(frame, filling_until), bop.LessOrEqual(sum_now, g.scalar_i64(down)))
    to_silence = bop.Where(silent_now, frame, bop.Gather(win.next_full_silence, full_from, axis=0))
    return to_speech, to_silence


def _on_voice_start(bop, g: GraphOps, now, frame, m: StateMachineOptions):
    """Silence -> speech while waiting, at ``frame``: (start frame, data_buf_start_frame,
    latest_confirmed_speech_frame) after it.

    Every silent frame since the window's start popped the buffer up to itself less the
    latency (OnSilenceDetected, from the latency on); the segment starts at
    max(data_buf_start_frame, frame - latency) (OnVoiceStart pops it) and the frames after it up
    to ``frame`` are voiced one by one.
    """
    latency = m.frames(m.window_size_ms) + (m.frames(m.lookback_time_start_point) if m.do_extend else 0)
    before = bop.Sub(frame, g.scalar_i64(1))
    silence_popped = bop.Where(
        bop.GreaterOrEqual(before, bop.Max(now.window_start, g.scalar_i64(latency))),
        bop.Max(now.data_buf_start_frame, bop.Sub(before, g.scalar_i64(latency))),
        now.data_buf_start_frame,
    )
    begin = bop.Max(silence_popped, bop.Sub(frame, g.scalar_i64(latency)))
    voiced = bop.Less(begin, frame)
    popped = bop.Add(bop.Where(voiced, frame, begin), g.scalar_i64(1))
    latest = bop.Where(voiced, frame, now.latest_confirmed_speech_frame)
    return begin, popped, latest


def _voice_to_event(bop, g: GraphOps, now, event, end_frame, speaking, ends, m: StateMachineOptions):
    """In a segment: (data_buf_start_frame, latest_confirmed_speech_frame) once E2EVadModel has
    voiced the frames up to ``event`` and acted on it.

    Speaking, each frame from ``now.frame`` is voiced on its own (OnVoiceDetected); so is the
    speech -> silence frame, unless the segment ends there. In a pause, the first
    ``lookahead_time_end_point`` of it are (do_extend). Then an end voices the gap up to
    ``end_frame`` and pops it (OnVoiceEnd), and a resumed pause fills its gap and voices the
    frame: both count from latest_confirmed_speech_frame + 1. Each voiced frame pops the data
    buffer up to itself and one more.
    """

    def c(value):
        return g.scalar_i64(value)

    popped, latest = now.data_buf_start_frame, now.latest_confirmed_speech_frame
    lookahead = m.frames(m.lookahead_time_end_point) if m.do_extend else 0
    first = bop.Where(speaking, now.frame, bop.Add(now.pause_start, c(1)))
    last_voiced = bop.Where(
        speaking,
        bop.Where(ends, bop.Sub(event, c(1)), event),
        bop.Min(bop.Add(now.pause_start, c(lookahead)), bop.Sub(event, c(1))),
    )
    one_by_one = bop.GreaterOrEqual(last_voiced, first)
    popped = bop.Where(one_by_one, bop.Add(bop.Max(popped, first), bop.Add(bop.Sub(last_voiced, first), c(1))), popped)
    latest = bop.Where(one_by_one, last_voiced, latest)
    filled = bop.Where(
        bop.Greater(end_frame, latest),
        bop.Add(bop.Max(popped, bop.Add(latest, c(1))), bop.Sub(end_frame, latest)),
        bop.Add(bop.Max(popped, end_frame), c(1)),
    )
    fills = bop.Or(ends, bop.Not(speaking))
    return bop.Where(fills, filled, popped), bop.Where(fills, end_frame, latest)


def _select(bop, flag, a, b):
    """Where(flag, a, b), also for booleans (onnxruntime has no bool Where)."""
    if a.dtype == _BOOL:
        return bop.Or(bop.And(flag, a), bop.And(bop.Not(flag), b))
    return bop.Where(flag, a, b)


class _ChunkSchedule:
    """FunASR 1.4.16's dynamic end silence: before each 60 s chunk (at the frames
    :func:`chunk_starts` gives, for the chunks the recording's sample count makes), the speech
    accumulated while a segment stays open across chunk starts (reset once a chunk ended a
    segment) picks the end silence; carried in the event Loop."""

    def __init__(self, g: GraphOps, state: LoopState, samples: ir.Value, vad: FsmnVad) -> None:
        op = g.op
        self.g = g
        first_frame, self.period = chunk_starts(vad)
        chunk_samples = int(vad.options.chunk_size_ms * vad.machine.sample_rate / 1000)
        chunks = op.Squeeze(op.Div(samples, g.i64(chunk_samples)), g.i64(0))  # FunASR cuts N // chunk + 1 chunks
        one, first = g.scalar_i64(1), g.scalar_i64(first_frame)
        self.last_start = op.Add(op.Mul(op.Sub(chunks, one), g.scalar_i64(self.period)), first)
        state.carry("next_chunk_start", op.Where(op.GreaterOrEqual(chunks, one), first, g.scalar_i64(_NEVER)))
        state.carry("open_chunks", 0)  # chunk starts passed while a segment was open, since a chunk last ended one
        state.carry("open_across", False)
        state.carry("ended_in_chunk", False)

    def end_silence(self, bop, now, end_silences):
        """(pause frames, lookback) of the current schedule step."""
        g = self.g
        schedule_step = bop.Min(now.open_chunks, g.scalar_i64(len(end_silences) - 1))
        pause_frames = bop.Gather(g.const(np.array([f for f, _ in end_silences], np.int64)), schedule_step, axis=0)
        lookback = bop.Gather(g.const(np.array([b for _, b in end_silences], np.int64)), schedule_step, axis=0)
        return pause_frames, lookback

    def first(self, bop, now, decided: dict) -> dict:
        """``decided`` unless a chunk starts at or before its event frame: then only the
        schedule moves (a pause goes on counting from the chunk start)."""
        g = self.g
        chunk = bop.LessOrEqual(now.next_chunk_start, bop.Sub(decided["frame"], g.scalar_i64(1)))
        restarted = bop.And(chunk, now.ended_in_chunk)
        open_chunks = bop.Where(restarted, g.scalar_i64(0), now.open_chunks)
        open_across = bop.And(now.open_across, bop.Not(restarted))
        in_segment = bop.Equal(now.vad_state_machine, g.scalar_i64(_IN_SEGMENT))
        grows = bop.And(chunk, bop.Or(in_segment, open_across))
        following = bop.Add(now.next_chunk_start, g.scalar_i64(self.period))
        following = bop.Where(bop.Greater(following, self.last_start), g.scalar_i64(_NEVER), following)
        pausing = bop.And(in_segment, bop.Not(now.window_says_speech))
        carried = [name for name in decided if hasattr(now, name)]
        result = {name: _select(bop, chunk, getattr(now, name), decided[name]) for name in carried}
        result["frame"] = bop.Where(bop.And(chunk, pausing), now.next_chunk_start, result["frame"])
        result[GOING] = bop.Or(chunk, decided[GOING])
        result["closed"] = bop.And(bop.Not(chunk), decided["closed"])
        result["start_ms"], result["end_ms"] = decided["start_ms"], decided["end_ms"]
        result["open_chunks"] = bop.Where(grows, bop.Add(open_chunks, g.scalar_i64(1)), open_chunks)
        result["open_across"] = bop.Or(open_across, grows)
        result["ended_in_chunk"] = bop.And(bop.Not(chunk), bop.Or(now.ended_in_chunk, decided["closed"]))
        result["next_chunk_start"] = bop.Where(chunk, following, now.next_chunk_start)
        return result
