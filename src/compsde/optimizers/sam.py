"""SAM and USAM (Foret et al. 2021; Andriushchenko & Flammarion 2022): a step with the gradient at a
probe point x + ρ·(the step's sampled gradient), normalised (SAM) or not (USAM),

    SAM   x ← x − η g(x + ρ g/‖g‖)        USAM   x ← x − η g(x + ρ g)

each worker probing with its own gradient and both evaluations using the step's one sample. ρ defaults
to 0.05 (Foret et al.). USAM's SDE is the closed form with L = I + ρH (``ProbeSDE``; its drift is
∇(f + (ρ/2)‖∇f‖²)); SAM has none in closed form under noise and gets the Monte Carlo model (docs/theory.md
§9.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from compsde.algorithms.optimizer import Hyper, Optimizer
from compsde.sde.models import ProbeSDE, StepArgs

RHO = Hyper("rho", 0.05, "probe radius ρ", min_open=True)


def _sam(grad: Callable[[Tensor], Tensor], x: Tensor, g: Tensor, lr: float, h: Mapping[str, Any]) -> Tensor:
    return grad(x + h["rho"] * (g / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)))


def _usam(grad: Callable[[Tensor], Tensor], x: Tensor, g: Tensor, lr: float, h: Mapping[str, Any]) -> Tensor:
    return grad(x + h["rho"] * g)


def _plain_sam(grad_at: Callable[[Tensor], Tensor], x: Tensor, g: Tensor, lr: float, h: Mapping[str, Any]) -> Tensor:
    return grad_at(x + h["rho"] * g / g.norm().clamp_min(torch.finfo(g.dtype).tiny))


def _plain_usam(grad_at: Callable[[Tensor], Tensor], x: Tensor, g: Tensor, lr: float, h: Mapping[str, Any]) -> Tensor:
    return grad_at(x + h["rho"] * g)


class USAMSDE(ProbeSDE):
    """USAM: L = I + ρH (∇f(x + ρ g) = g + ρ H g + O(ρ²), exact on quadratics)."""

    law = "(I + ρH)"

    def _radius(self, args: StepArgs) -> float:
        return float(self.algorithm.hyper["rho"])


SAM = Optimizer("sam", "SAM", "x ← x − η ḡ(x + ρ g/‖g‖)", (RHO,), takes_transforms=True, evaluate=_sam,
                plain_evaluate=_plain_sam)
USAM = Optimizer("usam", "USAM", "x ← x − η ḡ(x + ρ g)", (RHO,), takes_transforms=True, evaluate=_usam,
                 plain_evaluate=_plain_usam, sde=USAMSDE)
