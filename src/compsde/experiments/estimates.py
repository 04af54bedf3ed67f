"""How much memory and time a run needs, estimated before anything runs.

Memory (checked with ``compsde.core.tensors.check_memory`` against what is available now):

* a series in the simulator: the loop's own estimate (``compsde.sim.loop.Loop``): dtype size × R × d ×
  (the algorithm's state per element + 6 × the workers processed per chunk + 4) plus each worker's two
  random streams and their draws of a step (``compsde.core.streams.Streams.memory``), plus its problem
  (64 bytes per coordinate) and its record: (logged steps) × R × 3 float64 measurements, twice
  (the trace and its aggregation), and ~1 kB of bookkeeping per logged step;
* a series' SDE (``compsde track``): dtype size × M × d × (6 + noise dimension / d) for the closed-form
  models, ×4 N K M d more for the Monte Carlo model (K samples of every worker's update per path),
  plus its record like the optimizer's.

``build`` checks each series' simulator memory before it builds the series' problem (so
``problem.dim = 10**9`` is refused at once, not after allocating it); the runner checks the SDEs'.

Time: steps × (N × R × d × ``SECONDS_PER_ELEMENT`` + N × ``SECONDS_PER_WORKER`` + ``SECONDS_PER_STEP``) per
series (``SECONDS_PER_WORKER``: a worker's own draws from its streams, a few generator calls whatever R
and d, which dominate when R·d is small), and for its SDE
steps × substeps × (M × (d + noise dimension) × ``SDE_SECONDS_PER_ELEMENT`` — or N × K × M × d ×
``SECONDS_PER_ELEMENT`` for the Monte Carlo model — + ``SDE_SECONDS_PER_STEP``). The constants were
measured on the development machine (2 cores, float64, DSGD/DCSGD/DSignSGD/EF with Gaussian and
Student-t noise: 45-300 ns per number and 0.4-3 ms per step on a loaded machine; 15-25 µs per worker and
step for the noise draw at d = 4, R = 2, and up to ~150 µs with Rand-k's per-worker index draw). Against the presets
at their default size the estimate was within a factor of 3 of the measured time (estimate ÷ measured:
optimizers 0.7-2.6, closed-form SDEs 0.4-2.1); it is a guide to the order of magnitude, not a promise.
Runs estimated above ``REFUSE_SECONDS`` (24 h) are refused, above ``WARN_SECONDS`` (10 min) announced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compsde.core.streams import Streams
from compsde.core.tensors import DTYPES, check_memory
from compsde.core.trees import leaves
from compsde.sim.loop import CHUNK_ELEMENTS

__all__ = ["REFUSE_SECONDS", "SDE_SECONDS_PER_ELEMENT", "SDE_SECONDS_PER_STEP", "SECONDS_PER_ELEMENT", "SECONDS_PER_STEP",
           "SECONDS_PER_WORKER", "WARN_SECONDS", "Estimate", "check_series_memory", "estimate_run", "format_seconds",
           "optimizer_seconds", "sde_seconds"]

#: Seconds per number (worker × repetition × coordinate) and step, and per step (see module doc).
SECONDS_PER_ELEMENT = 150e-9
SECONDS_PER_STEP = 1e-3
#: Seconds per worker and step beyond its numbers: its draws from its own streams (see module doc).
SECONDS_PER_WORKER = 20e-6
#: A closed-form SDE's substep: per number (path × coordinate) and per substep (no exchange, no
#: per-worker noise or compressor draws; a Monte Carlo SDE draws them, and costs like the optimizer).
SDE_SECONDS_PER_ELEMENT = 30e-9
SDE_SECONDS_PER_STEP = 1e-4
#: Runs estimated above this are refused ...
REFUSE_SECONDS = 24 * 3600.0
#: ... and above this announced with one line on stderr.
WARN_SECONDS = 600.0

_PER_LOGGED_STEP = 1024  # Python objects of one logged row (dicts, tensor headers)
_PROBLEM_BYTES_PER_COORD = 64  # a problem's vectors of length d (spectrum, x0, x*, scratch)
HOW = (f"steps × workers × repeats × dim × {SECONDS_PER_ELEMENT * 1e9:.0f} ns + {SECONDS_PER_WORKER * 1e6:.0f} µs "
       f"per worker and step + {SECONDS_PER_STEP * 1e3:.0f} ms per step, summed over the series, plus their SDEs' paths for `compsde track`; costs measured on a "
       "2-core machine")


def format_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    if s < 365.25 * 86400:
        return f"{s / 86400:.3g} days"
    return f"{s / (365.25 * 86400):.3g} years"


def _logged(steps: int, log_every: int) -> int:
    return steps // max(1, log_every) + 2


def _record_bytes(steps: int, log_every: int, repeats: int) -> float:
    n = _logged(steps, log_every)
    return n * (repeats * 8.0 * 3 * 2 + _PER_LOGGED_STEP)


def state_units(algorithm: Any, workers: int, dtype: torch.dtype) -> int:
    """Numbers of algorithm state per (repetition, coordinate) for ``workers`` workers (as ``Loop`` counts)."""
    return sum(t.numel() for t in leaves(algorithm.init(torch.zeros(1, 1, dtype=dtype), workers)))


def series_memory(algorithm: Any, run: Mapping[str, Any], series: Mapping[str, Any], dim: int) -> float:
    """Bytes a series needs in the simulator (see module doc)."""
    dtype = DTYPES[run["dtype"]]
    itemsize = torch.empty((), dtype=dtype).element_size()
    r, n = run["repeats"], series["workers"]
    chunk = max(1, min(n, CHUNK_ELEMENTS // max(1, r * dim)))
    units = state_units(algorithm, n, dtype)
    steps = series.get("steps", run["steps"])
    return (float(itemsize) * r * dim * (units + 6 * chunk + 4) + Streams.memory(n, n)
            + _PROBLEM_BYTES_PER_COORD * float(dim) + _record_bytes(steps, run["log_every"], r))


def check_series_memory(algorithm: Any, run: Mapping[str, Any], series: Mapping[str, Any],
                        dim: int) -> None:
    """Refuse (ValueError) a series whose simulation would not fit in the memory available now (the
    message starts with the sizes; ``build`` prefixes it with the series)."""
    r, n = run["repeats"], series["workers"]
    check_memory(series_memory(algorithm, run, series, dim),
                 f"{n} worker(s) × {r} repetition(s) × d = {dim} in {run['dtype']}",
                 "reduce run.repeats, the series' workers, problem.dim or run.steps / run.log_every",
                 run["device"])


def _sde_memory(model: Any, run: Mapping[str, Any], series: Mapping[str, Any], dim: int) -> float:
    itemsize = torch.empty((), dtype=DTYPES[run["dtype"]]).element_size()
    m, n = run["paths"], series["workers"]
    out = m * model.path_bytes(itemsize)
    if model.noise_type == "sampled":
        out += 4.0 * itemsize * n * model.samples * m * dim
    if getattr(model, "rank", 0):  # a network's noise factors (N, M, n, d) and the per-sample gradients behind them
        out += 2.0 * itemsize * n * m * model.rank * dim
    return out + _record_bytes(series.get("steps", run["steps"]), run["log_every"], m)


def _sde_seconds(model: Any, run: Mapping[str, Any], series: Mapping[str, Any], dim: int) -> float:
    steps = series.get("steps", run["steps"]) * run["substeps"]
    n, m = series["workers"], run["paths"]
    if model.noise_type == "sampled":
        per = n * model.samples * m * dim * SECONDS_PER_ELEMENT
    else:  # closed forms: the drift and diffusion from the mean gradient, per path
        return sde_seconds(steps, m, dim, model.noise_dim)
    return steps * (per + SDE_SECONDS_PER_STEP)


def sde_seconds(steps: float, paths: int, dim: int, noise_dim: int) -> float:
    """Estimated seconds of ``steps`` substeps of a closed-form SDE with ``paths`` paths of dimension ``dim``
    driven by ``noise_dim`` Brownian coordinates (see module doc)."""
    return steps * (paths * (dim + noise_dim) * SDE_SECONDS_PER_ELEMENT + SDE_SECONDS_PER_STEP)


def optimizer_seconds(steps: float, workers: int, repeats: int, dim: int) -> float:
    """Estimated seconds of ``steps`` simulator steps of ``workers`` workers × ``repeats`` repetitions ×
    ``dim`` (see module doc): the one time model of the simulator, also used by ``compsde scale --validate``."""
    return steps * (workers * repeats * dim * SECONDS_PER_ELEMENT + workers * SECONDS_PER_WORKER + SECONDS_PER_STEP)


def series_seconds(run: Mapping[str, Any], series: Mapping[str, Any], dim: int) -> float:
    return optimizer_seconds(series.get("steps", run["steps"]), series["workers"], run["repeats"], dim)


@dataclass
class Estimate:
    """The estimated run time (seconds) and how it splits over the series."""

    seconds: float
    per_series: list[float]

    def describe(self) -> str:
        return f"about {format_seconds(self.seconds)} (estimated as {HOW})"


def estimate_run(exp: Any, models: Sequence[Any] = ()) -> Estimate:
    """Check the SDEs' memory (``models``: one per series for ``compsde track``, else empty) and estimate
    the run time; ValueError when a run would not fit in memory or is estimated above ``REFUSE_SECONDS``."""
    run = exp.run
    per = []
    for spec in exp.series:
        s, d = spec.config, spec.problem.dim
        t = series_seconds(run, s, d)
        if models and not isinstance(models[spec.index], str):  # a string: the series has no SDE
            model = models[spec.index]
            check_memory(_sde_memory(model, run, s, d),
                         f"series {spec.index} ({spec.label!r}): its SDE with {run['paths']} path(s) × d = {d}"
                         + (f" × {model.samples} Monte Carlo samples × {s['workers']} worker(s)"
                            if model.noise_type == "sampled" else ""),
                         "reduce run.paths" + (" or run.mc_samples" if model.noise_type == "sampled" else ""),
                         run["device"])
            t += _sde_seconds(model, run, s, d)
        per.append(t)
    est = Estimate(sum(per), per)
    if est.seconds > REFUSE_SECONDS:
        worst = max(range(len(per)), key=per.__getitem__)
        raise ValueError(
            f"this run would take {est.describe()}; runs above {format_seconds(REFUSE_SECONDS)} are refused. "
            f"The longest is series {worst} ({exp.series[worst].label!r}, {format_seconds(per[worst])}); "
            "reduce run.steps, run.repeats, workers or problem.dim" + (", run.paths or run.substeps" if models else ""))
    return est

