"""Gradient oracles: where a worker's stochastic gradient comes from.

The simulator, the distributed worker, the SDE models and the scaling-rule checks talk to an oracle
only. ``Oracle`` is a problem (exact per-worker gradients ∇f_i, the loss f − f*) with an additive
noise model,

    g_i(x) = ∇f_i(x) + σ_i T / √B,     T with independent standard coordinates (``compsde.objectives.noise``),

drawn per worker from that worker's noise stream (``compsde.core.streams``), so worker i's gradient is
the same whether it is simulated with the others or runs alone in its own process. A problem may shape its
noise by the point (``Problem.noise_std``, e.g. label noise following the Hessian): then
g_i(x) = ∇f_i(x) + σ_i s(x) ⊙ T / √B, with s evaluated where the gradient is.

A step draws each held worker's noise once (``sample``) and evaluates gradients with it (``grads``);
an algorithm that evaluates the gradient twice in a step (SAM, extragradient) calls ``grads`` again
with the same sample — the same minibatch, in the language of a model with data.

For SDE models the oracle also states the law of its noise: the exact gradients (``mean_grads``),
the per-worker variances σ_i² Var(T)/B (``noise_variances``) and E sign(g_i) (``sign_means``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from compsde.compressors.signs import sign_pm1
from compsde.core.checks import MAX_WORKERS, check_int, describe
from compsde.core.streams import Streams
from compsde.core.tensors import resolve_device, resolve_dtype
from compsde.objectives.noise import Noise
from compsde.objectives.problems import Problem

__all__ = ["GradientOracle", "Oracle"]


class GradientOracle:
    """What a run asks of a gradient oracle: ``workers``, ``batch``, ``dim``, ``dtype``, ``device``,
    ``scales`` (per-worker noise scales or None), ``x0()``, ``sample`` / ``grads`` / ``grad_fn`` (a step's
    draw and the workers' gradients with it), ``loss`` / ``grad`` / ``distance`` / ``reference_point``
    (what the recorder measures), and ``evaluate`` (further metrics at logged steps, e.g. held-out
    accuracy; none by default), and for SDE models the law of the noise: ``mean_grads``, ``noise_variances``,
    ``noise_factors`` and ``sign_means``. ``Oracle`` (a problem with a noise model) and
    ``compsde.objectives.network.NetworkOracle`` (a network on data) implement it."""

    workers: int
    batch: int
    noise: Noise
    dim: int
    dtype: torch.dtype
    device: torch.device
    #: per-worker noise scales σ_i/√B (N,), or None without injected noise
    scales: Tensor | None
    #: what the gradients are of: a ``Problem`` (its Jacobian products serve the probe SDEs), or a network
    problem: Any

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> GradientOracle:
        raise NotImplementedError

    def x0(self) -> Tensor:
        raise NotImplementedError

    def loss(self, x: Tensor) -> Tensor:
        """f(x) − f* (a problem) or the loss (a network) at the iterates x (R, d), shape (R,)."""
        raise NotImplementedError

    def grad(self, x: Tensor) -> Tensor:
        """∇f at the iterates x (R, d)."""
        raise NotImplementedError

    def sample(self, streams: Streams, workers: Sequence[int], rows: int, out: Tensor | None = None) -> Any:
        """This step's draw for ``workers`` (noise or minibatches), from their own streams."""
        raise NotImplementedError

    def grads(self, x: Tensor, lo: int, hi: int, sample: Any, *, keep_sample: bool = False) -> Tensor:
        """Workers lo..hi−1's stochastic gradients at x with this step's ``sample``, (hi − lo, R, d)."""
        raise NotImplementedError

    def grad_fn(self, lo: int, hi: int, sample: Any) -> Callable[[Tensor], Tensor]:
        """``grads`` as a function of the point, with the sample fixed (a probe evaluates it again)."""
        raise NotImplementedError

    def mean_grads(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """The exact gradients E g_i at x (M, d) of workers lo ≤ i < hi (default all N), (hi − lo, M, d)."""
        raise NotImplementedError

    def sign_means(self, x: Tensor) -> Tensor:
        """E sign(g_i(x)) per coordinate, (N, M, d)."""
        raise NotImplementedError

    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        """Further metrics at the iterates x (R, d), each of shape (R,)."""
        return {}

    def noise_variances(self) -> Tensor:
        """σ_i² Var(T)/B per worker (float64, (N,)): the (injected) noise's variance per coordinate; refuses
        noise of infinite variance."""
        var = self.noise.variance() if self.noise.active else 0.0
        if math.isinf(var):
            raise ValueError(
                f"this SDE needs finite gradient-noise variance; Student-t noise with nu = {self.noise.nu} has infinite "
                "variance (nu ≤ 2), so DSGD/DCSGD have no diffusion limit there — use dsignsgd, whose SDE stays "
                "bounded for every nu"
            )
        if not self.noise.active:
            return torch.zeros(self.workers, dtype=torch.float64)
        return self.noise.worker_scales(self.workers) ** 2 * var / self.batch

    #: n, the rank per worker of ``noise_factors`` (0: isotropic noise only).
    noise_rank: int = 0

    def noise_factors(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor | None:
        """For SDE models: F_i (hi − lo, M, n, d) of workers lo ≤ i < hi (default all N) of the noise
        covariance's part F_iᵀ F_i beyond the isotropic ``noise_variances``, at points x (M, d); None when
        the noise is isotropic (a problem's noise model)."""
        return None


class Oracle(GradientOracle):
    """N workers' stochastic gradients on ``problem`` with additive ``noise`` at batch size ``batch``.

    Tensors follow ``dtype`` and ``device`` (``to``); the random numbers come from CPU generators and
    are moved to the device, so a CUDA run draws the same numbers as a CPU run.
    """

    def __init__(self, problem: Problem, noise: Noise | None = None, *, workers: int, batch: int = 1,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> None:
        if not isinstance(problem, Problem):
            raise ValueError(f"problem must be a compsde Problem (compsde.objectives.problems.make(...)), got {describe(problem)}")
        noise = Noise("none") if noise is None else noise
        if not isinstance(noise, Noise):
            raise ValueError(f"noise must be a compsde Noise, got {describe(noise)}")
        self.workers = check_int("workers", workers, min=1, max=MAX_WORKERS)
        self.batch = check_int("batch", batch, min=1)
        problem.check_workers(workers)
        noise.worker_scales(workers)  # a per-worker scale list must have one entry per worker
        self.noise = noise
        self.base_problem = problem
        self.dtype = dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.problem = problem.to(dtype, self.device) if (dtype != problem.dtype or self.device.type != "cpu") else problem
        self.dim = self.problem.dim
        #: The problem shapes its noise by the point (``Problem.noise_std``).
        self.shaped = type(problem).noise_std is not Problem.noise_std
        if self.shaped and noise.active:
            self.noise_rank = self.dim  # the SDE models see the shaped covariance as factors (``noise_factors``)
        #: σ_i/√B per worker (float64, CPU), None without noise.
        self.scales = noise.worker_scales(workers) / math.sqrt(batch) if noise.active else None

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Oracle:
        """The same oracle with tensors of ``dtype`` on ``device``."""
        return Oracle(self.base_problem, self.noise, workers=self.workers, batch=self.batch, dtype=dtype, device=device)

    # ---- the problem ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.problem.name

    def x0(self) -> Tensor:
        """The starting point (d,)."""
        return self.problem.x0()

    def loss(self, x: Tensor) -> Tensor:
        """f(x) − f* for x (..., d)."""
        return self.problem.suboptimality(x)

    def grad(self, x: Tensor) -> Tensor:
        """∇f(x), the exact gradient of the global objective."""
        return self.problem.grad(x)

    def distance(self, x: Tensor) -> Tensor | None:
        """‖x − x*‖ (None where x* is unknown)."""
        opt = self.problem.x_opt
        return None if opt is None else (x - opt).norm(dim=-1)

    def reference_point(self) -> Tensor:
        """x* where known, else 0: the centre of the divergence rule."""
        opt = self.problem.x_opt
        return torch.zeros_like(self.x0()) if opt is None else opt

    # ---- stochastic gradients -------------------------------------------------------------------
    def sample(self, streams: Streams, workers: Sequence[int], rows: int, out: Tensor | None = None) -> Tensor | None:
        """This step's noise σ_i T/√B of ``workers`` (n, rows, d), each from its own noise stream, written
        into ``out`` if given (a buffer reused every step: fresh large tensors pay page faults);
        None without noise."""
        if self.scales is None:
            return None
        n, d = len(workers), self.dim
        cpu = self.device.type == "cpu"
        z = out if (out is not None and cpu) else torch.empty(n, rows, d, dtype=self.dtype)
        streams.draw("noise", workers, lambda g, o: self.noise.standard((rows, d), g, self.dtype, out=o), out=z)
        z.mul_(self.scales[list(workers)].to(self.dtype).reshape(n, 1, 1))
        if not cpu:
            z = out.copy_(z) if out is not None else z.to(self.device)
        return z

    def grads(self, x: Tensor, lo: int, hi: int, sample: Tensor | None, *, keep_sample: bool = False) -> Tensor:
        """g_i(x) = ∇f_i(x) + z_i for workers lo ≤ i < hi at x (R, d), or at each worker's own iterate
        x_i for x (hi − lo, R, d) (local methods). The sample (if any) is overwritten with the result,
        unless ``keep_sample`` (to evaluate again with the same sample)."""
        if x.dim() == 3:
            g = self.problem.local_grads(x, self.workers, lo)
        else:
            g = self.problem.worker_grads(x, self.workers, lo, hi)
        if sample is None:
            return g
        if self.shaped:
            s = self.problem.noise_std(x)
            return (sample * s).add_(g) if keep_sample else sample.mul_(s).add_(g)
        return sample + g if keep_sample else sample.add_(g)

    def evaluate(self, x: Tensor) -> dict[str, Tensor]:
        """The problem's further measurements (``Problem.metrics``, e.g. a valley's sharpness)."""
        return self.problem.metrics(x)

    def noise_variances(self) -> Tensor:
        """σ_i² Var(T)/B per worker, the isotropic part of the noise: 0 when the problem shapes its noise
        (then all of it is in ``noise_factors``)."""
        var = super().noise_variances()  # refuses infinite variance either way
        return torch.zeros_like(var) if self.shaped else var

    def noise_factors(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor | None:
        """For shaped noise (``Problem.noise_std``): F_i = σ_i √Var(T)/√B · diag(s(x)) of workers lo ≤ i < hi
        (default all), (hi − lo, M, d, d), so that F_iᵀF_i is the covariance of worker i's noise at x (M, d);
        None for isotropic noise. O(M d²) memory: shaped noise is for small problems."""
        if not (self.shaped and self.noise.active):
            return None
        sd = (super().noise_variances()[lo:hi].sqrt()).to(device=x.device, dtype=x.dtype)
        s = self.problem.noise_std(x)  # (M, d)
        return sd.reshape(-1, 1, 1, 1) * torch.diag_embed(s).unsqueeze(0)

    def grad_fn(self, lo: int, hi: int, sample: Tensor | None) -> Callable[[Tensor], Tensor]:
        """params → the workers' gradients with this step's sample, for algorithms that evaluate the
        gradient more than once per step (``Algorithm.evaluate``); the sample is kept intact."""
        return lambda x: self.grads(x, lo, hi, sample, keep_sample=True)

    # ---- the law of the noise (for SDE models) --------------------------------------------------
    def mean_grads(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """∇f_i(x) of workers lo ≤ i < hi (default every worker), (hi − lo, ..., d)."""
        return self.problem.worker_grads(x, self.workers, lo, hi)

    def sign_means(self, x: Tensor) -> Tensor:
        """E sign(g_i(x)) = 2F(√B ∇f_i/σ_i) − 1 per coordinate, (N, ..., d), F the CDF of T (sign(0) = +1)."""
        gi = self.mean_grads(x)
        sign = sign_pm1(gi).to(x.dtype)
        if not self.noise.active:
            return sign
        shape = (self.workers,) + (1,) * (gi.dim() - 1)
        sig = self.noise.worker_scales(self.workers).to(device=x.device, dtype=x.dtype).reshape(shape)
        if self.shaped:  # σ_i s_j(x): coordinates without noise (s_j = 0) have the sign of their gradient
            sig = sig * self.problem.noise_std(x)
        z = math.sqrt(self.batch) * gi / sig.clamp_min(torch.finfo(x.dtype).tiny)
        return torch.where(sig > 0, self.noise.sign_mean(z), sign)

    def describe(self) -> str:
        shaped = " shaped by the problem" if self.shaped and self.noise.active else ""
        return f"{self.problem.describe()}, {self.noise.name} noise{shaped}, N = {self.workers}, B = {self.batch}"
