"""Solves of the SDE models of ``compsde.sde``, batched over M paths, on four separate axes (as in diffrax):

* the equation: an ``SDEModel`` (``compsde.sde.models``), a pure function ``evaluate(t, z, xi, args)``;
* the noise source: the law of the standardised increments ξ (``compsde.sde.noise``: Gaussian, Rademacher);
* the solver: how one step is taken (``EulerMaruyama``), declaring its weak and strong orders and the model
  noise types it supports as data;
* the events: what happens at each optimizer-step boundary (``compsde.sde.events``: communication, the
  divergence rule, a local method's averaging).

Euler–Maruyama for dX = −m(X) dt + sqrt(η) S(X)^{1/2} dW with step dt ≤ η:

    X_{n+1} = X_n − m(X_n) dt + sqrt(η dt) S(X_n)^{1/2} ξ_n

(docs/theory.md §2.2: with dt = η one step has the mean and covariance of one optimizer step; for dt < η
the noise factor is sqrt(η dt), not sqrt(dt) or sqrt(η)). Weak order 1, strong order ½ (with Brownian
increments: a weak-only noise source such as Rademacher increments keeps the weak order and has no strong
order).

Pairing a solver with a model whose noise type it does not support, or a weak-only noise source with a
solve that compares paths (``pathwise=True``), raises ValueError before anything is integrated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from compsde.core.checks import check_int, check_number, describe
from compsde.sde.events import Event
from compsde.sde.models import NOISE_TYPES, SDEModel, StepArgs
from compsde.sde.noise import GaussianIncrements, NoiseSource

__all__ = ["EulerMaruyama", "Solver", "check_solve", "integrate", "integrate_schedule"]

#: the default noise source: Brownian increments
_BROWNIAN = GaussianIncrements()


class Solver:
    """Base class of a one-step method. Declares ``weak_order`` and ``strong_order`` (with Brownian
    increments) and ``noise_types``, the model noise types (``compsde.sde.models.NOISE_TYPES``) it supports."""

    weak_order: ClassVar[float]
    strong_order: ClassVar[float]
    noise_types: ClassVar[frozenset[str]]

    def step(self, model: SDEModel, t: float, z: Tensor, xi: Tensor, args: StepArgs) -> None:
        """Advance the states z (M, state_dim) in place by one step ``args.dt`` from time t, with the
        increments ξ (M, noise_dim) the solve drew for it."""
        raise NotImplementedError


@dataclass(frozen=True)
class EulerMaruyama(Solver):
    """The Euler–Maruyama solver (see module doc): z ← z − m dt + sqrt(η dt) S^{1/2} ξ. It needs nothing of
    S but its product with ξ, so it takes every noise type."""

    weak_order: ClassVar[float] = 1.0
    strong_order: ClassVar[float] = 0.5
    noise_types: ClassVar[frozenset[str]] = frozenset(NOISE_TYPES)

    def step(self, model: SDEModel, t: float, z: Tensor, xi: Tensor, args: StepArgs) -> None:
        m, s_xi = model.evaluate(t, z, xi, args)
        z.sub_(m, alpha=args.dt).add_(s_xi, alpha=math.sqrt(args.lr * args.dt))


def check_solve(model: SDEModel, solver: Solver, noise: NoiseSource, events: Sequence[Event] = (),
                pathwise: bool = False) -> tuple[Event, ...]:
    """Refuse a solve whose axes do not pair (as torchsde does when an SDE is handed to a solver): a model
    whose ``noise_type`` the solver does not support, a weak-only noise source for a ``pathwise`` solve
    (one that compares individual paths, so needs Brownian increments), or anything that is not a model,
    solver, noise source or list of events. Returns the events as a tuple."""
    if not isinstance(model, SDEModel):
        raise ValueError(f"model must be a compsde.sde.models.SDEModel, got {describe(model)}")
    if not isinstance(solver, Solver):
        raise ValueError(f"solver must be a compsde.sde.integrators.Solver (e.g. EulerMaruyama()), got {describe(solver)}")
    if not isinstance(noise, NoiseSource):
        raise ValueError("noise must be a compsde.sde.noise.NoiseSource (GaussianIncrements(), "
                         f"RademacherIncrements()), got {describe(noise)}")
    if model.noise_type not in solver.noise_types:
        raise ValueError(f"{type(solver).__name__} does not support the noise type {model.noise_type!r} of "
                         f"{type(model).__name__}; it supports {', '.join(sorted(solver.noise_types))}")
    if pathwise and noise.weak_only:
        raise ValueError(f"{type(noise).__name__} matches the increments' moments, not Brownian paths (weak "
                         "only): a pathwise solve needs GaussianIncrements()")
    events = tuple(events)
    for i, ev in enumerate(events):
        if not callable(ev):
            raise ValueError(f"events[{i}] must be an event, called as event(k, z, args) -> z, got {describe(ev)}")
    return events


def integrate(
    model: SDEModel,
    x0: Tensor,
    *,
    t1: float,
    dt: float,
    generator: torch.Generator,
    solver: Solver = EulerMaruyama(),
    noise: NoiseSource = _BROWNIAN,
    pathwise: bool = False,
    observe: Callable[[int, Tensor], None] | None = None,
    observe_every: int = 1,
) -> Tensor:
    """Integrate ``model`` (constant η = ``model.eta``) from X_0 = ``x0`` (M, d) to time ``t1`` with step ``dt``.

    ``dt`` must not exceed η (the SDE is a model of steps of size η) and ``t1/dt`` must be a whole
    number of steps. ``observe(n, x)`` is called at step n = 0, observe_every, …, and at the last
    step, with the current paths (do not keep ``x``: it is updated in place). Returns X_{t1}.
    """
    check_solve(model, solver, noise, (), pathwise)
    eta = model.eta
    check_number("t1", t1, min=0.0)
    check_number("dt", dt, min=0.0, min_open=True)
    if not dt <= eta * (1 + 1e-12):
        raise ValueError(f"dt must be in (0, η = {eta}], got dt = {dt}")
    n_steps = round(t1 / dt)
    if abs(n_steps * dt - t1) > 1e-9 * max(1.0, abs(t1)):
        raise ValueError(f"t1 / dt must be a whole number of steps ≥ 0, got t1 = {t1}, dt = {dt}")
    check_int("t1 / dt (integrator steps)", n_steps, min=0)
    return _solve(model, x0, n_steps, lambda n: (dt, eta), generator, solver, noise, (), 1, observe, observe_every)


def integrate_schedule(
    model: SDEModel,
    x0: Tensor,
    *,
    lr: Callable[[int], float],
    steps: int,
    substeps: int = 1,
    generator: torch.Generator,
    solver: Solver = EulerMaruyama(),
    noise: NoiseSource = _BROWNIAN,
    events: Sequence[Event] = (),
    pathwise: bool = False,
    observe: Callable[[int, Tensor], None] | None = None,
    observe_every: int = 1,
) -> Tensor:
    """Integrate over the SDE time of ``steps`` optimizer steps with learning rates η_k = ``lr(k)``.

    Optimizer step k covers SDE time η_k and is integrated in ``substeps`` steps dt = η_k/substeps with
    noise factor sqrt(η_k dt) (docs/theory.md §2.2 with a time-varying η). After step k's substeps the
    ``events`` are called in order, z = event(k + 1, z, args) (``compsde.sde.events``); then
    ``observe(k + 1, z)`` if k + 1 is a multiple of ``observe_every`` or the last step (and ``observe(0, z)``
    before the first), so the paths can be compared with the optimizer's iterates x_k step for step.
    """
    check_int("substeps", substeps, min=1)
    check_int("steps", steps, min=0)
    evs = check_solve(model, solver, noise, events, pathwise)

    def step_sizes(n: int) -> tuple[float, float]:
        eta = lr(n // substeps)
        return eta / substeps, eta

    return _solve(model, x0, steps * substeps, step_sizes, generator, solver, noise, evs, substeps, observe,
                  observe_every)


def _solve(model: SDEModel, x0: Tensor, n_steps: int, step_sizes: Callable[[int], tuple[float, float]],
           generator: torch.Generator, solver: Solver, noise: NoiseSource, events: tuple[Event, ...],
           per_boundary: int, observe: Callable[[int, Tensor], None] | None, observe_every: int) -> Tensor:
    """``n_steps`` solver steps with (dt, η) = step_sizes(n), each with fresh increments ξ from ``noise``
    (none for a model without diffusion); every ``per_boundary`` steps an optimizer-step boundary: the
    events, then ``observe`` (whose step counts are in boundaries).

    ``x0`` is (M, d), or (M, state_dim) for a model with an augmented state (``model.initial`` adds
    it otherwise); ``observe`` sees the whole state (``model.params`` gives x).
    """
    if x0.dim() != 2 or x0.shape[1] not in (model.dim, model.state_dim):
        raise ValueError(f"x0 must have shape (M, d = {model.dim})" + (f" or (M, {model.state_dim}) (the model's state)"
                         if model.state_dim != model.dim else "") + f", got {tuple(x0.shape)}")
    z = model.initial(x0) if x0.shape[1] != model.state_dim else x0.clone()
    xi = torch.empty(z.shape[0], model.noise_dim, dtype=z.dtype, device=z.device)
    deterministic = model.noise_type == "none"
    every = observe_every * per_boundary
    if observe is not None:
        observe(0, z)
    t = 0.0
    args: StepArgs | None = None
    for n in range(n_steps):
        dt, eta = step_sizes(n)
        if args is None or (args.dt, args.lr) != (dt, eta):
            args = StepArgs(eta, dt, generator)
        if deterministic:
            xi.zero_()
        else:
            noise.draw(xi, generator)
        solver.step(model, t, z, xi, args)
        t += dt
        if (n + 1) % per_boundary == 0:
            for event in events:
                z = event((n + 1) // per_boundary, z, args)
        if observe is not None and ((n + 1) % every == 0 or n + 1 == n_steps):
            observe((n + 1) // per_boundary, z)
    return z
