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


def best_of_interleaved(functions: dict, repeats: int) -> dict:
    """Fastest of ``repeats`` calls of each function, calls interleaved (A, B, A, B, ...) so that
    drift in the machine's speed (a shared host) hits every function alike. After one warm-up each."""
    for function in functions.values():
        function()
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
