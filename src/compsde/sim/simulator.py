"""N simulated workers × R Monte Carlo repetitions, vectorised: one step is a handful of tensor ops.

``simulate`` runs the loop of ``compsde.sim.loop`` with all N workers in this process and an
in-process exchange; see there for the step and the per-worker streams, and ``compsde.sim.recorder``
for what is measured and the divergence rule. ``compsde.sim.reference.simulate_reference`` is the
plain loop over repetitions and workers on the same draws, written separately as a test oracle.
"""

from __future__ import annotations

from collections.abc import Callable

from compsde.algorithms import Algorithm
from compsde.algorithms.schedules import Schedule
from compsde.core.checks import check_callable, check_int, check_seed, describe
from compsde.core.tensors import DTYPES
from compsde.objectives.oracle import GradientOracle
from compsde.sim.exchange import InProcessExchange
from compsde.sim.loop import Loop
from compsde.sim.recorder import Trace

__all__ = ["check_run", "simulate"]


def check_run(oracle: GradientOracle, algorithm: Algorithm, schedule: Schedule, *, repeats: int, seed: int,
              log_every: int, progress: object = None, observe: object = None) -> None:
    """Validate the arguments every entry point (simulator, reference loop, SDE) shares: the oracle (of
    a floating dtype), the algorithm, the schedule, the counts, the seed and the callbacks."""
    if not isinstance(oracle, GradientOracle):
        raise ValueError("oracle must be a compsde.objectives.Oracle (a problem, a noise model, workers, batch) or "
                         f"NetworkOracle (a model on data), got {describe(oracle)}")
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be a compsde Algorithm (compsde.algorithms.make(...)), got {describe(algorithm)}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a compsde Schedule, got {describe(schedule)}")
    check_int("repeats", repeats, min=1)
    check_seed("seed", seed)
    check_int("log_every", log_every, min=1)
    if oracle.dtype not in DTYPES.values():
        raise ValueError(f"oracle dtype must be one of {', '.join(map(str, DTYPES.values()))}, got {describe(oracle.dtype)}")
    check_callable("progress", progress)
    check_callable("observe", observe)
    algorithm.compressor.bits(oracle.dim)  # the compressor fits the dimension (k ≤ d, ...)


def simulate(oracle: GradientOracle, algorithm: Algorithm, schedule: Schedule, *, repeats: int = 1, seed: int = 0,
             log_every: int = 1, progress: Callable[[int], None] | None = None,
             observe: Callable[[Loop], None] | None = None) -> Trace:
    """Run ``schedule.steps`` steps of ``algorithm`` on the N = ``oracle.workers`` workers of ``oracle``,
    R = ``repeats`` independent runs, in ``oracle.dtype`` on ``oracle.device``.

    Returns the ``Trace`` of measurements at ``logged_steps(steps, log_every)``. ``progress`` is
    called with the number of steps just completed (for a progress bar), ``observe`` with the loop
    after every step (e.g. to write the rows logged so far while the run goes).
    """
    check_run(oracle, algorithm, schedule, repeats=repeats, seed=seed, log_every=log_every, progress=progress,
              observe=observe)
    exchange = InProcessExchange(algorithm, repeats, oracle.dim, oracle.dtype)
    loop = Loop(algorithm, oracle, schedule, repeats=repeats, seed=seed, log_every=log_every, exchange=exchange)
    while not loop.done:
        loop.step()
        if progress is not None:
            progress(1)
        if observe is not None:
            observe(loop)
    return loop.trace()
