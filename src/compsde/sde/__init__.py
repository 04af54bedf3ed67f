"""SDE models of the algorithms (drift and diffusion), Euler–Maruyama integrators, optimizer-vs-SDE
tracking, and the scaling rules the SDEs imply."""

from compsde.sde.integrators import EulerMaruyama, integrate, integrate_schedule
from compsde.sde.models import MODELS, SDEModel, from_algorithm
from compsde.sde.tracking import fit_order, simulate_sde, tracking_error

__all__ = ["EulerMaruyama", "MODELS", "SDEModel", "fit_order", "from_algorithm", "integrate", "integrate_schedule",
           "simulate_sde", "tracking_error"]
