"""FunASR's fsmn-vad inside the graph: its front end, its network, its E2EVadModel state machine.

- the features are the project's fbank with the folder's own frontend_conf, LFR and am.mvn;
- the folder's ``model.onnx`` (FunASR's export: ``speech`` [1, T, D] plus zeroed
  ``in_cache*`` inputs -> ``logits`` [1, T, classes]) is grafted in and scores every frame;
- FunASR's per-frame decision (``exp(log(1 - p_sil)) >= exp(log(p_sil) * speech_2_noise_ratio)
  + speech_noise_thres``, with the decibel and SNR gates and the running noise level) and
  its E2EVadModel (a 200 ms window with 150 ms hysteresis, start back-off by the window and
  ``lookback_time_start_point``, end after ``max_end_silence_time`` with
  ``lookahead_time_end_point``, the ``max_single_segment_time`` cut, and the buffer
  bookkeeping that decides where a segment may start) run as one ONNX Loop over frames;
- the dynamic end-silence schedule of FunASR 1.4.16's ``generate()`` steps at the frames
  where its 60 s chunks begin (FunASR's online front end emits 5996 frames for the first
  chunk and 6000 for each next one; computed here from the settings).

Every quantity the state machine compares is an integer frame or millisecond count, as in
FunASR; float limits are turned into the integers that compare the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import GraphOps, subgraph_value
from svsurgery.frontend.config import FrontendConfig
from svsurgery.vad.options import FsmnVadOptions

__all__ = [
    "DYNAMIC_SILENCE_SCHEDULE",
    "FsmnVad",
    "StateMachineOptions",
    "chunk_starts",
    "decide_segments",
    "frame_decibels",
    "fsmn_segments",
    "load_fsmn_vad",
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
        values = {}
        for key, value in conf.items():
            if key not in known:
                continue  # FunASR ignores the rest too (snr_mode, nn_eval_block_size, ...)
            try:
                values[key] = tuple(int(v) for v in value) if key == "sil_pdf_ids" else type(known[key].default)(value)
            except (TypeError, ValueError):
                raise BadInputError(
                    f"{where}: model_conf {key}={value!r} is not a {type(known[key].default).__name__}"
                ) from None
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
        return {"folder": str(Path(self.options.folder).resolve()), "dynamic_silence": self.dynamic,
                "max_end_silence_time": None if self.dynamic else self.static_end_silence,
                "chunk_size_ms": self.options.chunk_size_ms,
                "state_machine": {**dataclasses.asdict(self.machine), "sil_pdf_ids": list(self.machine.sil_pdf_ids)}}  # fmt: skip


@functools.lru_cache(maxsize=4)
def load_fsmn_vad(options: FsmnVadOptions) -> FsmnVad:
    """Read model.onnx, config.yaml (frontend_conf, model_conf) and am.mvn from the folder
    (cached per options: building, verifying and recording a fusion each need it; grafting
    copies the model, so the cached one is never changed)."""
    import yaml

    from svsurgery.frontend.config import discover
    from svsurgery.io import load

    options.validate()
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
    if any(b - a != period for a, b in zip(starts[1:], starts[2:])) or period <= 0:
        raise BadInputError(f"fsmn-vad: chunks of {vad.options.chunk_size_ms} ms do not give a steady frame count")
    return starts[0], period


def _frame_scores(g: GraphOps, samples: ir.Value, vad: FsmnVad) -> tuple[ir.Value, ir.Value]:
    """(silence probability [T] as double, decibels [T] as double) of the T fbank frames."""
    from svsurgery.frontend.build import frontend_values
    from svsurgery.patch import graft

    op = g.op
    found = vad.frontend
    rows = op.Unsqueeze(samples, g.i64(0))
    features, count = frontend_values(g, rows, g.dim(samples, 0), found.fbank, found.lfr, found.cmvn, _INT64)
    computed = op.Max(count, g.i64(1))  # the network needs one frame; cut back after
    features = op.Pad(features, op.Concat(g.i64(0, 0, 0, 0), op.Sub(computed, count), g.i64(0), axis=0))
    feeds, inputs = {}, list(vad.model.graph.inputs)
    floats = [v for v in inputs if v.shape is not None and len(v.shape) == 3]
    if not floats:
        raise BadInputError("fsmn-vad model.onnx: no [1, T, D] feature input")
    feeds[floats[0].name] = features
    for value in (v for v in inputs if v is not floats[0]):
        if value.shape is None or not all(isinstance(d, int) for d in value.shape):
            raise BadInputError(
                f"fsmn-vad model.onnx: cache input '{value.name}' has no fixed shape to fill with zeros"
            )
        feeds[value.name] = g.const(np.zeros(tuple(value.shape), value.dtype.numpy()))
    outputs = graft(g.graph, vad.model, feeds, "svs/vad/fsmn")
    logits = outputs.get("logits", next(iter(outputs.values())))
    probabilities = op.Slice(op.Squeeze(logits, g.i64(0)), g.i64(0), count, g.i64(0))  # [T, classes]
    silence = None
    for pdf in vad.machine.sil_pdf_ids:  # summed left to right, in double, as FunASR's sum() does
        column = op.Cast(op.Gather(probabilities, g.scalar_i64(pdf), axis=1), to=_DOUBLE)
        silence = column if silence is None else op.Add(silence, column)
    return silence, frame_decibels(g, samples, count, vad.machine)


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


def fsmn_segments(g: GraphOps, samples: ir.Value, vad: FsmnVad) -> tuple[ir.Value, ir.Value]:
    """(silence probability [T], segments [K, 2] int64 ms) of ``samples`` [N] in [-1, 1]."""
    silence, decibels = _frame_scores(g, samples, vad)
    return silence, decide_segments(g, silence, decibels, g.dim(samples, 0), vad)


def decide_segments(g: GraphOps, silence: ir.Value, decibels: ir.Value, samples: ir.Value, vad: FsmnVad) -> ir.Value:
    """[K, 2] int64 ms from the silence probability and decibels of each frame (double [T])
    and the sample count [1] (FunASR's chunking depends on it)."""
    op = g.op
    machine = vad.machine
    if machine.decibel_thres > -60.0:  # 10 log10(0 + 1e-6) = -60 dB is the quietest frame
        raise BadInputError(
            f"fsmn-vad: decibel_thres {machine.decibel_thres} > -60 dB (FunASR then runs its window twice per quiet "
            "frame); not supported"
        )
    # FunASR's frame decision, vectorised: everything but the SNR gate, which needs the running noise level

    def double(x):
        return g.const(np.array(x, np.float64), np.float64)

    noise_log = op.Mul(op.Log(silence), double(machine.speech_2_noise_ratio))
    speech_log = op.Log(op.Sub(double(1.0), silence))
    score_says_speech = op.GreaterOrEqual(op.Exp(speech_log), op.Add(op.Exp(noise_log), double(vad.speech_noise_thres)))
    loud_enough = op.Not(op.Less(decibels, double(machine.decibel_thres)))
    candidate = op.And(score_says_speech, loud_enough)
    if not 1.0 > machine.fe_prior_thres:  # FunASR: speech only if fabs(1.0) > fe_prior_thres
        candidate = op.And(candidate, g.const(np.array(False)))
    updates_noise = op.And(op.Not(score_says_speech), loud_enough)
    return _state_machine(g, candidate, updates_noise, decibels, samples, vad)


def _state_machine(g: GraphOps, candidate: ir.Value, updates_noise: ir.Value, decibels: ir.Value, samples: ir.Value,
                   vad: FsmnVad) -> ir.Value:  # fmt: skip
    op, builder = g.op, g.builder
    m = vad.machine
    shift = m.frame_in_ms
    window = m.frames(m.window_size_ms)
    up, down = m.frames(m.sil_to_speech_time_thres), m.frames(m.speech_to_sil_time_thres)
    latency = window + (m.frames(m.lookback_time_start_point) if m.do_extend else 0)
    lookahead = m.frames(m.lookahead_time_end_point)
    longest = math.floor(m.max_single_segment_time / shift)  # t - start + 1 > it cuts
    start_silence = math.floor(m.max_start_silence_time)  # count * shift > it
    single = m.detect_mode == 0
    count = g.dim(candidate, 0)
    last = op.Sub(op.Squeeze(count, g.i64(0)), g.scalar_i64(1))
    noise_frames = float(m.noise_frame_num_used_for_snr)
    if vad.dynamic:  # the schedule steps where FunASR's chunks begin; FunASR cuts N // chunk + 1 chunks
        first_chunk, period = chunk_starts(vad)
        chunk_samples = int(vad.options.chunk_size_ms * m.sample_rate / 1000)
        chunks = op.Squeeze(op.Div(samples, g.i64(chunk_samples)), g.i64(0))

    def c(value, dtype=np.int64):
        return g.const(np.array(value, dtype), dtype)

    def body(bop, t, condition, win, pos, win_sum, pre, state, silent_run, latest, last_silence, start, ended_count,
             popped, noise, seg_start, seg_end, thresh, accumulated, in_speech, emitted):  # fmt: skip
        def pick(flag, a, b):
            return bop.Where(flag, a, b)

        zero, one = c(0), c(1)
        # FunASR 1.4.16: at each chunk start the end silence follows the speech accumulated so far
        if vad.dynamic:
            since = bop.Sub(t, c(first_chunk))
            boundary = bop.And(bop.GreaterOrEqual(since, zero), bop.Equal(bop.Mod(since, c(period)), zero))
            boundary = bop.And(
                boundary, bop.LessOrEqual(bop.Add(bop.Div(since, c(period)), one), chunks)
            )  # that chunk exists
            restart = bop.And(boundary, emitted)
            accumulated = pick(restart, zero, accumulated)
            in_speech = bop.And(in_speech, bop.Not(restart))
            grows = bop.And(boundary, bop.Or(bop.Equal(state, c(2)), in_speech))
            accumulated = pick(grows, bop.Add(accumulated, c(int(vad.options.chunk_size_ms))), accumulated)
            in_speech = bop.Or(in_speech, grows)
            scheduled = c(max(DYNAMIC_SILENCE_SCHEDULE[-1][1] - int(m.speech_to_sil_time_thres), 0))
            for limit, silence_ms in reversed(DYNAMIC_SILENCE_SCHEDULE[:-1]):
                scheduled = bop.Where(
                    bop.LessOrEqual(accumulated, c(limit)),
                    c(max(silence_ms - int(m.speech_to_sil_time_thres), 0)),
                    scheduled,
                )
            thresh = pick(boundary, scheduled, thresh)
            emitted = bop.And(emitted, bop.Not(boundary))
        final = bop.Equal(t, last)
        # GetFrameState: speech if the score says so and the SNR gate passes; else maybe update the noise level
        decibel = bop.Gather(decibels, t, axis=0)
        speech = bop.And(bop.Gather(candidate, t, axis=0),
                         bop.GreaterOrEqual(bop.Sub(decibel, noise), c(m.snr_thres, np.float64)))  # fmt: skip
        averaged = bop.Div(
            bop.Add(decibel, bop.Mul(noise, c(noise_frames - 1, np.float64))), c(noise_frames, np.float64)
        )
        noise = pick(
            bop.Gather(updates_noise, t, axis=0), pick(bop.Less(noise, c(-99.9, np.float64)), decibel, averaged), noise
        )
        # WindowDetector: a ring of the last `window` decisions and their sum, with hysteresis
        value = bop.Cast(speech, to=_INT64)
        slot = bop.Unsqueeze(pos, c([0]))
        win_sum = bop.Add(bop.Sub(win_sum, bop.Gather(win, pos, axis=0)), value)
        win = bop.ScatterElements(win, slot, bop.Unsqueeze(value, c([0])), axis=0)
        pos = bop.Mod(bop.Add(pos, one), c(window))
        to_speech = bop.And(bop.Not(pre), bop.GreaterOrEqual(win_sum, c(up)))
        to_silence = bop.And(bop.And(pre, bop.LessOrEqual(win_sum, c(down))), bop.Not(to_speech))
        silence_to_silence = bop.And(bop.Not(pre), bop.Not(to_speech))
        pre = bop.Or(bop.And(pre, bop.Not(to_silence)), to_speech)
        silent_run = pick(silence_to_silence, bop.Add(silent_run, one), zero)
        waiting, speaking = bop.Equal(state, one), bop.Equal(state, c(2))
        # start of a segment: backed off by the latency, never before the popped buffer
        starts = bop.And(to_speech, waiting)
        begin = bop.Max(popped, bop.Sub(t, c(latency)))
        latest = pick(bop.And(starts, bop.Less(begin, t)), t, latest)
        start = pick(starts, begin, start)
        seg_start = pick(starts, bop.Mul(begin, c(shift)), seg_start)
        seg_end_started = bop.Mul(bop.Add(t, one), c(shift))
        popped = pick(starts, bop.Add(t, one), popped)
        # in a segment: the frame is voice, or the segment ends here (too long, or the last frame)
        too_long = bop.Greater(bop.Add(bop.Sub(t, start), one), c(longest))
        changes = bop.And(speaking, bop.Not(silence_to_silence))  # Sil2Speech, Speech2Sil or Speech2Speech
        ends_now = bop.And(changes, bop.Or(too_long, final))
        in_silence = bop.And(silence_to_silence, speaking)
        silence_limit = bop.GreaterOrEqual(bop.Mul(silent_run, c(shift)), thresh)
        lookback = bop.Div(thresh, c(shift))
        if m.do_extend:
            lookback = bop.Max(bop.Sub(lookback, c(lookahead + 1)), zero)
        ends_silence = bop.And(in_silence, silence_limit)
        rest = bop.And(in_silence, bop.Not(silence_limit))
        ends_long = bop.And(rest, too_long)
        rest = bop.And(rest, bop.Not(too_long))
        if m.do_extend:
            voice_in_silence = bop.And(bop.And(rest, bop.Not(final)), bop.LessOrEqual(silent_run, c(lookahead)))
            ends_last = bop.And(rest, final)
        else:
            voice_in_silence = bop.And(rest, c(False, bool))
            ends_last = bop.And(rest, final)
        ends = bop.Or(bop.Or(ends_now, ends_silence), bop.Or(ends_long, ends_last))
        voiced = bop.Or(bop.Or(changes, voice_in_silence), ends)
        # voice up to frame x: every frame since the last voiced one pops one frame of buffer
        x = pick(ends_silence, bop.Sub(t, lookback), t)
        popped = pick(voiced, bop.Add(bop.Max(popped, bop.Add(latest, one)), bop.Sub(x, latest)), popped)
        latest = pick(voiced, x, latest)
        seg_end = pick(voiced, bop.Mul(bop.Add(x, one), c(shift)), pick(starts, seg_end_started, seg_end))
        # silence before any start: the buffer is popped up to the latency; at the end with no
        # segment at all (or after a start timeout) a zero-length fake segment ends detection
        before = bop.And(silence_to_silence, waiting)
        timeout = bop.And(final, bop.Equal(ended_count, zero))
        if single:
            timeout = bop.Or(timeout, bop.Greater(bop.Mul(silent_run, c(shift)), c(start_silence)))
        fake = bop.And(before, timeout)
        seen = bop.And(bop.And(before, bop.Not(fake)), bop.GreaterOrEqual(t, c(latency)))
        catch_up = bop.And(fake, bop.LessOrEqual(bop.Add(last_silence, one), bop.Sub(t, one)))
        popped = pick(
            seen, bop.Max(popped, bop.Sub(t, c(latency))), pick(catch_up, bop.Max(popped, bop.Sub(t, one)), popped)
        )
        last_silence = pick(seen, bop.Sub(t, c(latency)), pick(catch_up, bop.Sub(t, one), last_silence))
        start = pick(bop.And(fake, bop.Equal(start, c(-1))), zero, start)
        done = bop.Or(ends, fake)
        ended_count = pick(done, bop.Add(ended_count, one), ended_count)
        state = pick(done, c(3), pick(starts, c(2), state))
        if vad.dynamic:
            emitted = bop.Or(emitted, ends)
        closed_start, closed_end = seg_start, seg_end
        if not single:  # multiple utterances: a finished segment resets the detector
            silent_run = pick(done, zero, silent_run)
            latest = pick(done, zero, latest)
            last_silence = pick(done, c(-1), last_silence)
            start = pick(done, c(-1), start)
            state = pick(done, one, state)
            win = pick(done, c(np.zeros(window, np.int64)), win)
            win_sum, pos = pick(done, zero, win_sum), pick(done, zero, pos)
            pre = bop.And(pre, bop.Not(done))
        carried = (win, pos, win_sum, pre, state, silent_run, latest, last_silence, start, ended_count, popped, noise,
                   seg_start, seg_end, thresh, accumulated, in_speech, emitted)  # fmt: skip
        return (bop.Identity(condition), *carried, ends, closed_start, closed_end)

    names = ("win", "pos", "win_sum", "pre", "state", "silent_run", "latest", "last_silence", "start", "ended_count",
             "popped", "noise", "seg_start", "seg_end", "thresh", "accumulated", "in_speech", "emitted")  # fmt: skip
    types = {"pre": _BOOL, "in_speech": _BOOL, "emitted": _BOOL, "noise": _DOUBLE}
    inputs = [subgraph_value("t", _INT64), subgraph_value("condition", _BOOL)]
    inputs += [
        subgraph_value(n, _INT64, [None]) if n == "win" else subgraph_value(n, types.get(n, _INT64)) for n in names
    ]
    outputs = [subgraph_value("condition_out", _BOOL)]
    outputs += [
        subgraph_value(f"{n}_out", _INT64, [None]) if n == "win" else subgraph_value(f"{n}_out", types.get(n, _INT64))
        for n in names
    ]
    outputs += [
        subgraph_value("closed", _BOOL),
        subgraph_value("closed_start", _INT64),
        subgraph_value("closed_end", _INT64),
    ]
    loop_body = builder.subgraph(body, inputs=inputs, outputs=outputs, name="e2e_vad_frame")
    initial_thresh = (max(DYNAMIC_SILENCE_SCHEDULE[0][1] - int(m.speech_to_sil_time_thres), 0) if vad.dynamic
                      else math.ceil(vad.static_end_silence - m.speech_to_sil_time_thres))  # fmt: skip
    initial = dict(win=c(np.zeros(window, np.int64)), pos=c(0), win_sum=c(0), pre=c(False, bool), state=c(1), silent_run=c(0),
                   latest=c(0), last_silence=c(-1), start=c(-1), ended_count=c(0), popped=c(0), noise=c(-100.0, np.float64),
                   seg_start=c(0), seg_end=c(0), thresh=c(initial_thresh), accumulated=c(0), in_speech=c(False, bool),
                   emitted=c(False, bool))  # fmt: skip
    results = op.Loop(op.Squeeze(count, g.i64(0)), c(True, bool), *(initial[n] for n in names), body=loop_body,
                      _outputs=len(names) + 3)  # fmt: skip
    final_state = dict(zip(names, results[: len(names)]))
    closed, closed_start, closed_end = results[len(names) :]
    starts = op.Compress(closed_start, closed, axis=0)
    ends = op.Compress(closed_end, closed, axis=0)
    # a segment still open after the last frame is output as it stands (FunASR's final call)
    still_open = op.Unsqueeze(op.Equal(final_state["state"], c(2)), g.i64(0))
    starts = op.Concat(
        starts, op.Compress(op.Unsqueeze(final_state["seg_start"], g.i64(0)), still_open, axis=0), axis=0
    )
    ends = op.Concat(ends, op.Compress(op.Unsqueeze(final_state["seg_end"], g.i64(0)), still_open, axis=0), axis=0)
    return op.Concat(op.Unsqueeze(starts, g.i64(1)), op.Unsqueeze(ends, g.i64(1)), axis=1)
