"""The exchange of one step: payloads → collective → sum of the messages, with the bytes counted.

The collective follows from the compressor's declared properties (``compsde.distributed.wire``):
``summable`` payloads (identity, shared rand-k) go through ``all_reduce``; every other payload is a
fixed-size byte buffer per worker, concatenated by one all-gather (``all_gather_single``, the 2.13
name of ``all_gather_into_tensor``). ``wire_bytes`` counts the bytes of the tensors actually handed
to the collective (the input of this worker), per call.

Receivers that need a sender's draw (rand-k with independent indices: the indices never travel)
replay that sender's compressor stream with ``Replay``.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from compsde.compressors import Compressor
from compsde.distributed.wire import Codec, Layout
from compsde.streams import compressor_generator

__all__ = ["Exchange", "Replay", "all_gather_bytes"]


def all_gather_bytes(out: Tensor, inp: Tensor, group: dist.ProcessGroup | None = None, async_op: bool = False):
    """``all_gather_single`` where torch has it (2.13 deprecates ``all_gather_into_tensor``)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


class Replay:
    """The compressor draws of the other workers, regenerated from their compressor streams.

    Worker j's draw at a step is ``compressor.draw((1, rows), d, compressor_generator(seed, j))``,
    which is what ``compsde.simulator.Draws`` makes worker j draw; replaying it costs one draw per
    sender and step, and saves sending the indices.
    """

    def __init__(self, compressor: Compressor, seed: int, workers: int, own: int, rows: int, d: int,
                 dtype: torch.dtype) -> None:
        self.compressor, self.own, self.rows, self.d, self.dtype = compressor, own, rows, d, dtype
        self.gens = {j: compressor_generator(seed, j) for j in range(workers) if j != own}

    def __call__(self, own_rnd: Tensor | None) -> list[Tensor | None]:
        """Every worker's draw for this step (``own_rnd`` for this worker), each (rows, ·)."""
        out: list[Tensor | None] = []
        for j in range(len(self.gens) + 1):
            if j == self.own:
                out.append(own_rnd)
            else:
                r = self.compressor.draw((1, self.rows), self.d, self.gens[j], self.dtype)
                out.append(None if r is None else r[0])
        return out

    def state(self) -> dict[int, Tensor]:
        return {j: g.get_state() for j, g in self.gens.items()}

    def load_state(self, states: dict[int, Tensor]) -> None:
        for j, st in states.items():
            self.gens[int(j)].set_state(st)


class Exchange:
    """One worker's side of a step's communication for a fixed codec, shape and process group.

    ``__call__(parts, rnds)`` returns the sum of the workers' messages (rows, d), identical on every
    worker: sum mode → ``decode_sum(all_reduce(payload))``; gather mode → ``codec.total`` over the
    all-gathered buffers.
    """

    def __init__(self, codec: Codec, *, rows: int, d: int, dtype: torch.dtype, workers: int,
                 group: dist.ProcessGroup | None = None, exact: bool = True,
                 device: torch.device | str = "cpu") -> None:
        self.codec, self.rows, self.d, self.dtype, self.workers = codec, rows, d, dtype, workers
        self.group, self.exact = group, exact
        if codec.summable:
            self.layout = None
            self.send = torch.empty(codec.sum_shape(rows, d), dtype=dtype, device=device)
        else:
            self.layout = Layout(codec.fields(rows, d, dtype))
            self.send = torch.empty(self.layout.nbytes, dtype=torch.uint8, device=device)
            self.recv = torch.empty(workers, self.layout.nbytes, dtype=torch.uint8, device=device)
        #: bytes of the tensors this worker handed to collectives, and how many calls.
        self.wire_bytes = 0
        self.calls = 0
        #: seconds spent inside the collective (communicate) and decoding + aggregating.
        self.t_comm = 0.0
        self.t_aggregate = 0.0

    @property
    def bytes_per_call(self) -> int:
        """Bytes one worker hands to the collective per step (all rows)."""
        return self.send.numel() * self.send.element_size()

    def __call__(self, parts: dict[str, Tensor], rnds: Sequence[Tensor | None],
                 common_rnd: Tensor | None = None) -> Tensor:
        """Exchange this worker's payload and return Σ_i m_i (rows, d), the sum of all workers'
        decompressed messages, which ``Method.finish`` turns into the update as in the simulator.

        ``rnds``: every worker's draw (gather mode, for codecs that need them); ``common_rnd``: the
        draw all workers share (sum mode: shared rand-k's indices).
        """
        t0 = time.perf_counter()
        if self.layout is None:
            self.send.copy_(parts["sum"])
            dist.all_reduce(self.send, group=self.group)
            self._count(self.send)
            t1 = time.perf_counter()
            out = self.codec.decode_sum(self.send, common_rnd, self.d)
        else:
            self.layout.pack(parts, out=self.send)
            all_gather_bytes(self.recv.view(-1), self.send, group=self.group)
            self._count(self.send)
            t1 = time.perf_counter()
            views = self.layout.unpack(self.recv)
            out = self.codec.total(views, rnds, self.rows, self.d, self.dtype, exact=self.exact)
        t2 = time.perf_counter()
        self.t_comm += t1 - t0
        self.t_aggregate += t2 - t1
        return out

    def _count(self, t: Tensor) -> None:
        self.wire_bytes += t.numel() * t.element_size()
        self.calls += 1
