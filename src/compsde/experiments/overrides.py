"""``--set KEY=VALUE``: parsing an override and applying a list of them to a raw config.

Keys are dotted: ``run.steps=50``, ``noise.nu=2``, ``problem.dim=5``, ``series.lr=0.1`` (every
series), ``series.2.lr=0.1`` (series 2, 0-based), ``series.0.noise.nu=1``. The value is parsed as a
TOML value (``3``, ``0.5``, ``true``, ``"x"``, ``[1, 2]``, ``{nu = 2}``); a bare word that is not
valid TOML is taken as a string (``noise.name=student-t``).

Applying overrides also keeps the rest of the config consistent with them:

* **Labels follow overrides.** When the overrides change a key of a series that its derived label is
  made from (``schema.LABEL_KEYS``: method, compressor and its parameters, normalize, schedule and its
  keys, worker/server transforms, the inline problem/noise) and do not set that series' ``label``,
  the label is dropped, so ``resolve`` derives it again from the resolved series:
  ``--set series.1.compressor=top-k`` never leaves a label that says Rand-k. Overrides of ``lr``,
  ``steps``, ``workers``, ``batch`` or ``group`` keep the label.
* **Switching a name drops the old one's keys.** When an override sets a series' ``compressor`` or
  ``schedule``, or the ``name`` of ``[problem]``, ``[noise]`` or a series' inline problem/noise, the
  keys that only the previous choice took are removed unless the same overrides set them (``--set``
  cannot delete a key): ``--set noise.name=gaussian`` on a Student-t config drops ``nu``, and
  ``--set series.compressor=natural`` drops Rand-k's ``ratio``.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from compsde.algorithms.sync import SYNC_PARAMS
from compsde.experiments import schema
from compsde.experiments.schema import SECTIONS

__all__ = ["apply_overrides", "parse_set", "parse_value"]


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
    touched_top: set[tuple[str, ...]] = set()  # paths set in [run]/[problem]/[noise]
    touched: dict[int, set[tuple[str, ...]]] = {}  # series index -> paths set in it
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
                indices, rest = [i], rest[1:]
                if not rest:
                    raise ValueError(f"--set {item!r}: give a key inside the series, e.g. series.{i}.lr=0.1")
            else:
                indices = list(range(len(series)))
            for i in indices:
                if not isinstance(series[i], dict):
                    raise ValueError(f"--set {item!r}: series {i} is not a table in the config")
                _set_path(series[i], rest, copy.deepcopy(value), item)
                touched.setdefault(i, set()).add(tuple(rest))
        else:
            table = out.setdefault(section, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {item!r}: [{section}] is not a table in the config")
            _set_path(table, rest, value, item)
            touched_top.add((section, *rest))
    _follow_switches(out, touched_top, touched)
    return out


def _set_path(table: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    for p in path[:-1]:
        nxt = table.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {item!r}: {p!r} holds {nxt!r}, not a table")
        table = nxt
    table[path[-1]] = value


def _set_by(paths: set[tuple[str, ...]], *prefix: str) -> bool:
    """Whether some override path equals ``prefix`` or lies inside it."""
    n = len(prefix)
    return any(p[:n] == prefix for p in paths)


def _prune(table: dict[str, Any], keep: Iterable[str], paths: set[tuple[str, ...]], *prefix: str) -> None:
    """Drop the keys of ``table`` outside ``keep`` that no override set (``prefix`` locates ``table``)."""
    keep = set(keep)
    for k in [k for k in table if k not in keep and not _set_by(paths, *prefix, k)]:
        del table[k]


#: Series keys that name a choice, the keys each choice takes, and the keys of the whole family: switching
#: the choice with --set drops the family's keys the new choice does not take. The synchronisation
#: schedule's family leaves out power and warmup_steps, which the learning-rate schedules take too.
_SWITCHES = (
    ("compressor", schema.compressor_params, schema.all_compressor_params),
    ("schedule", schema.schedule_keys, lambda: schema.SCHEDULE_KEYS),
    ("sync", SYNC_PARAMS.__getitem__, lambda: ("period", "alpha", "switch_step")),
)


def _follow_switches(out: dict[str, Any], top: set[tuple[str, ...]], per_series: dict[int, set[tuple[str, ...]]]) -> None:
    """The consistency rules of the module doc. Names that are not valid are left for ``resolve``
    to refuse with its message."""
    for section, keys_of in (("problem", _problem_keys), ("noise", _noise_keys)):
        table = out.get(section)
        if (section, "name") in top and isinstance(table, dict):
            keep = keys_of(table.get("name"))
            if keep is not None:
                _prune(table, keep, top, section)
    series = out.get("series")
    if not isinstance(series, list):
        series = []
    for i, paths in per_series.items():
        s = series[i]
        heads = {p[0] for p in paths}
        for head, taken_of, family in _SWITCHES:
            if head in heads and isinstance(s.get(head), str):
                try:
                    stale = set(family()) - set(taken_of(s[head]))
                except (ValueError, KeyError):
                    continue  # not a valid name: resolve refuses it with its message
                for k in [k for k in s if k in stale and not _set_by(paths, k)]:
                    del s[k]
        for sect, keys_of in (("problem", _problem_keys), ("noise", _noise_keys)):
            inline = s.get(sect)
            if (sect, "name") in paths and isinstance(inline, dict):
                keep = keys_of(inline.get("name"))
                if keep is not None:
                    _prune(inline, keep, paths, sect)
        if heads & schema.LABEL_KEYS and "label" not in heads:
            s.pop("label", None)


def _problem_keys(name: Any) -> tuple[str, ...] | None:
    try:
        return schema.problem_keys(name) if isinstance(name, str) else None
    except ValueError:
        return None


def _noise_keys(name: Any) -> tuple[str, ...] | None:
    return schema.NOISE_KEYS.get(name) if isinstance(name, str) else None
