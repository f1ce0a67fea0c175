"""Kaldi fbank as ONNX ops: every linear step folded into a few matrices, time on the last axis.

Only ops every execution provider has (Slice/Concat/Reshape/Transpose/Split/MatMul,
elementwise, Loop; no STFT/DFT: onnxruntime's CPU DFT costs ~12 us per 512-point frame, four
times this whole graph). Frames are never materialised as [T, 400] rows that separate ops
then centre, pre-emphasise and window; each row of the waveform is cut into segments of
``window_shift`` samples, and frame t is segments t .. t+Q-1 (Q = ceil(L / S); 3 for 25/10 ms):

- **References.** Each segment is taken relative to its own first sample (``D = x - x[S s]``):
  exact for 16-bit audio, zero for a constant segment, and no recording offset or loud
  neighbour ever meets a large coefficient. The frame's own statement (relative to its first
  sample) adds, per frame, the steps between its segments' first samples; Kaldi's DC removal
  adds the frame's mean. These few per-frame values enter the matrices below as extra inputs,
  so a constant frame at any level gives exactly Kaldi's zero spectrum (log(FLT_EPSILON)).
- **Low bins** (below 500 Hz): one MatMul over the segments [B, Ns, S] x [S, Q F] gives each
  segment's share of the low DFT bins of the DC-free, pre-emphasised, windowed frame for each
  part q it can be; a frame sums its Q shares. Each part's functional has its mean removed (a
  segment's level never meets these weights); the parts' means enter through their per-frame
  differences. Pre-emphasis attenuates these bins ~30 dB; computed from the un-emphasised
  samples through one folded matrix their error stays relative to their own size (a float32
  FFT of the pre-emphasised frame, as kaldi-native-fbank computes it, is ~1e-3 off there).
- **The other bins**: a two-stage Cooley-Tukey DFT (N = N1 x C, C = 16 for 512 points) on the
  segments pre-emphasised once (within each segment). Frames are laid out [B, C, R rows, T]
  (sample C r + c at [c, r]); stage 1 is one batched MatMul per column c with the window and
  the twiddle factors folded into its [2 K1, R + extras] matrix, stage 2 one shared [2C, 2C]
  MatMul over (k1', t). Time stays the last axis from framing to the mel matrix, so no stage
  needs a per-frame transpose; the one layout change (samples to column-major) is a MatMul
  with an identity matrix, which onnxruntime runs as a blocked transpose and cannot merge with
  the framing transpose into its slow general-permutation kernel.
- **Mel**: the power rows come in groups of neighbouring frequencies, each through a MatMul
  spanning only the filters it touches (a third of the multiply-adds of one dense matrix),
  plus the low bins' own [2K, bins] product; then Kaldi's floors and log.
- **Blocks**: frames go through a Loop in equal blocks of at most 512, so a block's
  intermediates stay in cache and the cost per audio-second does not grow with the length.

A row in a batch gives the same bits as alone: every MatMul with the data as its right operand
has inner products of at most 128 terms (onnxruntime accumulates longer ones in an order that
depends on the number of columns), and blocks never make a MatMul a single column (GEMV).

Accuracy (``python bench/frontend.py --accuracy``): on 60 s of speech ~3e-4 max abs from the
float64 statement (kaldi-native-fbank: ~8e-4), mean ~1.5e-6; ~5e-6 mean from
kaldi-native-fbank.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import numpy as np
import onnx_ir as ir

from svsurgery.frontend._ops import GraphOps, subgraph_value
from svsurgery.frontend.kaldi_math import mel_banks, window_function
from svsurgery.frontend.options import FbankOptions

__all__ = ["FbankPlan", "fbank_graph"]

_FLT_EPSILON = float(np.finfo(np.float32).eps)
# FFT bins below this frequency come from the dense low-bin product (see the module docstring).
_LOW_BINS_HZ = 500.0
_BLOCK_FRAMES = 512
# onnxruntime's GEMM with a constant left operand and the data on the right (time as columns)
# gives each column the same bits whatever the number of columns only for inner products of up
# to 128 terms; longer ones are accumulated in blocks whose order depends on it.
_STABLE_DEPTH = 128
_GROUP_COST = 1500  # multiply-adds a mel group's extra ops are worth, per frame


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
        """The column count with the fewest multiply-adds in the two DFT stages, preferring
        stage-1 inner products of at most 128 terms (longer ones are split in two products)."""
        frame = opts.frame_opts
        size, shift = frame.padded_window_size, frame.window_shift
        low = 0
        if frame.preemph_coeff != 0.0:
            low = min(size // 2, math.ceil(_LOW_BINS_HZ * size / frame.samp_freq))
        common = math.gcd(size, shift)
        candidates = [cls(opts, c, low) for c in range(1, min(common, _STABLE_DEPTH // 2) + 1) if common % c == 0]
        return min(candidates, key=lambda plan: (plan.rows + len(plan.extras) > _STABLE_DEPTH, plan.multiply_adds))

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
        return np.array(
            [functionals[q * self.shift : q * self.shift + n].sum(axis=0) for q, n in enumerate(self.part_lengths)]
        )

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

    @property
    def groups(self) -> list[list[int]]:
        """The stage-2 bins k2 in groups, lowest frequencies first: each group's power rows go
        through their own mel MatMul, which only spans the filters its bins touch (~1/3 of
        the multiply-adds of one [bins, C K1] matrix). A group holds at most 128 power rows:
        onnxruntime's GEMM with the data as right operand accumulates longer inner products in
        an order that depends on the number of frames, and a row in a batch must give the
        same bits as alone."""
        table = self.bin_table().reshape(self.columns, self.combs)
        banks = self.banks()
        order = sorted(
            range(self.columns), key=lambda k2: table[k2][table[k2] >= 0].min() if (table[k2] >= 0).any() else 0
        )
        spans = []
        for k2 in order:
            bins = table[k2][(table[k2] >= self.low_bins) & (table[k2] < self.size // 2)]
            touched = np.flatnonzero(banks[bins].sum(axis=0) > 0) if bins.size else np.zeros(0, int)
            spans.append((touched.min(), touched.max() + 1) if touched.size else None)
        most = max(1, _STABLE_DEPTH // self.combs)
        # cheapest grouping of the first i bins k2
        best: list[tuple[float, list] | None] = [(0.0, [])] + [None] * len(order)
        for end in range(1, len(order) + 1):
            for begin in range(max(0, end - most), end):
                used = [s for s in spans[begin:end] if s]
                width = (max(s[1] for s in used) - min(s[0] for s in used)) if used else 0
                before = best[begin]
                assert before is not None, "best[begin] for begin < end is filled by now"
                cost = before[0] + (end - begin) * self.combs * width + _GROUP_COST
                current = best[end]
                if current is None or cost < current[0]:
                    best[end] = (cost, before[1] + [order[begin:end]])
        last = best[-1]
        assert last is not None, "every end is reached from end - 1"
        return last[1]

    def group_weights(self, weights: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """For per-bin weights [N/2 + 1, W]: per group (first column, end column, [end - first,
        rows of the group]) over its power rows (k2 in group order, then k1'); bins below
        ``low_bins`` and repeated bins weigh 0. The column ranges cover 0 .. W together."""
        table = self.bin_table().reshape(self.columns, self.combs)
        matrices = []
        for group in self.groups:
            bins = table[group].reshape(-1)
            matrix = np.zeros((bins.size, weights.shape[1]))
            used = bins >= self.low_bins
            matrix[used] = weights[bins[used]]
            matrices.append(matrix)
        ranges = []
        for matrix in matrices:
            columns = np.flatnonzero(np.abs(matrix).sum(axis=0) > 0)
            ranges.append([columns.min(), columns.max() + 1] if columns.size else [0, 1])
        ranges[0][0], ranges[-1][1] = 0, weights.shape[1]
        for earlier, later in itertools.pairwise(ranges):  # close gaps: every column from some group
            later[0] = min(later[0], earlier[1])
        return [(first, end, matrix[:, first:end].T) for (first, end), matrix in zip(ranges, matrices)]

    def low_weights(self, weights: np.ndarray) -> np.ndarray:
        """[2 K, W]: per-bin weights over the low bins' re^2 | im^2."""
        low = weights[: self.low_bins]
        return np.concatenate([low, low], axis=0)

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
    """[B, <= extent] samples from frame 0's first sample on: the waveform itself (snip_edges;
    blocks pad what they read past its end), or each row reflected at its own length as Kaldi
    does (s < 0 -> -s-1, s >= N -> 2N-1-s, repeatedly); samples past a row's end are whatever
    the batch holds there."""
    op, frame = g.op, opts.frame_opts
    if frame.snip_edges:
        return samples
    offset = frame.window_shift // 2 - frame.window_size // 2  # where frame 0 starts in the original signal
    positions = op.Add(op.Unsqueeze(g.range_(extent), g.i64(0)), g.i64(offset))  # [1, E]
    row_length = op.Unsqueeze(op.Max(lengths, g.i64(1)), g.i64(1))  # [B, 1]; empty rows are masked later
    period = op.Mul(row_length, g.i64(2))
    folded = op.Mod(positions, period)  # integer Mod takes the divisor's sign: 0 <= folded < 2N
    index = op.Where(op.Less(folded, row_length), folded, op.Sub(op.Sub(period, g.i64(1)), folded))
    return op.GatherElements(samples, index, axis=1)


def fbank_graph(g: GraphOps, waveform: ir.Value, lengths: ir.Value, opts: FbankOptions) -> tuple[ir.Value, ir.Value]:
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
    # Frames in equal blocks of at most _BLOCK_FRAMES: a block's intermediates stay in cache,
    # so the cost per second does not grow with the length (at 60 s a single pass over all
    # frames runs ~2x slower per frame than over 10 s). At least 2 frames per block (GEMV).
    blocks = op.Div(op.Add(computed, g.i64(_BLOCK_FRAMES - 1)), g.i64(_BLOCK_FRAMES))
    per_block = op.Max(op.Div(op.Add(computed, op.Sub(blocks, g.i64(1))), blocks), g.i64(2))
    reach = op.Add(op.Mul(blocks, per_block), g.i64(plan.phases - 1))  # segments the blocks read
    signal = _framing_signal(g, waveform, lengths, op.Mul(reach, g.i64(plan.shift)), opts)  # [B, <= reach S]
    span = op.Add(per_block, g.i64(plan.phases - 1))  # segments one block reads
    dims = _Dims(g, g.dim(waveform, 0), per_block, span)
    width = op.Mul(span, g.i64(plan.shift))  # samples one block reads

    def body(bop, index, going):
        inner = copy.copy(g)
        inner.op = bop
        start = bop.Mul(bop.Mul(bop.Unsqueeze(index, g.i64(0)), per_block), g.i64(plan.shift))
        piece = bop.Slice(signal, start, bop.Add(start, width), g.i64(1))
        missing = bop.Sub(width, inner.dim(piece, 1))  # past the waveform's end (the last block)
        piece = bop.Pad(piece, bop.Concat(g.i64(0, 0, 0), missing, axis=0))
        return bop.Identity(going), _features(inner, piece, dims, plan)

    step = g.builder.subgraph(
        body,
        inputs=[subgraph_value("block", ir.DataType.INT64), subgraph_value("going", ir.DataType.BOOL)],
        outputs=[subgraph_value("going_out", ir.DataType.BOOL), subgraph_value("features", ir.DataType.FLOAT, None)],
        name="fbank_block",
    )
    for node in ir.traversal.RecursiveGraphIterator(step):  # the body's builder numbers values from 0 again
        for value in node.outputs:
            value.name = f"fbank_block/{value.name}"
    stacked = op.Loop(op.Squeeze(blocks, g.i64(0)), g.const(np.array(True)), body=step)  # [blocks, B, per_block, D]
    features = op.Transpose(stacked, perm=[1, 0, 2, 3])
    features = op.Reshape(features, op.Concat(g.dim(waveform, 0), g.i64(-1, opts.feature_dim), axis=0))
    return op.Slice(features, g.i64(0), count, g.i64(1)), counts


def _features(g: GraphOps, signal: ir.Value, dims: _Dims, plan: FbankPlan) -> ir.Value:
    """[B, T', D] features of frames 0 .. T'-1 of ``signal`` [B, Ns S] (T', Ns: ``dims``)."""
    op, opts, frame = g.op, plan.opts, plan.frame
    pieces = op.Reshape(signal, dims.shape("batch", "segments", plan.shift))  # [B, Ns, S]
    first = op.Slice(pieces, g.i64(0), g.i64(1), g.i64(2))  # [B, Ns, 1]: each segment's reference
    relative = op.Sub(pieces, first)  # exact for 16-bit audio, 0 for a constant segment
    firsts = op.Squeeze(first, g.i64(2))  # [B, Ns]
    level = _frames_of(g, firsts, 0, dims)  # [B, T', 1]: each frame's first sample
    steps = [op.Sub(_frames_of(g, firsts, q, dims), level) if q else op.Sub(level, level) for q in range(plan.phases)]

    low, mean, totals = _low_bins(g, relative, steps, firsts, dims, plan)
    extras = [*steps[1:], mean if frame.remove_dc_offset else level]
    emphasised = relative
    if frame.preemph_coeff != 0.0:
        previous = op.Pad(op.Slice(relative, g.i64(0), g.i64(-1), g.i64(2)), g.i64(0, 0, 1, 0, 0, 0))
        emphasised = op.Sub(relative, op.Mul(previous, g.f32(frame.preemph_coeff)))  # within each segment
        lasts = op.Squeeze(op.Slice(pieces, g.i64(-1), g.i64(plan.shift), g.i64(2)), g.i64(2))  # [B, Ns]
        jumps = op.Pad(
            op.Sub(op.Slice(firsts, g.i64(1), g.i64(_BIG), g.i64(1)), op.Slice(lasts, g.i64(0), g.i64(-1), g.i64(1))),
            g.i64(0, 1, 0, 0),
        )
        jumps = op.Mul(jumps, g.f32(frame.preemph_coeff))  # [B, Ns]: c (x[S s] - x[S s - 1])
        extras += [_frames_of(g, jumps, q, dims) for q in range(1, plan.phases)]
    powers = _two_stage_power(g, emphasised, extras, dims, plan)  # per group [B, rows, T']

    energy_from_spectrum = opts.use_energy and not opts.raw_energy
    weights = plan.banks()
    if energy_from_spectrum and opts.use_power:
        weights = np.concatenate([weights, plan.parseval()], axis=1)
    magnitudes = powers if opts.use_power else [op.Sqrt(p) for p in powers]
    spectrum = _weighted(g, plan, weights, magnitudes, low, opts.use_power, dims)  # [B, T', bins (+1)]

    mel, energy, bins = spectrum, None, opts.mel_opts.num_bins
    if energy_from_spectrum and opts.use_power:
        mel = op.Slice(spectrum, g.i64(0), g.i64(bins), g.i64(2))
        energy = op.Slice(spectrum, g.i64(bins), g.i64(bins + 1), g.i64(2))
    elif opts.use_energy:
        energy = _energy(g, relative, steps, mean, totals, firsts, low, powers, dims, plan)
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


class _Dims:
    """Shape vectors of one block, built once outside the Loop: its body only reads them."""

    def __init__(self, g: GraphOps, batch: ir.Value, computed: ir.Value, segments: ir.Value) -> None:
        self._g, self._values = g, {"batch": batch, "computed": computed, "segments": segments}
        self._cache: dict = {}

    def end(self, q: int) -> ir.Value:
        """T' + q: where frame T'-1's part q ends among the segments."""
        return self.shape(("end", q))

    def shape(self, *parts) -> ir.Value:
        """A 1-D int64 vector: ints, "batch" | "computed" | "segments", ("end", q)."""
        if parts not in self._cache:
            g, pieces = self._g, []
            for part in parts:
                if isinstance(part, int):
                    pieces.append(g.i64(part))
                elif isinstance(part, tuple):
                    pieces.append(g.op.Add(self._values["computed"], g.i64(part[1])))
                else:
                    pieces.append(self._values[part])
            self._cache[parts] = pieces[0] if len(pieces) == 1 else g.op.Concat(*pieces, axis=0)
        return self._cache[parts]


def _frames_of(g: GraphOps, per_segment: ir.Value, q: int, dims: _Dims) -> ir.Value:
    """[B, T', 1]: for each frame t the value of segment t + q, from [B, Ns]."""
    op = g.op
    return op.Unsqueeze(op.Slice(per_segment, g.i64(q), dims.end(q), g.i64(1)), g.i64(2))


def _low_bins(g: GraphOps, relative, steps, firsts, dims: _Dims, plan: FbankPlan):
    """From one MatMul over the segments: the low bins' re | im [B, T', 2K] (None without
    pre-emphasis), each frame's mean relative to its first sample [B, T', 1] and its parts'
    sums relative to it [B, T', Q]."""
    op, frame = g.op, plan.frame
    shares = op.MatMul(relative, g.const(plan.segment_matrix()))  # [B, Ns, Q F]
    shares = op.Reshape(shares, g.i64(0, 0, plan.phases, plan.low_width))
    total = None
    for q in range(plan.phases):  # frame t takes segment t + q as its part q
        part = op.Slice(shares, g.i64(q, q), dims.shape(("end", q), q + 1), g.i64(1, 2))
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
        level = _frames_of(g, firsts, 0, dims)
        low = op.Add(low, op.Mul(level, g.const(plan.part_responses().sum(axis=0))))
    return low, mean, sums


def _two_stage_power(g: GraphOps, emphasised, extras, dims: _Dims, plan: FbankPlan) -> list[ir.Value]:
    """|DFT|^2 of every frame: per group of ``plan.groups`` [B, |group| K1, T'], rows (k2, k1')."""
    op = g.op
    columns, per_segment = plan.columns, plan.shift // plan.columns
    # samples column-major, [B, C, Ns S/C]: sample C j + c at [c, j]
    grid = op.Reshape(emphasised, dims.shape("batch", -1, columns))
    by_column = op.MatMul(g.const(np.eye(columns)), op.Transpose(grid, perm=[0, 2, 1]))
    matrix = plan.stage1()
    by_column = op.Reshape(by_column, dims.shape("batch", columns, "segments", per_segment))
    by_column = op.Transpose(by_column, perm=[0, 1, 3, 2])
    parts = []
    for q, count in enumerate(plan.phase_rows):
        parts.append(op.Slice(by_column, g.i64(0, q), dims.shape(count, ("end", q)), g.i64(2, 3)))
    added = op.Transpose(op.Concat(*extras, axis=2), perm=[0, 2, 1])  # [B, extras, T']
    added = op.Expand(op.Unsqueeze(added, g.i64(1)), dims.shape("batch", columns, len(extras), "computed"))
    frames = op.Concat(*parts, added, axis=2)  # [B, C, R + extras, T']
    stage1 = _stable_product(g, matrix, frames)  # [B, C, 2 K1, T']
    stage1 = op.Reshape(stage1, dims.shape("batch", 2 * columns, -1))  # [B, (c, re/im), (k1', t)]
    real_matrix, imaginary_matrix = plan.stage2()
    rows = [part for group in plan.groups for part in (real_matrix[group], imaginary_matrix[group])]
    spectrum = op.MatMul(g.const(np.concatenate(rows, axis=0)), stage1)  # [B, 2C, K1 T']: per group re | im
    squares = op.Mul(spectrum, spectrum)
    sizes = [len(group) for group in plan.groups for _ in range(2)]
    pieces = op.Split(squares, g.i64(*sizes), axis=1, _outputs=len(sizes))
    powers = []
    for (real, imaginary), group in zip(zip(pieces[0::2], pieces[1::2]), plan.groups):
        power = op.Add(real, imaginary)  # [B, |group|, K1 T']
        powers.append(op.Reshape(power, dims.shape("batch", len(group) * plan.combs, "computed")))
    return powers


def _stable_product(g: GraphOps, matrix: np.ndarray, data: ir.Value) -> ir.Value:
    """``matrix @ data`` (a constant left operand, data [..., K, T]) as products of at most
    _STABLE_DEPTH inner terms, summed: each column's bits then do not depend on T."""
    op, depth = g.op, matrix.shape[-1]
    total = None
    for begin in range(0, depth, _STABLE_DEPTH):
        end = min(begin + _STABLE_DEPTH, depth)
        rows = data if end - begin == depth else op.Slice(data, g.i64(begin), g.i64(end), g.i64(-2))
        product = op.MatMul(g.const(matrix[..., begin:end]), rows)
        total = product if total is None else op.Add(total, product)
    assert total is not None, "the matrix has inner terms: the loop runs at least once"
    return total


def _weighted(
    g: GraphOps, plan: FbankPlan, weights: np.ndarray, spectra, low, use_power: bool, dims: _Dims
) -> ir.Value:
    """[B, T', W]: per-bin ``weights`` [N/2 + 1, W] applied to the grouped spectrum rows and the
    low bins (their power, or magnitude for use_power=False)."""
    op = g.op
    partial = []
    for (first, end, matrix), rows in zip(plan.group_weights(weights), spectra):
        partial.append((first, end, _stable_product(g, matrix, rows)))  # [B, end - first, T']
    edges = sorted({edge for first, end, _ in partial for edge in (first, end)})
    pieces = []
    for left, right in itertools.pairwise(edges):
        covering = [
            op.Slice(value, g.i64(left - first), g.i64(right - first), g.i64(1))
            for first, end, value in partial
            if first <= left and right <= end
        ]
        total = covering[0]
        for more in covering[1:]:
            total = op.Add(total, more)
        pieces.append(total)
    combined = op.Concat(*pieces, axis=1) if len(pieces) > 1 else pieces[0]
    combined = op.Transpose(combined, perm=[0, 2, 1])  # [B, T', W]
    if not plan.low_bins:
        return combined
    squares = op.Mul(low, low)  # [B, T', 2K]
    if use_power:
        return op.Add(combined, op.MatMul(squares, g.const(plan.low_weights(weights))))
    pairs = op.Reshape(squares, dims.shape("batch", "computed", 2, plan.low_bins))
    magnitude = op.Sqrt(g.reduce("ReduceSum", pairs, [2], keepdims=False))
    return op.Add(combined, op.MatMul(magnitude, g.const(weights[: plan.low_bins])))


def _energy(g: GraphOps, relative, steps, mean, sums, firsts, low, powers, dims: _Dims, plan: FbankPlan) -> ir.Value:
    """[B, T', 1] Kaldi's energy: of the frame after DC removal (raw_energy), else of the
    pre-emphasised, windowed frame (Parseval over the spectrum, here for use_power=False)."""
    op, opts, frame = g.op, plan.opts, plan.frame
    if not opts.raw_energy:  # Parseval over the power spectrum (the mel part used magnitudes)
        return _weighted(g, plan, plan.parseval(), powers, low, True, dims)
    # sum over the frame of v^2 = sum over parts of (D + step)^2 = D^2 + 2 step D + n step^2
    blocks = op.Reshape(relative, dims.shape("batch", "segments", -1, plan.block))
    squares = op.MatMul(
        g.reduce("ReduceSumSquare", blocks, [3], keepdims=False), g.const(_part_matrix(plan))
    )  # [B, Ns, Q]
    own = None
    for q in range(plan.phases):
        part = op.Slice(squares, g.i64(q, q), dims.shape(("end", q), q + 1), g.i64(1, 2))
        own = part if own is None else op.Add(own, part)  # [B, T', 1]
    step = op.Concat(*steps, axis=2)  # [B, T', Q]
    counts = g.const(np.array(plan.part_lengths, np.float64))
    part_sums_d = op.Sub(sums, op.Mul(step, counts))  # the segments' own D sums
    cross = op.Add(op.Mul(op.Mul(step, part_sums_d), g.f32(2.0)), op.Mul(op.Mul(step, step), counts))
    total = op.Add(own, g.reduce("ReduceSum", cross, [2], keepdims=True))  # sum of v^2
    length = float(plan.length)
    if frame.remove_dc_offset:
        total = op.Sub(total, op.Mul(op.Mul(mean, mean), g.f32(length)))
    else:  # x = v + level: sum x^2 = sum v^2 + 2 level L mean + L level^2 = sum v^2 + L level (level + 2 mean)
        level = _frames_of(g, firsts, 0, dims)
        total = op.Add(total, op.Mul(op.Mul(level, op.Add(level, op.Mul(mean, g.f32(2.0)))), g.f32(length)))
    return op.Mul(op.Max(total, g.f32(0.0)), g.f32(opts.input_scale**2))


def _part_matrix(plan: FbankPlan) -> np.ndarray:
    """[S / block, Q]: which blocks of a segment belong to its part q."""
    blocks = plan.shift // plan.block
    out = np.zeros((blocks, plan.phases))
    for q, count in enumerate(plan.part_lengths):
        out[: count // plan.block, q] = 1.0
    return out
