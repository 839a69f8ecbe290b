"""Timing helpers: medians of interleaved runs, so load on a shared machine hits both sides alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(a: Callable[[], object], b: Callable[[], object], calls: int, rounds: int,
                warmup: int = 2) -> tuple[float, float]:
    """Median seconds per call of `a` and of `b`, measured in alternating blocks of `calls` calls."""
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(seconds_per_call(a, calls))
        times_b.append(seconds_per_call(b, calls))
    return statistics.median(times_a), statistics.median(times_b)


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return f"{'ok' if ok else 'MISS'} (target {'>=' if higher_is_better else '<='} {target})"
