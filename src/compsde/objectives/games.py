"""Quadratic games: two players x, y ∈ ℝⁿ, one minimising and one maximising f(x, y).

A run on a game steps z = (x, y) ∈ ℝ^{2n} along the game's vector field

    F(z) = (∇ₓf, −∇ᵧf),

which the problem reports as its "gradient" (so SGDA is gradient descent on F, and every method of
``compsde.algorithms`` runs on a game unchanged). Both games here are diagonal, one 2 × 2 block per
coordinate pair (x_j, y_j):

* ``quadratic-game``  f = ½ xᵀAx + xᵀBy − ½ yᵀCy with A, B, C diagonal, a_j, b_j, c_j evenly spaced in
                      [a_min, a_max], [coupling_min, coupling_max], [c_min, c_max]:
                      F(z) = M z, M_j = [[a_j, b_j], [−b_j, c_j]]
* ``bilinear-game``   f = xᵀBy (A = C = 0): M_j = [[0, b_j], [−b_j, 0]], a rotation field

The equilibrium is z* = 0 (M is invertible: a_j c_j + b_j² ≠ 0 is checked), and the reported loss is
the squared distance to it, ‖z − z*‖² (a game has no loss to minimise; the ``distance`` column of a
run is ‖z − z*‖). Start z⁰ = 1 (times ``x0_scale``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from compsde.core.checks import check_int, check_number
from compsde.objectives.problems import Problem, _check_common, register

__all__ = ["BilinearGame", "GAMES", "QuadraticGame"]

#: The names of the game problems (their loss is ‖z − z*‖²).
GAMES = ("quadratic-game", "bilinear-game")


def _spread(lo: float, hi: float, n: int, game: str, what: str) -> Tensor:
    if not lo <= hi:
        raise ValueError(f"{game}: need {what}_min ≤ {what}_max, got {what}_min = {lo!r} > {what}_max = {hi!r}")
    return torch.linspace(lo, hi, n, dtype=torch.float64) if n > 1 else torch.tensor([hi], dtype=torch.float64)


@register
class QuadraticGame(Problem):
    """f(x, y) = ½ xᵀAx + xᵀBy − ½ yᵀCy (see module doc); ``player_dim`` = n, d = 2n."""

    name = "quadratic-game"
    linear = True
    symmetric = False

    def __init__(self, player_dim: int = 5, a_min: float = 0.2, a_max: float = 1.0, coupling_min: float = 0.5,
                 coupling_max: float = 2.0, c_min: float = 0.2, c_max: float = 1.0, heterogeneity: float = 0.0,
                 seed: int = 0, x0_scale: float = 1.0) -> None:
        where = self.name
        n = check_int(f"{where}: player_dim", player_dim, min=1)
        _check_common(where, 2 * n, heterogeneity, x0_scale, seed)
        vals = {k: check_number(f"{where}: {k}", v) for k, v in
                (("a_min", a_min), ("a_max", a_max), ("coupling_min", coupling_min), ("coupling_max", coupling_max),
                 ("c_min", c_min), ("c_max", c_max))}
        self.a = _spread(vals["a_min"], vals["a_max"], n, where, "a")
        self.b = _spread(vals["coupling_min"], vals["coupling_max"], n, where, "coupling")
        self.c = _spread(vals["c_min"], vals["c_max"], n, where, "c")
        det = self.a * self.c + self.b * self.b
        if bool((det.abs() < 1e-12).any()):
            raise ValueError(f"{where}: the game has no unique equilibrium: a_j c_j + b_j² = 0 for some pair j "
                             f"(a in [{a_min}, {a_max}], coupling in [{coupling_min}, {coupling_max}], c in [{c_min}, {c_max}])")
        self.player_dim, self.dim = n, 2 * n
        self.heterogeneity, self.seed, self.x0_scale = float(heterogeneity), seed, float(x0_scale)
        self.x_opt = torch.zeros(self.dim, dtype=torch.float64)
        self.f_opt = 0.0

    def grad(self, z: Tensor) -> Tensor:
        """F(z) = (A x + B y, −B x + C y)."""
        n = self.player_dim
        x, y = z[..., :n], z[..., n:]
        return torch.cat([self.a * x + self.b * y, self.c * y - self.b * x], -1)

    def vjp(self, z: Tensor, v: Tensor) -> Tensor:
        """Mᵀ v = (A v_x − B v_y, B v_x + C v_y)."""
        n = self.player_dim
        vx, vy = v[..., :n], v[..., n:]
        return torch.cat([self.a * vx - self.b * vy, self.b * vx + self.c * vy], -1)

    def loss(self, z: Tensor) -> Tensor:
        """‖z − z*‖², the squared distance to the equilibrium."""
        return (z * z).sum(-1)

    def matrix(self) -> Tensor:
        """M (d × d) with F(z) = M z, for closed forms and tests."""
        n = self.player_dim
        m = torch.zeros(self.dim, self.dim, dtype=self.a.dtype)
        i = torch.arange(n)
        m[i, i], m[i, i + n], m[i + n, i], m[i + n, i + n] = self.a, self.b, -self.b, self.c
        return m

    def describe(self) -> str:
        return f"{self.name}(n={self.player_dim})"


@register
class BilinearGame(QuadraticGame):
    """f(x, y) = xᵀBy (see module doc): SGDA spirals out, extragradient and SHGD converge."""

    name = "bilinear-game"

    def __init__(self, player_dim: int = 5, coupling_min: float = 0.5, coupling_max: float = 2.0,
                 heterogeneity: float = 0.0, seed: int = 0, x0_scale: float = 1.0) -> None:
        check_number(f"{self.name}: coupling_min", coupling_min)
        if not coupling_min > 0:
            raise ValueError(f"{self.name}: coupling_min must be > 0 (a zero coupling has no unique equilibrium), "
                             f"got {coupling_min!r}")
        super().__init__(player_dim, 0.0, 0.0, coupling_min, coupling_max, 0.0, 0.0, heterogeneity, seed, x0_scale)
