"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019; torch.optim.Adam / AdamW):

    m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²,  x ← x − η m̂/(√v̂ + ε),  m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ)

``adam`` takes coupled (L2) weight decay, ``adamw`` decoupled x ← x − η(· + λx); defaults are
torch.optim's. Their SDE is the augmented state (x, m, v, ι₁, ι₂) (docs/theory.md §9.3, ``AdaptiveSDE``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from compsde.algorithms.optimizer import Hyper, Optimizer
from compsde.optim import adam
from compsde.optimizers.rmsprop import hypers, with_decay
from compsde.sde.models import AdaptiveSDE


def _plain(decoupled: bool) -> Callable[[Tensor, dict[str, Any], Tensor, Mapping[str, Any]], Tensor]:
    def plain(g: Tensor, mem: dict[str, Any], x: Tensor, h: Mapping[str, Any]) -> Tensor:
        lam, b1, b2 = h["weight_decay"], h["beta1"], h["beta2"]
        if lam and not decoupled:
            g = g + lam * x
        t = mem.get("t", 0) + 1
        m = mem.get("m", torch.zeros_like(g)) * b1 + (1 - b1) * g
        v = mem.get("v", torch.zeros_like(g)) * b2 + (1 - b2) * g * g
        mem["t"], mem["m"], mem["v"] = t, m, v
        u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + h["eps"])
        return u + lam * x if decoupled and lam else u

    return plain


class AdamSDE(AdaptiveSDE):
    """Adam's SDE: the state (x, m, v, ι₁, ι₂), coupled weight decay."""

    first_moment = True


class AdamWSDE(AdaptiveSDE):
    """AdamW's SDE: the state (x, m, v, ι₁, ι₂), decoupled weight decay."""

    first_moment = True
    decoupled_decay = True


def _hypers(weight_decay: float) -> tuple[Hyper, ...]:
    return (Hyper("beta1", 0.9, "decay of the gradient average m", max=1.0, max_open=True), *hypers(0.999, weight_decay))


def _server(decoupled: bool) -> Callable[[Mapping[str, Any]], Any]:
    return lambda h: with_decay(adam(h["beta1"], h["beta2"], h["eps"]), h["weight_decay"], decoupled)


ADAM = Optimizer("adam", "Adam", "Adam with bias corrections, coupled weight decay (torch.optim.Adam)",
                 _hypers(0.0), server=_server(False), plain=_plain(False), sde=AdamSDE)
ADAMW = Optimizer("adamw", "AdamW", "Adam with bias corrections, decoupled weight decay (torch.optim.AdamW)",
                  _hypers(0.01), server=_server(True), plain=_plain(True), sde=AdamWSDE)
