"""Timing helpers: interleaved runs, so load on a shared machine hits both sides alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple


class Paired(NamedTuple):
    """Median seconds per call of each side, and the median of the per-round ratios `a / b`."""

    a_s: float
    b_s: float
    ratio: float


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(a: Callable[[], object], b: Callable[[], object], calls: int, rounds: int,
                warmup: int = 2) -> Paired:
    """`a` against `b` in rounds of one block of `calls` calls each, in the order a b, b a, a b, ...

    A ratio is taken within each round, where both blocks ran back to back under the same load, and
    the median of those ratios is the result: a burst of load elsewhere spoils one round, not the
    comparison. Swapping the order every round cancels any cost of running first or second.
    """
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for round_index in range(rounds):
        first, second = ((a, times_a), (b, times_b))[:: 1 if round_index % 2 == 0 else -1]
        for fn, times in (first, second):
            times.append(seconds_per_call(fn, calls))
    ratios = [ta / tb for ta, tb in zip(times_a, times_b)]
    return Paired(statistics.median(times_a), statistics.median(times_b), statistics.median(ratios))


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return f"{'ok' if ok else 'MISS'} (target {'>=' if higher_is_better else '<='} {target})"
