"""A distributed algorithm: worker transforms → compression (directly or through error feedback) →
exchange → aggregate → server transforms → step. One step, whatever carries the messages.

With N workers holding stochastic gradients g_i and learning rate η_k, one step is

    u_i = T_w(g_i)                          worker transform (identity, momentum, weight decay, …)
    v_i = u_i            or  e_i + η_k u_i  (error feedback: the worker compresses its step plus what
                                             compression dropped before, e_i ← v_i − C_i(v_i))
    m_i = C_i(v_i)                          compression: the payload of v_i travels, m_i is decoded
                                            (``compsde.algorithms.feedback``: ``Direct`` or ``ErrorFeedback``)
    s   = m_0 + m_1 + … + m_{N−1}           the exchange: sum of the decoded messages, in worker order
    a   = s / N  or  sign(s)                aggregation: mean, or majority vote
    d   = T_s(a)                            server transform (identity, normalize, momentum, …)
    x  ← x − η_k d   or  x − d              (error feedback: η_k is already inside the messages)

``Algorithm.workers_step`` is the workers' half (for any stack of workers: all N in the simulator,
one in a process of a distributed run, one gradient bucket in the DDP hook) and ``direction`` /
``apply_update`` the server's half; the simulator, the torch.distributed worker and the DDP hook call
these and differ only in the exchange (an in-process sum over the stacked workers, or collectives of
payloads) and in where gradients come from (``compsde.objectives``). State is plain data
(``init``): the iterate, the workers' transform states and error-feedback memories (leading worker
axis), the server's transform state — all of it checkpointed.

Local methods (``sync`` set: Local SGD, Local AdamW; Stich 2019, Lin et al. 2020, Gu et al. 2024):
each worker steps its own iterate x_i with the worker transform as its inner optimizer,
x_i ← x_i − η_k T_w(g_i(x_i)), with no communication; when the synchronisation schedule
(``compsde.algorithms.sync``) ends a period, the deltas Δ_i = x̄ − x_i from the last averaged point x̄
go through the same compression (and error feedback) and exchange as gradients do, and the outer step
x̄ ← x̄ − η_out T_s(mean Δ_i) (plain averaging: η_out = 1, T_s = identity; DiLoCo: Nesterov momentum)
gives the new x̄ every worker restarts from. The state then holds x̄ (``params``), the workers' x_i
(``local``, leading worker axis) and the schedule's counters (``sync``).

Recipes (``compsde.algorithms.make``): ``dsgd`` (identity compressor), ``dcsgd`` (any compressor),
``dsignsgd`` (sign, mean), ``dsignsgd-majority`` (sign, majority vote), ``ef`` (error feedback
around any compressor; Karimireddy et al. 2019, Stich & Karimireddy 2019). Each takes worker- and
server-side momentum, Nesterov momentum and decoupled weight decay, and ``normalize`` (the step
η_k d/‖d‖, for (L0, L1)-smooth problems; Zhang et al. 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import torch
from torch import Tensor

from compsde.algorithms.aggregation import AGGREGATIONS, aggregate_sum
from compsde.algorithms.feedback import Direct, ErrorFeedback
from compsde.algorithms.optimizer import Optimizer
from compsde.algorithms.sync import SyncSchedule
from compsde.compressors import Compressor, Payload
from compsde.core.checks import check_bool, check_choice, check_number
from compsde.core.streams import Streams
from compsde.optim import Transform, identity

__all__ = ["Algorithm", "WorkersOut"]


class WorkersOut(NamedTuple):
    """What the workers' half of a step produced for a stack of n workers."""

    inputs: Tensor  # v_i, what each worker compressed, (n, ..., d)
    messages: Tensor | None  # m_i = C_i(v_i), decoded, (n, ..., d); None when not asked for
    payload: Payload | None  # the encoded messages (when asked for: they travel)
    state: dict[str, Any]  # the workers' new state {"worker", "ef"}


@dataclass(frozen=True)
class Algorithm:
    """A configured distributed algorithm (see module doc). Build one with ``compsde.algorithms.make``."""

    name: str
    compressor: Compressor
    aggregation: str = "mean"
    error_feedback: bool = False
    worker: Transform = field(default_factory=identity)
    server: Transform = field(default_factory=identity)
    #: local methods: the synchronisation schedule, and the outer learning rate η_out
    sync: SyncSchedule | None = None
    outer_lr: float = 1.0
    #: local methods: also average the inner optimizer's state (momentum, Adam's moments) at each round
    average_state: bool = False
    #: the named optimizer's recipe (``compsde.optimizers``): its probe, plain form and SDE; None for the
    #: distributed methods, whose SDEs follow from their structure
    optimizer: Optimizer | None = None
    #: the optimizer's hyperparameters by name (``Optimizer.hypers``), for labels and SDE models; the
    #: transforms hold the same values, and ``rho`` is a probe's radius
    hyper: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.compressor, Compressor):
            raise ValueError(f"compressor must be a Compressor (compsde.compressors.make(...)), got {self.compressor!r}")
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_bool("error_feedback", self.error_feedback)
        for side in ("worker", "server"):
            if not isinstance(getattr(self, side), Transform):
                raise ValueError(f"{side} must be a compsde.optim.Transform, got {getattr(self, side)!r}")
        if self.error_feedback and "normalize" in self.server.names:
            raise ValueError("normalize is not defined with error feedback (the step size is inside the compressed messages)")
        if self.sync is not None and not isinstance(self.sync, SyncSchedule):
            raise ValueError(f"sync must be a compsde SyncSchedule, got {self.sync!r}")
        if self.sync is not None and self.aggregation != "mean":
            raise ValueError("a local method averages its workers' parameters: aggregation must be 'mean'")
        check_number("outer_lr", self.outer_lr, min=0.0, min_open=True)
        if self.sync is None and (self.outer_lr != 1.0 or self.average_state):
            raise ValueError("outer_lr and average_state apply to local methods (local-sgd, local-adamw) only")
        check_bool("average_state", self.average_state)
        if self.optimizer is not None:
            if not isinstance(self.optimizer, Optimizer):
                raise ValueError(f"optimizer must be a compsde.algorithms.Optimizer, got {self.optimizer!r}")
            if self.name != self.optimizer.name:
                raise ValueError(f"algorithm {self.name!r} was given the recipe of {self.optimizer.name!r}")
            if self.local and self.optimizer.probes():
                raise ValueError(f"{self.optimizer.name!r} probes: it is not defined for a local method")
            # the names and ranges of the hyperparameters, completed with the recipe's defaults
            full = self.optimizer.hyper(self.hyper)
            object.__setattr__(self, "hyper", {k: v for k, v in full.items() if v is not None})
        elif self.hyper:
            raise ValueError(f"hyper {self.hyper!r} needs the optimizer that takes it (optimizer=...)")

    # ---- properties ---------------------------------------------------------------------------
    @cached_property
    def sending(self) -> Direct | ErrorFeedback:
        """How the workers' vectors become messages: directly, or through error feedback (``feedback``)."""
        return ErrorFeedback(self.compressor) if self.error_feedback else Direct(self.compressor)

    @property
    def probe(self) -> str | None:
        """The optimizer's name when its step evaluates the gradient more than once (SAM, SEG, …), else None."""
        return self.optimizer.name if self.optimizer is not None and self.optimizer.probes() else None

    @property
    def rho(self) -> float | None:
        """The probe's radius ρ (None for SEG without one: it then probes with η_k)."""
        return self.hyper.get("rho")

    @property
    def local(self) -> bool:
        """Workers step their own iterates and average them per the ``sync`` schedule."""
        return self.sync is not None

    @property
    def memoryless(self) -> bool:
        """The step depends on the current iterate only (no error feedback, no transform state)."""
        return not (self.error_feedback or self.worker.stateful or self.server.stateful or self.local)

    @property
    def single_evaluation(self) -> bool:
        """One gradient evaluation per step, at the iterate (no probe, ``evaluate`` not overridden)."""
        return self.probe is None and type(self).evaluate is Algorithm.evaluate

    @property
    def plain(self) -> bool:
        """No transforms, no error feedback, no local steps: g_i → C_i(g_i) → aggregate → η_k · aggregate."""
        return not (self.error_feedback or self.worker.names or self.server.names or self.local or self.probe)

    def bits(self, d: int) -> int:
        """Bits one worker sends per communication for a vector of length d (uplink)."""
        return self.compressor.bits(d)

    def label(self) -> str:
        out = f"{self.name}[{self.compressor!r}]"
        if self.hyper:
            out += "(" + ", ".join(f"{k}={v:g}" for k, v in self.hyper.items()) + ")"
        if self.worker.names:
            out += f" worker: {self.worker.describe()}"
        if self.server.names:
            out += f" server: {self.server.describe()}"
        if self.sync is not None:
            out += f" sync: {self.sync.describe()}" + (f", outer lr {self.outer_lr:g}" if self.outer_lr != 1.0 else "")
        return out

    # ---- state --------------------------------------------------------------------------------
    def init(self, params: Tensor, workers: int) -> dict[str, Any]:
        """The state at the iterate ``params`` (R, d) for a stack of ``workers`` workers held here."""
        stacked = params.expand(workers, *params.shape)
        state = {"params": params.clone(), "worker": self.worker.init(stacked), "ef": self.sending.init(stacked),
                 "server": self.server.init(params)}
        if self.local:
            state["local"] = stacked.clone()
            state["sync"] = SyncSchedule.init_state()  # the step of the next averaging (None: to decide), H
        return state

    # ---- the step -----------------------------------------------------------------------------
    def draw(self, streams: Streams, workers: Sequence[int], rows: int, d: int, dtype: torch.dtype) -> Tensor | None:
        """The compressor's random draws of one step for ``workers`` (n, rows, ·), each from its own
        stream; a compressor with shared randomness gets one draw (1, rows, ·) from the shared stream
        (call it once per step)."""
        c = self.compressor
        if not c.randomized:
            return None
        if c.shared_randomness:
            return c.draw((1, rows), d, streams.shared, dtype)

        def one(g: torch.Generator) -> Tensor:
            r = c.draw((1, rows), d, g, dtype)
            assert r is not None  # a randomized compressor draws
            return r[0]

        return streams.draw("compressor", workers, one)

    def evaluate(self, grad: Callable[[Tensor], Tensor], params: Tensor, lr: float = 0.0) -> Tensor:
        """The workers' gradients for this step from ``grad`` (params (R, d) shared or (n, R, d) one
        point per worker → (n, R, d), every call with this step's sample: the same noise or minibatch):
        one evaluation at the iterate, or the probe's (module doc; ``lr`` is η_k, SEG's default radius)."""
        g = grad(params)
        if self.optimizer is None or self.optimizer.evaluate is None:
            return g
        return self.optimizer.evaluate(grad, params, g, lr, self.hyper)

    def workers_step(self, grads: Tensor | Callable[[Tensor], Tensor], state: dict[str, Any], params: Tensor | None,
                     lr: float, rnd: Tensor | None, *, encode: bool = False, messages: bool = True,
                     reuse_memory: bool = False) -> WorkersOut:
        """The workers' half for a stack of workers.

        Args:
            grads: their stochastic gradients g_i, (n, ..., d), or the function that evaluates them at
                given parameters with this step's sample (then ``evaluate`` decides where).
            state: their slice of the state, ``{"worker": ..., "ef": ...}``.
            params: the iterate x (for transforms that use it, e.g. weight decay).
            lr: η_k (used here only with error feedback).
            rnd: the compressor's draws for these workers (``draw``), leading axis n or 1.
            encode: also return the payload (what travels on a real network).
            messages: also return the decoded messages (always without ``encode``, and always with error
                feedback, which needs them; a sender that only ships its payload skips the decode).
            reuse_memory: the error-feedback memory in ``state`` may be overwritten (``ErrorFeedback``).
        """
        if callable(grads):
            if params is None:
                raise ValueError("evaluating gradients needs the parameters")
            grads = self.evaluate(grads, params, lr)
        u, wstate = self.worker.update(grads, state["worker"], params)
        return self.compress(u, state["ef"], lr, rnd, encode=encode, messages=messages, worker_state=wstate,
                             reuse_memory=reuse_memory)

    def compress(self, u: Tensor, ef: Tensor | None, lr: float, rnd: Tensor | None, *, encode: bool = False,
                 messages: bool = True, worker_state: Any = None, reuse_memory: bool = False) -> WorkersOut:
        """Compression of the vectors u (n, ..., d) the workers send — their transformed gradients η-free
        (``workers_step``), or a local method's parameter deltas (with lr = 1) — by ``sending``, with the
        error-feedback memory ``ef`` of these workers when it has one."""
        out = self.sending(u, ef, lr, rnd, encode=encode, messages=messages, reuse_memory=reuse_memory)
        return WorkersOut(out.inputs, out.messages, out.payload, {"worker": worker_state, "ef": out.memory})

    # ---- local methods ------------------------------------------------------------------------
    def local_step(self, grads: Tensor, worker_state: Any, local: Tensor, lr: float) -> tuple[Tensor, Any]:
        """One inner step of a local method for a stack of workers: x_i ← x_i − η T_w(g_i), no communication."""
        u, wstate = self.worker.update(grads, worker_state, local)
        return local - lr * u, wstate

    def outer_step(self, total: Tensor, workers: int, state: dict[str, Any]) -> dict[str, Any]:
        """The averaging round's server half: x̄ ← x̄ − η_out T_s(Σ_i m_i / N) from the sum of the N
        compressed deltas; the held workers restart from the new x̄."""
        d, sstate = self.server.update(aggregate_sum(total, workers, "mean"), state["server"], state["params"])
        params = state["params"] - self.outer_lr * d
        local = state["local"]
        local.copy_(params.expand_as(local))
        return {**state, "params": params, "server": sstate, "local": local}

    def direction(self, total: Tensor, workers: int, server_state: Any, params: Tensor | None) -> tuple[Tensor, Any]:
        """The server's direction d = T_s(aggregate(Σ_i m_i)) from the sum of all N messages (``total``
        is consumed: the aggregate is computed in its memory)."""
        return self.server.update(aggregate_sum(total, workers, self.aggregation), server_state, params)

    def apply_update(self, params: Tensor, direction: Tensor, lr: float) -> Tensor:
        """x ← x − η_k d (x − d with error feedback, whose messages already hold η_k)."""
        return params - (direction if self.sending.carries_lr else lr * direction)

    def server_step(self, total: Tensor, workers: int, state: dict[str, Any], lr: float) -> dict[str, Any]:
        """The server's half: ``state`` with the new iterate and server state."""
        d, sstate = self.direction(total, workers, state["server"], state["params"])
        return {**state, "params": self.apply_update(state["params"], d, lr), "server": sstate}

    def unit_update(self, grads: Tensor | Callable[[Tensor], Tensor], rnd: Tensor | None, *, workers: int | None = None,
                    params: Tensor | None = None, lr: float = 0.0) -> Tensor:
        """The update per unit step size, U = (x_k − x_{k+1})/η, of a memoryless algorithm for
        independent samples of all N workers' gradients ``grads`` (N, ..., d) — or, for a probe step,
        the function evaluating them with the samples at ``params`` (``workers`` = N, ``lr`` = η);
        used by Monte Carlo SDE models. The messages are summed in worker order, as in every exchange."""
        if not self.memoryless:
            raise ValueError(f"{self.label()} carries state from step to step: its update is not a function of x alone")
        from compsde.algorithms.aggregation import sum_messages

        n = grads.shape[0] if isinstance(grads, Tensor) else workers
        if n is None:
            raise ValueError("unit_update with a gradient function needs workers = N")
        out = self.workers_step(grads, {"worker": None, "ef": None}, params, lr, rnd)
        assert out.messages is not None  # messages=True
        d, _ = self.direction(sum_messages(out.messages), n, None, None)
        return 1.0 * d
