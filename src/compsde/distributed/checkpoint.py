"""Checkpoints of a distributed run: written atomically, enough to finish with the same iterates.

One file, ``checkpoint.pt`` in the output directory, written by rank 0 (the other ranks send it their
part with a gather, so no shared file system is needed) to a temporary name in the same directory and
``os.replace``-d: a reader sees the previous checkpoint or the new one, never half of one.

Contents (plain containers and tensors, so ``torch.load(weights_only=True)`` reads it)::

    format, compsde_version, config_digest (resolved config + library version + world size), world,
    completed: one entry per finished series (its Trace, wire bytes, timings),
    current:   None, or {series, step, ranks}: per rank its part, {"loop": Loop.state_dict(), "seconds"}:
               the step reached, the algorithm state (iterates, error-feedback memory, momentum, ...),
               every generator state (noise, compressor, shared, replayed streams), the recorder's rows
               and divergence record, and the communication counters.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch

from compsde.core.files import atomic_write
from compsde.sim.recorder import Trace

__all__ = ["FILE", "FORMAT", "library_version", "load", "path_for", "save", "trace_from_dict", "trace_to_dict"]

FORMAT = 2
FILE = "checkpoint.pt"


def library_version() -> str:
    from compsde import __version__

    return __version__


def path_for(where: str | Path) -> Path:
    """``where`` itself if it is a file (or names a .pt), else ``where/checkpoint.pt``."""
    p = Path(where)
    if p.is_dir() or (not p.exists() and p.suffix != ".pt"):
        return p / FILE
    return p


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically (a temporary file, then a rename)."""
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
        lines = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {lines[0] if lines else ''}"
        why = why if len(why) <= 120 else why[:117] + "..."
        raise ValueError(f"--resume {str(where)!r}: {str(path)!r} is not a compsde checkpoint (torch.load cannot "
                         f"read it: {why})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"--resume {str(where)!r}: {str(path)!r} is not a compsde checkpoint of format {FORMAT}")
    cur = data.get("current")
    ok = (isinstance(data.get("config_digest"), str) and isinstance(data.get("world"), int)
          and isinstance(data.get("completed"), list)
          and (cur is None or (isinstance(cur, dict) and isinstance(cur.get("series"), int)
                               and isinstance(cur.get("step"), int) and isinstance(cur.get("ranks"), list))))
    if not ok:
        raise ValueError(f"--resume {str(where)!r}: {str(path)!r} is an incomplete compsde checkpoint (it lacks "
                         "config_digest, world, completed or a well-formed current)")
    return data


def trace_to_dict(trace: Trace) -> dict[str, Any]:
    return {f.name: getattr(trace, f.name) for f in dataclasses.fields(trace)}


def trace_from_dict(d: dict[str, Any]) -> Trace:
    return Trace(**d)
