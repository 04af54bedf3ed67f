"""Gradient oracles: problems (exact per-worker objectives), noise models, data and network models,
and the oracles that turn them into the stochastic gradients a run draws (``Oracle`` for problems
with a noise model, ``NetworkOracle`` for networks on data)."""

from compsde.objectives import data, games, models, problems
from compsde.objectives.network import NetworkOracle
from compsde.objectives.noise import NOISE_NAMES, Noise
from compsde.objectives.oracle import GradientOracle, Oracle
from compsde.objectives.problems import Problem

__all__ = ["NOISE_NAMES", "GradientOracle", "NetworkOracle", "Noise", "Oracle", "Problem", "data", "games", "models", "problems"]
