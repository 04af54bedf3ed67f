"""Named optimizers, one recipe per file (``compsde.algorithms.Optimizer``): their hyperparameters,
transforms, probes, plain per-vector forms and SDE models. ``compsde.algorithms.make`` builds them by
name; the config schema, the reference loop, the SDE registry and ``compsde scale`` read the same objects.

Adding an optimizer: a file here defining its ``Optimizer``, one line in ``REGISTRY`` below, and one entry
in the conformance cases (``tests/cases.py``).
"""

from __future__ import annotations

from compsde.algorithms.optimizer import Hyper, Optimizer
from compsde.core.checks import describe
from compsde.optimizers import adam, games, rmsprop, sam, signsgd, signum

__all__ = ["REGISTRY", "Hyper", "Optimizer", "get", "hyper_keys", "names"]

#: Every named optimizer, by name, in the order the documentation lists them.
REGISTRY: dict[str, Optimizer] = {o.name: o for o in (
    signsgd.SIGNSGD,
    signum.SIGNUM,
    rmsprop.RMSPROP, rmsprop.RMSPROPW,
    adam.ADAM, adam.ADAMW,
    sam.SAM, sam.USAM,
    games.SGDA, games.SEG, games.SHGD,
)}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Optimizer:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown optimizer {describe(name)}; valid optimizers: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def hyper_keys() -> tuple[str, ...]:
    """Every optimizer's hyperparameter keys (``make`` keywords, config keys), each once, in first-seen order."""
    return tuple(dict.fromkeys(k for o in REGISTRY.values() for k in o.keys))
