"""How the server turns the N workers' messages m_i into one direction.

The messages are summed in worker order, m_0 + m_1 + … + m_{N−1} (``compsde.core.tensors.accumulate``),
wherever they are summed — the simulator over its stack of workers, a distributed receiver as it decodes each
rank's payload — so both give the same bits. The direction is a function of that sum:

* ``mean``:     (1/N) Σ_i m_i — DSGD, DCSGD, DSignSGD (mean of signs), error feedback.
* ``majority``: sign(Σ_i m_i) — majority vote over the workers' signs (Bernstein et al., 2019);
  a tie (possible for even N) gives 0 for that coordinate, i.e. no move.
"""

from __future__ import annotations

from torch import Tensor

from compsde.core.checks import check_choice
from compsde.core.tensors import accumulate

__all__ = ["AGGREGATIONS", "Aggregate", "aggregate_sum", "sum_messages"]

AGGREGATIONS = ("mean", "majority")


def sum_messages(messages: Tensor, total: Tensor | None = None) -> Tensor:
    """Σ_i m_i of a stack (n, ..., d) of messages, added to ``total`` (if given) in worker order."""
    for j in range(messages.shape[0]):
        total = accumulate(total, messages[j])
    if total is None:
        raise ValueError("sum_messages needs at least one message")
    return total


def aggregate_sum(total: Tensor, workers: int, how: str = "mean") -> Tensor:
    """The aggregate of the N = ``workers`` messages from their sum Σ_i m_i, computed in place: the sum
    is consumed (an exchange's d-length buffer is reused, not copied: at d = 10⁷ a fresh tensor costs
    more in page faults than the arithmetic)."""
    check_choice("aggregation", how, AGGREGATIONS)
    if how == "mean":
        # x · (1/N) equals x / N exactly when N is a power of two, and a multiply is cheaper.
        return total.mul_(1.0 / workers) if workers & (workers - 1) == 0 else total.div_(workers)
    return total.sign_()


class Aggregate:
    """``aggregate_sum(·, workers, how)`` as an elementwise in-place function of the sum (what a decoder
    applies as its ``finish``), with ``scale``: the factor 2^−m when the aggregate is the mean over
    N = 2^m workers (then it is exactly the product with ``scale``, which a decoder may fold into the
    values it sums where that gives the same bits), else None."""

    def __init__(self, workers: int, how: str = "mean") -> None:
        check_choice("aggregation", how, AGGREGATIONS)
        self.workers, self.how = workers, how
        self.scale = 1.0 / workers if how == "mean" and workers & (workers - 1) == 0 else None

    def __call__(self, total: Tensor) -> Tensor:
        return aggregate_sum(total, self.workers, self.how)
