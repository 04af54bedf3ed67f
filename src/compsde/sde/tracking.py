"""The optimizer and its SDE side by side: the SDE's measurements in the simulator's ``Trace`` form.

``simulate_sde`` integrates the SDE model of a configured algorithm (``compsde.sde.models.from_algorithm``) over
the SDE time of the optimizer's run, t_k = Σ_{j<k} η_j, from the same start, and records the same
quantities at the same logged steps as ``compsde.sim.simulate`` (M paths instead of R
repetitions): at each optimizer-step boundary the solve's events record the method's communication on a
``CommLog`` (``SDEModel.events``) and apply the simulator's divergence rule (``compsde.sde.events.Divergence``). ``tracking_error`` compares the two mean-loss curves; ``fit_order`` fits the slope of
the tracking error against η (≈ 1 for an order-1 weak approximation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from compsde.algorithms import Algorithm
from compsde.algorithms.schedules import Schedule
from compsde.core.checks import check_int
from compsde.core.streams import SDE, generator
from compsde.core.tensors import check_memory
from compsde.objectives.oracle import Oracle
from compsde.sde import models
from compsde.sde.events import Divergence
from compsde.sde.integrators import EulerMaruyama, Solver, check_solve, integrate_schedule
from compsde.sde.noise import NoiseSource
from compsde.sde.noise import increments as noise_source
from compsde.sim.exchange import CommLog
from compsde.sim.recorder import Recorder, Trace
from compsde.sim.simulator import check_run


def simulate_sde(
    oracle: Oracle,
    algorithm: Algorithm,
    schedule: Schedule,
    *,
    paths: int = 1,
    seed: int = 0,
    log_every: int = 1,
    substeps: int = 1,
    increments: str | NoiseSource = "gaussian",
    mc_samples: int = models.MonteCarloSDE.DEFAULT_SAMPLES,
    progress: Callable[[int], None] | None = None,
    model: models.SDEModel | None = None,
    solver: Solver | None = None,
) -> tuple[Trace, models.SDEModel]:
    """Integrate the algorithm's SDE for ``schedule.steps`` optimizer steps on M = ``paths`` paths,
    in ``oracle.dtype`` on ``oracle.device``, with ``substeps`` steps of ``solver`` (default ``EulerMaruyama()``) per
    optimizer step and
    the noise source ``increments`` ("gaussian", "rademacher" or a ``compsde.sde.noise.NoiseSource``).

    Returns the ``Trace`` (loss, grad norm, distance at the logged steps; the communication the method's
    events record, one round per step for the methods that communicate every step and one per averaging for
    a local method, whose H in force is logged too, as the simulator counts them; compression error NaN) and the model used (its ``description`` says how it was built;
    pass ``model`` to reuse one built by ``from_algorithm``). A path that becomes non-finite or runs away
    is marked diverged and frozen, as in the simulator.
    """
    check_run(oracle, algorithm, schedule, repeats=paths, seed=seed, log_every=log_every, progress=progress)
    check_int("substeps", substeps, min=1)
    noise = increments if isinstance(increments, NoiseSource) else noise_source(increments)
    if model is None:
        model = models.from_algorithm(oracle, algorithm, schedule.lr, mc_samples=mc_samples)
    solver = EulerMaruyama() if solver is None else solver
    check_solve(model, solver, noise)
    d = oracle.dim
    check_memory(paths * model.path_bytes(torch.empty((), dtype=oracle.dtype).element_size()),
                 f"an SDE integration with {paths} paths × d = {d}", "reduce paths", oracle.device)
    x0 = oracle.x0()
    rec = Recorder(oracle, schedule.steps, log_every, paths, x0)
    log = CommLog()
    z0 = model.initial(x0.expand(paths, d).contiguous())
    own = model.events(log, paths, oracle.dtype, schedule)
    sync = next((ev for ev in own if ev.period is not None), None)  # a local method's averaging
    rec.record(0, model.params(z0), math.nan, log.totals(), period=None if sync is None else sync.period)
    events = [*own, Divergence(rec, model, log, progress, sync)]
    gen = generator(seed, SDE)
    z = integrate_schedule(model, z0, lr=schedule, steps=schedule.steps,
                           substeps=substeps, generator=gen, solver=solver, noise=noise, events=events)
    return rec.trace(model.params(z)), model


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
