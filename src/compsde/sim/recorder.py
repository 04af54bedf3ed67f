"""What a run records at its logged steps, and the divergence rule.

Divergence: a repetition whose iterate becomes non-finite or whose distance from the start grows
beyond ``DIVERGENCE_FACTOR`` × (1 + ‖x⁰ − x*‖) (checked every step), or whose loss is non-finite at a
logged step (an overflow such as cosh(x) = inf at a finite x), is marked diverged at that step. From
then on it is frozen — its iterate reset to the start, every other state it carries (error-feedback
memory, momentum, ...) to 0 — and reported with loss = +inf, so means exclude it while medians,
quantiles and the diverged fraction count it. A run that diverges is recorded, never a crash, and
never a stream of NaNs.

The same rule runs in the simulator, the SDE integration and on every rank of a distributed run (each
on its replica of the iterate), so all of them freeze the same repetitions at the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from compsde.core.trees import tree_map

__all__ = ["DIVERGENCE_FACTOR", "Recorder", "Trace", "divergence_limit", "logged_steps"]

DIVERGENCE_FACTOR = 1e6


@dataclass
class Trace:
    """Per-repetition measurements at the logged steps of one run.

    ``loss`` is f(x) − f* (+inf once diverged); ``dist`` is ‖x − x*‖ (None if x* unknown); ``bits``,
    ``bytes`` and ``rounds`` the cumulative declared bits, wire bytes (per repetition) and
    communication rounds of each worker; ``compression_error`` the mean over workers and live
    repetitions of ‖C(v) − v‖² / ‖v‖² for the vectors v compressed at that step (NaN at step 0, where
    nothing has been sent yet); ``metrics`` the oracle's further measurements (``evaluate``: held-out
    loss and accuracy of a network), each (T, R), NaN once diverged.
    """

    steps: Tensor  # (T,) long
    loss: Tensor  # (T, R)
    grad_norm: Tensor  # (T, R), NaN once diverged
    dist: Tensor | None  # (T, R), NaN once diverged
    bits: Tensor  # (T,) float64
    bytes: Tensor  # (T,) float64
    rounds: Tensor  # (T,) long
    compression_error: Tensor  # (T,)
    diverged_step: Tensor  # (R,) long, −1 if never
    x: Tensor  # (R, d) final iterates
    metrics: dict[str, Tensor] = field(default_factory=dict)  # name → (T, R)
    sync_period: Tensor | None = None  # (T,) long: the H in force at each logged step (local methods), else None

    def diverged_fraction(self) -> Tensor:
        """Fraction of repetitions diverged at or before each logged step, shape (T,)."""
        d = self.diverged_step
        return ((d >= 0).unsqueeze(0) & (d.unsqueeze(0) <= self.steps.unsqueeze(1))).double().mean(1)


def logged_steps(steps: int, log_every: int) -> list[int]:
    """0, log_every, 2·log_every, …, and always the final step."""
    out = list(range(0, steps + 1, max(1, log_every)))
    if out[-1] != steps:
        out.append(steps)
    return out


def divergence_limit(x0: Tensor, reference: Tensor) -> float:
    """The radius of the ball around x⁰ a repetition may not leave: 10⁶ (1 + ‖x⁰ − x*‖)."""
    return DIVERGENCE_FACTOR * (1.0 + float((x0.double() - reference.double()).norm()))


class Recorder:
    """The logged measurements and the divergence record of one run (``oracle``: loss, gradient and
    distance to the optimum, further metrics; see ``compsde.objectives.GradientOracle``).

    ``keep=False`` applies the divergence rule (loss check included) without keeping the rows: the
    ranks of a distributed run other than the reporting one.
    """

    def __init__(self, oracle: Any, steps: int, log_every: int, repeats: int, x0: Tensor, keep: bool = True) -> None:
        self.oracle, self.keep = oracle, keep
        self.when = logged_steps(steps, log_every)
        self.rows: list[dict[str, Any] | None] = []
        self.x0 = x0
        self.limit = divergence_limit(x0, oracle.reference_point())
        self.alive = torch.ones(repeats, dtype=torch.bool, device=x0.device)
        self.diverged_step = torch.full((repeats,), -1, dtype=torch.long)

    def due(self, k: int) -> bool:
        return len(self.rows) < len(self.when) and self.when[len(self.rows)] == k

    def _mark(self, bad: Tensor, step: int) -> None:
        newly = bad & self.alive
        if bool(newly.any()):
            self.diverged_step[newly.cpu()] = step
            self.alive &= ~newly

    def check(self, x: Tensor, step: int) -> None:
        """The per-step part of the rule: non-finite iterates, or iterates outside the ball."""
        self._mark(~torch.isfinite(x).all(-1) | ((x - self.x0).norm(dim=-1) > self.limit), step)

    def record(self, k: int, x: Tensor, comp_err: float, comm: tuple[float, float, int], period: int | None = None) -> None:
        """Measure x at logged step k (marking repetitions whose loss is not finite as diverged); ``period``
        is a local method's H in force (None for methods that communicate every step)."""
        o = self.oracle
        loss = o.loss(x).double()
        self._mark(~torch.isfinite(loss), k)
        if not self.keep:
            self.rows.append(None)
            return
        alive = self.alive
        dist = o.distance(x)
        extra = {k: v.double().where(alive, math.nan).cpu() for k, v in o.evaluate(x).items()}
        self.rows.append({"metrics": extra, "period": period,
            "loss": loss.where(alive, math.inf).cpu(),
            "grad_norm": o.grad(x).norm(dim=-1).double().where(alive, math.nan).cpu(),
            "dist": None if dist is None else dist.double().where(alive, math.nan).cpu(),
            "compression_error": comp_err, "bits": comm[0], "bytes": comm[1], "rounds": comm[2],
        })

    def freeze(self, state: dict[str, Any]) -> None:
        """Reset the diverged repetitions of an algorithm's state in place: the iterate to x⁰, every
        other tensor (shape (..., R, ·)) to 0. Done every step, so a frozen repetition never moves."""
        if bool(self.alive.all()):
            return
        dead = ~self.alive
        state["params"][dead] = self.x0

        def zero(t: Tensor) -> Tensor:
            t[..., dead, :] = 0
            return t

        for key, value in state.items():
            if key == "local":  # a local method's worker iterates restart from x⁰ too
                value[:, dead] = self.x0
            elif key != "params":
                tree_map(zero, value)

    def trace(self, x: Tensor) -> Trace:
        if not self.keep:
            raise RuntimeError("this recorder keeps no rows (keep=False): it has no trace")
        rows = [r for r in self.rows if r is not None]
        steps = torch.tensor(self.when[: len(rows)], dtype=torch.long)
        return Trace(
            steps=steps,
            loss=torch.stack([r["loss"] for r in rows]),
            grad_norm=torch.stack([r["grad_norm"] for r in rows]),
            dist=None if rows[0]["dist"] is None else torch.stack([r["dist"] for r in rows]),
            bits=torch.tensor([r["bits"] for r in rows], dtype=torch.float64),
            bytes=torch.tensor([r["bytes"] for r in rows], dtype=torch.float64),
            rounds=torch.tensor([r["rounds"] for r in rows], dtype=torch.long),
            compression_error=torch.tensor([r["compression_error"] for r in rows], dtype=torch.float64),
            diverged_step=self.diverged_step.clone(),
            x=x.cpu(),
            metrics={k: torch.stack([r["metrics"][k] for r in rows]) for k in rows[0].get("metrics", {})},
            sync_period=(torch.tensor([r.get("period") or 0 for r in rows], dtype=torch.long)
                         if any(r.get("period") is not None for r in rows) else None),
        )

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "alive": self.alive.cpu().clone(), "diverged_step": self.diverged_step.clone()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.rows = list(st["rows"]) if self.keep else [None] * len(st["rows"])
        self.alive = st["alive"].to(self.alive.device).clone()
        self.diverged_step = st["diverged_step"].clone()
