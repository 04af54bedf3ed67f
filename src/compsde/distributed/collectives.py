"""The exchange of one step over torch.distributed: payloads → collective → Σ_i m_i, bytes counted.

The collective follows from the compressor's declared properties: ``summable`` payloads (identity,
shared rand-k) are all-reduced as values and decoded once; every other payload is serialised into a
fixed-size byte buffer per worker (``compsde.compressors.wire``) and concatenated by one all-gather
(``all_gather_single``, the 2.13 name of ``all_gather_into_tensor``), then decoded worker by worker
into the sum, in worker order (the simulator's order: same bits). Each exchange is a communication
event: the bytes of the tensors actually handed to the collective are counted when it happens.

Receivers that need a sender's draw to decode (rand-k with independent indices: the indices never
travel) replay that sender's compressor stream: the loop holds every worker's compressor stream
(``replay``) and hands the exchange each one's draw.

``Wire`` is this exchange for one shape; the distributed backend's ``CollectiveExchange`` (one step of
the simulator's loop) and the DDP hook (``compsde.distributed.comm_hook``, one gradient bucket,
asynchronously) both send through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from compsde.algorithms import Algorithm, WorkersOut
from compsde.algorithms.aggregation import Aggregate
from compsde.compressors import Compressor, Payload
from compsde.compressors.wire import Layout, decode_sum
from compsde.sim.exchange import Exchange

__all__ = ["WIRE_METHODS", "CollectiveExchange", "Wire", "all_gather_bytes", "check_wire", "finish_direction", "flat_floats",
           "receive", "unflat_floats"]


def all_gather_bytes(out: Tensor, inp: Tensor, group: dist.ProcessGroup | None = None, async_op: bool = False):
    """``all_gather_single`` where torch has it (2.13 deprecates ``all_gather_into_tensor``)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


def flat_floats(payload: Payload, out: Tensor | None = None) -> Tensor:
    """The float fields of a summable payload as one flat tensor (the all-reduce buffer), written into
    ``out`` if given (a reused buffer)."""
    if out is None:
        return torch.cat([t.reshape(-1) for t in payload.fields.values()])
    off = 0
    for t in payload.fields.values():
        out[off: off + t.numel()].copy_(t.reshape(-1))
        off += t.numel()
    return out


def unflat_floats(flat: Tensor, like: Payload) -> Payload:
    """Inverse of ``flat_floats`` on the layout of ``like``."""
    out, off = {}, 0
    for name, t in like.fields.items():
        out[name] = flat[off: off + t.numel()].view(t.shape)
        off += t.numel()
    return Payload(out, like.d, like.dtype)


#: What a compressor must implement for its payloads to travel (``Compressor``'s defaults raise
#: NotImplementedError): the payload's fields, both halves, and the declared bits.
WIRE_METHODS = ("fields", "encode", "decode", "bits")


def check_wire(compressor: Compressor, who: str) -> None:
    """ValueError naming what ``compressor`` lacks when it cannot travel through collectives: ``who``
    sends its payloads, which needs ``WIRE_METHODS`` (and ``decode_count`` when it declares ``counted``),
    not only ``apply``."""
    need = list(WIRE_METHODS) + (["decode_count"] if compressor.counted is not None else [])
    missing = [m for m in need if getattr(type(compressor), m) is getattr(Compressor, m)]
    if missing:
        raise ValueError(
            f"{who}: the compressor {compressor!r} ({type(compressor).__qualname__}) does not implement "
            f"{', '.join(missing)}: {who} sends payloads (compressors/base.py: fields declares them, encode "
            "writes them, decode reads them, bits counts them), so a Compressor subclass must implement these "
            "as well as apply")


def receive(algorithm: Algorithm, layout: Layout, buffers: Tensor, rnds: Sequence[Tensor | None], out: Tensor,
            server_state: Any) -> tuple[Tensor, Any]:
    """The server's direction from n workers' all-gathered buffers: Σ_i decode(payload_i) (``decode_sum``),
    the aggregate and the server transform (``finish_direction``)."""
    return finish_direction(algorithm, buffers.shape[0], server_state,
                            lambda finish: decode_sum(algorithm.compressor, layout, buffers, rnds, out=out, finish=finish))


def finish_direction(algorithm: Algorithm, workers: int, server_state: Any,
                     total: Callable[[Callable[[Tensor], Tensor] | None], Tensor]) -> tuple[Tensor, Any]:
    """The server's direction d = T_s(aggregate(Σ_i m_i)) without the iterate, from ``total(finish)``
    (which decodes Σ_i m_i and applies ``finish`` to it, in place). Without server transforms the
    aggregate (mean or sign) is elementwise and is handed to the decoder as ``finish``, which applies
    it to each block as it is decoded, in cache (the same bits as afterwards)."""
    if not algorithm.server.names:
        return total(Aggregate(workers, algorithm.aggregation)), server_state
    return algorithm.direction(total(None), workers, server_state, None)


class Wire:
    """The collective that carries one worker's payload of ``rows`` rows of length d, in ``dtype``, to
    Σ_i m_i over the ``workers`` ranks of ``group``, with buffers reused from exchange to exchange.

    Summable payloads (``Compressor.summable``) are all-reduced as their float fields and decoded once;
    every other payload is packed into its wire format (``Layout``), all-gathered and decoded worker by
    worker, in worker order (``decode_sum``). ``start`` packs and starts the collective (synchronously,
    or asynchronously for a DDP hook); once it has completed, ``total`` or ``direction`` decodes.
    Receivers replay the draws that a payload omits (``replay``: rand-k's indices): ``draws`` lists
    every worker's draw, to be taken before the collective, in the same order on every rank.
    """

    def __init__(self, compressor: Compressor, rows: int, d: int, dtype: torch.dtype, *, workers: int, rank: int,
                 group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu") -> None:
        self.compressor, self.rows, self.d = compressor, rows, d
        self.workers, self.rank, self.group = workers, rank, group
        self.summable = compressor.summable
        self.layout = None if self.summable else Layout(compressor.fields(d, dtype), rows, d, dtype)
        #: decoding another worker's payload needs its draw, which this process replays
        self.replay = (not self.summable and compressor.randomized and not compressor.shared_randomness
                       and compressor.decode_needs_draw(d))
        # Buffers reused every step (fresh d-length tensors would pay page faults on every step).
        if self.layout is not None:
            self.send = torch.empty(self.layout.nbytes, dtype=torch.uint8, device=device)
            self.recv = torch.empty(workers, self.layout.nbytes, dtype=torch.uint8, device=device)
        else:
            n = sum(f.count for f in compressor.fields(d, dtype)) * rows
            self.send = torch.empty(n, dtype=dtype, device=device)
        #: bytes this worker hands to the collective per exchange
        self.nbytes = self.send.numel() * self.send.element_size()

    @property
    def collective(self) -> str:
        return "all_reduce" if self.summable else "all_gather"

    def draws(self, own: Tensor | None, draw: Callable[[int], Tensor | None]) -> list[Tensor | None]:
        """Every worker's draw for decoding: this rank's ``own``, and, where the payloads omit what the
        draws determine (``replay``), worker j's replayed ``draw(j)`` (leading axis 1), in worker order."""
        if self.replay:
            return [own if j == self.rank else _row0(draw(j)) for j in range(self.workers)]
        return [own] * self.workers  # a shared draw, or none needed to decode

    def start(self, payload: Payload, *, async_op: bool = False) -> dist.Work | None:
        """Write this worker's ``payload`` (fields of shape (rows, count)) into the send buffer and start
        the collective; with ``async_op`` return its work handle."""
        if self.layout is None:
            flat_floats(payload, out=self.send)  # a copy: the all-reduce works in place
            return dist.all_reduce(self.send, group=self.group, async_op=async_op)
        self.layout.pack(payload, out=self.send)
        return all_gather_bytes(self.recv.view(-1), self.send, group=self.group, async_op=async_op)

    def total(self, payload: Payload, rnds: Sequence[Tensor | None], out: Tensor | None = None,
              finish: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Σ_i m_i (rows, d) once the collective has completed (``payload`` is this worker's, for the
        shapes; ``rnds`` from ``draws``), written into ``out`` when the decoder can; ``finish`` (an
        elementwise in-place function) is applied to it."""
        if self.layout is None:
            summed = self.compressor.decode(unflat_floats(self.send, payload), rnds[self.rank])
            return summed if finish is None else finish(summed)
        return decode_sum(self.compressor, self.layout, self.recv, rnds, out=out, finish=finish)

    def direction(self, algorithm: Algorithm, payload: Payload, rnds: Sequence[Tensor | None], out: Tensor | None,
                  server_state: Any) -> tuple[Tensor, Any]:
        """The server's direction (``finish_direction``) from the completed collective."""
        return finish_direction(algorithm, self.workers, server_state,
                                lambda finish: self.total(payload, rnds, out=out, finish=finish))


class CollectiveExchange(Exchange):
    """One worker's side of a step's communication, for a fixed algorithm, shape and process group.

    ``total`` returns Σ_i m_i (rows, d), identical on every worker, through a ``Wire``: sum mode →
    decode(all_reduce(payload)); gather mode → ``decode_sum`` over the all-gathered buffers.
    """

    needs_payload = True

    def __init__(self, algorithm: Algorithm, rows: int, d: int, dtype: torch.dtype, *, workers: int, rank: int,
                 group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu") -> None:
        check_wire(algorithm.compressor, "the distributed backend")
        super().__init__(algorithm, rows, d, dtype)
        self.workers, self.rank, self.group, self.device = workers, rank, group, torch.device(device)
        self.wire = Wire(algorithm.compressor, rows, d, dtype, workers=workers, rank=rank, group=group, device=device)
        self.replay = self.wire.replay
        self.out = None if self.wire.summable else torch.empty(rows, d, dtype=dtype, device=device)
        self._payload: Payload | None = None
        self._rnd: Tensor | None = None
        #: seconds inside the collectives, and decoding + summing
        self.t_comm = 0.0
        self.t_aggregate = 0.0

    @property
    def collective(self) -> str:
        return self.wire.collective

    def put(self, out: WorkersOut, workers: Sequence[int], rnd: Tensor | None) -> None:
        if out.payload is None:
            raise RuntimeError("the collective exchange needs the workers' payloads (encode=True)")
        self._payload, self._rnd = out.payload, None if rnd is None else rnd[0]

    def total(self, draws: Callable[[int], Tensor | None]) -> Tensor:
        payload = self._payload
        if payload is None:
            raise RuntimeError("total() before put(): no payload this step")
        payload = Payload({k: v[0] for k, v in payload.fields.items()}, payload.d, payload.dtype)  # this worker's
        t0 = time.perf_counter()
        self.wire.start(payload)
        t1 = time.perf_counter()
        out = self.wire.total(payload, self.wire.draws(self._rnd, draws), out=self.out)
        self.t_comm += t1 - t0
        self.t_aggregate += time.perf_counter() - t1
        self.log.record(self.bits_per_round, self.wire.nbytes / self.rows)
        self._payload = None
        return out

    def combine(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        dist.all_reduce(t, group=self.group)
        return t.tolist()

    def _sum(self, stacked: Tensor) -> Tensor:
        t = stacked.sum(0)
        dist.all_reduce(t, group=self.group)
        return t


def _row0(rnd: Tensor | None) -> Tensor | None:
    return None if rnd is None else rnd[0]
