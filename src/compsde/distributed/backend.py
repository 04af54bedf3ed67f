"""The life of a distributed run of several series, one worker per process, apart from what the series are.

``compsde run CONFIG --backend torch`` (``compsde.experiments.torch_backend``) builds the series and
writes the files; everything about the processes is here, and nothing here imports the experiment
layer:

* **launch** — ``launch_job`` writes a job file into a new job directory (``launch.new_job_dir``),
  starts one process per rank on it (``launch.spawn``) and reads the result rank 0 left there;
  ``child_main`` is a launched rank's entry, ``rank_entry`` turns a rank's failure into an exit
  status and one line;
* **a rank's session** — ``rank_session`` joins the group, checks that every rank has the same world
  size and settings (``launch.check_same_settings``), runs the body and leaves the group; a failure
  is reported to the other ranks through the store and turned into a ``LaunchError`` that names the
  rank at fault (``PeerFailure`` on the ranks that only lost contact with it);
* **the series** — ``SeriesRunner`` runs every series with ``worker.run_series``: a series with
  fewer workers N than ranks runs on a subgroup of ranks 0..N−1 (made with the user's timeout), while
  the other ranks wait for it through the store (``wait_idle``); a series of one worker, which no
  collective bounds, writes a heartbeat (``Heartbeat``) that the idle ranks watch;
* **checkpoints** — every ``checkpoint_every`` steps rank 0 gathers every rank's part of the state
  and writes the checkpoint (``compsde.distributed.checkpoint``); a resumed run reads it on rank 0,
  broadcasts where to start, and scatters each rank its part.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from compsde.algorithms import Algorithm
from compsde.algorithms.schedules import Schedule
from compsde.distributed import checkpoint as ckpt_mod
from compsde.distributed.launch import (
    COMM_FAILURE,
    EXIT_CONFIG,
    EXIT_PEER,
    ConfigMismatch,
    Context,
    LaunchError,
    check_same_settings,
    die_with_parent,
    dist_backend_for,
    init_from_env,
    new_job_dir,
    peer_report,
    rank_device,
    set_threads,
    spawn,
)
from compsde.distributed.worker import SeriesOutcome, inject_fault, run_series
from compsde.objectives.oracle import Oracle

__all__ = ["Heartbeat", "PeerFailure", "RunSettings", "SeriesJob", "SeriesRunner", "child_main", "launch_job",
           "outcome_from_dict", "outcome_to_dict", "rank_entry", "rank_session", "wait_idle"]

T = TypeVar("T")


class PeerFailure(LaunchError):
    """This rank stopped because another rank failed (it is a victim, not the cause)."""


@dataclass(frozen=True)
class SeriesJob:
    """One series as the processes run it: N = ``workers`` workers on ranks 0..N−1."""

    oracle: Oracle
    algorithm: Algorithm
    schedule: Schedule
    workers: int
    label: str


@dataclass(frozen=True)
class RunSettings:
    """What every series of a run shares."""

    repeats: int
    seed: int
    log_every: int
    dtype: torch.dtype
    #: seconds any collective (and a lone worker's step, through its heartbeat) may take
    timeout: float
    checkpoint_every: int | None = None


# ---- launch --------------------------------------------------------------------------------------


def launch_job(world: int, module: str, job: Mapping[str, Any], *, timeout: float,
               wrap: Callable[[int], tuple[list[str], dict[str, str]]] | None = None) -> dict[str, Any]:
    """Start ``world`` local ranks running ``python -m MODULE JOBFILE`` (``JOBFILE`` holds ``job``, saved
    with ``torch.save``; the module calls ``child_main``) and return what rank 0 saved as the result.
    The job directory is removed whatever happens; ``LaunchError`` names the failed ranks. ``wrap``: as
    for ``spawn`` (e.g. the ranks of a throttled link)."""
    jobdir = new_job_dir()
    try:
        torch.save(dict(job), jobdir / "job.pt")
        spawn(world, ["-m", module, str(jobdir / "job.pt")], timeout=timeout, jobdir=jobdir, wrap=wrap)
        return torch.load(jobdir / "result.pt", map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)


def child_main(jobfile: str, main: Callable[[dict[str, Any], Path], int]) -> None:
    """A locally launched rank: run ``main(job, result_path)`` and exit with its status.

    The rank runs in its own session (no terminal Ctrl-C: SIGINT back to its default), is stopped by
    the launching process with SIGTERM (default action: no traceback, no teardown) and by the kernel
    if that process dies (``die_with_parent``). It leaves with ``os._exit``: after a failed collective,
    gloo's destructors can block or abort at interpreter exit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()
    job = torch.load(jobfile, map_location="cpu", weights_only=True)
    code = main(job, Path(jobfile).parent / "result.pt")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def say(line: str) -> None:
    """One line on stderr in one write: the ranks share the terminal, and a print's text and newline
    can otherwise interleave with another rank's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def rank_entry(main: Callable[[], Any]) -> int:
    """Run ``main`` as a rank and turn its failure into an exit status and a one-line message on stderr
    (a traceback for an unexpected crash)."""
    rank = os.environ.get("RANK", "?")
    try:
        main()
        return 0
    except LaunchError as e:
        say(f"compsde: {e}")
        return e.status
    except ValueError as e:
        say(f"compsde rank {rank}: error: {e}")
        return EXIT_CONFIG
    except Exception:
        print(f"compsde rank {rank}: crashed:", file=sys.stderr, flush=True)
        traceback.print_exc()
        return 1


# ---- a rank's session ----------------------------------------------------------------------------


def rank_session(world: int, device: str | torch.device, timeout: float, settings: Mapping[str, Any],
                 body: Callable[[Context, Callable[[str], None]], T]) -> tuple[Context, T]:
    """Join the process group of the environment as one of ``world`` ranks, on ``device`` (NCCL and one
    GPU per rank for CUDA, gloo otherwise), with ``timeout`` seconds on every collective; check that
    every rank has the same ``settings`` (ConfigMismatch otherwise); run ``body(ctx, set_where)``
    (``set_where`` records what the rank is doing, for the failure message); wait for every rank and
    leave the group. A failure is written to the store for the other ranks and raised as a
    ``LaunchError`` naming the rank at fault."""
    set_threads()
    backend = dist_backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(rank_device(device, int(os.environ.get("LOCAL_RANK", "0"))))
    ctx = init_from_env(timeout, backend)
    where = ["start"]  # what this rank is doing, for the failure message

    def set_where(w: str) -> None:
        where[0] = w

    try:
        if ctx.world != world:
            raise ConfigMismatch(
                f"rank {ctx.rank}: the process group has {ctx.world} ranks but the config needs {world} "
                f"(the largest series workers); start {world} processes")
        check_same_settings(settings, what="configuration",
                            why="every rank must run the same resolved config, library version and checkpoint options")
        result = body(ctx, set_where)
        dist.barrier()
        if ctx.owned:
            dist.destroy_process_group()
        return ctx, result
    except BaseException as e:
        failure = _rank_failure(ctx, e, where[0], timeout)
        if failure is e:
            raise
        raise failure from e


def _rank_failure(ctx: Context, e: BaseException, where: str, timeout: float) -> BaseException:
    """Record this rank's failure in the store and return what to raise: a ``PeerFailure`` naming the
    ranks at fault when a collective failed (a peer died or hung), else ``e`` itself."""
    if isinstance(e, PeerFailure):
        ctx.mark_failed(f"{COMM_FAILURE} (waiting)")  # a victim, not a cause
        return e
    if isinstance(e, LaunchError):
        ctx.mark_failed(str(e)[:400])
        return e
    if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit
        return e
    at = next((n for n in getattr(e, "__notes__", []) if n.startswith("at step")), f"in {where}")
    if _is_comm_error(e):
        who = peer_report(ctx, at, wait=min(2.0, timeout / 2))
        return PeerFailure(f"rank {ctx.rank}: communication failed {at}: {who}. ({_first_line(e)})", EXIT_PEER)
    ctx.mark_failed(f"{_first_line(e)}, {at}"[:400])
    return e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _is_comm_error(e: BaseException) -> bool:
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and any(
        s in msg for s in ("gloo", "Gloo", "Connection closed", "Connection reset", "Timed out", "timed out", "Socket"))


# ---- idle ranks ----------------------------------------------------------------------------------


class Heartbeat:
    """Rank 0 running series i alone: after a step, write how many steps it has made to the store (at
    most every ``timeout / 4`` seconds), for the idle ranks' ``wait_idle(stall=timeout)``."""

    def __init__(self, ctx: Context, i: int) -> None:
        self.store, self.key = ctx.store, f"compsde/series/{i}/beat"
        self.every = ctx.timeout / 4
        self.steps, self.last = 0, -math.inf

    def __call__(self, steps: int) -> None:
        self.steps += steps
        now = time.monotonic()
        if self.store is not None and now - self.last >= self.every:
            self.store.set(self.key, str(self.steps))
            self.last = now


def wait_idle(ctx: Context, i: int, stall: float | None = None, poll: float = 0.05) -> None:
    """A rank outside series i's group waits (without a collective, so without a timeout) until rank 0
    marks the series done, or stops if some rank reports a failure. With ``stall`` (a series of one
    worker, whose steps no collective bounds), it also stops if rank 0's heartbeat (``Heartbeat``)
    has not moved for ``stall`` seconds, naming rank 0 as hung."""
    if ctx.store is None:
        raise LaunchError("series with fewer workers than processes need the rendezvous store", EXIT_CONFIG)
    key, beat_key = f"compsde/series/{i}/done", f"compsde/series/{i}/beat"
    beat, since = None, time.monotonic()
    while not ctx.store.check([key]):
        failed = ctx.failed_ranks()
        if failed:
            raise PeerFailure(f"rank {ctx.rank}: stopping, rank{'s' if len(failed) > 1 else ''} "
                              f"{', '.join(map(str, failed))} reported a failure while this rank waited for series {i}",
                              EXIT_PEER)
        if stall is not None:
            now = ctx.store.get(beat_key) if ctx.store.check([beat_key]) else None
            if now != beat:
                beat, since = now, time.monotonic()
            elif time.monotonic() - since > stall:
                n = 0 if beat is None else int(beat)
                done = f"{n} step{'' if n == 1 else 's'}"
                msg = (f"rank {ctx.rank}: rank 0 made no progress in series {i} (one worker) for {stall:g} s "
                       f"(--timeout) after {done}: it hung or a step takes longer than the timeout")
                ctx.mark_failed(msg[:400])
                raise LaunchError(msg, EXIT_PEER)
        time.sleep(poll)


def _progress(bar: Any, beat: Heartbeat | None) -> Callable[[int], None] | None:
    """``run_series``'s progress callback: the progress bar, the heartbeat, both or neither."""
    if beat is None:
        return None if bar is None else bar.update
    if bar is None:
        return beat

    def both(steps: int) -> None:
        bar.update(steps)
        beat(steps)

    return both


# ---- the series ----------------------------------------------------------------------------------


class SeriesRunner:
    """Every series of a run, as this rank (``ctx``) takes part in it; rank 0 collects the outcomes.

    ``digest`` identifies the configuration in checkpoints (a resumed run must match it); checkpoints
    go to ``checkpoint_path`` (needed with ``settings.checkpoint_every`` or ``resume``).
    ``on_done(completed)`` is called on rank 0 after every series with the outcomes so far (the
    caller writes what finished).
    """

    def __init__(self, ctx: Context, series: Sequence[SeriesJob], settings: RunSettings, *, device: torch.device,
                 digest: str, checkpoint_path: Path | None = None,
                 on_done: Callable[[list[SeriesOutcome]], None] | None = None) -> None:
        self.ctx, self.series, self.settings, self.device = ctx, list(series), settings, device
        self.digest, self.checkpoint_path, self.on_done = digest, checkpoint_path, on_done
        self.completed: list[SeriesOutcome] = []
        self.groups = self._groups()

    def _groups(self) -> dict[int, dist.ProcessGroup | None]:
        """A subgroup of ranks 0..N−1 per series size N below the world (every rank must create them, in
        the same order), with the user's timeout like the default group (new_group's own default is
        30 minutes)."""
        groups: dict[int, dist.ProcessGroup | None] = {self.ctx.world: None}
        for n in sorted({s.workers for s in self.series}):
            if n < self.ctx.world:
                groups[n] = dist.new_group(list(range(n)), timeout=datetime.timedelta(seconds=self.settings.timeout))
        return groups

    # ---- resume
    def resume(self, where: str | Path) -> tuple[int, int | None, dict[str, Any] | None]:
        """Rank 0 reads the checkpoint at ``where`` (ConfigMismatch if another configuration wrote it)
        and takes its completed series; every rank learns where to start: (first series to run, its
        step or None for 0, the checkpoint on rank 0 / None elsewhere)."""
        ck: dict[str, Any] | None = None
        header: list[Any] = [0, None]
        if self.ctx.rank == 0:
            ck = ckpt_mod.load(where)
            check_resumable(ck, self.digest, where)
            self.completed = [outcome_from_dict(o) for o in ck["completed"]]
            cur = ck["current"]
            header = [len(self.completed), None if cur is None else int(cur["step"])]
            if cur is not None and int(cur["series"]) != len(self.completed):
                raise ValueError(f"--resume: inconsistent checkpoint (current series {cur['series']}, "
                                 f"{len(self.completed)} completed)")
        obj = [header]
        dist.broadcast_object_list(obj, src=0)
        first, step = int(obj[0][0]), obj[0][1]
        if self.ctx.rank == 0:
            print(self.resumed_line(where, first, step), flush=True)
        return first, step, ck

    def resumed_line(self, where: str | Path, series: int, step: int | None) -> str:
        """``resumed from CHECKPOINT at series 2 ("label") step 40 of 100`` (series counted from 0, as in
        ``--set series.2.…``)."""
        path = ckpt_mod.path_for(where)
        if series >= len(self.series):
            return f"resumed from {path}: every series was already complete (writing the outputs again)"
        job = self.series[series]
        return (f"resumed from {path} at series {series} ({json.dumps(job.label, ensure_ascii=False)}) "
                f"step {step or 0} of {job.schedule.steps}")

    # ---- running
    def run(self, *, resume: str | Path | None = None, progress: bool = False,
            set_where: Callable[[str], None] = lambda w: None) -> list[SeriesOutcome]:
        """Run every series (from the checkpoint at ``resume`` if given); rank 0 returns every outcome,
        in series order, the other ranks an empty list."""
        first, step, ck = self.resume(resume) if resume is not None else (0, None, None)
        bar = None
        if self.ctx.rank == 0 and progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(s.schedule.steps for s in self.series[first:]), unit="step", dynamic_ncols=True,
                       leave=True, mininterval=0.2, disable=None)
        try:
            for i in range(first, len(self.series)):
                job = self.series[i]
                if self.ctx.rank >= job.workers:
                    set_where(f"series {i} (idle: waiting for ranks 0..{job.workers - 1})")
                    inject_fault(self.ctx.rank, i, 0)
                    # One worker: no collective bounds its steps, so the idle ranks watch its heartbeat.
                    wait_idle(self.ctx, i, stall=self.settings.timeout if job.workers == 1 else None)
                    continue
                if bar is not None:
                    bar.set_description(job.label[:40])
                state = self._scatter_state(ck, job.workers) if i == first and step is not None else None
                set_where(f"series {i} ({job.label!r})")
                self._finish(i, self._run_one(i, job, state, bar))
        finally:
            if bar is not None:
                bar.close()
        return self.completed

    def _run_one(self, i: int, job: SeriesJob, state: dict[str, Any] | None, bar: Any) -> SeriesOutcome:
        ctx, s, n = self.ctx, self.settings, job.workers
        group = self.groups[n]

        def save(part: dict[str, Any]) -> None:
            self._checkpoint(i, n, group, part)

        lone = ctx.rank == 0 and n == 1 < ctx.world
        return run_series(
            job.oracle.to(s.dtype, self.device), job.algorithm, job.schedule, repeats=s.repeats, seed=s.seed,
            log_every=s.log_every, rank=ctx.rank, group=group, index=i, label=job.label, resume=state,
            checkpoint=save if s.checkpoint_every else None, checkpoint_every=s.checkpoint_every,
            progress=_progress(bar, Heartbeat(ctx, i) if lone else None),
        )

    def _finish(self, i: int, outcome: SeriesOutcome) -> None:
        """Rank 0: keep the outcome, checkpoint it, tell the idle ranks, hand it to ``on_done``."""
        if self.ctx.rank != 0:
            return
        self.completed.append(outcome)
        if self.settings.checkpoint_every and self.checkpoint_path is not None:
            self._save(None)
        if self.ctx.store is not None and self.series[i].workers < self.ctx.world:
            self.ctx.store.set(f"compsde/series/{i}/done", "1")
        if self.on_done is not None:
            self.on_done(list(self.completed))

    # ---- checkpoints
    def _scatter_state(self, ck: dict[str, Any] | None, n: int) -> dict[str, Any]:
        """Rank 0 hands every rank of the series its part of the checkpointed state."""
        msgs = list(ck["current"]["ranks"]) if self.ctx.rank == 0 and ck is not None else None
        recv: list[Any] = [None]
        dist.scatter_object_list(recv, msgs, src=0, group=self.groups[n])
        return recv[0]

    def _checkpoint(self, i: int, n: int, group: dist.ProcessGroup | None, part: dict[str, Any]) -> None:
        """Gather every rank's part (its loop state) on rank 0, which writes the checkpoint."""
        gathered: list[Any] | None = [None] * n if self.ctx.rank == 0 else None
        dist.gather_object(part, gathered, dst=0, group=group)
        if self.ctx.rank == 0:
            self._save({"series": i, "step": int(part["loop"]["k"]), "ranks": gathered})

    def _save(self, current: dict[str, Any] | None) -> None:
        if self.checkpoint_path is None:
            raise ValueError("checkpoints need a checkpoint path")
        ckpt_mod.save(self.checkpoint_path, {
            "format": ckpt_mod.FORMAT, "compsde_version": ckpt_mod.library_version(), "config_digest": self.digest,
            "world": self.ctx.world, "completed": [outcome_to_dict(o) for o in self.completed], "current": current,
        })


def check_resumable(ck: dict[str, Any], digest: str, where: Any) -> None:
    """ConfigMismatch unless the checkpoint ``ck`` was written for the configuration ``digest``."""
    if ck["config_digest"] != digest:
        raise ConfigMismatch(
            f"--resume {str(where)!r}: the checkpoint was written for another configuration "
            "(resolved config, library version or number of workers differ)")


def outcome_to_dict(o: SeriesOutcome) -> dict[str, Any]:
    """A ``SeriesOutcome`` as plain containers and tensors (``torch.load(weights_only=True)`` reads it)."""
    d = {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    d["trace"] = None if o.trace is None else ckpt_mod.trace_to_dict(o.trace)
    return d


def outcome_from_dict(d: dict[str, Any]) -> SeriesOutcome:
    """Inverse of ``outcome_to_dict``."""
    d = dict(d)
    d["trace"] = None if d["trace"] is None else ckpt_mod.trace_from_dict(d["trace"])
    return SeriesOutcome(**d)
