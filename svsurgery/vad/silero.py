"""The silero mode (``--vad silero``): silero's network inside the graph, then
``get_speech_timestamps`` restated in ONNX ops.

- :func:`speech_probabilities`: the waveform cut into 512-sample frames (the last one
  zero-padded), each prefixed with the 64 samples before it (zeros for the first), as
  silero's streaming wrapper feeds them. silero's ``silero_vad_16k_sequence.onnx`` (the
  default) is grafted in and runs its LSTM over all frames in one call (no Scan over
  frames); a stock streaming model (``silero_vad.onnx`` v5/v6, ``silero_vad_16k_op15.onnx``,
  ``silero_vad_op18_ifless.onnx``: ``input`` [1, 576], ``state`` [2, 1, 128], ``sr``) is
  specialised to one 16 kHz chunk (its If branches on ``sr`` and on the batch size folded
  away) and runs as the body of one Loop over the chunks, its state carried, its weights in
  the outer graph: what silero's ``OnnxWrapper`` computes call by call, bit for bit;
- :func:`speech_timestamps`: silero's ``get_speech_timestamps_from_probs`` state machine
  (start on ``threshold``, end after ``min_silence_duration_ms`` below ``neg_threshold``,
  the ``max_speech_duration_s`` cut at the longest silence seen, minimum speech), then the
  padding by ``speech_pad_ms``. Without a maximum speech length (silero's default) it is
  loop-free: where speech ends is decided gap by gap between speech frames (~10 vector ops
  over the frames). With one, the cut depends on the whole history, and it is one Loop over
  frames (84 ops per 32 ms frame; ~35 us per iteration on one core, 1.1 ms per audio-second,
  against 0.01 loop-free and ~1.8 for the network).

Comparisons follow silero's Python: probabilities are compared as doubles; sample counts
are compared with the float limits silero computes (an integer exceeds a float exactly
when it exceeds its floor), so the timestamps are the same integers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer

from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import GraphOps
from svsurgery.model_io import SOURCE_FILES_KEY, load, value_names
from svsurgery.opset import ai_onnx_opset, convert_opset
from svsurgery.patch import clone, graft
from svsurgery.vad.loop_state import LoopState
from svsurgery.vad.mode import VadGraph, VadMode, VadReference, graph_alone

__all__ = [
    "CONTEXT",
    "FRAME",
    "MIN_OPSET",
    "SileroGraph",
    "SileroNetwork",
    "SileroVadOptions",
    "load_silero_network",
    "loop_free",
    "silero_python_timestamps",
    "silero_segments",
    "speech_probabilities",
    "speech_timestamps",
]

FRAME = 512  # samples per frame at 16 kHz
CONTEXT = 64  # samples of the previous frame each frame is seen with
STATE_SHAPE = (2, 1, 128)  # the streaming model's LSTM state
MIN_OPSET = 16  # the sequence model's opset
SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"
SUPPORTED = (
    f"{SEQUENCE_MODEL} (input [F, 576], h, c -> speech_probs) or a streaming silero_vad.onnx, "
    "silero_vad_16k_op15.onnx or silero_vad_op18_ifless.onnx (input, state, sr -> output, stateN)"
)
_INT64, _BOOL, _DOUBLE = ir.DataType.INT64, ir.DataType.BOOL, ir.DataType.DOUBLE
_NEVER = 2**62  # a sample count no recording reaches


@dataclasses.dataclass(frozen=True)
class SileroVadOptions(VadMode):
    """silero VAD and its ``get_speech_timestamps``, named and defaulted as silero names them.

    ``model``: silero's sequence model (``silero_vad_16k_sequence.onnx``: all frames in one
    LSTM call), or a stock streaming model (``silero_vad.onnx``, ``silero_vad_16k_op15.onnx``,
    ``silero_vad_op18_ifless.onnx``: one Loop over the frames); None finds the sequence model
    in the installed ``silero-vad`` package. Frames are 512 samples (32 ms) at 16 kHz, each
    seen with the 64 samples before it. :meth:`validate` loads and checks the model.
    """

    name: ClassVar[str] = "silero"
    cli_help: ClassVar[str] = "'silero' (silero-vad's model, from the installed package or --silero-model)"

    model: str | None = None  # path to a silero model (see above); None: the installed package's sequence model
    threshold: float = 0.5  # speech probability at or above which a frame is speech
    neg_threshold: float | None = None  # below it speech ends; None: max(threshold - 0.15, 0.01)
    min_speech_duration_ms: float = 250.0  # ms; shorter speech is dropped
    max_speech_duration_s: float = float("inf")  # s; longer speech is cut (at the longest silence)
    min_silence_duration_ms: float = 100.0  # ms of silence that end speech
    speech_pad_ms: float = 30.0  # ms added on each side of every speech chunk
    min_silence_at_max_speech: float = 98.0  # ms; silences at least this long are cut candidates
    use_max_poss_sil_at_max_speech: bool = True  # cut over-long speech at its longest silence
    samp_freq: float = 16000.0  # Hz; the models run here at 16 kHz only

    @property
    def resolved_neg_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)

    def validate(self) -> SileroVadOptions:
        self.check_values()
        load_silero_network(self)  # the file checked before anything else (onnxruntime, the reference) reads it
        return self

    def check_values(self) -> SileroVadOptions:
        """The options' values alone (the model file not read)."""
        if self.samp_freq != 16000:
            raise BadInputError(f"silero's models run here at 16000 Hz, not {self.samp_freq}")
        if not 0 <= self.threshold <= 1 or not 0 <= self.resolved_neg_threshold <= 1:
            raise BadInputError(
                f"silero thresholds must be in [0, 1] (threshold {self.threshold}, neg {self.neg_threshold})"
            )
        durations = (
            self.min_speech_duration_ms,
            self.min_silence_duration_ms,
            self.speech_pad_ms,
            self.min_silence_at_max_speech,
        )
        if min(durations) < 0 or not self.max_speech_duration_s > 0:
            raise BadInputError("silero durations must be >= 0 and max_speech_duration_s > 0")
        return self

    def files(self) -> list[tuple[Path, str]]:
        network = load_silero_network(self)
        what = "--silero-model" if self.model is not None else "silero-vad's model"
        return [
            (Path(name), what if Path(name) == network.path else f"external data of the {what}")
            for name in sorted(network.model.meta.get(SOURCE_FILES_KEY, ()))
        ]

    def required_opset(self) -> int:
        return max(MIN_OPSET, ai_onnx_opset(load_silero_network(self).model) or MIN_OPSET)

    def graph(self, g: GraphOps, samples: ir.Value) -> SileroGraph:
        return silero_segments(g, samples, self)

    def reference(self, *, pipeline: bool = False) -> VadReference:
        """silero's own Python on the same file: the sequence runner (``SileroVADSequence``) +
        ``get_speech_timestamps_from_probs`` for the sequence model, ``OnnxWrapper`` +
        ``get_speech_timestamps`` for a streaming one. Both import torch; without it, the
        graph's VAD part alone (``pipeline=False``) or ImportError (``pipeline=True``)."""
        network = load_silero_network(self)
        try:
            if network.streaming:
                return _streaming_reference(network.path, self)
            return _sequence_reference(network.path, self)
        except ImportError:
            if pipeline:
                raise
            return graph_alone(self, "silero's Python needs torch")

    def metadata(self) -> dict:
        network = load_silero_network(self)
        return {**super().metadata(), "network": "streaming" if network.streaming else "sequence"}

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument(
            "--silero-model",
            metavar="ONNX",
            help=f"silero's model: {SUPPORTED} (default: the installed silero-vad's {SEQUENCE_MODEL})",
        )
        group.add_argument("--silero-threshold", type=float, default=0.5, help="silero speech threshold (default 0.5)")
        group.add_argument(
            "--min-speech-ms", type=float, default=250.0, help="silero: shorter speech is dropped (default 250)"
        )
        group.add_argument(
            "--min-silence-ms", type=float, default=100.0, help="silero: silence that ends speech (default 100)"
        )
        group.add_argument("--speech-pad-ms", type=float, default=30.0, help="silero: padding each side (default 30)")
        group.add_argument(
            "--max-speech-s", type=float, default=float("inf"), help="silero: cut longer speech (default: no limit)"
        )

    @classmethod
    def from_arguments(cls, argument: str | None, args=None) -> SileroVadOptions:
        if args is None:
            return cls()
        return cls(
            model=args.silero_model,
            threshold=args.silero_threshold,
            min_speech_duration_ms=args.min_speech_ms,
            min_silence_duration_ms=args.min_silence_ms,
            speech_pad_ms=args.speech_pad_ms,
            max_speech_duration_s=args.max_speech_s,
        )


@dataclasses.dataclass(frozen=True)
class SileroNetwork:
    """silero's model as loaded and checked: the file, the model, and which kind it is."""

    path: Path
    model: ir.Model
    streaming: bool  # input/state/sr, one chunk per call; else the sequence model (all frames at once)


def silero_model_path(options: SileroVadOptions) -> Path:
    """The model's path: the given one (a folder: its sequence model), or the sequence model
    of the installed ``silero-vad`` package."""
    if options.model is not None:
        path = Path(options.model)
        return path / SEQUENCE_MODEL if path.is_dir() else path
    try:
        import silero_vad
    except ImportError:
        raise BadInputError(
            "--vad silero needs silero's sequence model: pip install silero-vad (or give its path)"
        ) from None
    path = Path(silero_vad.__file__).parent / "data" / SEQUENCE_MODEL
    if not path.is_file():
        raise BadInputError(f"the installed silero-vad package has no {SEQUENCE_MODEL} (version 6.2 or newer ships it)")
    return path


def load_silero_network(options: SileroVadOptions) -> SileroNetwork:
    """The options' model, loaded with :func:`svsurgery.model_io.load` (a missing, empty, random or
    truncated file, or external data escaping its folder, is one line) and checked to be one
    of the silero models this mode runs (:data:`SUPPORTED`). Cached per file."""
    return _load_network(silero_model_path(options).absolute())


@functools.lru_cache(maxsize=4)
def _load_network(path: Path) -> SileroNetwork:
    model = load(path)
    inputs = dict(zip(value_names(model.graph.inputs), model.graph.inputs))
    outputs = set(value_names(model.graph.outputs))

    def rank(name):
        shape = inputs[name].shape
        return None if shape is None else len(shape)

    def floats(*names):
        return all(inputs[n].dtype == ir.DataType.FLOAT for n in names)

    has = f"it has inputs {sorted(inputs)}, outputs {sorted(outputs)}"
    if set(inputs) == {"input", "h", "c"} and "speech_probs" in outputs and floats("input", "h", "c"):
        return SileroNetwork(path, model, streaming=False)
    if set(inputs) == {"input", "state", "sr"} and {"output", "stateN"} <= outputs:
        state = inputs["state"].shape
        if (
            not floats("input", "state")
            or rank("input") != 2
            or state is None
            or len(state) != 3
            or state[0] != 2
            or state[2] != 128
        ):
            raise BadInputError(
                f"{path}: a streaming silero model takes float input [B, N] and state [2, B, 128]; "
                f"{has} of other types or shapes"
            )
        return SileroNetwork(path, model, streaming=True)
    if set(inputs) == {"input", "state"}:
        raise BadInputError(
            f"{path}: a silero model without an sr input (as silero_vad_half.onnx, silero_vad_openvino_16k.onnx), "
            f"which silero's own OnnxWrapper cannot run; supported: {SUPPORTED}"
        )
    raise BadInputError(f"{path}: not a silero VAD model this mode runs ({has}); supported: {SUPPORTED}")


@functools.lru_cache(maxsize=4)
def _specialised(path: Path, opset: int) -> ir.Model:
    """A streaming model specialised to what the Loop feeds it: input [1, 576], state
    [2, 1, 128], sr = 16000 a constant. onnxscript's optimizer then folds the Ifs on sr and on
    the batch size into the branch that runs (constant folding, no arithmetic changed: the
    probabilities stay bit-equal to the file run as it is) and the model is taken to ``opset``.
    onnxruntime's own If inlining fails on these nested Ifs once their conditions are constant."""

    model = clone(_load_network(path).model)
    graph = model.graph
    for value in graph.inputs:
        if value.name == "input":
            value.shape = ir.Shape([1, FRAME + CONTEXT])
        elif value.name == "state":
            value.shape = ir.Shape(list(STATE_SHAPE))
    sr = next(v for v in graph.inputs if v.name == "sr")
    dims = () if sr.shape is None else tuple(d if isinstance(d, int) else 1 for d in sr.shape)
    rate = ir.Value(
        name="svs_sample_rate", const_value=ir.tensor(np.full(dims, 16000, np.int64), name="svs_sample_rate")
    )
    rate.dtype, rate.shape = ir.DataType.INT64, sr.shape
    graph.register_initializer(rate)
    sr.replace_all_uses_with(rate)
    graph.inputs.remove(sr)
    onnxscript.optimizer.optimize(model)
    current = ai_onnx_opset(model)
    return model if current == opset else convert_opset(model, opset, label=str(path))


def speech_probabilities(g: GraphOps, samples: ir.Value, options: SileroVadOptions) -> ir.Value:
    """float [F] speech probability of each 512-sample frame of ``samples`` [N], F = ceil(N / 512)."""
    op = g.op
    count = g.dim(samples, 0)
    frames = op.Div(op.Add(count, g.i64(FRAME - 1)), g.i64(FRAME))  # ceil(N / 512)
    computed = op.Max(frames, g.i64(1))  # the network needs one frame; cut back to F after
    network = load_silero_network(options)
    if network.streaming:
        probabilities = _streaming_probabilities(g, samples, count, computed, network)
    else:
        probabilities = _sequence_probabilities(g, samples, count, computed, network)
    return op.Slice(probabilities, g.i64(0), frames, g.i64(0))


def _sequence_probabilities(g: GraphOps, samples, count, computed, network: SileroNetwork) -> ir.Value:
    """All frames in one call of the sequence model: [F', 576] rows, each frame with its context."""
    op = g.op
    padded = op.Pad(samples, op.Concat(g.i64(0), op.Sub(op.Mul(computed, g.i64(FRAME)), count), axis=0))
    rows = op.Reshape(padded, op.Concat(computed, g.i64(FRAME), axis=0))  # [F', 512]
    tails = op.Slice(rows, g.i64(FRAME - CONTEXT), g.i64(FRAME), g.i64(1))  # [F', 64]
    contexts = op.Concat(g.f32(np.zeros((1, CONTEXT))), op.Slice(tails, g.i64(0), g.i64(-1), g.i64(0)), axis=0)
    state = g.f32(np.zeros((1, 1, 128)))
    outputs = graft(
        g.graph, network.model, {"input": op.Concat(contexts, rows, axis=1), "h": state, "c": state}, "svs/vad/silero"
    )
    return op.Reshape(outputs["speech_probs"], g.i64(-1))


def _streaming_probabilities(g: GraphOps, samples, count, computed, network: SileroNetwork) -> ir.Value:
    """One Loop over the chunks, the specialised streaming model its body: chunk i is samples
    [512 i - 64, 512 i + 512) of the waveform with 64 zeros before it and zeros after, the
    LSTM state carried; the model's weights are initializers of the outer graph, read from
    the body (nothing copied per iteration)."""
    op = g.op
    model = _specialised(network.path, g.opset)
    padded = op.Pad(samples, op.Concat(g.i64(CONTEXT), op.Sub(op.Mul(computed, g.i64(FRAME)), count), axis=0))
    state = LoopState(g)
    state.carry("state", g.f32(np.zeros(STATE_SHAPE)), shape=STATE_SHAPE)
    state.scan("probability", ir.DataType.FLOAT)

    def step(bop, index, now):
        start = bop.Mul(bop.Unsqueeze(index, g.i64(0)), g.i64(FRAME))
        chunk = bop.Unsqueeze(bop.Slice(padded, start, bop.Add(start, g.i64(FRAME + CONTEXT)), g.i64(0)), g.i64(0))
        scratch = ir.Graph([], [], nodes=[], opset_imports={"": g.opset}, name="silero_chunk")
        outputs = graft(scratch, model, {"input": chunk, "state": now.state}, "svs/vad/silero")
        nodes = list(scratch)
        scratch.remove(nodes)
        bop.builder.graph.extend(nodes)
        for value in list(scratch.initializers.values()):
            scratch.initializers.pop(value.name)
            g.graph.register_initializer(value)
        return {"state": outputs["stateN"], "probability": bop.Reshape(outputs["output"], g.i64())}

    _, scanned = state.loop(op.Squeeze(computed, g.i64(0)), step, name="silero_streaming")
    return scanned.probability


def _milliseconds(samples: np.ndarray, options: SileroVadOptions) -> np.ndarray:
    """[K, 2] sample timestamps as ms, rounded outwards (start down, end up)."""
    per_ms = int(options.samp_freq // 1000)
    if not len(samples):
        return np.zeros((0, 2), np.int64)
    return np.stack([samples[:, 0] // per_ms, -(-samples[:, 1] // per_ms)], axis=1).astype(np.int64)


def _sequence_reference(path: Path, options: SileroVadOptions) -> VadReference:
    from silero_vad.sequence_vad import SileroVADSequence
    from silero_vad.utils_vad import get_speech_timestamps_from_probs  # noqa: F401 - imports torch: ImportError now, not per call

    runner = SileroVADSequence(str(path))

    def segments(waveform: np.ndarray) -> np.ndarray:
        probabilities = runner.audio_forward(np.ascontiguousarray(waveform, np.float32))
        return _milliseconds(silero_python_timestamps(probabilities, waveform.size, options), options)

    return VadReference("silero-vad's Python (sequence runner + get_speech_timestamps_from_probs)", segments)


def _streaming_reference(path: Path, options: SileroVadOptions) -> VadReference:
    import torch
    from silero_vad.utils_vad import OnnxWrapper, get_speech_timestamps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "This model support only 16000 sampling rate!" for the 16k files
        wrapper = OnnxWrapper(str(path), force_onnx_cpu=True)

    def segments(waveform: np.ndarray) -> np.ndarray:
        found = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(waveform, np.float32)),
            wrapper,
            threshold=options.threshold,
            sampling_rate=int(options.samp_freq),
            min_speech_duration_ms=options.min_speech_duration_ms,
            max_speech_duration_s=options.max_speech_duration_s,
            min_silence_duration_ms=options.min_silence_duration_ms,
            speech_pad_ms=options.speech_pad_ms,
            neg_threshold=options.neg_threshold,
            min_silence_at_max_speech=options.min_silence_at_max_speech,
            use_max_poss_sil_at_max_speech=options.use_max_poss_sil_at_max_speech,
        )
        return _milliseconds(np.array([[s["start"], s["end"]] for s in found], np.int64).reshape(-1, 2), options)

    return VadReference(f"silero-vad's Python (OnnxWrapper on {path.name} + get_speech_timestamps)", segments)


def _limits(options: SileroVadOptions) -> dict[str, int]:
    """silero's float limits in samples, as the integers that compare the same way."""
    rate = options.samp_freq
    pad = rate * options.speech_pad_ms / 1000
    max_speech = rate * options.max_speech_duration_s - FRAME - 2 * pad
    return {
        "min_speech": math.floor(rate * options.min_speech_duration_ms / 1000),  # length > it
        "min_silence": math.ceil(rate * options.min_silence_duration_ms / 1000),  # silence < it goes on
        "possible_end": math.floor(rate * options.min_silence_at_max_speech / 1000),  # silence > it
        "max_speech": math.floor(max_speech) if math.isfinite(max_speech) else _NEVER,  # length > it
    }


def loop_free(options: SileroVadOptions) -> bool:
    """Whether get_speech_timestamps needs no Loop for these options: without a maximum
    speech length (silero's default) and with neg_threshold <= threshold (no frame both
    speech and quiet), its state is only (triggered, start, temp_end), and where speech
    ends is decided gap by gap (see :func:`_timestamps_without_cuts`)."""
    return not math.isfinite(options.max_speech_duration_s) and options.resolved_neg_threshold <= options.threshold


def speech_timestamps(
    g: GraphOps, probabilities: ir.Value, count: ir.Value, options: SileroVadOptions, *, loop: bool | None = None
) -> ir.Value:
    """[K, 2] int64 [start, end) samples of speech, as ``get_speech_timestamps`` gives them,
    from the frame probabilities [F] and the sample count [1].

    Loop-free when :func:`loop_free` says it can be (``loop=True`` forces the Loop over
    frames, for comparing the two), else one Loop over frames.
    """
    options.check_values()
    if loop is None:
        loop = not loop_free(options)
    if not loop:
        if not loop_free(options):
            raise ValueError(
                "these silero options need the Loop over frames (a finite max_speech_duration_s or "
                "neg_threshold > threshold)"
            )
        return _timestamps_without_cuts(g, probabilities, count, options)
    op = g.op
    limits = _limits(options)
    use_longest = options.use_max_poss_sil_at_max_speech
    probabilities = op.Cast(probabilities, to=_DOUBLE)
    threshold = g.const(np.array(options.threshold), np.float64)
    neg_threshold = g.const(np.array(options.resolved_neg_threshold), np.float64)
    zero, frame = g.scalar_i64(0), g.scalar_i64(FRAME)
    false = g.const(np.array(False))

    state = LoopState(g)  # get_speech_timestamps_from_probs's variables, named as silero names them
    state.carry("triggered", False)
    state.carry("start", 0)  # current_speech["start"]
    state.carry("temp_end", 0)
    state.carry("prev_end", 0)
    state.carry("next_start", 0)
    state.carry("best_end", 0)  # possible_ends' longest silence: where it began ...
    state.carry("best_dur", 0)  # ... and how long it was
    state.carry("has_possible", False)  # possible_ends is not empty
    state.scan("cut", _BOOL)  # this frame closed a speech at the maximum length ...
    state.scan("cut_start", _INT64)
    state.scan("cut_end", _INT64)
    state.scan("ended", _BOOL)  # ... and/or one ended by silence
    state.scan("end_start", _INT64)
    state.scan("end_end", _INT64)

    def step(bop, index, now):
        def where(flag, a, b):
            return bop.Where(flag, a, b)

        triggered, start, temp_end, prev_end = now.triggered, now.start, now.temp_end, now.prev_end
        next_start, best_end, best_dur, has_possible = now.next_start, now.best_end, now.best_dur, now.has_possible
        probability = bop.Gather(probabilities, index, axis=0)
        current = bop.Mul(index, frame)
        speech = bop.GreaterOrEqual(probability, threshold)
        quiet = bop.Less(probability, neg_threshold)
        # speech again after a tentative end: that silence is a cut candidate if long enough
        back = bop.And(speech, bop.Not(bop.Equal(temp_end, zero)))
        silence = bop.Sub(current, temp_end)
        candidate = bop.And(back, bop.Greater(silence, g.scalar_i64(limits["possible_end"])))
        better = bop.And(
            candidate, bop.Or(bop.Not(has_possible), bop.Greater(silence, best_dur))
        )  # max() keeps the first longest
        best_end, best_dur = where(better, temp_end, best_end), where(better, silence, best_dur)
        has_possible = bop.Or(has_possible, candidate)
        next_start = where(bop.And(back, bop.Less(next_start, prev_end)), current, next_start)
        temp_end = where(back, zero, temp_end)
        # start of speech: nothing else happens in this frame
        begins = bop.And(speech, bop.Not(triggered))
        going = bop.Not(begins)
        # over the maximum length: cut at the longest silence, else at the last valid silence, else here
        over = bop.And(
            bop.And(going, triggered), bop.Greater(bop.Sub(current, start), g.scalar_i64(limits["max_speech"]))
        )
        at_longest = bop.And(over, has_possible) if use_longest else bop.And(over, false)
        rest = bop.And(over, bop.Not(at_longest))
        at_last_silence = bop.And(rest, bop.Not(bop.Equal(prev_end, zero)))
        here = bop.And(rest, bop.Equal(prev_end, zero))
        resume_at = bop.Add(best_end, best_dur)
        first_end = where(at_longest, best_end, where(at_last_silence, prev_end, current))
        first_start = start
        stays = bop.Or(
            bop.And(at_longest, bop.Less(best_dur, current)),  # next_start < prev_end + current
            bop.And(at_last_silence, bop.Not(bop.Less(next_start, prev_end))),
        )
        start = where(at_longest, resume_at, where(at_last_silence, next_start, start))
        triggered = bop.Or(bop.And(over, stays), bop.And(bop.Not(over), triggered))  # no bool Where in onnxruntime
        prev_end, next_start, temp_end = (where(over, zero, v) for v in (prev_end, next_start, temp_end))
        has_possible = bop.And(has_possible, bop.Not(over))
        best_end, best_dur = where(over, zero, best_end), where(over, zero, best_dur)
        # silence while in speech: end it once it lasts min_silence_duration_ms
        silent = bop.And(bop.And(bop.And(going, bop.Not(here)), quiet), triggered)
        temp_end = where(bop.And(silent, bop.Equal(temp_end, zero)), current, temp_end)
        silence_now = bop.Sub(current, temp_end)
        if not use_longest:
            prev_end = where(
                bop.And(silent, bop.Greater(silence_now, g.scalar_i64(limits["possible_end"]))), temp_end, prev_end
            )
        ends = bop.And(silent, bop.Not(bop.Less(silence_now, g.scalar_i64(limits["min_silence"]))))
        second_start, second_end = start, temp_end
        second = bop.And(ends, bop.Greater(bop.Sub(second_end, second_start), g.scalar_i64(limits["min_speech"])))
        triggered = bop.And(bop.Or(begins, triggered), bop.Not(ends))
        start = where(begins, current, start)
        prev_end, next_start, temp_end = (where(ends, zero, v) for v in (prev_end, next_start, temp_end))
        has_possible = bop.And(has_possible, bop.Not(ends))
        best_end, best_dur = where(ends, zero, best_end), where(ends, zero, best_dur)
        return {
            "triggered": triggered,
            "start": start,
            "temp_end": temp_end,
            "prev_end": prev_end,
            "next_start": next_start,
            "best_end": best_end,
            "best_dur": best_dur,
            "has_possible": has_possible,
            "cut": over,
            "cut_start": first_start,
            "cut_end": first_end,
            "ended": second,
            "end_start": second_start,
            "end_end": second_end,
        }

    trips = op.Squeeze(g.dim(probabilities, 0), g.i64(0))
    final, scanned = state.loop(trips, step, name="get_speech_timestamps_step")
    triggered, start = final.triggered, final.start
    cut, cut_start, cut_end = scanned.cut, scanned.cut_start, scanned.cut_end
    ended, end_start, end_end = scanned.ended, scanned.end_start, scanned.end_end
    # per frame, the speech cut at the maximum comes before the one ended by silence
    flags = op.Reshape(op.Concat(op.Unsqueeze(cut, g.i64(1)), op.Unsqueeze(ended, g.i64(1)), axis=1), g.i64(-1))
    starts = op.Reshape(
        op.Concat(op.Unsqueeze(cut_start, g.i64(1)), op.Unsqueeze(end_start, g.i64(1)), axis=1), g.i64(-1)
    )
    ends = op.Reshape(op.Concat(op.Unsqueeze(cut_end, g.i64(1)), op.Unsqueeze(end_end, g.i64(1)), axis=1), g.i64(-1))
    starts, ends = op.Compress(starts, flags, axis=0), op.Compress(ends, flags, axis=0)
    # speech still open at the end of the recording runs to its last sample
    samples = op.Squeeze(count, g.i64(0))
    open_ = op.And(triggered, op.Greater(op.Sub(samples, start), g.scalar_i64(limits["min_speech"])))
    starts = op.Concat(
        starts, op.Compress(op.Unsqueeze(start, g.i64(0)), op.Unsqueeze(open_, g.i64(0)), axis=0), axis=0
    )
    ends = op.Concat(ends, op.Compress(op.Unsqueeze(samples, g.i64(0)), op.Unsqueeze(open_, g.i64(0)), axis=0), axis=0)
    return _pad_speech(g, starts, ends, count, options)


def _timestamps_without_cuts(
    g: GraphOps, probabilities: ir.Value, count: ir.Value, options: SileroVadOptions
) -> ir.Value:
    """get_speech_timestamps without a maximum speech length, loop-free.

    Every speech frame (p >= threshold) sets ``triggered`` and clears ``temp_end``; in the gap
    after a speech frame (up to the next one, or the end), ``temp_end`` is the gap's first
    quiet frame T (p < neg_threshold) and speech ends at the first quiet frame j of the gap
    with (j - T) * 512 >= min_silence samples, the end being T. So a gap breaks the speech
    exactly when such a j exists before the next speech frame; a segment starts at the first
    speech frame after a break (or the first one), ends at its break's T, or runs to the last
    sample if the last gap does not break; then the minimum speech length and the padding as
    in the Loop. First quiet frames come from a cumulative count of quiet frames indexing
    their positions (the frame count F standing for "none").
    """
    op = g.op
    limits = _limits(options)
    probabilities = op.Cast(probabilities, to=_DOUBLE)
    speech = op.GreaterOrEqual(probabilities, g.const(np.array(options.threshold), np.float64))
    quiet = op.Less(probabilities, g.const(np.array(options.resolved_neg_threshold), np.float64))
    frames = g.dim(probabilities, 0)  # [1] F
    speech_at = op.Squeeze(op.NonZero(speech), g.i64(0))  # [M] frames
    quiet_count = op.Cast(quiet, to=_INT64)
    quiet_at = op.Concat(op.Squeeze(op.NonZero(quiet), g.i64(0)), frames, axis=0)  # the c-th quiet frame; c = #quiet: F
    quiet_before = op.Concat(
        op.CumSum(quiet_count, g.scalar_i64(0), exclusive=1), op.ReduceSum(quiet_count, g.i64(0), keepdims=1), axis=0
    )  # [F + 1]

    def first_quiet_from(frame):  # the first quiet frame at or after ``frame`` (<= F), F if none
        return op.Gather(quiet_at, op.Gather(quiet_before, frame, axis=0), axis=0)

    gap_quiet = first_quiet_from(op.Add(speech_at, g.i64(1)))  # T of the gap after each speech frame
    steps = -(-limits["min_silence"] // FRAME)  # (j - T) * 512 >= min_silence  <=>  j - T >= this
    breaking = first_quiet_from(op.Min(op.Add(gap_quiet, g.i64(steps)), frames))
    next_speech = op.Concat(op.Slice(speech_at, g.i64(1), g.i64(_NEVER), g.i64(0)), frames, axis=0)
    breaks = op.Less(breaking, next_speech)  # [M]
    after_break = op.Concat(g.const(np.array([True])), breaks, axis=0)  # [M + 1]: before the first speech frame too
    count_m = g.dim(speech_at, 0)
    starts = op.Compress(op.Mul(speech_at, g.i64(FRAME)), op.Slice(after_break, g.i64(0), count_m, g.i64(0)), axis=0)
    ends = op.Compress(op.Mul(gap_quiet, g.i64(FRAME)), breaks, axis=0)
    still_open = op.Not(
        op.Slice(after_break, count_m, op.Add(count_m, g.i64(1)), g.i64(0))
    )  # [1]: the last gap did not break
    ends = op.Concat(ends, op.Compress(count, still_open, axis=0), axis=0)
    kept = op.Greater(op.Sub(ends, starts), g.i64(limits["min_speech"]))
    return _pad_speech(g, op.Compress(starts, kept, axis=0), op.Compress(ends, kept, axis=0), count, options)


def _pad_speech(g: GraphOps, starts: ir.Value, ends: ir.Value, count: ir.Value, options: SileroVadOptions) -> ir.Value:
    """silero's padding: ``speech_pad_ms`` each side, or half the silence between two
    speeches shorter than two pads; computed on the unpadded neighbours, as silero's loop does."""
    op = g.op
    pad = options.samp_freq * options.speech_pad_ms / 1000
    as_double = ir.DataType.DOUBLE
    pad_value = g.const(np.array(pad), np.float64)
    total = op.Cast(count, to=as_double)

    def truncate(x):  # Python's int() of a non-negative float
        return op.Cast(x, to=_INT64)

    following = op.Slice(starts, g.i64(1), g.i64(_NEVER), g.i64(0))  # starts[i + 1]
    inner_ends = op.Slice(ends, g.i64(0), g.i64(-1), g.i64(0))  # ends[i], i < K - 1
    gap = op.Sub(following, inner_ends)
    half = op.Div(gap, g.i64(2))
    close = op.Less(op.Cast(gap, to=as_double), g.const(np.array(2 * pad), np.float64))
    padded_end = truncate(op.Min(total, op.Add(op.Cast(ends, to=as_double), pad_value)))  # every end, padded alone
    new_inner_ends = op.Where(close, op.Add(inner_ends, half), op.Slice(padded_end, g.i64(0), g.i64(-1), g.i64(0)))
    zero = g.const(np.array(0.0), np.float64)
    new_following = op.Where(
        close,
        truncate(op.Max(zero, op.Cast(op.Sub(following, half), to=as_double))),
        truncate(op.Max(zero, op.Sub(op.Cast(following, to=as_double), pad_value))),
    )
    first = truncate(
        op.Max(zero, op.Sub(op.Cast(op.Slice(starts, g.i64(0), g.i64(1), g.i64(0)), to=as_double), pad_value))
    )
    new_starts = op.Concat(first, new_following, axis=0)
    new_ends = op.Concat(new_inner_ends, op.Slice(padded_end, g.i64(-1), g.i64(_NEVER), g.i64(0)), axis=0)
    return op.Concat(op.Unsqueeze(new_starts, g.i64(1)), op.Unsqueeze(new_ends, g.i64(1)), axis=1)


@dataclasses.dataclass
class SileroGraph(VadGraph):
    """The silero mode's values: ``scores`` the frames' speech probability [F], ``timestamps``
    [K, 2] int64 samples as get_speech_timestamps gives them, ``segments`` the same in ms."""

    timestamps: ir.Value | None = None


def silero_segments(g: GraphOps, samples: ir.Value, options: SileroVadOptions) -> SileroGraph:
    """The speech in ``samples`` [N]: probabilities, timestamps (samples) and segments (ms).

    Milliseconds round outwards (start down, end up), so a segment holds all its speech.
    """
    options.validate()
    probabilities = speech_probabilities(g, samples, options)
    timestamps = speech_timestamps(g, probabilities, g.dim(samples, 0), options)
    per_ms = int(options.samp_freq // 1000)
    starts = g.op.Div(g.op.Slice(timestamps, g.i64(0), g.i64(1), g.i64(1)), g.i64(per_ms))
    ends = g.op.Div(g.op.Add(g.op.Slice(timestamps, g.i64(1), g.i64(2), g.i64(1)), g.i64(per_ms - 1)), g.i64(per_ms))
    return SileroGraph(segments=g.op.Concat(starts, ends, axis=1), scores=probabilities, timestamps=timestamps)


def silero_python_timestamps(probabilities, samples: int, options: SileroVadOptions) -> np.ndarray:
    """[K, 2] int64 samples from silero's own ``get_speech_timestamps_from_probs`` (it imports
    torch; ImportError without it) for these frame probabilities and options."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    found = get_speech_timestamps_from_probs(
        [float(p) for p in probabilities],
        sampling_rate=int(options.samp_freq),
        threshold=options.threshold,
        neg_threshold=options.neg_threshold,
        min_speech_duration_ms=options.min_speech_duration_ms,
        max_speech_duration_s=options.max_speech_duration_s,
        min_silence_duration_ms=options.min_silence_duration_ms,
        speech_pad_ms=options.speech_pad_ms,
        min_silence_at_max_speech=options.min_silence_at_max_speech,
        use_max_poss_sil_at_max_speech=options.use_max_poss_sil_at_max_speech,
        audio_length_samples=samples,
    )
    return np.array([[s["start"], s["end"]] for s in found], dtype=np.int64).reshape(-1, 2)
