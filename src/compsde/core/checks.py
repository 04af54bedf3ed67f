"""Argument checks at the library's boundary: each names the argument, its value and what is valid.

Every public constructor and function validates its arguments with these before doing any work, so a
user sees ``ValueError: workers must be an integer ≥ 1, got 0`` rather than an ``AttributeError`` from
deep inside, and the command line turns the message into ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_INT64", "MAX_SEED", "MAX_TEXT_LENGTH", "MAX_WORKERS", "check_bool", "check_callable", "check_choice",
    "check_int", "check_number", "check_path", "check_seed", "check_text", "describe",
]

#: Largest integer a TOML file, a checkpoint or a torch int64 can hold.
MAX_INT64 = (1 << 63) - 1
#: The most workers a run may have (each holds d-length state; a million is already far beyond a cluster).
MAX_WORKERS = 10**6
#: Seeds are reduced to 64 bits by ``compsde.core.streams``; larger ones are refused, not wrapped.
MAX_SEED = (1 << 64) - 1
#: The longest title, label or group name ``check_text`` accepts.
MAX_TEXT_LENGTH = 200


def describe(value: Any) -> str:
    """``repr`` of a value, shortened so an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = MAX_INT64) -> int:
    """An integer (not a bool, not a float) in [min, max]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer{_range(min, max)}, got {describe(value)}")
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name} must be an integer{_range(min, max)}, got {describe(value)}")
    return value


def check_number(name: str, value: Any, *, min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False, finite: bool = True) -> float:
    """A real number (int or float, not a bool) in the given interval; finite unless ``finite=False``."""
    lo = "(" if min_open else "["
    hi = ")" if max_open else "]"
    if min is not None and max is not None:
        what = f"a {'finite ' if finite else ''}number in {lo}{min:g}, {max:g}{hi}"
    elif min is not None:
        what = f"a {'finite ' if finite else ''}number {'>' if min_open else '≥'} {min:g}"
    elif max is not None:
        what = f"a {'finite ' if finite else ''}number {'<' if max_open else '≤'} {max:g}"
    else:
        what = f"a {'finite ' if finite else ''}number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {what}, got {describe(value)}")
    v = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{name} must be {what}, got {describe(value)}")
    if min is not None and (v < min or (min_open and v == min)):
        raise ValueError(f"{name} must be {what}, got {describe(value)}")
    if max is not None and (v > max or (max_open and v == max)):
        raise ValueError(f"{name} must be {what}, got {describe(value)}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {describe(value)}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {describe(value)}")
    return value


def check_seed(name: str, value: Any) -> int:
    """A seed: an integer in [0, 2⁶⁴ − 1] — the one check of every seed the library takes (Python
    arguments, config keys, command-line flags), so each is refused by its own name with this range."""
    return check_int(name, value, min=0, max=MAX_SEED)


def check_path(name: str, value: Any, what: str = "a path (a string or pathlib.Path)") -> str | Path:
    """A file or directory path: a ``str`` or an ``os.PathLike`` (``pathlib.Path``); ``what`` says what
    is valid when the argument also takes something else."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name} must be {what}, got {describe(value)}")
    return value if isinstance(value, (str, Path)) else Path(value)


def check_callable(name: str, value: Any) -> Any:
    """A function (anything callable) or None."""
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a function or None, got {describe(value)}")
    return value


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None and hi != MAX_INT64:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" ≥ {lo}" + ("" if hi in (None, MAX_INT64) else f" and ≤ {hi}")
    if hi is not None and hi != MAX_INT64:
        return f" ≤ {hi}"
    return ""


def check_text(s: Any, what: str) -> None:
    """Raise ValueError starting with ``what`` if ``s`` cannot be shown in a plot (which escapes
    mathtext, ``compsde.experiments.plots.plain_text``): not a string, longer than ``MAX_TEXT_LENGTH``
    characters, or containing a control character (newline and tab included) or a lone surrogate. The
    experiment layer calls it on titles, labels and group names before running, so that a run never
    ends with an unplottable name."""
    if not isinstance(s, str):
        raise ValueError(f"{what} must be a string, got {type(s).__name__}")
    if len(s) > MAX_TEXT_LENGTH:
        raise ValueError(f"{what} is {len(s)} characters long; plots show at most {MAX_TEXT_LENGTH}")
    for i, ch in enumerate(s):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs"):
            kind = "control character" if cat == "Cc" else "lone surrogate"
            raise ValueError(f"{what} contains the {kind} U+{ord(ch):04X} at position {i}, which plots cannot show")
