"""A throttled link between two local ranks: two network namespaces joined by a veth pair, each side's
egress limited by ``tc qdisc ... tbf rate RATE`` (e.g. ``1gbit``), so that a 2-rank gloo group on one
machine sees a real bandwidth limit.

``throttled_link(rate)`` builds the namespaces and the link for the duration of a ``with`` block and
removes them on exit, also on failure or interruption; it yields the ``wrap`` that
``compsde.distributed.launch.spawn`` takes, which runs rank r inside its namespace with gloo bound to
its end of the veth (the ranks still meet through ``spawn``'s FileStore: the namespaces share the file
system). Needs root and the ``ip`` and ``tc`` programs (iproute2); ``why_not()`` says what is missing.
The names carry this process's id, so concurrent links do not collide, and a link whose builder died
without removing it (SIGKILL) is removed by the next one (``remove_stale_links``); SIGTERM and SIGHUP
end in the clean-up like an exception (``compsde.distributed.launch.interruptible``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from compsde.core.checks import describe
from compsde.distributed.launch import EXIT_CONFIG, LaunchError, interruptible, process_alive

__all__ = ["MAX_RATE", "MIN_RATE", "PREFIX", "RANKS", "Wrap", "bits_per_second", "remove_stale_links", "throttled_link",
           "why_not"]

#: The ranks a throttled link joins.
RANKS = 2
#: The namespaces' names: PREFIX<pid of the process that built them>-a and -b.
PREFIX = "compsde-"
#: Each rank's address on the link.
ADDR = ("10.77.0.1", "10.77.0.2")

#: rank → (command prefix, environment variables) for ``spawn``.
Wrap = Callable[[int], tuple[list[str], dict[str, str]]]


#: The rates a throttled link takes, in bits per second: below 10 Mbit/s measuring the link alone takes minutes.
MIN_RATE, MAX_RATE = 10e6, 100e9


def bits_per_second(rate: str, what: str = "rate") -> float:
    """'1gbit' → 1e9: tc's rate syntax (a number and bit, kbit, mbit or gbit, no space), from 10mbit to 100gbit;
    ValueError naming ``what``."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([kmg]?)bit", rate.strip().lower()) if isinstance(rate, str) else None
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)] if m else 0.0
    if not m or not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(f"{what} must be a rate from 10mbit to 100gbit such as 1gbit or 500mbit, got {describe(rate)}")
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
        raise LaunchError(f"building the throttled link: `{' '.join(cmd)}` failed: {(e.stderr or '').strip()}",
                          EXIT_CONFIG) from None


@contextmanager
def throttled_link(rate: str) -> Iterator[Wrap]:
    """Two namespaces joined by a veth pair, each direction throttled to ``rate`` (tc's syntax, e.g. "1gbit"),
    while the ``with`` block runs; yields ``wrap(rank)`` for ``spawn`` (ranks 0 and 1). ``LaunchError`` when it
    cannot be built (``why_not``, or the command that failed)."""
    bits = bits_per_second(rate, "the link's rate")
    why = why_not()
    if why:
        raise LaunchError(f"cannot build a throttled link: {why}", EXIT_CONFIG)
    remove_stale_links()
    pid = os.getpid()
    ns = (f"{PREFIX}{pid}-a", f"{PREFIX}{pid}-b")
    veth = (f"csv{pid}a", f"csv{pid}b")  # interface names hold at most 15 characters
    # tbf needs a burst of about 2 ms at the rate to reach it (measured at 1 Gbit/s: 256 kB reached it, 16–32 kB
    # reached 600–690 Mbit/s)
    burst = f"{max(262_144, int(bits / 8 * 0.002))}b"
    _remove(pid)
    with interruptible():  # SIGTERM and SIGHUP too end in the finally that removes the link
        try:
            for n in ns:
                _sh("ip", "netns", "add", n)
                _sh("ip", "-n", n, "link", "set", "lo", "up")
            _sh("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
            for n, dev, addr in zip(ns, veth, ADDR, strict=True):
                _sh("ip", "link", "set", dev, "netns", n)
                _sh("ip", "-n", n, "addr", "add", f"{addr}/24", "dev", dev)
                _sh("ip", "-n", n, "link", "set", dev, "up")
                _sh("ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    f"{bits:.0f}bit", "burst", burst, "latency", "50ms")

            def wrap(rank: int) -> tuple[list[str], dict[str, str]]:
                if rank not in range(RANKS):
                    raise ValueError(f"a throttled link joins ranks 0 and 1, got rank {rank}")
                return ["ip", "netns", "exec", ns[rank]], {"GLOO_SOCKET_IFNAME": veth[rank]}

            yield wrap
        finally:
            _remove(pid)


def _remove(pid: int) -> None:
    """The namespaces and veth pair of the link built by process ``pid`` (deleting a namespace removes its end of
    the veth; a pair left in this namespace by a set-up that failed half-way goes with its first end)."""
    for n in (f"{PREFIX}{pid}-a", f"{PREFIX}{pid}-b"):
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
    subprocess.run(["ip", "link", "del", f"csv{pid}a"], capture_output=True)


def remove_stale_links() -> list[int]:
    """Remove the links whose builder is gone (a process killed with SIGKILL cannot clean up); returns their pids."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    stale = sorted({int(m.group(1)) for m in re.finditer(rf"^{PREFIX}(\d+)-[ab]\b", out, re.M)
                    if not process_alive(int(m.group(1)))})
    for pid in stale:
        _remove(pid)
    return stale
