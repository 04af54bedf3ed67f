"""What a config may say: the field kinds, the schema of each section, and ``resolve``.

``resolve(raw)`` validates a raw config (a dict from TOML, ``--set`` overrides applied) and returns it
with every default filled in: a plain dict that ``tomlio.dumps`` writes and ``build.build`` turns
into objects. Every error is a ValueError naming the key, its value and what is valid.

Schema (unknown keys and wrong types are refused with the valid keys/types)::

    [run]       steps (int in [1, 10⁹], default 1000), repeats (int in [1, 10⁹], 32), seed (int ≥ 0, 0),
                dtype ("float64"|"float32"), device ("cpu", "cuda", "cuda:1", ...; default "cpu"),
                log_every (int, default max(1, steps // 200), i.e. ~200 logged points),
                title (str, default ""; plots show the name then), name (str: the experiment's name,
                default the preset's or file's name; used for the default output folder),
                paths (int, default = repeats), substeps (int, 1), increments ("gaussian"|"rademacher"),
                mc_samples (int, 32): the SDE integration of ``compsde track`` (accepted in any config)
    [problem]   name (required) + the problem class's constructor parameters (dim, ...)
    [noise]     name ("none"|"gaussian"|"student-t", default "gaussian"), scale (σ, a number or one per
                worker, default 1.0; not for "none"), nu (ν, default 3.0; only for "student-t")
    [[series]]  one curve each: method (required), compressor (implied for dsgd = identity and
                dsignsgd = sign), the compressor's own parameters (k, ratio, levels, shared, ...),
                lr (required), workers (1), batch (1), label, group (plot panel), schedule
                (constant|cosine|step|poly|linear) with its own keys flat in the table (final_ratio,
                gamma, every, power; warmup_steps for every schedule), normalize (bool), per_layer (bool: a network's parameter
                tensors compressed one by one), worker / server (transform tables: momentum,
                nesterov, weight_decay), for local-sgd / local-adamw sync (every-step |
                constant | post-local | qsr) with period, alpha, power, warmup_steps, switch_step
                as the schedule takes them, outer_lr, error_feedback (compressed deltas) and
                average_state (the inner optimizer's state averaged too), for the single-node optimizers
                (signsgd, rmsprop, rmspropw, adam, adamw, sam, usam, sgda, seg, shgd) their
                hyperparameters beta1, beta2, eps, weight_decay, rho as each takes them
                (``compsde.optimizers``), steps (a series may run longer than [run] steps),
                inline tables problem = {...} / noise = {...} overriding [problem] / [noise], and
                sde (the SDE ``compsde track`` integrates: "compsde", the library's own, by default, or
                an alternative of ``compsde.sde.alternatives.SDE_CHOICES`` that describes the series).

Keys that do not apply are refused, not ignored: a compressor parameter the compressor does not take,
the keys of another schedule, ``nu`` without Student-t noise, ``scale`` with noise "none". A series'
``problem`` or ``noise`` override that changes ``name`` inherits only the top-level keys that apply to
the new name.

Values: integers must fit TOML's 64 bits and numbers must be finite, anywhere in the config (TOML
has ``nan`` and ``inf`` literals; a NaN learning rate would only show up as a broken JSON summary);
seeds are in [0, 2⁶⁴); titles, labels and group names must be showable in a plot
(``compsde.core.checks.check_text``: no control characters, at most ``MAX_TEXT_LENGTH`` characters).

Labels: a series without ``label`` gets one derived from what distinguishes it — the method, the
compressor and its non-default parameters, ``normalized``, the schedule and its non-default keys,
the worker/server transforms, the inline problem/noise keys and an ``sde`` other than the library's
(``LABEL_KEYS``). Duplicate derived labels get `` #i``; duplicate explicit labels are refused.

All series share ``[run] seed``: they see *common random numbers* (the same seed gives the same
noise stream whenever the shapes agree), so differences between curves come from the methods.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from compsde import algorithms, compressors, optimizers
from compsde.algorithms import schedules
from compsde.algorithms.schedules import SCHEDULE_NAMES
from compsde.algorithms.sync import SYNC_NAMES, SYNC_PARAMS, SyncSchedule
from compsde.core.checks import MAX_INT64, MAX_TEXT_LENGTH, MAX_WORKERS, check_int, check_seed, describe
from compsde.core.tensors import DTYPES, resolve_device
from compsde.objectives import problems
from compsde.objectives.noise import NOISE_NAMES
from compsde.objectives.problems import Problem
from compsde.sde.alternatives import DEFAULT as DEFAULT_SDE
from compsde.sde.alternatives import check_choice
from compsde.sde.noise import INCREMENTS

__all__ = [
    "LABEL_KEYS", "MAX_COUNT", "NOISE_KEYS", "SCHEDULE_KEYS", "SECTIONS", "check_values", "compressor_params", "derive_label",
    "noise_keys", "problem_keys", "resolve", "schedule_keys",
]

SECTIONS = ("run", "problem", "noise", "series")

#: Upper bound of counts such as steps, repeats, paths and workers: far beyond any run that fits in a
#: day (``estimates``), and small enough that a list of logged steps cannot exhaust memory first.
MAX_COUNT = 10**9
MIN_INT64 = -(1 << 63)

# ---- field kinds -----------------------------------------------------------------------------

_TYPE_DOC = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false)",
    "str": "a string",
    "floats": "a number or a list of numbers",
    "table": "an inline table { key = value, ... }",
    "any": "any value",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _coerce(kind: str, key: str, value: Any) -> Any:
    """Check ``value`` against ``kind`` and return it normalised (ints become floats for numbers)."""
    ok = {
        "int": _is_int(value),
        "float": _is_num(value),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "floats": _is_num(value) or (isinstance(value, list) and len(value) > 0 and all(_is_num(x) for x in value)),
        "table": isinstance(value, dict),
        "any": True,
    }[kind]
    if not ok:
        raise ValueError(f"{key} must be {_TYPE_DOC[kind]}, got {describe(value)} ({_toml_type(value)})")
    if kind == "float":
        return float(value)
    if kind == "floats":
        return [float(x) for x in value] if isinstance(value, list) else float(value)
    return value


def _toml_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "table"
    return type(v).__name__


def _annotation_kind(ann: Any) -> str:
    """Map a (string) constructor annotation such as ``'int | None'`` to a field kind."""
    if ann is inspect.Parameter.empty:
        return "any"
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    parts = {p.strip() for p in text.split("|")} - {"None"}
    if parts == {"int"}:
        return "int"
    if parts <= {"int", "float"} and parts:
        return "float"
    if parts == {"bool"}:
        return "bool"
    if parts == {"str"}:
        return "str"
    return "any"


@dataclass(frozen=True)
class _Param:
    kind: str
    default: Any  # inspect.Parameter.empty when required


def _signature_params(cls: type) -> dict[str, _Param]:
    """Constructor parameters of ``cls`` (excluding self) with their kinds and defaults."""
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = _Param(_annotation_kind(p.annotation), p.default)
    return out


# ---- static schemas --------------------------------------------------------------------------

_RUN: dict[str, _Param] = {
    "steps": _Param("int", 1000),
    "repeats": _Param("int", 32),
    "seed": _Param("int", 0),
    "dtype": _Param("str", "float64"),
    "device": _Param("str", "cpu"),
    "log_every": _Param("int", None),  # None: max(1, steps // 200)
    "title": _Param("str", ""),
    "name": _Param("str", None),  # None: the name load() was given (preset or file stem)
    # SDE tracking (compsde track): M paths, integrator substeps per optimizer step, increments,
    # Monte Carlo samples per step for methods without a closed-form SDE.
    "paths": _Param("int", None),  # None: = repeats
    "substeps": _Param("int", 1),
    "increments": _Param("str", "gaussian"),
    "mc_samples": _Param("int", 32),
}
#: [run] counts and their ranges.
_RUN_COUNTS = {"steps": (1, MAX_COUNT), "repeats": (1, MAX_COUNT), "log_every": (1, MAX_COUNT),
               "paths": (1, MAX_COUNT), "substeps": (1, 10**6), "mc_samples": (2, 10**6)}
_NOISE: dict[str, _Param] = {
    "name": _Param("str", "gaussian"),
    "scale": _Param("floats", 1.0),
    "nu": _Param("float", 3.0),
}
#: The [noise] keys each noise model takes.
NOISE_KEYS: dict[str, tuple[str, ...]] = {"none": ("name",), "gaussian": ("name", "scale"),
                                          "student-t": ("name", "scale", "nu")}
_NOISE_WHY = {"nu": "only 'student-t' noise has degrees of freedom ν",
              "scale": "noise 'none' adds no noise, so it has no scale"}
SCHEDULE_KEYS = {"final_ratio": "float", "gamma": "float", "every": "int", "power": "float", "warmup_steps": "int"}
_SERIES_BASE: dict[str, _Param] = {
    "label": _Param("str", None),
    "group": _Param("str", ""),
    "method": _Param("str", inspect.Parameter.empty),
    "compressor": _Param("str", None),
    "lr": _Param("float", inspect.Parameter.empty),
    "schedule": _Param("str", "constant"),
    "normalize": _Param("bool", False),
    "per_layer": _Param("bool", None),  # networks: compress each parameter tensor on its own
    "worker": _Param("table", None),  # transforms on the workers' side: momentum, nesterov, weight_decay
    "server": _Param("table", None),  # ... and on the server's side
    "workers": _Param("int", 1),
    "batch": _Param("int", 1),
    "steps": _Param("int", None),  # None: [run] steps (a series may run longer, e.g. at a smaller η)
    "problem": _Param("table", None),
    "noise": _Param("table", None),
    "sde": _Param("str", None),  # None: the library's own SDE (compsde.sde.alternatives.DEFAULT)
}
_SERIES_COUNTS = {"workers": (1, MAX_WORKERS), "batch": (1, MAX_INT64), "steps": (1, MAX_COUNT)}
#: Keys of the local methods (local-sgd, local-adamw): the synchronisation schedule's (``SYNC_PARAMS``
#: says which each takes) and the outer step's.
LOCAL_KEYS = {"sync": "str", "period": "int", "alpha": "float", "power": "float", "warmup_steps": "int",
              "switch_step": "int", "outer_lr": "float", "error_feedback": "bool", "average_state": "bool"}


def all_compressor_params() -> list[str]:
    """Every parameter name some compressor takes."""
    out: list[str] = []
    for n in compressors.names():
        for p in compressors.param_names(n):
            if p not in out:
                out.append(p)
    return out


def compressor_params(name: str) -> dict[str, _Param]:
    """Parameters of compressor ``name`` (a composition 'a+b' takes the union of its parts); ValueError
    listing the valid names for an unknown one."""
    out: dict[str, _Param] = {}
    for part in (p.strip() for p in name.split("+")):
        cls = compressors.compressor_class(part)
        for k, v in _signature_params(cls).items():
            out.setdefault(k, v)
    return out


def schedule_keys(name: str) -> tuple[str, ...]:
    """The keys schedule ``name`` takes (empty for an unknown name)."""
    return tuple(schedules.SCHEDULE_PARAMS.get(name, ()))


def noise_keys(name: str) -> tuple[str, ...]:
    """The [noise] keys noise ``name`` takes (all of them for an unknown name)."""
    return NOISE_KEYS.get(name, tuple(_NOISE))


def problem_class(name: Any, where: str) -> type[Problem]:
    if not isinstance(name, str) or name not in problems.names():
        raise ValueError(f"{where}.name: unknown problem {describe(name)}; valid names: {', '.join(problems.names())}")
    return problems.problem_class(name)


def problem_keys(name: str) -> tuple[str, ...]:
    """The keys a [problem] table of problem ``name`` takes (``name`` included)."""
    return ("name", *_signature_params(problems.problem_class(name)))


#: The named optimizers' hyperparameters (``optimizer_keys`` says which takes which).
OPTIMIZER_KEYS = optimizers.hyper_keys()


def optimizer_keys(method: str) -> tuple[str, ...]:
    """The hyperparameters method ``method`` takes, in its recipe's order (none for a distributed method)."""
    return optimizers.get(method).keys if method in optimizers.REGISTRY else ()


def label_keys() -> frozenset[str]:
    """The series keys a derived label is made from (see module doc)."""
    return frozenset({"method", "compressor", "normalize", "per_layer", *LOCAL_KEYS, *OPTIMIZER_KEYS, "schedule", "worker", "server", "problem", "noise",
                      "sde", *all_compressor_params(), *SCHEDULE_KEYS})


LABEL_KEYS = label_keys()


# ---- values anywhere in the config -------------------------------------------------------------------


def check_values(value: Any, where: str) -> None:
    """Refuse integers outside TOML's 64-bit range and non-finite numbers anywhere inside ``value``."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not MIN_INT64 <= value <= MAX_INT64:
            raise ValueError(f"{where} = {describe(value)} is outside TOML's 64-bit integer range "
                             f"[-2^63, 2^63 - 1]; config integers must fit in it")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} = {value!r}: numbers in a config must be finite (nan and inf are refused)")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            check_values(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):  # series.0.lr (as --set names it), noise.scale[1]
            check_values(v, f"{where}.{i}" if isinstance(v, Mapping) else f"{where}[{i}]")


def _check_text(value: str, key: str) -> None:
    from compsde.core.checks import check_text

    check_text(value, f"{key} = {describe(value)}")


def _check_name(value: str, key: str) -> None:
    """The experiment's name names the output folder and heads the plots."""
    if not value.strip() or value in (".", "..") or any(c in value for c in "/\\"):
        raise ValueError(f"{key} = {describe(value)}: the name must be non-empty, not '.' or '..', and contain no "
                         "'/' or '\\' (it names the output folder runs/<name>-<time>)")
    if len(value) > 100:
        raise ValueError(f"{key} = {describe(value)} is {len(value)} characters long; a name has at most 100")
    _check_text(value, key)


# ---- validation and defaults ---------------------------------------------------------------------


def _check_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table, got {describe(table)} ({_toml_type(table)})")
    return table


def _reject_unknown(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for k, v in table.items():
        if k not in valid:
            raise ValueError(f"{where}: unknown key {k!r} (value {describe(v)}); valid keys: {', '.join(valid)}")


def _resolve_fields(table: Mapping[str, Any], spec: Mapping[str, _Param], where: str) -> dict[str, Any]:
    """Type-check the keys of ``table`` present in ``spec`` and fill the defaults of missing ones."""
    out: dict[str, Any] = {}
    for k, p in spec.items():
        if k in table:
            out[k] = _coerce(p.kind, f"{where}.{k}", table[k])
        elif p.default is inspect.Parameter.empty:
            raise ValueError(f"{where}: missing required key {k!r}")
        elif p.default is not None:
            out[k] = copy.deepcopy(p.default)
    return out


def _resolve_run(raw: Any, name: str) -> dict[str, Any]:
    run = _check_table(raw if raw is not None else {}, "[run]")
    _reject_unknown(run, _RUN, "[run]")
    out = _resolve_fields(run, _RUN, "run")
    for k, (lo, hi) in _RUN_COUNTS.items():
        if k in out:
            check_int(f"run.{k}", out[k], min=lo, max=hi)
    if out["increments"] not in INCREMENTS:
        raise ValueError(f"run.increments must be one of {', '.join(INCREMENTS)}, got {describe(out['increments'])}")
    check_seed("run.seed", out["seed"])
    if out["dtype"] not in DTYPES:
        raise ValueError(f"run.dtype must be one of {', '.join(DTYPES)}, got {describe(out['dtype'])}")
    out["device"] = str(resolve_device(out["device"], "run.device"))
    out.setdefault("name", name)
    _check_name(out["name"], "run.name")
    _check_text(out["title"], "run.title")
    out.setdefault("log_every", max(1, out["steps"] // 200))
    out.setdefault("paths", out["repeats"])
    return {k: out[k] for k in _RUN}


def _resolve_problem(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    table = _check_table(table, where)
    if "name" not in table:
        raise ValueError(f"{where}: missing required key 'name'; valid names: {', '.join(problems.names())}")
    cls = problem_class(table["name"], where.strip("[]"))
    spec = _signature_params(cls)
    _reject_unknown(table, ["name", *spec], where)
    out = {"name": table["name"]}
    out.update(_resolve_fields(table, spec, where.strip("[]")))
    if "seed" in out:
        check_seed(f"{where.strip('[]')}.seed", out["seed"])
    return out


def _noise_name(value: Any, key: str) -> str:
    if not isinstance(value, str) or value not in NOISE_NAMES:
        raise ValueError(f"{key} must be one of {', '.join(NOISE_NAMES)}, got {describe(value)}")
    return value


def _check_noise_applies(table: Mapping[str, Any], name: str, where: str) -> None:
    """Refuse explicit keys that noise ``name`` does not take (``nu`` without Student-t, ...)."""
    for k, v in table.items():
        if k in _NOISE and k not in NOISE_KEYS[name]:
            raise ValueError(f"{where}.{k} = {describe(v)} does not apply to noise {name!r}: {_NOISE_WHY[k]}; "
                             f"noise {name!r} takes: {', '.join(NOISE_KEYS[name])}")


def _resolve_noise(table: Mapping[str, Any], where: str, inherited: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """[noise] (``inherited`` None) or a series' noise override on top of the resolved [noise]:
    explicit keys must apply to the noise named; inherited keys that do not are dropped."""
    key = where.strip("[]")
    table = _check_table(table, where)
    _reject_unknown(table, _NOISE, where)
    base = dict(inherited or {})
    name = _noise_name(table.get("name", base.get("name", _NOISE["name"].default)), f"{key}.name")
    _check_noise_applies(table, name, key)
    merged = {k: v for k, v in {**base, **table}.items() if k in NOISE_KEYS[name]}
    out = _resolve_fields(merged, {k: _NOISE[k] for k in NOISE_KEYS[name]}, key)
    return out


def _diff(merged: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``merged`` that ``base`` lacks or holds with another value."""
    return {k: v for k, v in merged.items() if k not in base or base[k] != v}


def merge_problem(top: Mapping[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Top-level [problem] updated by a series override; a new ``name`` inherits only valid keys."""
    name = override.get("name", top["name"])
    cls = problem_class(name, where)
    valid = set(_signature_params(cls))
    base = {k: v for k, v in top.items() if k in valid}
    return {"name": name, **base, **override}


def merge_noise(top: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A series' full noise table: [noise] updated by its override (keys that do not apply dropped)."""
    name = override.get("name", top["name"])
    return {k: v for k, v in {**top, **override}.items() if k in NOISE_KEYS[name]}


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _schedule_label(s: Mapping[str, Any]) -> str:
    """The schedule's name with its keys that differ from their defaults (``schedules.SCHEDULE_DEFAULTS``,
    ``schedules.default_every``), ``every`` last and only when ``s["steps"]`` is known (its default depends
    on the run's length and warm-up)."""
    name, steps = s["schedule"], s.get("steps")
    keys = [k for k in schedule_keys(name) if k != "every"] + (["every"] if steps is not None else [])
    defaults = {**schedules.SCHEDULE_DEFAULTS,
                "every": schedules.default_every(steps or 0, s.get("warmup_steps", schedules.SCHEDULE_DEFAULTS["warmup_steps"]))}
    extra = ",".join(f"{k}={_fmt(s[k])}" for k in keys if k in s and s[k] != defaults[k])
    return f"{name}({extra})" if extra else name


def derive_label(s: Mapping[str, Any]) -> str:
    """A resolved series' label from what distinguishes it (see module doc): e.g. ``DCSGD rand-k(ratio=0.25)
    normalized poly(power=1) worker(momentum=0.9) ν=1``."""
    parts = [algorithms.display_name(s["method"])]
    comp = s["compressor"]
    if comp != algorithms.default_compressor(s["method"]):
        cspec = compressor_params(comp)
        extra = ",".join(f"{k}={s[k]}" for k, p in cspec.items() if k in s and s[k] != p.default)
        parts.append(f"{comp}({extra})" if extra else comp)
    if s["normalize"]:
        parts.append("normalized")
    if s.get("sync"):
        defaults = {k: f.default for k, f in SyncSchedule.__dataclass_fields__.items()} | {"outer_lr": 1.0}
        extra = ",".join(f"{k}={_fmt(s[k])}" for k in (*SYNC_PARAMS[s["sync"]], "outer_lr")
                         if k in s and k != "warmup_steps" and s[k] != defaults[k])  # warm-up: in the schedule's part
        parts.append(f"{s['sync']}({extra})" if extra else s["sync"])
    hyper = ",".join(f"{k}={_fmt(s[k])}" for k in optimizer_keys(s["method"]) if k in s)
    if hyper:
        parts.append(f"({hyper})")
    if s.get("error_feedback"):
        parts.append("EF")
    if s.get("average_state"):
        parts.append("state averaged")
    if s.get("per_layer"):
        parts.append("per layer")
    if s.get("sde", DEFAULT_SDE) != DEFAULT_SDE:
        parts.append(f"SDE {s['sde']}")
    if s["schedule"] != "constant":
        parts.append(_schedule_label(s))
    for side in ("worker", "server"):
        if s.get(side):
            parts.append(f"{side}(" + ",".join(f"{k}={_fmt(v)}" for k, v in s[side].items()) + ")")
    for sect in ("problem", "noise"):
        for k, v in s.get(sect, {}).items():
            text = _fmt(v)
            parts.append(text if k == "name" else f"{'ν' if k == 'nu' else k}={text}")
    return " ".join(parts)


@dataclass(frozen=True)
class _SeriesKind:
    """What decides the keys a series takes: its method, compressor, schedule and (local methods only)
    synchronisation schedule."""

    method: str
    compressor: str
    compressor_params: dict[str, _Param]
    schedule: str
    sync: str | None  # None: not a local method

    @property
    def schedule_keys(self) -> tuple[str, ...]:
        return schedule_keys(self.schedule)

    @property
    def local_keys(self) -> tuple[str, ...]:
        if self.sync is None:
            return ()
        return ("sync", *SYNC_PARAMS[self.sync], "outer_lr", "error_feedback", "average_state")

    @property
    def optimizer_keys(self) -> tuple[str, ...]:
        return optimizer_keys(self.method)

    @property
    def valid_keys(self) -> list[str]:
        return [*_SERIES_BASE, *self.compressor_params, *self.schedule_keys, *self.local_keys, *self.optimizer_keys]


def _series_kind(s: Mapping[str, Any], where: str) -> _SeriesKind:
    """A series' method, compressor (given or implied by the method), schedule and sync, each checked."""
    if "method" not in s:
        raise ValueError(f"{where}: missing required key 'method'; valid methods: {', '.join(algorithms.names())}")
    method = s["method"]
    if not isinstance(method, str) or method not in algorithms.names():
        raise ValueError(f"{where}.method: unknown method {describe(method)}; valid methods: {', '.join(algorithms.names())}")
    comp = s.get("compressor", algorithms.default_compressor(method))
    if comp is None:
        raise ValueError(f"{where}: method {method!r} needs a compressor; valid compressors: {', '.join(compressors.names())}")
    comp = _coerce("str", f"{where}.compressor", comp)
    try:
        cspec = compressor_params(comp)
    except ValueError as e:
        raise ValueError(f"{where}.compressor: {e}") from None
    sched = s.get("schedule", "constant")
    if not isinstance(sched, str) or sched not in SCHEDULE_NAMES:
        raise ValueError(f"{where}.schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {describe(sched)}")
    sync = None
    if algorithms.is_local(method):
        sync = s.get("sync", "every-step")
        if not isinstance(sync, str) or sync not in SYNC_NAMES:
            raise ValueError(f"{where}.sync must be one of {', '.join(SYNC_NAMES)}, got {describe(sync)}")
    if sync == "qsr" and sched == "poly" and "power" in s:
        raise ValueError(f"{where}.power is ambiguous with sync = 'qsr' and schedule = 'poly' (both take a power); "
                         "use another learning-rate schedule, or QSR's default power 2")
    return _SeriesKind(method, comp, cspec, sched, sync)


def _reject_inapplicable(s: Mapping[str, Any], kind: _SeriesKind, where: str) -> None:
    """Refuse a key the series does not take, saying why: another schedule's, a local method's, another
    optimizer's, another compressor's, or no key at all."""
    valid = kind.valid_keys
    for k, v in s.items():
        if k in valid:
            continue
        if k in SCHEDULE_KEYS and not (kind.sync is not None and k in LOCAL_KEYS):
            raise ValueError(f"{where}: key {k!r} (value {describe(v)}) belongs to another schedule; schedule "
                             f"{kind.schedule!r} takes: {', '.join(kind.schedule_keys) or 'nothing'}")
        if k in LOCAL_KEYS:
            why = (f"sync {kind.sync!r} takes {', '.join(SYNC_PARAMS[kind.sync]) or 'no period keys'}" if kind.sync is not None
                   else f"it applies to the local methods (local-sgd, local-adamw), not to {kind.method!r}")
            raise ValueError(f"{where}: key {k!r} (value {describe(v)}) does not apply: {why}")
        if k in OPTIMIZER_KEYS:
            raise ValueError(f"{where}: key {k!r} (value {describe(v)}) does not apply: method {kind.method!r} takes "
                             f"{', '.join(kind.optimizer_keys) or 'none of ' + ', '.join(OPTIMIZER_KEYS)}")
        if k in all_compressor_params():
            raise ValueError(f"{where}: compressor {kind.compressor!r} does not take {k!r} (value {describe(v)}); "
                             f"it takes: {', '.join(kind.compressor_params) or 'nothing'}")
        raise ValueError(f"{where}: unknown key {k!r} (value {describe(v)}); valid keys: {', '.join(valid)}")


def _resolve_schedule(s: Mapping[str, Any], name: str, steps: int, where: str) -> dict[str, Any]:
    """Every key of schedule ``name``: the given ones type-checked, the others at their defaults for a
    series of ``steps`` steps (``every`` depends on the run)."""
    given = {k: _coerce(SCHEDULE_KEYS[k], f"{where}.{k}", s[k]) for k in schedule_keys(name) if k in s}
    if "every" in given:
        check_int(f"{where}.every", given["every"], min=1, max=MAX_COUNT)
    if "warmup_steps" in given:  # before it sets every's default
        check_int(f"{where}.warmup_steps", given["warmup_steps"], min=0, max=steps)
    return schedules.schedule_params(name, steps, given)


def _resolve_transforms(base: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The non-empty worker / server transform tables, their keys checked."""
    out = {}
    for side in ("worker", "server"):
        if side in base:
            table = base[side]
            bad = sorted(set(table) - set(algorithms.TRANSFORM_KEYS))
            if bad:
                raise ValueError(f"{where}.{side}: unknown key {bad[0]!r} (value {describe(table[bad[0]])}); "
                                 f"valid keys: {', '.join(algorithms.TRANSFORM_KEYS)}")
            if table:
                out[side] = dict(table)
    return out


def _resolve_overrides(base: Mapping[str, Any], top_problem: Mapping[str, Any], top_noise: Mapping[str, Any],
                       where: str) -> dict[str, Any]:
    """A series' problem / noise overrides, resolved and kept only where they differ from [problem] / [noise]."""
    out = {}
    if "problem" in base:
        merged = merge_problem(top_problem, base["problem"], f"{where}.problem")
        d = _diff(_resolve_problem(merged, f"{where}.problem"), top_problem)
        if d:
            out["problem"] = d
    if "noise" in base:
        d = _diff(_resolve_noise(base["noise"], f"{where}.noise", inherited=top_noise), top_noise)
        if d:
            out["noise"] = d
    return out


def _series_label(out: Mapping[str, Any], steps: int, where: str) -> str:
    """The series' label as given, or derived (``derive_label``) and cut to leave room for a " #123" suffix."""
    if out["label"] is not None:
        _check_text(out["label"], f"{where}.label")
        return str(out["label"])
    label = derive_label({**out, "steps": steps})
    if len(label) > MAX_TEXT_LENGTH - 6:
        label = label[: MAX_TEXT_LENGTH - 7] + "…"
    _check_text(label, f"{where}.label (derived)")
    return label


def _resolve_series(i: int, raw: Any, run: Mapping[str, Any], top_problem: Mapping[str, Any],
                    top_noise: Mapping[str, Any]) -> dict[str, Any]:
    """Series ``i`` checked key by key, with its defaults filled in and its label derived if not given."""
    where = f"series.{i}"
    s = _check_table(raw, f"[[series]] {i}")
    kind = _series_kind(s, where)
    _reject_inapplicable(s, kind, where)
    base = _resolve_fields(s, _SERIES_BASE, where)
    out: dict[str, Any] = {"label": base.get("label"), "group": base["group"], "method": kind.method,
                           "compressor": kind.compressor}
    out.update(_resolve_fields(s, kind.compressor_params, where))
    out["lr"] = base["lr"]
    out["schedule"] = kind.schedule
    series_steps = base.get("steps", run["steps"])
    check_int(f"{where}.steps", series_steps, min=1, max=MAX_COUNT)  # before the schedule's defaults use it
    out.update(_resolve_schedule(s, kind.schedule, series_steps, where))
    out["normalize"] = base["normalize"]
    out.update({k: _coerce(LOCAL_KEYS[k], f"{where}.{k}", s[k]) for k in kind.local_keys if k in s})
    if kind.sync is not None:
        out["sync"] = kind.sync
    # only the hyperparameters given: their defaults live in compsde.optimizers
    out.update({k: _coerce("float", f"{where}.{k}", s[k]) for k in kind.optimizer_keys if k in s})
    if base.get("per_layer"):
        out["per_layer"] = True
    out.update(_resolve_transforms(base, where))
    out["workers"], out["batch"] = base["workers"], base["batch"]
    if base.get("steps") is not None and base["steps"] != run["steps"]:
        out["steps"] = base["steps"]
    for k, (lo, hi) in _SERIES_COUNTS.items():
        if k in out:
            check_int(f"{where}.{k}", out[k], min=lo, max=hi)
    out.update(_resolve_overrides(base, top_problem, top_noise, where))
    if "sde" in base:
        given = {k: out[k] for k in kind.optimizer_keys if k in out}
        hyper = optimizers.get(kind.method).hyper(given) if kind.method in optimizers.REGISTRY else {}
        out["sde"] = check_choice(base["sde"], kind.method, hyper, kind.schedule, f"{where}.sde")
    _check_text(out["group"], f"{where}.group")
    out["label"] = _series_label(out, series_steps, where)
    return out


def resolve(raw: Mapping[str, Any], name: str = "config") -> dict[str, Any]:
    """Validate a raw config and return it with every default filled in (plain dict, TOML-writable).

    ``name`` is the experiment's name when the config has no ``[run] name`` (``load`` passes the
    preset's or file's name). Raises ValueError naming the key, the value and what is valid.
    """
    raw = _check_table(raw, "config")
    _reject_unknown(raw, SECTIONS, "config (top level)")
    check_values(raw, "")
    run = _resolve_run(raw.get("run"), name)
    if "problem" not in raw:
        raise ValueError(f"config: missing [problem] table (with name = one of {', '.join(problems.names())})")
    problem = _resolve_problem(raw["problem"], "[problem]")
    noise = _resolve_noise(raw.get("noise", {}), "[noise]")
    series_raw = raw.get("series")
    if not isinstance(series_raw, list) or not series_raw:
        raise ValueError("config: needs one or more [[series]] tables (each with method, compressor, lr, workers, batch, ...)")
    series = [_resolve_series(i, s, run, problem, noise) for i, s in enumerate(series_raw)]
    seen: dict[str, int] = {}
    for i, s in enumerate(series):
        if s["label"] in seen:
            given = "label" in series_raw[i] and "label" in series_raw[seen[s["label"]]]
            if given:
                raise ValueError(f"series.{i}.label: {s['label']!r} is already the label of series {seen[s['label']]}; labels must be unique")
            s["label"] = f"{s['label']} #{i}"
        seen[s["label"]] = i
    return {"run": run, "problem": problem, "noise": noise, "series": series}
