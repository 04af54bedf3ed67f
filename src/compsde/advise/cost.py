"""The cost model: predicted seconds per data-parallel training step for each method, on a given model and link.

One step of ``DistributedDataParallel`` with a compsde communication hook (``compsde.distributed.comm_hook``)
on N ranks costs, per rank,

* the compute: forward, backward and the optimizer's step (``Compute``; ``measure_compute`` times them on
  the user's ``nn.Module`` with a sample batch, inside DDP with a hook that does nothing: DDP's own work,
  its copies of the gradients into the buckets and back, is part of every step);
* the hook's own CPU work per gradient bucket of n values (``Codec``; ``measure_codec`` times it at n with
  the library's own code): the workers' half (error feedback, the worker transform, encode:
  ``Algorithm.workers_step``), the packing into the wire format (``compsde.compressors.wire.Layout``, or
  the flat float buffer of an all-reduce), the replayed draws of the other ranks (rand-k's indices never
  travel), and the receiver's Σ_i decode of the N payloads with the aggregate applied (``decode_sum``; a
  summable payload is decoded once, after the all-reduce);
* the wire: the bytes one rank hands to the collective per bucket are the library's own accounting
  (``compsde.compressors.wire.wire_bytes``), and the collective follows from ``Compressor.summable``
  (``compsde.distributed.collectives``): a ring all-reduce of summable payloads, an all-gather otherwise.

The link (``Link``) is two numbers, a per-message latency L (seconds) and a bandwidth β (bytes per second
each rank sends, full duplex), so one message of b bytes takes L + b/β. The collectives are gloo's ring
algorithms: an all-reduce of b bytes per rank is a reduce-scatter and an all-gather of N − 1 steps each,
every step sending b/N bytes to the neighbour, so it takes 2(N − 1)·L + 2(N − 1)/N · b/β; an all-gather
of b bytes per rank is N − 1 steps of b bytes, (N − 1)·L + (N − 1)·b/β. ``Link.measure`` fits L and β
jointly from all-gathers and all-reduces of two sizes between the ranks of a real process group, by
these formulas: the link as the hooks' two collectives see it.

Overlap (``predict_step_seconds``): DDP hands a bucket to the hook as soon as its gradients are ready,
so a bucket's wire time can hide behind the backward pass of the buckets still to come. Only the wire
time can: the hook's workers' half runs synchronously on the backward thread, and its decoding runs in
the continuation of the collective's future, on gloo's thread, so with one core per rank (CPU training,
``torch.set_num_threads(1)``) every CPU second of the step adds up. The model is a schedule of one CPU
and one link per rank: forward; then per bucket (in DDP's order) its share of the backward pass
(proportional to its size) and its workers' half on the CPU, its collective on the link as soon as both
the CPU has handed it over and the link is free, its decode on the CPU once the collective is done (a
decode that is ready waits for the current bucket's backward to finish; the remaining ones run after the
backward pass), and the optimizer's step. With one bucket nothing
overlaps and the step is the sum of its parts. The hook's fixed cost per bucket beyond its codec (Python
around it, starting the asynchronous collective, completing its future; ``measure_hook_overhead``) is
added to each bucket's sender side: a fraction of a millisecond to ~2 ms, which matters for small models
only. Not modelled: gloo's own reduction of an all-reduce (one add pass over the buffer, in its thread)
and contention of several ranks for one core (measure on the cores each rank will have).

Checked against real steps (``benchmarks/bench_hooks.py --predict --runs R``: two ranks in network
namespaces joined by a 1 Gbit/s veth, MLPs of 3 layers, batch 4; medians of R runs): at 12.6M parameters
predicted / measured was 0.89–1.15 for fp32 all-reduce, sign, rand-k, top-k + EF and QSGD (R = 3); at
197k parameters (steps of 0.6–6 ms) 0.83–1.22 (R = 5), single runs 0.56–1.38 on the 2-core machine.
The namespace link's token bucket passes messages below its burst (256 kB) at the veth's own speed when
the link was idle during the compute, so there small all-reduces measure faster than a real line allows.

On a real group, ``measure_group`` measures the link, the compute, the buckets and the hook overheads
(``compsde advise --ranks``); ``measure_steps`` times real steps to check the predictions against. They
run CPU tensors over the default group, which must be a gloo group (an NCCL one is refused: GPU steps
are not modelled here).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from compsde.algorithms import Algorithm
from compsde.compressors import Payload
from compsde.compressors.wire import Layout, decode_sum, wire_bytes
from compsde.core.checks import check_bool, check_choice, check_int, check_number, check_seed, describe
from compsde.core.streams import Streams
from compsde.core.timing import median_seconds
from compsde.distributed.collectives import all_gather_bytes, check_wire, finish_direction, flat_floats, unflat_floats

__all__ = ["COLLECTIVES", "Codec", "Compute", "GroupCosts", "Link", "StepMethod", "StepPrediction", "all_gather_seconds",
           "all_reduce_seconds", "collective_messages", "collective_seconds", "cpu_median_seconds", "ddp_buckets", "hookable", "is_dsgd",
           "measure_codec", "measure_compute", "measure_group", "measure_hook_overhead", "measure_steps", "method_algorithm",
           "method_label",
           "predict_step_seconds", "time_collective"]

#: The collectives a payload travels by (``compsde.distributed.collectives.Wire.collective``).
COLLECTIVES = ("all_reduce", "all_gather")
#: DDP's default bucket sizes (``bucket_cap_mb`` = 25 MiB; after the first iteration DDP rebuilds its
#: buckets in gradient-ready order with a first bucket of 1 MiB).
DDP_BUCKET_CAP_MB = 25.0
DDP_FIRST_BUCKET_MB = 1.0


# ---- the link and the collectives -------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A link between ranks: one message of b bytes takes ``latency + b / bandwidth`` seconds.

    ``bandwidth`` is in bytes per second that one rank sends while it receives as much (full duplex),
    ``latency`` in seconds per message (it includes the collective's fixed software overhead)."""

    bandwidth: float
    latency: float

    def __post_init__(self) -> None:
        check_number("Link bandwidth (bytes/s)", self.bandwidth, min=0.0, min_open=True)
        check_number("Link latency (s)", self.latency, min=0.0)

    def message_seconds(self, nbytes: float) -> float:
        """Seconds of one message of ``nbytes`` bytes."""
        return self.latency + check_number("nbytes", nbytes, min=0.0) / self.bandwidth

    @classmethod
    def from_bits(cls, bits_per_second: float, latency: float) -> Link:
        """A link of a nominal rate in bits per second (e.g. 1e9 for 1 Gbit/s)."""
        return cls(check_number("bits_per_second", bits_per_second, min=0.0, min_open=True) / 8, latency)

    @classmethod
    def fit(cls, nbytes: Sequence[float], seconds: Sequence[float], messages: Sequence[float] | None = None) -> Link:
        """Least squares of the relative errors of seconds_i = messages_i·latency + nbytes_i / bandwidth
        over ≥ 2 measurements, where measurement i sent ``messages[i]`` messages in turn carrying
        ``nbytes[i]`` bytes in all from each rank (default: one message each, the line latency +
        nbytes/bandwidth through the points; a collective: ``collective_messages``). Each measurement
        is weighted by 1/seconds_i²: predictions are judged by predicted / measured, and unweighted the
        largest size alone would set the latency. A fitted latency below 0 (noise on a fast link) is
        refitted as 0. ValueError when the times do not grow with the bytes (sizes too close to tell
        the link's rate apart)."""
        k = len(nbytes)
        msgs = [1.0] * k if messages is None else list(messages)
        if len(seconds) != k or len(msgs) != k or k < 2:
            raise ValueError(f"Link.fit needs ≥ 2 measurements with as many sizes, times and message counts, got "
                             f"{k} sizes, {len(seconds)} times and {len(msgs)} message counts")
        xs = [check_number("nbytes", b, min=0.0) for b in nbytes]
        ys = [check_number("seconds", t, min=0.0) for t in seconds]
        ms = [check_number("messages", m, min=0.0, min_open=True) for m in msgs]
        rates = {x / m for x, m in zip(xs, ms)}
        if len(rates) < 2:
            raise ValueError(f"Link.fit needs at least two distinct message sizes, got {sorted(rates)} bytes per message")
        per = [x / m for x, m in zip(xs, ms)]
        at = lambda r: statistics.fmean(t for t, p in zip(ys, per) if p == r)  # noqa: E731
        if not at(max(per)) > at(min(per)):
            raise ValueError(f"the measured times {ys} s do not grow with the sizes {xs} bytes: the link is too fast "
                             "for these sizes to tell apart, or the machine too loaded (measure with a larger largest size)")
        # weighted normal equations of t = m·L + x·s (s = 1/bandwidth), weights 1/t²
        ws = [1.0 / max(t, 1e-12) ** 2 for t in ys]
        smm = sum(w * m * m for w, m in zip(ws, ms))
        sxx = sum(w * x * x for w, x in zip(ws, xs))
        smx = sum(w * m * x for w, m, x in zip(ws, ms, xs))
        smt = sum(w * m * t for w, m, t in zip(ws, ms, ys))
        sxt = sum(w * x * t for w, x, t in zip(ws, xs, ys))
        det = smm * sxx - smx * smx
        latency = (smt * sxx - sxt * smx) / det
        slope = (smm * sxt - smx * smt) / det
        if latency < 0:
            latency, slope = 0.0, sxt / sxx
        if not slope > 0:
            raise ValueError(f"the measured times {ys} s do not grow with the sizes {xs} bytes: the link is too fast "
                             "for these sizes to tell apart (measure with a larger largest size)")
        return cls(1.0 / slope, latency)

    @classmethod
    def measure(cls, group: dist.ProcessGroup | None = None, *, sizes: Sequence[int] = (1 << 12, 1 << 22),
                repeats: int = 7, warmup: int = 3) -> Link:
        """The link between the ranks of ``group`` (default: the default group), measured: every rank must
        call this. All-gathers and all-reduces of each of ``sizes`` bytes per rank (``time_collective``: the
        same medians on every rank), fitted jointly as their ring steps (``fit`` with
        ``collective_messages``): the link the two collectives of the hooks see. Fit it where the step's
        messages are: from a few KiB to the largest bucket's payload (a link's rate can depend on the
        message size: TCP windows, a shaper's burst).

        Where the times do not grow with the sizes (a link too fast for them, or a loaded machine: on
        loopback beside other processes a 1 KiB collective has taken 3 ms and a 2 MiB one 1 ms), the
        largest size and one 16 times larger are measured again and fitted alone, and so on up to 64 MiB
        (and an all-gather's receive buffer, world × size, of at most 256 MiB); every rank gets the same
        times, so every rank takes the same path. A fit of each collective alone was
        tried and dropped: with three sizes on the loaded 2-core machine it was off by 20× in one run of
        three, where the joint fit of both holds."""
        if len(sizes) < 2 or len(set(sizes)) < 2:
            raise ValueError(f"sizes must hold ≥ 2 distinct byte counts, got {describe(sizes)}")
        points = _link_points(group, sizes, repeats, warmup)
        largest = max(sizes)
        # an all-gather receives world × size bytes: at most 256 MiB, and no size beyond 64 MiB
        cap = max(largest, min(1 << 26, (1 << 28) // dist.get_world_size(group)))
        while True:
            try:
                return cls.fit(*zip(*points))
            except ValueError:
                if largest >= cap:
                    raise
            points = _link_points(group, [largest, min(16 * largest, cap)], repeats, warmup)
            largest = min(16 * largest, cap)


def _link_points(group: dist.ProcessGroup | None, sizes: Sequence[int], repeats: int,
                 warmup: int) -> list[tuple[float, float, float]]:
    """(bytes sent, seconds, messages) of an all-gather and an all-reduce of each size."""
    if not dist.is_initialized():
        raise RuntimeError("Link.measure needs an initialised process group (dist.init_process_group)")
    world = dist.get_world_size(group)
    if world < 2:
        raise ValueError(f"Link.measure needs a group of ≥ 2 ranks to measure a link, got {world}")
    for s in sizes:
        check_int("sizes (bytes)", s, min=1)
    out: list[tuple[float, float, float]] = []
    for s in sorted(sizes):  # small sizes first: after a large transfer small ones can stay slow a while
        for kind in COLLECTIVES:
            t, = time_collective(kind, [s], group=group, repeats=repeats, warmup=warmup)
            m, b = collective_messages(kind, s, world)
            out.append((b, t, m))
    return out


def collective_messages(collective: str, nbytes: float, workers: int) -> tuple[int, float]:
    """(messages each rank sends in turn, bytes it sends in all) in gloo's ring ``collective`` of ``nbytes``
    bytes per rank over ``workers`` ranks: all-reduce (reduce-scatter + all-gather of the N chunks):
    2(N − 1) messages, 2(N − 1)/N · nbytes; all-gather: N − 1 messages, (N − 1)·nbytes."""
    check_choice("collective", collective, COLLECTIVES)
    n = check_int("workers", workers, min=1)
    b = check_number("nbytes", nbytes, min=0.0)
    if collective == "all_reduce":
        return 2 * (n - 1), 2 * (n - 1) / n * b
    return n - 1, (n - 1) * b


def all_reduce_seconds(nbytes: float, workers: int, link: Link) -> float:
    """Ring all-reduce of ``nbytes`` bytes per rank over ``workers`` ranks: a reduce-scatter and an
    all-gather of N − 1 steps each, every step one message of nbytes/N bytes per rank:
    2(N − 1)·latency + 2(N − 1)/N · nbytes/bandwidth (0 for one rank)."""
    m, b = collective_messages("all_reduce", nbytes, workers)
    return m * link.latency + b / link.bandwidth


def all_gather_seconds(nbytes: float, workers: int, link: Link) -> float:
    """Ring all-gather of ``nbytes`` bytes per rank over ``workers`` ranks: N − 1 steps, every step one
    message of nbytes bytes per rank: (N − 1)·latency + (N − 1)·nbytes/bandwidth (0 for one rank)."""
    m, b = collective_messages("all_gather", nbytes, workers)
    return m * link.latency + b / link.bandwidth


def collective_seconds(collective: str, nbytes: float, workers: int, link: Link) -> float:
    """``all_reduce_seconds`` or ``all_gather_seconds`` by name."""
    check_choice("collective", collective, COLLECTIVES)
    return (all_reduce_seconds if collective == "all_reduce" else all_gather_seconds)(nbytes, workers, link)


def time_collective(collective: str, sizes: Sequence[int], *, group: dist.ProcessGroup | None = None,
                    repeats: int = 7, warmup: int = 2) -> list[float]:
    """Median wall seconds of one ``collective`` of each of ``sizes`` bytes per rank (uint8 for an
    all-gather, float32 for an all-reduce) over the ranks of ``group``; every rank must call it and gets
    the same numbers: per size the mean over the ranks of their medians. Each size is timed in a block
    of its own (``warmup`` untimed calls first), as a training step repeats its messages: a small
    collective right after a large one can take several times longer than after one of its size
    (measured through a rate-limited veth: 1.35 ms instead of 0.27 ms for a 4 KiB all-gather right
    after a 1 MiB one, and a whole block of 4 KiB all-reduces after 1 MiB all-gathers at 3.2–3.7 ms
    instead of 0.4 ms, so ``Link.measure`` goes from small sizes to large). Each call follows a barrier; the rank that leaves the barrier first also waits for the
    others to arrive and the last one finds part of the data already sent, so the mean of the ranks'
    views is taken."""
    check_choice("collective", collective, COLLECTIVES)
    sizes = [check_int("sizes (bytes)", s, min=1) for s in sizes]
    check_int("repeats", repeats, min=1)
    check_int("warmup", warmup, min=0)
    world = dist.get_world_size(group)
    calls = [_collective_call(collective, nbytes, world, group) for nbytes in sizes]
    times: list[list[float]] = [[] for _ in sizes]
    for fn, ts in zip(calls, times):
        for i in range(warmup + repeats):
            dist.barrier(group=group)
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if i >= warmup:
                ts.append(dt)
    med = torch.tensor([statistics.median(ts) for ts in times], dtype=torch.float64)
    dist.all_reduce(med, group=group)
    return (med / world).tolist()


def _collective_call(collective: str, nbytes: int, world: int, group: dist.ProcessGroup | None) -> Callable[[], Any]:
    """One ``collective`` of ``nbytes`` bytes per rank, on buffers allocated once."""
    if collective == "all_gather":
        send = torch.zeros(nbytes, dtype=torch.uint8)
        recv = torch.empty(world * nbytes, dtype=torch.uint8)
        return lambda: all_gather_bytes(recv, send, group=group)
    buf = torch.zeros(max(1, nbytes // 4), dtype=torch.float32)
    return lambda: dist.all_reduce(buf, group=group)


# ---- compute ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compute:
    """Seconds of one training step's compute on one rank: forward (with the loss), backward, and the
    optimizer's step (with zeroing the gradients)."""

    forward: float
    backward: float
    optimizer: float = 0.0

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "optimizer"):
            check_number(f"Compute {name} (s)", getattr(self, name), min=0.0)

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.optimizer

    @classmethod
    def from_total(cls, seconds: float, backward_share: float = 2 / 3) -> Compute:
        """A step of ``seconds`` whose backward pass takes ``backward_share`` of it (about 2/3: the
        backward pass of a layer costs about twice its forward pass) and no optimizer time."""
        s = check_number("seconds", seconds, min=0.0)
        share = check_number("backward_share", backward_share, min=0.0, max=1.0)
        return cls(s * (1 - share), s * share)


def measure_compute(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], Tensor], batch: Any, *,
                    optimizer: torch.optim.Optimizer | None = None, ddp: bool = True, repeats: int = 5,
                    warmup: int = 3) -> Compute:
    """The median ``Compute`` of ``warmup + repeats`` steps (timed: ``loss_fn(model, batch)`` → a scalar
    loss, ``loss.backward()``, then the optimizer's step and ``zero_grad`` when an optimizer is given,
    else the gradients are set to None untimed).

    With ``ddp`` (the default) the steps are those of a copy of the model (and a fresh optimizer of the
    same class and defaults) in ``DistributedDataParallel`` with a communication hook that returns the
    bucket unchanged: the compute floor of a DDP step, with DDP's own work in it (its copies of the
    gradients into the buckets and back, its hooks), which a hook's step pays too. Without an initialised
    process group this runs in a private group of one rank (gloo; NCCL for a CUDA model); inside one,
    every rank must call it (DDP broadcasts the copy's parameters). Without ``ddp`` the model itself
    takes the steps (the optimizer's real steps: pass a learning rate of 0 to leave it as it is).
    Wall time (CUDA work is synchronised): measure on an otherwise idle machine with the threads each
    rank will have."""
    _check_step_args(model, loss_fn, optimizer)
    check_bool("ddp", ddp)
    check_int("repeats", repeats, min=1)
    check_int("warmup", warmup, min=0)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no parameters that require gradients: there is no backward pass to time")
    cuda = any(p.is_cuda for p in model.parameters())
    if not ddp:
        return _time_steps(model, loss_fn, batch, optimizer, cuda, repeats, warmup)
    from torch.nn.parallel import DistributedDataParallel

    with _group("nccl" if cuda else "gloo") as group:
        twin = copy.deepcopy(model)
        wrapped = DistributedDataParallel(twin, process_group=group)
        wrapped.register_comm_hook(None, _unchanged)
        opt = None if optimizer is None else type(optimizer)(twin.parameters(), **optimizer.defaults)
        out = _time_steps(wrapped, loss_fn, batch, opt, cuda, repeats, warmup)
        del wrapped, twin, opt
        gc.collect()
    return out


def _check_step_args(model: Any, loss_fn: Any, optimizer: Any) -> None:
    """The arguments of a timed training step: an ``nn.Module``, a loss function (model, batch) → scalar loss
    and an optional ``torch.optim.Optimizer``."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {describe(model)}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (model, batch) → scalar loss tensor, got {describe(loss_fn)}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {describe(optimizer)}")


@contextlib.contextmanager
def _group(backend: str, solo: bool = False) -> Iterator[dist.ProcessGroup | None]:
    """The process group to time DDP steps in: a private one of one rank when none is initialised (removed
    afterwards), else the default group, or with ``solo`` a group of this rank alone (every rank must
    enter: ``new_group`` is collective)."""
    if dist.is_initialized():
        if not solo:
            yield None
            return
        mine = None
        for r in range(dist.get_world_size()):
            g = dist.new_group([r])
            if r == dist.get_rank():
                mine = g
        yield mine
        return
    private = tempfile.mkdtemp(prefix="compsde-cost-")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, init_method=f"file://{private}/store", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        yield None
    finally:
        dist.destroy_process_group()
        shutil.rmtree(private, ignore_errors=True)


def measure_hook_overhead(method: Algorithm | str, *, n: int = 4096, link: Link | None = None, repeats: int = 21,
                          warmup: int = 5) -> float:
    """Seconds per bucket that the hook's machinery costs beyond its codec (``measure_codec``): Python
    around the codec, starting the asynchronous collective, completing its future in the collective's
    thread and waking DDP's. Measured as the median DDP step on a bucket of ``n`` values with the
    method's ``comm_hook``, minus the step with a hook that does nothing, minus the codec at n; at least
    0. A fixed cost, which matters for small models only.

    Without ``link``: in a group of this rank alone (a private one, or one per rank of an initialised
    group: every rank must call it), so the ranks' waits for each other are not in it. With ``link``
    (measured on the initialised group): over the whole group, the collective's predicted seconds at
    that link subtracted, so it also holds what the ranks lose waiting for the slowest of them each
    step."""
    from torch.nn.parallel import DistributedDataParallel

    from compsde.distributed import comm_hook

    algo = method_algorithm(method)
    check_int("n", n, min=1)
    check_int("repeats", repeats, min=1)
    check_int("warmup", warmup, min=0)
    if link is not None and not dist.is_initialized():
        raise ValueError("measure_hook_overhead with a link runs over the initialised process group: there is none")
    workers = 1 if link is None else dist.get_world_size()
    codec = measure_codec(algo, n, workers, repeats=repeats)
    x = torch.randn(1, n)
    steps = []
    with _group("gloo", solo=link is None) as group:
        for with_hook in (False, True):
            layer = torch.nn.Linear(n, 1, bias=False)
            ddp = DistributedDataParallel(layer, process_group=group)
            if with_hook and not is_dsgd(algo):
                state, hook = comm_hook(algo, process_group=group)
                ddp.register_comm_hook(state, hook)
            elif not with_hook:
                ddp.register_comm_hook(None, _unchanged)
            steps.append(_time_steps(ddp, lambda m, b: m(b).sum(), x, None, False, repeats, warmup).total)
            del ddp, layer
            gc.collect()
    wire = 0.0
    if link is not None:
        comp = algo.compressor
        wire = collective_seconds("all_reduce" if comp.summable else "all_gather", wire_bytes(comp, 1, n, torch.float32),
                                  workers, link)
    return max(0.0, steps[1] - steps[0] - codec.total - wire)


def _unchanged(state, bucket):  # unannotated: DDP checks the annotations as objects, and these are strings
    """A DDP communication hook that leaves the bucket as it is (the compute floor)."""
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def _time_steps(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], Tensor], batch: Any,
                optimizer: torch.optim.Optimizer | None, cuda: bool, repeats: int, warmup: int) -> Compute:
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fwd, bwd, opt = [], [], []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        loss = loss_fn(model, batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar loss tensor, got {describe(loss)}")
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
        t3 = time.perf_counter()
        if optimizer is None:
            model.zero_grad(set_to_none=True)
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            opt.append(t3 - t2)
    return Compute(statistics.median(fwd), statistics.median(bwd), statistics.median(opt))


def ddp_buckets(params: torch.nn.Module | Sequence[int], *, element_size: int = 4,
                bucket_cap_mb: float = DDP_BUCKET_CAP_MB, first_bucket_mb: float = DDP_FIRST_BUCKET_MB) -> list[int]:
    """The values per gradient bucket of ``DistributedDataParallel`` after its first iteration, in the
    order the hook sees them: the parameters in gradient-ready order (for a module: its trainable
    parameters in reverse registration order, as a sequential model's backward pass produces them; or
    their sizes given in that order) filled greedily into buckets, each closed once it holds at least
    its limit — ``first_bucket_mb`` MiB for the first, ``bucket_cap_mb`` MiB after (DDP's
    ``_compute_bucket_assignment_by_size``, one dtype)."""
    if isinstance(params, torch.nn.Module):
        sizes = [p.numel() for p in reversed(list(params.parameters())) if p.requires_grad]
    else:
        sizes = [check_int("params (sizes)", s, min=1) for s in params]
    if not sizes:
        raise ValueError("params holds no trainable parameters: there are no gradient buckets")
    check_int("element_size", element_size, min=1)
    limits = [check_number("first_bucket_mb", first_bucket_mb, min=0.0, min_open=True) * 2**20,
              check_number("bucket_cap_mb", bucket_cap_mb, min=0.0, min_open=True) * 2**20]
    out: list[int] = []
    cur = 0
    for s in sizes:
        cur += s
        if cur * element_size >= limits[min(len(out), 1)]:
            out.append(cur)
            cur = 0
    if cur:
        out.append(cur)
    return out


# ---- the hook's own CPU work ------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """CPU seconds of one rank's share of one bucket's exchange (``measure_codec``), beyond DDP's own
    work (its copies of the gradients into the bucket and back are in ``Compute`` measured with DDP).

    ``encode``: the workers' half (the worker transform, error feedback, encode); ``pack``: into the
    wire format (or the all-reduce's flat floats); ``draws``: the other ranks' replayed draws;
    ``decode``: Σ_i decode of the N payloads and the aggregate (once for a summable payload). The first
    three run on the backward thread before the collective starts, ``decode`` after it ends."""

    encode: float
    pack: float
    draws: float
    decode: float

    def __post_init__(self) -> None:
        for name in ("encode", "pack", "draws", "decode"):
            check_number(f"Codec {name} (s)", getattr(self, name), min=0.0)

    @property
    def sender(self) -> float:
        """The seconds spent before the collective starts."""
        return self.encode + self.pack + self.draws

    @property
    def total(self) -> float:
        return self.encode + self.pack + self.draws + self.decode


def cpu_median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1,
                       setup: Callable[[], object] | None = None) -> float:
    """Median CPU time of this thread over ``repeats`` calls of ``fn()`` (each after an untimed ``setup()`` if
    given): ``compsde.core.timing.median_seconds`` with ``time.thread_time``."""
    return median_seconds(fn, repeats, warmup, clock=time.thread_time, setup=setup)


def method_algorithm(method: Algorithm | str) -> Algorithm:
    """The ``Algorithm`` a DDP hook would run for ``method``: an ``Algorithm`` (``compsde.algorithms.make``)
    or a spec name[:compressor[:key=value,...]] (``compsde.advise.parse_method``: ``"dsgd"``,
    ``"ef:top-k:ratio=0.01"``). ValueError for what the hook refuses: local methods, probing optimizers,
    transforms that need the parameters, compressors without a wire format."""
    if isinstance(method, str):
        from compsde.advise import parse_method

        try:
            algo = parse_method(method)[1]
        except ValueError as e:
            raise ValueError(f"method {method!r} cannot be built ({e}); give name[:compressor[:key=value,...]], e.g. "
                             "'ef:top-k:ratio=0.01', or an Algorithm: compsde.algorithms.make(name, compressor, ...)") from None
    elif isinstance(method, Algorithm):
        algo = method
    else:
        raise ValueError(f"method must be a compsde Algorithm or an algorithm name, got {describe(method)}")
    if algo.local:
        raise ValueError(f"method {algo.name!r} is a local method (it averages parameters, not every step's "
                         "gradients): a DDP hook's cost model does not apply")
    if algo.probe is not None:
        raise ValueError(f"method {algo.name!r} evaluates the gradient again at a probe point: a DDP hook sees one "
                         "gradient per step")
    if algo.worker.uses_params or algo.server.uses_params:
        raise ValueError(f"method {algo.name!r} has a transform that needs the parameters (weight decay): a DDP "
                         "hook sees gradients only")
    check_wire(algo.compressor, "the cost model")
    return algo


def hookable(method: Algorithm | str) -> bool:
    """Whether a DDP communication hook can run ``method`` (``method_algorithm`` accepts it)."""
    try:
        method_algorithm(method)
    except ValueError:
        return False
    return True


def measure_codec(method: Algorithm | str, n: int, workers: int, *, dtype: torch.dtype = torch.float32,
                  repeats: int = 5, seed: int = 0) -> Codec:
    """The hook's CPU seconds for one bucket of ``n`` values on one of ``workers`` ranks (``Codec``), with
    the library's own code in one process (``cpu_median_seconds``, medians of ``repeats``; set one torch
    thread for numbers that add up with one core per rank).

    The receiver decodes N payloads; to bound memory at large N they are the payloads of at most two
    encoded gradients (random normal ×10⁻³), repeated: decoding costs the same whatever the values."""
    algo = method_algorithm(method)
    n = check_int("n", n, min=1)
    N = check_int("workers", workers, min=1)
    check_int("repeats", repeats, min=1)
    check_seed("seed", seed)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"dtype must be a floating-point torch dtype (float16, bfloat16, float32, float64), got {dtype}")
    comp = algo.compressor
    G = min(N, 2)
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(n, generator=g).to(dtype) * 1e-3 for _ in range(G)]
    # one bucket per encoded worker: a payload's fields may be views of its bucket (``reuse_memory``)
    buckets = [torch.empty(n, dtype=dtype) for _ in range(G)]
    spare = torch.empty(n, dtype=dtype)
    streams = Streams(seed, N, noise=[], compressor=range(N))
    states = [algo.init(torch.zeros(1, n, dtype=dtype), 1) for _ in range(G)]
    server = states[0]["server"]
    payloads: list[Payload | None] = [None] * G
    rnds: list[Tensor | None] = [None] * G

    def workers_half(j: int) -> None:
        rnd = algo.draw(streams, [j], 1, n, dtype)
        bucket = buckets[j]
        st = states[j]
        out = algo.workers_step(bucket.view(1, 1, n), {"worker": st["worker"], "ef": st["ef"]}, None, 1.0, rnd,
                                encode=True, messages=False, reuse_memory=True)
        st["worker"], st["ef"] = out.state["worker"], out.state["ef"]
        assert out.payload is not None
        payloads[j] = Payload({k: v[0] for k, v in out.payload.fields.items()}, n, dtype)
        rnds[j] = None if rnd is None else rnd[0]

    # the bucket holds the gradient again before each call (DDP's copy: not the hook's time)
    t_enc = statistics.fmean(cpu_median_seconds(functools.partial(workers_half, j), repeats,
                                                setup=functools.partial(buckets[j].copy_, grads[j])) for j in range(G))
    replay = not comp.summable and comp.randomized and not comp.shared_randomness and comp.decode_needs_draw(n)

    def draws() -> None:
        if replay:
            for j in range(1, N):
                algo.draw(streams, [j], 1, n, dtype)

    t_draws = cpu_median_seconds(draws, repeats)
    every = [payloads[j % G] for j in range(N)]
    rnd_all = [rnds[j % G] for j in range(N)]
    if comp.summable:
        first = every[0]
        assert first is not None
        send = torch.empty(sum(f.count for f in comp.fields(n, dtype)), dtype=dtype)
        t_pack = cpu_median_seconds(lambda: flat_floats(first, out=send), repeats)
        # the all-reduced sum is decoded once, then aggregated (the mean) in place
        t_dec = cpu_median_seconds(lambda: finish_direction(
            algo, N, server, lambda fin: _decode_once(algo, unflat_floats(send, first), rnd_all[0], fin)), repeats)
    else:
        layout = Layout(comp.fields(n, dtype), 1, n, dtype)
        recv = torch.empty(N, layout.nbytes, dtype=torch.uint8)

        def pack() -> None:
            for j in range(G):
                p = payloads[j]
                assert p is not None
                layout.pack(p, out=recv[j])

        t_pack = cpu_median_seconds(pack, repeats) / G
        for j in range(G, N):
            recv[j].copy_(recv[j % G])
        t_dec = cpu_median_seconds(lambda: finish_direction(
            algo, N, server, lambda fin: decode_sum(comp, layout, recv, rnd_all, out=spare.view(1, n), finish=fin)),
            repeats)
    return Codec(t_enc, t_pack, t_draws, t_dec)


def _decode_once(algo: Algorithm, summed: Payload, rnd: Tensor | None, finish: Callable[[Tensor], Tensor] | None) -> Tensor:
    out = algo.compressor.decode(summed, rnd)
    return out if finish is None else finish(out)


# ---- the prediction ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPrediction:
    """The predicted seconds of one training step of one method on one rank, with its parts.

    ``seconds`` is the step; ``compute`` + ``cpu`` is what the rank's CPU does (compute, and the hook's
    codec work and DDP's copies summed over the buckets); ``wire`` the collectives' seconds summed over
    the buckets, of which ``exposed`` = ``seconds`` − ``compute`` − ``cpu`` was not hidden behind the CPU
    work. ``bytes`` is what one rank hands to the collectives per step."""

    method: str
    collective: str
    workers: int
    buckets: tuple[int, ...]
    bytes: int
    compute: float
    cpu: float
    wire: float
    exposed: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["buckets"] = list(self.buckets)
        return d


def method_label(algo: Algorithm) -> str:
    """The name the cost model gives a method: its algorithm, compressor and aggregation (the key of
    ``GroupCosts.overhead`` and ``GroupCosts.measured``)."""
    c = algo.compressor
    extra = [] if algo.aggregation == "mean" else [algo.aggregation]
    return f"{algo.name} {c!r}" + (f" ({', '.join(extra)})" if extra else "")


def predict_step_seconds(method: Algorithm | str, *, compute: Compute | float, link: Link, workers: int,
                         d: int | None = None, buckets: Sequence[int] | None = None,
                         dtype: torch.dtype = torch.float32, codec: Codec | Sequence[Codec] | None = None,
                         hook_overhead: float = 0.0, repeats: int = 5) -> StepPrediction:
    """The predicted seconds of one DDP training step with ``method``'s hook on ``workers`` ranks (see the
    module doc for the schedule and what overlaps).

    Args:
        method: an ``Algorithm`` or an algorithm name (``method_algorithm``).
        compute: the step's compute (``Compute``, e.g. from ``measure_compute``), or its total seconds
            (split by ``Compute.from_total``).
        link: the link between the ranks (``Link``, given or ``Link.measure``d).
        workers: N, the number of ranks.
        d, buckets: the model's parameter count (one bucket of d values), or the gradient buckets' sizes in
            the order DDP hands them to the hook (``ddp_buckets``); give one of them.
        dtype: the gradients' dtype.
        codec: the hook's CPU seconds per bucket (one ``Codec`` per bucket, or one for every bucket); by
            default measured here at each bucket size (``measure_codec`` with ``repeats``).
        hook_overhead: seconds per bucket of the hook's machinery beyond its codec
            (``measure_hook_overhead``), counted with the codec's sender side.
    """
    algo = method_algorithm(method)
    N = check_int("workers", workers, min=1)
    extra = check_number("hook_overhead", hook_overhead, min=0.0)
    if not isinstance(link, Link):
        raise ValueError(f"link must be a compsde.advise.cost.Link (bandwidth, latency), got {describe(link)}")
    if isinstance(compute, (int, float)) and not isinstance(compute, bool):
        compute = Compute.from_total(compute)
    if not isinstance(compute, Compute):
        raise ValueError(f"compute must be a Compute (forward, backward, optimizer seconds) or a number of seconds, "
                         f"got {describe(compute)}")
    if (d is None) == (buckets is None):
        raise ValueError(f"give exactly one of d (the parameter count) and buckets (the gradient buckets' sizes), got "
                         f"d={describe(d)}, buckets={describe(buckets)}")
    sizes = [check_int("d", d, min=1)] if d is not None else [check_int("buckets (sizes)", b, min=1) for b in buckets or ()]
    if not sizes:
        raise ValueError("buckets must hold at least one bucket size")
    if codec is None:
        measured: dict[int, Codec] = {}
        for n in sizes:
            if n not in measured:
                measured[n] = measure_codec(algo, n, N, dtype=dtype, repeats=repeats)
        codecs = [measured[n] for n in sizes]
    elif isinstance(codec, Codec):
        codecs = [codec] * len(sizes)
    else:
        codecs = list(codec)
        if len(codecs) != len(sizes) or not all(isinstance(c, Codec) for c in codecs):
            raise ValueError(f"codec must be a Codec or one Codec per bucket ({len(sizes)}), got {describe(codec)}")
    comp = algo.compressor
    collective = "all_reduce" if comp.summable else "all_gather"
    nbytes = [wire_bytes(comp, 1, n, dtype) for n in sizes]
    wires = [collective_seconds(collective, b, N, link) for b in nbytes]
    total = sum(sizes)
    # The schedule: one CPU, one link (module doc).
    cpu_t = compute.forward
    net_t = 0.0
    ready: list[tuple[float, float]] = []  # (collective done, decode seconds), in bucket order
    for n, c, w in zip(sizes, codecs, wires):
        while ready and ready[0][0] <= cpu_t:  # a finished collective's decode, queued behind this CPU work
            cpu_t += ready.pop(0)[1]
        cpu_t += compute.backward * n / total + c.sender + extra
        net_t = max(cpu_t, net_t) + w
        ready.append((net_t, c.decode))
    for done, dec in ready:
        cpu_t = max(cpu_t, done) + dec
    cpu_t += compute.optimizer
    cpu = sum(c.total for c in codecs) + extra * len(codecs)
    return StepPrediction(method=method_label(algo), collective=collective, workers=N, buckets=tuple(sizes),
                          bytes=sum(nbytes), compute=compute.total, cpu=cpu, wire=sum(wires),
                          exposed=max(0.0, cpu_t - compute.total - cpu), seconds=cpu_t)


# ---- measured on the group: what the predictions are checked against ------------------------------

#: A method as ``measure_steps`` runs it: an ``Algorithm`` (its ``comm_hook``), None (DDP's own fp32
#: all-reduce) or a (state, hook) pair for ``register_comm_hook``.
StepMethod = Algorithm | tuple[Any, Callable[..., Any]] | None


def measure_steps(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], Tensor], batch: Any,
                  methods: dict[str, StepMethod], *, optimizer: torch.optim.Optimizer | None = None, steps: int = 5,
                  rounds: int = 5, warmup: int = 3) -> dict[str, float]:
    """Wall seconds of one training step of ``model`` in ``DistributedDataParallel`` over the initialised
    group with each of ``methods`` (label → ``StepMethod``): forward (``loss_fn(model, batch)``), backward
    with the method's hook inside it, and the optimizer's step (a fresh one of ``optimizer``'s class and
    defaults per method; none: the gradients are dropped). Every rank must call it, with the same methods.

    Each method gets a copy of the model; after ``warmup`` untimed steps each, the methods take turns,
    ``steps`` steps at a time, for ``rounds`` rounds, so that a slow spell of a shared machine falls on all
    of them alike; every step starts after a barrier. Returns per method the median over its
    ``rounds · steps`` steps, averaged over the ranks (the same numbers on every rank)."""
    from torch.nn.parallel import DistributedDataParallel

    from compsde.distributed import comm_hook

    if not dist.is_initialized():
        raise RuntimeError("measure_steps times DDP steps over a process group: initialise one first "
                           "(dist.init_process_group)")
    _check_step_args(model, loss_fn, optimizer)
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"methods must be a non-empty dict label → Algorithm, None or (state, hook), got {describe(methods)}")
    check_int("steps", steps, min=1)
    check_int("rounds", rounds, min=1)
    check_int("warmup", warmup, min=0)
    replicas = []
    for label, m in methods.items():
        twin = copy.deepcopy(model)
        ddp = DistributedDataParallel(twin)
        if isinstance(m, Algorithm):
            ddp.register_comm_hook(*comm_hook(method_algorithm(m)))
        elif isinstance(m, tuple) and len(m) == 2 and callable(m[1]):
            ddp.register_comm_hook(*m)
        elif m is not None:
            raise ValueError(f"methods[{label!r}] must be an Algorithm, None (DDP's all-reduce) or a (state, hook) "
                             f"pair, got {describe(m)}")
        opt = None if optimizer is None else type(optimizer)(twin.parameters(), **optimizer.defaults)
        replicas.append((ddp, opt))

    def step(ddp: torch.nn.Module, opt: torch.optim.Optimizer | None) -> float:
        dist.barrier()
        t = time.perf_counter()
        loss = loss_fn(ddp, batch)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        if opt is None:
            ddp.zero_grad(set_to_none=True)
        return dt

    times: list[list[float]] = [[] for _ in replicas]
    for ddp, opt in replicas:
        for _ in range(warmup):
            step(ddp, opt)
    for _ in range(rounds):
        for ts, (ddp, opt) in zip(times, replicas):
            ts.extend(step(ddp, opt) for _ in range(steps))
    del replicas
    gc.collect()
    med = torch.tensor([statistics.median(ts) for ts in times], dtype=torch.float64)
    dist.all_reduce(med)
    return dict(zip(methods, (med / dist.get_world_size()).tolist()))


@dataclass(frozen=True)
class GroupCosts:
    """What ``measure_group`` measured on a real group of ``workers`` ranks with ``threads`` torch threads each:
    the link, the compute of a DDP step, the gradient buckets, each method's hook overhead per bucket and the
    measured seconds per step of the methods timed (both keyed by ``method_label``)."""

    workers: int
    link: Link
    compute: Compute
    buckets: tuple[int, ...]
    overhead: dict[str, float]
    measured: dict[str, float]
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "link": {"bandwidth": self.link.bandwidth, "latency": self.link.latency},
                "compute": asdict(self.compute), "buckets": list(self.buckets), "overhead": dict(self.overhead),
                "measured_seconds_per_step": dict(self.measured), "threads": self.threads}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupCosts:
        return cls(int(d["workers"]), Link(**d["link"]), Compute(**d["compute"]), tuple(d["buckets"]),
                   dict(d["overhead"]), dict(d["measured_seconds_per_step"]), int(d["threads"]))


def measure_group(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], Tensor], batch: Any,
                  methods: Sequence[Algorithm | str], *, timed: Sequence[Algorithm | str] = (),
                  optimizer: torch.optim.Optimizer | None = None, steps: int = 5, rounds: int = 5) -> GroupCosts:
    """Everything the cost model needs, measured on the initialised group (every rank must call it): the link
    (``Link.measure`` at 4 KiB and the fp32 gradient's size within 1–4 MiB: through a shaper with a
    burst, mid-size messages pass at the veth's own speed and would pull the fitted rate up), the compute of a DDP step
    (``measure_compute``), the buckets (``ddp_buckets``) and each method's hook overhead over the group
    (``measure_hook_overhead`` with the link; DSGD's is that of DDP's own all-reduce); and for the
    methods of ``timed``, their real seconds per step (``measure_steps``) to check the predictions against.
    Methods are ``method_algorithm``'s (an ``Algorithm`` or a spec such as "ef:top-k:ratio=0.01"); the results
    are keyed by ``method_label``. The default group must be gloo (CPU tensors)."""
    if dist.is_initialized() and dist.get_backend() != "gloo":
        raise ValueError(f"measure_group times CPU steps over the default group, which must be gloo; it is "
                         f"{dist.get_backend()}")
    timed_algos = [method_algorithm(t) for t in timed]
    algos = {method_label(a): a for a in [*map(method_algorithm, methods), *timed_algos]}
    timed_labels = [method_label(a) for a in timed_algos]
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    link = Link.measure(sizes=(1 << 12, min(1 << 22, max(1 << 20, 4 * d))))
    compute = measure_compute(model, loss_fn, batch, optimizer=optimizer, repeats=9)
    overhead = {label: measure_hook_overhead(a, link=link) for label, a in algos.items()}
    measured = {}
    if timed:
        measured = measure_steps(model, loss_fn, batch, {t: None if is_dsgd(algos[t]) else algos[t] for t in timed_labels},
                                 optimizer=optimizer, steps=steps, rounds=rounds)
    return GroupCosts(dist.get_world_size(), link, compute, tuple(ddp_buckets(model)), overhead, measured,
                      torch.get_num_threads())


def is_dsgd(algo: Algorithm) -> bool:
    """Whether ``algo`` is plain DSGD (no compression, no error feedback, the mean): what DDP does without a
    hook, an all-reduce of the gradients."""
    return algo.compressor.name == "identity" and not algo.error_feedback and algo.aggregation == "mean"
