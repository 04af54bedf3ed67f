"""How the server turns the N workers' messages m_i (stacked on dimension 0) into one update.

* ``mean``:     (1/N) Σ_i m_i — DSGD, DCSGD, DSignSGD (mean of signs), error feedback.
* ``majority``: sign(Σ_i m_i) — majority vote over the workers' signs (Bernstein et al., 2019);
  a tie (possible for even N) gives 0 for that coordinate, i.e. no move.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("mean", "majority")


def aggregate(messages: Tensor, how: str = "mean") -> Tensor:
    """Aggregate messages of shape (N, ..., d) over the workers into shape (..., d)."""
    if how == "mean":
        return messages.mean(0)
    if how == "majority":
        return torch.sign(messages.sum(0))
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


def aggregate_sum(total: Tensor, workers: int, how: str = "mean") -> Tensor:
    """The same aggregate from the sum Σ_i m_i of the N = ``workers`` messages (both rules are
    functions of it), for callers that accumulate the sum over chunks of workers."""
    if how == "mean":
        return total / workers
    if how == "majority":
        return torch.sign(total)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
