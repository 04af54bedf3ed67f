"""The optimizer and its SDE side by side: the SDE's measurements in the simulator's ``Trace`` form.

``simulate_sde`` integrates the SDE model of a configured method (``compsde.sde.from_method``) over
the SDE time of the optimizer's run, t_k = Σ_{j<k} η_j, from the same start, and records the same
quantities at the same logged steps as ``compsde.simulator.simulate`` (M paths instead of R
repetitions). ``tracking_error`` compares the two mean-loss curves; ``fit_order`` fits the slope of
the tracking error against η (≈ 1 for an order-1 weak approximation).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from compsde import sde as sde_mod
from compsde.integrators import EulerMaruyama, integrate_schedule
from compsde.methods import Method
from compsde.noise import Noise
from compsde.problems import Problem
from compsde.schedules import Schedule
from compsde.simulator import Recorder, Trace, divergence_limit, freeze_diverged
from compsde.streams import stream_seed

#: Stream index of the SDE's Brownian motion (distinct from every worker's streams).
SDE_STREAM = -2


def simulate_sde(
    problem: Problem,
    noise: Noise,
    method: Method,
    schedule: Schedule,
    *,
    workers: int,
    batch: int = 1,
    paths: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    log_every: int = 1,
    substeps: int = 1,
    increments: str = "gaussian",
    mc_samples: int = 32,
    progress: Callable[[int], None] | None = None,
    model: sde_mod.SDEModel | None = None,
) -> tuple[Trace, sde_mod.SDEModel]:
    """Integrate the method's SDE for ``schedule.steps`` optimizer steps on M = ``paths`` paths.

    Returns the ``Trace`` (loss, grad norm, distance at the logged steps; bits as the optimizer's;
    compression error NaN) and the model used (its ``description`` says how it was built; pass
    ``model`` to reuse one built by ``sde_model``). A path that becomes non-finite or runs away is
    marked diverged, as in the simulator.
    """
    if model is None:
        model = sde_model(problem, noise, method, schedule, workers=workers, batch=batch, mc_samples=mc_samples)
    p = problem.to(dtype)
    x0 = p.x0()
    rec = Recorder(p, schedule.steps, log_every, paths, method.bits_per_step(p.dim))
    limit = divergence_limit(p, x0)
    alive = torch.ones(paths, dtype=torch.bool)

    def observe(k: int, x: Tensor) -> None:
        if k > 0:
            freeze_diverged(x, x0, limit, alive, rec.diverged_step, k, None)  # the simulator's rule, in place
            if progress is not None:
                progress(1)
        if rec.due(k):
            rec.record(k, x, math.nan)

    gen = torch.Generator().manual_seed(stream_seed(seed, SDE_STREAM))
    x = integrate_schedule(model, x0.expand(paths, p.dim).contiguous(), lr=schedule, steps=schedule.steps,
                           substeps=substeps, generator=gen, solver=EulerMaruyama(increments), observe=observe)
    return rec.trace(x), model


def sde_model(problem: Problem, noise: Noise, method: Method, schedule: Schedule, *, workers: int, batch: int,
              mc_samples: int = 32) -> sde_mod.SDEModel:
    """The SDE model ``simulate_sde`` integrates (ValueError if the method has none, e.g. DSGD under ν ≤ 2)."""
    return sde_mod.from_method(problem, noise, method, workers=workers, batch=batch, lr=schedule.lr, mc_samples=mc_samples)


def mean_loss(trace: Trace) -> np.ndarray:
    """Mean of f − f* over the non-diverged runs at each logged step (NaN where none is left)."""
    loss = trace.loss.double().numpy()
    ok = np.isfinite(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(1), np.where(ok, loss, 0.0).sum(1) / np.maximum(ok.sum(1), 1), np.nan)


def tracking_error(optimizer: Trace, sde: Trace) -> dict[str, float]:
    """Relative error |L_opt − L_sde| / L_opt of the mean losses over the logged steps (step 0 excluded).

    ``max_rel_error`` and ``mean_rel_error``; NaN if a curve has no finite point (e.g. all runs diverged).
    """
    if not torch.equal(optimizer.steps, sde.steps):
        raise ValueError("the optimizer and SDE traces must be logged at the same steps")
    a, b = mean_loss(optimizer)[1:], mean_loss(sde)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(a - b) / np.abs(a)
    rel = rel[np.isfinite(rel)]
    if rel.size == 0:
        return {"max_rel_error": math.nan, "mean_rel_error": math.nan}
    return {"max_rel_error": float(rel.max()), "mean_rel_error": float(rel.mean())}


def fit_order(lrs: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of log(error) against log(η): the empirical weak order."""
    x, y = np.log(np.asarray(lrs, dtype=np.float64)), np.log(np.asarray(errors, dtype=np.float64))
    if x.size < 2 or not np.isfinite(y).all() or np.ptp(x) == 0:
        raise ValueError(f"fit_order needs ≥ 2 distinct learning rates with finite positive errors, got lrs={list(lrs)}, errors={list(errors)}")
    return float(np.polyfit(x, y, 1)[0])
