"""Local SGD / Local AdamW for your own training loop: the library's local method around any optimizer.

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    local = LocalSGD(opt, SyncSchedule("qsr", period=4, alpha=0.0175), total_steps=10_000)
    for batch in data:
        loss(model, batch).backward()
        averaged = local.step()       # the optimizer's step, then an averaging round when the schedule says
        opt.zero_grad()
        scheduler.step()

A thin driver over the same ``Algorithm`` (``compsde.algorithms.make("local-sgd", ...)``) that the simulator
and the torch.distributed worker run: your optimizer is the inner optimizer on this rank's replica; when the
synchronisation schedule ends a period (``SyncSchedule.begin``, the one state machine), the round is the
algorithm's — each rank's delta Δ_i = x̄ − x_i from the last averaged point x̄ goes through the compressor
(``compressor``, with ``error_feedback``), is exchanged through the library's collectives (all-reduce for
summable payloads, all-gather of the wire format otherwise), and the outer step x̄ ← x̄ − η_out T_s(mean Δ_i)
(``outer_lr``, and ``outer``: e.g. DiLoCo's Nesterov momentum ``{"momentum": 0.9, "nesterov": True}``; plain
averaging by default) gives the parameters every rank continues from. With ``average_state=True`` the
optimizer's floating-point state (Adam's moments) is averaged in the same round.

H is decided right after each averaging, and at the start, from the learning rate of the next step
(``optimizer.param_groups[0]["lr"]`` when that step begins, so a scheduler stepped after ``step()`` is seen)
and the steps remaining. The parameters are one flat row of one floating dtype (a model mixing dtypes is
refused); the driver keeps two copies of it (x̄ and the round's buffer) and, with error feedback, the memory. At
construction rank 0's parameters are broadcast (every replica starts from the same x̄, as DDP does) and every
rank checks that all hold the same configuration (refused otherwise). ``state_dict`` holds everything to resume: the algorithm's
state (x̄, error-feedback memory, outer optimizer, schedule), the compressor's random streams, the
communication counters and the optimizer's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from compsde import algorithms
from compsde.algorithms.sync import SyncSchedule
from compsde.compressors import Compressor
from compsde.core.checks import check_bool, check_int, check_seed, describe
from compsde.core.streams import Streams
from compsde.core.trees import tree_map
from compsde.distributed.collectives import CollectiveExchange
from compsde.optim import Transform

__all__ = ["LocalSGD"]


class LocalSGD:
    """A local method over ``group`` around ``optimizer`` (see module doc).

    Args:
        optimizer: any ``torch.optim.Optimizer`` (the inner optimizer).
        sync: the ``SyncSchedule``.
        total_steps: the run's length (caps the last period so the run ends averaged); None: no cap.
        group: the process group (default: the whole world).
        average_state: also average the optimizer's floating-point state tensors (off, as in the QSR code).
        compressor: how the deltas travel (a name or a ``Compressor``; default: identity, plain averaging),
            with its parameters in ``compressor_params`` (``k``, ``ratio``, ``levels``, ``shared``).
        error_feedback: keep what compression dropped and send it with the next round's delta.
        outer: the outer optimizer's transform (a ``compsde.optim.Transform`` or a table of ``momentum``,
            ``nesterov``, ``weight_decay``); None: plain averaging.
        outer_lr: η_out of the outer step.
        seed: the seed of the compressor's random streams (the same on every rank).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, sync: SyncSchedule, *, total_steps: int | None = None,
                 group: dist.ProcessGroup | None = None, average_state: bool = False,
                 compressor: str | Compressor = "identity", error_feedback: bool = False,
                 outer: Transform | Mapping[str, Any] | None = None, outer_lr: float = 1.0, seed: int = 0,
                 **compressor_params: Any) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {describe(optimizer)}")
        if not isinstance(sync, SyncSchedule):
            raise ValueError(f"sync must be a compsde SyncSchedule, got {describe(sync)}")
        if total_steps is not None:
            check_int("total_steps", total_steps, min=1)
        check_bool("average_state", average_state)
        seed = check_seed("seed", seed)
        if not dist.is_initialized():
            raise RuntimeError("LocalSGD needs an initialised process group (dist.init_process_group)")
        self.algorithm = algorithms.make("local-sgd", compressor, sync=sync, error_feedback=error_feedback,
                                         server=outer, outer_lr=outer_lr, average_state=average_state,
                                         **compressor_params)
        self.optimizer, self.sync, self.total_steps, self.group = optimizer, sync, total_steps, group
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(f"LocalSGD averages the parameters as one row of one floating dtype; the optimizer's "
                             f"parameters have dtypes {sorted(map(str, dtypes))}")
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.seed = seed
        self._agree()
        with torch.no_grad():
            for p in self.params:  # one starting point x̄ on every rank
                dist.broadcast(p, dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        flat = self._flat()
        self.d, self.dtype = flat.numel(), flat.dtype
        self.state = self.algorithm.init(flat.view(1, -1), 1)
        self.exchange = CollectiveExchange(self.algorithm, 1, self.d, self.dtype, workers=self.world, rank=self.rank,
                                           group=group, device=flat.device)
        self.streams = Streams(seed, self.world, noise=[],
                               compressor=range(self.world) if self.exchange.replay else [self.rank])
        self.steps = 0  # optimizer steps taken

    # ---- the counters users read ------------------------------------------------------------------
    @property
    def rounds(self) -> int:
        """Averaging rounds so far."""
        return self.exchange.log.rounds

    @property
    def bytes(self) -> float:
        """Bytes this rank handed to the collectives."""
        return self.exchange.log.bytes

    @property
    def period(self) -> int:
        """The H in force."""
        return int(self.state["sync"]["period"])

    def _agree(self) -> None:
        """Every rank must run the same method for the same length: compare them all."""
        a = self.algorithm
        mine = (repr(a.sync), repr(a.compressor), a.error_feedback, a.server.describe(), a.outer_lr, a.average_state,
                self.total_steps, self.seed)
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, mine, group=self.group)
        if any(o != mine for o in every):
            raise ValueError(f"ranks disagree on the local method: {every} (each rank's sync, compressor, error_feedback, "
                             "outer, outer_lr, average_state, total_steps, seed); every rank must pass the same")

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, closure: Callable[[], Any] | None = None) -> bool:
        """The optimizer's step, then an averaging round if the period has ended; True when this step averaged."""
        sync, averaging = self.sync.begin(self.state["sync"], self.steps, self._lr(), self.total_steps)
        self.state["sync"] = sync
        self.optimizer.step(closure)
        self.steps += 1
        if averaging:
            self.average()
        return averaging

    @torch.no_grad()
    def average(self) -> None:
        """One round now: this rank's delta compressed and exchanged, the outer step, the parameters (and with
        ``average_state`` the optimizer's float state) replaced by the round's result."""
        algo, st = self.algorithm, self.state
        local = st["local"]
        local.view(-1).copy_(self._flat())
        rnd = algo.draw(self.streams, [self.rank], 1, self.d, self.dtype)
        out = algo.compress(st["params"] - local, st["ef"], 1.0, rnd, encode=True, messages=False)
        self.exchange.put(out, [self.rank], rnd)
        total = self.exchange.total(lambda j: algo.draw(self.streams, [j], 1, self.d, self.dtype))
        self.state = algo.outer_step(total, self.world, {**st, "ef": out.state["ef"]})
        self.state["sync"] = SyncSchedule.end_round(self.state["sync"])
        new = self.state["local"].view(-1)
        offset = 0
        for p in self.params:
            p.copy_(new[offset: offset + p.numel()].view_as(p))
            offset += p.numel()
        if algo.average_state:  # one all-reduce per dtype of the optimizer's float state
            state = [v for s in self.optimizer.state.values() for v in s.values()
                     if isinstance(v, Tensor) and v.is_floating_point() and v.dim() > 0]
            for dtype in sorted({v.dtype for v in state}, key=str):
                group = [v for v in state if v.dtype == dtype]
                mean = self.exchange.mean(torch.cat([v.reshape(-1) for v in group]).unsqueeze(0), self.world)
                for v, avg in zip(group, mean.split([v.numel() for v in group]), strict=True):
                    v.copy_(avg.view_as(v))

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "algorithm": self.state,
                "streams": self.streams.state(), "comm": self.exchange.log.state_dict(), "method": self.algorithm.label()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.algorithm.label():
            raise ValueError(f"the checkpoint was written with {state.get('method')}, this run has {self.algorithm.label()}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.state = tree_map(lambda t: t.clone(), state["algorithm"])
        self.streams.load_state(state["streams"])
        self.exchange.log.load_state_dict(state["comm"])
