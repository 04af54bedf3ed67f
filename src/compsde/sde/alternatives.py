"""Which SDE a series integrates: the library's own (``from_algorithm``) or an alternative model.

A config's series may say ``sde = "<choice>"`` (``compsde track``): ``"compsde"`` (the default) is the
library's model of the algorithm (``compsde.sde.models.from_algorithm``: the seed papers' SDEs, closed
forms or Monte Carlo); the others are published alternatives for some methods, for comparing SDEs over the
same optimizer runs:

* ``"malladi"``: Malladi, Lyu, Panigrahi & Arora's SDEs of RMSprop and Adam (NeurIPS 2022),
  ``compsde.sde.malladi`` (docs/theory.md §9.10).

``ALTERNATIVES`` maps each alternative's name to how it is checked against a series (method,
hyperparameters, schedule: ``check``, for the config's validation) and built (``make``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from compsde.algorithms import Algorithm
from compsde.core.checks import describe
from compsde.objectives.oracle import GradientOracle
from compsde.sde import malladi
from compsde.sde.models import MonteCarloSDE, SDEModel, from_algorithm

__all__ = ["ALTERNATIVES", "DEFAULT", "SDE_CHOICES", "Alternative", "build_model", "check_choice"]

#: The library's own model.
DEFAULT = "compsde"


@dataclass(frozen=True)
class Alternative:
    """An alternative SDE model: ``check(method, hyper, schedule, where)`` refuses (ValueError) a series it
    does not describe, ``make(oracle, algorithm, lr)`` builds it."""

    check: Callable[[str, Mapping[str, Any], str, str], None]
    make: Callable[[GradientOracle, Algorithm, float], SDEModel]


ALTERNATIVES: dict[str, Alternative] = {
    "malladi": Alternative(malladi.check_applies, malladi.make),
}

#: The values ``sde`` may take.
SDE_CHOICES = (DEFAULT, *ALTERNATIVES)


def check_choice(choice: Any, method: str, hyper: Mapping[str, Any], schedule: str = "constant",
                 where: str = "sde") -> str:
    """``choice`` checked: one of ``SDE_CHOICES`` (ValueError naming ``where``, the value and the valid
    choices), and, for an alternative, one that describes the series' method, hyperparameters (the
    recipe's defaults filled in) and schedule. Returns it."""
    if not isinstance(choice, str) or choice not in SDE_CHOICES:
        raise ValueError(f"{where} must be one of {', '.join(repr(c) for c in SDE_CHOICES)}, got {describe(choice)}")
    if choice != DEFAULT:
        ALTERNATIVES[choice].check(method, hyper, schedule, where)
    return choice


def build_model(choice: str, oracle: GradientOracle, algorithm: Algorithm, lr: float, *,
                mc_samples: int = MonteCarloSDE.DEFAULT_SAMPLES) -> SDEModel:
    """The SDE model ``choice`` (``SDE_CHOICES``) of ``algorithm`` on ``oracle`` at learning rate ``lr``."""
    if not isinstance(choice, str) or choice not in SDE_CHOICES:
        raise ValueError(f"sde must be one of {', '.join(repr(c) for c in SDE_CHOICES)}, got {describe(choice)}")
    if choice == DEFAULT:
        return from_algorithm(oracle, algorithm, lr, mc_samples=mc_samples)
    return ALTERNATIVES[choice].make(oracle, algorithm, lr)
