"""SDE models of the distributed algorithms, built by the first-order recipe (docs/theory.md §2).

For an update x_{k+1} = x_k − η U(x_k, ζ_k) with mean m(x) = E U and covariance S(x) = Cov U, the
order-1 weak approximation is the Itô SDE

    dX_t = −m(X_t) dt + sqrt(η S(X_t)) dW_t,    t = kη.

A model is the equation, one axis of a solve (``compsde.sde.integrators``: the solver, the noise source
``compsde.sde.noise`` and the events at optimizer-step boundaries are the others). It is a pure function
``evaluate(t, x, xi, args)`` returning m(x) and S(x)^{1/2} ξ for a batch of points x (M, d) at SDE time t
and standardised increments ξ (M, noise_dim) supplied by the solve; ``args`` (``StepArgs``) carries what the
solve knows of the current step: the optimizer's learning rate η_k, the integrator's step dt and the
generator (Monte Carlo models). Nothing of the model changes during a solve. A model talks to the gradient
oracle only (``compsde.objectives.GradientOracle``: the workers' exact gradients and the law of their noise).

Networks (``compsde.objectives.NetworkOracle``): E g_i is the full-batch gradient of worker i's shard and
the minibatch noise has the covariance F_iᵀ F_i of its centred per-sample gradients (``noise_factors``,
n × d per worker, low rank), on top of any injected isotropic noise. The closed forms below then gain
the terms of F: S^{1/2} ξ adds Σ_i F_iᵀ ζ_i/N (DSGD; √(1 − c) times that for Rand-k, whose diagonal also
gains (ω + c) diag(F_iᵀ F_i)), with ζ ∈ ℝ^{N n} the extra noise dimensions — a Gaussian with exactly
the added covariance, never a d × d matrix. DSignSGD takes each coordinate's minibatch noise as
Gaussian (central limit) in its sign probability.

Closed forms (g_i = ∇f_i(x), noise σ_i T/√B with Var T = v, N workers):

* DSGD:   m = (1/N) Σ g_i,  S = (1/N²) Σ_i σ_i² v / B · I                                   (diagonal)
* DCSGD, scaled Rand-k (ω = d/k − 1, c = (d − k)/(k(d − 1))), independent draws per worker:
          m = (1/N) Σ g_i,
          S = (1/N²) Σ_i [σ_i² v/B · I + ω diag(g_i² + σ_i² v/B) + c diag(g_i²) − c g_i g_iᵀ]
            = diag(D) − U Uᵀ with U = (√c / N) [g_1 … g_N]                        (diagonal − low rank)
* DSignSGD (mean of signs): E sign(g_ij + σ_i T/√B) = 2F(√B g_ij/σ_i) − 1 =: s_ij
          m = (1/N) Σ_i s_i,  S = (1/N²) Σ_i diag(1 − s_i²)                                  (diagonal)
  with F the CDF of T: erf for Gaussian noise, 2F_ν − 1 for Student-t, so m and S stay bounded for
  every ν, Cauchy included (Compagnoni et al. 2025; docs/theory.md §2.7).

The single-node optimizers (docs/theory.md §9), stepping on the workers' mean gradient ḡ with noise
covariance Σ̄ = (1/N²) Σ_i Σ_i:

* SignSGD (``SignSGDSDE``): m = E sign(ḡ), S = diag(1 − m²)
* RMSprop(W), Adam(W) (``AdaptiveSDE``): an SDE of the augmented state (x, m, v, bias corrections)
* USAM, SGDA, SEG, SHGD (``ProbeSDE``): U = L g with L = I + ρH, I, I − ρJ, Jᵀ; the games' drift
  carries the modified equation's second-order term

Any other memoryless algorithm (another compressor, majority vote, normalised steps, SAM):
``MonteCarloSDE`` estimates m and S at the current point from K samples of the algorithm's own update,
and says so in its description. DSGD/DCSGD need finite noise variance: for Student-t with ν ≤ 2 their
SDE does not exist (S is infinite), which is exactly why they break under heavy tails; building one
raises an error. Other algorithms that carry state from step to step (error feedback, momentum) have
no SDE of this form.

A model whose state is more than x (``state_dim`` > d) gives ``initial(x0)`` and ``params(z)``.

``noise_type`` says how S^{1/2} ξ is formed, for the solvers to declare which they support (``NOISE_TYPES``):
"none" (no diffusion), "diagonal" (each coordinate driven by the noise coordinate of its own index, scaled),
"diagonal-lowrank" (diag(D) − UUᵀ, or a diagonal plus a low-rank factor), "general" (a linear map of ξ that
mixes coordinates, applied by the model), "sampled" (a Monte Carlo estimate, fresh at every evaluation) and
"block-diagonal" (blocks of the state driven by disjoint blocks of ξ: a local method's workers, ``sde.local``).

A model also gives the ``events`` of the method it describes at optimizer-step boundaries (by default one
communication per step, recorded on a ``compsde.sim.exchange.CommLog``): a method that communicates at
boundaries only (Local SGD's averaging) is one model plus its averaging event (``compsde.sde.local``).

Which model an algorithm gets is decided by the registry ``MODELS``: each model class says which
algorithms it ``applies`` to, checked in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from compsde.algorithms import Algorithm
from compsde.compressors import Compressor
from compsde.compressors.blockwise import Blockwise
from compsde.compressors.signs import Sign
from compsde.compressors.sparsifiers import Identity, RandK
from compsde.core.checks import check_int, check_number, describe
from compsde.objectives.noise import gaussian_sign_mean
from compsde.objectives.oracle import GradientOracle, Oracle
from compsde.objectives.problems import Problem, jvp_by_vjp

if TYPE_CHECKING:
    from compsde.algorithms.schedules import Schedule
    from compsde.sde.events import Event
    from compsde.sim.exchange import CommLog

__all__ = ["AdaptiveSDE", "DSGDSDE", "DSignSGDSDE", "MODELS", "MonteCarloSDE", "NOISE_TYPES", "ProbeSDE", "RandKSDE",
           "SDEModel", "SignSGDSDE", "StepArgs", "from_algorithm"]

#: The ways a model forms S^{1/2} ξ (module doc); a solver declares the ones it supports.
NOISE_TYPES = ("none", "diagonal", "diagonal-lowrank", "general", "sampled", "block-diagonal")


@dataclass(frozen=True)
class StepArgs:
    """What a solve hands a model with each evaluation: ``lr`` the learning rate η_k of the optimizer step
    being integrated (the SDE's diffusion scale and the moments' time scale), ``dt`` the integrator's step
    (dt ≤ η_k; a model may correct its drift for the solver's error at that step), ``generator`` the solve's
    random stream (the Monte Carlo model samples updates from it; None where nothing is sampled)."""

    lr: float
    dt: float
    generator: torch.Generator | None = None


class SDEModel:
    """Base class: dX = −m(X) dt + sqrt(η) S(X)^{1/2} dW with W of dimension ``noise_dim``.

    Subclasses set ``noise_type`` (one of ``NOISE_TYPES``) and ``description``, and implement
    ``evaluate`` and ``applies``. ``eta`` is the learning rate the model was built for (its default η).
    """

    noise_type: str = "diagonal"
    description: str = ""

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        self.oracle, self.algorithm = oracle, algorithm
        self.eta = check_number("lr", eta, min=0.0, min_open=True)
        self.dim = oracle.dim
        self.workers = oracle.workers
        #: n per worker of the oracle's low-rank noise factors (networks), 0 for isotropic noise.
        self.rank = oracle.noise_rank
        self.noise_dim = self.dim + self.workers * self.rank

    @classmethod
    def applies(cls, algorithm: Algorithm) -> bool:
        """Whether this model is the SDE of ``algorithm`` by its structure (compressor, aggregation, no
        state): the ``MODELS`` registry. A named optimizer's own model is chosen by its recipe instead."""
        return False

    @property
    def state_dim(self) -> int:
        """The dimension of the SDE's state: d, or more for an augmented state (x, m, v, …) whose first d
        coordinates are x (``initial``, ``params``)."""
        return self.__dict__.get("_state_dim", self.dim)

    @state_dim.setter
    def state_dim(self, value: int) -> None:
        self._state_dim = value

    @classmethod
    def fits(cls, oracle: GradientOracle, algorithm: Algorithm) -> bool:
        """Whether the closed form holds for this oracle (else the next model of ``MODELS`` is tried)."""
        return True

    def initial(self, x0: Tensor) -> Tensor:
        """The SDE's initial state (M, state_dim) at the iterates x0 (M, d): x0 itself, or x0 with the
        optimizer's initial state (moments 0) appended."""
        return x0

    def params(self, z: Tensor) -> Tensor:
        """The iterates x (a view: M × d) of states z (M, state_dim)."""
        return z[:, : self.dim]

    def state_parts(self, z: Tensor) -> dict[str, Tensor]:
        """Views of the states z as the parts of an algorithm's state that ``Recorder.freeze`` resets on
        diverged paths: ``params`` (x, back to x⁰) and ``rest`` (an augmented state's other coordinates, to 0)."""
        return {"params": z[:, : self.dim], "rest": z[:, self.dim:]} if self.state_dim != self.dim else {"params": z}

    def output_buffers(self, z: Tensor, *, zero_drift: bool = False) -> tuple[Tensor, Tensor]:
        """The (drift, noise) outputs of ``evaluate`` for states like ``z``, reused from step to step while
        z's shape, dtype and device stay (a fresh state-sized tensor per step pays page faults). The noise
        is zeroed when made, and so is the drift with ``zero_drift``: blocks a model never writes stay 0.
        A cache on the model, not state of the solve."""
        key = (z.shape, z.dtype, z.device, zero_drift)
        if self.__dict__.get("_buf_key") != key:
            self._buf_key = key
            self._buf = (torch.zeros_like(z) if zero_drift else torch.empty_like(z), torch.zeros_like(z))
        return self._buf

    def evaluate(self, t: float, x: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        """Return (m(x), S(x)^{1/2} ξ), both of shape (M, state_dim), for states x (M, state_dim) at SDE
        time t, ξ (M, noise_dim) and the step's ``args`` (η_k, dt, generator).

        ``xi`` is this step's scratch draw: a model may scale it in place and return it (the
        integrator draws a fresh ξ every step), which saves one pass over (M, d). The returned tensors
        are valid until the next call (a model may reuse its output buffers; ``drift`` and
        ``covariance`` copy them).
        """
        raise NotImplementedError

    def step_args(self, lr: float | None = None, dt: float | None = None,
                  generator: torch.Generator | None = None) -> StepArgs:
        """``StepArgs`` for one evaluation outside a solve: η = ``lr`` (default the model's ``eta``), dt =
        ``dt`` (default η: one Euler step per optimizer step)."""
        lr = self.eta if lr is None else lr
        return StepArgs(lr, lr if dt is None else dt, generator)

    def _outside_args(self, args: object) -> StepArgs:
        """``args`` of an evaluation outside a solve: ``step_args()`` for None, else it must be ``StepArgs``."""
        if args is None:
            return self.step_args()
        if not isinstance(args, StepArgs):
            raise ValueError(f"args must be compsde.sde.models.StepArgs (e.g. model.step_args(generator=...)), got "
                             f"{describe(args)}")
        return args

    def events(self, log: CommLog, rows: int, dtype: torch.dtype, schedule: Schedule | None = None) -> list[Event]:
        """The method's own events at optimizer-step boundaries, for a solve that follows its optimizer run
        (learning rates ``schedule``: a local method's averaging times depend on them) with ``rows`` paths of
        ``dtype``: by default one communication per step, the algorithm's declared bits and the wire bytes
        per path one worker sends (as the simulator counts them), on ``log``."""
        from compsde.compressors.wire import wire_bytes
        from compsde.sde.events import Communication

        d = self.dim
        return [Communication(log, float(self.algorithm.bits(d)),
                              wire_bytes(self.algorithm.compressor, rows, d, dtype) / rows)]

    def path_bytes(self, itemsize: int) -> float:
        """Memory per path of an integration: the path and temporaries (~6 d), the noise draws, and an
        augmented state's extra coordinates (state, drift and noise)."""
        d = self.dim
        return float(itemsize) * d * (6 + (self.noise_dim + 3 * (self.state_dim - d)) / max(d, 1))

    def oracle_as(self, x: Tensor) -> GradientOracle:
        """The model's oracle with tensors of x's dtype and device (cast once and cached): float32 paths
        must not be promoted to float64 by float64 problem data on every step."""
        cache: dict[tuple[torch.dtype, torch.device], GradientOracle] = self.__dict__.setdefault("_cast", {})
        key = (x.dtype, x.device)
        if key not in cache:
            o = self.oracle
            cache[key] = o if (o.dtype, o.device) == key else o.to(x.dtype, x.device)
        return cache[key]

    def averaged_noise(self, x: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        """For the single-node optimizers, which step on the workers' mean gradient ḡ = (1/N) Σ g_i: the
        per-coordinate variance diag Σ̄ of its noise (M, d) and Σ̄^{1/2} ξ (M, d), from the isotropic
        variances and (networks) the low-rank factors, Σ̄ = (1/N²) Σ_i (σ_i² v/B I + F_iᵀF_i)."""
        o, n, d = self.oracle_as(x), self.workers, self.dim
        var = float(o.noise_variances().sum()) / n**2
        diag = torch.tensor(var, dtype=x.dtype, device=x.device)  # isotropic: one number, broadcast
        noise = xi[:, :d].mul_(math.sqrt(var))
        if self.rank:
            f = o.noise_factors(x)
            assert f is not None  # rank > 0: the oracle has factors
            diag = diag + f.square().sum(2).sum(0) / n**2
            noise = noise + _factor_noise(f, xi[:, d:], 1.0 / n)
        return diag, noise

    def drift(self, x: Tensor, args: StepArgs | None = None) -> Tensor:
        """m(x) (the SDE's drift is −m) at t = 0, with ``args`` (default ``step_args()``: η = ``eta``, dt = η)."""
        args = self._outside_args(args)
        return self.evaluate(0.0, x, torch.zeros(x.shape[0], self.noise_dim, dtype=x.dtype, device=x.device), args)[0].clone()

    def covariance(self, x: Tensor, args: StepArgs | None = None) -> Tensor:
        """S(x) as dense (M, d, d) matrices (for tests and small d): A Aᵀ with A = S^{1/2} columns
        (``args`` as for ``drift``)."""
        args = self._outside_args(args)
        eye = torch.eye(self.noise_dim, dtype=x.dtype, device=x.device)
        cols = [self.evaluate(0.0, x, eye[j].expand(x.shape[0], -1).clone(), args)[1].clone() for j in range(self.noise_dim)]
        a = torch.stack(cols, -1)  # (M, d, noise_dim)
        return a @ a.transpose(-1, -2)


class DSGDSDE(SDEModel):
    """DSGD (and DCSGD with the identity): m = ∇f, S = (1/N²) Σ σ_i² v/B · I."""

    @classmethod
    def applies(cls, algorithm: Algorithm) -> bool:
        return algorithm.plain and algorithm.aggregation == "mean" and isinstance(_kind(algorithm.compressor), Identity)

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)
        self.std = math.sqrt(float(oracle.noise_variances().sum())) / self.workers
        self.description = f"DSGD SDE (closed form): drift ∇f, isotropic diffusion sqrt(η)·{self.std:.4g}"
        if self.rank:
            self.noise_type = "diagonal-lowrank"
            self.description = ("DSGD SDE (closed form): drift ∇f, diffusion from the minibatch noise's covariance "
                                f"(rank {self.rank} per worker)" + (f" and isotropic sqrt(η)·{self.std:.4g}" if self.std else ""))
        elif self.std == 0.0:
            self.noise_type = "none"

    def evaluate(self, t: float, x: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        o = self.oracle_as(x)
        if not self.rank:
            return o.grad(x), xi.mul_(self.std)
        d, f = self.dim, o.noise_factors(x)
        assert f is not None  # rank > 0: the oracle has factors
        noise = xi[:, :d].mul_(self.std).add_(_factor_noise(f, xi[:, d:], 1.0 / self.workers))
        return o.mean_grads(x).mean(0), noise


class RandKSDE(SDEModel):
    """DCSGD with scaled Rand-k, exact compression covariance: S = diag(D) − U Uᵀ (see module doc).

    S^{1/2} ξ is applied as D^{1/2} (I − V Vᵀ)^{1/2} ξ with V = D^{−1/2} U (d × r, r = 1 for
    homogeneous workers, N otherwise), using the r × r eigen-decomposition of Vᵀ V: O(M d r) per
    step, no d × d matrix.
    """

    noise_type = "diagonal-lowrank"

    @classmethod
    def applies(cls, algorithm: Algorithm) -> bool:
        c = algorithm.compressor
        return algorithm.plain and algorithm.aggregation == "mean" and isinstance(c, RandK) and not c.shared

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)
        d = self.dim
        self.k = algorithm.compressor.support(d)
        self.var = oracle.noise_variances()
        self.omega = d / self.k - 1.0
        self.c = (d - self.k) / (self.k * (d - 1)) if d > 1 else 0.0
        p = oracle.problem
        self.homogeneous = not self.rank and p.heterogeneity == 0.0 and p.fixed_workers is None
        self.description = (
            f"DCSGD/Rand-k SDE (closed form, ω = {self.omega:.4g}): drift ∇f, diffusion "
            "diag(D) − UUᵀ with the exact Rand-k compression covariance"
        )

    def _factors(self, x: Tensor, f: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        n = self.workers
        var = self.var.to(device=x.device, dtype=x.dtype)
        o = self.oracle_as(x)
        if self.homogeneous:
            g = o.grad(x)  # (M, d)
            mean = g
            diag = (var.sum() * (1 + self.omega) + n * (self.omega + self.c) * g * g) / n**2
            u = (math.sqrt(self.c * n) / n) * g.unsqueeze(-1)  # (M, d, 1): n identical columns → rank 1
        else:
            gi = o.mean_grads(x)  # (N, M, d)
            mean = gi.mean(0)
            sq = (gi * gi).sum(0)
            if f is not None:  # the minibatch noise's variances enter the diagonal too
                sq += f.square().sum(2).sum(0)
            diag = (var.sum() * (1 + self.omega) + (self.omega + self.c) * sq) / n**2
            u = (math.sqrt(self.c) / n) * gi.permute(1, 2, 0)  # (M, d, N)
        return mean, diag, u

    def evaluate(self, t: float, x: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        f = self.oracle_as(x).noise_factors(x) if self.rank else None
        mean, diag, u = self._factors(x, f)
        xi, zeta = xi[:, : self.dim], xi[:, self.dim:]
        sd = diag.clamp_min(0).sqrt()
        v = u / sd.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(-1)  # (M, d, r)
        lam, w = torch.linalg.eigh(v.transpose(-1, -2) @ v)  # VᵀV = W Λ Wᵀ, Λ ≤ 1 since S ⪰ 0
        lam = lam.clamp(0.0, 1.0)
        q = (v @ w) / lam.clamp_min(torch.finfo(x.dtype).tiny).sqrt().unsqueeze(-2)  # orthonormal columns
        q = torch.where(lam.unsqueeze(-2) > 0, q, torch.zeros_like(q))
        shrink = 1.0 - (1.0 - lam).sqrt()  # (I − VVᵀ)^{1/2} = I − Q diag(shrink) Qᵀ
        y = xi - (q @ (shrink * (q.transpose(-1, -2) @ xi.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
        noise = sd * y
        if f is not None:  # + (1 − c)/N² Σ F_iᵀF_i, an independent Gaussian part
            noise += _factor_noise(f, zeta, math.sqrt(1.0 - self.c) / self.workers)
        return mean, noise


class DSignSGDSDE(SDEModel):
    """DSignSGD (mean of signs): m = (1/N) Σ s_i, S = (1/N²) Σ diag(1 − s_i²), s_i = 2F(√B g_i/σ_i) − 1."""

    @classmethod
    def applies(cls, algorithm: Algorithm) -> bool:
        return algorithm.plain and algorithm.aggregation == "mean" and isinstance(_kind(algorithm.compressor), Sign)

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)
        self.noise_dim = self.dim  # the sign probabilities carry the whole noise law
        noise = oracle.noise
        law = {"gaussian": "erf", "student-t": f"2F_ν − 1 with ν = {noise.nu}"}.get(noise.name, "sign")
        if self.rank:
            law = "erf, the minibatch noise taken Gaussian per coordinate"
        self.description = f"DSignSGD SDE (closed form, {law}): bounded drift and diagonal diffusion"

    def evaluate(self, t: float, x: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        s = self.oracle_as(x).sign_means(x)
        n = self.workers
        return s.mean(0), xi.mul_((1.0 - s * s).sum(0).clamp_min(0).sqrt() / n)


class SignSGDSDE(SDEModel):
    """SignSGD on the workers' mean gradient: m = E sign(ḡ) = s, S = diag(1 − s²) (Compagnoni et al. 2025).

    One worker: s = 2F(√B g/σ) − 1 with F the noise's CDF (``DSignSGDSDE`` with N = 1). N workers: ḡ's
    noise is Gaussian with the variances diag Σ̄ (exact for Gaussian noise, the central limit for
    minibatches), s = erf(ḡ / sqrt(2 diag Σ̄)); Student-t noise averaged over N > 1 workers has no closed
    CDF, and gets the Monte Carlo model.
    """

    @classmethod
    def fits(cls, oracle: GradientOracle, algorithm: Algorithm) -> bool:
        return oracle.workers == 1 or oracle.noise.name != "student-t"

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)
        self.noise_dim = self.dim
        self.description = "SignSGD SDE (closed form): drift E sign(ḡ), diffusion diag(1 − E sign(ḡ)²)"

    def evaluate(self, t: float, x: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        o = self.oracle_as(x)
        if self.workers == 1:
            s = o.sign_means(x)[0]
        else:
            diag, _ = self.averaged_noise(x, torch.zeros(x.shape[0], self.dim + self.workers * self.rank,
                                                         dtype=x.dtype, device=x.device))
            g = o.mean_grads(x).mean(0)
            s = gaussian_sign_mean(g, diag)
        return s, xi.mul_((1.0 - s * s).clamp_min(0).sqrt())


class AdaptiveSDE(SDEModel):
    """RMSprop(W) and Adam(W) with their state: the SDE of the Markov chain (x, m, v, bias corrections).

    One optimizer step with β = 1 − ρη (ρ = (1 − β)/η held fixed as η → 0, so the moments relax on the
    SDE's time scale; Malladi et al. 2022, Compagnoni et al. 2025) is, by the first-order recipe
    (docs/theory.md §9.3), with ḡ = ∇f(x) (+ λx for coupled weight decay), D = diag Σ̄(x) and
    m' = m + (1 − β₁)(ḡ − m), v' = v + (1 − β₂)(ḡ² + D − v) the one-step means:

    * Adam(W), state (x, m, v, ι₁, ι₂) with ι_i = 1 − β_iᵏ the bias corrections (dι = ρ_i(1 − ι) dt):
          dx = −[(m'/ι₁')/P + λ_w x] dt − (1 − β₁)/(ι₁' P) sqrt(η) Σ̄^{1/2} dW,   P = sqrt(v'/ι₂') + ε
          dm =  ρ₁(ḡ − m) dt + ρ₁ sqrt(η) Σ̄^{1/2} dW              (the same W: x's step uses m')
          dv =  ρ₂(ḡ² + D − v) dt
    * RMSprop(W), state (x, v):
          dx = −[ḡ/(sqrt(v') + ε) + λ_w x] dt − sqrt(η) diag(1/(sqrt(v') + ε)) Σ̄^{1/2} dW
          dv =  ρ₂(ḡ² + D − v) dt

    (λ_w: decoupled weight decay.) x's noise in Adam is O(η) against m's, yet kept: x's step uses m', so
    without it the gradient noise would reach x one step late, through β₁m, and x's stationary variance
    would be β₁² times the optimizer's (measured: 0.82 at β₁ = 0.9). v has no diffusion: its one-step
    standard deviation (1 − β₂)·sd(g²) is the dropped term (a hundredth of m's with the default β's), as
    in the published SDEs. In Euler–Maruyama with dt = η the m update is exactly Adam's with Gaussian noise.
    """

    noise_type = "diagonal"
    #: the recipe's variant (``compsde.optimizers.adam`` / ``rmsprop`` subclass this): Adam's first moment
    #: and bias corrections, and whether the weight decay is decoupled (AdamW, RMSpropW)
    first_moment: ClassVar[bool] = False
    decoupled_decay: ClassVar[bool] = False

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)
        oracle.noise_variances()  # E g² must be finite: refuses Student-t with ν ≤ 2
        h = algorithm.hyper
        self.adam = self.first_moment
        self.b1, self.b2, self.eps = h.get("beta1", 0.0), h["beta2"], h["eps"]
        lam = h.get("weight_decay", 0.0)
        self.decoupled = lam if self.decoupled_decay else 0.0
        self.coupled = 0.0 if self.decoupled_decay else lam
        d = self.dim
        self.state_dim = 3 * d + 2 if self.adam else 2 * d
        what = "Adam" if self.adam else "RMSprop"
        self.description = (f"{algorithm.name} SDE (closed form, state (x, {'m, v, ι₁, ι₂' if self.adam else 'v'}), "
                            f"β = 1 − ρη): {what}'s moments relax at rate (1 − β)/η, "
                            "the gradient noise enters " + ("through m (x steps on m')" if self.adam else "x"))

    def initial(self, x0: Tensor) -> Tensor:
        return torch.cat([x0, torch.zeros(x0.shape[0], self.state_dim - self.dim, dtype=x0.dtype, device=x0.device)], 1)

    def evaluate(self, t: float, z: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        d, lr, c2 = self.dim, args.lr, 1.0 - self.b2
        x = z[:, :d]
        g = self.oracle_as(x).mean_grads(x).mean(0)
        if self.coupled:
            g.add_(x, alpha=self.coupled)
        diag, noise = self.averaged_noise(x, xi)
        out, s_xi = self.output_buffers(z)  # the noise's v and ι blocks stay 0
        vs = slice(2 * d, 3 * d) if self.adam else slice(d, 2 * d)
        v, ov = z[:, vs], out[:, vs]
        torch.addcmul(diag, g, g, out=ov)  # E ḡ² = ∇f² + diag Σ̄
        p = torch.lerp(v, ov, c2)  # v' = v + (1 − β₂)(E ḡ² − v)
        ov.sub_(v).mul_(-c2 / lr)  # (1 − β₂)/η · (v − E ḡ²)
        ox = out[:, :d]
        if self.adam:
            c1 = 1.0 - self.b1
            m, i1, i2 = z[:, d: 2 * d], z[:, -2:-1], z[:, -1:]
            j1, j2 = i1 + c1 * (1.0 - i1), i2 + c2 * (1.0 - i2)
            p.div_(j2).clamp_min_(0).sqrt_().add_(self.eps)  # P = sqrt(v'/ι₂') + ε
            om = torch.sub(m, g, out=out[:, d: 2 * d]).mul_(c1 / lr)  # (1 − β₁)/η · (m − ∇f)
            torch.add(m, om, alpha=-lr, out=ox).div_(j1).div_(p)  # (m'/ι₁')/P
            torch.mul(noise, c1 / j1, out=s_xi[:, :d]).div_(p)  # x's step uses m', which holds this step's noise
            torch.mul(noise, -c1 / lr, out=s_xi[:, d: 2 * d])
            torch.mul(i1 - 1.0, c1 / lr, out=out[:, -2:-1])
            torch.mul(i2 - 1.0, c2 / lr, out=out[:, -1:])
        else:
            p.clamp_min_(0).sqrt_().add_(self.eps)
            torch.div(g, p, out=ox)
            torch.div(noise, p, out=s_xi[:, :d])
        if self.decoupled:
            ox.add_(x, alpha=self.decoupled)
        return out, s_xi


class ProbeSDE(SDEModel):
    """USAM, and the game methods SGDA, SEG and SHGD: updates linear in the sampled field, to first order.

    With g = F(x) + Z the sampled gradient (field), J the Jacobian of F (the Hessian for a loss), and
    c the probe's signed radius, one step's update per unit η is U = L(x) g with

        USAM  L = I + ρJ      (∇f(x + ρ g) = g + ρ H g + O(ρ²): exact on quadratics)
        SGDA  L = I
        SEG   L = I − ρJ      (ρ = η unless given: F(x − ρ g) = g − ρ J g + O(ρ²); exact for linear fields)
        SHGD  L = Jᵀ          (∇½‖g‖² = Jᵀ g with additive noise)

    so m = L F and S^{1/2} ξ = L Σ̄^{1/2} ξ (J v and Jᵀ v from the problem: ``Problem.jvp`` / ``vjp``,
    exact for linear fields, autodiff otherwise). USAM's drift is ∇(f + (ρ/2)‖∇f‖²), the implicitly regularised loss.

    Games (SGDA, SEG, SHGD) add the second-order drift correction of the modified equation,
    m ← m + (η/2) J_m m (J_m the Jacobian of m; Li, Tai & E 2017): on a game F has a rotational part
    on which the first-order drift is neutral, and SGDA's spiralling out (|1 − iηb| > 1) and
    extragradient's contraction are effects of order η per unit time (docs/theory.md §9.6).
    Euler–Maruyama with step dt has the same kind of error, −(dt/2) J_m m per unit time, so the
    model hands the solver m + ((η − dt)/2) J_m m (η and dt from the step's ``args``): the modified
    equation with the solver's own leading error removed, whatever the number of substeps (dt = η: the
    first-order drift, whose Euler step is the optimizer's; dt → 0: the modified equation itself).
    """

    noise_type = "diagonal"
    #: the recipe's variant (``compsde.optimizers.sam`` / ``games`` subclass this): L written out, whether
    #: the method is a game's (modified-equation drift), and whether it fits any problem (L = I)
    law: ClassVar[str] = "I"
    game: ClassVar[bool] = False
    any_problem: ClassVar[bool] = False

    @classmethod
    def fits(cls, oracle: GradientOracle, algorithm: Algorithm) -> bool:
        """A problem's oracle (not a network's minibatches) whose workers share one Jacobian (the linear
        tilts of ``heterogeneity`` keep it; the Top-1 counter-example's workers do not): each worker probes
        with its own gradient, so (1/N) Σ_i L_i g_i is L ḡ only then. L = I (SGDA) fits any problem."""
        if not isinstance(oracle, Oracle):
            return False
        shared = oracle.workers == 1 or type(oracle.problem).worker_grads is Problem.worker_grads
        return shared or cls.any_problem

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)
        oracle.noise_variances()  # Σ̄ must be finite
        self.description = (f"{algorithm.name.upper()} SDE (closed form): drift {self.law}F"
                            + (" + (η/2) J_m m (second-order drift of the modified equation)" if self.game else "")
                            + f", diffusion {self.law}Σ̄^{{1/2}}")

    def _radius(self, args: StepArgs) -> float:
        """c in L = I + cJ (0: L = I) at the step's η (``args.lr``)."""
        return 0.0

    def _apply(self, x: Tensor, v: Tensor, args: StepArgs) -> Tensor:
        """L(x) v for rows of x and v (M, d)."""
        c = self._radius(args)
        if c == 0.0:
            return v
        return v + c * self.oracle_as(x).problem.jvp(x, v)

    def _first_order(self, x: Tensor, args: StepArgs) -> Tensor:
        return self._apply(x, self.oracle_as(x).grad(x), args)

    def evaluate(self, t: float, x: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        _, noise = self.averaged_noise(x, xi)
        if self.game:
            m = self._first_order(x, args)
            if self.oracle_as(x).problem.linear:  # m = (L J) x is linear too: J_m m = m(m)
                jm = self._first_order(m, args)
            else:
                jm = jvp_by_vjp(lambda p: self._first_order(p, args), x, m)
            m = m + (0.5 * (args.lr - args.dt)) * jm
        else:
            m = self._first_order(x, args)
        return m, self._apply(x, noise, args)


class MonteCarloSDE(SDEModel):
    """Any memoryless algorithm: m and S estimated at each point from K samples of the update.

    With U_1..U_K the sampled updates (each: fresh noise and compressor draws, the algorithm's own
    step per unit step size, ``Algorithm.unit_update``), m ≈ Ū and S^{1/2} ξ ≈ (1/√(K−1)) Σ_k (U_k − Ū) ξ_k,
    which has exactly the sample covariance. Cost per step O(K N M d); the estimate adds O(1/√K)
    error to the diffusion.
    """

    noise_type = "sampled"
    DEFAULT_SAMPLES: ClassVar[int] = 32

    @classmethod
    def applies(cls, algorithm: Algorithm) -> bool:
        return algorithm.memoryless

    def __init__(self, oracle: Oracle, algorithm: Algorithm, eta: float, samples: int = DEFAULT_SAMPLES) -> None:
        super().__init__(oracle, algorithm, eta)
        self.samples = check_int("mc_samples (Monte Carlo draws per SDE step)", samples, min=2)
        # A normalised step (‖U‖ = 1) or sign messages keep the update bounded under any noise, so
        # its mean and covariance exist for every ν; otherwise the update needs finite noise variance.
        if not ({"normalize", "sign"} & set(algorithm.server.names) or isinstance(algorithm.compressor, Sign)):
            oracle.noise_variances()  # raises if Var T = ∞
        self.noise_dim = self.samples
        self.description = (
            f"{algorithm.label()} SDE (Monte Carlo: mean and covariance of the update estimated from "
            f"{self.samples} samples at every point; no closed form)"
        )

    def samples_at(self, x: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        """K sampled updates at each point, drawn from ``args.generator`` at the step's η (``args.lr``, for a
        probe step): their mean Ū (M, d) and scaled deviations (U_k − Ū)/√(K−1) (K, M, d)."""
        generator = args.generator
        if generator is None:
            raise ValueError("MonteCarloSDE needs a generator for its Monte Carlo samples: pass "
                             "args = model.step_args(generator=...)")
        o = self.oracle_as(x)
        m_paths, d, n, kk = x.shape[0], self.dim, self.workers, self.samples
        noise = o.noise
        z = noise.sample(n, (kk, m_paths), d, o.batch, generator, x.dtype).to(x.device) if noise.active else None
        comp = self.algorithm.compressor
        rnd = comp.draw((1 if comp.shared_randomness else n, kk, m_paths), d, generator, x.dtype)
        if self.algorithm.single_evaluation:
            g = o.mean_grads(x).unsqueeze(1).expand(n, kk, m_paths, d)
            u = self.algorithm.unit_update(g if z is None else g + z, rnd)  # (K, M, d)
        else:  # a probe step evaluates the field again with the same sample, at the K × M points
            rows = kk * m_paths
            flat = None if z is None else z.reshape(n, rows, d)
            rnd = None if rnd is None else rnd.reshape(rnd.shape[0], rows, *rnd.shape[3:])
            u = self.algorithm.unit_update(o.grad_fn(0, n, flat), rnd, workers=n, lr=args.lr,
                                           params=x.unsqueeze(0).expand(kk, m_paths, d).reshape(rows, d))
            u = u.reshape(kk, m_paths, d)
        mean = u.mean(0)
        return mean, (u - mean) / math.sqrt(kk - 1)

    def evaluate(self, t: float, x: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        mean, dev = self.samples_at(x, args)
        return mean, torch.einsum("kmd,mk->md", dev, xi)

    def covariance(self, x: Tensor, args: StepArgs | None = None) -> Tensor:
        """The sample covariance of one set of K samples (the S this model uses at x)."""
        _, dev = self.samples_at(x, self._outside_args(args))
        return torch.einsum("kmi,kmj->mij", dev, dev)


def _factor_noise(factors: Tensor, zeta: Tensor, scale: float) -> Tensor:
    """scale · Σ_i F_iᵀ ζ_i for factors (N, M, n, d) and ζ (M, N·n): Gaussian with covariance scale² Σ_i F_iᵀ F_i."""
    n_w, m, n, _ = factors.shape
    return torch.einsum("imkd,mik->md", factors, zeta.reshape(m, n_w, n)).mul_(scale)


def _kind(compressor: Compressor) -> Compressor:
    """The compressor a model sees: a per-block identity or sign is the identity or sign itself."""
    inner = getattr(compressor, "inner", None)
    return inner if isinstance(compressor, Blockwise) and isinstance(inner, (Identity, Sign)) else compressor


#: The structural registry, in order: the first model that ``applies`` to an algorithm that is not a named
#: optimizer with its own model (``compsde.algorithms.Optimizer.sde``) is its SDE.
MODELS: list[type[SDEModel]] = [DSGDSDE, RandKSDE, DSignSGDSDE, MonteCarloSDE]


def from_algorithm(oracle: GradientOracle, algorithm: Algorithm, lr: float, *,
                   mc_samples: int = MonteCarloSDE.DEFAULT_SAMPLES) -> SDEModel:
    """The SDE model of a configured algorithm: its recipe's model when it is a named optimizer as its
    recipe builds it, else a structural closed form where one exists, else Monte Carlo; a local method
    (local-sgd, local-adamw) gets ``compsde.sde.local.LocalSDE``, its workers' SDEs with the averaging as a jump.

    Raises ValueError naming the reason when the algorithm has none (it carries state from step to
    step, or its update has infinite variance under the oracle's noise).
    """
    if not isinstance(oracle, GradientOracle):
        raise ValueError(f"oracle must be a compsde.objectives.Oracle or NetworkOracle, got {describe(oracle)}")
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be a compsde Algorithm, got {describe(algorithm)}")
    if algorithm.local:  # every worker's own SDE, the averaging as a jump (docs/theory.md §5.4)
        from compsde.sde.local import LocalSDE

        return LocalSDE(oracle, algorithm, lr)
    opt = algorithm.optimizer
    if opt is not None and opt.sde is not None and opt.built(algorithm):
        model: type[SDEModel] = opt.sde
        if model.fits(oracle, algorithm):
            return model(oracle, algorithm, lr)
    for cls in MODELS:
        if cls.applies(algorithm) and cls.fits(oracle, algorithm):
            if cls is MonteCarloSDE:
                if not isinstance(oracle, Oracle):
                    raise ValueError(f"{algorithm.label()} has no closed-form SDE on a network, and the Monte Carlo SDE "
                                     "samples a problem's noise model, not minibatches: on a network the SDEs are those "
                                     "of dsgd, dcsgd with rand-k, dsignsgd, signsgd, rmsprop(w) and adam(w)")
                return MonteCarloSDE(oracle, algorithm, lr, mc_samples)
            return cls(oracle, algorithm, lr)
    if opt is not None and opt.no_sde:
        raise ValueError(f"{algorithm.label()} has no SDE here: {opt.no_sde}")
    why = "error feedback" if algorithm.error_feedback else "a transform with state (momentum)"
    raise ValueError(f"{algorithm.label()} has no first-order SDE of this form: its update depends on {why} "
                     "carried from step to step, not only on x")
