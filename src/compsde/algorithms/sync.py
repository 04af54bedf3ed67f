"""Synchronisation schedules of local methods: how many local steps H the workers take before the next
parameter averaging.

A schedule is asked right after each averaging (and at the start), with the learning rate of the step
about to be taken and the number of steps remaining, for the next period H ≥ 1:

* ``every-step``  H = 1: data parallel (an averaging after every step).
* ``constant``    H = ``period``.
* ``post-local``  H = 1 until ``switch_step``, then ``period`` (Lin et al. 2020, "Don't use large
                  mini-batches, use local SGD").
* ``qsr``         the Quadratic Synchronization Rule (Gu, Lyu, Arora, Zhang, Huang 2024, "A quadratic
                  synchronization rule for distributed deep learning"): H = max(H_base, ⌊(α/η)^p⌋) with
                  H_base = ``period``, p = ``power`` (2; 1 for comparison), and H_base while the learning
                  rate warms up (step < ``warmup_steps``), when a small η would give a huge H.

Every period is capped by the steps remaining, so a run always ends with an averaging.

The schedule's state — the step of the next averaging and the period H in force — is data in the
algorithm's state (``state["sync"]``), advanced by ``begin`` at every step and ``end_round`` after each
averaging: the one state machine of the simulator, the torch.distributed worker and the ``LocalSGD``
driver for users' own loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from compsde.core.checks import check_choice, check_int, check_number

__all__ = ["SYNC_NAMES", "SYNC_PARAMS", "SyncSchedule"]

SYNC_NAMES = ("every-step", "constant", "post-local", "qsr")
#: The keys each schedule takes (besides its name).
SYNC_PARAMS: dict[str, tuple[str, ...]] = {
    "every-step": (), "constant": ("period",), "post-local": ("period", "switch_step"),
    "qsr": ("period", "alpha", "power", "warmup_steps"),
}


@dataclass(frozen=True)
class SyncSchedule:
    """A synchronisation schedule (see module doc); unused keys must keep their defaults."""

    name: str = "every-step"
    period: int = 1
    alpha: float | None = None
    power: float = 2.0
    warmup_steps: int = 0
    switch_step: int = 0

    def __post_init__(self) -> None:
        check_choice("sync", self.name, SYNC_NAMES)
        check_int("period", self.period, min=1, max=1 << 40)
        check_number("power", self.power, min=0.0, min_open=True, max=16.0)
        check_int("warmup_steps", self.warmup_steps, min=0)
        check_int("switch_step", self.switch_step, min=0)
        if self.alpha is not None:
            check_number("alpha", self.alpha, min=0.0, min_open=True, max=1e6)
        if self.name == "qsr" and self.alpha is None:
            raise ValueError("sync 'qsr' needs alpha (H = max(period, ⌊(alpha/η)^power⌋); the QSR paper uses "
                             "alpha = 0.0175 for Local AdamW on ViT-B, 0.2 for Local SGD on ResNet-152)")
        defaults = {"period": 1, "alpha": None, "power": 2.0, "warmup_steps": 0, "switch_step": 0}
        for key, default in defaults.items():
            if key not in SYNC_PARAMS[self.name] and getattr(self, key) != default:
                takes = ", ".join(SYNC_PARAMS[self.name]) or "no keys"
                raise ValueError(f"sync {self.name!r} does not take {key} = {getattr(self, key)!r}; it takes {takes}")

    def next_period(self, step: int, lr: float, remaining: int | None) -> int:
        """H for the local steps from ``step`` on, decided right after an averaging (or at step 0) with
        ``lr`` the learning rate of step ``step`` and ``remaining`` steps left (None: no cap)."""
        check_int("step", step, min=0)
        check_number("lr", lr, min=0.0)
        if self.name == "every-step":
            h = 1
        elif self.name == "constant":
            h = self.period
        elif self.name == "post-local":
            h = 1 if step < self.switch_step else self.period
        elif step < self.warmup_steps or lr == 0.0:
            h = self.period
        else:
            assert self.alpha is not None
            # in logs: (α/η)^p overflows a float for tiny η; H is capped at 2⁶² (and by the steps remaining)
            log_ratio = self.power * (math.log(self.alpha) - math.log(lr))
            # (1 + 1e-12): α/η rounds in floats, and (0.3/0.1)² = 8.999999999999998 must give 9
            h = max(self.period, math.floor((self.alpha / lr) ** self.power * (1 + 1e-12))
                    if log_ratio < 62 * math.log(2) else 2**62)
        if remaining is not None:
            h = min(h, max(1, check_int("remaining", remaining, min=0)))
        return h

    @staticmethod
    def init_state() -> dict[str, Any]:
        """The state before the first step: the next averaging not decided yet (None), no period."""
        return {"next": None, "period": 0}

    def begin(self, state: dict[str, Any], step: int, lr: float, total: int | None) -> tuple[dict[str, Any], bool]:
        """The state at the start of step ``step`` (0-based; a period is decided right after an averaging, and
        at the start, with this step's ``lr`` and the steps left of ``total``, None: no cap) and whether this
        step ends with an averaging."""
        if state["next"] is None:
            period = self.next_period(step, lr, None if total is None else total - step)
            state = {"next": step + period, "period": period}
        return state, step + 1 == state["next"]

    @staticmethod
    def end_round(state: dict[str, Any]) -> dict[str, Any]:
        """The state after an averaging: the next period is decided at the next step."""
        return {"next": None, "period": state["period"]}

    def describe(self) -> str:
        if self.name == "every-step":
            return "every step"
        if self.name == "constant":
            return f"every {self.period} steps"
        if self.name == "post-local":
            return f"every step until {self.switch_step}, then every {self.period}"
        warm = f", H = {self.period} in the first {self.warmup_steps} steps" if self.warmup_steps else ""
        return f"QSR: H = max({self.period}, ⌊({self.alpha:g}/η)^{self.power:g}⌋){warm}"
