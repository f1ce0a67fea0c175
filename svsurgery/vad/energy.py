"""The energy VAD mode (``--vad energy``): its options, and its decisions as ONNX ops (frame
energy, adaptive threshold, gap closing, island removal).

Loop-free: percentiles come from TopK, and the run lengths that decide gap closing and
island removal from a cumulative count of speech (or silence) frames and the positions
of those frames (a run's neighbours are the previous and next frame of the other kind).
Energies are computed in float64, as the numpy statement does, so decisions agree frame
for frame.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from svsurgery.errors import BadInputError
from svsurgery.frontend._ops import GraphOps
from svsurgery.vad import numpy_statement as vad_statement
from svsurgery.vad.mode import VadGraph, VadMode, VadReference

__all__ = ["EnergyVadOptions", "energy_flags"]


@dataclasses.dataclass(frozen=True)
class EnergyVadOptions(VadMode):
    """A weight-free energy VAD: good on clean recordings, weak in noise (see README).

    Frame i covers samples [i * hop, i * hop + hop) (10 ms frames, as the vad-dev labels);
    a frame is speech when its energy is above both the recording's ``speech_percentile``
    energy + ``relative_threshold_db`` and its ``floor_percentile`` energy (the noise
    floor) + ``noise_margin_db``; then silences shorter than ``close_gaps_ms`` between
    speech are speech (hangover) and speech shorter than ``drop_islands_ms`` is dropped.
    """

    name: ClassVar[str] = "energy"
    cli_help: ClassVar[str] = "'energy' (weight-free, for clean recordings only)"

    frame_ms: float = 10.0  # ms, frame length and hop
    relative_threshold_db: float = -55.0  # dB relative to the speech_percentile energy
    noise_margin_db: float = 6.0  # dB above the floor_percentile energy
    speech_percentile: float = 95.0  # %, nearest rank
    floor_percentile: float = 10.0  # %, nearest rank
    close_gaps_ms: float = 200.0  # ms; silences shorter than this between speech become speech
    drop_islands_ms: float = 30.0  # ms; speech runs shorter than this are dropped
    samp_freq: float = 16000.0  # Hz

    @property
    def hop(self) -> int:
        return int(round(self.samp_freq * self.frame_ms / 1000))

    def frames(self, milliseconds: float) -> int:
        return int(round(milliseconds / self.frame_ms))

    def validate(self) -> EnergyVadOptions:
        if self.hop < 1 or not 0 < self.speech_percentile <= 100 or not 0 < self.floor_percentile <= 100:
            raise BadInputError(f"energy VAD options {self}: frame_ms must give >= 1 sample, percentiles in (0, 100]")
        if self.close_gaps_ms < 0 or self.drop_islands_ms < 0:
            raise BadInputError("energy VAD: close_gaps_ms and drop_islands_ms must be >= 0")
        return self

    def graph(self, g: GraphOps, samples: ir.Value) -> VadGraph:
        from svsurgery.vad.segment import flags_to_segments  # local: segment -> options -> this module

        return VadGraph(flags_to_segments(g, energy_flags(g, samples, self.validate()), self.frame_ms))

    def reference(self, *, pipeline: bool = False) -> VadReference:
        """The numpy statement (:mod:`svsurgery.vad.numpy_statement`), for verification and audits alike."""

        def segments(waveform: np.ndarray) -> np.ndarray:
            return vad_statement.segments(vad_statement.energy_vad(waveform, self), self.frame_ms)

        description = (
            "the energy VAD's numpy statement (svsurgery.vad.numpy_statement)"
            if pipeline
            else "svsurgery's numpy energy VAD"
        )
        return VadReference(description, segments)


_FAR = 2**40  # a position no frame has: neighbour of the first/last run


def _percentile(g: GraphOps, energy: ir.Value, count: ir.Value, percentile: float) -> ir.Value:
    """The nearest-rank percentile of ``energy`` [T] (any value when T = 0)."""
    op = g.op
    rank = op.Ceil(op.Mul(op.Cast(count, to=ir.DataType.DOUBLE), g.const(np.array([percentile / 100.0]), np.float64)))
    rank = op.Max(op.Min(op.Cast(rank, to=ir.DataType.INT64), count), g.i64(1))
    padded = op.Concat(energy, g.const(np.array([0.0]), np.float64), axis=0)  # TopK needs one value even when T = 0
    smallest = op.TopK(padded, rank, largest=0, sorted=1, _outputs=2)[0]
    return op.Gather(smallest, op.Sub(rank, g.i64(1)), axis=0)


def _run_lengths(g: GraphOps, other: ir.Value, count: ir.Value, *, edges_end_runs: bool) -> ir.Value:
    """For every frame not of the ``other`` kind, the length of its run, measured between the
    nearest ``other`` frames; a run touching an edge ends there (``edges_end_runs``) or gets a
    length beyond any limit (so edge silences are never closed as gaps)."""
    op = g.op
    seen = op.CumSum(op.Cast(other, to=ir.DataType.INT64), g.scalar_i64(0))  # others up to and including t
    positions = op.Squeeze(op.NonZero(other), g.i64(0))
    if edges_end_runs:
        bounded = op.Concat(g.i64(-1), positions, count, axis=0)
    else:
        bounded = op.Concat(g.i64(-_FAR), positions, g.i64(_FAR), axis=0)
    previous = op.Gather(bounded, seen, axis=0)  # the last other frame at or before t
    following = op.Gather(bounded, op.Add(seen, g.i64(1)), axis=0)  # the first one after t
    return op.Sub(op.Sub(following, previous), g.i64(1))


def energy_flags(g: GraphOps, samples: ir.Value, opts: EnergyVadOptions) -> ir.Value:
    """bool [T] speech flags of the full ``opts.hop``-sample frames of ``samples`` [N]."""
    opts.validate()
    op = g.op
    hop = opts.hop
    count = op.Div(g.dim(samples, 0), g.i64(hop))  # [1] full frames
    used = op.Slice(samples, g.i64(0), op.Mul(count, g.i64(hop)), g.i64(0))
    frames = op.Cast(op.Reshape(used, op.Concat(count, g.i64(hop), axis=0)), to=ir.DataType.DOUBLE)
    power = op.Add(
        g.reduce("ReduceMean", op.Mul(frames, frames), [1], keepdims=False), g.const(np.array(1e-10), np.float64)
    )
    energy = op.Mul(op.Log(power), g.const(np.array(10.0 / np.log(10.0)), np.float64))  # dB
    threshold = op.Max(
        op.Add(
            _percentile(g, energy, count, opts.speech_percentile),
            g.const(np.array([opts.relative_threshold_db]), np.float64),
        ),
        op.Add(
            _percentile(g, energy, count, opts.floor_percentile), g.const(np.array([opts.noise_margin_db]), np.float64)
        ),
    )
    flags = op.Greater(energy, threshold)
    gap, island = opts.frames(opts.close_gaps_ms), opts.frames(opts.drop_islands_ms)
    if gap > 0:  # silences between speech shorter than the gap become speech; edge silences stay
        silence_run = _run_lengths(g, flags, count, edges_end_runs=False)
        flags = op.Or(flags, op.Less(silence_run, g.i64(gap)))
    if island > 0:  # speech runs shorter than an island go, at the edges too
        speech_run = _run_lengths(g, op.Not(flags), count, edges_end_runs=True)
        flags = op.And(flags, op.GreaterOrEqual(speech_run, g.i64(island)))
    return flags
