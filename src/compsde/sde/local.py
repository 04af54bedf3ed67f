"""The SDE of a local method (Local SGD, Local AdamW): every worker's own SDE between averagings, and the
averaging as a jump at the boundaries the method's own synchronisation schedule picks (docs/theory.md §5.4).

Between two averagings worker k steps its own iterate with its own gradients, x_k ← x_k − η T_w(g_k(x_k)),
and nothing is exchanged, so the K workers are K independent single-node optimizers, each on its own
objective f_k with its own noise. By the first-order recipe (§2.1) applied to each, the state

    Z = (x̄, Z_1, …, Z_K),    Z_k = x_k (Local SGD)  or  (x_k, m_k, v_k, ι₁, ι₂) (Local AdamW, §9.3)

follows, between averagings,

    dx̄ = 0,    dZ_k = −b_k(Z_k) dt + sqrt(η) σ_k(Z_k) dW_k,   W_1, …, W_K independent,

with b_k, σ_k worker k's single-node SDE on its own oracle (``compsde.sde.models``: the DSGD SDE with one
worker, drift ∇f_k(x_k) and diffusion Σ_k(x_k)^{1/2} with Σ_k = σ_k² v/B I (+ F_kᵀF_k on a network), the
batch convention of §2.4; the AdamW SDE with one worker for Local AdamW). x̄ is the last averaged point, the
iterate the simulator measures. The noise is block-diagonal: worker k's block of the state is driven by its
own noise coordinates only (``noise_type`` "block-diagonal"; inside a block, the worker's model's own type).

At the end of a step the schedule (``compsde.algorithms.sync.SyncSchedule``, the same state machine the
simulator advances, with the same η_k and the same cap) may end a period; then the event ``Averaging``
applies the algorithm's own averaging round to the paths: the deltas x̄ − x_k go through the compressor
(drawn per path from the solve's generator) and error feedback (``Algorithm.compress``), are summed in worker
order by the simulator's in-process exchange, which records the round on the solve's ``CommLog``, and the outer
step x̄ ← x̄ − η_out T_s(mean) (``Algorithm.outer_step``) restarts every worker from the new x̄; with
``average_state`` the inner optimizer's state (m_k, v_k) is averaged too, as the simulator does. Given the
same states and draws the jump is the simulator's to the bit: it is the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from compsde.algorithms import Algorithm
from compsde.algorithms.sync import SyncSchedule
from compsde.core.checks import check_int, describe
from compsde.objectives.oracle import GradientOracle
from compsde.sde.events import Event
from compsde.sde.models import AdaptiveSDE, SDEModel, StepArgs

if TYPE_CHECKING:
    from compsde.algorithms.schedules import Schedule
    from compsde.sim.exchange import CommLog

__all__ = ["Averaging", "LocalSDE", "WorkerOracle", "inner_algorithm"]


class WorkerOracle(GradientOracle):
    """Worker ``index`` of ``parent`` alone: a one-worker oracle with that worker's objective f_i and noise law
    (its exact gradients, isotropic variance and, on a network, the noise factors of its shard), so that a
    single-node SDE model built on it is worker i's own SDE."""

    def __init__(self, parent: GradientOracle, index: int) -> None:
        if not isinstance(parent, GradientOracle):
            raise ValueError(f"parent must be a compsde GradientOracle, got {describe(parent)}")
        self.parent = parent
        self.index = check_int("index (worker)", index, min=0, max=parent.workers - 1)
        self.workers, self.batch, self.noise = 1, parent.batch, parent.noise
        self.dim, self.dtype, self.device = parent.dim, parent.dtype, parent.device
        self.scales = None if parent.scales is None else parent.scales[index: index + 1]
        self.problem = parent.problem
        self.noise_rank = parent.noise_rank

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> WorkerOracle:
        return WorkerOracle(self.parent.to(dtype, device), self.index)

    def x0(self) -> Tensor:
        return self.parent.x0()

    def loss(self, x: Tensor) -> Tensor:
        return self.parent.loss(x)

    def _range(self, lo: int, hi: int | None) -> tuple[int, int]:
        hi = 1 if hi is None else hi
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"a one-worker oracle has worker 0 only: got lo = {lo}, hi = {hi}")
        return self.index + lo, self.index + hi

    def grad(self, x: Tensor) -> Tensor:
        """∇f_i(x): this worker's objective is the whole objective of the one-worker oracle."""
        return self.mean_grads(x)[0]

    def mean_grads(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        return self.parent.mean_grads(x, *self._range(lo, hi))

    def noise_variances(self) -> Tensor:
        return self.parent.noise_variances()[self.index: self.index + 1]

    def noise_factors(self, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor | None:
        return self.parent.noise_factors(x, *self._range(lo, hi))


def inner_algorithm(algorithm: Algorithm) -> Algorithm:
    """The single-node optimizer each worker of a local method runs between averagings, as the algorithm
    whose SDE (``from_algorithm`` on one worker's oracle) is that worker's: SGD (``dsgd``) for a plain inner
    step, AdamW with the inner transform's β₁, β₂, ε and decoupled λ for Local AdamW. ValueError for an inner
    step with other state (momentum): the library has no SDE for it."""
    from compsde import algorithms

    w = algorithm.worker
    names = w.names
    if names == ():
        return algorithms.make("dsgd")
    parts = w.parts or (w,)
    if names in (("adam",), ("adam", "weight_decay")):
        p = parts[0].params
        decay = parts[1].params["weight_decay"] if len(parts) > 1 else 0.0
        return algorithms.make("adamw", beta1=p["b1"], beta2=p["b2"], eps=p["eps"], weight_decay=decay)
    raise ValueError(f"{algorithm.label()} has no SDE here: its inner step ({w.describe()}) is not plain SGD or "
                     "AdamW; the local methods' SDE (docs/theory.md §5.4) takes each worker's single-node SDE, and "
                     "the library has none for SGD with a momentum buffer or weight decay (§2.9)")


class LocalSDE(SDEModel):
    """A local method's SDE: the state (x̄, Z_1, …, Z_K) of the last averaged point and every worker's own
    single-node SDE state (module doc), with the averaging as the event ``Averaging``.

    Worker k's block evaluates ``inner[k]``, the single-node model (``from_algorithm`` of ``inner_algorithm``)
    on worker k's oracle (``WorkerOracle``), with the noise coordinates ``k·n_w … (k+1)·n_w − 1``; x̄ has no
    drift or diffusion."""

    noise_type = "block-diagonal"

    @classmethod
    def applies(cls, algorithm: Algorithm) -> bool:
        return algorithm.local

    def __init__(self, oracle: GradientOracle, algorithm: Algorithm, eta: float) -> None:
        from compsde.sde.models import from_algorithm

        super().__init__(oracle, algorithm, eta)
        if not algorithm.local:
            raise ValueError(f"LocalSDE models a local method (local-sgd, local-adamw), got {algorithm.label()}")
        inner = inner_algorithm(algorithm)
        self.inner = [from_algorithm(WorkerOracle(oracle, i), inner, eta) for i in range(self.workers)]
        first = self.inner[0]
        self.block, self.block_noise = first.state_dim, first.noise_dim
        self.state_dim = self.dim + self.workers * self.block
        self.noise_dim = self.workers * self.block_noise
        if all(m.noise_type == "none" for m in self.inner):
            self.noise_type = "none"
        sync = algorithm.sync
        assert sync is not None  # a local method
        self.description = (f"{algorithm.name} SDE (state (x̄, worker states), {self.workers} worker(s)): each "
                            f"worker's own SDE between averagings [{first.description}], independent noises; "
                            f"the averaging ({sync.describe()}) as a jump")

    # ---- the state ----------------------------------------------------------------------------------
    def blocks(self, z: Tensor) -> Tensor:
        """The workers' states of z (M, state_dim) as a view (K, M, block)."""
        return z[:, self.dim:].unflatten(1, (self.workers, self.block)).transpose(0, 1)

    def worker_params(self, z: Tensor) -> Tensor:
        """The workers' iterates x_k of z, a view (K, M, d)."""
        return self.blocks(z)[..., : self.dim]

    def initial(self, x0: Tensor) -> Tensor:
        parts = [x0] + [m.initial(x0) for m in self.inner]
        return torch.cat(parts, 1)

    def state_parts(self, z: Tensor) -> dict[str, Tensor]:
        parts = {"params": z[:, : self.dim], "local": self.worker_params(z)}
        if self.block > self.dim:
            parts["rest"] = self.blocks(z)[..., self.dim:]
        return parts

    def averaged_state(self) -> list[slice]:
        """The coordinates of a worker's block that ``average_state`` averages, in the order of the inner
        optimizer's floating state (Adam: m, then v; none for SGD); its step count (ι) is the same on every
        worker and is not averaged, as in the simulator."""
        first, d = self.inner[0], self.dim
        if isinstance(first, AdaptiveSDE):
            return [slice(d, 2 * d), slice(2 * d, 3 * d)] if first.adam else [slice(d, 2 * d)]
        return []

    def evaluate(self, t: float, z: Tensor, xi: Tensor, args: StepArgs) -> tuple[Tensor, Tensor]:
        drift, noise = self.output_buffers(z, zero_drift=True)  # x̄'s columns stay 0
        blocks, out_m, out_s = self.blocks(z), self.blocks(drift), self.blocks(noise)
        nw = self.block_noise
        for k, model in enumerate(self.inner):
            m, s_xi = model.evaluate(t, blocks[k].contiguous(), xi[:, k * nw: (k + 1) * nw], args)
            out_m[k].copy_(m)
            out_s[k].copy_(s_xi)
        return drift, noise

    def path_bytes(self, itemsize: int) -> float:
        return float(itemsize) * (6 * self.state_dim + 2 * self.noise_dim)

    def events(self, log: CommLog, rows: int, dtype: torch.dtype, schedule: Schedule | None = None) -> list[Event]:
        """The averaging event (``Averaging``): the method communicates at its averagings only."""
        if schedule is None:
            raise ValueError(f"the SDE of {self.algorithm.label()} needs the run's learning-rate schedule for its "
                             "averaging times (the synchronisation schedule decides H from the step and η_k): pass "
                             "schedule=")
        return [Averaging(self, log, rows, dtype, schedule)]


class Averaging(Event):
    """A local method's averaging round on the SDE's paths (module doc): at boundary k (after step k − 1) the
    synchronisation schedule is advanced as the simulator advances it (``SyncSchedule.begin`` with η_{k−1} and
    the run's length); when the step ends a period, the deltas x̄ − x_k are compressed (draws per path from the
    solve's generator; error feedback's memory and the server's state kept here, per path), summed and
    recorded as one round by an ``InProcessExchange`` writing on ``log``, and ``Algorithm.outer_step`` gives
    the new x̄ every worker restarts from (``average_state``: the inner state averaged too, its bits and bytes
    counted, no new round). ``period`` is the H in force."""

    def __init__(self, model: LocalSDE, log: CommLog, rows: int, dtype: torch.dtype, schedule: Schedule) -> None:
        from compsde.sim.exchange import InProcessExchange

        self.model, self.algorithm, self.schedule = model, model.algorithm, schedule
        sync = self.algorithm.sync
        assert sync is not None  # a local method
        self.sync = sync
        self.exchange = InProcessExchange(self.algorithm, rows, model.dim, dtype)
        self.exchange.log = log
        self.state = SyncSchedule.init_state()
        if schedule.steps > 0:  # the period the run starts with, decided at step 0 (as the simulator does)
            self.state = sync.begin(self.state, 0, schedule(0), schedule.steps)[0]
        self.ef: Any = None
        self.server: Any = None
        self.started = False

    @property
    def period(self) -> int:
        return int(self.state["period"])

    def __call__(self, k: int, z: Tensor, args: StepArgs) -> Tensor:
        step = k - 1
        self.state, averaging = self.sync.begin(self.state, step, self.schedule(step), self.schedule.steps)
        if averaging:
            self.average(z, args.generator)
            self.state = SyncSchedule.end_round(self.state)
        return z

    def average(self, z: Tensor, generator: torch.Generator | None,
                draw: Callable[[int], Tensor | None] | None = None) -> Tensor:
        """One averaging round on the states z (M, state_dim), in place (and returned). The compressor's
        draws come from ``generator`` (one per worker and path, or one per path with shared randomness), or
        from ``draw(n)`` when given (n draws of the simulator's layout (n, M, ·): to replay its numbers)."""
        model, algo = self.model, self.algorithm
        n, d, rows = model.workers, model.dim, z.shape[0]
        xbar = z[:, :d]
        local = model.worker_params(z).clone()  # (K, M, d)
        if not self.started:
            self.ef = algo.sending.init(local)
            self.server = algo.server.init(xbar)
            self.started = True
        comp = algo.compressor
        rnd = None
        if comp.randomized:
            count = 1 if comp.shared_randomness else n
            if draw is not None:
                rnd = draw(count)
            else:
                if generator is None:
                    raise ValueError(f"the averaging of {algo.label()} draws its compressor's randomness: the solve "
                                     "must hand the event a generator")
                rnd = comp.draw((count, rows), d, generator, z.dtype)
            if rnd is not None:
                rnd = rnd.to(z.device)
        out = algo.compress(xbar - local, self.ef, 1.0, rnd)
        self.ef = out.state["ef"]
        ex = self.exchange
        ex.put(out, range(n), rnd)
        st = algo.outer_step(ex.total(lambda j: None), n, {"params": xbar.clone(), "server": self.server,
                                                           "local": local})
        self.server = st["server"]
        xbar.copy_(st["params"])
        model.worker_params(z).copy_(st["local"])
        if algo.average_state:
            blocks = model.blocks(z)
            for part in model.averaged_state():
                stacked = blocks[..., part]
                stacked.copy_(ex.mean(stacked.clone(), n).expand_as(stacked))
        return z
