"""A throttled link between two local ranks: two network namespaces joined by a veth pair, each side's
egress limited by ``tc qdisc ... tbf rate RATE`` (e.g. ``1gbit``), so that a 2-rank gloo group on one
machine sees a real bandwidth limit.

``throttled_link(rate)`` builds the namespaces and the link for the duration of a ``with`` block and
removes them on exit, also on failure or interruption; it yields the ``wrap`` that
``compsde.distributed.launch.spawn`` takes, which runs rank r inside its namespace with gloo bound to
its end of the veth (the ranks still meet through ``spawn``'s FileStore: the namespaces share the file
system). Needs root and the ``ip`` and ``tc`` programs (iproute2); ``why_not()`` says what is missing.
The names carry this process's id, so concurrent links do not collide.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from compsde.core.checks import describe
from compsde.distributed.launch import LaunchError

__all__ = ["RANKS", "Wrap", "bits_per_second", "throttled_link", "why_not"]

#: The ranks a throttled link joins.
RANKS = 2
#: Each rank's address on the link.
ADDR = ("10.77.0.1", "10.77.0.2")

#: rank → (command prefix, environment variables) for ``spawn``.
Wrap = Callable[[int], tuple[list[str], dict[str, str]]]


def bits_per_second(rate: str, what: str = "rate") -> float:
    """'1gbit' → 1e9: tc's rate syntax (a number and bit, kbit, mbit or gbit); ValueError naming ``what``."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmg]?)bit", rate.strip().lower()) if isinstance(rate, str) else None
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)] if m else 0.0
    if not m or not 1e3 <= value <= 1e12:
        raise ValueError(f"{what} must be a rate from 1kbit to 1000gbit such as 1gbit, 500mbit or 100kbit, got "
                         f"{describe(rate)}")
    return value


def why_not() -> str | None:
    """Why a throttled link cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    missing = [p for p in ("ip", "tc") if shutil.which(p) is None]
    if missing:
        return f"{' and '.join(missing)} not found (Debian: apt-get install iproute2)"
    return None


def _sh(*cmd: str) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise LaunchError(f"building the throttled link: `{' '.join(cmd)}` failed: {(e.stderr or '').strip()}") from None


@contextmanager
def throttled_link(rate: str) -> Iterator[Wrap]:
    """Two namespaces joined by a veth pair, each direction throttled to ``rate`` (tc's syntax, e.g. "1gbit"),
    while the ``with`` block runs; yields ``wrap(rank)`` for ``spawn`` (ranks 0 and 1). ``LaunchError`` when it
    cannot be built (``why_not``, or the command that failed)."""
    bits_per_second(rate, "the link's rate")
    why = why_not()
    if why:
        raise LaunchError(f"cannot build a throttled link: {why}")
    tag = f"cs{os.getpid()}"
    ns = (f"{tag}a", f"{tag}b")
    veth = (f"{tag}va", f"{tag}vb")

    def teardown() -> None:
        for n in ns:  # deleting a namespace removes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    teardown()
    try:
        for n in ns:
            _sh("ip", "netns", "add", n)
            _sh("ip", "-n", n, "link", "set", "lo", "up")
        _sh("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for n, dev, addr in zip(ns, veth, ADDR, strict=True):
            _sh("ip", "link", "set", dev, "netns", n)
            _sh("ip", "-n", n, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", n, "link", "set", dev, "up")
            _sh("ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst",
                "256kb", "latency", "50ms")

        def wrap(rank: int) -> tuple[list[str], dict[str, str]]:
            if rank not in range(RANKS):
                raise ValueError(f"a throttled link joins ranks 0 and 1, got rank {rank}")
            return ["ip", "netns", "exec", ns[rank]], {"GLOO_SOCKET_IFNAME": veth[rank]}

        yield wrap
    finally:
        teardown()
