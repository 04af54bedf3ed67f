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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from compsde.algorithms import Algorithm, WorkersOut
from compsde.algorithms.aggregation import aggregate_sum
from compsde.compressors import Payload
from compsde.compressors.wire import Layout, decode_sum
from compsde.sim.exchange import Exchange

__all__ = ["CollectiveExchange", "all_gather_bytes", "flat_floats", "receive", "unflat_floats"]


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


def receive(algorithm: Algorithm, layout: Layout, buffers: Tensor, rnds: Sequence[Tensor | None], out: Tensor,
            server_state: Any) -> tuple[Tensor, Any]:
    """The server's direction from n workers' all-gathered buffers: Σ_i decode(payload_i) (``decode_sum``),
    the aggregate and the server transform. Without server transforms the aggregate (mean or sign) is
    elementwise and is applied to each block as it is decoded, in cache (the same bits as afterwards)."""
    n = buffers.shape[0]
    if not algorithm.server.names:
        how = algorithm.aggregation
        return decode_sum(algorithm.compressor, layout, buffers, rnds, out=out,
                          finish=lambda t: aggregate_sum(t, n, how)), server_state
    return algorithm.direction(decode_sum(algorithm.compressor, layout, buffers, rnds, out=out), n, server_state, None)


class CollectiveExchange(Exchange):
    """One worker's side of a step's communication, for a fixed algorithm, shape and process group.

    ``total`` returns Σ_i m_i (rows, d), identical on every worker: sum mode → decode(all_reduce(payload));
    gather mode → ``decode_sum`` over the all-gathered buffers.
    """

    needs_payload = True

    def __init__(self, algorithm: Algorithm, rows: int, d: int, dtype: torch.dtype, *, workers: int, rank: int,
                 group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__(algorithm, rows, d, dtype)
        comp = algorithm.compressor
        self.workers, self.rank, self.group, self.device = workers, rank, group, torch.device(device)
        self.summable = comp.summable
        self.layout = None if self.summable else Layout(comp.fields(d, dtype), rows, d, dtype)
        #: decoding another worker's payload needs its draw, which this process replays
        self.replay = (not self.summable and comp.randomized and not comp.shared_randomness
                       and comp.decode_needs_draw(d))
        # Buffers reused every step (fresh d-length tensors would pay page faults on every step).
        if self.layout is not None:
            self.send = torch.empty(self.layout.nbytes, dtype=torch.uint8, device=device)
            self.recv = torch.empty(workers, self.layout.nbytes, dtype=torch.uint8, device=device)
            self.out = torch.empty(rows, d, dtype=dtype, device=device)
        else:
            n = sum(f.count for f in comp.fields(d, dtype)) * rows
            self.send = torch.empty(n, dtype=dtype, device=device)
        self._payload: Payload | None = None
        self._rnd: Tensor | None = None
        #: seconds inside the collectives, and decoding + summing
        self.t_comm = 0.0
        self.t_aggregate = 0.0

    @property
    def collective(self) -> str:
        return "all_reduce" if self.summable else "all_gather"

    def put(self, out: WorkersOut, workers: Sequence[int], rnd: Tensor | None) -> None:
        if out.payload is None:
            raise RuntimeError("the collective exchange needs the workers' payloads (encode=True)")
        self._payload, self._rnd = out.payload, None if rnd is None else rnd[0]

    def total(self, draws: Callable[[int], Tensor | None]) -> Tensor:
        payload, own = self._payload, self._rnd
        if payload is None:
            raise RuntimeError("total() before put(): no payload this step")
        payload = Payload({k: v[0] for k, v in payload.fields.items()}, payload.d, payload.dtype)  # this worker's
        comp = self.algorithm.compressor
        t0 = time.perf_counter()
        if self.layout is None:
            send = flat_floats(payload, out=self.send)  # a copy: the all-reduce works in place
            dist.all_reduce(send, group=self.group)
            sent = send.numel() * send.element_size()
            t1 = time.perf_counter()
            out = comp.decode(unflat_floats(send, payload), own)
        else:
            self.layout.pack(payload, out=self.send)
            all_gather_bytes(self.recv.view(-1), self.send, group=self.group)
            sent = self.send.numel()
            t1 = time.perf_counter()
            if self.replay:
                rnds: list[Any] = [own if j == self.rank else _row0(draws(j)) for j in range(self.workers)]
            else:
                rnds = [own] * self.workers  # a shared draw, or none needed to decode
            out = decode_sum(comp, self.layout, self.recv, rnds, out=self.out)
        self.t_comm += t1 - t0
        self.t_aggregate += time.perf_counter() - t1
        self.log.record(self.bits_per_round, sent / self.rows)
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
