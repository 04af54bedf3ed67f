"""Distributed methods = compressor × aggregation × (optional) error feedback.

With N workers holding stochastic gradients g_i (science.md §1):

* ``dsgd``               x ← x − η (1/N) Σ_i g_i                      (identity compressor)
* ``dcsgd``              x ← x − η (1/N) Σ_i C_i(g_i)                 (any compressor)
* ``dsignsgd``           x ← x − η (1/N) Σ_i sign(g_i)                (mean of signs)
* ``dsignsgd-majority``  x ← x − η sign(Σ_i sign(g_i))                (majority vote)
* ``ef``                 error feedback around any compressor (see ``compsde.error_feedback``)

``normalize=True`` replaces the aggregated direction u by u/‖u‖ (see ``compsde.schedules``).
The same ``Method.step`` runs on a stack of all workers (simulator) or on one worker's slice
(reference loop, and later one process per worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from compsde import compressors
from compsde.aggregation import aggregate, aggregate_sum
from compsde.compressors import Compressor
from compsde.error_feedback import ef_step
from compsde.schedules import normalized


@dataclass(frozen=True)
class _Spec:
    compressor: str | None  # implied compressor, or None if the user must choose one
    aggregation: str
    error_feedback: bool


_SPECS: dict[str, _Spec] = {
    "dsgd": _Spec("identity", "mean", False),
    "dcsgd": _Spec(None, "mean", False),
    "dsignsgd": _Spec("sign", "mean", False),
    "dsignsgd-majority": _Spec("sign", "majority", False),
    "ef": _Spec(None, "mean", True),
}
METHOD_NAMES = tuple(_SPECS)


def implied_compressor(name: str) -> str | None:
    """The compressor a method implies (``identity`` for dsgd, ``sign`` for dsignsgd*), or None if it takes any."""
    if name not in _SPECS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)}")
    return _SPECS[name].compressor


class StepResult(NamedTuple):
    """What one step produced: x ← x − update."""

    update: Tensor  # (..., d)
    inputs: Tensor  # what each worker compressed, (N, ..., d)
    messages: Tensor  # what each worker sent (decompressed), (N, ..., d)
    memory: Tensor | None  # error-feedback memory after the step


@dataclass(frozen=True)
class Method:
    """A configured distributed method. Build with ``make``."""

    name: str
    compressor: Compressor
    aggregation: str = "mean"
    error_feedback: bool = False
    normalize: bool = False

    def init_memory(self, workers: int, batch_shape: tuple[int, ...], d: int, dtype: torch.dtype) -> Tensor | None:
        """Error-feedback memory e_i = 0 (None for methods without EF)."""
        return torch.zeros(workers, *batch_shape, d, dtype=dtype) if self.error_feedback else None

    def compress(self, grads: Tensor, lr: float, memory: Tensor | None, rnd: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The workers' half of a step for a stack of workers (any subset): (inputs v, messages
        C(v), new EF memory). v = g, or e + η g with error feedback."""
        if self.error_feedback:
            assert memory is not None
            return ef_step(self.compressor, memory, lr * grads, rnd)
        return grads, self.compressor.apply(grads, rnd), memory

    def finish(self, total: Tensor, workers: int, lr: float) -> Tensor:
        """The server's half: the update (x ← x − update) from the sum Σ_i m_i of all N messages."""
        direction = aggregate_sum(total, workers, self.aggregation)
        if self.error_feedback:
            return direction  # η is inside the messages
        if self.normalize:
            direction = normalized(direction)
        return lr * direction

    def step(self, grads: Tensor, lr: float, memory: Tensor | None, rnd: Tensor | None) -> StepResult:
        """One round: workers compress (with ``rnd`` from ``compressor.draw``), the server aggregates.

        Args:
            grads: stochastic gradients g_i, shape (N, ..., d).
            lr: η for this step.
            memory: EF memory from ``init_memory`` or the previous step.
            rnd: the compressor's random draw for this step (leading dims broadcast over N).
        """
        if self.error_feedback:
            assert memory is not None
            inputs, messages, memory = ef_step(self.compressor, memory, lr * grads, rnd)
            return StepResult(aggregate(messages, self.aggregation), inputs, messages, memory)
        messages = self.compressor.apply(grads, rnd)
        direction = aggregate(messages, self.aggregation)
        if self.normalize:
            direction = normalized(direction)
        return StepResult(lr * direction, grads, messages, memory)

    def bits_per_step(self, d: int) -> int:
        """Bits one worker sends per step (uplink)."""
        return self.compressor.bits(d)

    def label(self) -> str:
        comp = repr(self.compressor)
        return f"{self.name}[{comp}]" + ("+normalized" if self.normalize else "")


def make(name: str, compressor: str | Compressor | None = None, normalize: bool = False, **compressor_params: object) -> Method:
    """Build a method by name. ``dsgd`` implies ``identity`` and ``dsignsgd*`` imply ``sign``
    (the compressor may then be omitted or given as that name); ``dcsgd`` and ``ef`` need one."""
    if name not in _SPECS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)}")
    spec = _SPECS[name]
    if isinstance(compressor, Compressor):
        comp = compressor
    else:
        cname = compressor if compressor is not None else spec.compressor
        if cname is None:
            raise ValueError(f"method {name!r} needs a compressor; valid compressors: {', '.join(compressors.names())}")
        if spec.compressor is not None and cname != spec.compressor:
            raise ValueError(f"method {name!r} implies compressor {spec.compressor!r}; got compressor {cname!r} (use dcsgd or ef for other compressors)")
        comp = compressors.make(cname, **compressor_params)
    if normalize and spec.error_feedback:
        raise ValueError("normalize = true is not defined for method 'ef' (the step size is inside the compressed message)")
    return Method(name, comp, spec.aggregation, spec.error_feedback, bool(normalize))
