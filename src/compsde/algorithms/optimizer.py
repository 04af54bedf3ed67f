"""The recipe of a named optimizer: one object holds everything the library knows about it.

An ``Optimizer`` says

* its hyperparameters (``Hyper``: key, default, valid range, meaning) — ``make`` keywords, config keys,
  labels and ``compsde scale`` read them;
* how it builds its transforms (worker and server side), compressor and aggregation — ``make`` reads them;
* how it evaluates its gradients when it probes (SAM, extragradient, …): ``evaluate`` for stacks of
  workers, ``plain_evaluate`` for one vector;
* its plain per-vector direction for the reference loop (``plain``), written separately from the
  transforms so that the comparison simulator = reference checks them;
* its SDE model (``sde``: a ``compsde.sde.models.SDEModel`` class), or why it has none (``no_sde``).

The recipes themselves live one per file in ``compsde.optimizers`` (the registry); adding an optimizer
is one file there, one line in its registry and one entry in the conformance cases (``tests/cases.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from compsde.compressors.blockwise import Blockwise
from compsde.core.checks import check_number, describe
from compsde.optim import Transform

__all__ = ["Hyper", "Optimizer"]


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its key, default (None: none, e.g. SEG's ρ = η_k), valid interval and meaning."""

    key: str
    default: float | None
    meaning: str
    min: float = 0.0
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def check(self, value: Any) -> float:
        return check_number(self.key, value, min=self.min, max=self.max, min_open=self.min_open,
                            max_open=self.max_open)


#: A direction per vector for the reference loop: (g, memory dict, x, hyperparameters) → direction.
Plain = Callable[[Tensor, dict[str, Any], Tensor, Mapping[str, Any]], Tensor]
#: A probe: (grad at given params with this step's sample, params, g at params, η_k, hyperparameters) →
#: the gradient the step uses.
Evaluate = Callable[[Callable[[Tensor], Tensor], Tensor, Tensor, float, Mapping[str, Any]], Tensor]


@dataclass(frozen=True)
class Optimizer:
    """A named optimizer's recipe (see module doc).

    ``worker`` / ``server`` build the transforms from the hyperparameters; when one is None the user's
    ``worker`` / ``server`` options of ``make`` apply on that side (with ``takes_transforms``), else the
    recipe is complete and refuses them.
    """

    name: str
    display: str
    #: the update in one line (help texts, the algorithms' module doc)
    update: str
    hypers: tuple[Hyper, ...] = ()
    compressor: str = "identity"
    aggregation: str = "mean"
    worker: Callable[[Mapping[str, Any]], Transform] | None = None
    server: Callable[[Mapping[str, Any]], Transform] | None = None
    #: whether the user's worker / server transforms and ``normalize`` may be added
    takes_transforms: bool = False
    evaluate: Evaluate | None = None
    plain_evaluate: Evaluate | None = None
    plain: Plain | None = None
    #: the SDE model class (a ``compsde.sde.models.SDEModel``), or None
    sde: type | None = None
    #: why there is no closed-form SDE (when ``sde`` is None or does not fit an oracle)
    no_sde: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(h.key for h in self.hypers)

    @property
    def defaults(self) -> dict[str, float | None]:
        return {h.key: h.default for h in self.hypers}

    def hyper(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` checked against the hyperparameters and completed with the defaults (None stays None)."""
        bad = sorted(set(given) - set(self.keys))
        if bad:
            takes = f"it takes {', '.join(self.keys)}" if self.keys else "it takes no hyperparameters"
            raise ValueError(f"algorithm {self.name!r} does not take {', '.join(bad)} (value {describe(given[bad[0]])}); "
                             f"{takes}")
        out: dict[str, Any] = {}
        for h in self.hypers:
            value = given.get(h.key, h.default)
            out[h.key] = None if value is None else h.check(value)
        return out

    def probes(self) -> bool:
        """Several gradient evaluations per step."""
        return self.evaluate is not None

    def built(self, algorithm: Any) -> bool:
        """Whether ``algorithm`` is this optimizer exactly as the recipe builds it (no transforms, error
        feedback or local steps of the user's; its compressor, per layer or not): then its SDE applies."""
        if algorithm.optimizer is not self or algorithm.local or algorithm.error_feedback:
            return False
        comp = algorithm.compressor
        inner = comp.inner if isinstance(comp, Blockwise) else comp  # per layer: the same compressor on each block
        if inner.name != self.compressor:
            return False
        if algorithm.aggregation != self.aggregation:
            return False
        h = algorithm.hyper
        for side, build in (("worker", self.worker), ("server", self.server)):
            expected = build(h).describe() if build is not None else "identity"
            if getattr(algorithm, side).describe() != expected:
                return False
        return True
