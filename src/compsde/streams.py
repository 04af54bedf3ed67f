"""Per-worker random streams, derived the same way wherever a worker runs.

Worker i of a run with seed s has two streams, each a ``torch.Generator``: its gradient noise comes
from ``noise_generator(s, i)`` and its compressor's randomness from ``compressor_generator(s, i)``.
Keeping them apart lets a receiver replay a sender's compressor draws (the indices of Rand-k, which
therefore never travel) without generating the sender's noise. Randomness every worker must agree
on (Rand-k with ``shared=True``) comes from ``shared_generator(s)``. The simulator (all workers in
one process) and a distributed run (one worker per process) draw identical numbers, and a worker's
draws do not depend on how many other workers there are.
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


def noise_generator(seed: int, worker: int) -> torch.Generator:
    """The stream of worker ``worker``'s gradient noise."""
    return torch.Generator().manual_seed(stream_seed(seed, 2 * worker))


def compressor_generator(seed: int, worker: int) -> torch.Generator:
    """The stream of worker ``worker``'s compressor randomness (replayable by any receiver)."""
    return torch.Generator().manual_seed(stream_seed(seed, 2 * worker + 1))


def shared_generator(seed: int) -> torch.Generator:
    """The generator of the randomness shared by all workers."""
    return torch.Generator().manual_seed(stream_seed(seed, SHARED))
