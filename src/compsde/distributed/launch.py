"""Process groups: join one that ``torchrun`` describes, or start N local gloo processes.

* **Join** (``RANK`` and ``WORLD_SIZE`` set, as ``torchrun`` does): rendezvous through
  ``COMPSDE_INIT_METHOD`` if set (e.g. ``file:///shared/dir/store``), else ``env://``
  (``MASTER_ADDR``/``MASTER_PORT``, or torchrun's agent store), then
  ``init_process_group(backend, timeout=...)`` with ``backend`` from ``dist_backend_for(device)``:
  NCCL for CUDA devices, gloo otherwise. Multi-node runs need nothing else.
* **Launch** (no such variables): ``spawn`` starts N child processes of this Python, each with
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and a fresh ``FileStore`` in a new temporary directory as its
  rendezvous — no TCP port is chosen at all (gloo binds ephemeral ports and exchanges them through
  the store), so parallel runs cannot collide. Children are bound to loopback
  (``GLOO_SOCKET_IFNAME=lo``, unless set) and one thread each (``OMP_NUM_THREADS=1``, unless set).

Signals: the children of ``spawn`` run in their own session, so a Ctrl-C in a terminal (SIGINT to the
foreground process group) reaches the launching process only; within ``interruptible()`` SIGINT,
SIGTERM and SIGHUP raise ``Interrupted`` there, and ``spawn`` stops every child on its way out. A
child started by ``spawn`` that calls ``die_with_parent()`` also gets SIGTERM if the launching process
dies without cleaning up (SIGKILL). Ranks joined under torchrun (which forwards signals to them) call
``quiet_signals``: one line, then exit, instead of a traceback.

Failures: a child that dies (signal or non-zero exit) or hangs makes the parent stop the others and
report which rank failed; the children themselves fail fast because every collective has the
user's ``timeout``, and a rank whose collective fails writes ``compsde/failed/<rank>`` into the store
and names the ranks that did not (``peer_report``), which is what identifies the rank under
``torchrun`` too. Ranks started with different settings would fail inside a collective with a
message about sizes (or, worse, not at all): ``check_same_settings`` compares them first and stops
every rank naming the difference.

Job directories: ``spawn`` keeps the FileStore in a fresh ``compsde-dist-*`` directory of the
temporary directory that records its owner (pid and start time); a launcher killed with SIGKILL
cannot remove it, so every new job directory first removes the stale ones whose owner is gone
(``new_job_dir``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "EXIT_CONFIG", "EXIT_PEER", "JOB_PREFIX", "ConfigMismatch", "Context", "Interrupted", "LaunchError",
    "check_same_settings", "describe_exit", "die_with_parent", "dist_backend_for", "in_launched_env", "init_from_env",
    "interruptible", "new_job_dir", "peer_report", "process_alive", "quiet_signals", "rank_device", "remove_stale_jobs",
    "spawn",
]

#: Exit status of a rank whose collective failed because a peer died or hung.
EXIT_PEER = 3
#: Exit status of a rank that refused to start (configuration differs across ranks, bad input).
EXIT_CONFIG = 2

INIT_METHOD_ENV = "COMPSDE_INIT_METHOD"
#: Set by ``spawn`` in its children: the launching process's pid (``die_with_parent``).
PARENT_ENV = "COMPSDE_PARENT_PID"
#: The signals that stop a run: Ctrl-C, ``kill``, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Prefix of the failure note of a rank whose collective failed (a victim, not a cause).
COMM_FAILURE = "lost contact"
#: Name prefix of ``spawn``'s job directories in the temporary directory, and the file in each that
#: names its owner.
JOB_PREFIX = "compsde-dist-"
OWNER_FILE = "owner"


class LaunchError(RuntimeError):
    """A distributed run failed; the message names the ranks involved."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class ConfigMismatch(LaunchError, ValueError):
    """The ranks were given different settings (raised on every rank; exit status 2)."""

    def __init__(self, message: str, status: int = EXIT_CONFIG) -> None:
        super().__init__(message, status)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived inside ``interruptible()``. ``status`` is the conventional exit
    status 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.status = 128 + signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signame}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` in the main thread (so that
    ``finally`` clauses stop child processes and remove files; SIGTERM and SIGHUP would otherwise end
    the process on the spot). Only the first signal raises: later ones are ignored until the block is
    left, so the clean-up is not cut short. A signal whose handler was SIG_IGN stays ignored (e.g.
    SIGINT of a background job), and outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if got:
            return
        got.append(signum)
        raise Interrupted(signum)

    old = {}
    try:
        for s in STOP_SIGNALS:
            prev = signal.getsignal(s)
            if prev is not signal.SIG_IGN:
                old[s] = signal.signal(s, handler)
        yield
    finally:
        for s, prev in old.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)


def quiet_signals(line: str | None) -> None:
    """In a rank: SIGINT, SIGTERM and SIGHUP end the process at once with status 128 + signal number,
    after writing ``line`` (``{signal}`` replaced by the signal's name) on stderr if it is not None —
    instead of a KeyboardInterrupt traceback. ``os._exit`` skips gloo's teardown, which can block after
    the peers have gone. (A rank blocked inside a collective runs the handler when the collective
    returns: at once when a peer has left, at the latest after the timeout.)"""
    def handler(signum: int, frame: object) -> None:
        if line is not None:
            try:
                os.write(2, (line.replace("{signal}", signal.Signals(signum).name) + "\n").encode())
            except OSError:
                pass
        os._exit(128 + signum)

    for s in STOP_SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, handler)


def die_with_parent() -> None:
    """In a child of ``spawn``: ask Linux to send SIGTERM when the launching process dies (even by
    SIGKILL, which leaves it no chance to stop its children: they run in their own session, so they
    would otherwise run on as orphans), and exit at once if it is already gone. No-op elsewhere."""
    parent = os.environ.get(PARENT_ENV, "")
    if not parent.isdigit():  # not started by spawn (e.g. by torchrun, whose agent handles this)
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != int(parent):
        os._exit(128 + int(signal.SIGTERM))  # the parent died before prctl took effect


def dist_backend_for(device: str | torch.device) -> str:
    """The torch.distributed backend for a run on ``device``: ``"nccl"`` for CUDA, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str | torch.device, local_rank: int, count: int | None = None) -> torch.device:
    """The device of the rank with ``local_rank`` on its machine: ``cuda`` means one GPU per rank,
    ``cuda:{local_rank}`` (NCCL refuses two ranks on one GPU); an explicit ``cuda:i`` or ``cpu`` is kept.
    ``count`` is the number of GPUs (default: ``torch.cuda.device_count()``)."""
    dev = torch.device(device)
    if dev.type != "cuda" or dev.index is not None:
        return dev
    n = torch.cuda.device_count() if count is None else count
    if local_rank >= n:
        raise LaunchError(f"run.device = 'cuda' places one rank per GPU, but local rank {local_rank} has no GPU "
                          f"(this machine has {n}); start at most {n} processes per machine", EXIT_CONFIG)
    return torch.device("cuda", local_rank)


@dataclass
class Context:
    """This process's place in the group."""

    rank: int
    world: int
    store: dist.Store | None
    timeout: float
    #: whether this process group was created here (and is destroyed at the end) or was already there
    owned: bool = True

    def mark_failed(self, where: str) -> None:
        """Tell the other ranks (through the store) that this rank saw a failure."""
        if self.store is None:
            return
        try:
            self.store.set(f"compsde/failed/{self.rank}", where)
        except Exception:  # the store may be gone with the rank that hosted it
            pass

    def failure_reasons(self) -> dict[int, str]:
        """Rank → what it wrote when it failed, for the ranks that reported a failure."""
        out: dict[int, str] = {}
        if self.store is None:
            return out
        for j in self.failed_ranks():
            try:
                out[j] = self.store.get(f"compsde/failed/{j}").decode("utf-8", "replace")
            except Exception:
                out[j] = "unknown"
        return out

    def failed_ranks(self) -> list[int]:
        """Ranks that reported a failure (through the store)."""
        if self.store is None:
            return []
        out = []
        for j in range(self.world):
            try:
                if self.store.check([f"compsde/failed/{j}"]):
                    out.append(j)
            except Exception:
                return out
        return out


def in_launched_env() -> bool:
    """Whether this process is one rank of a group: started by torchrun or ``spawn`` (``RANK`` and
    ``WORLD_SIZE`` set), or with a default process group already initialised."""
    return ("RANK" in os.environ and "WORLD_SIZE" in os.environ) or (dist.is_available() and dist.is_initialized())


def init_from_env(timeout: float, backend: str = "gloo") -> Context:
    """Join the process group described by the environment (``RANK``, ``WORLD_SIZE``, and
    ``COMPSDE_INIT_METHOD`` or ``MASTER_ADDR``/``MASTER_PORT``) with ``backend`` (see
    ``dist_backend_for``) and ``timeout`` seconds on every collective. Reuses an already initialised
    default group."""
    if dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), _default_store(), timeout, owned=False)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    init = os.environ.get(INIT_METHOD_ENV, "env://")
    if init == "env://" and "MASTER_ADDR" not in os.environ:
        raise LaunchError(f"RANK and WORLD_SIZE are set but neither MASTER_ADDR nor {INIT_METHOD_ENV} is: "
                          "start the ranks with torchrun, or without those variables to launch them locally",
                          EXIT_CONFIG)
    if _loopback(init):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    td = datetime.timedelta(seconds=timeout)
    store, rank, world = next(dist.rendezvous(init, rank=rank, world_size=world, timeout=td))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=td)
    return Context(rank, world, store, timeout)


def _loopback(init: str) -> bool:
    if init.startswith("file://"):
        return True
    addr = os.environ.get("MASTER_ADDR", "")
    return addr in ("127.0.0.1", "localhost", "::1")


def _default_store() -> dist.Store | None:
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None


def check_same_settings(mine: Mapping[str, Any], *, what: str, why: str, group: dist.ProcessGroup | None = None) -> None:
    """All-gather ``mine`` (a few small, picklable settings by name that every rank of ``group`` must
    share: digests, names, seeds) and, if any rank's differ from rank 0's, raise ``ConfigMismatch`` on
    every rank naming the ranks, the settings and their values (those whose repr is short). ``what``
    names the whole ("configuration"), ``why`` says what must agree. One collective, before the ranks
    rely on the settings agreeing (differing sizes would otherwise fail inside a collective, and
    differing seeds not at all)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    every: list[Any] = [None] * world
    dist.all_gather_object(every, dict(mine), group=group)
    bad = [r for r in range(world) if every[r] != every[0]]
    if not bad:
        return
    parts = []
    for key in sorted({k for r in bad for k in {*every[r], *every[0]} if every[r].get(k) != every[0].get(k)}):
        values = {r: every[r].get(key) for r in [0, *bad] if r == 0 or every[r].get(key) != every[0].get(key)}
        if all(len(repr(v)) <= 40 for v in values.values()):
            parts.append(f"{key} ({', '.join(f'rank {r}: {v!r}' for r, v in values.items())})")
        else:
            parts.append(key)
    many = len(bad) > 1
    raise ConfigMismatch(f"rank {rank}: the {what} differs across ranks: rank{'s' if many else ''} "
                         f"{', '.join(map(str, bad))} differ{'' if many else 's'} from rank 0 in {'; '.join(parts)} "
                         f"({why})")


def peer_report(ctx: Context, where: str, wait: float = 1.0) -> str:
    """After a failed collective: record the failure, give the others ``wait`` seconds to do the
    same, and name the ranks that did not (the dead or hung ones)."""
    ctx.mark_failed(f"{COMM_FAILURE} {where}")
    if ctx.store is None:
        return "the failing rank is unknown (no store)"
    time.sleep(wait)
    reasons = ctx.failure_reasons()
    silent = [j for j in range(ctx.world) if j not in reasons]
    crashed = [f"rank {j} failed ({r})" for j, r in sorted(reasons.items()) if not r.startswith(COMM_FAILURE)]
    parts = crashed
    if silent:
        parts.append(f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} did not respond (died or hung)")
    return "; ".join(parts) if parts else "every rank lost contact (cause unknown)"


# ---- local launch --------------------------------------------------------------------------------


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == EXIT_PEER:
        return "stopped: lost contact with another rank"
    if code == EXIT_CONFIG:
        return "refused to start (exit status 2)"
    return f"exited with status {code}"


def spawn(workers: int, argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
          jobdir: str | Path | None = None, grace: float | None = None, poll: float = 0.05,
          wrap: Callable[[int], tuple[list[str], dict[str, str]]] | None = None) -> Path:
    """Start ``workers`` processes running ``python <argv>`` as ranks of one fresh gloo group and wait.

    Returns the job directory (a new temporary directory unless ``jobdir`` is given; it holds the
    FileStore and whatever the children write there). Raises ``LaunchError`` naming the failed ranks
    if any child fails: after the first failure, the others get ``grace`` seconds to stop on their own
    (default min(timeout, 10) + 2: once one rank has left, every other rank's next collective fails at
    once, and those already waiting on a hung rank time out within about the same time as the first),
    then the rest are terminated and reported as hung.

    The children run in their own session (a terminal's Ctrl-C reaches this process only) with
    ``COMPSDE_PARENT_PID`` set (see ``die_with_parent``). Whatever ends the wait — a failure, an
    exception such as ``Interrupted`` or KeyboardInterrupt — every child still running is sent
    SIGTERM, then SIGKILL after 3 s, before this returns or raises.

    ``wrap(rank)`` gives a command prefix and environment variables for each rank, e.g. to run it in a
    network namespace (``compsde.distributed.netns.throttled_link``).
    """
    if workers < 1:
        raise ValueError(f"workers must be an integer ≥ 1, got {workers}")
    job = Path(jobdir) if jobdir is not None else new_job_dir()
    job.mkdir(parents=True, exist_ok=True)
    store = job / "store"
    if store.exists():
        raise ValueError(f"the rendezvous file {store} exists: a FileStore must be fresh")
    base = dict(os.environ if env is None else env)
    base.setdefault("GLOO_SOCKET_IFNAME", "lo")
    base.setdefault("OMP_NUM_THREADS", "1")
    base[INIT_METHOD_ENV] = f"file://{store}"
    base[PARENT_ENV] = str(os.getpid())
    base["WORLD_SIZE"] = str(workers)
    base["LOCAL_WORLD_SIZE"] = str(workers)
    for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE", "GROUP_RANK"):
        base.pop(k, None)
    procs: list[subprocess.Popen] = []
    try:
        for r in range(workers):
            prefix, extra = wrap(r) if wrap is not None else ([], {})
            e = dict(base, RANK=str(r), LOCAL_RANK=str(r), **extra)
            procs.append(subprocess.Popen([*prefix, sys.executable, *argv], env=e, start_new_session=True))
        _watch(procs, min(timeout, 10.0) + 2.0 if grace is None else grace, poll)
    finally:
        _stop(procs)
    return job


def new_job_dir() -> Path:
    """A fresh ``compsde-dist-*`` directory in the temporary directory (``tempfile.gettempdir()``), with
    its owner (this process) recorded in it, after removing the stale ones (``remove_stale_jobs``)."""
    remove_stale_jobs()
    job = Path(tempfile.mkdtemp(prefix=JOB_PREFIX))
    (job / OWNER_FILE).write_text(_process_id(os.getpid()))
    return job


def remove_stale_jobs(where: str | Path | None = None) -> list[Path]:
    """Remove this user's job directories in ``where`` (default: the temporary directory) whose owner
    process is gone — left by a launcher killed with SIGKILL, which cannot clean up. Directories
    without a readable owner record (being created, or of another program) are left alone. Returns
    the directories removed."""
    removed = []
    for job in Path(where if where is not None else tempfile.gettempdir()).glob(f"{JOB_PREFIX}*"):
        try:
            if not job.is_dir() or job.stat().st_uid != os.getuid():
                continue
            pid_text, _, start = (job / OWNER_FILE).read_text().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if not _running(pid, start.strip()):
            shutil.rmtree(job, ignore_errors=True)
            removed.append(job)
    return removed


def _process_id(pid: int) -> str:
    """``"PID STARTTIME"``: the start time (in clock ticks since boot, from /proc; "?" elsewhere) tells
    the owner from a later process that reuses its pid."""
    return f"{pid} {_start_time(pid) or '?'}"


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None  # field 22 of proc(5)


def _running(pid: int, start: str) -> bool:
    """Whether the process ``pid`` that started at ``start`` (``_process_id``) still runs."""
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):  # gone, or a zombie (dead, not yet reaped)
            return False
        return start in ("?", "") or fields[19] == start
    return process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts as gone where /proc tells)."""
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(procs: list[subprocess.Popen], grace: float, poll: float) -> None:
    first: tuple[int, int, float] | None = None  # (rank, code, time)
    while True:
        codes = [p.poll() for p in procs]
        if first is None:
            for r, c in enumerate(codes):
                if c is not None and c != 0:
                    first = (r, c, time.monotonic())
                    break
        if all(c is not None for c in codes):
            break
        if first is not None and time.monotonic() - first[2] > grace:
            break
        time.sleep(poll)
    if first is None:
        return
    hung = [r for r, p in enumerate(procs) if p.poll() is None]
    _stop([procs[r] for r in hung])
    codes = [p.returncode for p in procs]
    raise LaunchError(_failure_message(codes, hung, grace, first[0]),
                      EXIT_CONFIG if all(c in (0, EXIT_CONFIG) for c in codes) else 1)


def _failure_message(codes: list[int | None], hung: list[int], grace: float, first: int) -> str:
    """Name the culprits first: ranks that died or crashed, then ranks that hung; then the ranks that
    only stopped because of them. A rank still running after the others failed is called hung only
    when no rank died, crashed or refused to start: otherwise it was merely not stopped by them (a
    healthy rank running a series alone has no collective that would fail)."""
    culprits = [r for r, c in enumerate(codes) if r not in hung and c not in (0, EXIT_PEER, EXIT_CONFIG)]
    parts = [f"rank {r} {describe_exit(codes[r])}" for r in culprits]
    explained = any(c not in (0, EXIT_PEER) for r, c in enumerate(codes) if r not in hung)
    running = f"{grace:.0f} s after rank {first} failed; terminated"
    parts += [f"rank {r} was still running ({running})" if explained else f"rank {r} hung (still running {running})"
              for r in hung]
    victims = [r for r, c in enumerate(codes) if c == EXIT_PEER and r not in hung]
    config = [r for r, c in enumerate(codes) if c == EXIT_CONFIG]
    if config:
        parts.append(f"rank{'s' if len(config) > 1 else ''} {', '.join(map(str, config))} refused to start")
    if victims:
        parts.append(f"rank{'s' if len(victims) > 1 else ''} {', '.join(map(str, victims))} stopped because of it")
    return "distributed run failed: " + "; ".join(parts)


def _stop(procs: list[subprocess.Popen], wait: float = 3.0) -> None:
    """SIGTERM to every process still running, then SIGKILL to those still there after ``wait`` s."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    deadline = time.monotonic() + wait
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def set_threads() -> None:
    """One intra-op thread per rank (environment.md: ranks on few cores oversubscribe otherwise)."""
    if os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)
