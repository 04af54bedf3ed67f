"""A throttled link between two processes, for the benchmarks (imported as a sibling: run them as
``python benchmarks/X.py``): two network namespaces joined by a veth pair, each side's egress limited by
``tc qdisc ... tbf rate RATE``. Needs root (``ip netns``, ``tc``); ``link(rate)`` builds it and removes it on
exit, also on failure; ``launch`` runs one command per rank inside its namespace with the rendezvous and gloo's
interface set."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

NS = ("cs_bench_a", "cs_bench_b")
VETH = ("cs_bva", "cs_bvb")
ADDR = ("10.77.0.1", "10.77.0.2")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def why_not() -> str | None:
    """Why the link cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root (run as root)"
    return None


def teardown() -> None:
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextmanager
def link(rate: str) -> Iterator[None]:
    """The two namespaces and the veth pair, each direction throttled to ``rate`` (e.g. "1gbit"), for the
    duration of the ``with`` block."""
    teardown()
    try:
        for ns in NS:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
        for ns, dev, addr in zip(NS, VETH, ADDR, strict=True):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst",
               "256kb", "latency", "50ms")
        yield
    finally:
        teardown()


def launch(cmd: Sequence[str], port: int, timeout: float = 1800, env: dict[str, str] | None = None) -> list[str]:
    """Run ``cmd`` as rank 0 and rank 1 of a 2-process group, each in its namespace (RANK, WORLD_SIZE,
    MASTER_ADDR/PORT, GLOO_SOCKET_IFNAME and one OpenMP thread set); their outputs. Raises if a rank fails."""
    procs = []
    for rank, (ns, dev) in enumerate(zip(NS, VETH, strict=True)):
        e = {**os.environ, **(env or {}), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0",
             "MASTER_ADDR": ADDR[0], "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": dev, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank failed:\n{logs[0][-3000:]}\n{logs[1][-3000:]}")
    return logs
