"""What the workers send: their vectors compressed directly, or through error feedback around the compressor.

``Direct(C)``           m_i = C_i(u_i)                                      no memory
``ErrorFeedback(C)``    v_i = e_i + η u_i,  m_i = C_i(v_i),  e_i ← v_i − m_i  memory e_i per worker

Error feedback (Seide et al. 2014; Stich, Cordonnier & Jaggi 2018; Karimireddy et al. 2019) keeps what
compression dropped and adds it to the next message, so a biased compressor (top-k, scaled sign) converges
where it alone would not (the Top-1 counter-example, docs/theory.md §4). The step size η is inside the
message, so the server steps x ← x − aggregate (``Algorithm.apply_update``). The memory is state like any
other (``init``: zeros with the workers' leading axis), checkpointed and sliced with the workers.

Both are called the same way by ``Algorithm.compress``: the simulator, the torch.distributed worker, the
DDP hook and the ``LocalSGD`` driver do not know which one they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from compsde.compressors import Compressor, Payload
from compsde.compressors.sparsifiers import Sparsifier

__all__ = ["Compressed", "Direct", "ErrorFeedback"]


class Compressed(NamedTuple):
    inputs: Tensor  # v_i, what each worker compressed
    messages: Tensor | None  # m_i = C_i(v_i), decoded; None when not asked for
    payload: Payload | None  # the encoded messages, when asked for
    memory: Tensor | None  # the new memory (error feedback) or None


@dataclass(frozen=True)
class Direct:
    """m_i = C_i(u_i): the workers' vectors compressed as they are."""

    compressor: Compressor
    #: the server multiplies the aggregate by η_k (the messages are η-free)
    carries_lr = False

    def init(self, stacked: Tensor) -> Tensor | None:
        return None

    def __call__(self, u: Tensor, memory: Tensor | None, lr: float, rnd: Tensor | None, *, encode: bool = False,
                 messages: bool = True, reuse_memory: bool = False) -> Compressed:
        """Compress u (n, ..., d) with the draws ``rnd``; ``encode``: also the payload; ``messages``: also the
        decoded messages (always without ``encode``); ``reuse_memory``: see ``ErrorFeedback`` (no memory here)."""
        return _compress(self.compressor, u, rnd, encode, messages)


@dataclass(frozen=True)
class ErrorFeedback:
    """v_i = e_i + η u_i, m_i = C_i(v_i), e_i ← v_i − m_i (module doc)."""

    compressor: Compressor
    #: the messages hold η_k: the server steps by the aggregate itself
    carries_lr = True

    def init(self, stacked: Tensor) -> Tensor:
        return torch.zeros(stacked.shape, dtype=stacked.dtype, device=stacked.device)

    def __call__(self, u: Tensor, memory: Tensor | None, lr: float, rnd: Tensor | None, *, encode: bool = False,
                 messages: bool = True, reuse_memory: bool = False) -> Compressed:
        """As ``Direct.__call__``, with the memory e (same shape as u).

        With a sparsifier that keeps k < d coordinates (top-k, rand-k), ``encode=True`` and
        ``messages=False``, the new memory is formed without a dense message: m = C(v) is v's kept
        values s·v_S at the indices S and zero elsewhere, so v − m is v outside S (v_j − 0 = v_j, bit for
        bit, −0.0 and NaN included) and v_S − s·v_S on S, the same subtraction as the dense one.

        ``reuse_memory=True`` hands ``memory`` over: v is formed in it (memory + η u, the same sum), and
        the new memory e is then written over v where neither the payload nor the messages are views of
        it (every compressor but the identity), so the returned ``inputs`` and ``memory`` are then one
        tensor holding e, not v: no fresh d-length tensor per step. Only for a caller that reads neither
        v nor its old memory afterwards (the DDP hook, which keeps one memory per bucket); the
        simulator reads ``inputs`` for the compression error and does not pass it.
        """
        if memory is None:
            raise ValueError("error feedback needs its memory in the state (Algorithm.init)")
        step = u if lr == 1.0 else lr * u  # η u; 1·u = u
        v = memory.add_(step) if reuse_memory else memory + step
        c = self.compressor
        if encode and not messages and isinstance(c, Sparsifier) and c.support(v.shape[-1]) < v.shape[-1]:
            payload = c.encode(v, rnd)
            e = v if reuse_memory else v.clone()
            return Compressed(v, None, payload, c.subtract_kept(e, payload, rnd))
        out = _compress(c, v, rnd, encode, True)  # the memory needs the decoded messages
        assert out.messages is not None
        if reuse_memory and not any(_shares_memory(t, v) for t in (out.messages, *(out.payload.fields.values()
                                                                                 if out.payload is not None else ()))):
            return out._replace(memory=v.sub_(out.messages))
        # A fresh memory where the payload or the messages are views of v (identity's are v itself).
        return out._replace(memory=v - out.messages)  # e ← v − C(v): stays on its worker


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors are views of one storage."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _compress(c: Compressor, v: Tensor, rnd: Tensor | None, encode: bool, messages: bool) -> Compressed:
    payload = c.encode(v, rnd) if encode else None
    if payload is None:
        return Compressed(v, c.apply(v, rnd), None, None)
    return Compressed(v, c.decode(payload, rnd) if messages else None, payload, None)
