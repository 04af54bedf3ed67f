"""N simulated workers × R Monte Carlo repetitions, vectorised: one step is a handful of tensor ops.

State: iterates x of shape (R, d); per-worker tensors (gradients, noise, messages, EF memory) of
shape (N, R, d). Each step, worker i draws from its own streams (``compsde.streams``):

    1. its noise  Z_i = σ_i T / √B from its noise stream                    (R, d)
    2. its compressor's randomness compressor.draw(...) from its compressor stream (R, ·)
       (from the shared stream if the compressor shares randomness)

then g = ∇f_i(x) + Z, x ← x − method.step(g, η_k).update. ``simulate_reference`` is the plain
loop over repetitions and workers on the *same draws*; a test shows both give the same iterates.

Divergence: a repetition whose iterate or loss becomes non-finite, or whose distance from the start
grows beyond ``DIVERGENCE_FACTOR`` × (1 + ‖x⁰ − x*‖), is marked diverged at that step; from then on
it is frozen (its iterate reset to the start, its EF memory to 0) and reported with loss = +inf,
so means exclude it while medians, quantiles and the diverged fraction still count it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from compsde.methods import Method
from compsde.noise import Noise
from compsde.problems import Problem
from compsde.schedules import Schedule
from compsde.streams import compressor_generator, noise_generator, shared_generator

DIVERGENCE_FACTOR = 1e6
#: Numbers (workers × repetitions × d) per chunk of workers in one simulator step (see ``simulate``).
CHUNK_ELEMENTS = 1 << 18
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Trace:
    """Per-repetition measurements at the logged steps of one simulated series.

    ``loss`` is f(x) − f* (+inf once diverged); ``dist`` is ‖x − x*‖ (None if x* unknown);
    ``bits`` the cumulative bits each worker has sent; ``compression_error`` the mean over workers
    and live repetitions of ‖C(v) − v‖² / ‖v‖² for the vectors v compressed at that step (NaN at
    step 0, where nothing has been sent yet).
    """

    steps: Tensor  # (T,) long
    loss: Tensor  # (T, R)
    grad_norm: Tensor  # (T, R), NaN once diverged
    dist: Tensor | None  # (T, R), NaN once diverged
    bits: Tensor  # (T,) float64
    compression_error: Tensor  # (T,)
    diverged_step: Tensor  # (R,) long, −1 if never
    x: Tensor  # (R, d) final iterates

    def diverged_fraction(self) -> Tensor:
        """Fraction of repetitions diverged at or before each logged step, shape (T,)."""
        d = self.diverged_step
        return ((d >= 0).unsqueeze(0) & (d.unsqueeze(0) <= self.steps.unsqueeze(1))).double().mean(1)


def logged_steps(steps: int, log_every: int) -> list[int]:
    """0, log_every, 2·log_every, …, and always the final step."""
    out = list(range(0, steps + 1, max(1, log_every)))
    if out[-1] != steps:
        out.append(steps)
    return out


class Recorder:
    """Collects the measurements at logged steps (shared by the fast and the reference loop)."""

    def __init__(self, problem: Problem, steps: int, log_every: int, repeats: int, bits_per_step: int,
                 measure: bool = True) -> None:
        self.problem, self.bits_per_step = problem, bits_per_step
        self.when = logged_steps(steps, log_every)
        self.rows: list[tuple[Tensor, Tensor, Tensor | None, float] | None] = []
        self.diverged_step = torch.full((repeats,), -1, dtype=torch.long)
        # measure=False: only keep the schedule of logged steps and the divergence record (the
        # ranks of a distributed run other than the one that reports).
        self.measure = measure

    def due(self, k: int) -> bool:
        return len(self.rows) < len(self.when) and self.when[len(self.rows)] == k

    def record(self, k: int, x: Tensor, comp_err: float) -> None:
        if not self.measure:
            self.rows.append(None)
            return
        p = self.problem
        alive = self.diverged_step < 0
        loss = p.suboptimality(x).double().where(alive, math.inf)
        gn = p.grad(x).norm(dim=-1).double().where(alive, math.nan)
        dist = None if p.x_opt is None else (x - p.x_opt).norm(dim=-1).double().where(alive, math.nan)
        self.rows.append((loss, gn, dist, comp_err))

    def trace(self, x: Tensor) -> Trace:
        if not self.measure:
            raise RuntimeError("this recorder does not measure (measure=False): it has no trace")
        steps = torch.tensor(self.when[: len(self.rows)], dtype=torch.long)
        dist = None if self.rows[0][2] is None else torch.stack([r[2] for r in self.rows])  # type: ignore[misc]
        return Trace(
            steps=steps,
            loss=torch.stack([r[0] for r in self.rows]),
            grad_norm=torch.stack([r[1] for r in self.rows]),
            dist=dist,
            bits=steps.double() * float(self.bits_per_step),
            compression_error=torch.tensor([r[3] for r in self.rows], dtype=torch.float64),
            diverged_step=self.diverged_step,
            x=x,
        )


def compression_error_sum(inputs: Tensor, messages: Tensor, alive: Tensor) -> tuple[float, int]:
    """Sum and count of ‖C(v) − v‖² / ‖v‖² over workers and live repetitions (for chunked means)."""
    num = (messages - inputs).pow(2).sum(-1)
    den = inputs.pow(2).sum(-1)
    ok = (den > 0) & alive.reshape(1, -1).expand_as(den)
    return float((num[ok] / den[ok]).double().sum()), int(ok.sum())


class Draws:
    """The random streams of a set of workers (``compsde.streams``) and each step's draws from them.

    ``ranks`` are the workers held here: all N in the simulator, one in a process of a distributed
    run. Worker i draws its noise from its noise stream and its compressor's randomness from its
    compressor stream every step; the rows of the returned tensors follow ``ranks``.
    """

    def __init__(self, method: Method, noise: Noise, workers: int, repeats: int, d: int, batch: int,
                 seed: int, dtype: torch.dtype, ranks: Sequence[int] | None = None) -> None:
        self.method, self.noise, self.repeats, self.d, self.dtype = method, noise, repeats, d, dtype
        self.ranks = list(range(workers)) if ranks is None else list(ranks)
        for i in self.ranks:
            if not 0 <= i < workers:
                raise ValueError(f"ranks must be in [0, workers = {workers}), got {i}")
        self.noise_gens = [noise_generator(seed, i) for i in self.ranks]
        self.comp_gens = [compressor_generator(seed, i) for i in self.ranks]
        self.shared = shared_generator(seed)
        n = len(self.ranks)
        scales = noise.worker_scales(workers)[self.ranks] / math.sqrt(batch) if noise.active else None
        self.scales = None if scales is None else scales.to(dtype).reshape(n, 1, 1)

    def __call__(self, out: Tensor | None = None, lo: int = 0, hi: int | None = None) -> tuple[Tensor | None, Tensor | None]:
        """(noise (n, R, d) or None, compressor draw) of the held workers [lo, hi) for one step; the
        noise is written into ``out`` if given.

        Call it once per step for all held workers, or for consecutive chunks starting at lo = 0 (the
        randomness shared by all workers is drawn with the first chunk and reused by the others).
        A loop over the workers for the random numbers only (the arithmetic stays vectorised), so
        each worker's draws are what it would draw alone in its own process.
        """
        hi = len(self.ranks) if hi is None else hi
        r, d = self.repeats, self.d
        z = None
        if self.scales is not None:
            z = torch.empty(hi - lo, r, d, dtype=self.dtype) if out is None else out
            for j in range(lo, hi):
                self.noise.standard((r, d), self.noise_gens[j], self.dtype, out=z[j - lo])
            z.mul_(self.scales[lo:hi])
        comp = self.method.compressor
        if not comp.randomized:
            return z, None
        if comp.shared_randomness:
            if lo == 0:
                self._shared_draw = comp.draw((1, r), d, self.shared, self.dtype)
            return z, self._shared_draw
        parts = [comp.draw((1, r), d, g, self.dtype) for g in self.comp_gens[lo:hi]]
        return z, torch.cat(parts)  # type: ignore[arg-type]

    def generators(self) -> list[torch.Generator]:
        """Every stream held here: noise streams, compressor streams, then the shared one."""
        return self.noise_gens + self.comp_gens + [self.shared]

    def state(self) -> list[Tensor]:
        """Generator states of ``generators()``, for checkpoints."""
        return [g.get_state() for g in self.generators()]

    def load_state(self, states: list[Tensor]) -> None:
        for g, st in zip(self.generators(), states, strict=True):
            g.set_state(st)


def divergence_limit(problem: Problem, x0: Tensor) -> float:
    ref = problem.x_opt if problem.x_opt is not None else torch.zeros_like(x0)
    return DIVERGENCE_FACTOR * (1.0 + float((x0.double() - ref.double()).norm()))


def freeze_diverged(x: Tensor, x0: Tensor, limit: float, alive: Tensor, diverged_step: Tensor, step: int,
                     memory: Tensor | None) -> None:
    """The divergence rule (module doc), in place: repetitions of x (R, d) that just became
    non-finite or left the ball of radius ``limit`` around x0 are marked diverged at ``step``,
    removed from ``alive``, reset to x0, and their EF memory (..., R, d) set to 0.

    Shared by ``simulate`` and the distributed worker (``compsde.distributed.worker``), where every
    rank applies it to its replica of x and its own memory.
    """
    bad = ~torch.isfinite(x).all(-1) | ((x - x0).norm(dim=-1) > limit)
    newly = bad & alive
    if bool(newly.any()):
        diverged_step[newly] = step
        alive &= ~newly
    if not bool(alive.all()):  # every step: a frozen repetition must not move again
        x[~alive] = x0
        if memory is not None:
            memory[..., ~alive, :] = 0


def simulate(
    problem: Problem,
    noise: Noise,
    method: Method,
    schedule: Schedule,
    *,
    workers: int,
    batch: int = 1,
    repeats: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    log_every: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Trace:
    """Run ``schedule.steps`` steps of ``method`` on N = ``workers`` workers, R = ``repeats`` runs.

    Returns the ``Trace`` of measurements at ``logged_steps(steps, log_every)``. ``progress`` is
    called with the number of steps just completed (for a progress bar).
    """
    _check_run_args(workers, batch, repeats, schedule.steps)
    problem.check_workers(workers)
    p = problem.to(dtype)
    d, steps = p.dim, schedule.steps
    draw = Draws(method, noise, workers, repeats, d, batch, seed, dtype)
    x0 = p.x0()
    x = x0.expand(repeats, d).clone()
    memory = method.init_memory(workers, (repeats,), d, dtype)
    rec = Recorder(p, steps, log_every, repeats, method.bits_per_step(d))
    limit = divergence_limit(p, x0)
    comp_err = math.nan
    rec.record(0, x, comp_err)
    alive = torch.ones(repeats, dtype=torch.bool)
    # Workers are processed in chunks of ≈ CHUNK_ELEMENTS numbers: one chunk (fully vectorised) at
    # the seeds' Monte Carlo sizes, cache-sized slices when N·R·d is large (a pass over a 10⁷-element
    # temporary costs page faults and memory traffic that a loop over slices avoids). One noise
    # buffer of chunk size is reused every step.
    chunk = max(1, min(workers, CHUNK_ELEMENTS // (repeats * d)))
    buf = torch.empty(chunk, repeats, d, dtype=dtype) if noise.active else None
    for k in range(steps):
        lr = schedule(k)
        log = rec.due(k + 1)
        total: Tensor | None = None
        err_sum, err_count = 0.0, 0
        for lo in range(0, workers, chunk):
            hi = min(workers, lo + chunk)
            z, rnd = draw(None if buf is None else buf[: hi - lo], lo, hi)
            grads = p.worker_grads(x, workers, lo, hi)
            g = grads if z is None else z.add_(grads)
            mem = None if memory is None else memory[lo:hi]
            inputs, messages, new_mem = method.compress(g, lr, mem, rnd)
            if memory is not None:
                memory[lo:hi] = new_mem
            part = messages.sum(0)
            total = part if total is None else total.add_(part)
            if log:
                s, c = compression_error_sum(inputs, messages, alive)
                err_sum, err_count = err_sum + s, err_count + c
        assert total is not None
        x = x - method.finish(total, workers, lr)
        # Divergence check: cheap (one norm per repetition), done every step so the step is exact.
        freeze_diverged(x, x0, limit, alive, rec.diverged_step, k + 1, memory)
        if log:
            rec.record(k + 1, x, err_sum / err_count if err_count else math.nan)
        if progress is not None:
            progress(1)
    return rec.trace(x)


def simulate_reference(
    problem: Problem,
    noise: Noise,
    method: Method,
    schedule: Schedule,
    *,
    workers: int,
    batch: int = 1,
    repeats: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    log_every: int = 1,
) -> Trace:
    """The plain reference: a Python loop over repetitions and workers, one vector of length d at
    a time, on the same random draws as ``simulate``. Slow; for tests and the benchmark baseline."""
    _check_run_args(workers, batch, repeats, schedule.steps)
    problem.check_workers(workers)
    p = problem.to(dtype)
    d, steps = p.dim, schedule.steps
    draw = Draws(method, noise, workers, repeats, d, batch, seed, dtype)
    x0 = p.x0()
    xs = [x0.clone() for _ in range(repeats)]
    mem = [[torch.zeros(d, dtype=dtype) for _ in range(workers)] for _ in range(repeats)] if method.error_feedback else None
    rec = Recorder(p, steps, log_every, repeats, method.bits_per_step(d))
    limit = divergence_limit(p, x0)
    rec.record(0, torch.stack(xs), math.nan)
    comp_err = math.nan
    for k in range(steps):
        z, rnd = draw()
        lr = schedule(k)
        errs: list[tuple[Tensor, Tensor]] = []
        for r in range(repeats):
            if rec.diverged_step[r] >= 0:
                continue
            msgs = []
            grads = p.worker_grads(xs[r], workers)  # (N, d): the oracle, once per repetition
            for i in range(workers):
                g = grads[i]
                if z is not None:
                    g = g + z[i, r]
                rnd_ir = None if rnd is None else rnd[min(i, rnd.shape[0] - 1), r]
                if method.error_feedback:
                    assert mem is not None
                    v = mem[r][i] + lr * g
                    m = method.compressor.apply(v, rnd_ir)
                    mem[r][i] = v - m
                else:
                    v = g
                    m = method.compressor.apply(v, rnd_ir)
                msgs.append(m)
                errs.append((v, m))
            total = msgs[0].clone()
            for m in msgs[1:]:
                total = total + m
            if method.aggregation == "majority":
                direction = torch.sign(total)
            else:
                direction = total / workers
            if method.error_feedback:
                xs[r] = xs[r] - direction
            else:
                if method.normalize:
                    direction = direction / direction.norm().clamp_min(1e-30)
                xs[r] = xs[r] - lr * direction
            if not bool(torch.isfinite(xs[r]).all()) or float((xs[r] - x0).norm()) > limit:
                rec.diverged_step[r] = k + 1
                xs[r] = x0.clone()
                if mem is not None:
                    mem[r] = [torch.zeros(d, dtype=dtype) for _ in range(workers)]
        if rec.due(k + 1):
            vals = [float((m - v).pow(2).sum() / v.pow(2).sum()) for v, m in errs if float(v.pow(2).sum()) > 0]
            comp_err = sum(vals) / len(vals) if vals else math.nan
            rec.record(k + 1, torch.stack(xs), comp_err)
    return rec.trace(torch.stack(xs))


def _check_run_args(workers: int, batch: int, repeats: int, steps: int) -> None:
    for name, v in (("workers", workers), ("batch", batch), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer ≥ 0, got {steps!r}")
