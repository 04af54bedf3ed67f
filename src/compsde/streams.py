"""Per-worker random streams, derived the same way wherever a worker runs.

Worker i of a run with seed s draws everything it needs — its gradient noise, then its compressor's
randomness, every step in that order — from its own ``torch.Generator`` seeded with
``stream_seed(s, i)``. Randomness every worker must agree on (the indices of Rand-k with
``shared=True``) comes from the shared stream ``stream_seed(s, SHARED)``. The simulator (all
workers in one process) and a distributed run (one worker per process) therefore draw identical
numbers, and a worker's draws do not depend on how many other workers there are.
"""

from __future__ import annotations

import torch

#: Stream index of the randomness shared by all workers.
SHARED = -1

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_seed(seed: int, stream: int) -> int:
    """A well-mixed 63-bit seed for stream ``stream`` (worker index, or ``SHARED``) of run ``seed``."""
    return _splitmix64(_splitmix64(seed & _MASK) ^ (stream & _MASK)) >> 1


def worker_generators(seed: int, workers: int) -> list[torch.Generator]:
    """The generators of workers 0..workers−1."""
    return [torch.Generator().manual_seed(stream_seed(seed, i)) for i in range(workers)]


def shared_generator(seed: int) -> torch.Generator:
    """The generator of the randomness shared by all workers."""
    return torch.Generator().manual_seed(stream_seed(seed, SHARED))
