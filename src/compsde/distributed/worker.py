"""One process's loop: worker ``rank`` of one series, mirroring ``compsde.simulator.simulate``.

Every rank holds the same replicated iterates x (R, d). At step k worker i = ``rank``:

    1. draws its noise and its compressor's randomness from its own streams
       (``Draws(..., ranks=[rank])``: exactly what worker i draws in the simulator);
    2. g = ∇f_i(x) + Z_i with ∇f_i from ``problem.worker_grads(x, N, rank, rank + 1)``;
    3. compresses g (or, with error feedback, p = e + η g, keeping e ← p − C(p) on this rank only)
       through the codec of its compressor (``compsde.distributed.wire``), whose decompressed message is
       ``compressor.apply`` bit for bit;
    4. exchanges the payloads (``compsde.distributed.collectives.Exchange``) into Σ_i m_i, the sum of
       the N decompressed messages, and steps x ← x − ``method.finish(Σ_i m_i, N, η)`` (mean or
       majority vote, normalised if asked), the server's half of the simulator's step;
    5. applies the simulator's divergence rule (``simulator.freeze_diverged``) to its replica.

The global rank 0 records the ``Trace`` with the simulator's ``Recorder``; the others keep only the
divergence record. Rank 0 is in every series' group (a series with N workers runs on ranks 0..N−1).
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

from compsde.config import SeriesSpec
from compsde.distributed.collectives import Exchange, Replay
from compsde.distributed.wire import codec_for
from compsde.simulator import (
    DTYPES, Draws, Trace, compression_error_sum, divergence_limit, freeze_diverged, Recorder,
)

__all__ = ["SeriesOutcome", "SeriesState", "run_series", "FAULT_ENV"]

#: Test-only fault injection: ``ACTION:RANK@STEP`` or ``ACTION:RANK@STEP/SERIES`` with ACTION one of
#: ``kill`` (SIGKILL itself), ``hang`` (sleep forever), ``raise`` (an exception) — before that step.
FAULT_ENV = "COMPSDE_TEST_FAULT"


@dataclass
class SeriesOutcome:
    """What a series produced on this rank. ``trace`` only on the reporting rank (global rank 0)."""

    index: int
    trace: Trace | None
    #: bytes this worker handed to the step's collective, per step (all R repetitions) and per
    #: repetition (comparable with the compressor's declared bits / 8).
    wire_bytes_per_step: float
    wire_bytes_per_step_per_repeat: float
    collective: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class SeriesState:
    """Everything needed to continue a series from a step (a checkpoint's per-series content)."""

    step: int
    x: Tensor
    alive: Tensor
    diverged_step: Tensor
    comp_err: float
    rows: list[Any]  # the recorder's rows (rank 0)
    seconds: float
    wire_bytes: int
    calls: int
    ranks: list[dict[str, Any]]  # per rank: memory, draw states, replay states


def _fault(rank: int, series: int, step: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    try:
        action, rest = spec.split(":", 1)
        who, when = rest.split("@", 1)
        at_step, _, at_series = when.partition("/")
        if int(who) != rank or int(at_step) != step or int(at_series or 0) != series:
            return
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must look like kill:1@3 (or hang:1@3, raise:1@3, optionally /SERIES), got {spec!r}") from None
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hang":
        while True:
            time.sleep(3600)
    elif action == "raise":
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")
    else:
        raise ValueError(f"{FAULT_ENV}: unknown action {action!r}; valid: kill, hang, raise")


def tensor_digest(t: Tensor) -> int:
    """A 63-bit digest of a tensor's bytes (to check that the replicas of x agree bit for bit)."""
    h = hashlib.blake2b(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


def run_series(
    spec: SeriesSpec,
    run: dict[str, Any],
    *,
    rank: int,
    group: dist.ProcessGroup | None,
    index: int = 0,
    resume: SeriesState | None = None,
    checkpoint: Callable[[Callable[[], SeriesState], Callable[[], dict[str, Any]]], None] | None = None,
    checkpoint_every: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SeriesOutcome:
    """Run series ``spec`` as worker ``rank`` of its N = ``spec.workers`` workers on ``group``.

    ``resume`` continues from a checkpointed state; ``checkpoint(shared_state, own_state)`` is called
    by every rank after each ``checkpoint_every``-th step (it gathers and writes; see ``backend``).
    """
    t_start = time.perf_counter()
    n = spec.workers
    repeats, seed, dtype = run["repeats"], run["seed"], DTYPES[run["dtype"]]
    method, noise, schedule = spec.method, spec.noise, spec.schedule
    comp = method.compressor
    spec.problem.check_workers(n)
    p = spec.problem.to(dtype)
    d, steps = p.dim, schedule.steps
    reporter = rank == 0

    draw = Draws(method, noise, n, repeats, d, spec.batch, seed, dtype, ranks=[rank])
    codec = codec_for(comp)
    replay = Replay(comp, seed, n, rank, repeats, d, dtype) if (not codec.summable and codec.needs_draws(d)) else None
    exchange = Exchange(codec, rows=repeats, d=d, dtype=dtype, workers=n, group=group, exact=True)
    x0 = p.x0()
    x = x0.expand(repeats, d).clone()
    memory = method.init_memory(1, (repeats,), d, dtype)
    rec = Recorder(p, steps, run["log_every"], repeats, method.bits_per_step(d), measure=reporter)
    limit = divergence_limit(p, x0)
    alive = torch.ones(repeats, dtype=torch.bool)
    comp_err = math.nan
    start = 0
    seconds_before = 0.0
    if resume is None:
        rec.record(0, x, comp_err)
    else:
        start = resume.step
        x = resume.x.to(dtype).clone()
        alive = resume.alive.clone()
        rec.diverged_step = resume.diverged_step.clone()
        rec.rows = list(resume.rows) if reporter else [None] * len(resume.rows)
        comp_err = resume.comp_err
        seconds_before = resume.seconds
        exchange.wire_bytes, exchange.calls = resume.wire_bytes, resume.calls
        own = resume.ranks[rank]
        if memory is not None:
            memory.copy_(own["memory"])
        draw.load_state(own["draws"])
        if replay is not None:
            replay.load_state(own["replay"])

    def shared_state(k: int) -> SeriesState:
        return SeriesState(step=k, x=x.clone(), alive=alive.clone(), diverged_step=rec.diverged_step.clone(),
                           comp_err=comp_err, rows=list(rec.rows) if reporter else [],
                           seconds=seconds_before + time.perf_counter() - t_start,
                           wire_bytes=exchange.wire_bytes, calls=exchange.calls, ranks=[])

    def own_state() -> dict[str, Any]:
        return {"memory": None if memory is None else memory.clone(), "draws": draw.state(),
                "replay": None if replay is None else replay.state()}

    buf = torch.empty(1, repeats, d, dtype=dtype) if noise.active else None
    t_compress = 0.0
    k = start
    try:
        for k in range(start, steps):
            _fault(rank, index, k)
            z, rnd = draw(buf)
            grads = p.worker_grads(x, n, rank, rank + 1)
            g = grads if z is None else z.add_(grads)
            lr = schedule(k)
            log = rec.due(k + 1)
            own_rnd = None if rnd is None else rnd[0]
            t0 = time.perf_counter()
            if method.error_feedback:
                assert memory is not None
                inputs = memory[0] + lr * g[0]  # p = e + η g, as compsde.error_feedback.ef_step
                parts, message = codec.encode(inputs, own_rnd, need_message=True)
                assert message is not None
                memory[0] = inputs - message  # e ← p − C(p): stays on this worker
            else:
                inputs = g[0]
                parts, message = codec.encode(inputs, own_rnd, need_message=log)
            t_compress += time.perf_counter() - t0
            rnds = replay(own_rnd) if replay is not None else [own_rnd] * n
            total = exchange(parts, rnds, common_rnd=own_rnd)  # Σ_i m_i, the same on every rank
            x = x - method.finish(total, n, lr)  # the server's half, as in the simulator
            if log:
                comp_err = _compression_error(inputs, message, alive, group)
            freeze_diverged(x, x0, limit, alive, rec.diverged_step, k + 1, memory)
            if log:
                rec.record(k + 1, x, comp_err)
            if progress is not None:
                progress(1)
            if checkpoint is not None and checkpoint_every and (k + 1) % checkpoint_every == 0 and k + 1 < steps:
                checkpoint(lambda k=k: shared_state(k + 1), own_state)
    except Exception as e:
        e.add_note(f"at step {k} of series {index} ({spec.label!r})")
        raise

    _check_replicas(x, rank, group, spec.label)
    calls = max(exchange.calls, 1)
    per_step = exchange.wire_bytes / calls if exchange.calls else float(exchange.bytes_per_call)
    return SeriesOutcome(
        index=index, trace=rec.trace(x) if reporter else None,
        wire_bytes_per_step=per_step, wire_bytes_per_step_per_repeat=per_step / repeats,
        collective="all_reduce" if codec.summable else "all_gather",
        seconds=seconds_before + time.perf_counter() - t_start,
        timings={"compress": t_compress, "communicate": exchange.t_comm, "aggregate": exchange.t_aggregate,
                 "steps": float(steps - start), "calls": float(calls)},
    )


def _compression_error(inputs: Tensor, message: Tensor | None, alive: Tensor, group: dist.ProcessGroup | None) -> float:
    """The simulator's compression error (mean ‖C(v) − v‖²/‖v‖²) over all workers: each rank's sum and count of
    ‖C(v) − v‖²/‖v‖² (``compression_error_sum``), added over the ranks by one all-reduce."""
    if message is None:
        raise RuntimeError("the message is needed for the compression error")
    s, c = compression_error_sum(inputs.unsqueeze(0), message.unsqueeze(0), alive)
    t = torch.tensor([s, float(c)], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t[0] / t[1]) if t[1] > 0 else math.nan


def _check_replicas(x: Tensor, rank: int, group: dist.ProcessGroup | None, label: str) -> None:
    """Every rank must end with the same iterates, bit for bit (they run the same arithmetic on the
    same exchanged bytes); a difference would be a bug, so it stops the run."""
    size = dist.get_world_size(group)
    mine = torch.tensor([tensor_digest(x)], dtype=torch.int64)
    every = torch.empty(size, dtype=torch.int64)
    from compsde.distributed.collectives import all_gather_bytes

    all_gather_bytes(every, mine, group=group)
    if not bool((every == every[0]).all()):
        bad = [i for i in range(size) if int(every[i]) != int(every[0])]
        raise RuntimeError(f"series {label!r}: the iterates of ranks {bad} differ from rank 0's (replicas out of sync)")
