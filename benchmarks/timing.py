"""Timing shared by the benchmarks (run as scripts, so `from timing import best_time` finds this file)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """The fastest of ``repeats`` calls of ``fn``, in seconds (after one untimed call with ``warm_up``)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
