"""How messages travel in one step, and what the travelling costs.

An exchange takes the workers' half of a step (``compsde.algorithms.WorkersOut``) from the workers
held by this process and returns Σ_i m_i over all N workers, the same on every participant. The
in-process exchange (the simulator) sums its stacked workers' messages in worker order; the
collective one (``compsde.distributed.collectives``) sends payloads through all-reduce or all-gather
and decodes them in the same order. Everything else in a step is the same code.

Every exchange is a communication event: ``CommLog`` adds the bits one worker declares for it (its
compressor's ``bits(d)``) and the bytes it hands to the wire (per repetition; the simulator counts
the bytes of the same wire layout the distributed backend sends), and counts the rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from compsde.algorithms import Algorithm, WorkersOut
from compsde.algorithms.aggregation import sum_messages
from compsde.compressors.wire import wire_bytes

__all__ = ["CommLog", "Exchange", "InProcessExchange"]


class CommLog:
    """Cumulative communication of one worker: declared bits, wire bytes per repetition, rounds."""

    def __init__(self) -> None:
        self.bits = 0.0
        self.bytes = 0.0
        self.rounds = 0

    def record(self, bits: float, nbytes: float, rounds: int = 1) -> None:
        self.bits += bits
        self.bytes += nbytes
        self.rounds += rounds

    def totals(self) -> tuple[float, float, int]:
        return self.bits, self.bytes, self.rounds

    def state_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "bytes": self.bytes, "rounds": self.rounds}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.bits, self.bytes, self.rounds = float(st["bits"]), float(st["bytes"]), int(st["rounds"])


class Exchange:
    """Base class: see module doc. ``needs_payload``: the workers' half must encode payloads;
    ``replay``: this process needs every worker's compressor draws (to decode their payloads)."""

    needs_payload = False
    replay = False

    def __init__(self, algorithm: Algorithm, rows: int, d: int, dtype: torch.dtype) -> None:
        self.algorithm, self.rows, self.d, self.dtype = algorithm, rows, d, dtype
        self.log = CommLog()
        #: declared bits and wire bytes of one worker for one exchange, per repetition
        self.bits_per_round = float(algorithm.bits(d))
        self.bytes_per_round = self.wire_bytes_per_round()

    def wire_bytes_per_round(self) -> float:
        """Bytes one worker hands to the wire per exchange, per repetition."""
        return wire_bytes(self.algorithm.compressor, self.rows, self.d, self.dtype) / self.rows

    def put(self, out: WorkersOut, workers: Sequence[int], rnd: Tensor | None) -> None:
        raise NotImplementedError

    def total(self, draws: Any) -> Tensor:
        """Σ_i m_i over all workers. ``draws(j)`` gives worker j's compressor draw for this step."""
        raise NotImplementedError

    def combine(self, values: list[float]) -> list[float]:
        """Sums of scalars over all participants (the compression-error statistics)."""
        return values

    def mean(self, stacked: Tensor, workers: int) -> Tensor:
        """The mean over all N workers of a per-worker tensor (held workers stacked on dim 0), the same
        on every participant (a local method's optimizer state, averaged uncompressed in the same round:
        its bits and bytes are counted, not a new round)."""
        per_worker = stacked[0].numel() / self.rows
        self.log.record(8 * per_worker * stacked.element_size(), per_worker * stacked.element_size(), rounds=0)
        return self._sum(stacked).div_(workers)

    def _sum(self, stacked: Tensor) -> Tensor:
        return stacked.sum(0)


class InProcessExchange(Exchange):
    """All N workers in this process: Σ_i m_i of their stacked messages, in worker order."""

    def __init__(self, algorithm: Algorithm, rows: int, d: int, dtype: torch.dtype) -> None:
        super().__init__(algorithm, rows, d, dtype)
        self._total: Tensor | None = None

    def put(self, out: WorkersOut, workers: Sequence[int], rnd: Tensor | None) -> None:
        assert out.messages is not None  # an exchange without payloads always gets the decoded messages
        self._total = sum_messages(out.messages, self._total)

    def total(self, draws: Any) -> Tensor:
        t, self._total = self._total, None
        if t is None:
            raise RuntimeError("total() before any put(): no messages this step")
        self.log.record(self.bits_per_round, self.bytes_per_round)
        return t
