"""Timing shared by the benchmarks: best of N after a warm-up run."""

from __future__ import annotations

import time


def best_of(function, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
