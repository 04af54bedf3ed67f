"""Run an experiment: every series through the simulator (``compsde.sim``), then write the results.

Before anything is written, the config is validated and built (``compsde.experiments.build``), every
series' memory is checked, and the run time is estimated (``compsde.experiments.estimates``): a run
that would not fit in memory or would take more than a day is refused, one above ten minutes is
announced with one line on stderr.

Output directory (every file written to a temporary name in the directory, then ``os.replace``-d,
so a reader never sees a half-written file). At start the known outputs of an earlier run in the
same directory (``OUTPUT_FILES``, every plot name, and their stale temporary files) are removed, so
files of two runs are never mixed; other files are left alone.

* ``run.json``      how the run was made and how it ended: the claim its config demonstrates (a
                    preset's description), ``compsde`` / torch / numpy / Python versions, the command
                    line (or the Python call), start and end times, the estimated seconds, and
                    ``status``: "running", "completed" or "failed: <reason>".
* ``config.toml``   the fully resolved config (every default filled in): ``compsde run config.toml``
                    (or ``compsde run DIR``) reproduces the run.
* ``metrics.csv``   one row per logged step and series (step 0 included), rewritten as the run goes:
                    after each series and at most every ``SNAPSHOT_SECONDS`` within one (the rows of
                    the logged steps done so far), so a killed run keeps what it computed. Columns:
                    ``series`` (label), ``source`` (optimizer | sde), ``group``, ``step``, ``lr`` (η_k
                    used for the step from k), ``loss_mean`` (mean of f − f* over the repetitions that
                    have not diverged), ``loss_median``, ``loss_q10``, ``loss_q90`` (over all
                    repetitions, diverged ones counting as +inf), ``grad_norm`` (mean ‖∇f(x)‖ over live
                    repetitions), ``dist_mean`` (mean ‖x − x*‖ over live repetitions; empty where x* is
                    unknown), ``bits`` (cumulative declared bits sent by each worker), ``bytes``
                    (cumulative wire bytes per worker and repetition), ``comm_rounds`` (communication
                    rounds so far), ``sync_period`` (a local method's H in force; empty for methods that
                    communicate every step), ``compression_error`` (mean ‖C(v) − v‖²/‖v‖² over workers and live
                    repetitions at that step; empty at step 0), ``diverged_fraction``, ``test_loss``,
                    ``test_accuracy``, ``test_perplexity`` (network problems), ``sharpness`` and
                    ``sharpness_slow_sde`` (``sharpness-valley``: h(y), and its slow SDE's prediction for
                    SGD and Local SGD, ``compsde.sde.slow``). Empty cell = not a number; ``inf`` = +∞. ``loss_mean`` is empty only when every repetition diverged.
* ``summary.json``  ``{"title", "name", "series": [{"label", "group", "method", "compressor",
                    "final": {...}, "bits_per_worker_per_step", ...}]}`` in config order; non-finite
                    numbers are written as null so the JSON stays valid. Written at the end.
* ``*.png``         the plots of ``compsde.experiments.plots``.
* ``report.html``   one self-contained page of all the above (``compsde.experiments.report``), written when
                    the run ends, however it ends (``report=False`` skips it).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compsde.core.checks import check_path
from compsde.core.files import atomic_write
from compsde.core.tensors import DTYPES
from compsde.experiments import estimates
from compsde.experiments.build import Experiment, SeriesSpec, build, dumps, load, resolve
from compsde.experiments.presets import CONFIG_FILE, RESOLVED_HEADER
from compsde.sde.alternatives import DEFAULT as DEFAULT_SDE
from compsde.sim.loop import Loop
from compsde.sim.recorder import Trace
from compsde.sim.simulator import simulate

__all__ = ["METRIC_COLUMNS", "OUTPUT_FILES", "SNAPSHOT_SECONDS", "SeriesResult", "Terminated", "clear_outputs",
           "default_out_dir", "end_run", "metrics_from_trace", "quantiles", "run_experiment", "start_run", "write_results"]

#: Below this many elements per step (d x repeats x workers) a series is simulated on one thread.
SINGLE_THREAD_BELOW = 1 << 20

#: Held-out metrics of network problems (``NetworkOracle.evaluate``): means over live repetitions,
#: empty where a problem does not report them.
EVAL_COLUMNS = ("test_loss", "test_accuracy", "test_perplexity")
#: The problem's own measurements (``Problem.metrics``: a valley's sharpness, mean over live repetitions)
#: and the slow SDE's prediction of it (``compsde.sde.slow``), empty where they do not apply.
PROBLEM_COLUMNS = ("sharpness", "sharpness_slow_sde")
METRIC_COLUMNS = [
    "series", "source", "group", "step", "lr", "loss_mean", "loss_median", "loss_q10", "loss_q90",
    "grad_norm", "dist_mean", "bits", "bytes", "comm_rounds", "sync_period", "compression_error", "diverged_fraction",
    *EVAL_COLUMNS, *PROBLEM_COLUMNS,
]
#: The slow SDE's prediction is integrated step by step (Python): only for runs up to this many steps.
SLOW_SDE_MAX_STEPS = 2_000_000
#: The files a run writes besides the plots (``plots.PLOT_FILES``); removed at the start of a run.
OUTPUT_FILES = (CONFIG_FILE, "metrics.csv", "summary.json", "run.json", "report.html")
#: Within a series, metrics.csv is rewritten at most this often (seconds).
SNAPSHOT_SECONDS = 2.0


def quantiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles along axis 1 of a (T, R) array with linear interpolation, where +inf is a value.

    ``np.quantile``/``torch.quantile`` return NaN when interpolating between two +inf; here two
    equal neighbours (inf included) give that value, and inf next to a finite value gives inf.
    NaN entries are treated as +inf. Returns shape (len(qs), T).
    """
    v = np.where(np.isnan(values), np.inf, values.astype(np.float64))
    v = np.sort(v, axis=1)
    r = v.shape[1]
    out = np.empty((len(qs), v.shape[0]))
    for j, q in enumerate(qs):
        pos = q * (r - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        a, b = v[:, lo], v[:, hi]
        w = pos - lo
        with np.errstate(invalid="ignore"):
            mid = a + w * (b - a)
        out[j] = np.where((a == b) | (w == 0.0), a, np.where(np.isinf(b), b, mid))
    return out


def _finite_mean(values: np.ndarray) -> np.ndarray:
    """Mean along axis 1 over finite entries (NaN where there is none)."""
    ok = np.isfinite(values)
    n = ok.sum(1)
    s = np.where(ok, values, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


@dataclass
class SeriesResult:
    """Per-step aggregates of one series (arrays of shape (T,)) and how to show it."""

    index: int
    label: str
    group: str
    method: str
    compressor: str
    problem: str
    color_key: str
    #: Workers N of the method (one worker alone sends nothing: its bits count the messages it would send).
    workers: int
    bits_per_step: int
    steps: np.ndarray
    lr: np.ndarray
    loss_mean: np.ndarray
    loss_median: np.ndarray
    loss_q10: np.ndarray
    loss_q90: np.ndarray
    grad_norm: np.ndarray
    dist_mean: np.ndarray | None
    bits: np.ndarray
    compression_error: np.ndarray
    diverged_fraction: np.ndarray
    first_diverged_step: int | None
    last_diverged_step: int | None
    seconds: float
    #: "optimizer" (the simulated method) or "sde" (its SDE, from ``compsde track``).
    source: str = "optimizer"
    #: Cumulative wire bytes per worker and repetition, and communication rounds (None: not recorded).
    bytes: np.ndarray | None = None
    comm_rounds: np.ndarray | None = None
    #: Held-out metrics (``EVAL_COLUMNS``) the problem reports, each a per-step mean.
    evaluation: dict[str, np.ndarray] = field(default_factory=dict)
    #: A local method's synchronisation period H in force at each logged step (None otherwise).
    sync_period: np.ndarray | None = None

    def row(self, t: int) -> dict[str, Any]:
        return {**{k: (v[t] if (v := self.evaluation.get(k)) is not None else None) for k in (*EVAL_COLUMNS, *PROBLEM_COLUMNS)},
            "series": self.label, "source": self.source, "group": self.group, "step": int(self.steps[t]), "lr": self.lr[t],
            "loss_mean": self.loss_mean[t], "loss_median": self.loss_median[t],
            "loss_q10": self.loss_q10[t], "loss_q90": self.loss_q90[t], "grad_norm": self.grad_norm[t],
            "dist_mean": None if self.dist_mean is None else self.dist_mean[t], "bits": self.bits[t],
            "bytes": None if self.bytes is None else self.bytes[t],
            "comm_rounds": None if self.comm_rounds is None else int(self.comm_rounds[t]),
            "sync_period": None if self.sync_period is None else int(self.sync_period[t]),
            "compression_error": self.compression_error[t], "diverged_fraction": self.diverged_fraction[t],
        }


def metrics_from_trace(spec: SeriesSpec, trace: Trace, seconds: float = 0.0,
                       source: str = "optimizer") -> SeriesResult:
    """Aggregate a Trace's (T, R) measurements into per-step statistics (see module doc)."""
    loss = trace.loss.double().numpy()
    q10, q50, q90 = quantiles(loss, (0.1, 0.5, 0.9))
    steps = trace.steps.numpy()
    div = trace.diverged_step.numpy()
    dived = div[div >= 0]
    return SeriesResult(
        index=spec.index, label=spec.label, group=spec.group, method=spec.algorithm.name,
        compressor=spec.config["compressor"], problem=spec.problem.name, color_key=spec.color_key, workers=spec.workers,
        bits_per_step=int(spec.algorithm.bits(spec.problem.dim)),
        steps=steps, lr=np.array([spec.schedule(int(k)) for k in steps], dtype=np.float64),
        loss_mean=_finite_mean(loss), loss_median=q50, loss_q10=q10, loss_q90=q90,
        grad_norm=_finite_mean(trace.grad_norm.double().numpy()),
        dist_mean=None if trace.dist is None else _finite_mean(trace.dist.double().numpy()),
        bits=trace.bits.double().numpy(), compression_error=trace.compression_error.double().numpy(),
        diverged_fraction=trace.diverged_fraction().numpy(),
        first_diverged_step=int(dived.min()) if dived.size else None,
        last_diverged_step=int(dived.max()) if dived.size else None, seconds=seconds, source=source,
        bytes=trace.bytes.double().numpy(), comm_rounds=trace.rounds.numpy(),
        evaluation={**{k: _finite_mean(v.double().numpy()) for k, v in trace.metrics.items()},
                    **(_slow_sde(spec, steps) if source == "optimizer" else {})},
        sync_period=None if trace.sync_period is None else trace.sync_period.numpy(),
    )


def _slow_sde(spec: SeriesSpec, steps: np.ndarray) -> dict[str, np.ndarray]:
    """The slow SDE's sharpness at the logged ``steps`` where it has a closed form (``compsde.sde.slow``: SGD
    and Local SGD on ``sharpness-valley``), else nothing."""
    from compsde.sde import slow

    if spec.schedule.steps > SLOW_SDE_MAX_STEPS or not slow.predicts(spec.oracle, spec.algorithm):
        return {}
    return {"sharpness_slow_sde": slow.valley_prediction(spec.oracle, spec.algorithm, spec.schedule)["sharpness"][steps]}


# ---- writing -------------------------------------------------------------------------------------


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return v


def _json_num(v: Any) -> float | int | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def metrics_csv(results: list[SeriesResult]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in results:
        for t in range(len(r.steps)):
            w.writerow({k: _csv_cell(v) for k, v in r.row(t).items()})
    return buf.getvalue()


def _final(r: SeriesResult) -> dict[str, Any]:
    return {
        "step": int(r.steps[-1]),
        "loss_mean": _json_num(r.loss_mean[-1]),
        "loss_median": _json_num(r.loss_median[-1]),
        "loss_q10": _json_num(r.loss_q10[-1]),
        "loss_q90": _json_num(r.loss_q90[-1]),
        "dist_mean": None if r.dist_mean is None else _json_num(r.dist_mean[-1]),
        "grad_norm": _json_num(r.grad_norm[-1]),
        "diverged_fraction": _json_num(r.diverged_fraction[-1]),
        **{k: _json_num(v[-1]) for k, v in r.evaluation.items()},
    }


def summary_dict(exp: Experiment, results: list[SeriesResult],
                 tracked: Sequence[Tracked | str] | None = None) -> dict[str, Any]:
    """The summary.json content (non-finite numbers as None → null).

    With ``tracked`` (``compsde track``), each series also gets ``sde`` (the model's description and
    its final values) and ``tracking`` (``max_rel_error``, ``mean_rel_error`` between the mean-loss
    curves), and groups whose series differ in η get a ``weak_order`` fit.
    """
    series = []
    for r, spec in zip(results, exp.series):
        s = spec.config
        final = _final(r)
        # Last 10 % of the logged steps: a steadier "where did it settle" than the last iterate alone
        # (under heavy tails one late jump dominates the final mean).
        w = max(1, len(r.steps) // 10)
        with np.errstate(invalid="ignore"):
            tail = {
                "from_step": int(r.steps[-w]),
                "loss_mean": _json_num(np.nanmean(r.loss_mean[-w:]) if np.isfinite(r.loss_mean[-w:]).any() else math.nan),
                "loss_median": _json_num(np.median(r.loss_median[-w:])),
            }
        ce = r.compression_error[np.isfinite(r.compression_error)]
        series.append({
            "label": r.label,
            "group": r.group,
            "method": r.method,
            "compressor": r.compressor,
            "compressor_repr": repr(spec.algorithm.compressor),
            "normalize": bool(s["normalize"]),
            **({"hyperparameters": dict(spec.algorithm.hyper)} if spec.algorithm.hyper else {}),
            "schedule": s["schedule"],
            "lr": s["lr"],
            "workers": s["workers"],
            "batch": s["batch"],
            "problem": spec.problem.name,
            "dim": spec.problem.dim,
            "noise": {"name": spec.noise.name, "scale": list(spec.noise.scale) if isinstance(spec.noise.scale, tuple) else spec.noise.scale, "nu": spec.noise.nu},
            "final": final,
            "tail": tail,
            "bits_per_worker_per_step": r.bits_per_step,
            "total_bits_per_worker": _json_num(r.bits[-1]),
            "compression_error_mean": _json_num(ce.mean()) if ce.size else None,
            "first_diverged_step": r.first_diverged_step,
            "seconds": round(r.seconds, 3),
        })
    out = {"title": exp.run["title"], "name": exp.name, "steps": exp.run["steps"],
           "repeats": exp.run["repeats"], "seed": exp.run["seed"], "series": series}
    if tracked is not None:
        for entry, t, spec in zip(series, tracked, exp.series):
            if isinstance(t, str):  # no SDE: the reason
                entry["sde"] = {"none": t}
                entry["tracking"] = {"max_rel_error": None, "mean_rel_error": None}
                continue
            entry["sde"] = {"model": spec.config.get("sde", DEFAULT_SDE), "description": t.model.description,
                            "noise_type": t.model.noise_type,
                            "paths": exp.run["paths"], "substeps": exp.run["substeps"],
                            "increments": exp.run["increments"], "final": _final(t.result),
                            "seconds": round(t.result.seconds, 3)}
            entry["tracking"] = {k: _json_num(v) for k, v in t.error.items()}
        out["weak_order"] = weak_order_fits(exp, tracked)
    return out


@dataclass
class Tracked:
    """A series' SDE: the aggregated curves, the model, and the tracking error against the optimizer
    (lists of them hold, for a series without an SDE, the reason as a string)."""

    result: SeriesResult
    model: Any
    error: dict[str, float]


def weak_order_fits(exp: Experiment, tracked: Sequence[Tracked | str]) -> list[dict[str, Any]]:
    """Per group whose series share a method but differ in η: the slope of log(mean tracking error)
    against log(η), which an order-1 weak approximation makes ≈ 1."""
    from compsde.sde.tracking import fit_order

    fits = []
    for group in dict.fromkeys(spec.group for spec in exp.series):
        members = [(spec, t) for spec, t in zip(exp.series, tracked) if spec.group == group and not isinstance(t, str)]
        lrs = [spec.config["lr"] for spec, _ in members]
        errs = [t.error["mean_rel_error"] for _, t in members]
        if len(set(lrs)) < 2 or len({spec.algorithm.label() for spec, _ in members}) != 1:
            continue
        try:
            slope = fit_order(lrs, errs)
        except ValueError:
            slope = math.nan
        fits.append({"group": group, "lr": lrs, "mean_rel_error": [_json_num(e) for e in errs], "slope": _json_num(slope)})
    return fits


def default_out_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` relative to the working directory."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def output_dir(out_dir: str | Path | None, name: str) -> Path:
    """The directory a run writes into: ``out_dir``, or ``default_out_dir(name)``. ValueError for an
    empty path or one that names an existing file."""
    if out_dir is not None and not str(check_path("out_dir", out_dir)).strip():
        raise ValueError(f"--out must name a directory, got {str(out_dir)!r}")
    out = Path(out_dir) if out_dir is not None else default_out_dir(name)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} exists and is not a directory")
    return out


def clear_outputs(out: Path) -> list[str]:
    """Remove the outputs an earlier run or advice left in ``out`` (``OUTPUT_FILES``, ``plots.PLOT_FILES``,
    ``compsde advise``'s advice.json and probe figures, and their ``.NAME.*.tmp`` temporaries): a report must
    not show an earlier command's results. Any other file stays. Returns the names removed."""
    from compsde.advise.probe import PROBE_FIGURES
    from compsde.experiments.plots import PLOT_FILES

    known = (*OUTPUT_FILES, *PLOT_FILES, "advice.json", *PROBE_FIGURES)
    removed = []
    for name in known:
        p = out / name
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(name)
        for tmp in out.glob(f".{name}.*.tmp"):
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp.name)
    return removed


# ---- running -------------------------------------------------------------------------------------


def _sde_models(exp: Experiment) -> list[Any]:
    """Every series' SDE model (its ``sde``: the library's own, ``compsde.sde.models.from_algorithm``, or an
    alternative, ``compsde.sde.alternatives``), or, for a series whose own SDE does not exist, the reason as
    a string (it runs as the optimizer only, e.g. SGD under ν ≤ 2 beside SignSGD); ValueError naming the
    reasons when no series has an SDE, or the series whose chosen alternative refuses it."""
    from compsde.sde.alternatives import DEFAULT, build_model

    models: list[Any] = []
    why: dict[str, list[str]] = {}  # reason → the series it concerns
    for spec in exp.series:
        choice = spec.config.get("sde", DEFAULT)
        try:
            models.append(build_model(choice, spec.oracle, spec.algorithm, spec.schedule.lr,
                                      mc_samples=exp.run["mc_samples"]))
        except ValueError as e:
            if choice != DEFAULT:  # asked for by name: an error, not a series without an SDE
                raise ValueError(f"series.{spec.index} ({spec.label!r}).sde = {choice!r}: {e}") from None
            models.append(f"series {spec.label!r}: {e}")
            why.setdefault(str(e), []).append(repr(spec.label))
    if all(isinstance(m, str) for m in models):
        raise ValueError("no series has an SDE to track: " + "; ".join(f"series {', '.join(labels)}: {reason}"
                                                                      for reason, labels in why.items()))
    return models


def _oracle(spec: SeriesSpec, run: Mapping[str, Any]) -> Any:
    """The series' oracle in the run's dtype, on the run's device."""
    return spec.oracle.to(DTYPES[run["dtype"]], run["device"])


def _simulate(spec: SeriesSpec, run: Mapping[str, Any], progress: Callable[[int], None],
              snapshot: Callable[[Loop], None]) -> Trace:
    """``compsde.sim.simulate`` calling ``snapshot`` after every step, so that the logged rows so far can
    be written while it runs."""
    return simulate(_oracle(spec, run), spec.algorithm, spec.schedule, repeats=run["repeats"], seed=run["seed"],
                    log_every=run["log_every"], progress=progress, observe=snapshot)


def _track(spec: SeriesSpec, run: Mapping[str, Any], trace: Trace, model: Any,
           progress: Any) -> Tracked:
    """Run a series' SDE from the optimizer's start and compare it with the optimizer's trace."""
    from compsde.sde.tracking import simulate_sde, tracking_error

    t0 = time.perf_counter()
    sde_trace, model = simulate_sde(
        _oracle(spec, run), spec.algorithm, spec.schedule,
        paths=run["paths"], seed=run["seed"], log_every=run["log_every"],
        substeps=run["substeps"], increments=run["increments"], mc_samples=run["mc_samples"], progress=progress,
        model=model,
    )
    result = metrics_from_trace(spec, sde_trace, time.perf_counter() - t0, source="sde")
    return Tracked(result, model, tracking_error(trace, sde_trace))


def _as_experiment(config: Experiment | Mapping[str, Any] | str | Path) -> Experiment:
    if isinstance(config, Experiment):
        return config
    if isinstance(config, Mapping):
        return build(resolve(config))
    return load(config)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")


class RunRecord:
    """run.json: the versions, the command, the times and the status of a run, rewritten as it changes."""

    def __init__(self, out: Path, exp: Experiment, command: str | None, backend: str, track: bool,
                 estimate: estimates.Estimate | None, status: str = "running") -> None:
        import compsde

        self.path = out / "run.json"
        done = status != "running"
        self.data: dict[str, Any] = {
            "name": exp.name,
            "claim": exp.claim,
            "status": status,
            "command": command,
            "argv": list(sys.argv),
            "backend": backend,
            "track": track,
            "started": None if done else _now(),  # None: recorded only when the run ended
            "ended": _now() if done else None,
            "estimated_seconds": None if estimate is None else round(estimate.seconds, 1),
            "versions": {"compsde": compsde.__version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "platform": platform.platform(),
            "device": exp.run["device"],
            "threads": torch.get_num_threads(),
        }
        self.write()

    def write(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")

    def end(self, status: str) -> None:
        self.data.update(status=status, ended=_now())
        self.write()


class Terminated(BaseException):
    """The process received SIGTERM during a run (``run_experiment`` raises it in the main thread, so that
    run.json records how the run ended, as it does for Ctrl-C)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread instead of ending the process
    at once; the handler in force before is restored after the block (and when the signal arrives, so a
    second SIGTERM during the clean-up acts as it did before). Outside the main thread, where Python
    cannot install signal handlers, the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    restore = signal.SIG_DFL if previous is None else previous  # None: a handler not installed from Python

    def terminated(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, restore)
        raise Terminated("terminated by SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, restore)


def failure_status(e: BaseException) -> str:
    """run.json's status for a run that ended by ``e``: "failed: interrupted" (Ctrl-C), "failed: terminated"
    (SIGTERM), else "failed: <exception type>: <first line of its message>"."""
    if isinstance(e, KeyboardInterrupt):
        return "failed: interrupted"
    if isinstance(e, Terminated):
        return "failed: terminated"
    text = str(e).strip().splitlines()
    return f"failed: {type(e).__name__}" + (f": {text[0][:300]}" if text else "")


def start_run(out: Path, exp: Experiment, *, command: str | None, backend: str, track: bool,
              estimate: estimates.Estimate | None, rerun: str, clear: bool = True) -> RunRecord:
    """Set up the run folder ``out`` (every backend): announce an estimate above ten minutes on stderr,
    create the folder, remove an earlier run's outputs (``clear_outputs``; a resumed run passes
    ``clear=False``), and write run.json (status "running") and config.toml, headed by the command
    that re-runs it (``rerun``). Returns the ``RunRecord`` to end."""
    if estimate is not None and estimate.seconds > estimates.WARN_SECONDS:
        sys.stderr.write(f"compsde: warning: this run will take {estimate.describe()}\n")
        sys.stderr.flush()
    out.mkdir(parents=True, exist_ok=True)
    if clear:
        clear_outputs(out)
    record = RunRecord(out, exp, command, backend, track, estimate)
    atomic_write(out / CONFIG_FILE, dumps(exp.config, header=f"{RESOLVED_HEADER} ({exp.name}); re-run with: {rerun}"))
    return record


def _python_call(config: Any, out_dir: Any, track: bool) -> str:
    what = f"<Experiment {config.name!r}>" if isinstance(config, Experiment) else (
        "<config dict>" if isinstance(config, Mapping) else repr(str(config)))
    return f"compsde.experiments.runner.run_experiment({what}, out_dir={None if out_dir is None else str(out_dir)!r}, track={track})"


def run_experiment(config: Experiment | Mapping[str, Any] | str | Path, out_dir: str | Path | None = None,
                   progress: bool = True, plots: bool = True, track: bool = False, command: str | None = None,
                   report: bool = True, tensorboard: str | Path | None = None) -> Path:
    """Run every series of ``config`` and write run.json, config.toml, metrics.csv, summary.json, plots and
    report.html.

    With ``track=True`` (``compsde track``) each series also runs as its SDE (``[run] paths`` paths
    from the same start, ``compsde.sde.tracking``): metrics.csv gains its curves (``source = sde``),
    summary.json its ``tracking`` errors, and ``tracking.png`` overlays both (plus ``weak_order.png``
    when a group's series differ in η: the tracking error against η and its fitted slope).

    Args:
        config: a built ``Experiment``, a raw config dict, a preset name, a TOML file or a run folder.
        out_dir: output directory (created if needed); default ``runs/<name>-<timestamp>``.
        progress: show a tqdm progress bar (silent anyway when stderr is not a terminal).
        plots: write the PNG plots (tests may skip them for speed).
        command: the command line to record in run.json (default: this Python call).
        report: write report.html at the end (``compsde.experiments.report``), also when the run fails or
            is interrupted (from what it wrote so far).
        tensorboard: a directory to stream the metrics rows to as TensorBoard scalars
            (``compsde.experiments.tensorboard_stream``; needs the tensorboard package).

    Returns the output directory. Bad input (config, sizes, ``out_dir``) raises ValueError before
    anything is written. A diverging series never raises: the Trace marks it diverged. A run stopped by
    Ctrl-C (KeyboardInterrupt) or, when called from the main thread, by SIGTERM (``Terminated``) records
    its status in run.json ("failed: interrupted", "failed: terminated") before the exception propagates.
    """
    from tqdm.auto import tqdm

    exp = _as_experiment(config)  # validates before anything is written
    models = _sde_models(exp) if track else []  # refused before anything is written when no series has an SDE
    estimate = estimates.estimate_run(exp, models)
    out = output_dir(out_dir, exp.name)
    stream = None
    if tensorboard is not None:
        from compsde.experiments.tensorboard_stream import MetricsStream

        stream = MetricsStream(tensorboard)
    with sigterm_raises():
        record = start_run(out, exp, command=command or _python_call(config, out_dir, track), backend="sim",
                           track=track, estimate=estimate,
                           rerun=f"compsde run {CONFIG_FILE} (or compsde run DIR, the folder holding it)")
        try:
            _run(exp, out, models, record, progress=progress, plots=plots, track=track, bar_cls=tqdm, stream=stream)
        except BaseException as e:
            end_run(record, e, report=report)
            raise
        finally:
            if stream is not None:
                stream.close()
        end_run(record, None, report=report)
    return out


def end_run(record: RunRecord, error: BaseException | None, *, report: bool) -> None:
    """Record in run.json how the run ended (``error``: the exception that ended it; None: completed), then,
    with ``report``, write report.html from what the folder holds. After a failure the report shows what
    was written so far, and one that cannot be written is announced on stderr: the run's own exception is
    the one that propagates."""
    record.end("completed" if error is None else failure_status(error))
    if not report:
        return
    from compsde.experiments.report import write_report

    if error is None:
        write_report(record.path.parent)
        return
    try:
        write_report(record.path.parent)
    except Exception as e:  # announced; the run's own error goes on
        sys.stderr.write(f"compsde: warning: report.html not written: {e}\n")
        sys.stderr.flush()


def _run(exp: Experiment, out: Path, models: list[Any], record: RunRecord, *, progress: bool, plots: bool, track: bool,
         bar_cls: Any, stream: Any = None) -> None:
    run = exp.run
    results: list[SeriesResult] = []
    tracked: list[Tracked | str] = []  # per series: its SDE, or why it has none

    def write_metrics(partial: Sequence[SeriesResult] = ()) -> None:
        sdes = [t.result for t in tracked if not isinstance(t, str)]
        rows = [*results, *partial, *sdes]
        atomic_write(out / "metrics.csv", metrics_csv(rows))
        if stream is not None:  # TensorBoard (--tensorboard): the rows not sent before
            stream.send(rows)

    total = sum(spec.schedule.steps * (2 if track and not isinstance(models[spec.index], str) else 1) for spec in exp.series)
    threads = torch.get_num_threads()
    with bar_cls(total=total, disable=None if progress else True, unit="step", dynamic_ncols=True,
                 leave=True, mininterval=0.2) as bar:
        for spec in exp.series:
            bar.set_description(spec.label[:40])
            t0 = time.perf_counter()
            last = [time.monotonic(), 1]  # time of the last write, logged rows written

            def snapshot(loop: Loop, spec: SeriesSpec = spec, t0: float = t0, last: list[float] = last) -> None:
                if time.monotonic() - last[0] < SNAPSHOT_SECONDS or len(loop.rec.rows) <= last[1]:
                    return
                write_metrics([metrics_from_trace(spec, loop.trace(), time.perf_counter() - t0)])
                last[:] = [time.monotonic(), len(loop.rec.rows)]

            # Small tensors gain nothing from intra-op threads, and on a busy machine OpenMP/BLAS
            # threads spinning at barriers made tiny matmuls 30-50x slower (measured on 2 cores).
            size = spec.problem.dim * run["repeats"] * spec.workers
            torch.set_num_threads(1 if size < SINGLE_THREAD_BELOW else threads)
            try:
                trace = _simulate(spec, run, bar.update, snapshot)
                results.append(metrics_from_trace(spec, trace, time.perf_counter() - t0))
                if track:
                    model = models[spec.index]
                    tracked.append(model if isinstance(model, str) else _track(spec, run, trace, model, bar.update))
            finally:
                torch.set_num_threads(threads)
            write_metrics()

    summary = summary_dict(exp, results, tracked if track else None)

    def tracking_png(title: str) -> dict[str, bytes]:
        from compsde.experiments import plots as plots_mod

        pairs = [(r, t) for r, t in zip(results, tracked) if not isinstance(t, str)]  # series with an SDE
        opt, sdes = [r for r, _ in pairs], [t.result for _, t in pairs]
        figs = {"tracking.png": plots_mod.tracking_figure(opt, sdes, [t.error for _, t in pairs], title)}
        test_png = plots_mod.tracking_test_figure(opt, sdes, title)
        if test_png is not None:
            figs["tracking_test.png"] = test_png
        if summary.get("weak_order"):
            figs["weak_order.png"] = plots_mod.weak_order_figure(summary["weak_order"], title)
        return figs

    write_results(out, exp, results, summary, plots=plots, extra_rows=[t.result for t in tracked if not isinstance(t, str)],
                  extra_figures=tracking_png if track else None)


def write_results(out: Path, exp: Experiment, results: list[SeriesResult], summary: Mapping[str, Any], *,
                  plots: bool, extra_rows: Sequence[SeriesResult] = (),
                  extra_figures: Callable[[str], dict[str, bytes]] | None = None) -> None:
    """Write metrics.csv (``results`` then ``extra_rows``), summary.json and the plots, each atomically.

    Shared by every backend (each keeps its run.json with a ``RunRecord`` from start to end). A figure
    this run does not produce (e.g. diverged.png) is removed, so none survives from an earlier run into
    the same directory.
    """
    atomic_write(out / "metrics.csv", metrics_csv(list(results) + list(extra_rows)))
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    if plots:
        from compsde.experiments import plots as plots_mod

        title = exp.run["title"] or exp.name
        made = plots_mod.make_plots(results, title)
        if extra_figures is not None:
            made.update(extra_figures(title))
        for name, png in made.items():
            atomic_write(out / name, png)
        for name in set(plots_mod.PLOT_FILES) - set(made):
            (out / name).unlink(missing_ok=True)
