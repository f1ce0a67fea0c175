"""Kaldi fbank as ONNX ops: framing, DC removal, pre-emphasis, window, FFT, mel, log.

Only ops every execution provider has (Slice/Concat/Reshape/MatMul/elementwise; no
STFT/DFT, which have no CUDA kernel and run 3-5x slower on CPU than a MatMul DFT).

- Framing cuts the waveform into chunks of gcd(frame length, shift) samples and
  concatenates strided slices of them: a copy, where a Gather of frame indices costs as
  much as the whole FFT on CPU. Frames that reflect at the edges (snip_edges=False)
  first build the reflected signal with one GatherElements over the samples.
- Each frame's DC offset is removed explicitly (ReduceMean, Sub): folding it into the
  DFT matrix leaves float32 residue where Kaldi gives exact zeros, and log turns that
  residue into errors of 3 or more on silent stretches with an offset.
- Pre-emphasis is applied per frame (x[i] - c x[i-1], x[0] - c x[0]), as Kaldi does;
  over the whole signal it is wrong at every frame's first sample.
- The FFT is split in two stages (N = N1 x N2, Cooley-Tukey) written as MatMuls, about
  4x fewer multiply-adds than a dense DFT; the twiddle factors are folded into the
  second stage's matrices and the bin order into the mel matrix.
- A power-of-two input scale is folded into the window (exact); others are a Mul.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from svsurgery.frontend._ops import GraphOps
from svsurgery.frontend.kaldi_math import mel_banks, window_function
from svsurgery.frontend.options import FbankOptions

__all__ = ["FftPlan", "fbank_graph"]

_FLT_EPSILON = float(np.finfo(np.float32).eps)
_MAX_FRAME_CHUNKS = 64  # beyond this many chunks per frame, framing uses a Gather


@dataclasses.dataclass(frozen=True)
class FftPlan:
    """A real-input DFT of ``size`` points, bins 0 .. size/2 - 1, as two MatMul stages.

    Sample n = n2_count * n1 + n2 (n1 < rows, the frame's nonzero part), bin
    k = k1 + n1_count * k2. ``n1_count == 1`` means a single dense DFT.
    """

    size: int
    frame_length: int
    n1_count: int
    n2_count: int
    k2_start: int = 0  # bins below k2_start * n1_count are left to the dense low-bin DFT

    @classmethod
    def choose(cls, size: int, frame_length: int) -> FftPlan:
        best = cls(size, frame_length, 1, size)
        for n1 in range(2, size):
            if size % n1 == 0:
                candidate = cls(size, frame_length, n1, size // n1)
                if candidate.cost < best.cost:
                    best = candidate
        return best

    @property
    def rows(self) -> int:
        """Rows of the [rows, n2_count] frame matrix holding the nonzero samples."""
        return -(-self.frame_length // self.n2_count)

    @property
    def k2_end(self) -> int:
        return -(-(self.size // 2) // self.n1_count)

    @property
    def k2_count(self) -> int:
        """Output k2 values computed: k2_start .. k2_end - 1."""
        return self.k2_end - self.k2_start

    def skipping_low_bins(self, bins: int) -> FftPlan:
        """The same plan, leaving the first ``bins`` (rounded up to whole k2 rows) to another DFT."""
        return dataclasses.replace(self, k2_start=min(-(-bins // self.n1_count), self.k2_end))

    @property
    def low_bins(self) -> int:
        return self.k2_start * self.n1_count

    @property
    def multiply_adds(self) -> int:
        if self.n1_count == 1:
            return self.frame_length * self.size
        return self._stage1 + self._stage2

    @property
    def cost(self) -> float:
        """Multiply-adds, stage 1 counted twice: it runs as one small GEMM per frame, at about
        half the throughput of stage 2's large GEMMs (measured with onnxruntime's CPU MLAS;
        for 512 points this picks 16 x 32, the fastest of 8/16/32/64 x 512/n)."""
        if self.n1_count == 1:
            return float(self.multiply_adds)
        return 2.0 * self._stage1 + self._stage2

    @property
    def _stage1(self) -> int:
        return self.rows * self.n2_count * 2 * self.n1_count

    @property
    def _stage2(self) -> int:
        return self.n1_count * 2 * self.n2_count * 2 * self.k2_count

    def bin_order(self) -> np.ndarray:
        """FFT bin of each output column, in the order the graph produces them (-1: unused)."""
        if self.n1_count == 1:
            return np.arange(self.size // 2)
        k1 = np.arange(self.n1_count)[:, None]
        k2 = np.arange(self.k2_start, self.k2_end)[None, :]
        order = (k1 + self.n1_count * k2).reshape(-1)
        return np.where(order < self.size // 2, order, -1)


def _stage_matrices(plan: FftPlan) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 [2*N1, rows] (rows (k1, re/im)) and stage 2 [N1, 2*N2, 2*K2] with twiddles."""
    n1_count, n2_count, k2_count = plan.n1_count, plan.n2_count, plan.k2_count
    angle1 = -2 * np.pi * np.outer(np.arange(n1_count), np.arange(plan.rows)) / n1_count
    stage1 = np.stack([np.cos(angle1), np.sin(angle1)], axis=1).reshape(2 * n1_count, plan.rows)
    n2 = np.arange(n2_count)
    k2 = np.arange(plan.k2_start, plan.k2_end)
    stage2 = np.zeros((n1_count, 2 * n2_count, 2 * k2_count))
    for k1 in range(n1_count):
        twiddled = np.exp(-2j * np.pi * k1 * n2 / plan.size)[:, None] * np.exp(
            -2j * np.pi * np.outer(n2, k2) / n2_count
        )  # [n2, k2]: input (re, im) rows -> output (re | im) columns
        stage2[k1, :n2_count, :k2_count] = twiddled.real
        stage2[k1, :n2_count, k2_count:] = twiddled.imag
        stage2[k1, n2_count:, :k2_count] = -twiddled.imag
        stage2[k1, n2_count:, k2_count:] = twiddled.real
    return stage1, stage2


def _is_power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(abs(value))
    return mantissa == 0.5


def _frame_counts(g: GraphOps, lengths: ir.Value, opts: FbankOptions) -> ir.Value:
    """Kaldi's NumFrames per row; integer Div truncates toward zero, so short rows are clamped."""
    op, frame = g.op, opts.frame_opts
    size, shift = frame.window_size, frame.window_shift
    if frame.snip_edges:
        full = op.Add(op.Div(op.Sub(lengths, g.i64(size)), g.i64(shift)), g.i64(1))
        return op.Where(op.GreaterOrEqual(lengths, g.i64(size)), full, g.i64(0))
    return op.Div(op.Add(lengths, g.i64(shift // 2)), g.i64(shift))


def _reflected_signal(g: GraphOps, samples: ir.Value, lengths: ir.Value, count: ir.Value, opts) -> ir.Value:
    """[B, E] with E = (T-1)*shift + size samples: frame t starts at t*shift, each row
    reflected at its own length as Kaldi does (s < 0 -> -s-1, s >= N -> 2N-1-s, repeatedly)."""
    op, frame = g.op, opts.frame_opts
    size, shift = frame.window_size, frame.window_shift
    offset = shift // 2 - size // 2  # where frame 0 starts in the original signal
    extent = op.Max(op.Add(op.Mul(op.Sub(count, g.i64(1)), g.i64(shift)), g.i64(size)), g.i64(0))
    positions = op.Add(op.Unsqueeze(g.range_(extent), g.i64(0)), g.i64(offset))  # [1, E]
    row_length = op.Unsqueeze(op.Max(lengths, g.i64(1)), g.i64(1))  # [B, 1]; empty rows are masked later
    period = op.Mul(row_length, g.i64(2))
    folded = op.Mod(positions, period)  # integer Mod takes the divisor's sign: 0 <= folded < 2N
    index = op.Where(op.Less(folded, row_length), folded, op.Sub(op.Sub(period, g.i64(1)), folded))
    return op.GatherElements(samples, index, axis=1)


def _frames(g: GraphOps, signal: ir.Value, count: ir.Value, opts: FbankOptions) -> ir.Value:
    """[B, T, size]: frame t is signal[t*shift : t*shift + size]; signal holds enough samples."""
    op, frame = g.op, opts.frame_opts
    size, shift = frame.window_size, frame.window_shift
    chunk = math.gcd(size, shift)
    per_frame, per_shift = size // chunk, shift // chunk
    batch = g.dim(signal, 0)
    if per_frame > _MAX_FRAME_CHUNKS:
        starts = op.Mul(g.range_(count), g.scalar_i64(shift))
        index = op.Add(op.Unsqueeze(starts, g.i64(1)), g.const(np.arange(size, dtype=np.int64)[None, :]))
        return op.Gather(signal, index, axis=1)
    chunk_count = op.Add(op.Mul(count, g.i64(per_shift)), g.i64(per_frame - per_shift))
    padded = op.Pad(signal, g.i64(0, 0, 0, size))  # so short rows still fill the chunk grid
    used = op.Slice(padded, g.i64(0), op.Mul(chunk_count, g.i64(chunk)), g.i64(1))
    chunks = op.Reshape(used, op.Concat(batch, chunk_count, g.i64(chunk), axis=0))
    last_start = op.Mul(op.Sub(count, g.i64(1)), g.i64(per_shift))
    pieces = []
    for j in range(per_frame):
        # end is clamped at 0: a negative end would count from the back and yield frames when T = 0
        end = op.Max(op.Add(last_start, g.i64(j + 1)), g.i64(0))
        pieces.append(op.Slice(chunks, g.i64(j), end, g.i64(1), g.i64(per_shift)))
    return op.Concat(*pieces, axis=2) if len(pieces) > 1 else pieces[0]


def fbank_graph(
    g: GraphOps, waveform: ir.Value, lengths: ir.Value, opts: FbankOptions
) -> tuple[ir.Value, ir.Value]:
    """Kaldi fbank of each row: features [B, T, D] and frame counts [B] int64.

    Frames past a row's count hold whatever the padding gave; mask them (build does).
    """
    opts.validate()
    op, frame = g.op, opts.frame_opts
    window = window_function(frame)
    scale_in_window = _is_power_of_two(opts.input_scale) and not opts.use_energy
    samples = waveform
    if opts.input_scale != 1.0 and not scale_in_window:
        samples = op.Mul(samples, g.f32(opts.input_scale))
    elif scale_in_window:
        window = window * opts.input_scale  # exact: scaling by 2^k commutes with float rounding

    lengths = op.Min(op.Max(lengths, g.i64(0)), g.dim(waveform, 1))
    counts = _frame_counts(g, lengths, opts)
    count = g.reduce("ReduceMax", counts, [0], keepdims=True)  # T, frames of the longest row
    # One frame more than needed, cut off at the end: onnxruntime runs a MatMul with a single
    # row through a GEMV kernel that rounds differently from its GEMM, so a one-frame row
    # alone would not be bit-identical to the same row inside a batch.
    computed = op.Add(count, g.i64(1))
    signal = samples if frame.snip_edges else _reflected_signal(g, samples, lengths, computed, opts)
    frames = _frames(g, signal, computed, opts)  # [B, T + 1, size]

    raw = frames
    mean = g.reduce("ReduceMean", raw, [-1], keepdims=True) if frame.remove_dc_offset else None
    centred = op.Sub(raw, mean) if mean is not None else raw
    energy = None
    if opts.use_energy and opts.raw_energy:
        energy = g.reduce("ReduceSumSquare", centred, [-1], keepdims=True)
    frames = centred
    if frame.preemph_coeff != 0.0:
        frames = _preemphasis(g, raw, mean, frame.preemph_coeff)
    frames = op.Mul(frames, g.const(window))
    if opts.use_energy and not opts.raw_energy:
        energy = g.reduce("ReduceSumSquare", frames, [-1], keepdims=True)

    banks = mel_banks(opts.mel_opts, frame)
    mel = _mel_energies(g, centred, frames, banks, window, frame, opts.use_power)
    if opts.mel_opts.htk_mode:
        mel = op.Max(mel, g.f32(1.0))
    if opts.use_log_fbank:
        mel = op.Log(op.Max(mel, g.f32(_FLT_EPSILON)))
    features = mel
    if energy is not None:
        log_energy = op.Log(op.Max(energy, g.f32(_FLT_EPSILON)))
        if opts.energy_floor > 0:
            log_energy = op.Max(log_energy, g.f32(math.log(opts.energy_floor)))
        columns = [mel, log_energy] if opts.htk_compat else [log_energy, mel]
        features = op.Concat(*columns, axis=2)

    return op.Slice(features, g.i64(0), count, g.i64(1)), counts


def _add_halves(g: GraphOps, squared: ir.Value, half: int) -> ir.Value:
    """re^2 + im^2 from [..., re | im]; two Slices and an Add (a ReduceSum over a middle
    axis of size 2 runs ~30x slower in onnxruntime's CPU kernels)."""
    op = g.op
    real = op.Slice(squared, g.i64(0), g.i64(half), g.i64(-1))
    imaginary = op.Slice(squared, g.i64(half), g.i64(2 * half), g.i64(-1))
    return op.Add(real, imaginary)


def _previous_sample(g: GraphOps, frames: ir.Value) -> ir.Value:
    """x[i-1] along the last axis, with x[-1] := x[0] (Kaldi's first-sample rule)."""
    op = g.op
    first = op.Slice(frames, g.i64(0), g.i64(1), g.i64(-1))
    all_but_last = op.Slice(frames, g.i64(0), g.i64(-1), g.i64(-1))
    return op.Concat(first, all_but_last, axis=-1)


def _preemphasis(g: GraphOps, raw: ir.Value, mean: ir.Value | None, coeff: float) -> ir.Value:
    """Kaldi's x'[i] - c x'[i-1] (x' the DC-free frame), computed as
    (x[i] - x[i-1]) + (1 - c) x'[i-1].

    The two are equal in exact arithmetic; in float32 the first cancels two large numbers
    at low frequencies (pre-emphasis exists to attenuate them), leaving a rounding error
    of ~eps |x| per sample that dominates the quiet low mel bins. The difference of raw
    samples is exact for 16-bit audio, and the remaining term is 30x smaller, so the
    result is several times closer to the float64 statement than Kaldi's own float32.
    """
    op = g.op
    previous = _previous_sample(g, raw)
    step = op.Sub(raw, previous)
    previous_centred = op.Sub(previous, mean) if mean is not None else previous  # = x'[i-1], same rounding
    return op.Add(step, op.Mul(previous_centred, g.f32(1.0 - coeff)))


# FFT bins below this are computed by a dense DFT even when the rest uses the split FFT:
# pre-emphasis leaves speech ~30 dB quieter below ~250 Hz, and the split FFT's intermediate
# rounding (relative to the frame's total energy) cost up to 2e-3 in those mel bins, against
# 5e-4 for the dense DFT. 16 bins (500 Hz at 16 kHz / 512 points) add ~25 % multiply-adds.
_DENSE_LOW_BINS = 16


def _mel_energies(
    g: GraphOps,
    centred: ir.Value,
    windowed: ir.Value,
    banks: np.ndarray,
    window: np.ndarray,
    frame,
    use_power: bool,
):
    """Mel energies [B, T, bins]: |DFT|^2 (or |DFT|) of the windowed frames through the mel matrix.

    The low bins come from the DC-free frames through one matrix with pre-emphasis and the
    window folded in (exact linear algebra, computed in float64): pre-emphasis attenuates
    those bins ~30 dB, and computing it per sample first would leave the float32 rounding
    of the loud signal on top of them.
    """
    op = g.op
    size, frame_length = frame.padded_window_size, frame.window_size
    plan = FftPlan.choose(size, frame_length)
    if plan.n1_count > 1:
        plan = plan.skipping_low_bins(_DENSE_LOW_BINS)
    dense_bins = size // 2 if plan.n1_count == 1 else plan.low_bins
    # y = x P then y * w is x (P diag(w)): P's columns scaled by the window
    transform = _preemphasis_matrix(frame_length, frame.preemph_coeff) * window[None, :]
    power = _dense_power(g, centred, transform, size, dense_bins)
    if not use_power:
        power = op.Sqrt(power)
    mel = op.MatMul(power, g.const(banks[:dense_bins]))
    if plan.n1_count == 1:
        return mel
    split = _split_power(g, windowed, plan)
    if not use_power:
        split = op.Sqrt(split)
    order = plan.bin_order()
    used = order >= dense_bins  # bins the dense DFT already covered get no weight here
    split_banks = np.where(used[:, None], banks[np.where(used, order, 0)], 0.0)
    return op.Add(mel, op.MatMul(split, g.const(split_banks)))


def _preemphasis_matrix(length: int, coeff: float) -> np.ndarray:
    """P with (x P)[i] = x[i] - c x[i-1] for i > 0 and (1 - c) x[0] (row vector x)."""
    matrix = np.eye(length)
    matrix[np.arange(length - 1), np.arange(1, length)] = -coeff
    matrix[0, 0] = 1.0 - coeff
    return matrix


def _dense_power(g: GraphOps, frames: ir.Value, transform: np.ndarray, size: int, bins: int) -> ir.Value:
    """|DFT|^2 of bins 0 .. bins-1 of (frames @ transform) by one MatMul; ``transform`` is a
    [frame_length, frame_length] matrix (pre-emphasis and window) or a [frame_length, 1] window."""
    op = g.op
    frame_length = transform.shape[0]
    angle = -2 * np.pi * np.outer(np.arange(frame_length), np.arange(bins)) / size
    dft = np.concatenate([np.cos(angle), np.sin(angle)], axis=1)
    matrix = transform @ dft if transform.shape[1] == frame_length else transform * dft
    spectrum = op.MatMul(frames, g.const(matrix))
    return _add_halves(g, op.Mul(spectrum, spectrum), bins)


def _split_power(g: GraphOps, frames: ir.Value, plan: FftPlan) -> ir.Value:
    """|DFT|^2 of each windowed frame, [B, T, bins] in the plan's bin order."""
    op = g.op
    # [B, -1, ...] rather than [B, T, ...]: Reshape reads a 0 as "keep that axis" (before allowzero)
    leading = op.Concat(g.dim(frames, 0), g.i64(-1), axis=0)
    frame_length = plan.frame_length
    stage1, stage2 = _stage_matrices(plan)
    n1, n2, rows, k2 = plan.n1_count, plan.n2_count, plan.rows, plan.k2_count
    if rows * n2 > frame_length:
        frames = op.Pad(frames, g.i64(0, 0, 0, 0, 0, rows * n2 - frame_length))
    matrix = op.Reshape(frames, g.i64(-1, rows, n2))  # [BT, rows, N2]: sample n2_count*row + column
    partial = op.MatMul(g.const(stage1), matrix)  # [BT, (k1, re/im), N2]
    partial = op.Transpose(op.Reshape(partial, g.i64(-1, n1, 2 * n2)), perm=[1, 0, 2])  # [N1, BT, 2*N2]
    spectrum = op.MatMul(partial, g.const(stage2))  # [N1, BT, (re | im) x K2]
    power = _add_halves(g, op.Mul(spectrum, spectrum), k2)  # [N1, BT, K2]
    power = op.Transpose(power, perm=[1, 0, 2])  # [BT, N1, K2]
    return op.Reshape(power, op.Concat(leading, g.i64(n1 * k2), axis=0))
