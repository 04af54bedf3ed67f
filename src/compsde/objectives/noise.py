"""Gradient-noise models: what a worker adds to its exact gradient.

A worker's stochastic gradient is g_i = ∇f_i(x) + Z_i with Z_i = σ_i · T / √B, where T has
independent standard coordinates and B is the batch size (the *batch convention*: a batch of B
samples divides the noise scale by √B, as averaging B independent samples would for finite
variance; for heavy tails it is the convention of docs/theory.md §7, "σ T_ν / √B"):

* ``none``       — T = 0 (full-batch gradients);
* ``gaussian``   — T ~ N(0, 1);
* ``student-t``  — T ~ Student-t with ν degrees of freedom (ν = 1 is Cauchy; the variance is
  infinite for ν ≤ 2, which is where DCSGD breaks and DSignSGD does not).

σ_i may differ per worker (``scale`` given as a list, one per worker).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from compsde.compressors.signs import sign_pm1
from compsde.core.checks import check_choice, check_number, describe

NOISE_NAMES = ("none", "gaussian", "student-t")
#: ν of Student-t noise when none is given.
DEFAULT_NU = 3.0


@functools.lru_cache(maxsize=32)
def _sign_mean_table(nu: float, points: int = 8193) -> Tensor:
    """2F_ν(tan(πu/2)) − 1 at ``points`` evenly spaced u in [−1, 1] (float64)."""
    from scipy import stats

    u = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    z = torch.tan(u * (math.pi / 2.0))
    z[0], z[-1] = -math.inf, math.inf
    return torch.as_tensor(2.0 * stats.t.cdf(z.numpy(), nu) - 1.0, dtype=torch.float64)


def gaussian_sign_mean(mean: Tensor, var: Tensor) -> Tensor:
    """E sign(G) for G ~ N(mean, var) elementwise, with sign(0) = +1: erf(mean / √(2 var)) where var > 0,
    sign(mean) where var = 0 (a point mass). The one Gaussian sign probability of the library (the
    DSignSGD SDE's drift for Gaussian noise, a network's minibatch noise taken Gaussian, several workers'
    averaged noise); ``Noise.sign_mean`` gives the Student-t one. ``mean`` and ``var`` broadcast."""
    sign = sign_pm1(mean)
    z = mean / (2 * var).sqrt().clamp_min(torch.finfo(mean.dtype).tiny)
    return torch.where(var > 0, torch.erf(z), sign)


@dataclass(frozen=True)
class Noise:
    """Additive gradient noise σ_i T / √B.

    Args:
        name: one of ``NOISE_NAMES``.
        scale: σ, one float for every worker or a sequence with one σ_i per worker.
        nu: degrees of freedom ν > 0 of ``student-t`` (default ``DEFAULT_NU``); the other noises have
            none, and refuse one (it stays None).
    """

    name: str = "gaussian"
    scale: float | tuple[float, ...] = 1.0
    nu: float | None = None

    def __post_init__(self) -> None:
        check_choice("noise name", self.name, NOISE_NAMES)
        if isinstance(self.scale, list):
            object.__setattr__(self, "scale", tuple(self.scale))
        scales = self.scale if isinstance(self.scale, tuple) else (self.scale,)
        if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < math.inf for s in scales):
            raise ValueError(f"noise scale must be a finite number ≥ 0 or a list of them (one per worker), got {describe(self.scale)}")
        if self.name == "student-t":
            nu = DEFAULT_NU if self.nu is None else self.nu
            object.__setattr__(self, "nu", check_number("noise nu (Student-t degrees of freedom)", nu, min=0.0,
                                                        min_open=True))
        elif self.nu is not None:
            raise ValueError(f"noise nu = {describe(self.nu)} does not apply to noise {self.name!r}: only 'student-t' "
                             "noise has degrees of freedom ν (leave nu out)")

    @property
    def dof(self) -> float:
        """ν of Student-t noise; ValueError for the other noises, which have none."""
        if self.nu is None:
            raise ValueError(f"noise {self.name!r} has no degrees of freedom ν (only 'student-t' noise has)")
        return self.nu

    @property
    def active(self) -> bool:
        """Whether any noise is added at all."""
        scales = self.scale if isinstance(self.scale, tuple) else (self.scale,)
        return self.name != "none" and any(s > 0 for s in scales)

    def worker_scales(self, workers: int) -> Tensor:
        """σ_i for i < workers as a float64 tensor of shape (workers,)."""
        if isinstance(self.scale, tuple):
            if len(self.scale) == 1:
                return torch.full((workers,), float(self.scale[0]), dtype=torch.float64)
            if len(self.scale) != workers:
                raise ValueError(
                    f"noise scale has {len(self.scale)} per-worker values but the series has workers = {workers}; "
                    "give one value per worker or a single number"
                )
            return torch.tensor(self.scale, dtype=torch.float64)
        return torch.full((workers,), float(self.scale), dtype=torch.float64)

    def standard(self, shape: Sequence[int], generator: torch.Generator, dtype: torch.dtype,
                 out: Tensor | None = None) -> Tensor:
        """I.i.d. standardised draws T of the given shape (written into ``out`` if given), on the
        generator's device."""
        z = torch.empty(tuple(shape), dtype=dtype, device=generator.device) if out is None else out
        if self.name == "none":
            return z.zero_()
        z.normal_(generator=generator)
        if self.name == "student-t":
            # T = Z / sqrt(V/ν), V ~ χ²_ν = 2·Gamma(ν/2). torch's gamma sampler takes the generator
            # (private API, but the only one that does; it is exact for every shape parameter).
            half = torch.full(tuple(z.shape), self.dof / 2.0, dtype=dtype, device=z.device)
            v = torch._standard_gamma(half, generator=generator)
            z.mul_(v.mul_(2.0 / self.dof).rsqrt_())
        return z

    def sample(self, workers: int, batch_shape: Sequence[int], d: int, batch: int,
               generator: torch.Generator, dtype: torch.dtype = torch.float64, out: Tensor | None = None) -> Tensor:
        """Noise for every worker: shape (workers, *batch_shape, d), worker i scaled by σ_i / √batch.

        ``out`` (that shape and dtype) is filled in place, so a simulator can reuse one buffer: a
        fresh (N, R, d) tensor per step would pay page faults on every step.
        """
        if batch < 1:
            raise ValueError(f"batch must be an integer ≥ 1, got {batch!r}")
        t = self.standard((workers, *batch_shape, d), generator, dtype, out)
        s = (self.worker_scales(workers) / math.sqrt(batch)).to(dtype)
        return t.mul_(s.reshape(workers, *([1] * (len(batch_shape) + 1))))

    # ---- distribution facts used by the theory (SDE drift of sign methods, stationary losses)
    def cdf(self, z: Tensor | float) -> Tensor:
        """CDF F of the standardised noise T at z (float64)."""
        zz = torch.as_tensor(z, dtype=torch.float64)
        if self.name == "gaussian":
            return 0.5 * (1.0 + torch.erf(zz / math.sqrt(2.0)))
        if self.name == "student-t":
            from scipy import stats  # imported here: scipy.stats is slow to import

            return torch.as_tensor(stats.t.cdf(zz.numpy(), self.dof), dtype=torch.float64)
        raise ValueError(f"noise {self.name!r} has no continuous distribution")

    def sign_mean(self, z: Tensor) -> Tensor:
        """E sign(z + T) = 2F(z) − 1, elementwise, in the dtype of z (used by the DSignSGD SDE).

        Gaussian: erf(z/√2). Student-t: linear interpolation of a 8193-point table of 2F_ν(tan(πu/2)) − 1
        on u ∈ [−1, 1] (u = (2/π) atan z maps ℝ onto it; for ν = 1 the function is exactly u), error
        below 1e-6; computing F_ν with SciPy at every SDE step would dominate the integration.
        """
        if self.name == "gaussian":
            return gaussian_sign_mean(z, torch.ones((), dtype=z.dtype, device=z.device))
        if self.name == "student-t":
            table = _sign_mean_table(float(self.dof)).to(device=z.device, dtype=z.dtype)
            u = torch.atan(z) * (2.0 / math.pi)  # in [−1, 1]
            pos = (u + 1.0) * ((table.numel() - 1) / 2.0)
            i0 = pos.floor().clamp(0, table.numel() - 2)
            frac = pos - i0
            i0 = i0.long()
            return table[i0] * (1.0 - frac) + table[i0 + 1] * frac
        raise ValueError(f"noise {self.name!r} has no continuous distribution")

    def density_at_zero(self) -> float:
        """f(0) of the standardised noise: 1/√(2π) (Gaussian), Γ((ν+1)/2)/(√(νπ) Γ(ν/2)) (Student-t)."""
        if self.name == "gaussian":
            return 1.0 / math.sqrt(2.0 * math.pi)
        if self.name == "student-t":
            return math.exp(math.lgamma((self.dof + 1) / 2) - math.lgamma(self.dof / 2)) / math.sqrt(self.dof * math.pi)
        raise ValueError(f"noise {self.name!r} has no density")

    def variance(self) -> float:
        """Var T of the standardised noise (inf for Student-t with ν ≤ 2)."""
        if self.name == "none":
            return 0.0
        if self.name == "gaussian":
            return 1.0
        return self.dof / (self.dof - 2.0) if self.dof > 2 else math.inf
