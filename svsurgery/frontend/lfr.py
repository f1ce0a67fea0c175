"""FunASR's low frame rate (LFR) stacking as ONNX ops, each batch row at its own length.

Output frame i of a row with T frames stacks input frames clamp(i*n + j - (m-1)//2, 0, T-1)
for j = 0..m-1: the first frame repeats on the left and the row's last real frame
repeats on the right, exactly as FunASR's apply_lfr pads. A plain edge Pad on the padded
batch would repeat the padding of shorter rows instead, so the clamp is per row.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from svsurgery.frontend._ops import GraphOps
from svsurgery.frontend.options import LfrOptions

__all__ = ["lfr_graph"]


def lfr_graph(g: GraphOps, features: ir.Value, counts: ir.Value, lfr: LfrOptions) -> tuple[ir.Value, ir.Value]:
    """[B, T, D] features and [B] frame counts -> [B, ceil(T/n), m*D] and [B] stacked counts."""
    lfr.validate()
    op = g.op
    if lfr.m == 1 and lfr.n == 1:
        return features, counts
    stacked_counts = op.Div(op.Add(counts, g.i64(lfr.n - 1)), g.i64(lfr.n))  # ceil(T_b / n)
    total = g.reduce("ReduceMax", stacked_counts, [0], keepdims=True)
    starts = op.Mul(g.range_(total), g.scalar_i64(lfr.n))  # [T_lfr]
    offsets = g.const(np.arange(lfr.m, dtype=np.int64) - (lfr.m - 1) // 2)  # [m]
    positions = op.Add(op.Unsqueeze(starts, g.i64(1)), op.Unsqueeze(offsets, g.i64(0)))  # [T_lfr, m]
    last = op.Reshape(op.Max(op.Sub(counts, g.i64(1)), g.i64(0)), g.i64(-1, 1, 1))  # [B, 1, 1]
    index = op.Min(op.Max(op.Unsqueeze(positions, g.i64(0)), g.i64(0)), last)  # [B, T_lfr, m]
    gathered = op.GatherND(features, op.Unsqueeze(index, g.i64(3)), batch_dims=1)  # [B, T_lfr, m, D]
    width = op.Mul(g.i64(lfr.m), g.dim(features, 2))
    stacked = op.Reshape(gathered, op.Concat(g.dim(features, 0), g.i64(-1), width, axis=0))
    return stacked, stacked_counts
