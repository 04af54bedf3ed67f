"""The plain reference: a Python loop over repetitions and workers, one vector of length d at a time.

Written separately from ``compsde.sim.loop`` on purpose — its own transforms, error feedback,
summation, aggregation and divergence handling, in the plainest form — so that a test comparing the
two checks the vectorised step rather than itself. It draws the same random numbers (the same
per-worker streams, ``compsde.core.streams``) and measures with the same ``Recorder``. Slow: for tests
and the benchmark baseline.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from compsde.algorithms import Algorithm
from compsde.algorithms.schedules import Schedule
from compsde.core.streams import Streams
from compsde.objectives.oracle import Oracle
from compsde.optim import Transform
from compsde.sim.exchange import CommLog
from compsde.sim.recorder import Recorder, Trace
from compsde.sim.simulator import check_run

__all__ = ["simulate_reference"]


def _plain(t: Transform, g: Tensor, mem: dict[str, Tensor], x: Tensor) -> Tensor:
    """Apply the transforms of ``t`` to one vector g, keeping their memory in ``mem`` (by position)."""
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
        elif p.name == "sign":
            g = torch.where(g >= 0, 1.0, -1.0).to(g.dtype)
        elif p.name == "rmsprop":
            v = mem.get(f"v{i}", torch.zeros_like(g)) * p.params["b2"] + (1 - p.params["b2"]) * g * g
            mem[f"v{i}"] = v
            g = g / (v.sqrt() + p.params["eps"])
        elif p.name == "adam":
            b1, b2 = p.params["b1"], p.params["b2"]
            t = mem.get(f"t{i}", 0) + 1
            m = mem.get(f"m{i}", torch.zeros_like(g)) * b1 + (1 - b1) * g
            v = mem.get(f"v{i}", torch.zeros_like(g)) * b2 + (1 - b2) * g * g
            mem[f"t{i}"], mem[f"m{i}"], mem[f"v{i}"] = t, m, v
            g = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + p.params["eps"])
        else:
            raise ValueError(f"the reference loop has no plain form of transform {p.name!r}")
    return g


def _probe(oracle: Oracle, algo: Algorithm, i: int, x: Tensor, g: Tensor, z: Tensor | None, lr: float) -> Tensor:
    """Worker i's gradient of a probe step, with the step's noise z: at x ± ρ·(its gradient), or
    (shgd) J(x)ᵀ g by autograd through the worker's exact gradient."""

    def grad_at(p: Tensor) -> Tensor:
        out = oracle.mean_grads(p)[i]
        return out if z is None else out + z

    if algo.probe == "shgd":
        with torch.enable_grad():
            p = x.detach().clone().requires_grad_(True)
            return torch.autograd.grad(grad_at(p), p, g)[0]
    rho = algo.rho if algo.rho is not None else lr
    if algo.probe == "sam":
        return grad_at(x + rho * g / g.norm().clamp_min(torch.finfo(g.dtype).tiny))
    return grad_at(x - rho * g if algo.probe == "seg" else x + rho * g)


def simulate_reference(oracle: Oracle, algorithm: Algorithm, schedule: Schedule, *, repeats: int = 1, seed: int = 0,
                       log_every: int = 1) -> Trace:
    """The same run as ``compsde.sim.simulate`` (same arguments, same draws), one vector at a time."""
    check_run(oracle, algorithm, schedule, repeats=repeats, seed=seed, log_every=log_every)
    n, d, dtype = oracle.workers, oracle.dim, oracle.dtype
    comp, algo = algorithm.compressor, algorithm
    streams = Streams(seed, n)
    x0 = oracle.x0()
    xs = [x0.clone() for _ in range(repeats)]
    fresh = lambda: ([{} for _ in range(n)], [torch.zeros(d, dtype=dtype) for _ in range(n)], {})  # noqa: E731
    mems = [fresh() for _ in range(repeats)]
    rec = Recorder(oracle, schedule.steps, log_every, repeats, x0)
    log = CommLog()
    bytes_per_round = None
    rec.record(0, torch.stack(xs), math.nan, log.totals())
    for k in range(schedule.steps):
        z = oracle.sample(streams, range(n), repeats)
        rnd = None
        if comp.randomized:
            rnd = (comp.draw((1, repeats), d, streams.shared, dtype) if comp.shared_randomness else
                   torch.stack([comp.draw((1, repeats), d, streams.gens["compressor"][i], dtype)[0] for i in range(n)]))
        lr = schedule(k)
        errs: list[tuple[Tensor, Tensor]] = []
        for r in range(repeats):
            if rec.diverged_step[r] >= 0:
                continue
            worker_mem, ef, server_mem = mems[r]
            grads = oracle.mean_grads(xs[r])  # (N, d): the exact gradients, once per repetition
            total = None
            for i in range(n):
                g = grads[i] if z is None else grads[i] + z[i, r]
                if algo.probe is not None:
                    g = _probe(oracle, algo, i, xs[r], g, None if z is None else z[i, r], lr)
                u = _plain(algo.worker, g, worker_mem[i], xs[r])
                v = ef[i] + lr * u if algo.error_feedback else u
                m = comp.apply(v, None if rnd is None else rnd[min(i, rnd.shape[0] - 1), r])
                if algo.error_feedback:
                    ef[i] = v - m
                total = m.clone() if total is None else total + m
                errs.append((v, m))
            a = torch.sign(total) if algo.aggregation == "majority" else total / n
            step = _plain(algo.server, a, server_mem, xs[r])
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
