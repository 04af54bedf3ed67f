"""Optimisation problems with per-worker objectives f_i, exact gradients and, where one exists, a known optimum.

The global objective is f = (1/N) Σ_i f_i. Every problem works on batches of points x of shape
(..., d) and returns per-worker gradients of shape (N, ..., d).

Heterogeneity (``heterogeneity`` = ζ > 0) tilts each worker's objective linearly,
f_i(x) = f(x) − ⟨b_i, x⟩ with Σ_i b_i = 0 and ‖b_i‖ ≈ ζ, so the workers disagree while f, its
optimum x* and f* stay exactly those of the homogeneous problem, whatever N is. The Top-1
counter-example is heterogeneous by construction instead.

Problems: ``quadratic`` (saddles with a negative ``eig_min``), ``linear-regression``,
``logistic-regression``, ``top1-counterexample``, ``l0l1-cosh``, ``double-well`` (a sharp and a flat
minimum), ``sharpness-valley`` (a manifold of minima of varying sharpness, with label-like noise), and, in ``compsde.objectives.games``, ``bilinear-game`` and ``quadratic-game``. Build one with
``make(name, dim=..., **params)``. ``jvp`` / ``vjp`` give the field's Jacobian products (SDE models).
"""

from __future__ import annotations

import functools
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from compsde.compressors.signs import sign_pm1
from compsde.core.checks import check_bool, check_int, check_number, check_seed, describe
from compsde.core.tensors import check_memory


class Problem:
    """Base class. Tensors are float64 on the CPU at construction; ``to(dtype, device)`` gives a cast copy."""

    name: ClassVar[str] = ""
    #: Number of workers the problem is defined for (None: any N).
    fixed_workers: ClassVar[int | None] = None

    dim: int
    #: Minimiser x* (shape (d,)) or None if unknown.
    x_opt: Tensor | None = None
    #: Minimum f* (0.0 if unknown and the loss is reported as f itself).
    f_opt: float = 0.0
    heterogeneity: float = 0.0
    seed: int = 0
    x0_scale: float = 1.0
    #: dtype of the problem's tensors (see ``to``).
    dtype: torch.dtype = torch.float64

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every problem's ``loss`` and ``grad`` check their point first (``check_point``), so a wrong
        shape is a ValueError naming it rather than a broadcasting error from inside the formula."""
        super().__init_subclass__(**kwargs)
        for meth in ("loss", "grad"):
            fn = cls.__dict__.get(meth)
            if fn is not None and not getattr(fn, "_checks_point", False):
                setattr(cls, meth, _checking_point(fn))

    def check_point(self, x: Any, name: str = "x") -> None:
        """Refuse (ValueError) a point that is not a floating-point tensor of shape (..., d)."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{self.name}: {name} must be a torch.Tensor of shape (..., d = {self.dim}), got {describe(x)}")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: {name} must have shape (..., d = {self.dim}), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{self.name}: {name} must be a floating-point tensor, got dtype {x.dtype}")

    def loss(self, x: Tensor) -> Tensor:
        """f(x) for x of shape (..., d); returns shape (...)."""
        raise NotImplementedError

    def grad(self, x: Tensor) -> Tensor:
        """∇f(x), same shape as x."""
        raise NotImplementedError

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """J(x) v, the field's (∇f's: the Hessian's) Jacobian times v, for rows of x and v (..., d): ∇f(v)
        for a ``linear`` field, Jᵀv (``vjp``) for a symmetric one, else ``jvp_by_vjp``."""
        if self.linear:
            return self.grad(v)
        if self.symmetric:
            return self.vjp(x, v)
        return jvp_by_vjp(self.grad, x, v)

    def vjp(self, x: Tensor, v: Tensor) -> Tensor:
        """J(x)ᵀ v (for a loss J is the symmetric Hessian; for a game it is not), by reverse-mode autodiff
        (``torch.func.vjp``: it composes with the SDE models' own transforms) unless the problem overrides it."""
        if self.linear and self.symmetric:
            return self.grad(v)
        return torch.func.vjp(self.grad, x)[1](v)[0]

    #: The field is linear, ∇f(x) = J x (so J v = ∇f(v), and the SDE models skip autodiff).
    linear: ClassVar[bool] = False
    #: Its Jacobian is symmetric (a loss's Hessian: every problem but a game).
    symmetric: ClassVar[bool] = True

    def default_x0(self) -> Tensor:
        """The problem's own starting point before ``x0_scale`` (shape (d,))."""
        return torch.ones(self.dim, dtype=torch.float64)

    def x0(self) -> Tensor:
        """Starting point: the problem's default scaled by ``x0_scale``."""
        return (self.x0_scale * self.default_x0()).to(self.dtype)

    def worker_grads(self, x: Tensor, workers: int, lo: int = 0, hi: int | None = None) -> Tensor:
        """∇f_i(x) for lo ≤ i < hi (default: all ``workers``) at one iterate x (..., d): shape
        (hi − lo, ..., d). Homogeneous workers get an expanded view of one gradient (no copy)."""
        self.check_workers(workers)
        hi = workers if hi is None else hi
        g = self.grad(x)
        if self.heterogeneity == 0.0:
            return g.expand(hi - lo, *g.shape)
        b = self.tilts(workers)[lo:hi].to(device=x.device, dtype=x.dtype)
        return g.unsqueeze(0) - b.reshape(hi - lo, *([1] * (x.dim() - 1)), self.dim)

    def local_grads(self, xs: Tensor, workers: int, lo: int = 0) -> Tensor:
        """∇f_i(x_i) for workers lo ≤ i < lo + n at their own points xs (n, ..., d)."""
        n = xs.shape[0]
        if self.heterogeneity == 0.0 and type(self).worker_grads is Problem.worker_grads:
            return self.grad(xs)
        return torch.stack([self.worker_grads(xs[j], workers, lo + j, lo + j + 1)[0] for j in range(n)])

    def tilts(self, workers: int) -> Tensor:
        """The heterogeneity shifts b_i (shape (workers, d)), centred so that Σ_i b_i = 0."""
        return _tilts(self.seed, workers, self.dim, float(self.heterogeneity))

    def check_workers(self, workers: int) -> None:
        check_int("workers", workers, min=1)
        if self.fixed_workers is not None and workers != self.fixed_workers:
            raise ValueError(f"problem {self.name!r} is defined for workers = {self.fixed_workers}, got workers = {workers}")

    def suboptimality(self, x: Tensor) -> Tensor:
        """f(x) − f*."""
        return self.loss(x) - self.f_opt

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Problem:
        """A shallow copy whose floating tensors have the given dtype and live on ``device``."""
        new = object.__new__(type(self))
        for k, v in vars(self).items():
            if isinstance(v, Tensor):
                v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
            setattr(new, k, v)
        new.dtype = dtype
        return new

    def describe(self) -> str:
        return f"{self.name}(d={self.dim})"

    def noise_std(self, x: Tensor) -> Tensor | None:
        """The gradient noise's per-coordinate factor s(x) at the points x (..., d), or None (the default):
        isotropic noise. A problem that returns s(x) gets the noise σ_i s(x) ⊙ T/√B instead of σ_i T/√B
        (``compsde.objectives.Oracle``), evaluated wherever the gradient is: a state-dependent noise such
        as label noise, whose covariance follows the Hessian."""
        return None

    def metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Further measurements of the problem at the points x (R, d), each of shape (R,), recorded at the
        logged steps (metrics.csv, summary.json); none by default."""
        return {}


def _checking_point(fn: Any) -> Any:
    """``fn(self, x)`` preceded by ``self.check_point(x)``."""
    @functools.wraps(fn)
    def checked(self: Problem, x: Any) -> Tensor:
        self.check_point(x)
        return fn(self, x)

    checked._checks_point = True  # type: ignore[attr-defined]
    return checked


def jvp_by_vjp(fn: Any, x: Tensor, v: Tensor) -> Tensor:
    """J v for the Jacobian J of ``fn`` at x by two reverse passes: u ↦ Jᵀu is linear, and its own vjp
    with cotangent v is J v. (torch's forward mode would do it in one pass, but its decompositions call
    the deprecated ``torch.jit.script`` in torch 2.13.)"""
    pullback = torch.func.vjp(fn, x)[1]
    return torch.func.vjp(lambda u: pullback(u)[0], torch.zeros_like(v))[1](v)[0]


@lru_cache(maxsize=64)
def _tilts(seed: int, workers: int, dim: int, zeta: float) -> Tensor:
    if workers == 1:
        return torch.zeros(1, dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed((10_007 * seed + workers) % (1 << 64))
    b = torch.randn(workers, dim, generator=gen, dtype=torch.float64)
    b = b - b.mean(0, keepdim=True)
    return zeta * b / math.sqrt(dim)


_REGISTRY: dict[str, type[Problem]] = {}


def register(cls: type[Problem]) -> type[Problem]:
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return list(_REGISTRY)


def problem_class(name: str) -> type[Problem]:
    """The registered class of a problem name (ValueError listing the valid names otherwise)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown problem {describe(name)}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make(name: str, **params: Any) -> Problem:
    """Build a problem by name; unknown names or parameters raise a ValueError listing the valid ones."""
    import inspect

    cls = problem_class(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = sorted(set(params) - set(valid))
    if bad:
        raise ValueError(f"problem {name!r} does not take {', '.join(bad)}; valid parameters: {', '.join(valid)}")
    return cls(**params)


def _check_common(name: str, dim: int, heterogeneity: float, x0_scale: float, seed: int = 0) -> None:
    check_int(f"problem {name!r}: dim", dim, min=1)
    # A problem keeps a few d-vectors (spectrum, start, optimum) and a run many more: refuse early what
    # cannot even hold those.
    check_memory(8 * 8 * dim, f"problem {name!r} with dim = {dim}", "reduce dim")
    check_number(f"problem {name!r}: heterogeneity", heterogeneity, min=0.0)
    check_number(f"problem {name!r}: x0_scale", x0_scale)
    check_seed(f"problem {name!r}: seed", seed)


@register
class Quadratic(Problem):
    """f(x) = ½ xᵀ H x with H = Q diag(h) Qᵀ, h evenly spaced in [eig_min, eig_max].

    Q = I (``rotate=False``, diagonal: ``hessian`` is None and ``eigs`` holds h) or a random orthogonal
    matrix (``hessian`` = Q diag(h) Qᵀ). x* = 0, f* = 0, start x⁰ = 1. A negative ``eig_min`` makes
    x = 0 a saddle (f is then unbounded below and the reported loss f(x) − f(0) can be negative):
    the problem of SAM's attraction to saddles.
    """

    name = "quadratic"
    linear = True

    def __init__(self, dim: int = 10, eig_min: float = 0.5, eig_max: float = 2.0, rotate: bool = False,
                 heterogeneity: float = 0.0, seed: int = 0, x0_scale: float = 1.0) -> None:
        _check_common(self.name, dim, heterogeneity, x0_scale, seed)
        eig_min = check_number("quadratic: eig_min", eig_min)
        eig_max = check_number("quadratic: eig_max", eig_max)
        check_bool("quadratic: rotate", rotate)
        if not eig_min <= eig_max:
            raise ValueError(f"quadratic: need eig_min ≤ eig_max, got eig_min={eig_min!r}, eig_max={eig_max!r}")
        if rotate:  # Q, R, the Hessian and the QR workspace: about four d × d float64 matrices
            check_memory(4 * 8 * dim * dim, f"quadratic with rotate = true and dim = {dim}",
                         "reduce dim or use rotate = false (a diagonal Hessian needs O(d) memory)")
        self.dim, self.heterogeneity, self.seed, self.x0_scale = dim, float(heterogeneity), seed, float(x0_scale)
        self.eig_min, self.eig_max, self.rotate = float(eig_min), float(eig_max), bool(rotate)
        self.eigs = torch.linspace(eig_min, eig_max, dim, dtype=torch.float64) if dim > 1 else torch.tensor([eig_max], dtype=torch.float64)
        if rotate:
            gen = torch.Generator().manual_seed(seed)
            q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
            self.q: Tensor | None = q * torch.sign(torch.diagonal(r))
            self.hessian = (self.q * self.eigs) @ self.q.T
        else:
            self.q = None
            self.hessian = None  # diagonal: use ``eigs`` (a dense d × d matrix is never built)
        self.x_opt = torch.zeros(dim, dtype=torch.float64)
        self.f_opt = 0.0

    def grad(self, x: Tensor) -> Tensor:
        return x * self.eigs if self.q is None else x @ self.hessian

    def loss(self, x: Tensor) -> Tensor:
        return 0.5 * (x * self.grad(x)).sum(-1)


class _DataProblem(Problem):
    """Shared parts of the regression problems: a data matrix A (m, d) and targets b (m,).

    Data: ``dataset = "synthetic"`` (``samples`` × ``dim`` Gaussian features, defaults 200 × 10) or the
    path of a LIBSVM file, whose number of features gives d unless ``dim`` is set.
    """

    a: Tensor
    b: Tensor

    def _setup(self, dim: int | None, samples: int | None, dataset: str, heterogeneity: float, seed: int,
               x0_scale: float, classification: bool) -> None:
        _check_common(self.name, 10 if dim is None else dim, heterogeneity, x0_scale, seed)
        if samples is not None:
            check_int(f"{self.name}: samples", samples, min=1)
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"{self.name}: dataset must be 'synthetic' or the path of a LIBSVM file, got {describe(dataset)}")
        if dataset == "synthetic":
            m, d = 200 if samples is None else samples, 10 if dim is None else dim
            check_memory(3 * 8 * m * d, f"{self.name} with samples = {m} and dim = {d}", "reduce samples or dim")
        if dataset != "synthetic" and samples is not None:
            raise ValueError(f"{self.name}: samples applies to synthetic data only; a file ({dataset!r}) has its own")
        self.heterogeneity, self.seed, self.x0_scale = float(heterogeneity), seed, float(x0_scale)
        self.a, self.b = _load(dataset, 200 if samples is None else samples, dim, seed, classification)
        self.dim = self.a.shape[1]


def synthetic_regression(samples: int, dim: int, seed: int, classification: bool) -> tuple[Tensor, Tensor]:
    """Gaussian features with a planted model: b = A w + 0.1 ε (regression) or sign(A w + ε) (labels ±1)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(samples, dim, generator=gen, dtype=torch.float64)
    w = torch.randn(dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    eps = torch.randn(samples, generator=gen, dtype=torch.float64)
    if classification:
        return a, sign_pm1(a @ w + 0.5 * eps)
    return a, a @ w + 0.1 * eps


def _load(dataset: str, samples: int, dim: int | None, seed: int, classification: bool) -> tuple[Tensor, Tensor]:
    if dataset == "synthetic":
        return synthetic_regression(samples, 10 if dim is None else dim, seed, classification)
    from compsde.objectives.data import load_libsvm

    path = Path(dataset)
    if not path.is_file():
        raise ValueError(f"dataset must be 'synthetic' or the path of a LIBSVM-format file, got {dataset!r} (no such file)")
    a, b = load_libsvm(path, n_features=dim)
    if classification:
        values = sorted(set(b.unique().tolist()))
        if len(values) != 2:
            raise ValueError(f"{path}: logistic regression needs labels with exactly two values, found {len(values)}: "
                             f"{', '.join(f'{v:g}' for v in values[:5])}{' ...' if len(values) > 5 else ''}")
        b = torch.where(b == values[1], 1.0, -1.0).to(torch.float64)
    return a, b


@register
class LinearRegression(_DataProblem):
    """f(x) = (1/2m) ‖A x − b‖², x* by least squares. Data: synthetic (default) or a LIBSVM file."""

    name = "linear-regression"

    def __init__(self, dim: int | None = None, samples: int | None = None, dataset: str = "synthetic",
                 heterogeneity: float = 0.0, seed: int = 0, x0_scale: float = 1.0) -> None:
        self._setup(dim, samples, dataset, heterogeneity, seed, x0_scale, classification=False)
        self.x_opt = torch.linalg.lstsq(self.a, self.b.unsqueeze(-1)).solution.squeeze(-1)
        self.f_opt = float(self.loss(self.x_opt))

    def loss(self, x: Tensor) -> Tensor:
        r = x @ self.a.T - self.b
        return 0.5 * (r * r).mean(-1)

    def grad(self, x: Tensor) -> Tensor:
        return (x @ self.a.T - self.b) @ self.a / self.a.shape[0]


@register
class LogisticRegression(_DataProblem):
    """f(x) = (1/m) Σ_j log(1 + exp(−y_j ⟨a_j, x⟩)) + (λ/2)‖x‖², labels y ∈ {−1, +1}.

    Strongly convex for λ > 0; x* is computed once by Newton's method in float64.
    """

    name = "logistic-regression"

    def __init__(self, dim: int | None = None, samples: int | None = None, dataset: str = "synthetic",
                 l2: float = 1e-3, heterogeneity: float = 0.0, seed: int = 0, x0_scale: float = 1.0) -> None:
        check_number("logistic-regression: l2", l2, min=0.0)
        self.l2 = float(l2)
        self._setup(dim, samples, dataset, heterogeneity, seed, x0_scale, classification=True)
        self.ya = self.b.unsqueeze(-1) * self.a  # rows y_j a_j
        self.x_opt = self._newton()
        self.f_opt = float(self.loss(self.x_opt))

    def loss(self, x: Tensor) -> Tensor:
        return torch.nn.functional.softplus(-(x @ self.ya.T)).mean(-1) + 0.5 * self.l2 * (x * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(-(x @ self.ya.T))  # (..., m)
        return -(s @ self.ya) / self.ya.shape[0] + self.l2 * x

    def _newton(self, iters: int = 100) -> Tensor:
        x = torch.zeros(self.dim, dtype=torch.float64)
        m = self.ya.shape[0]
        for _ in range(iters):
            s = torch.sigmoid(-(self.ya @ x))
            h = (self.ya.T * (s * (1 - s))) @ self.ya / m + (self.l2 + 1e-12) * torch.eye(self.dim, dtype=torch.float64)
            step = torch.linalg.solve(h, self.grad(x))
            x = x - step
            if float(step.norm()) < 1e-13 * (1 + float(x.norm())):
                break
        return x


@register
class Top1Counterexample(Problem):
    """The n = d = 3 problem of Beznosikov et al. 2020 on which Top-1 distributed GD diverges.

    f_i(x) = ⟨a_i, x⟩² + ¼‖x‖², a_1 = (−3, 2, 2), a_2 = (2, −3, 2), a_3 = (2, 2, −3); x* = 0, f* = 0.
    From x⁰ = (t, t, t), Top-1 compressed GD gives x^k = (1 + 11η/6)^k x⁰ for every η > 0, while error
    feedback converges. t = ``x0_scale``.
    """

    name = "top1-counterexample"
    fixed_workers = 3

    def __init__(self, dim: int = 3, x0_scale: float = 1.0) -> None:
        if isinstance(dim, bool) or dim != 3:
            raise ValueError(f"top1-counterexample is defined for dim = 3 only, got dim = {describe(dim)}")
        _check_common(self.name, dim, 0.0, x0_scale)
        self.dim, self.x0_scale = 3, float(x0_scale)
        self.avec = torch.tensor([[-3.0, 2.0, 2.0], [2.0, -3.0, 2.0], [2.0, 2.0, -3.0]], dtype=torch.float64)
        self.x_opt = torch.zeros(3, dtype=torch.float64)
        self.f_opt = 0.0

    def worker_grads(self, x: Tensor, workers: int, lo: int = 0, hi: int | None = None) -> Tensor:
        self.check_workers(workers)
        inner = x @ self.avec.T  # (..., 3): ⟨a_i, x⟩
        g = 2.0 * inner.unsqueeze(-1) * self.avec.reshape(*([1] * (x.dim() - 1)), 3, 3) + 0.5 * x.unsqueeze(-2)
        return g.movedim(-2, 0)[lo:hi]  # (hi − lo, ..., d)

    def loss(self, x: Tensor) -> Tensor:
        return ((x @ self.avec.T) ** 2).mean(-1) + 0.25 * (x * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        return self.worker_grads(x, 3).mean(0)


@register
class L0L1Cosh(Problem):
    """f(x) = Σ_j (cosh(s x_j) − 1)/s², s = ``sharpness``.

    (L0, L1)-smooth but not L-smooth: ∇²f = diag(cosh(s x_j)) is unbounded, yet
    cosh(s x_j) ≤ 1 + s|sinh(s x_j)/s| gives ‖∇²f(x)‖ ≤ L0 + L1‖∇f(x)‖ with L0 = 1, L1 = s.
    x* = 0, f* = 0; default start x⁰ = 3·1 (far enough that the curvature is ~10× the minimum's).
    """

    name = "l0l1-cosh"

    def __init__(self, dim: int = 10, sharpness: float = 1.0, heterogeneity: float = 0.0, seed: int = 0,
                 x0_scale: float = 1.0) -> None:
        _check_common(self.name, dim, heterogeneity, x0_scale, seed)
        check_number("l0l1-cosh: sharpness", sharpness, min=0.0, min_open=True)
        self.dim, self.heterogeneity, self.seed, self.x0_scale = dim, float(heterogeneity), seed, float(x0_scale)
        self.sharpness = float(sharpness)
        self.x_opt = torch.zeros(dim, dtype=torch.float64)
        self.f_opt = 0.0

    def default_x0(self) -> Tensor:
        return torch.full((self.dim,), 3.0, dtype=torch.float64)

    def loss(self, x: Tensor) -> Tensor:
        s = self.sharpness
        return ((torch.cosh(s * x) - 1.0) / (s * s)).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        s = self.sharpness
        return torch.sinh(s * x) / s


@register
class DoubleWell(Problem):
    """A sharp and a flat minimum per coordinate: f(x) = Σ_j φ(x_j), a separable double well.

        φ(u) = gap + (B − gap) ψ(u/ℓ_s)   for u < 0,        ψ(w) = (w² − 1)² / (1 + w²),
        φ(u) = B ψ(u/ℓ_f)                 for u ≥ 0,

    with ℓ_s = 2 sqrt((B − gap)/h_sharp) and ℓ_f = 2 sqrt(B/h_flat). ψ has minima ψ(±1) = 0 with ψ''(±1) = 4,
    a maximum ψ(0) = 1 with ψ''(0) = −6 and ψ'(0) = 0, and grows like w² (curvature bounded), so φ is C¹
    (its curvature jumps at the barrier, u = 0, only) with a sharp minimum at u = −ℓ_s (value ``gap``,
    curvature φ'' = ``h_sharp``) and a flat one at u = ℓ_f (value 0, curvature ``h_flat``), separated by a
    barrier of height ``barrier`` = B above the flat minimum. ``gap`` ∈ [0, B): 0 gives two minima of
    equal depth. x* = ℓ_f·1 (every coordinate in the flat minimum; the global one), f* = 0, and the
    start x⁰ = −ℓ_s·1 (every coordinate in the sharp minimum) times ``x0_scale``. The problem of SAM's
    preference for flat minima: which methods leave the sharp well.
    """

    name = "double-well"

    def __init__(self, dim: int = 10, h_sharp: float = 20.0, h_flat: float = 1.0, barrier: float = 1.0,
                 gap: float = 0.0, heterogeneity: float = 0.0, seed: int = 0, x0_scale: float = 1.0) -> None:
        _check_common(self.name, dim, heterogeneity, x0_scale, seed)
        h_flat = check_number("double-well: h_flat", h_flat, min=0.0, min_open=True)
        if not isinstance(h_sharp, bool) and isinstance(h_sharp, (int, float)) and h_sharp < h_flat:
            raise ValueError(f"double-well: h_sharp must be ≥ h_flat = {h_flat!r} (the sharp minimum is the more "
                             f"curved one), got {h_sharp!r}")
        h_sharp = check_number("double-well: h_sharp", h_sharp, min=h_flat)
        barrier = check_number("double-well: barrier", barrier, min=0.0, min_open=True)
        gap = check_number("double-well: gap", gap, min=0.0, max=barrier, max_open=True)
        self.dim, self.heterogeneity, self.seed, self.x0_scale = dim, float(heterogeneity), seed, float(x0_scale)
        self.h_sharp, self.h_flat, self.barrier, self.gap = h_sharp, h_flat, barrier, gap
        self.l_sharp = 2.0 * math.sqrt((barrier - gap) / h_sharp)
        self.l_flat = 2.0 * math.sqrt(barrier / h_flat)
        self.x_opt = torch.full((dim,), self.l_flat, dtype=torch.float64)
        self.f_opt = 0.0

    def default_x0(self) -> Tensor:
        return torch.full((self.dim,), -self.l_sharp, dtype=torch.float64)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per coordinate: w = u/ℓ, the height scale of ψ, and 1/ℓ on the coordinate's side of the barrier."""
        left = x < 0
        inv = torch.where(left, x.new_tensor(1.0 / self.l_sharp), x.new_tensor(1.0 / self.l_flat))
        return x * inv, torch.where(left, x.new_tensor(self.barrier - self.gap), x.new_tensor(self.barrier)), inv

    def loss(self, x: Tensor) -> Tensor:
        w, height, _ = self._parts(x)
        w2 = w * w
        psi = (w2 - 1.0).square() / (1.0 + w2)
        return (torch.where(x < 0, x.new_tensor(self.gap), x.new_tensor(0.0)) + height * psi).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        w, height, inv = self._parts(x)
        w2 = w * w
        return height * inv * (2.0 * w * (w2 - 1.0) * (w2 + 3.0) / (1.0 + w2).square())

    def describe(self) -> str:
        return f"{self.name}(d={self.dim}, h={self.h_sharp:g}/{self.h_flat:g})"


@register
class SharpnessValley(Problem):
    """A valley of minima whose sharpness varies along it: f(x, y) = ½ h(y) ‖x‖² with h(y) = h0 e^y.

    The point is z = (x, y), x ∈ ℝ^m the first m = d − 1 coordinates and y the last. The minimisers form
    the line Γ = {x = 0} (f* = 0 along all of it; ``x_opt`` is None: there is no single minimiser), and the
    Hessian there is diag(h(y) I_m, 0): the sharpness of the minimum (0, y) is h(y), and moving along Γ
    towards smaller y flattens it. The gradient is ∇_x f = h(y) x, ∂_y f = ½ h(y) ‖x‖².

    Noise (``noise_std``): label-noise-like, in the normal directions only. The problem scales the
    oracle's draw by s(x) = (√h(y), …, √h(y), 0), so the gradient noise is σ √h(y) T_x/√B in x and 0 in y:
    on Γ its covariance is σ² ∇²f/B, the covariance of label noise (a model f_j = √h(y) x_j fitted to
    labels 0 + σ ε_j). Exact label noise would also put σ h'(y)/(2√h(y)) Σ_j ε_j x_j into y, which vanishes
    on Γ and leaves the slow SDE unchanged (docs/theory.md §5.5). The noise has no component along Γ
    (Σ_∥ = 0), so the slow motion of y is a deterministic drift whose rate the slow SDEs of SGD, Local
    SGD and QSR predict in closed form (``compsde.sde.slow``).

    Start: x⁰ = (``x0_scale``/√m)·1 (‖x⁰‖ = ``x0_scale``), y⁰ = 0, so h(y⁰) = ``h0``. Gradient flow from
    (x, y) ends on Γ at y − ‖x‖²/4 (d‖x‖²/dt = −2h‖x‖² and dy/dt = −½h‖x‖², so dy/d‖x‖² = 1/4).
    ``metrics`` reports the sharpness h(y) at the iterate.
    """

    name = "sharpness-valley"

    def __init__(self, dim: int = 11, h0: float = 1.0, x0_scale: float = 1.0) -> None:
        _check_common(self.name, dim, 0.0, x0_scale)
        if isinstance(dim, int) and dim < 2:
            raise ValueError(f"sharpness-valley: dim must be an integer ≥ 2 (m = dim − 1 ≥ 1 normal directions and "
                             f"the coordinate y along the valley), got {dim!r}")
        h0 = check_number("sharpness-valley: h0", h0, min=0.0, min_open=True)
        self.dim, self.h0, self.x0_scale = dim, float(h0), float(x0_scale)
        self.x_opt = None
        self.f_opt = 0.0

    @property
    def normal_dim(self) -> int:
        """m = d − 1, the number of directions normal to the valley."""
        return self.dim - 1

    def curvature(self, y: Tensor) -> Tensor:
        """h(y) = h0 e^y (so h'(y) = h(y))."""
        return self.h0 * torch.exp(y)

    def default_x0(self) -> Tensor:
        """(1/√m)·1 in x and y⁰ = 0, so ``x0_scale`` sets ‖x⁰‖ and h(y⁰) = h0 whatever it is."""
        x0 = torch.full((self.dim,), 1.0 / math.sqrt(self.normal_dim), dtype=torch.float64)
        x0[-1] = 0.0
        return x0

    def loss(self, x: Tensor) -> Tensor:
        return 0.5 * self.curvature(x[..., -1]) * x[..., :-1].square().sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        h = self.curvature(x[..., -1]).unsqueeze(-1)
        normal = x[..., :-1]
        return torch.cat([h * normal, 0.5 * h * normal.square().sum(-1, keepdim=True)], dim=-1)

    def noise_std(self, x: Tensor) -> Tensor:
        """s(x) = (√h(y) 1_m, 0): the noise σ s ⊙ T/√B has covariance σ² diag(h(y) I_m, 0)/B, σ²∇²f/B on Γ."""
        root = self.curvature(x[..., -1:]).sqrt()
        return torch.cat([root.expand(*x.shape[:-1], self.normal_dim), torch.zeros_like(root)], dim=-1)

    def metrics(self, x: Tensor) -> dict[str, Tensor]:
        """``sharpness``: h(y), the curvature of the valley at the iterate's y (the sharpness of the minimum (0, y))."""
        return {"sharpness": self.curvature(x[..., -1])}

    def projection(self, x: Tensor) -> Tensor:
        """y of Φ(x, y), the end of gradient flow from (x, y): y − ‖x‖²/4, shape (...)."""
        return x[..., -1] - 0.25 * x[..., :-1].square().sum(-1)

    def describe(self) -> str:
        return f"{self.name}(d={self.dim}, h0={self.h0:g})"
