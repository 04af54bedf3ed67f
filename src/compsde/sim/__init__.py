"""N workers × R Monte Carlo repetitions in one process: the loop around the algorithm step, the
in-process exchange, the recorder and divergence rule, and the plain reference loop."""

from compsde.sim.exchange import CommLog, InProcessExchange
from compsde.sim.loop import Loop
from compsde.sim.recorder import Trace, logged_steps
from compsde.sim.reference import simulate_reference
from compsde.sim.simulator import simulate

__all__ = ["CommLog", "InProcessExchange", "Loop", "Trace", "logged_steps", "simulate", "simulate_reference"]
