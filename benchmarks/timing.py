"""The one timing helper of the benchmark scripts (imported as a sibling: run them as ``python benchmarks/X.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls: wall time by default,
    or another ``clock`` (``time.thread_time``: CPU time of this thread, which on a shared machine does not
    count the others' work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)
