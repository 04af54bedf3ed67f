"""Events of an SDE solve: what happens at an optimizer-step boundary, part of the solve.

An optimizer step k covers SDE time η_k, integrated in ``substeps`` solver steps; at its end,
t_{k+1} = Σ_{j≤k} η_j, the solve (``compsde.sde.integrators.integrate_schedule``) calls its events in
order, ``z = event(k + 1, z, args)``, with the state z (M, state_dim) and the ``StepArgs`` of the step that
just ended. An event may change the state (in place or by returning a new tensor) and may record
communication on a ``compsde.sim.exchange.CommLog``, the simulator's own record of it:

* ``Communication``: one exchange per optimizer step (the methods that communicate every step: the
  default ``SDEModel.events``);
* ``Divergence``: the simulator's end of step (``compsde.sim.recorder``): the divergence check, the logged
  row when the step is logged, and the freezing of diverged paths (iterate back to x⁰, the rest of an
  augmented state to 0), so the SDE's paths diverge and freeze exactly as the optimizer's repetitions do.

A method that communicates only at some boundaries (Local SGD's averaging every H steps) is one model of
the workers' states plus an event that averages them there and records that round on the log
(``compsde.sde.local``: ``LocalSDE`` and ``Averaging``, whose ``period`` the divergence event logs as the
simulator logs a local method's H).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from compsde.sde.models import SDEModel, StepArgs
    from compsde.sim.exchange import CommLog
    from compsde.sim.recorder import Recorder

__all__ = ["Communication", "Divergence", "Event"]


class Event:
    """Base class: ``__call__(k, z, args) -> z`` at the boundary after optimizer step k − 1 (k ≥ 1)."""

    def __call__(self, k: int, z: Tensor, args: StepArgs) -> Tensor:
        raise NotImplementedError

    @property
    def period(self) -> int | None:
        """The synchronisation period H in force (a local method's averaging event), None for the others."""
        return None


class Communication(Event):
    """One communication round per optimizer step: ``bits`` declared bits and ``nbytes`` wire bytes (per
    path) of one worker, recorded on ``log``."""

    def __init__(self, log: CommLog, bits: float, nbytes: float) -> None:
        self.log, self.bits, self.nbytes = log, bits, nbytes

    def __call__(self, k: int, z: Tensor, args: StepArgs) -> Tensor:
        self.log.record(self.bits, self.nbytes)
        return z


class Divergence(Event):
    """The simulator's end of step on the SDE's paths (module doc): ``recorder.check`` of the iterates,
    ``recorder.record`` of the logged steps (its loss check is part of the rule, and the row carries the
    communication so far, ``log.totals()``, and the H in force of ``sync``, a local method's averaging event),
    then ``recorder.freeze`` of the model's ``state_parts``. ``progress(1)`` after each step."""

    def __init__(self, recorder: Recorder, model: SDEModel, log: CommLog,
                 progress: Callable[[int], None] | None = None, sync: Event | None = None) -> None:
        self.recorder, self.model, self.log, self.progress, self.sync = recorder, model, log, progress, sync

    def __call__(self, k: int, z: Tensor, args: StepArgs) -> Tensor:
        rec, model = self.recorder, self.model
        x = model.params(z)
        rec.check(x, k)
        if self.progress is not None:
            self.progress(1)
        if rec.due(k):
            rec.record(k, x, float("nan"), self.log.totals(), period=None if self.sync is None else self.sync.period)
        # x back to x⁰ (a local method's workers too), the rest of an augmented state to 0 (in place)
        rec.freeze(model.state_parts(z))
        return z
