"""RMSprop and RMSpropW (Tieleman & Hinton 2012; torch.optim.RMSprop with alpha = β₂, no centring):

    v ← β₂v + (1 − β₂)g²,   x ← x − η g/(√v + ε)

``rmsprop`` takes coupled (L2) weight decay, g ← g + λx before the moments; ``rmspropw`` decoupled,
x ← x − η(g/(√v + ε) + λx). Defaults are torch.optim's (RMSpropW: λ = 0.01, as AdamW). Their SDE is the
augmented state (x, v) (docs/theory.md §9.3, ``AdaptiveSDE``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from compsde.algorithms.optimizer import Hyper, Optimizer
from compsde.optim import Transform, add_decayed_weights, chain, rmsprop
from compsde.sde.models import AdaptiveSDE


def hypers(beta2: float, weight_decay: float) -> tuple[Hyper, ...]:
    """β₂, ε and λ with these defaults (shared with Adam)."""
    return (Hyper("beta2", beta2, "decay of the squared-gradient average v", max=1.0, max_open=True),
            Hyper("eps", 1e-8, "ε added to √v", min_open=True),
            Hyper("weight_decay", weight_decay, "weight decay λ"))


def with_decay(core: Transform, weight_decay: float, decoupled: bool) -> Transform:
    """Coupled decay before the adaptive transform (it enters the moments), decoupled after it."""
    if not weight_decay:
        return core
    decay = add_decayed_weights(weight_decay)
    return chain(core, decay) if decoupled else chain(decay, core)


def _plain(decoupled: bool) -> Callable[[Tensor, dict[str, Any], Tensor, Mapping[str, Any]], Tensor]:
    def plain(g: Tensor, mem: dict[str, Any], x: Tensor, h: Mapping[str, Any]) -> Tensor:
        lam, b2 = h["weight_decay"], h["beta2"]
        if lam and not decoupled:
            g = g + lam * x
        v = mem.get("v", torch.zeros_like(g)) * b2 + (1 - b2) * g * g
        mem["v"] = v
        u = g / (v.sqrt() + h["eps"])
        return u + lam * x if decoupled and lam else u

    return plain


class RMSpropSDE(AdaptiveSDE):
    """RMSprop's SDE: the state (x, v), coupled weight decay."""


class RMSpropWSDE(AdaptiveSDE):
    """RMSpropW's SDE: the state (x, v), decoupled weight decay."""

    decoupled_decay = True


RMSPROP = Optimizer("rmsprop", "RMSprop", "v ← β₂v + (1 − β₂)ḡ², x ← x − η ḡ/(√v + ε)  (coupled weight decay)",
                    hypers(0.99, 0.0), server=lambda h: with_decay(rmsprop(h["beta2"], h["eps"]), h["weight_decay"], False),
                    plain=_plain(False), sde=RMSpropSDE)
RMSPROPW = Optimizer("rmspropw", "RMSpropW", "the same with decoupled weight decay x ← x − η(· + λx)",
                     hypers(0.99, 0.01), server=lambda h: with_decay(rmsprop(h["beta2"], h["eps"]), h["weight_decay"], True),
                     plain=_plain(True), sde=RMSpropWSDE)
