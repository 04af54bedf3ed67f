"""The timer of the benchmark scripts (imported as a sibling: run them as ``python benchmarks/X.py``): the
library's own, ``compsde.core.timing.median_seconds`` (wall time by default; ``clock=time.thread_time`` for
the CPU time of the calling thread)."""

from compsde.core.timing import median_seconds

__all__ = ["median_seconds"]
