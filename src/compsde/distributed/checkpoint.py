"""Checkpoints of a distributed run: written atomically, enough to finish with the same iterates.

One file, ``checkpoint.pt`` in the output directory, written by rank 0 (the other ranks send it their
part with a gather, so no shared file system is needed) to a temporary name in the same directory,
flushed and ``os.replace``-d: a reader sees the previous checkpoint or the new one, never half of one.

Contents (plain containers and tensors, so ``torch.load(weights_only=True)`` reads it)::

    format, compsde_version, config_digest (resolved config + library version + world size), world,
    completed: one entry per finished series (its Trace, wire bytes, timings),
    current:   None, or {series, state}: the step reached, x, alive, diverged_step, the recorder's rows,
               the last compression error, elapsed seconds, wire-byte counters, and per rank its
               error-feedback memory and the states of all its generators (noise and compressor
               streams from ``Draws.state()``, the shared stream, the replayed streams of the others).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from compsde import config as config_mod
from compsde.simulator import Trace

__all__ = ["FILE", "FORMAT", "config_digest", "load", "path_for", "save", "trace_from_dict", "trace_to_dict"]

FORMAT = 1
FILE = "checkpoint.pt"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("compsde")
    except metadata.PackageNotFoundError:
        return "unknown"


def config_digest(config: dict[str, Any], world: int) -> str:
    """SHA-256 of the resolved config's TOML text, the library version and the world size."""
    text = config_mod.dumps(config) + json.dumps({"version": _version(), "world": world}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_for(where: str | Path) -> Path:
    """``where`` itself if it is a file (or names a .pt), else ``where/checkpoint.pt``."""
    p = Path(where)
    if p.is_dir() or (not p.exists() and p.suffix != ".pt"):
        return p / FILE
    return p


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically (the runner's temporary-file-then-rename)."""
    from compsde.runner import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, buf.getvalue())


def load(where: str | Path) -> dict[str, Any]:
    """Read a checkpoint (a file, or a directory holding ``checkpoint.pt``); checks its format."""
    path = path_for(where)
    if not path.is_file():
        raise ValueError(f"--resume {str(where)!r}: no checkpoint file at {str(path)!r}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"--resume {str(where)!r}: {str(path)!r} is not a readable checkpoint ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"--resume {str(where)!r}: {str(path)!r} is not a compsde checkpoint of format {FORMAT}")
    return data


def trace_to_dict(trace: Trace) -> dict[str, Any]:
    return {f.name: getattr(trace, f.name) for f in dataclasses.fields(trace)}


def trace_from_dict(d: dict[str, Any]) -> Trace:
    return Trace(**d)
