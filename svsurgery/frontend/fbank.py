"""Kaldi fbank as ONNX ops: every linear step folded into a few matrices, time on the last axis.

Only ops every execution provider has (Slice/Concat/Reshape/Transpose/MatMul/elementwise,
MaxPool; no STFT/DFT, which have no CUDA kernel and run ~20x slower on CPU than this graph).
Frames are never materialised as [T, 400] rows that separate ops then centre, pre-emphasise
and window; the waveform is used as segments of ``window_shift`` samples:

- **References.** Every row is taken relative to its first sample (``D = x - x[0]``): exact for
  16-bit audio, and it removes a recording's DC offset before anything is multiplied by a
  large coefficient. Kaldi's per-frame DC removal is linear, so it is folded into the matrices
  below through each frame's mean (a column of the low-bin product), never subtracted sample
  by sample. A frame whose samples are all equal is detected exactly (per-block max == min,
  MaxPool over the frame's blocks) and gets Kaldi's zero spectrum, whatever its level.
- **Low bins** (below 500 Hz): one MatMul over the segments computes, for every segment and
  every frame position it can take, its share of the low DFT bins of the DC-free,
  pre-emphasised, windowed frame (pre-emphasis and window folded in, float64 -> float32);
  a frame's bins are the sum of its ``ceil(L/S)`` segments' shares. Pre-emphasis attenuates
  these bins ~30 dB; computing them from the un-emphasised samples through one matrix keeps
  their error relative to their own size (a float32 FFT of the pre-emphasised frame, as
  kaldi-native-fbank does, has errors of ~1e-3 there on speech).
- **The other bins**: a two-stage Cooley-Tukey DFT (N = N1 x C) on the waveform pre-emphasised
  once per row (``H = D - c D[-1]``). Stage 1 is one batched MatMul per column c of a frame
  laid out as [C, R rows, T] (window and twiddle factors folded into its [2 K1, R] matrix),
  stage 2 one shared [C, 2C] MatMul per real/imaginary part; what the per-row pre-emphasis
  gets wrong (the frame's first sample, DC removal) enters stage 1 as two extra rows per
  frame. Time stays the last axis from framing to the mel matrix, so no stage needs a
  per-frame transpose; the one layout change (samples to column-major) is a MatMul with an
  identity matrix, which onnxruntime runs as a blocked transpose and cannot merge with the
  framing transpose into its slow general-permutation kernel.
- Power is re^2 + im^2 of the two stage-2 products, the mel matrix reads the power rows in
  their computed order (bins below 500 Hz weighted 0 there, taken from the low-bin product),
  then Kaldi's floors and log.

Accuracy (``bench/frontend.py --accuracy``): max abs ~2e-4 from the float64 statement on 60 s
of speech (kaldi-native-fbank: ~8e-4 to 1.4e-3), mean ~1e-6.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from svsurgery.frontend._ops import GraphOps
from svsurgery.frontend.kaldi_math import mel_banks, window_function
from svsurgery.frontend.options import FbankOptions

__all__ = ["FbankPlan", "fbank_graph"]

_FLT_EPSILON = float(np.finfo(np.float32).eps)
# FFT bins below this frequency come from the dense low-bin product (see the module docstring).
_LOW_BINS_HZ = 500.0


@dataclasses.dataclass(frozen=True)
class FbankPlan:
    """The matrices of one fbank configuration (all float64; the graph stores float32).

    ``columns`` (C) divides both the FFT size N and the frame shift S; the FFT is N1 x C with
    N1 = N / C, frames are R = ceil(L / C) rows of C samples, and combs k1' = 0 .. N1 // 2 of
    stage 1 carry every bin through conjugate symmetry. ``low_bins`` bins come from the
    dense low-bin product instead (0 without pre-emphasis).
    """

    opts: FbankOptions
    columns: int
    low_bins: int

    @classmethod
    def choose(cls, opts: FbankOptions) -> FbankPlan:
        """The column count with the fewest multiply-adds in the two FFT stages."""
        frame = opts.frame_opts
        size, shift = frame.padded_window_size, frame.window_shift
        low = 0
        if frame.preemph_coeff != 0.0:
            low = min(size // 2, math.ceil(_LOW_BINS_HZ * size / frame.samp_freq))
        candidates = [cls(opts, c, low) for c in range(1, math.gcd(size, shift) + 1) if math.gcd(size, shift) % c == 0]
        return min(candidates, key=lambda plan: plan.multiply_adds)

    # -- sizes ----------------------------------------------------------------------------
    @property
    def frame(self):
        return self.opts.frame_opts

    @property
    def size(self) -> int:
        return self.frame.padded_window_size

    @property
    def length(self) -> int:
        return self.frame.window_size

    @property
    def shift(self) -> int:
        return self.frame.window_shift

    @property
    def phases(self) -> int:
        """Q: segments a frame touches (its last one possibly in part)."""
        return -(-self.length // self.shift)

    @property
    def n1(self) -> int:
        return self.size // self.columns

    @property
    def combs(self) -> int:
        """K1: stage-1 outputs k1' = 0 .. N1 // 2, each the comb of bins k1' + N1 k2 (and mirrors)."""
        return self.n1 // 2 + 1

    @property
    def rows(self) -> int:
        """R: rows of C samples holding a frame."""
        return -(-self.length // self.columns)

    @property
    def phase_rows(self) -> list[int]:
        """Rows a frame takes from each of its segments."""
        shift, columns = self.shift, self.columns
        return [-(-(min(self.length, (q + 1) * shift) - q * shift) // columns) for q in range(self.phases)]

    @property
    def block(self) -> int:
        """Samples per block of the energy sums: a frame's parts are whole blocks."""
        return math.gcd(self.shift, self.length)

    @property
    def part_lengths(self) -> list[int]:
        """Samples a frame takes from each of its segments."""
        return [min(self.length, (q + 1) * self.shift) - q * self.shift for q in range(self.phases)]

    @property
    def extras(self) -> list[str]:
        """Per-frame values entering stage 1 besides the frame's rows (see extra_patterns)."""
        steps = [f"step{q}" for q in range(1, self.phases)]
        starts = [f"start{q}" for q in range(1, self.phases)] if self.frame.preemph_coeff != 0.0 else []
        return [*steps, "mean" if self.frame.remove_dc_offset else "level", *starts]

    @property
    def multiply_adds(self) -> int:
        stage1 = 2 * self.combs * (self.rows + len(self.extras)) * self.columns
        return stage1 + (2 * self.columns) ** 2 * self.combs

    # -- the linear statement ----------------------------------------------------------------
    def _window(self) -> np.ndarray:
        return window_function(self.frame) * self.opts.input_scale

    def frame_map(self) -> np.ndarray:
        """[L, L] M with y = v M for a frame v (a row vector): DC removal, then pre-emphasis
        with Kaldi's first-sample rule (x[0] - c x[0])."""
        length, coeff = self.length, self.frame.preemph_coeff
        centre = np.eye(length) - (np.full((length, length), 1.0 / length) if self.frame.remove_dc_offset else 0.0)
        emphasis = np.eye(length)
        emphasis[np.arange(length - 1), np.arange(1, length)] = -coeff
        emphasis[0, 0] = 1.0 - coeff
        return centre @ emphasis

    def extra_patterns(self) -> np.ndarray:
        """[extras, L]: how each extra value enters y (the frame after DC removal and
        pre-emphasis) when stage 1 reads H, each segment taken relative to its first sample and
        pre-emphasised within itself (H = D - c D[-1], D[-1] := 0 at a segment's start).

        With v the frame relative to its first sample, part q of it is segment t+q's D plus
        step q (its first sample minus the frame's); y[i] = v[i] - c v[i-1] - (1 - c) mean:
        ``step q`` enters part q with 1 - c, ``mean`` every sample with -(1 - c), ``start q``
        (c times the step into segment t+q from the sample before it) its first sample. Without
        DC removal ``level`` (the frame's first sample, x = v + level) enters every sample with
        1 - c.
        """
        length, shift, coeff = self.length, self.shift, self.frame.preemph_coeff
        part = np.arange(length) // shift
        rows = [(1.0 - coeff) * (part == q) for q in range(1, self.phases)]
        rows.append(np.full(length, -(1.0 - coeff) if self.frame.remove_dc_offset else 1.0 - coeff))
        if coeff != 0.0:
            for q in range(1, self.phases):
                start = np.zeros(length)
                start[q * shift] = 1.0
                rows.append(start)
        return np.array(rows)

    def low_functionals(self) -> np.ndarray:
        """[L, 2 K]: re | im of the low bins as functionals of the frame v."""
        angle = -2 * np.pi * np.outer(np.arange(self.length), np.arange(self.low_bins)) / self.size
        dft = np.concatenate([np.cos(angle), np.sin(angle)], axis=1)
        return self.frame_map() @ (self._window()[:, None] * dft)

    @property
    def low_width(self) -> int:
        """F: columns of the segment product: low bins re | im, then one part sum per phase."""
        return 2 * self.low_bins + self.phases

    def segment_matrix(self) -> np.ndarray:
        """[S, Q x F]: a segment's share of each per-frame value when it is part q of a frame.

        The low bins use each part's functional with its mean removed, so a segment's level
        (its first sample, the steps between segments) never meets these weights; what the
        part means contribute is added per frame from the part sums (``part_responses``), whose
        differences are small. A constant frame gives exact zeros.
        """
        functionals, bins = self.low_functionals(), 2 * self.low_bins
        out = np.zeros((self.shift, self.phases, self.low_width))
        for q, count in enumerate(self.part_lengths):
            part = functionals[q * self.shift : q * self.shift + count]
            out[:count, q, :bins] = part - part.mean(axis=0, keepdims=True)
            out[:count, q, bins + q] = 1.0
        return out.reshape(self.shift, -1)

    def part_responses(self) -> np.ndarray:
        """[Q, 2 K]: the low bins of a frame whose part q is 1 and the rest 0."""
        functionals = self.low_functionals()
        return np.array([functionals[q * self.shift : q * self.shift + n].sum(axis=0) for q, n in enumerate(self.part_lengths)])

    def stage1(self) -> np.ndarray:
        """[C, 2 K1, R + extras]: per column c, rows (re k1' | im k1') of the twiddled, windowed
        N1-point DFT over the frame's rows r (sample C r + c), then the extras' columns."""
        columns, combs, rows, length = self.columns, self.combs, self.rows, self.length
        window, patterns = self._window(), self.extra_patterns()
        k1 = np.arange(combs)
        out = np.zeros((columns, 2 * combs, rows + len(patterns)))
        for c in range(columns):
            position = columns * np.arange(rows) + c
            inside = position < length
            position = np.minimum(position, length - 1)
            phase = np.exp(-2j * np.pi * np.outer(k1, np.arange(rows)) / self.n1)
            phase *= np.exp(-2j * np.pi * k1 * c / self.size)[:, None]
            weights = phase * np.where(inside, window[position], 0.0)[None, :]
            extras = weights @ np.where(inside[None, :], patterns[:, position], 0.0).T
            out[c, :combs] = np.concatenate([weights.real, extras.real], axis=1)
            out[c, combs:] = np.concatenate([weights.imag, extras.imag], axis=1)
        return out

    def stage2(self) -> tuple[np.ndarray, np.ndarray]:
        """([C, 2C], [C, 2C]): real and imaginary part of the C-point DFT over columns, inputs
        ordered (c, re/im)."""
        columns = self.columns
        dft = np.exp(-2j * np.pi * np.outer(np.arange(columns), np.arange(columns)) / columns).T  # [k2, c]
        real, imaginary = np.zeros((columns, 2 * columns)), np.zeros((columns, 2 * columns))
        real[:, 0::2], real[:, 1::2] = dft.real, -dft.imag
        imaginary[:, 0::2], imaginary[:, 1::2] = dft.imag, dft.real
        return real, imaginary

    def bin_table(self) -> np.ndarray:
        """[C x K1]: the FFT bin (0 .. N/2) of each power row (k2, k1'), -1 where it repeats one."""
        k = np.arange(self.combs)[None, :] + self.n1 * np.arange(self.columns)[:, None]
        bins = np.where(k <= self.size // 2, k, self.size - k).reshape(-1)
        first = np.zeros(bins.size, bool)
        first[np.unique(bins, return_index=True)[1]] = True
        if set(bins.tolist()) != set(range(self.size // 2 + 1)):
            raise AssertionError(f"{self}: the two-stage DFT misses bins")
        return np.where(first, bins, -1)

    def power_weights(self, banks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weights over the power rows of stage 2 and over the low bins' re^2 | im^2 for a
        [N/2 + 1, k] matrix of per-bin weights (mel banks, Parseval's energy weights)."""
        table = self.bin_table()
        high = np.zeros((table.size, banks.shape[1]))
        used = table >= self.low_bins
        high[used] = banks[table[used]]
        low = banks[: self.low_bins]
        return high, np.concatenate([low, low], axis=0)

    def banks(self) -> np.ndarray:
        """[N/2 + 1, bins]: Kaldi's mel banks (no weight on the Nyquist bin)."""
        banks = mel_banks(self.opts.mel_opts, self.frame)
        return np.concatenate([banks, np.zeros((1, banks.shape[1]))], axis=0)

    def parseval(self) -> np.ndarray:
        """[N/2 + 1, 1]: sum of the windowed frame's squares from its half spectrum."""
        weights = np.full(self.size // 2 + 1, 2.0 / self.size)
        weights[0] = weights[-1] = 1.0 / self.size
        return weights[:, None]


def _frame_counts(g: GraphOps, lengths: ir.Value, opts: FbankOptions) -> ir.Value:
    """Kaldi's NumFrames per row; integer Div truncates toward zero, so short rows are clamped."""
    op, frame = g.op, opts.frame_opts
    size, shift = frame.window_size, frame.window_shift
    if frame.snip_edges:
        full = op.Add(op.Div(op.Sub(lengths, g.i64(size)), g.i64(shift)), g.i64(1))
        return op.Where(op.GreaterOrEqual(lengths, g.i64(size)), full, g.i64(0))
    return op.Div(op.Add(lengths, g.i64(shift // 2)), g.i64(shift))


def _framing_signal(g: GraphOps, samples: ir.Value, lengths: ir.Value, extent: ir.Value, opts) -> ir.Value:
    """[B, extent] samples from frame 0's first sample on: the waveform itself (snip_edges), or
    each row reflected at its own length as Kaldi does (s < 0 -> -s-1, s >= N -> 2N-1-s,
    repeatedly); samples past a row's end are whatever the batch holds there."""
    op, frame = g.op, opts.frame_opts
    if frame.snip_edges:
        kept = op.Slice(samples, g.i64(0), extent, g.i64(1))
        missing = op.Max(op.Sub(extent, g.dim(kept, 1)), g.i64(0))
        return op.Pad(kept, op.Concat(g.i64(0, 0, 0), missing, axis=0))
    offset = frame.window_shift // 2 - frame.window_size // 2  # where frame 0 starts in the original signal
    positions = op.Add(op.Unsqueeze(g.range_(extent), g.i64(0)), g.i64(offset))  # [1, E]
    row_length = op.Unsqueeze(op.Max(lengths, g.i64(1)), g.i64(1))  # [B, 1]; empty rows are masked later
    period = op.Mul(row_length, g.i64(2))
    folded = op.Mod(positions, period)  # integer Mod takes the divisor's sign: 0 <= folded < 2N
    index = op.Where(op.Less(folded, row_length), folded, op.Sub(op.Sub(period, g.i64(1)), folded))
    return op.GatherElements(samples, index, axis=1)


def fbank_graph(
    g: GraphOps, waveform: ir.Value, lengths: ir.Value, opts: FbankOptions
) -> tuple[ir.Value, ir.Value]:
    """Kaldi fbank of each row: features [B, T, D] and frame counts [B] int64.

    Frames past a row's count hold whatever the padding gave; mask them (build does). A row's
    valid frames do not depend on the rest of the batch.
    """
    opts.validate()
    plan = FbankPlan.choose(opts)
    op = g.op
    lengths = op.Min(op.Max(lengths, g.i64(0)), g.dim(waveform, 1))
    counts = _frame_counts(g, lengths, opts)
    count = g.reduce("ReduceMax", counts, [0], keepdims=True)  # T, frames of the longest row
    # One frame more than needed, cut off at the end: onnxruntime runs a MatMul with a single
    # column or row through a GEMV kernel that rounds differently from its GEMM, so a one-frame
    # row alone would not be bit-identical to the same row inside a batch.
    computed = op.Add(count, g.i64(1))
    segments = op.Add(computed, g.i64(plan.phases - 1))
    signal = _framing_signal(g, waveform, lengths, op.Mul(segments, g.i64(plan.shift)), opts)  # [B, Ns S]
    features = _features(g, signal, computed, segments, plan)
    return op.Slice(features, g.i64(0), count, g.i64(1)), counts


def _features(g: GraphOps, signal: ir.Value, computed: ir.Value, segments: ir.Value, plan: FbankPlan) -> ir.Value:
    """[B, T', D] features of frames 0 .. T'-1 (T' = ``computed``) of ``signal`` [B, Ns S]."""
    op, opts, frame = g.op, plan.opts, plan.frame
    batch = g.dim(signal, 0)
    pieces = op.Reshape(signal, op.Concat(batch, segments, g.i64(plan.shift), axis=0))  # [B, Ns, S]
    first = op.Slice(pieces, g.i64(0), g.i64(1), g.i64(2))  # [B, Ns, 1]: each segment's reference
    relative = op.Sub(pieces, first)  # exact for 16-bit audio, 0 for a constant segment
    firsts = op.Squeeze(first, g.i64(2))  # [B, Ns]
    steps = [op.Sub(_frames_of(g, firsts, q, computed), _frames_of(g, firsts, 0, computed)) for q in range(plan.phases)]

    low, mean, totals = _low_bins(g, relative, steps, firsts, computed, plan)
    extras = steps[1:] + [mean if frame.remove_dc_offset else _frames_of(g, firsts, 0, computed)]
    emphasised = relative
    if frame.preemph_coeff != 0.0:
        previous = op.Pad(op.Slice(relative, g.i64(0), g.i64(-1), g.i64(2)), g.i64(0, 0, 1, 0, 0, 0))
        emphasised = op.Sub(relative, op.Mul(previous, g.f32(frame.preemph_coeff)))  # within each segment
        lasts = op.Squeeze(op.Slice(pieces, g.i64(-1), g.i64(plan.shift), g.i64(2)), g.i64(2))  # [B, Ns]
        jumps = op.Pad(op.Sub(op.Slice(firsts, g.i64(1), g.i64(_BIG), g.i64(1)), op.Slice(lasts, g.i64(0), g.i64(-1), g.i64(1))), g.i64(0, 1, 0, 0))
        jumps = op.Mul(jumps, g.f32(frame.preemph_coeff))  # [B, Ns]: c (x[S s] - x[S s - 1])
        extras += [_frames_of(g, jumps, q, computed) for q in range(1, plan.phases)]
    power = _two_stage_power(g, emphasised, extras, batch, computed, segments, plan)  # [B, C K1, T'] (or magnitude)

    energy_from_spectrum = opts.use_energy and not opts.raw_energy
    weights = plan.banks()
    if energy_from_spectrum and opts.use_power:
        weights = np.concatenate([weights, plan.parseval()], axis=1)
    high, low_weights = plan.power_weights(weights)
    spectrum = op.Transpose(op.MatMul(g.const(high.T), power), perm=[0, 2, 1])  # [B, T', bins (+1)]
    if plan.low_bins:
        squares = op.Mul(low, low)  # [B, T', 2K]
        if opts.use_power:
            spectrum = op.Add(spectrum, op.MatMul(squares, g.const(low_weights)))
        else:
            pairs = op.Reshape(squares, op.Concat(batch, computed, g.i64(2, plan.low_bins), axis=0))
            magnitude = op.Sqrt(g.reduce("ReduceSum", pairs, [2], keepdims=False))
            spectrum = op.Add(spectrum, op.MatMul(magnitude, g.const(low_weights[: plan.low_bins])))

    mel, energy, bins = spectrum, None, opts.mel_opts.num_bins
    if energy_from_spectrum and opts.use_power:
        mel = op.Slice(spectrum, g.i64(0), g.i64(bins), g.i64(2))
        energy = op.Slice(spectrum, g.i64(bins), g.i64(bins + 1), g.i64(2))
    elif opts.use_energy:
        energy = _energy(g, relative, steps, mean, totals, firsts, low, power, computed, plan)
    if opts.mel_opts.htk_mode:
        mel = op.Max(mel, g.f32(1.0))
    if opts.use_log_fbank:
        mel = op.Log(op.Max(mel, g.f32(_FLT_EPSILON)))
    if energy is None:
        return mel
    log_energy = op.Log(op.Max(energy, g.f32(_FLT_EPSILON)))
    if opts.energy_floor > 0:
        log_energy = op.Max(log_energy, g.f32(math.log(opts.energy_floor)))
    return op.Concat(*([mel, log_energy] if opts.htk_compat else [log_energy, mel]), axis=2)


_BIG = 2**62  # a Slice end past any axis


def _frames_of(g: GraphOps, per_segment: ir.Value, q: int, computed: ir.Value) -> ir.Value:
    """[B, T', 1]: for each frame t the value of segment t + q, from [B, Ns]."""
    op = g.op
    return op.Unsqueeze(op.Slice(per_segment, g.i64(q), op.Add(computed, g.i64(q)), g.i64(1)), g.i64(2))


def _low_bins(g: GraphOps, relative, steps, firsts, computed, plan: FbankPlan):
    """From one MatMul over the segments: the low bins' re | im [B, T', 2K] (None without
    pre-emphasis), each frame's mean relative to its first sample [B, T', 1] and its parts'
    sums relative to it [B, T', Q]."""
    op, frame = g.op, plan.frame
    shares = op.MatMul(relative, g.const(plan.segment_matrix()))  # [B, Ns, Q F]
    shares = op.Reshape(shares, g.i64(0, 0, plan.phases, plan.low_width))
    total = None
    for q in range(plan.phases):  # frame t takes segment t + q as its part q
        part = op.Slice(shares, g.i64(q, q), op.Concat(op.Add(computed, g.i64(q)), g.i64(q + 1), axis=0), g.i64(1, 2))
        total = part if total is None else op.Add(total, part)
    total = op.Squeeze(total, g.i64(2))  # [B, T', F]
    bins = 2 * plan.low_bins
    counts = np.array(plan.part_lengths, np.float64)
    sums = op.Slice(total, g.i64(bins), g.i64(plan.low_width), g.i64(2))  # parts of the segments' own D
    sums = op.Add(sums, op.Mul(op.Concat(*steps, axis=2), g.const(counts)))  # parts of v: D + step
    mean = op.Mul(g.reduce("ReduceSum", sums, [2], keepdims=True), g.f32(1.0 / plan.length))
    if not plan.low_bins:
        return None, mean, sums
    low = op.Slice(total, g.i64(0), g.i64(bins), g.i64(2))
    means = op.Mul(sums, g.const(1.0 / counts))  # each part's mean
    if frame.remove_dc_offset:  # only the parts' differences matter: small where the low bins are small
        low = op.Add(low, op.MatMul(op.Sub(means, mean), g.const(plan.part_responses())))
    else:  # Kaldi keeps the level: x = v + the frame's first sample
        low = op.Add(low, op.MatMul(means, g.const(plan.part_responses())))
        level = _frames_of(g, firsts, 0, computed)
        low = op.Add(low, op.Mul(level, g.const(plan.part_responses().sum(axis=0))))
    return low, mean, sums


def _two_stage_power(g: GraphOps, emphasised, extras, batch, computed, segments, plan: FbankPlan) -> ir.Value:
    """|DFT|^2 (|DFT| for use_power=False) of every frame, [B, C K1, T'] in the plan's row order."""
    op = g.op
    columns, per_segment = plan.columns, plan.shift // plan.columns
    # samples column-major: [B, Ns S/C, C] -> [B, C, Ns, S/C] -> [B, C, S/C, Ns] (time last)
    grid = op.Reshape(emphasised, op.Concat(batch, g.i64(-1, columns), axis=0))
    by_column = op.MatMul(g.const(np.eye(columns)), op.Transpose(grid, perm=[0, 2, 1]))
    by_column = op.Reshape(by_column, op.Concat(batch, g.i64(columns), segments, g.i64(per_segment), axis=0))
    by_column = op.Transpose(by_column, perm=[0, 1, 3, 2])
    parts = []
    for q, rows in enumerate(plan.phase_rows):
        parts.append(op.Slice(by_column, g.i64(0, q), op.Concat(g.i64(rows), op.Add(computed, g.i64(q)), axis=0), g.i64(2, 3)))
    added = op.Transpose(op.Concat(*extras, axis=2), perm=[0, 2, 1])  # [B, extras, T']
    added = op.Expand(op.Unsqueeze(added, g.i64(1)), op.Concat(batch, g.i64(columns, len(extras)), computed, axis=0))
    frames = op.Concat(*parts, added, axis=2)  # [B, C, R + extras, T']
    stage1 = op.MatMul(g.const(plan.stage1()), frames)  # [B, C, 2 K1, T']
    stage1 = op.Reshape(stage1, op.Concat(batch, g.i64(2 * columns, -1), axis=0))  # [B, (c, re/im), (k1', t)]
    real_matrix, imaginary_matrix = plan.stage2()
    real = op.MatMul(g.const(real_matrix), stage1)
    imaginary = op.MatMul(g.const(imaginary_matrix), stage1)
    power = op.Add(op.Mul(real, real), op.Mul(imaginary, imaginary))  # [B, C, K1 T']
    if not plan.opts.use_power:
        power = op.Sqrt(power)
    return op.Reshape(power, op.Concat(batch, g.i64(columns * plan.combs), computed, axis=0))


def _energy(g: GraphOps, relative, steps, mean, sums, firsts, low, power, computed, plan: FbankPlan) -> ir.Value:
    """[B, T', 1] Kaldi's energy: of the frame after DC removal (raw_energy), else of the
    pre-emphasised, windowed frame (Parseval over the spectrum, here for use_power=False)."""
    op, opts, frame = g.op, plan.opts, plan.frame
    if not opts.raw_energy:  # the spectrum rows hold magnitudes: square them back
        high, low_weights = plan.power_weights(plan.parseval())
        total = op.Transpose(op.MatMul(g.const(high.T), op.Mul(power, power)), perm=[0, 2, 1])
        if plan.low_bins:
            total = op.Add(total, op.MatMul(op.Mul(low, low), g.const(low_weights)))
        return total
    # sum over the frame of v^2 = sum over parts of (D + step)^2 = D^2 + 2 step D + n step^2
    blocks = op.Reshape(relative, op.Concat(g.dim(relative, 0), g.dim(relative, 1), g.i64(-1, plan.block), axis=0))
    squares = op.MatMul(g.reduce("ReduceSumSquare", blocks, [3], keepdims=False), g.const(_part_matrix(plan)))  # [B, Ns, Q]
    own = None
    for q in range(plan.phases):
        part = op.Slice(squares, g.i64(q, q), op.Concat(op.Add(computed, g.i64(q)), g.i64(q + 1), axis=0), g.i64(1, 2))
        own = part if own is None else op.Add(own, part)  # [B, T', 1]
    step = op.Concat(*steps, axis=2)  # [B, T', Q]
    counts = g.const(np.array(plan.part_lengths, np.float64))
    part_sums_d = op.Sub(sums, op.Mul(step, counts))  # the segments' own D sums
    cross = op.Add(op.Mul(op.Mul(step, part_sums_d), g.f32(2.0)), op.Mul(op.Mul(step, step), counts))
    total = op.Add(own, g.reduce("ReduceSum", cross, [2], keepdims=True))  # sum of v^2
    length = float(plan.length)
    if frame.remove_dc_offset:
        total = op.Sub(total, op.Mul(op.Mul(mean, mean), g.f32(length)))
    else:  # x = v + level: sum x^2 = sum v^2 + 2 level sum v + L level^2
        level = _frames_of(g, firsts, 0, computed)
        total = op.Add(total, op.Mul(op.Mul(level, op.Mul(mean, g.f32(2.0 * length))), g.f32(1.0)))
        total = op.Add(total, op.Mul(op.Mul(level, level), g.f32(length)))
    return op.Mul(op.Max(total, g.f32(0.0)), g.f32(opts.input_scale**2))


def _part_matrix(plan: FbankPlan) -> np.ndarray:
    """[S / block, Q]: which blocks of a segment belong to its part q."""
    blocks = plan.shift // plan.block
    out = np.zeros((blocks, plan.phases))
    for q, count in enumerate(plan.part_lengths):
        out[: count // plan.block, q] = 1.0
    return out
