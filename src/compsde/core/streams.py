"""Per-worker random streams, derived the same way wherever a worker runs — the one place workers draw.

Worker i of a run with seed s has two streams, each a ``torch.Generator``: its gradient noise (or
minibatch sampling) comes from stream ``"noise"`` and its compressor's randomness from stream
``"compressor"``. Keeping them apart lets a receiver replay a sender's compressor draws (the indices of
Rand-k, which therefore never travel) without generating the sender's noise. Randomness every worker
must agree on (Rand-k with ``shared=True``) comes from the shared stream. The simulator (all workers in
one process), a distributed run (one worker per process) and the DDP hook draw identical numbers, and
a worker's draws do not depend on how many other workers there are.

Generators live on the CPU: the same seed then gives the same numbers on every machine, GPU runs
included (the draws are moved to the run's device), which is what lets a CUDA run be checked against
a CPU one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from compsde.core.checks import check_int, check_seed

__all__ = ["SHARED", "SDE", "Streams", "stream_seed"]

#: Stream indices of the randomness shared by all workers and of an SDE's Brownian motion.
SHARED = -1
SDE = -2
KINDS = ("noise", "compressor")

_MASK = (1 << 64) - 1

#: Memory of one stream: a CPU ``torch.Generator`` (its Mersenne Twister state and the Python object),
#: measured as the growth of the resident set per generator created (2.7 kB with torch 2.13), rounded up.
GENERATOR_BYTES = 2816
#: Memory of one worker's draw from one stream in a step (``Streams.draw``): its tensor (header and
#: storage, ~0.5 kB for a few numbers) and the list entry, all held until the draws are stacked, and the
#: compressor's temporaries of a draw such as Rand-k's indices (~1.1 kB measured), rounded up.
DRAW_BYTES = 1280


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_seed(seed: int, stream: int) -> int:
    """A well-mixed 63-bit seed for stream ``stream`` of run ``seed``: 2i for worker i's noise, 2i + 1
    for its compressor, ``SHARED`` and ``SDE`` for the shared and Brownian streams."""
    return _splitmix64(_splitmix64(seed & _MASK) ^ (stream & _MASK)) >> 1


def generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, stream))


class Streams:
    """The random streams of a set of workers and the per-step draws from them.

    Args:
        seed: the run's seed (an integer in [0, 2⁶⁴)).
        workers: N, the number of workers of the run.
        noise: the workers whose noise streams this process holds (default all).
        compressor: the workers whose compressor streams it holds (default: those of ``noise``); a
            distributed receiver holds every worker's, to replay their draws.
    """

    def __init__(self, seed: int, workers: int, noise: Iterable[int] | None = None,
                 compressor: Iterable[int] | None = None) -> None:
        self.seed = check_seed("seed", seed)
        self.workers = check_int("workers", workers, min=1)
        held = list(range(workers)) if noise is None else list(noise)
        comp = held if compressor is None else list(compressor)
        for i in held + comp:
            if not 0 <= i < workers:
                raise ValueError(f"worker index must be in [0, workers = {workers}), got {i}")
        self.gens: dict[str, dict[int, torch.Generator]] = {
            "noise": {i: generator(seed, 2 * i) for i in held},
            "compressor": {i: generator(seed, 2 * i + 1) for i in comp},
        }
        self.shared = generator(seed, SHARED)

    @staticmethod
    def memory(noise: int, compressor: int) -> int:
        """Bytes that holding ``noise`` noise streams and ``compressor`` compressor streams (and the
        shared one) costs, with one step's per-worker draws from each: ``GENERATOR_BYTES`` per stream
        and ``DRAW_BYTES`` per draw. Small beside the (N, R, d) state for large R·d, but a run with
        10⁶ workers of a 4-dimensional problem needs 8 GB for its streams alone."""
        return GENERATOR_BYTES * (noise + compressor + 1) + DRAW_BYTES * (noise + compressor)

    def draw(self, kind: str, workers: Sequence[int], fn: Callable[..., Tensor | None],
             out: Tensor | None = None) -> Tensor | None:
        """One draw ``fn(generator)`` per worker of ``workers`` from its ``kind`` stream, stacked on a new
        leading axis (or, given ``out``, ``fn(generator, out[j])`` fills worker j's row of ``out``).

        The loop is over workers for the random numbers only, so each worker draws exactly what it
        would draw alone in its own process.
        """
        gens = self.gens[kind]
        parts = []
        for j, w in enumerate(workers):
            if w not in gens:
                raise ValueError(f"this process holds no {kind} stream for worker {w}")
            r = fn(gens[w]) if out is None else fn(gens[w], out[j])
            parts.append(r)
        if out is not None:
            return out
        if parts and parts[0] is None:
            return None
        if len(parts) == 1:  # one worker (a distributed rank, the hook): a view, not a copy of its draw
            return parts[0].unsqueeze(0)  # type: ignore[union-attr]
        return torch.stack(parts) if parts else None  # type: ignore[arg-type]

    def generators(self) -> list[torch.Generator]:
        """Every stream held here, in a fixed order: noise streams, compressor streams, the shared one."""
        return [*self.gens["noise"].values(), *self.gens["compressor"].values(), self.shared]

    def state(self) -> list[Tensor]:
        """Generator states of ``generators()``, for checkpoints."""
        return [g.get_state() for g in self.generators()]

    def load_state(self, states: list[Tensor]) -> None:
        for g, st in zip(self.generators(), states, strict=True):
            g.set_state(st)
