"""Signum: SignSGD with momentum, distributed with majority vote (Bernstein, Wang, Azizzadenesheli,
Anandkumar 2018, "signSGD: compressed optimisation for non-convex problems", Algorithm 3; Bernstein,
Zhao, Azizzadenesheli, Anandkumar 2019, "signSGD with majority vote is communication efficient and fault
tolerant"). Each worker i keeps its own momentum and sends the sign of it (one bit per coordinate); the
server steps on the majority vote:

    m_i ← β m_i + (1 − β) g_i,      x ← x − η sign(Σ_i sign(m_i))

(the workers' signs with sign(0) = +1; a tied vote, possible for even N, does not move the coordinate,
as the library's majority aggregation).

The recipe is the worker transform ``momentum(β)`` (heavy ball m ← βm + g: a positive multiple of the
average above, so the same signs), the ``sign`` compressor and majority aggregation; with one worker it
is single-node Signum.

Its SDE (docs/theory.md §9.9), by the first-order recipe on the state (x, m_1, …, m_N) with the averages
m_i and ρ = (1 − β)/η: with g_i = ∇f_i + s_i T_i (T_i the standardised noise, variance v, s_i = σ_i/√B),
worker i's vote S_i = sign(m_i') for m_i' = μ_i + (1 − β)s_i T_i, μ_i = βm_i + (1 − β)∇f_i, is +1 with
probability p_i = F(z_i), z_i = μ_i/((1 − β)s_i), and V = sign(Σ_i S_i):

    dx   = −E V dt + sqrt(η) (Σ_i w_i dW_i + sqrt(1 − P(tie) − (E V)² − Σ_i w_i²) dW_0)
    dm_i =  ρ(∇f_i − m_i) dt − ρ sqrt(η σ_i² v/B) dW_i

with E V = P(K > N/2) − P(K < N/2) for K = #{S_i = +1} (a Poisson-binomial law over the workers), and w_i = E[V T_i]/√v =
(a_i⁺ − a_i⁻) q(z_i)/√v, where a_i^± = E sign(±1 + Σ_{j≠i} S_j) and q(z) = E[T 1{T ≥ −z}] (φ(z) for
Gaussian noise). a_i⁺ − a_i⁻ needs one or two point masses of the other workers' count K', taken from K's
law by removing worker i (``_without``): O(N²) per coordinate in all. Every coordinate is independent given (x, m_1, …, m_N). Euler–Maruyama with dt = η gives each step's
exact mean and covariance.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from compsde.algorithms.optimizer import Hyper, Optimizer
from compsde.objectives.oracle import GradientOracle, Oracle
from compsde.optim import momentum
from compsde.sde.models import SDEModel, StepArgs


def _count_law(p: Tensor) -> list[Tensor]:
    """The law of K, the number of successes of independent Bernoulli(p_j) for p (n, ...): P(K = k) for
    k = 0..n (the Poisson-binomial recursion over j, O(n²))."""
    law = [torch.ones_like(p[0])] if p.shape[0] else [torch.ones((), dtype=p.dtype, device=p.device)]
    for pj in p:
        nxt = [q * (1 - pj) for q in law] + [torch.zeros_like(law[0] * pj)]
        for k, q in enumerate(law):
            nxt[k + 1] = nxt[k + 1] + q * pj
        law = nxt
    return law


def _without(law: list[Tensor], p: Tensor) -> list[Tensor]:
    """The law of K minus one Bernoulli(p) success count, from the law of K (n + 1 entries → n): the
    recursion run back, forward where p ≤ 1/2 and backward where p > 1/2, so that each step multiplies
    the rounding error by p/(1 − p) ≤ 1 or its inverse ≤ 1 (stable). O(n) per worker."""
    n = len(law) - 1
    tiny = torch.finfo(p.dtype).tiny
    q, pp = (1 - p).clamp_min(tiny), p.clamp_min(tiny)
    fwd = [law[0] / q]
    for k in range(1, n):
        fwd.append((law[k] - p * fwd[-1]) / q)
    bwd = [law[n] / pp]
    for k in range(n - 1, 0, -1):
        bwd.append((law[k] - (1 - p) * bwd[-1]) / pp)
    bwd.reverse()
    return [torch.where(p <= 0.5, f, b) for f, b in zip(fwd, bwd, strict=True)]


def _vote(law: list[Tensor], h: float) -> Tensor:
    """E sign(K − h) = P(K > h) − P(K < h) for K with the law ``law`` (sign(0) = 0: a tied vote does not move)."""
    out = torch.zeros_like(law[0])
    for k, q in enumerate(law):
        out = out + (q if k > h else -q if k < h else 0.0)
    return out


class SignumSDE(SDEModel):
    """Signum with N workers and majority vote: the SDE of (x, m_1, …, m_N) (module doc). A problem's noise
    law is needed (its sign probabilities and q(z)): Gaussian, Student-t with ν > 2, or none. Its noise is
    "general": x's increment mixes the N + 1 noise coordinates of its index (the vote's noise correlated with
    each momentum's)."""

    noise_type = "general"

    @classmethod
    def fits(cls, oracle: GradientOracle, algorithm: object) -> bool:
        return isinstance(oracle, Oracle) and oracle.noise.name in ("gaussian", "student-t", "none")

    def __init__(self, oracle: GradientOracle, algorithm: object, eta: float) -> None:
        super().__init__(oracle, algorithm, eta)  # type: ignore[arg-type]
        self.var = oracle.noise_variances()  # σ_i² v/B; refuses Student-t with ν ≤ 2 (m's noise has no variance)
        self.v = oracle.noise.variance() if oracle.noise.active else 0.0
        self.beta = float(self.algorithm.hyper["beta"])
        n, d = self.workers, self.dim
        self.state_dim = (n + 1) * d
        self.noise_dim = (n + 1) * d
        self.description = (f"Signum SDE (closed form, state (x, m_1..m_{n}), β = {self.beta:g}): majority vote of the "
                            "momenta's signs, the vote's noise correlated with each momentum's")

    def initial(self, x0: Tensor) -> Tensor:
        return torch.cat([x0, torch.zeros(x0.shape[0], self.state_dim - self.dim, dtype=x0.dtype, device=x0.device)], 1)

    def evaluate(self, t: float, z: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        n, d, lr, c = self.workers, self.dim, args.lr, 1.0 - self.beta
        x = z[:, :d]
        mi = z[:, d:].reshape(-1, n, d).transpose(0, 1)  # (N, M, d)
        grads = self.oracle_as(x).mean_grads(x)  # (N, M, d)
        mu = self.beta * mi + c * grads
        noise = self.oracle.noise
        scale = (self.var / self.v).sqrt() if self.v > 0 else torch.zeros_like(self.var)  # s_i = σ_i/√B
        scale = scale.to(dtype=x.dtype, device=x.device).reshape(n, 1, 1)
        spread = c * scale
        zed = mu / spread.clamp_min(torch.finfo(x.dtype).tiny)
        noisy = spread > 0
        if noise.active:
            p_plus = torch.where(noisy, (1 + noise.sign_mean(zed)) / 2, (mu >= 0).to(x.dtype))
        else:
            p_plus = (mu >= 0).to(x.dtype)
        law = _count_law(p_plus)
        vote = _vote(law, n / 2)  # E V: K > N/2 votes +1, K < N/2 votes −1, a tie 0
        tie = law[n // 2] if n % 2 == 0 else torch.zeros_like(vote)
        xi0, xim = xi[:, :d], xi[:, d:].reshape(-1, n, d).transpose(0, 1)
        x_noise = torch.zeros_like(x)
        w2 = torch.zeros_like(x)
        if self.v > 0:
            q = self._tail_mean(zed)
            for i in range(n):
                # a_i⁺ − a_i⁻ = E[sign(R + 1) − sign(R − 1)], R = 2K' − (N − 1) over the other workers' votes:
                # 2 P(R = 0) + P(R = 1) + P(R = −1), one or two point masses of K''s law
                others = _without(law, p_plus[i])
                swing = 2 * others[(n - 1) // 2] if n % 2 else others[n // 2 - 1] + others[n // 2]
                w = torch.where(noisy[i], swing * q[i], 0.0) / math.sqrt(self.v)
                x_noise += w * xim[i]
                w2 += w * w
        x_noise += (1 - tie - vote * vote - w2).clamp_min(0).sqrt() * xi0  # Var V = 1 − P(tie) − (E V)²
        drift = torch.cat([vote, ((mi - grads) * (c / lr)).transpose(0, 1).reshape(-1, n * d)], 1)
        m_noise = xim * (-(c / lr) * self.var.to(dtype=x.dtype, device=x.device).sqrt().reshape(n, 1, 1))
        return drift, torch.cat([x_noise, m_noise.transpose(0, 1).reshape(-1, n * d)], 1)

    def _tail_mean(self, z: Tensor) -> Tensor:
        """q(z) = E[T 1{T ≥ −z}] for the standardised noise T: φ(z) (Gaussian), (ν + z²)/(ν − 1) p_ν(z)
        (Student-t, finite for ν > 1)."""
        noise = self.oracle.noise
        if noise.name == "gaussian":
            return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        nu = noise.dof
        density = noise.density_at_zero() * (1 + z * z / nu) ** (-(nu + 1) / 2)
        return (nu + z * z) / (nu - 1) * density


SIGNUM = Optimizer(
    "signum", "Signum", "m_i ← βm_i + (1 − β)g_i, x ← x − η sign(Σ_i sign(m_i))  (majority vote)",
    (Hyper("beta", 0.9, "momentum β (Bernstein et al. 2018 use 0.9)", max=1.0, max_open=True),),
    compressor="sign", aggregation="majority", worker=lambda h: momentum(h["beta"]), sde=SignumSDE,
    no_sde="Signum's SDE needs a problem's noise law (Gaussian, Student-t with ν > 2, or none), not a network's "
           "minibatches")
