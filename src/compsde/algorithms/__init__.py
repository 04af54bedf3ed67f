"""Distributed algorithms, built by name: ``make("dcsgd", compressor="rand-k", k=5)``.

An algorithm is a compressor, an aggregation rule, optional error feedback and optional transforms on
the workers' side (before compression) and on the server's side (after aggregation); see
``compsde.algorithms.algorithm`` for the step. Recipes:

* ``dsgd``               x ← x − η (1/N) Σ_i g_i                       (identity compressor)
* ``dcsgd``              x ← x − η (1/N) Σ_i C_i(g_i)                  (any compressor)
* ``dsignsgd``           x ← x − η (1/N) Σ_i sign(g_i)                 (mean of signs)
* ``dsignsgd-majority``  x ← x − η sign(Σ_i sign(g_i))                 (majority vote)
* ``ef``                 error feedback around any compressor

Options of every recipe: ``worker`` / ``server`` — a ``compsde.optim.Transform`` or a dict with
``momentum`` (β), ``nesterov`` (bool) and ``weight_decay`` (decoupled λ) — and ``normalize`` (the
server's direction divided by its norm). "DCSGD with momentum" is
``make("dcsgd", compressor="rand-k", k=5, worker={"momentum": 0.9})``; "EF-SignSGD with server
momentum" is ``make("ef", compressor="scaled-sign", server={"momentum": 0.9})``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from compsde import compressors
from compsde.algorithms.algorithm import Algorithm, WorkersOut
from compsde.compressors import Compressor
from compsde.core.checks import check_bool, describe
from compsde.optim import Transform, add_decayed_weights, chain, momentum, normalize

__all__ = ["ALGORITHM_NAMES", "Algorithm", "TRANSFORM_KEYS", "WorkersOut", "implied_compressor", "make", "names",
           "transform_from"]


@dataclass(frozen=True)
class _Recipe:
    compressor: str | None  # implied compressor, or None if the user must choose one
    aggregation: str
    error_feedback: bool
    display: str  # the name in plot labels


_RECIPES: dict[str, _Recipe] = {
    "dsgd": _Recipe("identity", "mean", False, "DSGD"),
    "dcsgd": _Recipe(None, "mean", False, "DCSGD"),
    "dsignsgd": _Recipe("sign", "mean", False, "DSignSGD"),
    "dsignsgd-majority": _Recipe("sign", "majority", False, "DSignSGD-vote"),
    "ef": _Recipe(None, "mean", True, "EF"),
}
ALGORITHM_NAMES = tuple(_RECIPES)
#: The keys of a ``worker`` / ``server`` transform given as a dict (config tables and ``make``).
TRANSFORM_KEYS = ("momentum", "nesterov", "weight_decay")


def names() -> list[str]:
    return list(_RECIPES)


def _recipe(name: Any) -> _Recipe:
    if not isinstance(name, str) or name not in _RECIPES:
        raise ValueError(f"unknown algorithm {describe(name)}; valid algorithms: {', '.join(_RECIPES)}")
    return _RECIPES[name]


def implied_compressor(name: str) -> str | None:
    """The compressor an algorithm implies (``identity`` for dsgd, ``sign`` for dsignsgd*), or None if it takes any."""
    return _recipe(name).compressor


def display_name(name: str) -> str:
    """The algorithm's name in plot labels (DSGD, DCSGD, ...)."""
    return _recipe(name).display


def transform_from(spec: Transform | Mapping[str, Any] | None, side: str, *, normalize_last: bool = False) -> Transform:
    """A worker- or server-side transform from a ``Transform``, a dict of ``TRANSFORM_KEYS`` or None:
    momentum (β, Nesterov if ``nesterov``), then ``normalize`` (if asked), then decoupled weight decay."""
    if isinstance(spec, Transform):
        return chain(spec, normalize()) if normalize_last else spec
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{side} must be a compsde.optim.Transform or a table of {', '.join(TRANSFORM_KEYS)}, got {describe(spec)}")
    bad = sorted(set(spec) - set(TRANSFORM_KEYS))
    if bad:
        raise ValueError(f"{side} does not take {', '.join(map(str, bad))}; valid keys: {', '.join(TRANSFORM_KEYS)}")
    beta = spec.get("momentum", 0.0)
    nesterov = check_bool(f"{side}.nesterov", spec.get("nesterov", False))
    parts = []
    if beta != 0.0 or nesterov:
        parts.append(momentum(beta, nesterov))
    if normalize_last:
        parts.append(normalize())
    if spec.get("weight_decay", 0.0) != 0.0:
        parts.append(add_decayed_weights(spec["weight_decay"]))
    return chain(*parts)


def make(name: str, compressor: str | Compressor | None = None, *, normalize: bool = False,
         worker: Transform | Mapping[str, Any] | None = None, server: Transform | Mapping[str, Any] | None = None,
         **compressor_params: Any) -> Algorithm:
    """Build an algorithm by name (see module doc).

    ``dsgd`` implies ``identity`` and ``dsignsgd*`` imply ``sign`` (the compressor may then be omitted
    or given as that name or object); ``dcsgd`` and ``ef`` need one. Compressor parameters (``k``,
    ``ratio``, ``levels``, ``shared``) go to the compressor.
    """
    recipe = _recipe(name)
    check_bool("normalize", normalize)
    if isinstance(compressor, Compressor):
        if compressor_params:
            raise ValueError(f"compressor parameters {', '.join(sorted(compressor_params))} were given with a built "
                             "compressor; pass them to compsde.compressors.make instead")
        comp = compressor
    elif compressor is None or isinstance(compressor, str):
        cname = compressor if compressor is not None else recipe.compressor
        if cname is None:
            raise ValueError(f"algorithm {name!r} needs a compressor; valid compressors: {', '.join(compressors.names())}")
        if recipe.compressor is not None and cname != recipe.compressor:
            raise ValueError(f"algorithm {name!r} implies compressor {recipe.compressor!r}; got compressor {cname!r} "
                             "(use dcsgd or ef for other compressors)")
        comp = compressors.make(cname, **compressor_params)
    else:
        raise ValueError(f"compressor must be a compressor name or a Compressor, got {describe(compressor)}")
    if recipe.compressor is not None and comp.name != recipe.compressor:
        raise ValueError(f"algorithm {name!r} implies compressor {recipe.compressor!r}; got compressor {comp.name!r} "
                         "(use dcsgd or ef for other compressors)")
    if normalize and recipe.error_feedback:
        raise ValueError("normalize = true is not defined for algorithm 'ef' (the step size is inside the compressed message)")
    return Algorithm(name, comp, recipe.aggregation, recipe.error_feedback, transform_from(worker, "worker"),
                     transform_from(server, "server", normalize_last=normalize))
