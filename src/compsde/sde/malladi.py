"""Malladi, Lyu, Panigrahi & Arora's SDEs of RMSprop and Adam (NeurIPS 2022), as alternative models.

The library's own SDEs of RMSprop and Adam (``compsde.sde.models.AdaptiveSDE``, docs/theory.md §9.3) are
those of the seed paper (Compagnoni et al.). Malladi et al. derived earlier ones in a *noise-dominated*
scaling: the gradient noise grows as the learning rate shrinks, σ ~ 1/η. These models integrate
Malladi et al.'s equations on the library's time axis and noise convention, so that ``compsde track``
lays them over the same optimizer runs (docs/theory.md §9.10). In their notation (the stochastic gradient
is ∇f(θ) + σz with Cov z = Σ(θ); [recalled]: the paper's Definitions 4.1 and 4.4, Theorems 4.2 and 4.5,
not checked against its full text), with

    σ₀ = ση,  ε₀ = εη,  c_i = (1 − β_i)/η²,  time t = kη²,  γ_i(t) = 1 − exp(−c_i t):

* RMSprop, state (θ, u):
      dθ = −P⁻¹(∇f dt + σ₀ Σ^{1/2} dW),   du = c₂(diag Σ − u) dt,   P = σ₀ diag(u)^{1/2} + ε₀ I
* Adam, state (θ, m, u):
      dθ = −(√γ₂(t)/γ₁(t)) P⁻¹ m dt,   dm = c₁(∇f − m) dt + σ₀ c₁ Σ^{1/2} dW,   du = c₂(diag Σ − u) dt,
      P = σ₀ diag(u)^{1/2} + ε₀ √γ₂(t) I

(u = v/σ² is the second moment v of the optimizer divided by σ²; P⁻¹ per unit of their time is the
step η²/(η(√v + ε)) of the optimizer written with σ₀ and ε₀.)

**Mapping to the library** [derived, docs/theory.md §9.10]. The pair (σ, Σ) enters only as σ²Σ, the
covariance of one step's gradient noise: under σ → κσ, Σ → Σ/κ², u → u/κ² the SDE is unchanged. The
models take σ = 1 and Σ = Σ̄ (the library's noise of the averaged gradient: per-sample covariance over
the batch B and the N² of the workers' mean, §2.4, §9.1), so u = v, σ₀ = η, ε₀ = εη. Their time t = kη²
is the library's s = kη times η, and W_t = √η W'_s in law, so with X(s) = their solution at t = ηs:

    library drift m = η × (their drift),    library S^{1/2} = their diffusion (the √η is the library's),

which the code applies to each block. In library units the RMSprop model is dx = −∇f/(√u + ε) ds −
√η diag(1/(√u + ε)) Σ̄^{1/2} dW, du = ρ₂(diag Σ̄ − u) ds with ρ₂ = (1 − β₂)/η: the library's own model
(§9.3) except that u relaxes to diag Σ̄ instead of E ḡ² = ∇f² + diag Σ̄ — Malladi et al. drop ∇f², which
is O(η²) against σ² diag Σ in their scaling. Adam's differs in the same term, in the bias corrections
(γ_i(t) = 1 − exp(−(1 − β_i)k) against the optimizer's 1 − β_iᵏ) and in x's noise (none: the library
keeps the (1 − β₁)-sized noise x receives through m', §9.3). Where the noise dominates the gradient,
the two agree; where the gradient dominates it, u underestimates E ḡ² and x steps too far.

**Discretisation** [library]. P⁻¹ at u = 0 is 1/ε₀ and √γ₂/γ₁ is singular at t = 0, both finite
integrable singularities of the SDE (u grows like c₂t diag Σ) that an explicit Euler step evaluates at
their worst: x's drift is evaluated at the deterministic part of the moments and at γ at the *end* of
the solver's step (u + c₂ dt(diag Σ − u), m + c₁ dt(∇f − m), γ(t + dt); dt in their time), a
semi-implicit Euler step of the same SDE, consistent to first order; with dt = η (one solver step per
optimizer step) the moments' updates are the optimizer's own EMAs.

The models describe RMSprop(W) and Adam(W) as their recipes build them with no weight decay (the paper's
SDEs have none) and a constant learning rate (σ₀ and c_i fix η), with gradient noise (σ₀ > 0: without it
P = ε₀ and the regime does not exist); anything else is refused (``check_applies``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from compsde.algorithms import Algorithm
from compsde.core.checks import describe
from compsde.objectives.oracle import GradientOracle
from compsde.sde.models import SDEModel, StepArgs

__all__ = ["MALLADI_METHODS", "MalladiAdamSDE", "MalladiRMSpropSDE", "PaperConstants", "check_applies", "make"]

#: The methods Malladi et al.'s SDEs describe (with no weight decay, so the W variants are the same optimizers).
MALLADI_METHODS = ("rmsprop", "rmspropw", "adam", "adamw")


def check_applies(method: str, hyper: Mapping[str, Any], schedule: str = "constant", where: str = "sde") -> None:
    """Refuse, with a ValueError naming ``where`` and the reason, a method, hyperparameters (the recipe's
    defaults filled in) or learning-rate schedule that Malladi et al.'s SDEs do not describe."""
    if method not in MALLADI_METHODS:
        raise ValueError(f"{where} = 'malladi': Malladi et al.'s SDEs describe {', '.join(MALLADI_METHODS)}, "
                         f"not method {describe(method)}; use sde = 'compsde' (the default) for it")
    lam = hyper.get("weight_decay", 0.0)
    if lam:
        raise ValueError(f"{where} = 'malladi' needs weight_decay = 0 (got {describe(lam)} for {method!r}, whose "
                         "recipe's default it may be): Malladi et al.'s SDEs of RMSprop and Adam have no weight decay")
    if schedule != "constant":
        raise ValueError(f"{where} = 'malladi' needs a constant learning rate (got schedule {describe(schedule)}): "
                         "Malladi et al.'s SDEs fix η in σ₀ = ση and c_i = (1 − β_i)/η²")


class PaperConstants:
    """The constants of Malladi et al.'s scaling at learning rate η with the split σ = 1, Σ = Σ̄ (module
    doc): σ₀ = η, ε₀ = εη, c_i = (1 − β_i)/η², and the conversions of time t (theirs) ↔ s (the library's)."""

    def __init__(self, eta: float, eps: float, beta1: float | None, beta2: float) -> None:
        self.eta = eta
        self.sigma0 = eta
        self.eps0 = eps * eta
        self.c1 = None if beta1 is None else (1.0 - beta1) / eta**2
        self.c2 = (1.0 - beta2) / eta**2

    def time(self, s: float) -> float:
        """Their time t = ηs = kη² at the library's SDE time s = kη."""
        return self.eta * s

    def gamma(self, c: float, t: float) -> float:
        """γ(t) = 1 − exp(−c t): Adam's bias correction in continuous time."""
        return -math.expm1(-c * t)


class _MalladiSDE(SDEModel):
    """Shared parts: the checks, the constants at the step's η, the state (x, [m,] u) from zero moments."""

    noise_type = "diagonal"
    first_moment: ClassVar[bool] = False

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)
        opt = algorithm.optimizer
        if opt is None or not opt.built(algorithm):
            raise ValueError(f"sde = 'malladi' describes {', '.join(MALLADI_METHODS)} as their recipes build them, "
                             f"not {algorithm.label()}")
        check_applies(opt.name, algorithm.hyper)
        if (opt.name in ("adam", "adamw")) != self.first_moment:
            raise ValueError(f"{type(self).__name__} is the SDE of "
                             f"{'Adam' if self.first_moment else 'RMSprop'}, not of {opt.name!r}")
        if float(oracle.noise_variances().sum()) == 0.0 and not self.rank:
            raise ValueError("sde = 'malladi' needs gradient noise (σ₀ > 0): Malladi et al.'s preconditioner "
                             "σ₀ diag(u)^{1/2} + ε₀ tracks the noise's variance, and without noise it is ε₀ alone")
        h = algorithm.hyper
        self.b1, self.b2, self.eps = h.get("beta1"), h["beta2"], h["eps"]
        self.state_dim = (3 if self.first_moment else 2) * self.dim
        what = "Adam" if self.first_moment else "RMSprop"
        self.description = (f"{algorithm.name} SDE of Malladi et al. 2022 (state (x, {'m, ' if self.first_moment else ''}u), "
                            f"σ₀ = ση, c = (1 − β)/η², time kη² mapped to kη): u relaxes to diag Σ (not ∇f² + diag Σ)"
                            + (", bias corrections 1 − exp(−c t), no noise on x" if self.first_moment else "")
                            + f"; {what} in the noise-dominated regime σ ~ 1/η")

    def constants(self, lr: float) -> PaperConstants:
        """The paper's constants at the step's learning rate."""
        return PaperConstants(lr, self.eps, self.b1, self.b2)

    def initial(self, x0: Tensor) -> Tensor:
        return torch.cat([x0, torch.zeros(x0.shape[0], self.state_dim - self.dim, dtype=x0.dtype, device=x0.device)], 1)


class MalladiRMSpropSDE(_MalladiSDE):
    """Malladi et al.'s RMSprop SDE (module doc), state (x, u), in the library's units."""

    def evaluate(self, t: float, z: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        d, pc = self.dim, self.constants(args.lr)
        dt = pc.time(args.dt)  # the solver's step in their time
        x, u = z[:, :d], z[:, d:]
        g = self.oracle_as(x).mean_grads(x).mean(0)
        diag, noise = self.averaged_noise(x, xi)  # diag Σ, Σ^{1/2} ξ (σ = 1)
        u_end = u + (pc.c2 * dt) * (diag - u)  # u at the end of the step (deterministic: u is an ODE)
        p = u_end.clamp_min(0).sqrt().mul_(pc.sigma0).add_(pc.eps0)  # P = σ₀ diag(u)^{1/2} + ε₀
        out = torch.empty_like(z)
        torch.div(g, p, out=out[:, :d]).mul_(pc.eta)  # their drift P⁻¹∇f, times η (library time)
        torch.mul(u - diag, pc.c2 * pc.eta, out=out[:, d:])  # −c₂(diag Σ − u), times η
        s_xi = torch.zeros_like(z)
        torch.div(noise, p, out=s_xi[:, :d]).mul_(pc.sigma0)  # σ₀ P⁻¹ Σ^{1/2} ξ (the √η is the library's)
        return out, s_xi


class MalladiAdamSDE(_MalladiSDE):
    """Malladi et al.'s Adam SDE (module doc), state (x, m, u), in the library's units."""

    first_moment = True

    def evaluate(self, t: float, z: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        d, pc = self.dim, self.constants(args.lr)
        assert pc.c1 is not None  # Adam has β₁
        dt, t_end = pc.time(args.dt), pc.time(t + args.dt)
        x, m, u = z[:, :d], z[:, d: 2 * d], z[:, 2 * d:]
        g = self.oracle_as(x).mean_grads(x).mean(0)
        diag, noise = self.averaged_noise(x, xi)
        g1, g2 = pc.gamma(pc.c1, t_end), pc.gamma(pc.c2, t_end)
        m_end = m + (pc.c1 * dt) * (g - m)  # the moments' deterministic part at the end of the step
        u_end = u + (pc.c2 * dt) * (diag - u)
        p = u_end.clamp_min(0).sqrt().mul_(pc.sigma0).add_(pc.eps0 * math.sqrt(g2))  # σ₀ diag(u)^{1/2} + ε₀√γ₂
        out = torch.empty_like(z)
        torch.div(m_end, p, out=out[:, :d]).mul_(pc.eta * math.sqrt(g2) / g1)  # (√γ₂/γ₁) P⁻¹ m, times η
        torch.sub(m, g, out=out[:, d: 2 * d]).mul_(pc.c1 * pc.eta)  # −c₁(∇f − m), times η
        torch.mul(u - diag, pc.c2 * pc.eta, out=out[:, 2 * d:])
        s_xi = torch.zeros_like(z)
        torch.mul(noise, pc.sigma0 * pc.c1, out=s_xi[:, d: 2 * d])  # σ₀ c₁ Σ^{1/2} ξ; x has no noise
        return out, s_xi


def make(oracle: GradientOracle, algorithm: Algorithm, lr: float) -> SDEModel:
    """Malladi et al.'s SDE of ``algorithm`` (RMSprop or Adam as their recipes build them, see
    ``check_applies``) at learning rate ``lr``."""
    if not isinstance(oracle, GradientOracle):
        raise ValueError(f"oracle must be a compsde.objectives.Oracle or NetworkOracle, got {describe(oracle)}")
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be a compsde Algorithm, got {describe(algorithm)}")
    opt = algorithm.optimizer
    cls = MalladiAdamSDE if opt is not None and opt.name in ("adam", "adamw") else MalladiRMSpropSDE
    return cls(oracle, algorithm, lr)
