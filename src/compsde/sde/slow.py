"""The slow SDE of SGD, Local SGD and QSR on the sharpness valley: how fast each method flattens the minimum.

Near a manifold Γ of minimisers, over O(η⁻²) steps, SGD, Local SGD with H = β/η and Local SGD with QSR's
H = (α/η)² follow "slow SDEs" of the projection ζ of the iterate onto Γ (Gu, Lyu, Huang, Arora 2023;
Gu, Lyu, Arora, Zhang, Huang 2024; docs/theory.md §5.5). On ``sharpness-valley`` (f = ½ h(y)‖x‖²,
h = h0 eʸ, noise σ√h(y) T/√B_loc in x only) the noise has no component along Γ, so the slow SDE of y is an
ODE in the time t = Σ_k η_k² (docs/theory.md §5.5, [derived]):

    dy/dt = −c · F · h(y),   c = m σ̄² v_T / (4 K B_loc),   F = 1 + (K − 1) ψ(2 β h(y)),   ψ(z) = (e⁻ᶻ − 1 + z)/z,

with m = d − 1 normal directions, K workers of batch B_loc each (K B_loc = B, the total batch), σ̄² the mean
of the workers' σ_i², v_T = Var T, and β = (H − 1) η (the period in units of η; H − 1 rather than H makes
F exact at H = 1, data-parallel SGD, and matches the per-round average of a finite H at first order in
ηh). SGD (H = 1) has F = 1; H = β/η gives 1 < F < K; QSR (β = α²/η → ∞ as η → 0) gives F → K, a K times
stronger drift toward flatter minima. For h = h0 eʸ the sharpness s = h(y) obeys ds/dt = −c F s².

``valley_prediction`` integrates the ODE along a run's own learning-rate schedule and periods (one Euler
step of dt = η_k² per optimizer step, from y = Φ(x⁰), the end of gradient flow from the start); it is
what ``compsde run`` records as ``sharpness_slow_sde``. ``round_factor`` is the exact finite-η average of
‖x‖² over a round with y frozen, the reference the slow SDE's limit is checked against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from compsde.algorithms.algorithm import Algorithm
from compsde.algorithms.schedules import Schedule
from compsde.algorithms.sync import SyncSchedule
from compsde.core.checks import check_int, check_number

__all__ = ["drift_factor", "periods", "predicts", "psi", "round_factor", "valley_prediction"]


def psi(z: float) -> float:
    """ψ(z) = (e⁻ᶻ − 1 + z)/z for z ≥ 0 (ψ(0) = 0, ψ(∞) = 1), computed as 1 − (1 − e⁻ᶻ)/z with ``expm1``
    (and its series z/2 − z²/6 below 1e-8, where the difference cancels)."""
    z = check_number("z", z, min=0.0)
    if z < 1e-8:
        return z / 2.0 - z * z / 6.0
    return 1.0 + math.expm1(-z) / z


def drift_factor(workers: int, beta_h: float) -> float:
    """F = 1 + (K − 1) ψ(2βh): Local SGD's drift along the valley relative to SGD's at the same total batch,
    with βh = (H − 1)ηh the period in units of the normal directions' relaxation time 1/(ηh)."""
    check_int("workers", workers, min=1)
    return 1.0 + (workers - 1) * psi(2.0 * check_number("beta_h", beta_h, min=0.0))


def round_factor(workers: int, period: int, eta_h: float) -> float:
    """The exact finite-η drift factor of one round with y frozen: the mean of E‖x_s‖² over the H steps
    s = 0 … H − 1 after an averaging, in the stationary regime of the rounds, divided by the slow SDE's
    SGD value m σ̄² η/(2B):

        [1 + (K − 1)(1 − G_H)] / (1 − ηh/2),   G_H = (1 − q^{2H}) / (H (1 − q²)),   q = 1 − ηh,

    (each worker's x is an AR(1) process with E‖x_s‖² = m v∞ [1 − (1 − 1/K) q^{2s}], v∞ = ησ²/(B_loc(2 − ηh))).
    As η → 0 with (H − 1)η = β it tends to ``drift_factor(K, βh)``; it needs 0 < ηh < 2 (a stable step)."""
    check_int("workers", workers, min=1)
    check_int("period", period, min=1)
    eta_h = check_number("eta_h", eta_h, min=0.0, min_open=True, max=2.0, max_open=True)
    q2 = (1.0 - eta_h) ** 2
    g = (1.0 - q2**period) / (period * (1.0 - q2))
    return (1.0 + (workers - 1) * (1.0 - g)) / (1.0 - eta_h / 2.0)


def periods(schedule: Schedule, sync: SyncSchedule | None) -> np.ndarray:
    """The period H in force at each step 0 … steps − 1 (shape (steps,)), decided as the simulator decides
    it (``SyncSchedule.begin`` / ``end_round``); all ones without a schedule (data parallel)."""
    steps = schedule.steps
    if sync is None:
        return np.ones(steps, dtype=np.int64)
    out = np.empty(steps, dtype=np.int64)
    state = SyncSchedule.init_state()
    for k in range(steps):
        state, averaging = sync.begin(state, k, schedule(k), steps)
        out[k] = state["period"]
        if averaging:
            state = SyncSchedule.end_round(state)
    return out


def _why_not(oracle: Any, algorithm: Algorithm) -> str | None:
    """Why the valley's slow SDE does not apply to this series (None: it does)."""
    from compsde.compressors.sparsifiers import Identity
    from compsde.objectives.oracle import Oracle
    from compsde.objectives.problems import SharpnessValley

    if not isinstance(oracle, Oracle) or not isinstance(oracle.problem, SharpnessValley):
        return "the closed-form slow SDE is that of the sharpness-valley problem"
    if not isinstance(algorithm.compressor, Identity) or algorithm.aggregation != "mean" or algorithm.error_feedback:
        return "the slow SDE is that of uncompressed SGD / Local SGD (mean of the workers, identity compressor)"
    if algorithm.worker.names or algorithm.server.names or algorithm.probe or algorithm.outer_lr != 1.0:
        return "the slow SDE is that of plain SGD steps and plain averaging (no transforms, outer lr 1)"
    if oracle.noise.active and math.isinf(oracle.noise.variance()):
        return f"the slow SDE needs finite noise variance ({oracle.noise.name} with ν = {oracle.noise.nu} has none)"
    return None


def predicts(oracle: Any, algorithm: Algorithm) -> bool:
    """Whether ``valley_prediction`` applies: SGD (data parallel) or plain Local SGD on ``sharpness-valley``
    with finite-variance noise."""
    return _why_not(oracle, algorithm) is None


def valley_prediction(oracle: Any, algorithm: Algorithm, schedule: Schedule) -> dict[str, np.ndarray]:
    """The slow SDE's y and sharpness h(y) at every step 0 … steps (arrays of shape (steps + 1,)), and the
    slow time t_k = Σ_{j<k} η_j², for DSGD or Local SGD (``algorithm.sync``: every step, constant, QSR of
    any power, post-local) on ``sharpness-valley`` (module doc). ValueError naming the reason otherwise."""
    why = _why_not(oracle, algorithm)
    if why is not None:
        raise ValueError(why)
    problem = oracle.problem
    k_workers, m = oracle.workers, problem.normal_dim
    var = float((oracle.noise.worker_scales(k_workers) ** 2).mean()) * oracle.noise.variance() if oracle.noise.active else 0.0
    c = m * var / (4.0 * k_workers * oracle.batch)
    hs = periods(schedule, algorithm.sync)
    steps = schedule.steps
    y = np.empty(steps + 1)
    t = np.zeros(steps + 1)
    y[0] = float(problem.projection(problem.x0().double()))
    for k in range(steps):
        eta = schedule(k)
        h = problem.h0 * math.exp(y[k])
        f = drift_factor(k_workers, (int(hs[k]) - 1) * eta * h) if k_workers > 1 else 1.0
        y[k + 1] = y[k] - eta * eta * c * f * h
        t[k + 1] = t[k] + eta * eta
    return {"y": y, "sharpness": problem.h0 * np.exp(y), "time": t}
