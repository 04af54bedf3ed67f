"""Gradient oracles: problems (exact per-worker objectives), noise models, data loaders, and the
``Oracle`` that combines them into the stochastic gradients a run draws."""

from compsde.objectives import problems
from compsde.objectives.noise import NOISE_NAMES, Noise
from compsde.objectives.oracle import Oracle
from compsde.objectives.problems import Problem

__all__ = ["NOISE_NAMES", "Noise", "Oracle", "Problem", "problems"]
