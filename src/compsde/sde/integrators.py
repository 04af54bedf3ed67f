"""Integrators for the SDE models of ``compsde.sde``, batched over M paths.

Euler–Maruyama for dX = −m(X) dt + sqrt(η) S(X)^{1/2} dW with step dt ≤ η:

    X_{n+1} = X_n − m(X_n) dt + sqrt(η dt) S(X_n)^{1/2} ξ_n,    ξ_n ~ N(0, I)

(docs/theory.md §2: with dt = η one step has the mean and covariance of one optimizer step; for dt < η
the noise factor is sqrt(η dt), not sqrt(dt) or sqrt(η)). Weak order 1, strong order ½.

``increments="rademacher"`` draws ξ with independent ±1 entries instead (the simplified weak Euler
scheme of Kloeden & Platen, §14.1): the first three moments match the Gaussian's, so the weak order
stays 1, while each draw costs one random bit instead of a Gaussian; pathwise (strong) convergence is
lost, which tracking E φ(X_t) does not need.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from compsde.core.checks import check_choice, check_int, check_number
from compsde.sde.models import SDEModel

INCREMENTS = ("gaussian", "rademacher")


_LITTLE_ENDIAN = sys.byteorder == "little"


@functools.lru_cache(maxsize=8)
def _byte_signs(dtype: torch.dtype) -> Tensor:
    """(256, 8) table: row b holds the 8 bits of byte b as ±1 (bit 0 first)."""
    bits = (torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1
    return (2 * bits - 1).to(dtype)


def rademacher_(out: Tensor, generator: torch.Generator) -> Tensor:
    """Fill ``out`` with independent ±1 entries: one random bit each, 56 per int64 drawn from ``generator``.

    ``random_()`` on int64 is uniform on [0, 2⁶³), so its top bit is always 0: only the 7 low bytes of
    each word are used (little-endian view). They are expanded through a 256 × 8 table (one gather),
    (``index_select``, several times cheaper than drawing one Gaussian per entry).
    """
    n = out.numel()
    nbytes = (n + 7) // 8
    words = torch.empty((nbytes + 6) // 7, dtype=torch.int64).random_(generator=generator)
    raw = words.view(torch.uint8).view(-1, 8)
    low = (raw[:, :7] if _LITTLE_ENDIAN else raw[:, 1:]).reshape(-1)[:nbytes].int()
    table = _byte_signs(out.dtype)
    if n % 8 == 0 and out.is_contiguous():
        torch.index_select(table, 0, low, out=out.view(-1, 8))
    else:
        out.copy_(torch.index_select(table, 0, low).view(-1)[:n].view(out.shape))
    return out


@dataclass(frozen=True)
class EulerMaruyama:
    """The Euler–Maruyama solver (see module doc). ``increments``: "gaussian" or "rademacher"."""

    increments: str = "gaussian"
    weak_order: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        check_choice("increments", self.increments, INCREMENTS)

    @property
    def strong_order(self) -> float | None:
        """½ with Gaussian increments; None (no pathwise convergence) with Rademacher ones."""
        return 0.5 if self.increments == "gaussian" else None

    def draw(self, out: Tensor, generator: torch.Generator) -> Tensor:
        """Fill ``out`` with this step's standardised increments ξ (drawn on the generator's device and
        copied to ``out``'s, so a CUDA integration draws a CPU integration's numbers)."""
        if out.device != generator.device:
            return out.copy_(self.draw(torch.empty(out.shape, dtype=out.dtype, device=generator.device), generator))
        return out.normal_(generator=generator) if self.increments == "gaussian" else rademacher_(out, generator)


def integrate(
    model: SDEModel,
    x0: Tensor,
    *,
    t1: float,
    dt: float,
    generator: torch.Generator,
    solver: EulerMaruyama = EulerMaruyama(),
    observe: Callable[[int, Tensor], None] | None = None,
    observe_every: int = 1,
) -> Tensor:
    """Integrate ``model`` (constant η = ``model.eta``) from X_0 = ``x0`` (M, d) to time ``t1`` with step ``dt``.

    ``dt`` must not exceed η (the SDE is a model of steps of size η) and ``t1/dt`` must be a whole
    number of steps. ``observe(n, x)`` is called at step n = 0, observe_every, …, and at the last
    step, with the current paths (do not keep ``x``: it is updated in place). Returns X_{t1}.
    """
    eta = model.eta
    check_number("t1", t1, min=0.0)
    check_number("dt", dt, min=0.0, min_open=True)
    if not dt <= eta * (1 + 1e-12):
        raise ValueError(f"dt must be in (0, η = {eta}], got dt = {dt}")
    n_steps = round(t1 / dt)
    if abs(n_steps * dt - t1) > 1e-9 * max(1.0, abs(t1)):
        raise ValueError(f"t1 / dt must be a whole number of steps ≥ 0, got t1 = {t1}, dt = {dt}")
    check_int("t1 / dt (integrator steps)", n_steps, min=0)
    return _euler_loop(model, x0, n_steps, lambda n: (dt, eta), generator, solver, observe, observe_every, 1)


def integrate_schedule(
    model: SDEModel,
    x0: Tensor,
    *,
    lr: Callable[[int], float],
    steps: int,
    substeps: int = 1,
    generator: torch.Generator,
    solver: EulerMaruyama = EulerMaruyama(),
    observe: Callable[[int, Tensor], None] | None = None,
    observe_every: int = 1,
) -> Tensor:
    """Integrate over the SDE time of ``steps`` optimizer steps with learning rates η_k = ``lr(k)``.

    Optimizer step k covers SDE time η_k and is integrated in ``substeps`` steps dt = η_k/substeps with
    noise factor sqrt(η_k dt) (docs/theory.md §2 with a time-varying η). ``observe(k, x)`` is called at
    optimizer steps k = 0, observe_every, …, and ``steps``, so the paths can be compared with the
    optimizer's iterates x_k step for step; it may modify ``x`` in place (e.g. to freeze paths that
    diverged).
    """
    check_int("substeps", substeps, min=1)
    check_int("steps", steps, min=0)

    def step_sizes(n: int) -> tuple[float, float]:
        eta = lr(n // substeps)
        return eta / substeps, eta

    return _euler_loop(model, x0, steps * substeps, step_sizes, generator, solver, observe, observe_every, substeps)


def _euler_loop(model: SDEModel, x0: Tensor, n_steps: int, step_sizes: Callable[[int], tuple[float, float]],
                generator: torch.Generator, solver: EulerMaruyama, observe: Callable[[int, Tensor], None] | None,
                observe_every: int, per_observed: int) -> Tensor:
    """X ← X − m dt + sqrt(η dt) S^{1/2} ξ for n_steps steps; (dt, η) = step_sizes(n).

    ``x0`` is (M, d), or (M, state_dim) for a model with an augmented state (``model.initial`` adds
    it otherwise); ``observe`` sees the whole state (``model.params`` gives x) and step counts in
    units of ``per_observed`` integrator steps. ``model.lr`` and ``model.dt`` are set to the current η
    and dt before each step.
    """
    if x0.dim() != 2 or x0.shape[1] not in (model.dim, model.state_dim):
        raise ValueError(f"x0 must have shape (M, d = {model.dim})" + (f" or (M, {model.state_dim}) (the model's state)"
                         if model.state_dim != model.dim else "") + f", got {tuple(x0.shape)}")
    x = model.initial(x0) if x0.shape[1] != model.state_dim else x0.clone()
    xi = torch.empty(x.shape[0], model.noise_dim, dtype=x.dtype, device=x.device)
    deterministic = model.noise_type == "none"
    every = observe_every * per_observed
    if observe is not None:
        observe(0, x)
    for n in range(n_steps):
        dt, eta = step_sizes(n)
        model.lr, model.dt = eta, dt
        if deterministic:
            xi.zero_()
        else:
            solver.draw(xi, generator)
        m, s_xi = model.evaluate(x, xi, generator)
        x.sub_(m, alpha=dt).add_(s_xi, alpha=math.sqrt(eta * dt))
        if observe is not None and ((n + 1) % every == 0 or n + 1 == n_steps):
            observe((n + 1) // per_observed, x)
    return x
