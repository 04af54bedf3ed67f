"""Optimizer and algorithm state as plain data: nested dicts, tuples and lists of tensors and numbers.

Plain containers keep every state checkpointable with ``torch.save`` / ``torch.load(weights_only=True)``
and inspectable by eye. The helpers below map over the tensor leaves; non-tensor leaves (step counts,
the current period H, None) pass through unchanged.

Worker-side state carries a leading worker axis (one slice per worker held by this process); the
simulator processes workers in chunks and uses ``take``/``put`` to hand a chunk its slice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["leaves", "put", "take", "tree_map"]


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of ``tree`` (and the matching leaves of ``rest``)."""
    if isinstance(tree, Tensor):
        return fn(tree, *rest)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        out = [tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree)]
        return type(tree)(out)
    return tree if not rest else rest[-1]  # a non-tensor leaf: the newest value wins


def leaves(tree: Any) -> list[Tensor]:
    """The tensor leaves of ``tree``, in a fixed order."""
    out: list[Tensor] = []
    tree_map(lambda t: out.append(t), tree)
    return out


def take(tree: Any, lo: int, hi: int) -> Any:
    """Views of the workers lo..hi−1 of a worker-side state (tensor leaves sliced on their first axis)."""
    return tree_map(lambda t: t[lo:hi], tree)


def put(tree: Any, lo: int, hi: int, new: Any) -> Any:
    """Write a chunk's new state ``new`` back into workers lo..hi−1 of ``tree`` (in place for tensors);
    returns ``tree`` with its non-tensor leaves replaced by the chunk's."""

    def write(t: Tensor, n: Tensor) -> Tensor:
        if n.data_ptr() != t[lo:hi].data_ptr() or n.shape != t[lo:hi].shape:
            t[lo:hi] = n
        return t

    if tree is None:
        return None
    return tree_map(write, tree, new)


def zeros_like_tree(tree: Any) -> Any:
    return tree_map(torch.zeros_like, tree)
