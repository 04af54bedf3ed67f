"""Experiment configuration: TOML file or built-in preset → validated, fully resolved dict → objects.

This module is the one place where configuration becomes ``Problem`` / ``Noise`` / ``Method`` /
``Schedule`` objects (``build``). The pipeline is::

    raw = load_source("noise-resilience")          # a preset name or a path to a .toml file
    raw = apply_overrides(raw, ["run.steps=50"])    # --set KEY=VALUE, dotted keys
    cfg = resolve(raw)                              # validate, fill every default -> plain dict
    exp = build(cfg)                                # the objects a run needs
    dumps(cfg)                                      # TOML text that reproduces the run exactly

Schema (unknown keys and wrong types are rejected with the list of valid keys/types)::

    [run]       steps (int, default 1000), repeats (int, 32), seed (int, 0), dtype ("float64"|"float32"),
                log_every (int, default max(1, steps // 200), i.e. ~200 logged points), title (str)
    [problem]   name (required) + the problem class's constructor parameters (dim, ...)
    [noise]     name ("none"|"gaussian"|"student-t", default "gaussian"), scale (σ, number or one per
                worker, default 1.0), nu (ν, default 3.0)
    [[series]]  one curve each: method (required), compressor (implied for dsgd = identity and
                dsignsgd = sign), the compressor's own parameters (k, ratio, levels, shared, ...),
                lr (required), workers (1), batch (1), label, group (plot panel), schedule
                (constant|cosine|step|poly) with its own keys flat in the table (final_ratio, gamma,
                every, power), normalize (bool), and optional inline tables problem = {...} /
                noise = {...} overriding the top-level [problem] / [noise] for this series.

A series' ``problem`` override that changes ``name`` inherits only the top-level keys the new problem
class accepts. All series share ``[run] seed``: they see *common random numbers* (the same seed
gives the same noise stream whenever the shapes agree), so differences between curves come from the
methods, not from luck.

``--set`` keys: ``run.steps=50``, ``noise.nu=2``, ``problem.dim=5``, ``series.lr=0.1`` (every
series), ``series.2.lr=0.1`` (series 2, 0-based), ``series.0.noise.nu=1``. The value is parsed as a
TOML value (``3``, ``0.5``, ``true``, ``"x"``, ``[1, 2]``, ``{nu = 2}``); a bare word that is not
valid TOML is taken as a string (``noise.name=student-t``).

Presets are TOML files in ``compsde/presets/``; the first comment line is the one-line description.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from compsde import algorithms, compressors
from compsde.algorithms import Algorithm, schedules
from compsde.algorithms.schedules import SCHEDULE_NAMES, Schedule
from compsde.core.tensors import DTYPES
from compsde.objectives import Oracle, problems
from compsde.objectives.noise import NOISE_NAMES, Noise
from compsde.objectives.problems import Problem
from compsde.sde.integrators import INCREMENTS

__all__ = [
    "Experiment",
    "SeriesSpec",
    "apply_overrides",
    "build",
    "dumps",
    "load",
    "load_source",
    "parse_set",
    "preset_names",
    "presets",
    "resolve",
]

SECTIONS = ("run", "problem", "noise", "series")

# ---- field types -----------------------------------------------------------------------------

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
        raise ValueError(f"{key} must be {_TYPE_DOC[kind]}, got {value!r} ({_toml_type(value)})")
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
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = _Param(_annotation_kind(p.annotation), p.default)
    return out


# ---- static schemas --------------------------------------------------------------------------

_RUN: dict[str, _Param] = {
    "steps": _Param("int", 1000),
    "repeats": _Param("int", 32),
    "seed": _Param("int", 0),
    "dtype": _Param("str", "float64"),
    "log_every": _Param("int", None),  # None: max(1, steps // 200)
    "title": _Param("str", ""),
    # SDE tracking (compsde track): M paths, integrator substeps per optimizer step, increments,
    # Monte Carlo samples per step for methods without a closed-form SDE.
    "paths": _Param("int", None),  # None: = repeats
    "substeps": _Param("int", 1),
    "increments": _Param("str", "gaussian"),
    "mc_samples": _Param("int", 32),
}
_NOISE: dict[str, _Param] = {
    "name": _Param("str", "gaussian"),
    "scale": _Param("floats", 1.0),
    "nu": _Param("float", 3.0),
}
_SCHEDULE_DEFAULTS = {"final_ratio": 0.0, "gamma": 0.1, "every": None, "power": 0.5}  # every: steps // 3
_SCHEDULE_KEYS = {"final_ratio": "float", "gamma": "float", "every": "int", "power": "float"}
_SERIES_BASE: dict[str, _Param] = {
    "label": _Param("str", None),
    "group": _Param("str", ""),
    "method": _Param("str", inspect.Parameter.empty),
    "compressor": _Param("str", None),
    "lr": _Param("float", inspect.Parameter.empty),
    "schedule": _Param("str", "constant"),
    "normalize": _Param("bool", False),
    "worker": _Param("table", None),  # transforms on the workers' side: momentum, nesterov, weight_decay
    "server": _Param("table", None),  # ... and on the server's side
    "workers": _Param("int", 1),
    "batch": _Param("int", 1),
    "steps": _Param("int", None),  # None: [run] steps (a series may run longer, e.g. at a smaller η)
    "problem": _Param("table", None),
    "noise": _Param("table", None),
}


def _all_compressor_params() -> list[str]:
    out: list[str] = []
    for n in compressors.names():
        for p in compressors.param_names(n):
            if p not in out:
                out.append(p)
    return out


def _compressor_params(name: str) -> dict[str, _Param]:
    """Parameters of compressor ``name`` (a composition 'a+b' takes the union of its parts)."""
    out: dict[str, _Param] = {}
    for part in (p.strip() for p in name.split("+")):
        cls = compressors.compressor_class(part)  # raises ValueError listing the valid names
        for k, v in _signature_params(cls).items():
            out.setdefault(k, v)
    return out


def _problem_class(name: Any, where: str) -> type[Problem]:
    if not isinstance(name, str) or name not in problems.names():
        raise ValueError(f"{where}.name: unknown problem {name!r}; valid names: {', '.join(problems.names())}")
    return problems.problem_class(name)


# ---- loading ---------------------------------------------------------------------------------


def _presets_dir() -> Any:
    return resources.files("compsde.experiments").joinpath("presets")


def preset_names() -> list[str]:
    """Names of the built-in presets (file stems in ``compsde/presets``), sorted."""
    d = _presets_dir()
    try:
        entries = list(d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name[: -len(".toml")] for e in entries if e.name.endswith(".toml"))


def _preset_text(name: str) -> str:
    return _presets_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")


def _description(text: str) -> str:
    """The first comment line of a TOML file (the preset's one-line description)."""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            desc = s.lstrip("#").strip()
            if desc:
                return desc
        elif s:
            break
    return ""


def presets() -> dict[str, str]:
    """Built-in presets: name -> one-line description (the file's first comment line)."""
    return {n: _description(_preset_text(n)) for n in preset_names()}


def load_source(source: str | Path) -> tuple[dict[str, Any], str]:
    """Read a config file or a preset by name; returns (raw dict, name for the run directory).

    A path to an existing file wins over a preset of the same name. Raises ValueError if neither
    exists or the TOML does not parse.
    """
    path = Path(source)
    if path.is_file():
        text, stem, where = path.read_text(encoding="utf-8"), path.stem, str(path)
    elif str(source) in preset_names():
        text, stem, where = _preset_text(str(source)), str(source), f"preset {source!r}"
    else:
        raise ValueError(
            f"unknown preset or config file {str(source)!r}: no such file; "
            f"valid presets: {', '.join(preset_names()) or 'none'}"
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: invalid TOML: {e}") from None
    return raw, stem


# ---- --set overrides ---------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``3``, ``0.5``, ``true``, ``"s"``, ``[1, 2]``, ``{a = 1}``);
    text that is not a TOML value is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def parse_set(item: str) -> tuple[list[str], Any]:
    """Split ``KEY=VALUE`` into the dotted key's parts and the parsed value."""
    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE (e.g. run.steps=50), got {item!r}")
    key, _, value = item.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ValueError(f"--set: empty key in {item!r}; use dotted keys such as run.steps=50 or series.0.lr=0.1")
    if parts[0] not in SECTIONS:
        raise ValueError(f"--set {item!r}: unknown section {parts[0]!r}; valid sections: {', '.join(SECTIONS)}")
    if len(parts) < 2:
        raise ValueError(f"--set {item!r}: give a key inside the section, e.g. {parts[0]}.KEY=VALUE")
    return parts, parse_value(value)


def apply_overrides(raw: Mapping[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with every ``KEY=VALUE`` of ``items`` applied (see module doc)."""
    out = copy.deepcopy(dict(raw))
    for item in items:
        parts, value = parse_set(item)
        section, rest = parts[0], parts[1:]
        if section == "series":
            series = out.get("series")
            if not isinstance(series, list) or not series:
                raise ValueError(f"--set {item!r}: the config has no [[series]] tables")
            if rest[0].isdigit():
                i = int(rest[0])
                if i >= len(series):
                    raise ValueError(f"--set {item!r}: series index {i} out of range; the config has {len(series)} series (0-based: 0..{len(series) - 1})")
                targets, rest = [series[i]], rest[1:]
                if not rest:
                    raise ValueError(f"--set {item!r}: give a key inside the series, e.g. series.{i}.lr=0.1")
            else:
                targets = series
            for t in targets:
                _set_path(t, rest, copy.deepcopy(value), item)
        else:
            table = out.setdefault(section, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {item!r}: [{section}] is not a table in the config")
            _set_path(table, rest, value, item)
    return out


def _set_path(table: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    for p in path[:-1]:
        nxt = table.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {item!r}: {p!r} holds {nxt!r}, not a table")
        table = nxt
    table[path[-1]] = value


# ---- validation and defaults ---------------------------------------------------------------------


def _check_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table, got {table!r} ({_toml_type(table)})")
    return table


def _reject_unknown(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for k, v in table.items():
        if k not in valid:
            raise ValueError(f"{where}: unknown key {k!r} (value {v!r}); valid keys: {', '.join(valid)}")


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


def _resolve_run(raw: Any) -> dict[str, Any]:
    run = _check_table(raw if raw is not None else {}, "[run]")
    _reject_unknown(run, _RUN, "[run]")
    out = _resolve_fields(run, _RUN, "run")
    for k in ("steps", "repeats", "log_every", "paths", "substeps"):
        if k in out and out[k] < 1:
            raise ValueError(f"run.{k} must be an integer ≥ 1, got {out[k]!r}")
    if out["mc_samples"] < 2:
        raise ValueError(f"run.mc_samples must be an integer ≥ 2, got {out['mc_samples']!r}")
    if out["increments"] not in INCREMENTS:
        raise ValueError(f"run.increments must be one of {', '.join(INCREMENTS)}, got {out['increments']!r}")
    if out["seed"] < 0:
        raise ValueError(f"run.seed must be an integer ≥ 0, got {out['seed']!r}")
    if out["dtype"] not in DTYPES:
        raise ValueError(f"run.dtype must be one of {', '.join(DTYPES)}, got {out['dtype']!r}")
    out.setdefault("log_every", max(1, out["steps"] // 200))
    out.setdefault("paths", out["repeats"])
    return {k: out[k] for k in _RUN}


def _resolve_problem(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    table = _check_table(table, where)
    if "name" not in table:
        raise ValueError(f"{where}: missing required key 'name'; valid names: {', '.join(problems.names())}")
    cls = _problem_class(table["name"], where.strip("[]"))
    spec = _signature_params(cls)
    _reject_unknown(table, ["name", *spec], where)
    out = {"name": table["name"]}
    out.update(_resolve_fields(table, spec, where.strip("[]")))
    return out


def _resolve_noise(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    table = _check_table(table, where)
    _reject_unknown(table, _NOISE, where)
    out = _resolve_fields(table, _NOISE, where.strip("[]"))
    if out["name"] not in NOISE_NAMES:
        raise ValueError(f"{where.strip('[]')}.name must be one of {', '.join(NOISE_NAMES)}, got {out['name']!r}")
    return out


def _diff(merged: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``merged`` that ``base`` lacks or holds with another value."""
    return {k: v for k, v in merged.items() if k not in base or base[k] != v}


def _merge_problem(top: Mapping[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Top-level [problem] updated by a series override; a new ``name`` inherits only valid keys."""
    name = override.get("name", top["name"])
    cls = _problem_class(name, where)
    valid = set(_signature_params(cls))
    base = {k: v for k, v in top.items() if k in valid}
    return {"name": name, **base, **override}


def _method_display(name: str) -> str:
    return algorithms.display_name(name)


def _derive_label(s: Mapping[str, Any], implied: str | None, cparams: Mapping[str, Any],
                  given_cparams: Iterable[str]) -> str:
    parts = [_method_display(s["method"])]
    if s["compressor"] != implied:
        comp = s["compressor"]
        extra = ",".join(f"{k}={cparams[k]}" for k in given_cparams if k in cparams)
        parts.append(f"{comp}({extra})" if extra else comp)
    if s["normalize"]:
        parts.append("normalized")
    if s["schedule"] != "constant":
        parts.append(s["schedule"])
    for sect in ("problem", "noise"):
        for k, v in s.get(sect, {}).items():
            text = f"{v:g}" if isinstance(v, float) else str(v)
            parts.append(text if k == "name" else f"{'ν' if k == 'nu' else k}={text}")
    return " ".join(parts)


def _resolve_series(i: int, raw: Any, run: Mapping[str, Any], top_problem: Mapping[str, Any],
                    top_noise: Mapping[str, Any]) -> dict[str, Any]:
    where = f"series.{i}"
    s = _check_table(raw, f"[[series]] {i}")
    if "method" not in s:
        raise ValueError(f"{where}: missing required key 'method'; valid methods: {', '.join(algorithms.ALGORITHM_NAMES)}")
    method = s["method"]
    if not isinstance(method, str) or method not in algorithms.ALGORITHM_NAMES:
        raise ValueError(f"{where}.method: unknown method {method!r}; valid methods: {', '.join(algorithms.ALGORITHM_NAMES)}")
    implied = algorithms.implied_compressor(method)
    comp = s.get("compressor", implied)
    if comp is None:
        raise ValueError(f"{where}: method {method!r} needs a compressor; valid compressors: {', '.join(compressors.names())}")
    comp = _coerce("str", f"{where}.compressor", comp)
    try:
        cspec = _compressor_params(comp)
    except ValueError as e:
        raise ValueError(f"{where}.compressor: {e}") from None
    sched = s.get("schedule", "constant")
    if not isinstance(sched, str) or sched not in SCHEDULE_NAMES:
        raise ValueError(f"{where}.schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {sched!r}")
    sched_keys = list(schedules.SCHEDULE_PARAMS[sched])

    valid = [*_SERIES_BASE, *cspec, *sched_keys]
    for k, v in s.items():
        if k in valid:
            continue
        if k in _SCHEDULE_KEYS:
            raise ValueError(f"{where}: key {k!r} (value {v!r}) belongs to another schedule; schedule {sched!r} takes: {', '.join(sched_keys) or 'nothing'}")
        if k in _all_compressor_params():
            raise ValueError(f"{where}: compressor {comp!r} does not take {k!r} (value {v!r}); it takes: {', '.join(cspec) or 'nothing'}")
        raise ValueError(f"{where}: unknown key {k!r} (value {v!r}); valid keys: {', '.join(valid)}")

    base = _resolve_fields(s, _SERIES_BASE, where)
    out: dict[str, Any] = {"label": base.get("label"), "group": base["group"], "method": method, "compressor": comp}
    cvals = _resolve_fields(s, cspec, where)
    out.update(cvals)
    out["lr"] = base["lr"]
    out["schedule"] = sched
    for k in sched_keys:
        if k in s:
            out[k] = _coerce(_SCHEDULE_KEYS[k], f"{where}.{k}", s[k])
        else:
            out[k] = _SCHEDULE_DEFAULTS[k] if k != "every" else max(1, base.get("steps", run["steps"]) // 3)
    out["normalize"] = base["normalize"]
    for side in ("worker", "server"):
        if side in base:
            table = base[side]
            bad = sorted(set(table) - set(algorithms.TRANSFORM_KEYS))
            if bad:
                raise ValueError(f"{where}.{side}: unknown key {bad[0]!r} (value {table[bad[0]]!r}); valid keys: {', '.join(algorithms.TRANSFORM_KEYS)}")
            if table:
                out[side] = dict(table)
    out["workers"], out["batch"] = base["workers"], base["batch"]
    if base.get("steps") is not None and base["steps"] != run["steps"]:
        out["steps"] = base["steps"]
    for k in ("workers", "batch", "steps"):
        if k not in out:
            continue
        if out[k] < 1:
            raise ValueError(f"{where}.{k} must be an integer ≥ 1, got {out[k]!r}")
    if "problem" in base:
        merged = _merge_problem(top_problem, base["problem"], f"{where}.problem")
        full = _resolve_problem(merged, f"{where}.problem")
        d = _diff(full, top_problem)
        if d:
            out["problem"] = d
    if "noise" in base:
        full = _resolve_noise({**top_noise, **base["noise"]}, f"{where}.noise")
        d = _diff(full, top_noise)
        if d:
            out["noise"] = d
    if out["label"] is None:
        out["label"] = _derive_label(out, implied, cvals, [k for k in cspec if k in s])
    return out


def resolve(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a raw config and return it with every default filled in (plain dict, TOML-writable).

    Raises ValueError naming the key, the value and what is valid.
    """
    raw = _check_table(raw, "config")
    _reject_unknown(raw, SECTIONS, "config (top level)")
    run = _resolve_run(raw.get("run"))
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


# ---- objects -------------------------------------------------------------------------------------


@dataclass
class SeriesSpec:
    """One curve: the oracle, the algorithm and the schedule a run needs, plus how to show it."""

    index: int
    label: str
    group: str
    oracle: Oracle  # float64 on the CPU; the runner casts it to the run's dtype and device
    algorithm: Algorithm
    schedule: Schedule
    config: dict[str, Any]  # the resolved [[series]] table

    @property
    def problem(self) -> Problem:
        return self.oracle.problem

    @property
    def noise(self) -> Noise:
        return self.oracle.noise

    @property
    def workers(self) -> int:
        return self.oracle.workers

    @property
    def batch(self) -> int:
        return self.oracle.batch

    @property
    def color_key(self) -> str:
        """What identifies a method variant across panels (the same key gets the same colour)."""
        c = self.config
        keys = [k for k in c if k not in ("label", "group", "problem", "noise", "lr", "workers", "batch")]
        return ";".join(f"{k}={c[k]}" for k in keys)


@dataclass
class Experiment:
    """A resolved config and the objects built from it."""

    config: dict[str, Any]
    name: str = "config"
    series: list[SeriesSpec] = field(default_factory=list)

    @property
    def run(self) -> dict[str, Any]:
        return self.config["run"]


def _schedule_params(s: Mapping[str, Any]) -> dict[str, float]:
    return {k: s[k] for k in schedules.SCHEDULE_PARAMS[s["schedule"]]}


def build(config: Mapping[str, Any], name: str = "config") -> Experiment:
    """Turn a resolved config (from ``resolve``) into problems, noises, methods and schedules.

    Errors from the constructors are re-raised as ValueError prefixed with the series they concern.
    """
    cfg = copy.deepcopy(dict(config))
    run = cfg["run"]
    cache: dict[str, Problem] = {}
    out = Experiment(cfg, name)
    for i, s in enumerate(cfg["series"]):
        where = f"series.{i} ({s['label']!r})"
        try:
            pdict = _merge_problem(cfg["problem"], s.get("problem", {}), f"series.{i}.problem")
            key = repr(sorted(pdict.items()))
            if key not in cache:
                params = {k: v for k, v in pdict.items() if k != "name"}
                cache[key] = problems.make(pdict["name"], **params)
            problem = cache[key]
            ndict = {**cfg["noise"], **s.get("noise", {})}
            scale = tuple(ndict["scale"]) if isinstance(ndict["scale"], list) else ndict["scale"]
            noise = Noise(ndict["name"], scale, ndict["nu"])
            cspec = _compressor_params(s["compressor"])
            cparams = {k: s[k] for k in cspec if k in s}
            algorithm = algorithms.make(s["method"], s["compressor"], normalize=s["normalize"],
                                        worker=s.get("worker"), server=s.get("server"), **cparams)
            schedule = Schedule(s["schedule"], s["lr"], s.get("steps", run["steps"]), _schedule_params(s))
            oracle = Oracle(problem, noise, workers=s["workers"], batch=s["batch"])
            # Build the compressor's dimension-dependent parts now (k ≤ d etc.), not mid-run.
            algorithm.bits(problem.dim)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        out.series.append(SeriesSpec(i, s["label"], s["group"], oracle, algorithm, schedule, s))
    return out


def load(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> Experiment:
    """Preset name, file path or raw dict + ``--set`` overrides → a built ``Experiment``."""
    if isinstance(source, Mapping):
        raw, name = dict(source), "config"
    else:
        raw, name = load_source(source)
    cfg = resolve(apply_overrides(raw, overrides))
    return build(cfg, name)


# ---- TOML writer (enough for this schema: scalars, arrays of scalars, inline tables) ---------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def dumps(config: Mapping[str, Any], header: str = "") -> str:
    """A resolved config as TOML text (``tomllib.loads(dumps(c)) == c`` for resolved configs)."""
    lines = [f"# {h}" if h else "#" for h in header.splitlines()] if header else []
    for section in ("run", "problem", "noise"):
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for k, v in config[section].items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for s in config["series"]:
        lines += ["", "[[series]]"]
        for k, v in s.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
