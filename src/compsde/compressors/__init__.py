"""Compression operators, built by name: ``make("rand-k", ratio=0.1)``.

Every compressor compresses the rows of a (..., d) tensor and returns the decompressed tensor; its
theory (unbiasedness, ω, δ, the B1/B2 constants, exact wire bits) is declared as data. See
``compsde.compressors.base`` for the interface and ``compsde compressors --dim D`` for declared vs
measured constants. A name joined by ``+`` composes left to right: ``make("top-k+natural", k=5)``
applies top-k, then natural compression to the kept values.
"""

from __future__ import annotations

import inspect
from typing import TypeVar

from compsde.compressors.base import FLOAT_BITS, Compressor, Field, Payload, index_bits
from compsde.core.checks import describe

_REGISTRY: dict[str, type[Compressor]] = {}

C = TypeVar("C", bound=type[Compressor])


def register(cls: C) -> C:
    """Class decorator: make ``cls`` buildable by ``make(cls.name, ...)``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"compressor name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered compressor names, in registration order."""
    return list(_REGISTRY)


def param_names(name: str) -> list[str]:
    """The keyword parameters the compressor ``name`` accepts."""
    cls = compressor_class(name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def compressor_class(name: str) -> type[Compressor]:
    """The registered class of a single (non-composed) compressor name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown compressor {name!r}; valid names: {', '.join(_REGISTRY)} (or a composition like 'top-k+natural')") from None


def make(name: str, **params: object) -> Compressor:
    """Build a compressor by name. ``k``/``ratio``/``levels``/... go to the parts that accept them.

    Parameters set to ``None`` are ignored, so a config can pass every optional key it has.
    """
    if not isinstance(name, str):
        raise ValueError(f"compressor name must be a string such as 'rand-k' or 'top-k+natural', got {describe(name)}")
    params = {k: v for k, v in params.items() if v is not None}
    parts = [p.strip() for p in name.split("+")]
    if len(parts) == 1:
        cls = compressor_class(parts[0])
        valid = param_names(parts[0])
        bad = sorted(set(params) - set(valid))
        if bad:
            raise ValueError(f"compressor {name!r} does not take {', '.join(bad)}; valid parameters: {', '.join(valid) or 'none'}")
        return cls(**params)
    from compsde.compressors.compose import Compose

    accepted: set[str] = set()
    built: list[Compressor] = []
    for part in parts:
        takes = set(param_names(part))
        accepted |= takes
        built.append(compressor_class(part)(**{k: v for k, v in params.items() if k in takes}))
    bad = sorted(set(params) - accepted)
    if bad:
        raise ValueError(f"compressor {name!r} does not take {', '.join(bad)}; valid parameters: {', '.join(sorted(accepted)) or 'none'}")
    out = built[0]
    for nxt in built[1:]:
        out = Compose(out, nxt)
    return out


# Importing the families registers them (order = listing order).
from compsde.compressors import sparsifiers, signs, quantizers  # noqa: E402,F401  (isort: skip)

__all__ = ["Compressor", "FLOAT_BITS", "Field", "Payload", "compressor_class", "index_bits", "make", "names", "param_names",
           "register"]
