"""A DDP communication hook that compresses gradients with any compsde compressor.

    state, hook = compsde.distributed.comm_hook("sign", aggregation="majority")
    ddp_model.register_comm_hook(state, hook)

For each gradient bucket (a flat tensor g of length n) on each of the N ranks:

* mean of compressed (unbiased compressors: rand-k, natural, qsgd, ...):  g ← (1/N) Σ_i C_i(g_i);
* error feedback (biased compressors: top-k, scaled-sign, ...; ``error_feedback=True``):
  p_i = e_i + g_i, m_i = C_i(p_i), e_i ← p_i − m_i (kept per bucket on its rank), g ← (1/N) Σ_i m_i
  — the EF of ``compsde.error_feedback`` with the learning rate left to the optimizer, as in
  Karimireddy et al. 2019 and PyTorch's PowerSGD hook;
* sign / majority vote (``"sign"`` with ``aggregation="majority"``): g ← sign(Σ_i sign(g_i)).

The payloads travel in the formats of ``compsde.distributed.wire`` (signs bit-packed, top-k values and
indices, quantiser levels and norms), through an all-reduce when the compressor is summable and an
all-gather otherwise, asynchronously (the hook returns the collective's future, continued by the
decoding). Random compressors draw from ``compsde.streams``: rank i uses its compressor stream
``compressor_generator(seed, i)`` (shared ones ``shared_generator(seed)``), and receivers replay
the senders' streams for rand-k, whose indices never travel. Buckets are processed in the same order
on every rank (DDP guarantees it), so the replayed draws match.

The state records the bytes handed to the collectives (``wire_bytes``, per bucket and per step).
"""

import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist

from compsde import compressors as compressors_mod
from compsde.aggregation import AGGREGATIONS
from compsde.compressors import Compressor
from compsde.distributed.collectives import all_gather_bytes
from compsde.distributed.wire import Layout, codec_for
from compsde.streams import compressor_generator, shared_generator

__all__ = ["CompressionState", "comm_hook"]


class CompressionState:
    """State of ``comm_hook``'s hook: what to do (tunables), what it carries over (internal state),
    and what it measured (statistics)."""

    def __init__(self, compressor: Compressor, *, error_feedback: bool = False, aggregation: str = "mean",
                 seed: int = 0, process_group: dist.ProcessGroup | None = None) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        if not isinstance(error_feedback, bool):
            raise ValueError(f"error_feedback must be True or False, got {error_feedback!r}")
        if not dist.is_initialized():
            raise RuntimeError("comm_hook needs an initialised process group (dist.init_process_group)")
        # ---- tunables
        self.compressor = compressor
        self.codec = codec_for(compressor)
        self.error_feedback = error_feedback
        self.aggregation = aggregation
        self.seed = seed
        self.process_group = process_group
        # ---- internal state
        self.rank = dist.get_rank(process_group)
        self.world = dist.get_world_size(process_group)
        #: this rank's compressor stream, the shared stream, and the other ranks' streams (replayed)
        self.generator = compressor_generator(seed, self.rank)
        self.shared = shared_generator(seed)
        self.replayed = {j: compressor_generator(seed, j) for j in range(self.world) if j != self.rank}
        #: error-feedback memory e per bucket index (reset when a bucket changes size, as DDP
        #: rebuilds its buckets after the first iteration)
        self.memory: dict[int, torch.Tensor] = {}
        self.iteration = 0
        self._layouts: dict[tuple[int, torch.dtype], Layout] = {}
        # ---- statistics
        #: bytes this rank handed to collectives: in total, per bucket in the last iteration
        self.wire_bytes = 0
        self.bucket_bytes: dict[int, int] = {}
        #: gradient values per bucket in the last iteration (what fp32 all-reduce would send ×4 bytes)
        self.bucket_numel: dict[int, int] = {}

    # ---- statistics ------------------------------------------------------------------------------
    def wire_bytes_per_step(self) -> int:
        """Bytes this rank hands to the collectives per training step (sum over buckets)."""
        return sum(self.bucket_bytes.values())

    def declared_bits_per_step(self) -> int:
        """The compressor's declared bits for the buckets of one step (per rank)."""
        return sum(self.compressor.bits(n) for n in self.bucket_numel.values())

    # ---- draws -----------------------------------------------------------------------------------
    def _draw(self, gen: torch.Generator, n: int, dtype: torch.dtype) -> torch.Tensor | None:
        r = self.compressor.draw((1, 1), n, gen, dtype)
        return None if r is None else r[0]

    def draws(self, n: int, dtype: torch.dtype) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
        """(this rank's draw, every rank's draw) for a bucket of n values, consumed in bucket order."""
        c = self.compressor
        if not c.randomized:
            return None, [None] * self.world
        if c.shared_randomness:
            r = self._draw(self.shared, n, dtype)
            return r, [r] * self.world
        own = self._draw(self.generator, n, dtype)
        if not self.codec.needs_draws(n):
            return own, [own] * self.world
        every = [own if j == self.rank else self._draw(self.replayed[j], n, dtype) for j in range(self.world)]
        return own, every

    def layout(self, n: int, dtype: torch.dtype) -> Layout:
        key = (n, dtype)
        if key not in self._layouts:
            self._layouts[key] = Layout(self.codec.fields(1, n, dtype))
        return self._layouts[key]

    def __setstate__(self, state: dict[str, Any]) -> None:  # pragma: no cover - DDP may pickle states
        self.__dict__.update(state)


def _finish(total: torch.Tensor, how: str, n: int) -> torch.Tensor:
    return total.div_(n) if how == "mean" else total.sign_()


def _compressed_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Compress this rank's bucket, exchange, and return the future of the aggregated gradient."""
    buf = bucket.buffer()
    idx = bucket.index()
    n = buf.numel()
    x = buf.view(1, n)
    codec = state.codec
    own, every = state.draws(n, buf.dtype)
    if state.error_feedback:
        e = state.memory.get(idx)
        if e is None or e.shape != x.shape or e.dtype != x.dtype:
            e = torch.zeros_like(x)
        p = e + x
        parts, message = codec.encode(p, own, need_message=True)
        assert message is not None
        state.memory[idx] = p - message
    else:
        parts, _ = codec.encode(x, own, need_message=False)
    how, world = state.aggregation, state.world

    if codec.summable:
        send = parts["sum"].contiguous()  # the bucket itself for the identity: reduced in place
        fut = dist.all_reduce(send, group=state.process_group, async_op=True).get_future()

        def done_sum(f: torch.futures.Future) -> torch.Tensor:
            total = codec.decode_sum(f.value()[0], own, n)
            buf.copy_(_finish(total, how, world).view(-1))
            return buf

        _count(state, idx, n, send)
        if bucket.is_last():
            state.iteration += 1
        return fut.then(done_sum)

    layout = state.layout(n, buf.dtype)
    send = layout.pack(parts)
    recv = torch.empty(world * layout.nbytes, dtype=torch.uint8, device=buf.device)
    fut = all_gather_bytes(recv, send, group=state.process_group, async_op=True).get_future()

    def done_gather(f: torch.futures.Future) -> torch.Tensor:
        views = layout.unpack(recv.view(world, layout.nbytes))
        agg = codec.aggregate(views, every, how, 1, n, buf.dtype, exact=False)
        buf.copy_(agg.view(-1))
        return buf

    _count(state, idx, n, send)
    if bucket.is_last():
        state.iteration += 1
    return fut.then(done_gather)


def _count(state: CompressionState, idx: int, n: int, sent: torch.Tensor) -> None:
    b = sent.numel() * sent.element_size()
    state.wire_bytes += b
    state.bucket_bytes[idx] = b
    state.bucket_numel[idx] = n


def comm_hook(compressor: Compressor | str, *, error_feedback: bool = False, aggregation: str = "mean",
              seed: int = 0, process_group: dist.ProcessGroup | None = None,
              **params: Any) -> tuple[CompressionState, Callable[..., Any]]:
    """``(state, hook)`` for ``ddp_model.register_comm_hook(state, hook)``.

    Args:
        compressor: a ``Compressor`` or a registered name (``"sign"``, ``"top-k"``, ``"rand-k+natural"``,
            ...), with its parameters in ``params`` (``ratio=0.01``, ``levels=4``, ...).
        error_feedback: keep e_i per bucket on each rank and compress e_i + g_i (for biased compressors).
        aggregation: ``"mean"`` (mean of the decompressed messages) or ``"majority"`` (sign of their
            sum: majority vote for ``"sign"``).
        seed: the seed of the compressor streams (``compsde.streams``); must be equal on all ranks.
        process_group: the group to communicate in (default: the default group).
    """
    comp = compressors_mod.make(compressor, **params) if isinstance(compressor, str) else compressor
    if not isinstance(comp, Compressor):
        raise ValueError(f"compressor must be a Compressor or a name, got {compressor!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    if params and not isinstance(compressor, str):
        raise ValueError(f"parameters {sorted(params)} given with a built compressor; pass them to its constructor")
    if error_feedback and comp.unbiased and not isinstance(comp, compressors_mod.compressor_class("identity")):
        warnings.warn(
            f"error_feedback=True with the unbiased compressor {comp!r}: error feedback is meant for biased "
            "(contractive) compressors such as top-k or scaled-sign; around an unbiased one with ω ≥ 1 (scaled "
            "rand-k: ω = d/k − 1) it can diverge. Use the mean of compressed messages (error_feedback=False).",
            stacklevel=2)
    state = CompressionState(comp, error_feedback=error_feedback, aggregation=aggregation, seed=seed,
                             process_group=process_group)
    return state, _compressed_hook

