"""Local SGD / Local AdamW for your own training loop: periodic parameter averaging around any optimizer.

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    local = LocalSGD(opt, SyncSchedule("qsr", period=4, alpha=0.0175), total_steps=10_000)
    for batch in data:
        loss(model, batch).backward()
        averaged = local.step()       # the optimizer's step, then an averaging when the schedule says
        opt.zero_grad()
        scheduler.step()

Each rank steps its own replica; when the current period H has elapsed, the parameters (and, with
``average_state=True``, the optimizer's floating-point state such as Adam's moments) are averaged over
the process group by one all-reduce of a flat buffer. H is decided right after each averaging, and
at the start, from the learning rate of the next step (``optimizer.param_groups[0]["lr"]`` when that
step begins, so a learning-rate scheduler stepped after ``step()`` is seen) and the steps remaining
(``compsde.algorithms.sync``: every step, constant, post-local, QSR). The counters — steps, the next
averaging, H, rounds, bytes — are in ``state_dict``, so a resumed run averages at the same steps. At
construction every rank checks that all ranks hold the same schedule and total steps (all-gathered),
and refuses to start otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from compsde.algorithms.sync import SyncSchedule
from compsde.core.checks import check_bool, check_int, describe

__all__ = ["LocalSGD"]


class LocalSGD:
    """Periodic averaging of ``optimizer``'s parameters over ``group`` (see module doc).

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        sync: the ``SyncSchedule``.
        total_steps: the run's length (caps the last period so the run ends averaged); None: no cap.
        group: the process group (default: the whole world).
        average_state: also average the optimizer's floating-point state tensors (off, as in the QSR code).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, sync: SyncSchedule, *, total_steps: int | None = None,
                 group: dist.ProcessGroup | None = None, average_state: bool = False) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {describe(optimizer)}")
        if not isinstance(sync, SyncSchedule):
            raise ValueError(f"sync must be a compsde SyncSchedule, got {describe(sync)}")
        if total_steps is not None:
            check_int("total_steps", total_steps, min=1)
        check_bool("average_state", average_state)
        if not dist.is_initialized():
            raise RuntimeError("LocalSGD needs an initialised process group (dist.init_process_group)")
        self.optimizer, self.sync, self.total_steps = optimizer, sync, total_steps
        self.group, self.average_state = group, average_state
        self.world = dist.get_world_size(group)
        self.steps = 0  # optimizer steps taken
        self.next_sync: int | None = None  # the step count at which the next averaging happens (None: decide)
        self.period = 0  # the H in force
        self.rounds = 0  # averagings so far
        self.bytes = 0  # bytes this rank handed to the all-reduce
        self._agree()

    def _agree(self) -> None:
        """Every rank must run the same schedule for the same length: compare them all."""
        mine = (repr(self.sync), self.total_steps, self.average_state)
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, mine, group=self.group)
        if any(o != mine for o in every):
            raise ValueError(f"ranks disagree on the synchronisation schedule: {every} (each rank's sync, total_steps, "
                             "average_state); every rank must pass the same")

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, closure: Callable[[], Any] | None = None) -> bool:
        """The optimizer's step, then an averaging if the period has elapsed; True when this step averaged."""
        if self.next_sync is None:
            remaining = None if self.total_steps is None else self.total_steps - self.steps
            self.period = self.sync.next_period(self.steps, self._lr(), remaining)
            self.next_sync = self.steps + self.period
        self.optimizer.step(closure)
        self.steps += 1
        if self.steps < self.next_sync:
            return False
        self.average()
        self.next_sync = None
        return True

    @torch.no_grad()
    def average(self) -> None:
        """Average the parameters (and the optimizer's float state with ``average_state``) over the group now."""
        tensors = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.average_state:
            tensors += [v for st in self.optimizer.state.values() for v in st.values()
                        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0]
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = _flatten_dense_tensors([t.detach() for t in group])
            dist.all_reduce(flat, group=self.group)
            flat /= self.world
            for t, avg in zip(group, _unflatten_dense_tensors(flat, group)):
                t.copy_(avg)
            self.bytes += flat.numel() * flat.element_size()
        self.rounds += 1

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "next_sync": self.next_sync,
                "period": self.period, "rounds": self.rounds, "bytes": self.bytes, "sync": repr(self.sync)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("sync") != repr(self.sync):
            raise ValueError(f"the checkpoint was written with sync {state.get('sync')}, this run has {self.sync!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.next_sync, self.period = int(state["steps"]), state["next_sync"], int(state["period"])
        self.rounds, self.bytes = int(state["rounds"]), int(state["bytes"])
