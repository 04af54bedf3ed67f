"""Distributed algorithms, built by name: ``make("dcsgd", compressor="rand-k", k=5)``.

An algorithm is a compressor, an aggregation rule, optional error feedback and optional transforms on
the workers' side (before compression) and on the server's side (after aggregation); see
``compsde.algorithms.algorithm`` for the step. Recipes:

* ``dsgd``               x ← x − η (1/N) Σ_i g_i                       (identity compressor)
* ``dcsgd``              x ← x − η (1/N) Σ_i C_i(g_i)                  (any compressor)
* ``dsignsgd``           x ← x − η (1/N) Σ_i sign(g_i)                 (mean of signs)
* ``dsignsgd-majority``  x ← x − η sign(Σ_i sign(g_i))                 (majority vote)
* ``ef``                 error feedback around any compressor
* ``local-sgd``          each worker x_i ← x_i − η T_w(g_i(x_i)) (SGD, with momentum via ``worker``), the
                         parameters averaged when ``sync`` (a ``SyncSchedule``) ends a period; the deltas
                         may be compressed (``compressor``, ``error_feedback``), and an outer optimizer
                         (``server`` transform, ``outer_lr``) applied to their mean (DiLoCo: Nesterov)
* ``local-adamw``        the same with AdamW as the inner optimizer (``worker.weight_decay``)

Named optimizers (``compsde.optimizers``, one recipe file each: ``signsgd``, ``signum``, ``rmsprop``,
``rmspropw``, ``adam``, ``adamw``, ``sam``, ``usam``, ``sgda``, ``seg``, ``shgd``): with N workers the
single-node ones average the workers' gradients (data parallel) and step once on the mean; Signum votes.
Their hyperparameters (``Optimizer.hypers``: ``beta``, ``beta1``, ``beta2``, ``eps``, ``weight_decay``,
``rho``) are keywords of ``make``.

Options of every recipe: ``worker`` / ``server`` — a ``compsde.optim.Transform`` or a dict with
``momentum`` (β), ``nesterov`` (bool) and ``weight_decay`` (decoupled λ) — and ``normalize`` (the
server's direction divided by its norm). "DCSGD with momentum" is
``make("dcsgd", compressor="rand-k", k=5, worker={"momentum": 0.9})``; "EF-SignSGD with server
momentum" is ``make("ef", compressor="scaled-sign", server={"momentum": 0.9})``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compsde import compressors
from compsde.algorithms.algorithm import Algorithm, WorkersOut
from compsde.algorithms.optimizer import Hyper, Optimizer
from compsde.algorithms.sync import SyncSchedule
from compsde.compressors import Compressor
from compsde.core.checks import check_bool, describe
from compsde.optim import Transform, adam, add_decayed_weights, chain, momentum, normalize

__all__ = ["TRANSFORM_KEYS", "Algorithm", "Hyper", "Optimizer", "WorkersOut", "default_compressor",
           "implied_compressor", "is_local", "make", "names", "transform_from"]


@dataclass(frozen=True)
class _Recipe:
    """A distributed method: what ``make`` builds around the compressor."""

    compressor: str | None  # implied compressor, or None if the user must choose one
    aggregation: str
    error_feedback: bool
    display: str  # the name in plot labels
    inner: str | None = None  # local methods: the inner optimizer ("sgd" or "adamw")


_RECIPES: dict[str, _Recipe] = {
    "dsgd": _Recipe("identity", "mean", False, "DSGD"),
    "dcsgd": _Recipe(None, "mean", False, "DCSGD"),
    "dsignsgd": _Recipe("sign", "mean", False, "DSignSGD"),
    "dsignsgd-majority": _Recipe("sign", "majority", False, "DSignSGD-vote"),
    "ef": _Recipe(None, "mean", True, "EF"),
    "local-sgd": _Recipe(None, "mean", False, "Local SGD", inner="sgd"),
    "local-adamw": _Recipe(None, "mean", False, "Local AdamW", inner="adamw"),
}
#: The keys of a ``worker`` / ``server`` transform given as a dict (config tables and ``make``).
TRANSFORM_KEYS = ("momentum", "nesterov", "weight_decay")


def _optimizers() -> dict[str, Optimizer]:
    from compsde.optimizers import REGISTRY  # the recipes import the SDE models, which import this package

    return REGISTRY


def names() -> list[str]:
    return [*_RECIPES, *_optimizers()]


def _recipe(name: Any) -> _Recipe:
    if isinstance(name, str) and name in _RECIPES:
        return _RECIPES[name]
    opt = _optimizers().get(name) if isinstance(name, str) else None
    if opt is None:
        raise ValueError(f"unknown algorithm {describe(name)}; valid algorithms: {', '.join(names())}")
    return _Recipe(opt.compressor, opt.aggregation, False, opt.display)


def implied_compressor(name: str) -> str | None:
    """The compressor an algorithm implies (``identity`` for dsgd, ``sign`` for dsignsgd*), or None if it takes any."""
    return _recipe(name).compressor


def default_compressor(name: str) -> str | None:
    """The compressor a series of this algorithm uses when it names none: the implied one, identity for
    the local methods (plain parameter averaging), None when one must be chosen."""
    r = _recipe(name)
    return r.compressor or ("identity" if r.inner is not None else None)


def is_local(name: str) -> bool:
    """Whether the algorithm is a local method (workers average parameters per a sync schedule)."""
    return _recipe(name).inner is not None


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
         sync: SyncSchedule | None = None, outer_lr: float = 1.0, error_feedback: bool = False,
         average_state: bool = False, **params: Any) -> Algorithm:
    """Build an algorithm by name (see module doc).

    ``dsgd`` implies ``identity`` and ``dsignsgd*`` imply ``sign`` (the compressor may then be omitted
    or given as that name or object); ``dcsgd`` and ``ef`` need one. ``params`` are the optimizer's
    hyperparameters (``beta1``, ``rho``, …: ``compsde.optimizers``) and the compressor's parameters
    (``k``, ``ratio``, ``levels``, ``shared``).
    """
    recipe = _recipe(name)
    opt = _optimizers().get(name)
    every = {k for o in _optimizers().values() for k in o.keys}
    given = {k: v for k in sorted(every & set(params)) if (v := params.pop(k)) is not None}  # None: the default
    compressor_params = params
    if opt is None and given:
        key = next(iter(given))
        takers = [o.name for o in _optimizers().values() if key in o.keys]
        raise ValueError(f"algorithm {name!r} does not take {key} (value {describe(given[key])}); it is a "
                         f"hyperparameter of {', '.join(takers)}")
    hyper = opt.hyper(given) if opt is not None else {}
    if opt is not None and not opt.takes_transforms and (worker is not None or server is not None or normalize):
        raise ValueError(f"{name!r} is a complete optimizer: worker, server and normalize do not apply (build "
                         "other combinations with make('dsgd', server=compsde.optim.chain(...)))")
    check_bool("normalize", normalize)
    check_bool("error_feedback", error_feedback)
    if recipe.inner is None and (sync is not None or error_feedback or average_state):
        raise ValueError(f"sync, error_feedback and average_state are options of the local methods (local-sgd, "
                         f"local-adamw), not of {name!r}")
    if recipe.inner is not None:
        if sync is None:
            raise ValueError(f"algorithm {name!r} needs a synchronisation schedule: sync = SyncSchedule(...) "
                             "(every-step, constant, post-local or qsr)")
        if normalize:
            raise ValueError(f"normalize is not defined for {name!r} (its updates are parameter deltas)")
        if compressor is None:
            compressor = default_compressor(name)  # plain averaging of the parameters
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
    inner = opt.worker(hyper) if opt is not None and opt.worker is not None else transform_from(worker, "worker")
    server_t = (opt.server(hyper) if opt is not None and opt.server is not None
                else transform_from(server, "server", normalize_last=normalize))
    if recipe.inner == "adamw":
        if isinstance(worker, Mapping) and worker.get("momentum", 0.0):
            raise ValueError("local-adamw's inner optimizer is AdamW (β₁ = 0.9, β₂ = 0.999): worker.momentum does not apply")
        decay = worker.get("weight_decay", 0.0) if isinstance(worker, Mapping) else 0.0
        inner = chain(adam(), add_decayed_weights(decay)) if decay else adam()
    return Algorithm(name, comp, recipe.aggregation, recipe.error_feedback or error_feedback, inner, server_t,
                     sync=sync, outer_lr=outer_lr, average_state=average_state, optimizer=opt,
                     hyper={k: v for k, v in hyper.items() if v is not None})
