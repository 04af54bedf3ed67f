"""One process's part of a series: worker ``rank`` runs the simulator's loop with a collective exchange.

Every rank holds the same replicated iterates x (R, d) and runs ``compsde.sim.loop.Loop`` with
``held = [rank]``: it draws its own noise and compressor randomness from its own streams (exactly what
worker i draws in the simulator), runs the workers' half of the step, exchanges payloads through
collectives (``compsde.distributed.collectives``) into Σ_i m_i, runs the server's half and applies the
divergence rule to its replica. The global rank 0 keeps the ``Trace``; the others keep only the
divergence record. Nothing here imports the experiment layer: the caller hands over the oracle, the
algorithm and the schedule.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from compsde.algorithms import Algorithm
from compsde.algorithms.schedules import Schedule
from compsde.distributed.collectives import CollectiveExchange, all_gather_bytes
from compsde.objectives.oracle import Oracle
from compsde.sim.loop import Loop
from compsde.sim.recorder import Trace

__all__ = ["FAULT_ENV", "SeriesOutcome", "inject_fault", "run_series", "tensor_digest"]

#: Test-only fault injection: ``ACTION:RANK@STEP`` or ``ACTION:RANK@STEP/SERIES`` with ACTION one of
#: ``kill`` (SIGKILL itself), ``hang`` (sleep forever), ``raise`` (an exception) — before that step (a
#: rank that sits a series out meets its step 0 as it starts waiting).
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


def inject_fault(rank: int, series: int, step: int) -> None:
    """Carry out the fault ``FAULT_ENV`` names if it is for this rank, series and step (tests only)."""
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
    oracle: Oracle,
    algorithm: Algorithm,
    schedule: Schedule,
    *,
    repeats: int,
    seed: int,
    log_every: int,
    rank: int,
    group: dist.ProcessGroup | None,
    index: int = 0,
    label: str = "",
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_every: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SeriesOutcome:
    """Run one series as worker ``rank`` of its N = ``oracle.workers`` workers on ``group``.

    ``resume`` continues from this rank's checkpointed part (``{"loop": Loop.state_dict(), "seconds"}``);
    ``checkpoint(part)`` is called by every rank after each ``checkpoint_every``-th step with its part
    (the caller gathers and writes them: ``compsde.distributed.backend.SeriesRunner``).
    """
    t_start = time.perf_counter()
    exchange = CollectiveExchange(algorithm, repeats, oracle.dim, oracle.dtype, workers=oracle.workers, rank=rank,
                                  group=group, device=oracle.device)
    loop = Loop(algorithm, oracle, schedule, repeats=repeats, seed=seed, log_every=log_every, exchange=exchange,
                held=[rank], keep=rank == 0)
    seconds_before = 0.0
    if resume is not None:
        loop.load_state_dict(resume["loop"])
        seconds_before = float(resume["seconds"])
    start, steps = loop.k, schedule.steps
    k = start
    try:
        while not loop.done:
            k = loop.k
            inject_fault(rank, index, k)
            loop.step()
            if progress is not None:
                progress(1)
            if checkpoint is not None and checkpoint_every and loop.k % checkpoint_every == 0 and not loop.done:
                checkpoint({"loop": loop.state_dict(), "seconds": seconds_before + time.perf_counter() - t_start})
    except Exception as e:
        e.add_note(f"at step {k} of series {index} ({label!r})")
        raise
    _check_replicas(loop.x, group, label)
    rounds = exchange.log.rounds
    per_rep = exchange.log.bytes / rounds if rounds else exchange.bytes_per_round
    return SeriesOutcome(
        index=index, trace=loop.trace() if rank == 0 else None,
        wire_bytes_per_step=per_rep * repeats, wire_bytes_per_step_per_repeat=per_rep,
        collective=exchange.collective,
        seconds=seconds_before + time.perf_counter() - t_start,
        timings={"communicate": exchange.t_comm, "aggregate": exchange.t_aggregate, "steps": float(steps - start),
                 "calls": float(rounds)},
    )


def _check_replicas(x: Tensor, group: dist.ProcessGroup | None, label: str) -> None:
    """Every rank must end with the same iterates, bit for bit (they run the same arithmetic on the
    same exchanged bytes); a difference would be a bug, so it stops the run."""
    size = dist.get_world_size(group)
    mine = torch.tensor([tensor_digest(x)], dtype=torch.int64, device=x.device)  # on the GPU for NCCL
    every = torch.empty(size, dtype=torch.int64, device=x.device)
    all_gather_bytes(every, mine, group=group)
    if not bool((every == every[0]).all()):
        bad = [i for i in range(size) if int(every[i]) != int(every[0])]
        raise RuntimeError(f"series {label!r}: the iterates of ranks {bad} differ from rank 0's (replicas out of sync)")
