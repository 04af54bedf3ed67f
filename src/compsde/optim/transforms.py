"""Gradient transformations with state, in the style of optax.

A ``Transform`` is a pair of functions

    state = t.init(params)
    updates, state = t.update(grads, state, params)

with the state plain data (dicts of tensors and numbers, see ``compsde.core.trees``), so checkpoints
save it and a stack of workers is just a state with a leading worker axis. ``chain(a, b, ...)``
applies them in order. Every transform works on rows of any leading shape: (R, d) for one worker's
R Monte Carlo repetitions, (N, R, d) for a stack of N workers.

The learning rate is *not* a transform here: an algorithm multiplies the final direction by η_k
(``compsde.algorithms``), before compression for error feedback and after aggregation otherwise, so
the same transform serves on the workers' side (before compression) and on the server's side (after
aggregation), and an SDE model can take the direction per unit step.

Transforms:

* ``identity()``                       u = g.
* ``momentum(beta, nesterov=False)``   heavy ball m ← β m + g, u = m; Nesterov u = g + β m
                                        (torch.optim.SGD with dampening 0; Polyak 1964, Nesterov 1983,
                                        Sutskever et al. 2013).
* ``add_decayed_weights(lam)``         u = g + λ x: decoupled weight decay when chained after the
                                        other transforms (Loshchilov & Hutter 2019), x ← x − η(u + λx).
* ``normalize()``                      u = g / ‖g‖ per row (rows with g = 0 stay 0).
* ``adam(b1, b2, eps)``                m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², u = m̂/(√v̂ + ε) with the
                                        bias corrections m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ) (Kingma & Ba
                                        2015; torch.optim.Adam); chained with ``add_decayed_weights`` it
                                        is AdamW (Loshchilov & Hutter 2019).
* ``rmsprop(b2, eps)``                 v ← β₂v + (1 − β₂)g², u = g/(√v + ε), no bias correction
                                        (Tieleman & Hinton 2012; torch.optim.RMSprop with alpha = β₂).
* ``sign()``                           u = sign(g) (SignSGD; Bernstein et al. 2018), sign(0) = +1 (the
                                        library's convention, ``compsde.compressors.signs.sign_pm1``).

Coupled (L2) weight decay is ``add_decayed_weights`` *before* the adaptive transform (the decay enters
the moments, torch.optim.Adam's ``weight_decay``); decoupled is the same transform after it (AdamW,
RMSpropW).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from compsde.core.checks import check_bool, check_number

__all__ = ["Transform", "adam", "add_decayed_weights", "chain", "identity", "momentum", "normalize", "rmsprop", "sign"]


@dataclass(frozen=True)
class Transform:
    """``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``.

    ``name`` and ``params`` describe it (labels, reports, SDE registry); ``stateful`` says whether its
    state carries anything over from one step to the next (a method whose transforms are all
    stateless is memoryless: its step depends on the current iterate only).
    """

    name: str
    init: Callable[[Tensor], Any]
    update: Callable[[Tensor, Any, Tensor | None], tuple[Tensor, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stateful: bool = False
    #: needs the parameters in ``update`` (weight decay); a DDP hook without them refuses it.
    uses_params: bool = False
    #: the parts of a chain (empty for a single transform).
    parts: tuple[Transform, ...] = ()

    def describe(self) -> str:
        if self.parts:
            return " → ".join(p.describe() for p in self.parts) or "identity"
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})" if args else self.name

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the transforms applied, in order (a chain flattened; identity omitted)."""
        if self.parts:
            return tuple(n for p in self.parts for n in p.names)
        return () if self.name == "identity" else (self.name,)


def identity() -> Transform:
    return Transform("identity", lambda params: None, lambda g, state, params: (g, state))


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order; the state is the tuple of their states. Nested chains and
    identities are flattened away, so ``chain()`` is the identity."""
    parts: list[Transform] = []
    for t in transforms:
        if not isinstance(t, Transform):
            raise ValueError(f"chain takes Transforms, got {t!r}")
        parts.extend(t.parts if t.parts else ([] if t.name == "identity" else [t]))
    if not parts:
        return identity()
    if len(parts) == 1:
        return parts[0]

    def init(params: Tensor) -> tuple[Any, ...]:
        return tuple(t.init(params) for t in parts)

    def update(g: Tensor, state: tuple[Any, ...], params: Tensor | None) -> tuple[Tensor, tuple[Any, ...]]:
        new = []
        for t, s in zip(parts, state, strict=True):
            g, s = t.update(g, s, params)
            new.append(s)
        return g, tuple(new)

    return Transform("chain", init, update, stateful=any(t.stateful for t in parts),
                     uses_params=any(t.uses_params for t in parts), parts=tuple(parts))


def momentum(beta: float, nesterov: bool = False) -> Transform:
    """Heavy-ball momentum m ← β m + g with u = m, or Nesterov's u = g + β m (m starts at 0)."""
    beta = check_number("momentum", beta, min=0.0, max=1.0, max_open=True)
    nesterov = check_bool("nesterov", nesterov)

    def init(params: Tensor) -> dict[str, Tensor]:
        return {"momentum": torch.zeros(params.shape, dtype=params.dtype, device=params.device)}

    def update(g: Tensor, state: dict[str, Tensor], params: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        m = state["momentum"].mul(beta).add_(g)
        return (g + beta * m if nesterov else m), {"momentum": m}

    return Transform("nesterov" if nesterov else "momentum", init, update, {"beta": beta}, stateful=True)


def add_decayed_weights(weight_decay: float) -> Transform:
    """u = g + λ x (decoupled weight decay when it comes after the other transforms of a chain)."""
    lam = check_number("weight_decay", weight_decay, min=0.0)

    def update(g: Tensor, state: None, params: Tensor | None) -> tuple[Tensor, None]:
        if params is None:
            raise ValueError("weight_decay needs the parameters, and none were given to this update")
        return g + lam * params, state

    return Transform("weight_decay", lambda params: None, update, {"weight_decay": lam}, uses_params=True)


def normalize(eps: float = 1e-30) -> Transform:
    """u = g / ‖g‖ along the last dimension; rows with ‖g‖ = 0 stay 0."""

    def update(g: Tensor, state: None, params: Tensor | None) -> tuple[Tensor, None]:
        return g / g.norm(dim=-1, keepdim=True).clamp_min(eps), state

    return Transform("normalize", lambda params: None, update)


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam's direction m̂/(√v̂ + ε) (see module doc).

    The step count t is state like the moments: an integer tensor with the rows' leading axes (shape
    (..., 1) for params (..., d)), so a stack of workers sliced into chunks advances each worker's
    count once per step, and a repetition whose state is reset restarts its count."""
    b1 = check_number("b1", b1, min=0.0, max=1.0, max_open=True)
    b2 = check_number("b2", b2, min=0.0, max=1.0, max_open=True)
    eps = check_number("eps", eps, min=0.0, min_open=True)

    def init(params: Tensor) -> dict[str, Any]:
        z = torch.zeros(params.shape, dtype=params.dtype, device=params.device)
        count = torch.zeros((*params.shape[:-1], 1), dtype=torch.long, device=params.device)
        return {"m": z, "v": z.clone(), "count": count}

    def update(g: Tensor, state: dict[str, Any], params: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
        t = torch.as_tensor(state["count"], device=g.device) + 1  # (a checkpoint from before held a plain int)
        m = state["m"].mul(b1).add_(g, alpha=1.0 - b1)
        v = state["v"].mul(b2).addcmul_(g, g, value=1.0 - b2)
        u = (m / _bias_correction(b1, t, m.dtype)).div_((v / _bias_correction(b2, t, v.dtype)).sqrt_().add_(eps))
        return u, {"m": m, "v": v, "count": t}

    return Transform("adam", init, update, {"b1": b1, "b2": b2, "eps": eps}, stateful=True)


def _bias_correction(beta: float, t: Tensor, dtype: torch.dtype) -> Tensor:
    """1 − βᵗ for integer counts t, each value computed once in double precision as a Python float (the
    rows of a run share one count, or a few after resets), cast to ``dtype``. Python's pow, not torch.pow:
    the two differ in the last bit for some t (31 of the first 2·10⁵ at β = 0.999), and the library's Adam
    has always rounded as Python does; the cost is one small host read of the counts per step."""
    values = t.unique()
    table = torch.tensor([1.0 - beta ** int(c) for c in values.tolist()], dtype=torch.float64, device=t.device)
    return table[torch.searchsorted(values, t)].to(dtype)


def rmsprop(b2: float = 0.99, eps: float = 1e-8) -> Transform:
    """RMSprop's direction g/(√v + ε) with v ← β₂v + (1 − β₂)g² (see module doc)."""
    b2 = check_number("b2", b2, min=0.0, max=1.0, max_open=True)
    eps = check_number("eps", eps, min=0.0, min_open=True)

    def init(params: Tensor) -> dict[str, Any]:
        return {"v": torch.zeros(params.shape, dtype=params.dtype, device=params.device)}

    def update(g: Tensor, state: dict[str, Any], params: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
        v = state["v"].mul(b2).addcmul_(g, g, value=1.0 - b2)
        return g / v.sqrt().add_(eps), {"v": v}

    return Transform("rmsprop", init, update, {"b2": b2, "eps": eps}, stateful=True)


def sign() -> Transform:
    """u = sign(g) per coordinate (SignSGD's direction), sign(0) = +1 as everywhere in the library."""
    from compsde.compressors.signs import sign_pm1

    return Transform("sign", lambda params: None, lambda g, state, params: (sign_pm1(g), state))
