"""Methods for games min_x max_y f(x, y) on the vector field F = (∇ₓf, −∇ᵧf) that a game problem
reports as its gradient (``compsde.objectives.games``):

    SGDA   z ← z − η F_γ(z)                     simultaneous gradient descent-ascent
    SEG    z ← z − η F_γ(z − ρ F_γ(z))          stochastic extragradient, ρ = η_k unless given
    SHGD   z ← z − η J_γᵀ F_γ(z)                gradient descent on the Hamiltonian ½‖F_γ‖²

Their SDEs (``ProbeSDE`` with L = I, I − ρJ, Jᵀ) carry the modified equation's second-order drift, on
which the games' rotation depends (docs/theory.md §9.6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from compsde.algorithms.optimizer import Hyper, Optimizer
from compsde.sde.models import ProbeSDE, StepArgs


def _seg(grad: Callable[[Tensor], Tensor], x: Tensor, g: Tensor, lr: float, h: Mapping[str, Any]) -> Tensor:
    rho = h.get("rho")
    return grad(x - (lr if rho is None else rho) * g)


def _shgd(grad: Callable[[Tensor], Tensor], x: Tensor, g: Tensor, lr: float, h: Mapping[str, Any]) -> Tensor:
    """J_iᵀ g_i: a reverse pass through the field at each worker's own copy of x, with the step's sample."""
    out = torch.func.vjp(grad, x.detach().expand(g.shape))  # (field, pullback)
    return out[1](out[0])[0]


def _plain_shgd(grad_at: Callable[[Tensor], Tensor], x: Tensor, g: Tensor, lr: float, h: Mapping[str, Any]) -> Tensor:
    with torch.enable_grad():
        p = x.detach().clone().requires_grad_(True)
        return torch.autograd.grad(grad_at(p), p, g)[0]


class SGDASDE(ProbeSDE):
    """SGDA: L = I; fits any problem."""

    game = True
    any_problem = True


class SEGSDE(ProbeSDE):
    """SEG: L = I − ρJ (F(x − ρ g) = g − ρ J g + O(ρ²); exact for linear fields), ρ = η unless given."""

    law = "(I − ρJ)"
    game = True

    def _radius(self, args: StepArgs) -> float:
        rho = self.algorithm.hyper.get("rho")
        return -(rho if rho is not None else args.lr)


class SHGDSDE(ProbeSDE):
    """SHGD: L = Jᵀ (∇½‖g‖² = Jᵀ g with additive noise)."""

    law = "Jᵀ"
    game = True

    def _apply(self, x: Tensor, v: Tensor, args: StepArgs) -> Tensor:
        return self.oracle_as(x).problem.vjp(x, v)


SGDA = Optimizer("sgda", "SGDA", "z ← z − η F_γ(z) on a game's vector field F = (∇ₓf, −∇ᵧf)", takes_transforms=True,
                 sde=SGDASDE)
SEG = Optimizer("seg", "SEG", "extragradient z ← z − η F_γ(z − ρ F_γ(z)), ρ = η unless given",
                (Hyper("rho", None, "extrapolation radius ρ (default: the current η_k)", min_open=True),),
                takes_transforms=True, evaluate=_seg, plain_evaluate=_seg, sde=SEGSDE)
SHGD = Optimizer("shgd", "SHGD", "z ← z − η J_γᵀ F_γ: gradient descent on the Hamiltonian ½‖F_γ‖²",
                 takes_transforms=True, evaluate=_shgd, plain_evaluate=_plain_shgd, sde=SHGDSDE)
