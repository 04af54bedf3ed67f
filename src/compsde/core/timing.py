"""The median time of a call: the one timer of the library (``compsde.advise.cost`` measures a method's codec and a
model's compute with it) and of the benchmark scripts (``benchmarks/timing.py`` re-exports it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from compsde.core.checks import check_int

__all__ = ["median_seconds"]


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                   clock: Callable[[], float] = time.perf_counter, setup: Callable[[], object] | None = None) -> float:
    """Median time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls, each call preceded by an
    untimed ``setup()`` if given: wall time by default, or
    another ``clock`` (``time.thread_time``: CPU time of this thread, which on a shared machine does not count
    the other processes' work; with one torch thread every operation of ``fn`` runs in this thread)."""
    check_int("repeats", repeats, min=1)
    check_int("warmup", warmup, min=0)
    times = []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        t = clock()
        fn()
        if i >= warmup:
            times.append(clock() - t)
    return statistics.median(times)
