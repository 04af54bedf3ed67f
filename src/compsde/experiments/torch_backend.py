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
differ from rank 0. The run folder is set up as the simulator's (``runner.start_run``: run.json,
config.toml); rank 0 rewrites metrics.csv after every series, so a failed run keeps the series that
finished, and writes the simulator's other files at the end (summary.json, plots) with, per series,
``wire_bytes_per_worker_per_step`` next to ``bits_per_worker_per_step``.

The processes' life (launch, each rank's session and failures, idle ranks and heartbeats,
checkpoints and resume) is ``compsde.distributed.backend``; this module builds the series from the
config and writes the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
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
from compsde.distributed.backend import (
    RunSettings,
    SeriesJob,
    SeriesRunner,
    check_resumable,
    child_main,
    launch_job,
    outcome_from_dict,
    outcome_to_dict,
    rank_entry,
    rank_session,
    say,
)
from compsde.distributed.launch import (
    EXIT_CONFIG,
    ConfigMismatch,
    Context,
    Interrupted,
    LaunchError,
    in_launched_env,
    interruptible,
    quiet_signals,
)
from compsde.distributed.worker import SeriesOutcome
from compsde.experiments import build as config_mod
from compsde.experiments.build import Experiment
from compsde.experiments.presets import CONFIG_FILE
from compsde.sim.recorder import Trace

__all__ = ["DEFAULT_TIMEOUT", "MAX_TIMEOUT", "MIN_TIMEOUT", "RunResult", "config_digest", "run", "world_size"]

DEFAULT_TIMEOUT = 60.0
#: The range of ``timeout``: below 0.1 s a collective fails on ordinary scheduling jitter; above a day
#: a hung rank is never noticed in practice (and 1e300 s does not fit a timedelta).
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 86_400.0
#: The module a locally launched rank runs (``python -m``).
CHILD_MODULE = "compsde.experiments._torch_child"


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
        return  # checked in rank_session against the group itself
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
            "machine)")


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
        command: str | None = None, report: bool = True, tensorboard: str | Path | None = None) -> RunResult:
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
        report: write report.html when the run ends, however it ends (``compsde.experiments.report``).
        tensorboard: a directory rank 0 streams the metrics rows to, as TensorBoard scalars after each
            series (``compsde.experiments.tensorboard_stream``; needs the tensorboard package).

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
        check_resumable(ckpt_mod.load(resume), config_digest(exp.config, world), resume)
    if tensorboard is not None:  # fail early when TensorBoard is not installed or the path is a file
        from compsde.experiments.tensorboard_stream import MetricsStream

        MetricsStream(tensorboard)
    # The simulator's estimate of the same run: one process per worker divides the work but adds the
    # collectives; refused above a day, announced above ten minutes, as for the simulator.
    estimate = estimates.estimate_run(exp, [])
    options = {"timeout": float(timeout), "checkpoint_every": checkpoint_every,
               "resume": None if resume is None else str(resume), "progress": progress, "plots": plots,
               "command": command or shlex.join(sys.argv), "report": report,
               "tensorboard": None if tensorboard is None else str(tensorboard)}
    if in_launched_env():
        _check_launched_world(exp, world)
        return _rank_main(exp, out, world, options, estimate=estimate)
    record = _start_run(out, exp, world, options, estimate)
    try:
        with interruptible():  # a signal stops the children and removes the job directory
            res = launch_job(world, CHILD_MODULE, {"config": exp.config, "name": exp.name, "out": str(out),
                                                   "world": world, "options": options}, timeout=float(timeout))
            result = RunResult(out, [outcome_from_dict(o) for o in res["outcomes"]])
    except Interrupted as e:
        e.out_dir = out  # type: ignore[attr-defined]
        runner.end_run(record, e, report=report)
        raise
    except BaseException as e:
        runner.end_run(record, e, report=report)
        raise
    runner.end_run(record, None, report=report)
    return result


def _start_run(out: Path, exp: Experiment, world: int, options: dict[str, Any], estimate: Any) -> Any:
    """The run folder of a torch-backend run (``runner.start_run``), set up by the launching process,
    or by rank 0 under torchrun; a resumed run keeps the outputs already there."""
    from compsde.experiments import runner

    return runner.start_run(out, exp, command=options["command"], backend="torch", track=False, estimate=estimate,
                            rerun=f"compsde run {CONFIG_FILE} --backend torch --workers {world}",
                            clear=options["resume"] is None)


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
    (``estimate`` given), rank 0 also sets up the run folder and keeps run.json; a local launch's
    parent does otherwise."""
    from compsde.experiments import runner

    record = None
    if estimate is not None and int(os.environ.get("RANK", "0")) == 0:
        record = _start_run(out, exp, world, options, estimate)
    try:
        result = _rank_work(exp, out, world, options, result_path)
    except BaseException as e:
        if record is not None:
            runner.end_run(record, e, report=options["report"])
        raise
    if record is not None:
        runner.end_run(record, None, report=options["report"])
    return result


def _rank_work(exp: Experiment, out: Path, world: int, options: dict[str, Any], result_path: Path | None) -> RunResult:
    """This rank's session (``rank_session``): every series, then rank 0 writes the files."""
    device = exp.run.get("device", "cpu")
    digest = config_digest(exp.config, world)
    settings = {"config": digest, "checkpoint_every": options["checkpoint_every"], "resume": options["resume"] is not None}

    def body(ctx: Context, set_where: Any) -> list[SeriesOutcome]:
        outcomes = _run_series(exp, out, ctx, options, digest, set_where)
        if ctx.rank == 0:
            _write_outputs(exp, out, outcomes, plots=options["plots"], world=ctx.world,
                           dist_backend=str(dist.get_backend()))
            if result_path is not None:
                torch.save({"outcomes": [outcome_to_dict(o) for o in outcomes]}, result_path)
        return outcomes

    ctx, outcomes = rank_session(world, device, options["timeout"], settings, body)
    return RunResult(out if ctx.rank == 0 else None, outcomes if ctx.rank == 0 else None)


def _run_series(exp: Experiment, out: Path, ctx: Context, options: dict[str, Any], digest: str,
                set_where: Any) -> list[SeriesOutcome]:
    """Every series of ``exp`` on this rank (``SeriesRunner``); rank 0 rewrites metrics.csv after each."""
    run_cfg = exp.run
    device = torch.device(run_cfg.get("device", "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # the rank's GPU (rank_session)
    settings = RunSettings(repeats=run_cfg["repeats"], seed=run_cfg["seed"], log_every=run_cfg["log_every"],
                           dtype=resolve_dtype(run_cfg["dtype"]), timeout=options["timeout"],
                           checkpoint_every=options["checkpoint_every"])
    jobs = [SeriesJob(s.oracle, s.algorithm, s.schedule, s.workers, s.label) for s in exp.series]
    stream = None
    if options.get("tensorboard") is not None and ctx.rank == 0:
        from compsde.experiments.tensorboard_stream import MetricsStream

        stream = MetricsStream(options["tensorboard"])
    runner = SeriesRunner(ctx, jobs, settings, device=device, digest=digest, checkpoint_path=out / ckpt_mod.FILE,
                          on_done=lambda done: _write_metrics(exp, out, done, stream))
    try:
        return runner.run(resume=options["resume"], progress=options["progress"], set_where=set_where)
    finally:
        if stream is not None:
            stream.close()


def config_digest(config: dict[str, Any], world: int) -> str:
    """SHA-256 of the resolved config's TOML text, the library version and the world size."""
    text = config_mod.dumps(config) + json.dumps({"version": ckpt_mod.library_version(), "world": world}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- outputs -------------------------------------------------------------------------------------


def _results(exp: Experiment, outcomes: list[SeriesOutcome]) -> list[Any]:
    from compsde.experiments import runner

    return [runner.metrics_from_trace(spec, o.trace, o.seconds) for spec, o in zip(exp.series, outcomes)]  # type: ignore[arg-type]


def _write_metrics(exp: Experiment, out: Path, outcomes: list[SeriesOutcome], stream: Any = None) -> None:
    """metrics.csv of the series finished so far (rewritten after each: a failed run keeps them), and their
    rows to TensorBoard (``stream``, a ``tensorboard_stream.MetricsStream``) when given."""
    from compsde.core.files import atomic_write
    from compsde.experiments import runner

    results = _results(exp, outcomes)
    atomic_write(out / "metrics.csv", runner.metrics_csv(results))
    if stream is not None:
        stream.send(results)


def _write_outputs(exp: Experiment, out: Path, outcomes: list[SeriesOutcome], *, plots: bool, world: int,
                   dist_backend: str = "gloo") -> None:
    """The simulator backend's files (same writers), plus the measured wire bytes per series."""
    from compsde.experiments import runner

    results = _results(exp, outcomes)
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
                  progress=not args.no_progress, plots=not args.no_plots, report=not args.no_report,
                  tensorboard=args.tensorboard)
    except LaunchError as e:
        say(f"error: {e}")
        return _leave(e.status) if joined else e.status
    except Interrupted as e:
        out = getattr(e, "out_dir", None)
        more = ""
        if out is not None and (Path(out) / ckpt_mod.FILE).is_file():
            more = f"; continue from its last checkpoint with --resume {out}"
        say(f"{_fresh_line()}compsde: interrupted by {e.signame}: every rank stopped{more}")
        return e.status
    except KeyboardInterrupt:  # before the launch installed its handlers
        say(f"{_fresh_line()}compsde: interrupted")
        return 130
    except (ValueError, OSError) as e:
        say(f"error: {e}")
        return _leave(EXIT_CONFIG) if joined else EXIT_CONFIG
    except Exception:
        if not joined:
            raise
        traceback.print_exc()
        return _leave(1)
    if res.out_dir is not None:  # the rank that wrote the files
        from compsde.experiments.cli import report_written

        report_written(res.out_dir)
    return 0


def _fresh_line() -> str:
    """A newline if stderr is a terminal (it may hold ^C or a progress bar without its newline)."""
    try:
        return "\n" if sys.stderr.isatty() else ""
    except (AttributeError, ValueError):
        return ""


def _leave(code: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        os._exit(code)
    return code



def _child_main(jobfile: str) -> None:
    """A rank of a local launch (``python -m compsde.experiments._torch_child JOBFILE``)."""

    def main(job: dict[str, Any], result_path: Path) -> int:
        exp = config_mod.build(job["config"], job["name"])
        return rank_entry(lambda: _rank_main(exp, Path(job["out"]), int(job["world"]), job["options"], result_path))

    child_main(jobfile, main)
