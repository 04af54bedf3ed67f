"""A DDP communication hook that runs a compsde algorithm's exchange on your own model's gradients.

    state, hook = compsde.distributed.comm_hook("sign", aggregation="majority")
    ddp_model.register_comm_hook(state, hook)

For each gradient bucket (a flat tensor g of length n) on each of the N ranks, the hook runs the same
step halves as the simulator and the distributed backend (``compsde.algorithms.Algorithm``): the
workers' half — worker transform (e.g. momentum before compression), error feedback p_i = e_i + g_i,
m_i = C_i(p_i), e_i ← p_i − m_i (per bucket on its rank; the learning rate is left to your optimizer,
as in Karimireddy et al. 2019 and PyTorch's PowerSGD hook), compression — then the exchange, then the
server's half without the step: the direction d = T_s(aggregate(Σ_i m_i)) (mean, or majority vote
for ``"sign"``), which replaces the bucket's gradient for your optimizer.

The payloads travel in the wire format of ``compsde.compressors.wire`` (signs bit-packed, top-k values
and indices, quantiser levels and norms) through an all-reduce when the compressor is summable and an
all-gather otherwise — the distributed backend's exchange (``compsde.distributed.collectives.Wire``),
started asynchronously here (the hook returns the collective's future, continued by the decoding). Random compressors draw from ``compsde.core.streams``: rank i uses its compressor stream,
shared ones the shared stream, and receivers replay the senders' streams for rand-k, whose indices
never travel. Buckets are processed in the same order on every rank (DDP guarantees it), so the
replayed draws match. The state records the bytes handed to the collectives, per bucket and per step.

Every rank must run the same configuration: a different compressor or k would make the collectives'
sizes differ, and a different seed would silently decode other draws than were encoded. At its first
bucket the hook all-gathers the configuration (algorithm, compressor and its parameters, seed) and
stops every rank with a ``ValueError`` naming what differs (``launch.check_same_settings``, the check
``compsde run --backend torch`` makes at start). A compressor must implement ``fields``, ``encode``,
``decode`` and ``bits`` (checked at registration), not only ``apply``.
"""

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from compsde import algorithms as algorithms_mod
from compsde.algorithms import Algorithm
from compsde.algorithms.aggregation import AGGREGATIONS
from compsde.compressors import Compressor, Payload
from compsde.core.checks import check_bool, check_choice, check_seed, describe
from compsde.core.streams import Streams
from compsde.distributed.collectives import Wire, check_wire
from compsde.distributed.launch import check_same_settings

__all__ = ["BUCKET_DTYPES", "CompressionState", "comm_hook"]

#: Gradient dtypes the hook compresses (the payloads' float fields, bit tricks of natural compression
#: and the sign packing are defined for IEEE floats).
BUCKET_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CompressionState:
    """State of ``comm_hook``'s hook: what to do (tunables), what it carries over (internal state),
    and what it measured (statistics)."""

    def __init__(self, algorithm: Algorithm, *, seed: int = 0, process_group: dist.ProcessGroup | None = None) -> None:
        if not isinstance(algorithm, Algorithm):
            raise ValueError(f"algorithm must be a compsde Algorithm, got {describe(algorithm)}")
        if algorithm.worker.uses_params or algorithm.server.uses_params:
            raise ValueError("a DDP hook sees gradients only: use your optimizer's weight_decay instead of the "
                             "algorithm's (it needs the parameters)")
        if algorithm.probe is not None:
            raise ValueError(f"a DDP hook sees one gradient per step: {algorithm.name!r} evaluates it again at a probe "
                             "point (sam, usam, seg, shgd), which the training loop must do before backward")
        if algorithm.local:
            raise ValueError(f"a DDP hook averages gradients every step: the local method {algorithm.name!r} averages "
                             "parameters (use compsde.distributed.LocalSGD)")
        check_wire(algorithm.compressor, "comm_hook")
        check_seed("seed", seed)
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise ValueError(f"process_group must be a torch.distributed ProcessGroup (dist.new_group(...)) or None "
                             f"for the default group, got {describe(process_group)}")
        if not dist.is_initialized():
            raise RuntimeError("comm_hook needs an initialised process group (dist.init_process_group)")
        # ---- tunables
        self.algorithm = algorithm
        self.compressor = algorithm.compressor
        self.seed = seed
        self.process_group = process_group
        # ---- internal state
        self.rank = dist.get_rank(process_group)
        if self.rank < 0:
            raise ValueError("process_group: this process is not a member of the given group")
        self.world = dist.get_world_size(process_group)
        #: whether the ranks have checked that they run the same configuration (at the first bucket)
        self.agreed = False
        #: every rank's compressor stream (this rank's own, the others' replayed) and the shared one
        self.streams = Streams(seed, self.world, noise=[], compressor=range(self.world))
        #: per bucket index: the algorithm's per-worker state (error feedback, momentum) and server state
        #: (reset when a bucket changes size, as DDP rebuilds its buckets after the first iteration)
        self.buckets: dict[int, dict[str, Any]] = {}
        self.iteration = 0
        # ---- statistics
        #: bytes this rank handed to collectives: in total, and per bucket in the last iteration
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

    # ---- per-bucket state ------------------------------------------------------------------------
    def bucket_state(self, idx: int, like: torch.Tensor) -> dict[str, Any]:
        st = self.buckets.get(idx)
        if st is None or st["numel"] != like.numel() or st["dtype"] != like.dtype or st["device"] != like.device:
            init = self.algorithm.init(torch.zeros(1, like.numel(), dtype=like.dtype, device=like.device), 1)
            st = {"worker": init["worker"], "ef": init["ef"], "server": init["server"],
                  "numel": like.numel(), "dtype": like.dtype, "device": like.device}
            self.buckets[idx] = st
        return st

    def wire(self, st: dict[str, Any]) -> Wire:
        """The bucket's ``Wire`` (its collective and reused buffers), made at its first exchange."""
        if "wire" not in st:
            st["wire"] = Wire(self.compressor, 1, st["numel"], st["dtype"], workers=self.world, rank=self.rank,
                              group=self.process_group, device=st["device"])
        return st["wire"]

    def settings(self) -> dict[str, Any]:
        """What every rank must agree on: the algorithm (method, aggregation, transforms), the compressor
        with its parameters, and the seed of the compressor streams."""
        algo = self.algorithm
        method = [algo.name, f"aggregation {algo.aggregation}", f"error feedback {algo.error_feedback}"]
        method += [f"{side}: {t.describe()}" for side, t in (("worker", algo.worker), ("server", algo.server)) if t.names]
        return {"algorithm": ", ".join(method), "compressor": repr(self.compressor), "seed": self.seed}

    def agree(self) -> None:
        """Check once, collectively, that every rank runs the same ``settings``; ValueError otherwise."""
        if not self.agreed:
            check_same_settings(self.settings(), what="comm_hook configuration", group=self.process_group,
                                why="every rank must register the same compressor, parameters, algorithm and seed")
            self.agreed = True

    def __setstate__(self, state: dict[str, Any]) -> None:  # pragma: no cover - DDP may pickle states
        self.__dict__.update(state)


def _row0(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t[0]


def _compressed_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The workers' half on this rank's bucket, the exchange, and the future of the direction."""
    buf = bucket.buffer()
    idx, n, dtype = bucket.index(), buf.numel(), buf.dtype
    if dtype not in BUCKET_DTYPES:
        raise ValueError(f"comm_hook: gradient bucket {idx} has dtype {dtype}; the compressor {state.compressor!r} "
                         f"works on floating-point buckets ({', '.join(str(d) for d in BUCKET_DTYPES)})")
    state.agree()
    algo, comp = state.algorithm, state.compressor
    st = state.bucket_state(idx, buf)
    wire = state.wire(st)
    draw = lambda j: algo.draw(state.streams, [j], 1, n, dtype)  # noqa: E731
    rnd = draw(state.rank) if not (comp.randomized and comp.shared_randomness) else algo.draw(state.streams, [], 1, n, dtype)
    # The bucket's memory is this hook's alone and replaced by the new one: v is formed in it.
    out = algo.workers_step(buf.view(1, 1, n), {"worker": st["worker"], "ef": st["ef"]}, None, 1.0, rnd, encode=True,
                            messages=False, reuse_memory=True)
    st["worker"], st["ef"] = out.state["worker"], out.state["ef"]
    assert out.payload is not None
    payload = Payload({k: v[0] for k, v in out.payload.fields.items()}, n, dtype)
    # Draw (or replay) every rank's randomness now, in bucket order: the decoding runs later.
    rnds = wire.draws(_row0(rnd), draw)
    work = wire.start(payload, async_op=True)
    assert work is not None
    _count(state, idx, n, wire.nbytes)

    def done(fut: torch.futures.Future) -> torch.Tensor:
        # Decoded straight into the bucket where the decoder can (its gradient has been encoded already).
        direction, st["server"] = wire.direction(algo, payload, rnds, buf.view(1, n), st["server"])
        if direction.data_ptr() != buf.data_ptr():
            buf.copy_(direction.view(-1))
        return buf

    if bucket.is_last():
        state.iteration += 1
    return work.get_future().then(done)


def _count(state: CompressionState, idx: int, n: int, b: int) -> None:
    state.wire_bytes += b
    state.bucket_bytes[idx] = b
    state.bucket_numel[idx] = n


def comm_hook(compressor: Compressor | str | Algorithm, *, error_feedback: bool = False, aggregation: str = "mean",
              seed: int = 0, process_group: dist.ProcessGroup | None = None, worker: Any = None, server: Any = None,
              **params: Any) -> tuple[CompressionState, Callable[..., Any]]:
    """``(state, hook)`` for ``ddp_model.register_comm_hook(state, hook)``.

    Args:
        compressor: a ``Compressor``, a registered name (``"sign"``, ``"top-k"``, ``"rand-k+natural"``, ...)
            with its parameters in ``params`` (``ratio=0.01``, ``levels=4``, ...), or a whole
            ``compsde.algorithms.Algorithm`` (then the other options must be left at their defaults).
        error_feedback: keep e_i per bucket on each rank and compress e_i + g_i (for biased compressors).
        aggregation: ``"mean"`` (mean of the decompressed messages) or ``"majority"`` (sign of their
            sum: majority vote for ``"sign"``).
        seed: the seed of the compressor streams (``compsde.core.streams``); must be equal on all ranks.
        process_group: the ``torch.distributed.ProcessGroup`` to communicate in (None: the default group).
        worker, server: transforms before compression and after aggregation (``compsde.algorithms.make``),
            e.g. ``worker={"momentum": 0.9}``.

    Every rank must pass the same arguments: the hook checks it at its first bucket (one small
    all-gather) and raises a ValueError on every rank naming what differs.
    """
    if isinstance(compressor, Algorithm):
        if params or error_feedback or aggregation != "mean" or worker is not None or server is not None:
            raise ValueError("with an Algorithm, give its options to compsde.algorithms.make, not to comm_hook")
        algo = compressor
    else:
        check_bool("error_feedback", error_feedback)
        check_choice("aggregation", aggregation, AGGREGATIONS)
        if isinstance(compressor, str):
            from compsde import compressors as compressors_mod

            comp = compressors_mod.make(compressor, **params)
        elif isinstance(compressor, Compressor):
            if params:
                raise ValueError(f"parameters {sorted(params)} given with a built compressor; pass them to its constructor")
            comp = compressor
        else:
            raise ValueError(f"compressor must be a Compressor, a compressor name or an Algorithm, got {describe(compressor)}")
        if error_feedback and comp.unbiased and comp.name != "identity":
            warnings.warn(
                f"error_feedback=True with the unbiased compressor {comp!r}: error feedback is meant for biased "
                "(contractive) compressors such as top-k or scaled-sign; around an unbiased one with ω ≥ 1 (scaled "
                "rand-k: ω = d/k − 1) it can diverge. Use the mean of compressed messages (error_feedback=False).",
                stacklevel=2)
        name = "ef" if error_feedback else "dcsgd"
        algo = algorithms_mod.make(name, comp, worker=worker, server=server)
        if aggregation != algo.aggregation:
            algo = Algorithm(algo.name, algo.compressor, aggregation, algo.error_feedback, algo.worker, algo.server)
    state = CompressionState(algo, seed=seed, process_group=process_group)
    return state, _compressed_hook
