"""silero VAD inside the graph: its sequence model over the whole waveform, then
``get_speech_timestamps`` restated in ONNX ops.

- :func:`speech_probabilities`: the waveform cut into 512-sample frames (the last one
  zero-padded), each prefixed with the 64 samples before it (zeros for the first), as
  silero's streaming wrapper feeds them; silero's ``silero_vad_16k_sequence.onnx`` is
  grafted in and runs its LSTM over all frames in one call (no Scan over frames);
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

import math
from pathlib import Path

import numpy as np
import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import GraphOps
from svsurgery.vad.loop_state import LoopState
from svsurgery.vad.options import SileroVadOptions

__all__ = [
    "CONTEXT",
    "FRAME",
    "MIN_OPSET",
    "loop_free",
    "silero_model",
    "silero_python_timestamps",
    "silero_segments",
    "speech_probabilities",
    "speech_timestamps",
]

FRAME = 512  # samples per frame at 16 kHz
CONTEXT = 64  # samples of the previous frame each frame is seen with
MIN_OPSET = 16  # the sequence model's opset
SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"
_INT64, _BOOL, _DOUBLE = ir.DataType.INT64, ir.DataType.BOOL, ir.DataType.DOUBLE
_NEVER = 2**62  # a sample count no recording reaches


def silero_model_path(options: SileroVadOptions) -> Path:
    """The sequence model: the given path, or the one in the installed ``silero-vad`` package."""
    if options.model is not None:
        path = Path(options.model)
        if path.is_dir():
            path = path / SEQUENCE_MODEL
        if not path.is_file():
            raise BadInputError(f"silero VAD model {path} does not exist (expected {SEQUENCE_MODEL} or a path to it)")
        return path
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


def silero_model(options: SileroVadOptions) -> ir.Model:
    """The sequence model, checked to be the one this module feeds."""
    from svsurgery.io import load

    path = silero_model_path(options)
    model = load(path)
    inputs = {v.name: v for v in model.graph.inputs}
    outputs = {v.name for v in model.graph.outputs}
    if not {"input", "h", "c"} <= set(inputs) or "speech_probs" not in outputs:
        raise BadInputError(
            f"{path}: not silero's sequence model (expected inputs input [F, 576], h, c and output speech_probs; "
            f"it has inputs {sorted(inputs)}, outputs {sorted(outputs)})"
        )
    return model


def speech_probabilities(g: GraphOps, samples: ir.Value, options: SileroVadOptions) -> ir.Value:
    """float [F] speech probability of each 512-sample frame of ``samples`` [N], F = ceil(N / 512)."""
    from svsurgery.patch import graft

    op = g.op
    count = g.dim(samples, 0)
    frames = op.Div(op.Add(count, g.i64(FRAME - 1)), g.i64(FRAME))  # ceil(N / 512)
    computed = op.Max(frames, g.i64(1))  # the LSTM needs one frame; cut back to F after
    padded = op.Pad(samples, op.Concat(g.i64(0), op.Sub(op.Mul(computed, g.i64(FRAME)), count), axis=0))
    rows = op.Reshape(padded, op.Concat(computed, g.i64(FRAME), axis=0))  # [F', 512]
    tails = op.Slice(rows, g.i64(FRAME - CONTEXT), g.i64(FRAME), g.i64(1))  # [F', 64]
    contexts = op.Concat(g.f32(np.zeros((1, CONTEXT))), op.Slice(tails, g.i64(0), g.i64(-1), g.i64(0)), axis=0)
    state = g.f32(np.zeros((1, 1, 128)))
    outputs = graft(
        g.graph,
        silero_model(options),
        {"input": op.Concat(contexts, rows, axis=1), "h": state, "c": state},
        "svs/vad/silero",
    )
    return op.Slice(op.Reshape(outputs["speech_probs"], g.i64(-1)), g.i64(0), frames, g.i64(0))


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
    options.validate()
    if loop is None:
        loop = not loop_free(options)
    if not loop:
        if not loop_free(options):
            raise ValueError("these silero options need the Loop over frames (a finite max_speech_duration_s or neg_threshold > threshold)")
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
        return {"triggered": triggered, "start": start, "temp_end": temp_end, "prev_end": prev_end,
                "next_start": next_start, "best_end": best_end, "best_dur": best_dur, "has_possible": has_possible,
                "cut": over, "cut_start": first_start, "cut_end": first_end,
                "ended": second, "end_start": second_start, "end_end": second_end}  # fmt: skip

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


def _timestamps_without_cuts(g: GraphOps, probabilities: ir.Value, count: ir.Value, options: SileroVadOptions) -> ir.Value:
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
    quiet_before = op.Concat(op.CumSum(quiet_count, g.scalar_i64(0), exclusive=1), op.ReduceSum(quiet_count, g.i64(0), keepdims=1), axis=0)  # [F + 1]  # fmt: skip

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
    still_open = op.Not(op.Slice(after_break, count_m, op.Add(count_m, g.i64(1)), g.i64(0)))  # [1]: the last gap did not break
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


def silero_segments(g: GraphOps, samples: ir.Value, options: SileroVadOptions) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(probabilities [F], timestamps [K, 2] in samples, segments [K, 2] in ms) of ``samples`` [N].

    Milliseconds round outwards (start down, end up), so a segment holds all its speech.
    """
    probabilities = speech_probabilities(g, samples, options)
    timestamps = speech_timestamps(g, probabilities, g.dim(samples, 0), options)
    per_ms = int(options.samp_freq // 1000)
    starts = g.op.Div(g.op.Slice(timestamps, g.i64(0), g.i64(1), g.i64(1)), g.i64(per_ms))
    ends = g.op.Div(g.op.Add(g.op.Slice(timestamps, g.i64(1), g.i64(2), g.i64(1)), g.i64(per_ms - 1)), g.i64(per_ms))
    return probabilities, timestamps, g.op.Concat(starts, ends, axis=1)


def silero_python_timestamps(probabilities, samples: int, options: SileroVadOptions) -> np.ndarray:
    """[K, 2] int64 samples from silero's own ``get_speech_timestamps_from_probs`` (it imports
    torch; ImportError without it) for these frame probabilities and options."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    found = get_speech_timestamps_from_probs(
        [float(p) for p in probabilities], sampling_rate=int(options.samp_freq), threshold=options.threshold,
        neg_threshold=options.neg_threshold, min_speech_duration_ms=options.min_speech_duration_ms,
        max_speech_duration_s=options.max_speech_duration_s, min_silence_duration_ms=options.min_silence_duration_ms,
        speech_pad_ms=options.speech_pad_ms, min_silence_at_max_speech=options.min_silence_at_max_speech,
        use_max_poss_sil_at_max_speech=options.use_max_poss_sil_at_max_speech, audio_length_samples=samples,
    )  # fmt: skip
    return np.array([[s["start"], s["end"]] for s in found], dtype=np.int64).reshape(-1, 2)
