"""vad.loop_state.LoopState: an ONNX Loop whose carried values are declared once."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from vad_support import probe_session

from svsurgery.vad.loop_state import GOING, LoopState


def _running(g, x):
    """Over x (int64 [N]): the running sum and maximum, a count of the steps taken, stopping
    after the first element above 100; scanned: each step's sum, and whether it was odd."""
    op = g.op
    state = LoopState(g)
    state.carry("total", 0)
    state.carry("largest", np.iinfo(np.int64).min)
    state.carry("seen_big", False)
    state.carry("unchanged", 7.5)  # never returned by the step: carried over as it is
    state.carry("history", np.zeros(3, np.int64))  # a vector
    state.scan("sum_after", ir.DataType.INT64)
    state.scan("odd", ir.DataType.BOOL)

    def step(bop, index, now):
        value = bop.Gather(x, index, axis=0)
        total = bop.Add(now.total, value)
        big = bop.Greater(value, g.scalar_i64(100))
        history = bop.Concat(
            bop.Slice(now.history, g.i64(1), g.i64(3), g.i64(0)), bop.Unsqueeze(value, g.i64(0)), axis=0
        )
        return {
            "total": total,
            "largest": bop.Max(now.largest, value),
            "seen_big": bop.Or(now.seen_big, big),
            "history": history,
            "sum_after": total,  # the same value as a carried output: the helper keeps them apart
            "odd": bop.Equal(bop.Mod(total, g.scalar_i64(2)), g.scalar_i64(1)),
            GOING: bop.Not(big),
        }

    trips = op.Squeeze(g.dim(x, 0), g.i64(0))
    final, scanned = state.loop(trips, step, name="running")
    return final.total, final.largest, final.seen_big, final.unchanged, final.history, scanned.sum_after, scanned.odd


def test_loop_state_carries_and_scans_by_name():
    session = probe_session(_running, [ir.val("x", ir.DataType.INT64, ["n"])])
    for values in ([3, 8, 1, 4], [5, 200, 7], [1], []):
        x = np.array(values, np.int64)
        total, largest, seen_big, unchanged, history, sums, odd = session.run(None, {"x": x})
        taken = next(
            (i + 1 for i, v in enumerate(values) if v > 100), len(values)
        )  # the step with 200 runs, then stops
        expected_sums = np.cumsum(values[:taken]).astype(np.int64)
        assert sums.tolist() == expected_sums.tolist()
        assert odd.tolist() == (expected_sums % 2 == 1).tolist()
        assert int(total) == (expected_sums[-1] if taken else 0)
        assert int(largest) == (max(values[:taken]) if taken else np.iinfo(np.int64).min)
        assert bool(seen_big) == any(v > 100 for v in values)
        assert float(unchanged) == 7.5 and unchanged.dtype == np.float64
        assert history.tolist() == ([0, 0, 0, *values[:taken]])[-3:]


def test_loop_state_refuses_mistakes():
    from svsurgery.frontend._ops import GraphOps

    graph = ir.Graph([], [], nodes=[], opset_imports={"": 17})
    state = LoopState(GraphOps(graph, 17))
    state.carry("a", 0)
    with pytest.raises(ValueError, match="declared twice"):
        state.carry("a", 1)
    with pytest.raises(ValueError, match="declared twice"):
        state.scan(GOING, ir.DataType.BOOL)
    state.scan("out", ir.DataType.INT64)
    g = GraphOps(graph, 17)
    with pytest.raises(ValueError, match="scanned values missing"):
        state.loop(g.scalar_i64(3), lambda bop, index, now: {"a": bop.Add(now.a, index)}, name="missing")
    with pytest.raises(ValueError, match="unknown values"):
        state.loop(g.scalar_i64(3), lambda bop, index, now: {"b": index, "out": index}, name="unknown")
