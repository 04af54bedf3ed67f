"""dtypes, devices and memory: what a run's tensors are made of, and whether they fit.

``check_memory`` is called before anything large is allocated (the simulator's (N, R, d) buffers, a
problem's data matrix, an SDE's paths), so an impossible size is refused with the estimate and what
is available instead of being discovered by the kernel's OOM killer halfway through a run.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from compsde.core.checks import check_choice, describe

__all__ = [
    "DTYPES", "accumulate", "available_memory", "broadcast_shapes", "check_memory", "format_bytes", "resolve_device",
    "resolve_dtype",
]

#: The floating dtypes a run may use, by their config names.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def accumulate(total: torch.Tensor | None, message: torch.Tensor) -> torch.Tensor:
    """``total + message`` in place (a copy of ``message`` when ``total`` is None).

    The one order in which workers' messages are summed — m_0 + m_1 + … in worker order — wherever
    they are summed (the simulator over its stack of workers, a distributed receiver as it decodes
    each rank's payload), so every exchange gives the same bits.
    """
    return message.clone() if total is None else total.add_(message)


def broadcast_shapes(*shapes: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """The shape the given shapes broadcast to (numpy's rules); ValueError if they do not.

    ``torch.broadcast_shapes`` gives the same answer, but its first call imports torch's symbolic-shape
    machinery (sympy): about a second in every fresh process, e.g. each rank of a distributed run.
    """
    out: list[int] = []
    for shape in shapes:
        shape = tuple(int(n) for n in shape)
        if len(shape) > len(out):
            out = [1] * (len(shape) - len(out)) + out
        for i, n in enumerate(shape, start=len(out) - len(shape)):
            if n != out[i] and n != 1 and out[i] != 1:
                raise ValueError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
            if out[i] == 1:
                out[i] = n
    return tuple(out)


def resolve_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """A torch dtype from a ``torch.dtype`` or its config name ("float32", "float64")."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    return DTYPES[check_choice(name, dtype, DTYPES)]


def resolve_device(device: Any, name: str = "device") -> torch.device:
    """A usable ``torch.device`` ("cpu", "cuda", "cuda:1", or a device); refuses one this machine lacks."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be a device such as 'cpu' or 'cuda', got {describe(device)}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} = {str(dev)!r}, but this machine has no CUDA device (torch.cuda.is_available() is False); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} = {str(dev)!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ValueError(f"{name} must be 'cpu' or 'cuda[:i]', got {describe(device)}")


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that can still be allocated on ``device``: free memory on CUDA; on the CPU the least of
    the machine's MemAvailable, what this process's address-space limit (``ulimit -v``, RLIMIT_AS) leaves
    above what it has mapped, and what its container's memory limit (cgroup v2 ``memory.max`` or v1
    ``memory.limit_in_bytes``) leaves above its usage."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    avail = _machine_available()
    limits = [_address_space_left(), *_cgroup_left()]
    return min([avail, *[v for v in limits if v is not None]])


def _machine_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def _address_space_left() -> int | None:
    """RLIMIT_AS minus this process's mapped size (VmSize), or None without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft < 0:
            return None
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError):
        pass
    return None


#: A cgroup limit at or above this is no limit (cgroup v1 reports "unlimited" as about 2⁶³).
_NO_LIMIT = 1 << 60


def _cgroup_left() -> list[int | None]:
    """What the container's memory limit leaves: (limit, usage) files of cgroup v2 and v1, as a
    containerised process sees its own cgroup at /sys/fs/cgroup."""
    out: list[int | None] = []
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as f:
                text = f.read().strip()
            if text == "max" or int(text) >= _NO_LIMIT:
                continue
            with open(usage_file, encoding="ascii") as f:
                out.append(max(0, int(text) - int(f.read().strip())))
        except (OSError, ValueError):
            continue
    return out


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PB"


def check_memory(nbytes: float, what: str, hint: str = "", device: torch.device | str = "cpu") -> None:
    """Refuse (ValueError) to allocate ``nbytes`` for ``what`` when they exceed the available memory.

    The estimate is compared with 90 % of what is available now, so a run that would only fit by
    swapping is refused too. ``hint`` says which setting to reduce.
    """
    avail = available_memory(device)
    if nbytes > 0.9 * avail:
        dev = torch.device(device)
        where = "" if dev.type == "cpu" else f" on {dev}"
        raise ValueError(
            f"{what} needs about {format_bytes(nbytes)} of memory{where}, but only {format_bytes(avail)} is available"
            + (f"; {hint}" if hint else "")
        )
