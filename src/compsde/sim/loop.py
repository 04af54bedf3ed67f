"""The loop around one algorithm step, shared by the simulator and a distributed worker.

State: the algorithm's state (``Algorithm.init``): the iterates x of shape (R, d) — R Monte Carlo
repetitions, replicated on every worker — and the per-worker states of the workers held here
(shape (n, R, ·)). At step k each held worker i

    1. draws its noise from its own stream and evaluates g_i = ∇f_i(x) + z_i      (the oracle)
    2. draws its compressor's randomness from its own stream (or the shared one)  (the algorithm)
    3. runs the workers' half of the step: transform, error feedback, compression

then the exchange returns Σ_i m_i over all N workers, the server's half moves x, and the divergence
rule (``compsde.sim.recorder``) checks and freezes repetitions. The simulator holds all N workers and
processes them in cache-sized chunks with an in-process exchange; a distributed worker holds one and
exchanges payloads through collectives (``compsde.distributed``). Nothing else differs, so the two
give the same iterates for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from compsde.algorithms import Algorithm, WorkersOut
from compsde.algorithms.schedules import Schedule
from compsde.algorithms.sync import SyncSchedule
from compsde.core.streams import Streams
from compsde.core.tensors import check_memory
from compsde.core.trees import leaves, put, take
from compsde.objectives.oracle import GradientOracle
from compsde.sim.exchange import Exchange
from compsde.sim.recorder import Recorder, Trace

__all__ = ["CHUNK_ELEMENTS", "Loop", "compression_error_sum"]

#: Numbers (workers × repetitions × d) per chunk of workers in one step (see ``Loop``).
CHUNK_ELEMENTS = 1 << 18


def compression_error_sum(inputs: Tensor, messages: Tensor, alive: Tensor) -> tuple[float, int]:
    """Sum and count of ‖C(v) − v‖² / ‖v‖² over workers and live repetitions (for chunked means)."""
    num = (messages - inputs).pow(2).sum(-1)
    den = inputs.pow(2).sum(-1)
    ok = (den > 0) & alive.reshape(1, -1).expand_as(den)
    return float((num[ok] / den[ok]).double().sum()), int(ok.sum())


class Loop:
    """One run of ``algorithm`` on ``oracle`` along ``schedule``, for the workers ``held`` here.

    Args:
        repeats: R, Monte Carlo repetitions (independent runs, vectorised).
        seed: the run's seed; worker i's streams follow from it (``compsde.core.streams``).
        log_every: measure every that many steps (and at the last step).
        exchange: how messages travel (``compsde.sim.exchange``).
        held: the workers this process runs (default all N, as the simulator).
        keep: keep the logged measurements (False on the ranks of a distributed run that do not report).
        chunk_elements: workers are processed in chunks of about this many numbers: one chunk at the
            seeds' Monte Carlo sizes, cache-sized slices when N·R·d is large (a pass over a
            10⁷-element temporary costs page faults and memory traffic that a loop over slices avoids).
    """

    def __init__(self, algorithm: Algorithm, oracle: GradientOracle, schedule: Schedule, *, repeats: int, seed: int,
                 log_every: int, exchange: Exchange, held: Sequence[int] | None = None, keep: bool = True,
                 chunk_elements: int | None = None) -> None:
        self.algorithm, self.oracle, self.schedule, self.exchange = algorithm, oracle, schedule, exchange
        n_all, d = oracle.workers, oracle.dim
        self.held = list(range(n_all)) if held is None else list(held)
        if self.held != list(range(self.held[0], self.held[0] + len(self.held))):
            raise ValueError(f"held workers must be consecutive, got {self.held}")
        self.repeats, self.d = repeats, d
        n = len(self.held)
        per = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
        self.chunk = max(1, min(n, per // (repeats * d)))
        itemsize = torch.empty((), dtype=oracle.dtype).element_size()
        units = sum(t.numel() for t in leaves(algorithm.init(torch.zeros(1, 1, dtype=oracle.dtype), n)))
        check_memory(itemsize * repeats * d * (units + 6 * self.chunk + 4)
                     + Streams.memory(n, n_all if exchange.replay else n),
                     f"a run with {n} worker(s) × {repeats} repetition(s) × d = {d} (with each worker's random streams)",
                     "reduce repeats, workers or the dimension", oracle.device)
        self.streams = Streams(seed, n_all, noise=self.held, compressor=range(n_all) if exchange.replay else self.held)
        x0 = oracle.x0()
        self.state = algorithm.init(x0.expand(repeats, d).clone(), n)
        self.rec = Recorder(oracle, schedule.steps, log_every, repeats, x0, keep)
        self.buf = (torch.empty(self.chunk, repeats, d, dtype=oracle.dtype, device=oracle.device)
                    if oracle.scales is not None else None)
        self.k = 0
        if algorithm.local and schedule.steps > 0:  # the period the run starts with, decided at step 0
            self.state["sync"] = self._sync(0)[0]
        period = self.state["sync"]["period"] if algorithm.local else None
        self.rec.record(0, self.state["params"], math.nan, exchange.log.totals(), period=period)

    @property
    def x(self) -> Tensor:
        return self.state["params"]

    @property
    def done(self) -> bool:
        return self.k >= self.schedule.steps

    def draw(self, workers: Sequence[int]) -> Tensor | None:
        """The compressor draws of one step for ``workers`` (see ``Algorithm.draw``)."""
        return self.algorithm.draw(self.streams, workers, self.repeats, self.d, self.oracle.dtype)

    def _chunks(self) -> Any:
        """The held workers in chunks of ``self.chunk``: (lo, hi, their ids, this step's noise sample)."""
        n = len(self.held)
        for lo in range(0, n, self.chunk):
            hi = min(n, lo + self.chunk)
            ws = self.held[lo:hi]
            yield lo, hi, ws, self.oracle.sample(self.streams, ws, self.repeats,
                                                 None if self.buf is None else self.buf[: hi - lo])

    def _sync(self, k: int) -> tuple[dict[str, Any], bool]:
        """A local method's synchronisation state at step k, and whether step k averages
        (``SyncSchedule.begin``)."""
        sync = self.algorithm.sync
        assert sync is not None  # a local method
        return sync.begin(self.state["sync"], k, self.schedule(k), self.schedule.steps)

    def _end_step(self, k: int, st: dict[str, Any], log: bool, err: list[float], period: int | None = None) -> None:
        """The new state, the divergence rule, the logged row (compression error summed over all
        participants), the freezing of diverged repetitions; then k → k + 1."""
        self.state = st
        self.rec.check(st["params"], k + 1)
        if log:
            s, c = self.exchange.combine(err)
            self.rec.record(k + 1, st["params"], s / c if c else math.nan, self.exchange.log.totals(), period=period)
        self.rec.freeze(st)
        self.k = k + 1

    def step(self) -> None:
        """One step k → k + 1 (see module doc)."""
        if self.algorithm.local:
            return self._local_step()
        algo, oracle, ex = self.algorithm, self.oracle, self.exchange
        k, st = self.k, self.state
        lr = self.schedule(k)
        log = self.rec.due(k + 1)
        x = st["params"]
        comp = algo.compressor
        shared = self.draw([]) if comp.randomized and comp.shared_randomness else None
        workers_state = {"worker": st["worker"], "ef": st["ef"]}
        err = [0.0, 0.0]
        for lo, hi, ws, z in self._chunks():
            g = (oracle.grads(x, ws[0], ws[-1] + 1, z) if algo.single_evaluation
                 else oracle.grad_fn(ws[0], ws[-1] + 1, z))
            rnd = shared if shared is not None else self.draw(ws)
            out = algo.workers_step(g, take(workers_state, lo, hi), x, lr, rnd, encode=ex.needs_payload,
                                    messages=log or not ex.needs_payload)
            workers_state = put(workers_state, lo, hi, out.state)
            ex.put(out, ws, rnd)
            if log:
                err = self._add_error(err, out)
        total = ex.total(lambda j: self.draw([j]))
        st = {**st, **workers_state}
        self._end_step(k, algo.server_step(total, oracle.workers, st, lr), log, err)

    def _local_step(self) -> None:
        """One step of a local method: every held worker's inner step on its own iterate; when the period
        ends, its parameter delta is compressed and exchanged like a gradient and the outer step averages
        (``compsde.algorithms.algorithm``). The period is decided at the step after each averaging."""
        algo, oracle, ex = self.algorithm, self.oracle, self.exchange
        k, st = self.k, self.state
        lr = self.schedule(k)
        sync, averaging = self._sync(k)
        log = self.rec.due(k + 1)
        comp = algo.compressor
        shared = self.draw([]) if averaging and comp.randomized and comp.shared_randomness else None
        local, wstate, ef = st["local"], st["worker"], st["ef"]
        err = [0.0, 0.0]
        for lo, hi, ws, z in self._chunks():
            xl = local[lo:hi]
            new_x, new_w = algo.local_step(oracle.grads(xl, ws[0], ws[-1] + 1, z), take(wstate, lo, hi), xl, lr)
            xl.copy_(new_x)
            wstate = put(wstate, lo, hi, new_w)
            if averaging:
                rnd = shared if shared is not None else self.draw(ws)
                out = algo.compress(st["params"] - xl, None if ef is None else ef[lo:hi], 1.0, rnd,
                                    encode=ex.needs_payload, messages=log or not ex.needs_payload)
                if ef is not None:
                    ef[lo:hi] = out.state["ef"]
                ex.put(out, ws, rnd)
                if log:
                    err = self._add_error(err, out)
        st = {**st, "worker": wstate, "ef": ef, "sync": sync}
        if averaging:
            st = algo.outer_step(ex.total(lambda j: self.draw([j])), oracle.workers, st)
            st["sync"] = SyncSchedule.end_round(sync)
            if algo.average_state:
                for t in leaves(st["worker"]):
                    if t.is_floating_point():
                        t.copy_(ex.mean(t, oracle.workers).expand_as(t))
        self._end_step(k, st, log, err, period=sync["period"])

    def _add_error(self, err: list[float], out: WorkersOut) -> list[float]:
        """The running sum and count of the compression error with this chunk's (messages decoded: logged)."""
        assert out.messages is not None  # asked for on logged steps
        return [a + b for a, b in zip(err, compression_error_sum(out.inputs, out.messages, self.rec.alive))]

    def trace(self) -> Trace:
        return self.rec.trace(self.x)

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything this process needs to continue the run: the step, the algorithm state of the
        workers held here, every generator state, the record and the communication counters."""
        return {"k": self.k, "state": self.state, "streams": self.streams.state(), "rec": self.rec.state_dict(),
                "comm": self.exchange.log.state_dict()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        from compsde.core.trees import tree_map

        dev = self.oracle.device
        self.k = int(st["k"])
        self.state = tree_map(lambda t: t.to(dev).clone(), st["state"])
        self.streams.load_state(st["streams"])
        self.rec.load_state_dict(st["rec"])
        self.exchange.log.load_state_dict(st["comm"])
