"""Gradient transformations with state (optax-style): see ``compsde.optim.transforms``."""

from compsde.optim.transforms import Transform, adam, add_decayed_weights, chain, identity, momentum, normalize, rmsprop, sign

__all__ = ["Transform", "adam", "add_decayed_weights", "chain", "identity", "momentum", "normalize", "rmsprop", "sign"]
