"""``compsde run CONFIG --backend torch``: every series on torch.distributed, one worker per process.

``run(config, out_dir, workers=N)``:

* inside a launched group (``RANK``/``WORLD_SIZE`` set, e.g. by ``torchrun``) it joins that group and
  runs as its rank;
* otherwise it starts N local gloo processes (``compsde.distributed.launch.spawn``), each running this
  module on a job file, and waits for them.

The world size is the largest ``workers`` of the config's series (``--workers`` may be left out; if
given, or if torchrun sets ``WORLD_SIZE``, it must equal that). A series with fewer workers N runs on
ranks 0..N−1 (a subgroup made with ``dist.new_group``, with the user's timeout like the default
group); the other ranks wait for it through the store and stop as soon as a rank reports a failure,
or, in a series of one worker (which no collective bounds), when rank 0 has made no step for the
timeout.
(A process group has a fixed size, and the alternative — one launch per worker count — would not work
under torchrun, which starts one group.)

The process-group backend follows the run's device (``[run] device``, default "cpu"): NCCL on CUDA,
one GPU per rank, gloo otherwise; ``summary.json`` reports it as ``backend.dist_backend``.

SIGINT, SIGTERM or SIGHUP to a local launch stops every rank, removes the job directory and ends
``compsde run`` with one line and status 128 + signal (130, 143, 129); ranks under torchrun exit with
one line each.

At start every rank all-gathers a digest of the resolved config, the library version, the world size
and the checkpoint options; if they differ, every rank stops (exit status 2) naming the ranks that
differ from rank 0. Rank 0 writes the same files as the simulator backend (config.toml, metrics.csv,
summary.json, plots) with, per series, ``wire_bytes_per_worker_per_step`` next to
``bits_per_worker_per_step``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from compsde.core.checks import MAX_INT64, check_int, check_number
from compsde.core.tensors import resolve_dtype
from compsde.distributed import checkpoint as ckpt_mod
from compsde.distributed.launch import (
    COMM_FAILURE,
    EXIT_CONFIG,
    EXIT_PEER,
    Context,
    Interrupted,
    LaunchError,
    die_with_parent,
    dist_backend_for,
    in_launched_env,
    init_from_env,
    interruptible,
    peer_report,
    quiet_signals,
    rank_device,
    set_threads,
    spawn,
)
from compsde.distributed.worker import SeriesOutcome, run_series
from compsde.experiments import build as config_mod
from compsde.experiments.build import Experiment
from compsde.sim.recorder import Trace

__all__ = ["DEFAULT_TIMEOUT", "MAX_TIMEOUT", "MIN_TIMEOUT", "RunResult", "run", "world_size"]

DEFAULT_TIMEOUT = 60.0
#: The range of ``timeout``: below 0.1 s a collective fails on ordinary scheduling jitter; above a day
#: a hung rank is never noticed in practice (and 1e300 s does not fit a timedelta).
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 86_400.0


@dataclass
class RunResult:
    """Where the outputs went and, on the reporting process, what each series produced."""

    out_dir: Path | None
    outcomes: list[SeriesOutcome] | None

    @property
    def traces(self) -> list[Trace]:
        if self.outcomes is None:
            raise ValueError("this process is not the reporting rank: it holds no traces")
        return [o.trace for o in self.outcomes]  # type: ignore[misc]


class ConfigMismatch(LaunchError):
    pass


class PeerFailure(LaunchError):
    pass


def world_size(exp: Experiment, workers: int | None) -> int:
    """The group size for ``exp``: the largest series ``workers``; ``workers`` (``--workers``) must equal it."""
    need = max(s.workers for s in exp.series)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise ValueError(f"--workers must be an integer, got {workers!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be an integer ≥ 1 (processes; default: the largest series workers, {need}), "
                         f"got {workers}")
    if workers is not None and workers != need:
        per = ", ".join(f"{s.index} ({s.label!r}): {s.workers}" for s in exp.series)
        raise ValueError(
            f"--workers {workers} does not match the config: the torch backend runs one process per worker and "
            f"needs as many processes as the largest series has workers ({need}; series workers: {per}). "
            f"Pass --workers {need}, or change the series with --set series.workers={workers}"
        )
    return need


def _check_launched_world(exp: Experiment, world: int) -> None:
    """Under torchrun (``WORLD_SIZE`` set, no group yet): refuse a group of the wrong size before the
    rendezvous, so every rank stops at once with the reason."""
    if dist.is_initialized():
        return  # checked in _rank_main against the group itself
    text = os.environ.get("WORLD_SIZE", "")
    try:
        have = int(text)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer (the number of processes), got {text!r}") from None
    if have != world:
        per = ", ".join(f"{s.index} ({s.label!r}): {s.workers}" for s in exp.series)
        raise ConfigMismatch(
            f"the process group has {have} ranks (WORLD_SIZE) but the config needs {world}, the largest series "
            f"workers (series workers: {per}); start {world} processes (torchrun --nproc_per_node {world} for one "
            "machine)", EXIT_CONFIG)


def _as_experiment(config: Experiment | Mapping[str, Any] | str | Path) -> Experiment:
    if isinstance(config, Experiment):
        return config
    return config_mod.load(config)


def _default_out(exp: Experiment, out_dir: str | Path | None, resume: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if resume is not None:
        return ckpt_mod.path_for(resume).parent
    from compsde.experiments.runner import default_out_dir

    return default_out_dir(exp.name)


def run(config: Experiment | Mapping[str, Any] | str | Path, out_dir: str | Path | None = None, *,
        workers: int | None = None, timeout: float = DEFAULT_TIMEOUT, checkpoint_every: int | None = None,
        resume: str | Path | None = None, progress: bool = True, plots: bool = True,
        command: str | None = None) -> RunResult:
    """Run every series of ``config`` on torch.distributed and write the simulator's output files.

    Args:
        config: a built ``Experiment``, a raw config dict, a preset name or a TOML path.
        out_dir: output directory (default ``runs/<name>-<timestamp>``, or the checkpoint's directory
            when resuming).
        workers: the number of processes (default: the largest series ``workers``, which it must equal;
            under torchrun ``WORLD_SIZE`` must equal it too).
        timeout: seconds any collective may wait before the run fails (a dead or hung rank), in
            [0.1, 86400].
        checkpoint_every: write ``checkpoint.pt`` into the output directory every that many steps.
        resume: a checkpoint file or a directory holding one; the run continues from it.
        command: the command line recorded in run.json (default: this process's argv).

    Every argument, and the checkpoint to resume, is checked before any process starts.

    Returns a ``RunResult``: on the launching process (or rank 0 when joined) with every series'
    outcome (``trace``, wire bytes); ``outcomes`` is None on the other ranks. Raises ``LaunchError``
    (naming the ranks) if a rank fails, ``ValueError`` on bad input, and ``Interrupted`` (a
    KeyboardInterrupt) when SIGINT, SIGTERM or SIGHUP stops a local launch — after stopping every
    rank and removing the job directory (``out_dir`` on the exception says where the outputs and any
    checkpoint are).
    """
    from compsde.experiments import estimates, runner

    exp = _as_experiment(config)
    world = world_size(exp, workers)
    _check_options(timeout, checkpoint_every)
    out = _default_out(exp, out_dir, resume)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} exists and is not a directory")
    if resume is not None:  # fail early, in this process, on a bad path or another configuration
        _check_resumable(ckpt_mod.load(resume), exp, world, resume)
    # The simulator's estimate of the same run: one process per worker divides the work but adds the
    # collectives; refused above a day, announced above ten minutes, as for the simulator.
    estimate = estimates.estimate_run(exp, [])
    options = {"timeout": float(timeout), "checkpoint_every": checkpoint_every,
               "resume": None if resume is None else str(resume), "progress": progress, "plots": plots,
               "command": command or shlex.join(sys.argv)}
    if in_launched_env():
        _check_launched_world(exp, world)
        return _rank_main(exp, out, world, options, estimate=estimate)
    import tempfile

    record = _start_record(out, exp, options, estimate)
    try:
        with interruptible():  # a signal stops the children and removes the job directory
            job = Path(tempfile.mkdtemp(prefix="compsde-dist-"))
            try:
                torch.save({"config": exp.config, "name": exp.name, "out": str(out), "world": world,
                            "options": options}, job / "job.pt")
                spawn(world, ["-m", "compsde.experiments._torch_child", str(job / "job.pt")], timeout=float(timeout),
                      jobdir=job)
                res = torch.load(job / "result.pt", map_location="cpu", weights_only=True)
                result = RunResult(out, [_outcome_from_dict(o) for o in res["outcomes"]])
            finally:
                shutil.rmtree(job, ignore_errors=True)
    except Interrupted as e:
        e.out_dir = out  # type: ignore[attr-defined]
        record.end(runner.failure_status(e))
        raise
    except BaseException as e:
        record.end(runner.failure_status(e))
        raise
    record.end("completed")
    return result


def _start_record(out: Path, exp: Experiment, options: dict[str, Any], estimate: Any) -> Any:
    """run.json of a torch-backend run (written by the launching process, or rank 0 under torchrun); a
    fresh run first removes an earlier run's outputs from the folder (a resumed run keeps them)."""
    from compsde.experiments import estimates, runner

    if estimate.seconds > estimates.WARN_SECONDS:
        _say(f"compsde: warning: this run will take {estimate.describe()}")
    out.mkdir(parents=True, exist_ok=True)
    if options["resume"] is None:
        runner.clear_outputs(out)
    return runner.RunRecord(out, exp, options["command"], "torch", False, estimate)


def _check_resumable(ck: dict[str, Any], exp: Experiment, world: int, where: Any) -> None:
    if ck["config_digest"] != config_digest(exp.config, world):
        raise ConfigMismatch(
            f"--resume {str(where)!r}: the checkpoint was written for another configuration "
            "(resolved config, library version or number of workers differ)", EXIT_CONFIG)


def _check_options(timeout: float, checkpoint_every: int | None) -> None:
    try:
        check_number("--timeout", timeout, min=MIN_TIMEOUT, max=MAX_TIMEOUT)
    except ValueError as e:
        raise ValueError(f"{e} (seconds a collective may wait: {MIN_TIMEOUT:g} s to {MAX_TIMEOUT:g} s = 1 day)") from None
    if checkpoint_every is not None:
        try:
            check_int("--checkpoint-every", checkpoint_every, min=1, max=MAX_INT64)
        except ValueError:
            raise ValueError(f"--checkpoint-every must be an integer in [1, 2^63 - 1] (steps between checkpoints; "
                             f"one beyond a series' steps checkpoints only at the end of each series), got "
                             f"{checkpoint_every!r}") from None


# ---- one rank ------------------------------------------------------------------------------------


def _rank_main(exp: Experiment, out: Path, world: int, options: dict[str, Any],
               result_path: Path | None = None, estimate: Any = None) -> RunResult:
    """Run as one rank of the group in the environment; rank 0 writes the outputs. Joined to a group
    (``estimate`` given), rank 0 also keeps run.json; a local launch's parent keeps it otherwise."""
    from compsde.experiments import runner

    record = None
    if estimate is not None and int(os.environ.get("RANK", "0")) == 0:
        record = _start_record(out, exp, options, estimate)
    try:
        result = _rank_work(exp, out, world, options, result_path)
    except BaseException as e:
        if record is not None:
            record.end(runner.failure_status(e))
        raise
    if record is not None:
        record.end("completed")
    return result


def _rank_work(exp: Experiment, out: Path, world: int, options: dict[str, Any], result_path: Path | None) -> RunResult:
    set_threads()
    device = exp.run.get("device", "cpu")
    backend = dist_backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(rank_device(device, int(os.environ.get("LOCAL_RANK", "0"))))
    ctx = init_from_env(options["timeout"], backend)
    where = ["start"]  # what this rank is doing, for the failure message
    try:
        if ctx.world != world:
            raise ConfigMismatch(
                f"rank {ctx.rank}: the process group has {ctx.world} ranks but the config needs {world} "
                f"(the largest series workers); start {world} processes", EXIT_CONFIG)
        digest = config_digest(exp.config, world)
        _check_same_config(ctx, {"config": digest, "checkpoint_every": options["checkpoint_every"],
                                 "resume": options["resume"] is not None})
        outcomes = _run_all(exp, out, ctx, options, digest, lambda w: where.__setitem__(0, w))
        if ctx.rank == 0:
            _write_outputs(exp, out, outcomes, plots=options["plots"], world=ctx.world,
                           dist_backend=str(dist.get_backend()))
            if result_path is not None:
                torch.save({"outcomes": [_outcome_to_dict(o) for o in outcomes]}, result_path)
        dist.barrier()
        if ctx.owned:
            dist.destroy_process_group()
        return RunResult(out if ctx.rank == 0 else None, outcomes if ctx.rank == 0 else None)
    except PeerFailure:
        ctx.mark_failed(f"{COMM_FAILURE} (waiting)")  # a victim, not a cause
        raise
    except LaunchError as e:
        ctx.mark_failed(str(e)[:400])
        raise
    except Exception as e:
        if _is_comm_error(e):
            at = next((n for n in getattr(e, "__notes__", []) if n.startswith("at step")), f"in {where[0]}")
            who = peer_report(ctx, at, wait=min(2.0, options["timeout"] / 2))
            raise PeerFailure(f"rank {ctx.rank}: communication failed {at}: {who}. "
                              f"({_first_line(e)})", EXIT_PEER) from e
        at = next((n for n in getattr(e, "__notes__", []) if n.startswith("at step")), f"in {where[0]}")
        ctx.mark_failed(f"{_first_line(e)}, {at}"[:400])
        raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _is_comm_error(e: BaseException) -> bool:
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and any(
        s in msg for s in ("gloo", "Gloo", "Connection closed", "Connection reset", "Timed out", "timed out", "Socket"))


def _check_same_config(ctx: Context, mine: dict[str, Any]) -> None:
    every: list[Any] = [None] * ctx.world
    dist.all_gather_object(every, mine)
    bad = [r for r in range(ctx.world) if every[r] != every[0]]
    if bad:
        keys = sorted({k for r in bad for k in mine if every[r].get(k) != every[0].get(k)})
        raise ConfigMismatch(
            f"rank {ctx.rank}: the configuration differs across ranks: rank{'s' if len(bad) > 1 else ''} "
            f"{', '.join(map(str, bad))} differ{'' if len(bad) > 1 else 's'} from rank 0 in {', '.join(keys)} "
            "(every rank must run the same resolved config, library version and checkpoint options)", EXIT_CONFIG)


def _run_all(exp: Experiment, out: Path, ctx: Context, options: dict[str, Any], digest: str,
             set_where) -> list[SeriesOutcome]:
    rank, run_cfg = ctx.rank, exp.run
    device = run_cfg.get("device", "cpu")
    if torch.device(device).type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # the rank's GPU (_rank_main)
    # Subgroups for series with fewer workers than the world: every rank must create them, in order.
    groups: dict[int, dist.ProcessGroup | None] = {ctx.world: None}
    for n in sorted({s.workers for s in exp.series}):
        if n < ctx.world:
            # The user's timeout, like the default group's (new_group's own default is 30 minutes).
            groups[n] = dist.new_group(list(range(n)), timeout=datetime.timedelta(seconds=options["timeout"]))

    # Resume: rank 0 reads the checkpoint; everyone learns where to start.
    ck = None
    completed: list[SeriesOutcome] = []
    header = [0, None]  # first series to run, its resume step (None = from 0)
    if options["resume"] is not None and rank == 0:
        ck = ckpt_mod.load(options["resume"])
        _check_resumable(ck, exp, ctx.world, options["resume"])
        completed = [_outcome_from_dict(o) for o in ck["completed"]]
        cur = ck["current"]
        header = [len(completed), None if cur is None else int(cur["step"])]
        if cur is not None and int(cur["series"]) != len(completed):
            raise ValueError(f"--resume: inconsistent checkpoint (current series {cur['series']}, "
                             f"{len(completed)} completed)")
    if options["resume"] is not None:
        obj = [header]
        dist.broadcast_object_list(obj, src=0)
        header = obj[0]
        if rank == 0:
            print(_resumed_line(options["resume"], exp, header[0], header[1]), flush=True)

    ckpt_path = out / ckpt_mod.FILE
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        from compsde.core.files import atomic_write

        text = config_mod.dumps(exp.config, header=f"compsde resolved config ({exp.name}); re-run with: "
                                                     f"compsde run config.toml --backend torch --workers {ctx.world}")
        atomic_write(out / "config.toml", text)

    bar = None
    if rank == 0 and options["progress"]:
        from tqdm.auto import tqdm

        total = sum(s.schedule.steps for s in exp.series[header[0]:])
        bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=True, mininterval=0.2, disable=None)
    try:
        for i, spec in enumerate(exp.series):
            if i < header[0]:
                continue
            n = spec.workers
            if rank >= n:
                set_where(f"series {i} (idle: waiting for ranks 0..{n - 1})")
                # One worker: no collective bounds its steps, so the idle ranks watch its heartbeat.
                _wait_idle(ctx, i, stall=options["timeout"] if n == 1 else None)
                continue
            group = groups[n]
            if bar is not None:
                bar.set_description(spec.label[:40])
            state = None
            if i == header[0] and header[1] is not None:
                state = _scatter_state(ck, rank, n, group)
            set_where(f"series {i} ({spec.label!r})")

            def save(part, i=i, n=n, group=group):
                _checkpoint(ctx, ckpt_path, digest, completed, i, n, group, part)

            outcome = run_series(
                spec.oracle.to(resolve_dtype(run_cfg["dtype"]), device), spec.algorithm, spec.schedule,
                repeats=run_cfg["repeats"], seed=run_cfg["seed"], log_every=run_cfg["log_every"],
                rank=rank, group=group, index=i, label=spec.label, resume=state,
                checkpoint=save if options["checkpoint_every"] else None,
                checkpoint_every=options["checkpoint_every"],
                progress=_progress(bar, _Heartbeat(ctx, i) if rank == 0 and n == 1 < ctx.world else None),
            )
            if rank == 0:
                completed.append(outcome)
                if options["checkpoint_every"]:
                    _save(ckpt_path, digest, ctx.world, completed, None)
                if ctx.store is not None and n < ctx.world:
                    ctx.store.set(f"compsde/series/{i}/done", "1")
    finally:
        if bar is not None:
            bar.close()
    return completed


def _resumed_line(resume: str | Path, exp: Experiment, series: int, step: int | None) -> str:
    """``resumed from CHECKPOINT at series 2 ("label") step 40 of 100`` (series counted from 0, as in
    ``--set series.2.…``)."""
    where = ckpt_mod.path_for(resume)
    if series >= len(exp.series):
        return f"resumed from {where}: every series was already complete (writing the outputs again)"
    spec = exp.series[series]
    return (f"resumed from {where} at series {series} ({json.dumps(spec.label, ensure_ascii=False)}) "
            f"step {step or 0} of {spec.schedule.steps}")


class _Heartbeat:
    """Rank 0 running series i alone: after a step, write how many steps it has made to the store (at
    most every ``timeout / 4`` seconds), for the idle ranks' ``_wait_idle(stall=timeout)``."""

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


def _progress(bar, beat: _Heartbeat | None):
    """``run_series``'s progress callback: the progress bar, the heartbeat, both or neither."""
    if beat is None:
        return None if bar is None else bar.update
    if bar is None:
        return beat

    def both(steps: int) -> None:
        bar.update(steps)
        beat(steps)

    return both


def _wait_idle(ctx: Context, i: int, stall: float | None = None, poll: float = 0.05) -> None:
    """A rank outside series i's group waits (without a collective, so without a timeout) until rank 0
    marks the series done, or stops if some rank reports a failure. With ``stall`` (a series of one
    worker, whose steps no collective bounds), it also stops if rank 0's heartbeat (``_Heartbeat``)
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


def _scatter_state(ck: dict[str, Any] | None, rank: int, n: int, group) -> dict[str, Any]:
    """Rank 0 hands every rank of the series its part of the checkpointed state."""
    msgs = list(ck["current"]["ranks"]) if rank == 0 and ck is not None else None
    recv: list[Any] = [None]
    dist.scatter_object_list(recv, msgs, src=0, group=group)
    return recv[0]


def _checkpoint(ctx: Context, path: Path, digest: str, completed: list[SeriesOutcome], i: int, n: int, group,
                part: dict[str, Any]) -> None:
    """Gather every rank's part (its loop state) on rank 0, which writes the checkpoint."""
    gathered: list[Any] | None = [None] * n if ctx.rank == 0 else None
    dist.gather_object(part, gathered, dst=0, group=group)
    if ctx.rank == 0:
        _save(path, digest, ctx.world, completed, {"series": i, "step": int(part["loop"]["k"]), "ranks": gathered})


def config_digest(config: dict[str, Any], world: int) -> str:
    """SHA-256 of the resolved config's TOML text, the library version and the world size."""
    import hashlib

    text = config_mod.dumps(config) + json.dumps({"version": ckpt_mod.library_version(), "world": world}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _save(path: Path, digest: str, world: int, completed: list[SeriesOutcome], current: dict[str, Any] | None) -> None:
    ckpt_mod.save(path, {
        "format": ckpt_mod.FORMAT, "compsde_version": ckpt_mod.library_version(), "config_digest": digest, "world": world,
        "completed": [_outcome_to_dict(o) for o in completed], "current": current,
    })


def _outcome_to_dict(o: SeriesOutcome) -> dict[str, Any]:
    d = {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    d["trace"] = None if o.trace is None else ckpt_mod.trace_to_dict(o.trace)
    return d


def _outcome_from_dict(d: dict[str, Any]) -> SeriesOutcome:
    d = dict(d)
    d["trace"] = None if d["trace"] is None else ckpt_mod.trace_from_dict(d["trace"])
    return SeriesOutcome(**d)


# ---- outputs -------------------------------------------------------------------------------------


def _write_outputs(exp: Experiment, out: Path, outcomes: list[SeriesOutcome], *, plots: bool, world: int,
                   dist_backend: str = "gloo") -> None:
    """The simulator backend's files (same writers), plus the measured wire bytes per series."""
    from compsde.experiments import runner

    results = [runner.metrics_from_trace(spec, o.trace, o.seconds) for spec, o in zip(exp.series, outcomes)]  # type: ignore[arg-type]
    summary = runner.summary_dict(exp, results)
    for s, o in zip(summary["series"], outcomes):
        extra = {
            # Per worker, step and repetition: comparable with bits_per_worker_per_step / 8.
            "wire_bytes_per_worker_per_step": o.wire_bytes_per_step_per_repeat,
            # Everything one worker handed to the step's collective (all repeats, alignment padding).
            "wire_bytes_per_worker_per_step_all_repeats": o.wire_bytes_per_step,
            "collective": o.collective,
        }
        items = list(s.items())
        pos = next((j + 1 for j, (k, _) in enumerate(items) if k == "bits_per_worker_per_step"), len(items))
        s.clear()
        s.update(items[:pos] + list(extra.items()) + items[pos:])
    summary["backend"] = {"name": "torch", "dist_backend": dist_backend, "world_size": world}
    runner.write_results(out, exp, results, summary, plots=plots)


# ---- command line and child entry -----------------------------------------------------------------


def cli_run(exp: Experiment, args: Any) -> int:
    """``compsde run ... --backend torch``: run, print where the outputs went, return the exit status.

    Under torchrun a failed rank leaves with ``os._exit`` after printing its message: after a failed
    collective, gloo's teardown at interpreter exit can block or abort; a signal (torchrun forwards
    SIGINT and SIGTERM to its ranks) ends a rank with one line. A local launch stopped by a signal
    prints one line and returns 128 + the signal's number.
    """
    joined = in_launched_env()
    if joined:
        quiet_signals(f"compsde rank {os.environ.get('RANK', '?')}: stopped by {{signal}}")
    try:
        res = run(exp, args.out, workers=args.workers,
                  timeout=DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
                  checkpoint_every=args.checkpoint_every, resume=args.resume,
                  progress=not args.no_progress, plots=not args.no_plots)
    except LaunchError as e:
        _say(f"error: {e}")
        return _leave(e.status) if joined else e.status
    except Interrupted as e:
        out = getattr(e, "out_dir", None)
        more = ""
        if out is not None and (Path(out) / ckpt_mod.FILE).is_file():
            more = f"; continue from its last checkpoint with --resume {out}"
        _say(f"{_fresh_line()}compsde: interrupted by {e.signame}: every rank stopped{more}")
        return e.status
    except KeyboardInterrupt:  # before the launch installed its handlers
        _say(f"{_fresh_line()}compsde: interrupted")
        return 130
    except (ValueError, OSError) as e:
        _say(f"error: {e}")
        return _leave(EXIT_CONFIG) if joined else EXIT_CONFIG
    except Exception:
        if not joined:
            raise
        traceback.print_exc()
        return _leave(1)
    if res.out_dir is not None:
        print(f"wrote {res.out_dir}")
    return 0


def _fresh_line() -> str:
    """A newline if stderr is a terminal (it may hold ^C or a progress bar without its newline)."""
    try:
        return "\n" if sys.stderr.isatty() else ""
    except (AttributeError, ValueError):
        return ""


def _say(line: str) -> None:
    """One line on stderr in one write: the ranks share the terminal, and a print's text and newline
    can otherwise interleave with another rank's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _leave(code: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        os._exit(code)
    return code




def rank_entry(exp: Experiment, out: Path, world: int, options: dict[str, Any], result_path: Path | None = None) -> int:
    """Run ``_rank_main`` and turn failures into an exit status and a one-line message on stderr."""
    rank = os.environ.get("RANK", "?")
    try:
        _rank_main(exp, out, world, options, result_path)
        return 0
    except LaunchError as e:
        _say(f"compsde: {e}")
        return e.status
    except ValueError as e:
        _say(f"compsde rank {rank}: error: {e}")
        return EXIT_CONFIG
    except Exception:
        print(f"compsde rank {rank}: crashed:", file=sys.stderr, flush=True)
        traceback.print_exc()
        return 1


def _child_main(jobfile: str) -> int:
    # A rank of a local launch: its own session (no terminal Ctrl-C), stopped by the launching process
    # with SIGTERM (default action: no traceback, no teardown), and by the kernel if that process dies.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()
    job = torch.load(jobfile, map_location="cpu", weights_only=True)
    exp = config_mod.build(job["config"], job["name"])
    code = rank_entry(exp, Path(job["out"]), int(job["world"]), job["options"], Path(jobfile).parent / "result.pt")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: after a failed collective, gloo's destructors can block or abort.
    os._exit(code)

