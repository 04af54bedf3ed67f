"""The plain reference: a Python loop over repetitions and workers, one vector of length d at a time.

Written separately from ``compsde.sim.loop`` on purpose — its own transforms, error feedback,
summation, aggregation and divergence handling, in the plainest form — so that a test comparing the
two checks the vectorised step rather than itself. It draws the same random numbers (the same
per-worker streams, ``compsde.core.streams``) and measures with the same ``Recorder``. Slow: for tests
and the benchmark baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from compsde.algorithms import Algorithm
from compsde.algorithms.schedules import Schedule
from compsde.compressors import Compressor
from compsde.core.streams import Streams
from compsde.objectives.oracle import Oracle
from compsde.optim import Transform
from compsde.sim.exchange import CommLog
from compsde.sim.recorder import Recorder, Trace
from compsde.sim.simulator import check_run

__all__ = ["simulate_reference"]


def _plain(t: Transform, g: Tensor, mem: dict[str, Tensor], x: Tensor) -> Tensor:
    """Apply the user-facing transforms of ``t`` (momentum, Nesterov, weight decay, normalisation) to one
    vector g, keeping their memory in ``mem`` (by position). A named optimizer's own direction is its
    recipe's plain form (``Optimizer.plain``)."""
    parts = t.parts or ((t,) if t.name != "identity" else ())
    for i, p in enumerate(parts):
        if p.name in ("momentum", "nesterov"):
            beta = p.params["beta"]
            m = mem.get(f"m{i}", torch.zeros_like(g)) * beta + g
            mem[f"m{i}"] = m
            g = g + beta * m if p.name == "nesterov" else m
        elif p.name == "weight_decay":
            g = g + p.params["weight_decay"] * x
        elif p.name == "normalize":
            g = g / g.norm().clamp_min(1e-30)
        else:
            raise ValueError(f"the reference loop has no plain form of transform {p.name!r} outside an optimizer's recipe")
    return g


def _worker_grad(oracle: Oracle, i: int, z: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Worker i's gradient at any point with the step's noise z (a probe evaluates it again)."""

    def grad_at(p: Tensor) -> Tensor:
        out = oracle.mean_grads(p)[i]
        if z is None:
            return out
        return out + (z * oracle.problem.noise_std(p) if oracle.shaped else z)  # noise shaped at the point

    return grad_at


def _draw(comp: Compressor, gen: torch.Generator, repeats: int, d: int, dtype: torch.dtype) -> Tensor:
    """A randomized compressor's draw for one worker's R repetitions, (1, R, ·)."""
    r = comp.draw((1, repeats), d, gen, dtype)
    assert r is not None  # randomized
    return r


def simulate_reference(oracle: Oracle, algorithm: Algorithm, schedule: Schedule, *, repeats: int = 1, seed: int = 0,
                       log_every: int = 1) -> Trace:
    """The same run as ``compsde.sim.simulate`` (same arguments, same draws), one vector at a time."""
    check_run(oracle, algorithm, schedule, repeats=repeats, seed=seed, log_every=log_every)
    if algorithm.local:
        raise ValueError(f"the reference loop does not run local methods ({algorithm.name!r}): their per-worker iterates "
                         "and averaging rounds are checked against the torch backend and the LocalSGD driver instead")
    opt = algorithm.optimizer
    n, d, dtype = oracle.workers, oracle.dim, oracle.dtype
    comp, algo = algorithm.compressor, algorithm
    streams = Streams(seed, n)
    x0 = oracle.x0()
    xs = [x0.clone() for _ in range(repeats)]

    def fresh() -> tuple[list[dict[str, Any]], list[Tensor], dict[str, Any]]:
        """A repetition's memories: the workers' transforms, their error feedback, the server's."""
        return [{} for _ in range(n)], [torch.zeros(d, dtype=dtype) for _ in range(n)], {}

    mems = [fresh() for _ in range(repeats)]
    rec = Recorder(oracle, schedule.steps, log_every, repeats, x0)
    log = CommLog()
    bytes_per_round = None
    rec.record(0, torch.stack(xs), math.nan, log.totals())
    for k in range(schedule.steps):
        z = oracle.sample(streams, range(n), repeats)
        rnd = None
        if comp.randomized:
            rnd = (_draw(comp, streams.shared, repeats, d, dtype) if comp.shared_randomness else
                   torch.stack([_draw(comp, streams.gens["compressor"][i], repeats, d, dtype)[0] for i in range(n)]))
        lr = schedule(k)
        errs: list[tuple[Tensor, Tensor]] = []
        for r in range(repeats):
            if rec.diverged_step[r] >= 0:
                continue
            worker_mem, ef, server_mem = mems[r]
            grads = oracle.mean_grads(xs[r])  # (N, d): the exact gradients, once per repetition
            total = None
            for i in range(n):
                noise = None if z is None else z[i, r]
                g = grads[i] if noise is None else grads[i] + noise
                if opt is not None and opt.plain_evaluate is not None:
                    g = opt.plain_evaluate(_worker_grad(oracle, i, noise), xs[r], g, lr, algo.hyper)
                u = _plain(algo.worker, g, worker_mem[i], xs[r])
                v = ef[i] + lr * u if algo.error_feedback else u
                m = comp.apply(v, None if rnd is None else rnd[min(i, rnd.shape[0] - 1), r])
                if algo.error_feedback:
                    ef[i] = v - m
                total = m.clone() if total is None else total + m
                errs.append((v, m))
            assert total is not None  # N ≥ 1 messages
            a = torch.sign(total) if algo.aggregation == "majority" else total / n
            step = (opt.plain(a, server_mem, xs[r], algo.hyper) if opt is not None and opt.plain is not None
                    else _plain(algo.server, a, server_mem, xs[r]))
            xs[r] = xs[r] - (step if algo.error_feedback else lr * step)
            if not bool(torch.isfinite(xs[r]).all()) or float((xs[r] - x0).norm()) > rec.limit:
                rec.diverged_step[r] = k + 1
                rec.alive[r] = False
        if bytes_per_round is None:
            from compsde.compressors.wire import wire_bytes

            bytes_per_round = wire_bytes(comp, repeats, d, dtype) / repeats
        log.record(float(algo.bits(d)), bytes_per_round)
        if rec.due(k + 1):
            vals = [float((m - v).pow(2).sum() / v.pow(2).sum()) for v, m in errs if float(v.pow(2).sum()) > 0]
            rec.record(k + 1, torch.stack(xs), sum(vals) / len(vals) if vals else math.nan, log.totals())
        for r in range(repeats):  # frozen: back to the start, every memory to 0
            if not bool(rec.alive[r]):
                xs[r] = x0.clone()
                mems[r] = fresh()
    return rec.trace(torch.stack(xs))
