"""SDE models of the algorithms (drift and diffusion), their solves on separate axes (equation, noise source,
solver, events at optimizer-step boundaries; a local method's averaging), optimizer-vs-SDE tracking, and the scaling rules the SDEs imply."""

from compsde.sde.events import Communication, Divergence, Event
from compsde.sde.integrators import EulerMaruyama, Solver, check_solve, integrate, integrate_schedule
from compsde.sde.local import Averaging, LocalSDE
from compsde.sde.models import MODELS, NOISE_TYPES, SDEModel, StepArgs, from_algorithm
from compsde.sde.noise import INCREMENTS, GaussianIncrements, NoiseSource, RademacherIncrements, increments
from compsde.sde.tracking import fit_order, simulate_sde, tracking_error

__all__ = ["INCREMENTS", "MODELS", "NOISE_TYPES", "Averaging", "Communication", "Divergence", "EulerMaruyama", "Event",
           "GaussianIncrements", "LocalSDE", "NoiseSource", "RademacherIncrements", "SDEModel", "Solver", "StepArgs", "check_solve",
           "fit_order", "from_algorithm", "increments", "integrate", "integrate_schedule", "simulate_sde",
           "tracking_error"]
