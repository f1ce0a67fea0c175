"""Segmentation as ONNX ops: speech flags -> segments -> encoder spans -> waveform rows.

- :func:`flags_to_segments`: [start_ms, end_ms] of every run of speech frames (NonZero on
  the run edges, no loop);
- :func:`merge_spans`: FunASR's merge_vad (greedy contiguous spans of at most
  ``merge_length_s`` from 0 ms; one segment or none unchanged) as a Loop over the sorted
  boundaries, the only sequential step, inside an If for the short cases;
- :func:`split_long`: unmerged segments cut into pieces of at most ``max_segment_s``,
  loop-free;
- :func:`cut_rows`: the spans cut from the waveform into a zero-padded [K, Lmax] batch with
  their lengths, as FunASR slices them (sample = ms * 16, end clipped to the signal).

All shapes are dynamic; no speech gives K = 0 and well-formed empty tensors.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from svsurgery.frontend._ops import GraphOps, subgraph_value
from svsurgery.vad.loop_state import LoopState
from svsurgery.vad.options import SegmentOptions

__all__ = ["cut_rows", "flags_to_segments", "merge_spans", "segment_spans", "split_long"]

_INT64 = ir.DataType.INT64


def _edges(g: GraphOps, flags: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Frame indices where speech runs start, and where they end (exclusive)."""
    op = g.op
    false = g.const(np.array([False]))
    before = op.Concat(false, op.Slice(flags, g.i64(0), g.i64(-1), g.i64(0)), axis=0)  # flags[t - 1]
    after = op.Concat(op.Slice(flags, g.i64(1), g.i64(2**62), g.i64(0)), false, axis=0)  # flags[t + 1]
    starts = op.Squeeze(op.NonZero(op.And(flags, op.Not(before))), g.i64(0))
    ends = op.Add(op.Squeeze(op.NonZero(op.And(flags, op.Not(after))), g.i64(0)), g.i64(1))
    return starts, ends


def flags_to_segments(g: GraphOps, flags: ir.Value, frame_ms: float) -> ir.Value:
    """[K, 2] int64 milliseconds of every speech run in ``flags`` (bool [T])."""
    op = g.op
    starts, ends = _edges(g, flags)
    pairs = op.Concat(op.Unsqueeze(starts, g.i64(1)), op.Unsqueeze(ends, g.i64(1)), axis=1)  # [K, 2] frames
    if float(frame_ms).is_integer():
        return op.Mul(pairs, g.i64(int(frame_ms)))
    scaled = op.Mul(op.Cast(pairs, to=ir.DataType.DOUBLE), g.const(np.array(frame_ms), np.float64))
    return op.Cast(op.Round(scaled), to=_INT64)


def merge_spans(g: GraphOps, segments: ir.Value, max_length_ms: float) -> ir.Value:
    """FunASR's merge_vad on [K, 2] int64 ms segments."""
    op, builder = g.op, g.builder
    count = g.dim(segments, 0)
    steps = op.Unique(op.Reshape(segments, g.i64(-1)), sorted=1, _outputs=4)[0]  # sorted boundaries [M]
    longest = g.const(np.array(int(max_length_ms), np.int64))
    trips = op.Max(op.Sub(op.Squeeze(g.dim(steps, 0), g.i64(0)), g.scalar_i64(1)), g.scalar_i64(0))

    state = LoopState(g)
    state.carry("begin", 0)  # where the span being packed starts (ms)
    state.scan("emitted", ir.DataType.BOOL)  # this boundary closed a span ...
    state.scan("span", _INT64, None)  # ... [begin, boundary]

    def step(bop, index, now):
        time = bop.Gather(steps, index, axis=0)
        following = bop.Gather(steps, bop.Add(index, g.scalar_i64(1)), axis=0)
        cut = bop.GreaterOrEqual(bop.Sub(following, now.begin), longest)  # the next boundary would overflow the span
        emit = bop.And(cut, bop.Greater(bop.Sub(time, now.begin), g.scalar_i64(0)))
        span = bop.Concat(bop.Unsqueeze(now.begin, g.i64(0)), bop.Unsqueeze(time, g.i64(0)), axis=0)
        return {"begin": bop.Where(cut, time, now.begin), "emitted": emit, "span": span}

    def merged(bop):
        final, scanned = state.loop(trips, step, name="merge_vad_step", op=bop)
        kept = bop.Compress(bop.Reshape(scanned.span, g.i64(-1, 2)), bop.Reshape(scanned.emitted, g.i64(-1)), axis=0)
        last = bop.Gather(steps, g.scalar_i64(-1), axis=0)
        closing = bop.Unsqueeze(
            bop.Concat(bop.Unsqueeze(final.begin, g.i64(0)), bop.Unsqueeze(last, g.i64(0)), axis=0), g.i64(0)
        )
        return bop.Concat(kept, closing, axis=0)

    short = op.LessOrEqual(op.Squeeze(count, g.i64(0)), g.scalar_i64(1))
    then_branch = builder.subgraph(
        lambda bop: bop.Identity(segments),
        inputs=[],
        outputs=[subgraph_value("as_is", _INT64, None)],
        name="one_or_none",
    )
    else_branch = builder.subgraph(merged, inputs=[], outputs=[subgraph_value("spans", _INT64, None)], name="merged")
    return op.If(short, then_branch=then_branch, else_branch=else_branch)


def split_long(g: GraphOps, segments: ir.Value, max_length_ms: float) -> ir.Value:
    """Each [start, end) cut into pieces of at most ``max_length_ms`` from its start, loop-free."""
    op = g.op
    longest = g.i64(int(max_length_ms))
    starts = op.Squeeze(op.Slice(segments, g.i64(0), g.i64(1), g.i64(1)), g.i64(1))
    ends = op.Squeeze(op.Slice(segments, g.i64(1), g.i64(2), g.i64(1)), g.i64(1))
    pieces = op.Div(op.Add(op.Sub(ends, starts), op.Sub(longest, g.i64(1))), longest)  # ceil, per segment
    reach = op.CumSum(pieces, g.scalar_i64(0))  # pieces up to and including each segment
    total = op.ReduceSum(op.Concat(pieces, g.i64(0), axis=0), keepdims=1)
    piece = g.range_(total)  # [P]
    owner = op.ReduceSum(
        op.Cast(op.LessOrEqual(op.Unsqueeze(reach, g.i64(0)), op.Unsqueeze(piece, g.i64(1))), to=_INT64),
        g.i64(1),
        keepdims=0,
    )  # segment of each piece: how many segments end at or before it
    first = op.Sub(op.Gather(reach, owner, axis=0), op.Gather(pieces, owner, axis=0))
    begin = op.Add(op.Gather(starts, owner, axis=0), op.Mul(op.Sub(piece, first), longest))
    end = op.Min(op.Add(begin, longest), op.Gather(ends, owner, axis=0))
    return op.Concat(op.Unsqueeze(begin, g.i64(1)), op.Unsqueeze(end, g.i64(1)), axis=1)


def segment_spans(g: GraphOps, segments: ir.Value, opts: SegmentOptions) -> ir.Value:
    opts.validate()
    if opts.merge:
        return merge_spans(g, segments, opts.merge_length_s * 1000)
    return split_long(g, segments, opts.max_segment_s * 1000)


def cut_rows(g: GraphOps, samples: ir.Value, spans: ir.Value, samp_freq: float) -> tuple[ir.Value, ir.Value]:
    """([K, Lmax] zero-padded waveform rows, [K] int64 lengths) of ``spans`` (ms) of ``samples`` [N].

    Every span starts on a millisecond, a whole block of samples_per_ms samples: the rows are
    gathered block by block ([K, Lmax / 16] indices at 16 kHz, each copying 16 samples) rather
    than sample by sample, which onnxruntime's Gather pays for per index.
    """
    op = g.op
    per_ms = samp_freq / 1000
    if not float(per_ms).is_integer():
        raise ValueError(f"sample rate {samp_freq} Hz is not a whole number of samples per millisecond")
    block = int(per_ms)
    count = g.dim(samples, 0)
    begin_ms = op.Squeeze(op.Slice(spans, g.i64(0), g.i64(1), g.i64(1)), g.i64(1))
    begin = op.Mul(begin_ms, g.i64(block))
    end = op.Min(op.Mul(op.Squeeze(op.Slice(spans, g.i64(1), g.i64(2), g.i64(1)), g.i64(1)), g.i64(block)), count)
    lengths = op.Max(op.Sub(end, begin), g.i64(0))
    width = op.ReduceMax(op.Concat(lengths, g.i64(0), axis=0), keepdims=1)  # Lmax
    blocks_wide = op.Div(op.Add(width, g.i64(block - 1)), g.i64(block))  # ceil(Lmax / block)
    blocks_had = op.Div(op.Add(count, g.i64(block - 1)), g.i64(block))
    # the signal in whole blocks, then one zero block that every index past it reads
    tail = op.Sub(op.Mul(op.Add(blocks_had, g.i64(1)), g.i64(block)), count)
    in_blocks = op.Reshape(op.Pad(samples, op.Concat(g.i64(0), tail, axis=0)), g.i64(-1, block))  # [ceil(N/b) + 1, b]
    index = op.Add(op.Unsqueeze(begin_ms, g.i64(1)), op.Unsqueeze(g.range_(blocks_wide), g.i64(0)))  # [K, Lmax / b]
    gathered = op.Gather(in_blocks, op.Min(index, blocks_had), axis=0)  # [K, Lmax / b, b]
    gathered = op.Reshape(gathered, op.Concat(g.dim(spans, 0), op.Mul(blocks_wide, g.i64(block)), axis=0))
    gathered = op.Slice(gathered, g.i64(0), width, g.i64(1))  # [K, Lmax]
    offsets = op.Unsqueeze(g.range_(width), g.i64(0))  # [1, Lmax]
    rows = op.Where(op.Less(offsets, op.Unsqueeze(lengths, g.i64(1))), gathered, g.f32(0.0))
    return rows, lengths
