"""SDE models of the distributed methods, built by the first-order recipe of science.md §2.

For an update x_{k+1} = x_k − η U(x_k, ζ_k) with mean m(x) = E U and covariance S(x) = Cov U, the
order-1 weak approximation is the Itô SDE

    dX_t = −m(X_t) dt + sqrt(η S(X_t)) dW_t,    t = kη.

A model is data: ``evaluate(x, xi, generator)`` returns m(x) and S(x)^{1/2} ξ for a batch of points
x (M, d) and standard normals ξ (M, noise_dim) supplied by the integrator. The integrator
(``compsde.integrators``) is separate.

Closed forms (g_i = ∇f_i(x), noise σ_i T/√B with Var T = v, N workers):

* DSGD:   m = (1/N) Σ g_i,  S = (1/N²) Σ_i σ_i² v / B · I                                   (diagonal)
* DCSGD, scaled Rand-k (ω = d/k − 1, c = (d − k)/(k(d − 1))), independent draws per worker:
          m = (1/N) Σ g_i,
          S = (1/N²) Σ_i [σ_i² v/B · I + ω diag(g_i² + σ_i² v/B) + c diag(g_i²) − c g_i g_iᵀ]
            = diag(D) − U Uᵀ with U = (√c / N) [g_1 … g_N]                        (diagonal − low rank)
* DSignSGD (mean of signs): E sign(g_ij + σ_i T/√B) = 2F(√B g_ij/σ_i) − 1 =: s_ij
          m = (1/N) Σ_i s_i,  S = (1/N²) Σ_i diag(1 − s_i²)                                  (diagonal)
  with F the CDF of T: erf for Gaussian noise, 2F_ν − 1 for Student-t, so m and S stay bounded for
  every ν, Cauchy included (seeds 000/001).

Anything else (another compressor, majority vote): ``MonteCarloSDE`` estimates m and S at the
current point from K samples of the method's own update, and says so in its description.
DSGD/DCSGD need finite noise variance: for Student-t with ν ≤ 2 their SDE does not exist (S is
infinite), which is exactly why they break under heavy tails; building one raises an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from compsde.compressors.sparsifiers import Identity, RandK
from compsde.methods import Method
from compsde.noise import Noise
from compsde.problems import Problem


class SDEModel:
    """Base class: dX = −m(X) dt + sqrt(η) S(X)^{1/2} dW with W of dimension ``noise_dim``."""

    eta: float
    dim: int
    noise_dim: int
    #: "none", "diagonal", "diagonal-lowrank" or "sampled" (Monte Carlo estimate).
    noise_type: str
    description: str

    def evaluate(self, x: Tensor, xi: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Return (m(x), S(x)^{1/2} ξ), both of shape (M, d), for x (M, d) and ξ (M, noise_dim).

        ``xi`` is this step's scratch draw: a model may scale it in place and return it (the
        integrator draws a fresh ξ every step), which saves one pass over (M, d).
        """
        raise NotImplementedError

    def problem_as(self, dtype: torch.dtype) -> Problem:
        """The model's problem with tensors of ``dtype`` (cast once and cached): float32 paths must
        not be promoted to float64 by float64 problem data on every step."""
        cache: dict[torch.dtype, Problem] = self.__dict__.setdefault("_cast", {})
        if dtype not in cache:
            cache[dtype] = self.problem.to(dtype)  # type: ignore[attr-defined]
        return cache[dtype]

    def drift(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """m(x) (the SDE's drift is −m)."""
        return self.evaluate(x, torch.zeros(x.shape[0], self.noise_dim, dtype=x.dtype), generator)[0]

    def covariance(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """S(x) as dense (M, d, d) matrices (for tests and small d): A Aᵀ with A = S^{1/2} columns."""
        eye = torch.eye(self.noise_dim, dtype=x.dtype)
        cols = [self.evaluate(x, eye[j].expand(x.shape[0], -1).clone(), generator)[1] for j in range(self.noise_dim)]
        a = torch.stack(cols, -1)  # (M, d, noise_dim)
        return a @ a.transpose(-1, -2)


def _worker_setup(problem: Problem, noise: Noise, workers: int, batch: int) -> Tensor:
    """σ_i² Var(T) / B per worker (float64, shape (N,)); refuses infinite-variance noise."""
    var = noise.variance() if noise.active else 0.0
    if math.isinf(var):
        raise ValueError(
            f"the SDE of this method needs finite gradient-noise variance; Student-t noise with nu = {noise.nu} "
            "has infinite variance (nu ≤ 2), so DSGD/DCSGD have no diffusion limit there — use dsignsgd, "
            "whose SDE stays bounded for every nu"
        )
    problem.check_workers(workers)
    return noise.worker_scales(workers) ** 2 * var / batch if noise.active else torch.zeros(workers, dtype=torch.float64)


@dataclass
class _MethodSDE(SDEModel):
    """The configuration every model of a distributed method is built from."""

    problem: Problem
    noise: Noise
    workers: int
    batch: int
    eta: float


@dataclass
class DSGDSDE(_MethodSDE):
    """DSGD (and DCSGD with the identity): m = ∇f, S = (1/N²) Σ σ_i² v/B · I."""

    noise_type: str = field(default="diagonal", init=False)

    def __post_init__(self) -> None:
        self.dim = self.noise_dim = self.problem.dim
        var = _worker_setup(self.problem, self.noise, self.workers, self.batch)
        self.std = math.sqrt(float(var.sum())) / self.workers
        self.description = f"DSGD SDE (closed form): drift ∇f, isotropic diffusion sqrt(η)·{self.std:.4g}"
        if self.std == 0.0:
            self.noise_type = "none"

    def evaluate(self, x: Tensor, xi: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.problem_as(x.dtype).grad(x), xi.mul_(self.std)


@dataclass
class RandKSDE(_MethodSDE):
    """DCSGD with scaled Rand-k, exact compression covariance: S = diag(D) − U Uᵀ (see module doc).

    S^{1/2} ξ is applied as D^{1/2} (I − V Vᵀ)^{1/2} ξ with V = D^{−1/2} U (d × r, r = 1 for
    homogeneous workers, N otherwise), using the r × r eigen-decomposition of Vᵀ V: O(M d r) per
    step, no d × d matrix.
    """

    k: int
    noise_type: str = field(default="diagonal-lowrank", init=False)

    def __post_init__(self) -> None:
        d = self.dim = self.noise_dim = self.problem.dim
        self.var = _worker_setup(self.problem, self.noise, self.workers, self.batch)
        self.omega = d / self.k - 1.0
        self.c = (d - self.k) / (self.k * (d - 1)) if d > 1 else 0.0
        self.homogeneous = self.problem.heterogeneity == 0.0 and self.problem.fixed_workers is None
        self.description = (
            f"DCSGD/Rand-k SDE (closed form, ω = {self.omega:.4g}): drift ∇f, diffusion "
            "diag(D) − UUᵀ with the exact Rand-k compression covariance"
        )

    def _factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = self.workers
        var = self.var.to(x.dtype)
        p = self.problem_as(x.dtype)
        if self.homogeneous:
            g = p.grad(x)  # (M, d)
            mean = g
            diag = (var.sum() * (1 + self.omega) + n * (self.omega + self.c) * g * g) / n**2
            u = (math.sqrt(self.c * n) / n) * g.unsqueeze(-1)  # (M, d, 1): n identical columns → rank 1
        else:
            gi = p.worker_grads(x, n)  # (N, M, d)
            mean = gi.mean(0)
            diag = (var.sum() * (1 + self.omega) + (self.omega + self.c) * (gi * gi).sum(0)) / n**2
            u = (math.sqrt(self.c) / n) * gi.permute(1, 2, 0)  # (M, d, N)
        return mean, diag, u

    def evaluate(self, x: Tensor, xi: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        mean, diag, u = self._factors(x)
        sd = diag.clamp_min(0).sqrt()
        v = u / sd.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(-1)  # (M, d, r)
        lam, w = torch.linalg.eigh(v.transpose(-1, -2) @ v)  # VᵀV = W Λ Wᵀ, Λ ≤ 1 since S ⪰ 0
        lam = lam.clamp(0.0, 1.0)
        q = (v @ w) / lam.clamp_min(torch.finfo(x.dtype).tiny).sqrt().unsqueeze(-2)  # orthonormal columns
        q = torch.where(lam.unsqueeze(-2) > 0, q, torch.zeros_like(q))
        shrink = 1.0 - (1.0 - lam).sqrt()  # (I − VVᵀ)^{1/2} = I − Q diag(shrink) Qᵀ
        y = xi - (q @ (shrink * (q.transpose(-1, -2) @ xi.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
        return mean, sd * y


@dataclass
class DSignSGDSDE(_MethodSDE):
    """DSignSGD (mean of signs): m = (1/N) Σ s_i, S = (1/N²) Σ diag(1 − s_i²), s_i = 2F(√B g_i/σ_i) − 1."""

    noise_type: str = field(default="diagonal", init=False)

    def __post_init__(self) -> None:
        self.problem.check_workers(self.workers)
        self.dim = self.noise_dim = self.problem.dim
        self.scales = self.noise.worker_scales(self.workers) if self.noise.active else torch.zeros(self.workers, dtype=torch.float64)
        law = {"gaussian": "erf", "student-t": f"2F_ν − 1 with ν = {self.noise.nu}"}.get(self.noise.name, "sign")
        self.description = f"DSignSGD SDE (closed form, {law}): bounded drift and diagonal diffusion"

    def _sign_means(self, x: Tensor) -> Tensor:
        gi = self.problem_as(x.dtype).worker_grads(x, self.workers)  # (N, M, d)
        shape = (self.workers,) + (1,) * (gi.dim() - 1)
        sig = self.scales.to(x.dtype).reshape(shape)
        if not self.noise.active:
            return torch.where(gi >= 0, 1.0, -1.0).to(x.dtype)
        z = math.sqrt(self.batch) * gi / sig.clamp_min(torch.finfo(x.dtype).tiny)
        s = self.noise.sign_mean(z)
        return torch.where(sig > 0, s, torch.where(gi >= 0, 1.0, -1.0).to(x.dtype))

    def evaluate(self, x: Tensor, xi: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        s = self._sign_means(x)
        n = self.workers
        return s.mean(0), xi.mul_((1.0 - s * s).sum(0).clamp_min(0).sqrt() / n)


@dataclass
class MonteCarloSDE(_MethodSDE):
    """Any memoryless method: m and S estimated at each point from K samples of the update.

    With U_1..U_K the sampled updates (each: fresh noise and compressor draws, the method's own
    ``step``), m ≈ Ū and S^{1/2} ξ ≈ (1/√(K−1)) Σ_k (U_k − Ū) ξ_k, which has exactly the sample
    covariance. Cost per step O(K N M d); the estimate adds O(1/√K) error to the diffusion.
    """

    method: Method
    samples: int = 32
    noise_type: str = field(default="sampled", init=False)

    def __post_init__(self) -> None:
        if self.method.error_feedback:
            raise ValueError("method 'ef' has no first-order SDE of this form: its update depends on the error memory, not only on x")
        if self.samples < 2:
            raise ValueError(f"samples (Monte Carlo draws per SDE step) must be ≥ 2, got {self.samples}")
        # A normalised step (‖U‖ = 1) or sign messages keep the update bounded under any noise, so
        # its mean and covariance exist for every ν; otherwise the update needs finite noise variance.
        if not (self.method.normalize or self.method.compressor.name == "sign"):
            _worker_setup(self.problem, self.noise, self.workers, self.batch)  # raises if Var T = ∞
        self.problem.check_workers(self.workers)
        self.dim = self.problem.dim
        self.noise_dim = self.samples
        self.description = (
            f"{self.method.label()} SDE (Monte Carlo: mean and covariance of the update estimated from "
            f"{self.samples} samples at every point; no closed form)"
        )

    def samples_at(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """K sampled updates at each point: their mean Ū (M, d) and scaled deviations (U_k − Ū)/√(K−1) (K, M, d)."""
        if generator is None:
            raise ValueError("MonteCarloSDE needs a generator for its Monte Carlo samples")
        m_paths, d, n, kk = x.shape[0], self.dim, self.workers, self.samples
        grads = self.problem_as(x.dtype).worker_grads(x, n)  # (N, M, d)
        g = grads.unsqueeze(1).expand(n, kk, m_paths, d)
        if self.noise.active:
            g = g + self.noise.sample(n, (kk, m_paths), d, self.batch, generator, x.dtype)
        comp = self.method.compressor
        rnd = comp.draw((1 if comp.shared_randomness else n, kk, m_paths), d, generator, x.dtype)
        u = self.method.step(g, 1.0, None, rnd).update  # (K, M, d): update per unit step size
        mean = u.mean(0)
        return mean, (u - mean) / math.sqrt(kk - 1)

    def evaluate(self, x: Tensor, xi: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        mean, dev = self.samples_at(x, generator)
        return mean, torch.einsum("kmd,mk->md", dev, xi)

    def covariance(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The sample covariance of one set of K samples (the S this model uses at x)."""
        _, dev = self.samples_at(x, generator)
        return torch.einsum("kmi,kmj->mij", dev, dev)


def from_method(problem: Problem, noise: Noise, method: Method, *, workers: int, batch: int, lr: float,
                mc_samples: int = 32) -> SDEModel:
    """The SDE model of a configured method: a closed form where one exists, else Monte Carlo."""
    if method.normalize:
        return MonteCarloSDE(problem, noise, workers, batch, lr, method, mc_samples)
    comp = method.compressor
    if method.name in ("dsgd", "dcsgd") and isinstance(comp, Identity):
        return DSGDSDE(problem, noise, workers, batch, lr)
    if method.name == "dcsgd" and isinstance(comp, RandK) and not comp.shared:
        return RandKSDE(problem, noise, workers, batch, lr, comp.support(problem.dim))
    if method.name == "dsignsgd":
        return DSignSGDSDE(problem, noise, workers, batch, lr)
    return MonteCarloSDE(problem, noise, workers, batch, lr, method, mc_samples)
