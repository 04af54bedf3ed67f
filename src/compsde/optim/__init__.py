"""Gradient transformations with state (optax-style): see ``compsde.optim.transforms``."""

from compsde.optim.transforms import Transform, add_decayed_weights, chain, identity, momentum, normalize

__all__ = ["Transform", "add_decayed_weights", "chain", "identity", "momentum", "normalize"]
