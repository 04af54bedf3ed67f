"""Optimizer and algorithm state as plain data: nested dicts, tuples and lists of tensors and numbers.

Plain containers keep every state checkpointable with ``torch.save`` / ``torch.load(weights_only=True)``
and inspectable by eye. The helpers below map over the tensor leaves; non-tensor leaves (None, a
schedule's counters outside the workers' state) pass through unchanged.

Worker-side state carries a leading worker axis on every leaf that changes (one slice per worker held
by this process, counters included: Adam's step count is a tensor); the simulator processes workers in
chunks and uses ``take``/``put`` to hand a chunk its slice. A non-tensor leaf cannot be sliced, so
``put`` refuses one that a chunk changed: its value would depend on how the workers were chunked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    return tree if not rest else rest[-1]  # a non-tensor leaf: the newest value


def leaves(tree: Any) -> list[Tensor]:
    """The tensor leaves of ``tree``, in a fixed order."""
    out: list[Tensor] = []
    tree_map(lambda t: out.append(t), tree)
    return out


def take(tree: Any, lo: int, hi: int) -> Any:
    """Views of the workers lo..hi−1 of a worker-side state (tensor leaves sliced on their first axis)."""
    return tree_map(lambda t: t[lo:hi], tree)


def put(tree: Any, lo: int, hi: int, new: Any) -> Any:
    """Write a chunk's new state ``new`` back into workers lo..hi−1 of ``tree`` (in place for tensors)
    and return ``tree``. Raises if a non-tensor leaf changed (it has no worker axis to write into)."""
    if tree is None:
        return None
    if isinstance(tree, Tensor):
        if new.data_ptr() != tree[lo:hi].data_ptr() or new.shape != tree[lo:hi].shape:
            tree[lo:hi] = new
        return tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            tree[k] = put(v, lo, hi, new[k])
        return tree
    if isinstance(tree, (tuple, list)):
        return type(tree)(put(v, lo, hi, n) for v, n in zip(tree, new, strict=True))
    if new is not tree and new != tree:
        raise ValueError(f"a worker-side state leaf without a worker axis changed from {tree!r} to {new!r} in one "
                         "chunk of workers: keep per-worker counters in tensors with the worker axis")
    return tree
