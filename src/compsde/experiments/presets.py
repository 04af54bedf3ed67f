"""Where a config comes from: the built-in presets, a TOML file, or a run folder.

``load_source(source)`` accepts

* a path to a TOML file (an existing file wins over a preset of the same name);
* a run folder, i.e. a directory holding the ``config.toml`` a run wrote (``compsde run runs/foo``);
* the name of a built-in preset (``compsde presets`` lists them).

Presets are TOML files in ``compsde/experiments/presets/``; the first comment line is the preset's
one-line description: the claim it demonstrates.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from compsde.experiments import tomlio

__all__ = ["CONFIG_FILE", "RESOLVED_HEADER", "claim", "description", "load_source", "preset_names", "preset_text", "presets"]

#: The resolved config a run writes into its folder (and reads back when the folder is the source).
CONFIG_FILE = "config.toml"
#: How the first comment line of that config.toml starts (``runner.start_run``).
RESOLVED_HEADER = "compsde resolved config"


def _presets_dir() -> Any:
    return resources.files("compsde.experiments").joinpath("presets")


def preset_names() -> list[str]:
    """Names of the built-in presets (file stems in ``compsde/experiments/presets``), sorted."""
    d = _presets_dir()
    try:
        entries = list(d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name[: -len(".toml")] for e in entries if e.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """The TOML text of built-in preset ``name``."""
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names()) or 'none'}")
    return tomlio.decode(_presets_dir().joinpath(f"{name}.toml").read_bytes(), f"preset {name!r}")


def description(text: str) -> str:
    """The first comment line of a TOML text (before any key or table), without the ``#``; "" if none."""
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
    return {n: description(preset_text(n)) for n in preset_names()}


def load_source(source: str | Path) -> tuple[dict[str, Any], str]:
    """Read a config file, a run folder's config.toml or a preset; returns (raw dict, default name).

    The default name (used when the config has no ``[run] name``) is the file's stem, the run
    folder's name, or the preset's name. Raises ValueError naming the source when it is none of
    these, when a folder holds no config.toml, or when the file is not UTF-8 TOML.
    """
    text = str(source)
    if not text:
        raise ValueError("the preset or config is empty; give a preset name (see `compsde presets`), "
                         "a TOML file or a run folder")
    path = Path(source)
    if path.is_dir():
        cfg = path / CONFIG_FILE
        if not cfg.exists():
            raise ValueError(f"{text} is a directory without {CONFIG_FILE}: give a config file, a run folder "
                             f"(which holds the {CONFIG_FILE} its run wrote) or a preset name")
        return tomlio.read_file(cfg), path.resolve().name or "config"
    if path.exists():
        return tomlio.read_file(path), path.stem
    if text in preset_names():
        return tomlio.loads(preset_text(text), f"preset {text!r}"), text
    raise ValueError(
        f"unknown preset or config file {text!r}: no such file or directory; "
        f"valid presets: {', '.join(preset_names()) or 'none'}"
    )


def claim(source: str | Path) -> str:
    """The claim a config demonstrates: a preset's description, a TOML file's first comment line, or, for a
    run folder (or the config.toml a run wrote, whose first line is ``RESOLVED_HEADER``), the claim its
    run.json recorded; "" when there is none. Never raises: a source ``load_source`` rejects has no claim."""
    import json

    path = Path(source)
    try:
        if path.is_dir():
            path = path / CONFIG_FILE
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            first = description(text)
            if not first.startswith(RESOLVED_HEADER):
                return first
            record = json.loads((path.parent / "run.json").read_text(encoding="utf-8"))
            found = record.get("claim") if isinstance(record, dict) else None
            return found if isinstance(found, str) else ""
        if str(source) in preset_names():
            return description(preset_text(str(source)))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: no claim to show
        return ""
    return ""
