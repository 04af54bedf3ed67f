"""Learning-rate schedules η_k, k = 0, 1, …, steps − 1, and the gradient-norm-normalised step.

* ``constant``: η_k = η.
* ``cosine``:   η_k = η (r + (1 − r) · ½ (1 + cos(π k / K))), r = ``final_ratio`` (default 0).
* ``step``:     η_k = η · γ^⌊k / every⌋ (``gamma`` default 0.1, ``every`` default K/3).
* ``poly``:     η_k = η / (1 + k)^p (``power`` default 0.5): the classical decaying schedule with
  Σ η_k = ∞ (and Σ η_k² < ∞ for p > ½) that the (L0, L1) analysis (Compagnoni, Islamov, Orvieto, Gorbunov 2025) uses.
* ``linear``:   η_k = η (1 − (1 − r) k / K), r = ``final_ratio`` (default 0).

Warm-up (``warmup_steps`` = W, every schedule, default 0): η_k = η (k + 1)/W for k < W, then the schedule
over the remaining K − W steps (its k counted from W). A local method's QSR keeps its base period
during the warm-up (``compsde.algorithms.sync``).

Normalisation (``normalize = true`` in a series, ``compsde.optim.normalize``) is orthogonal to the
schedule: the step becomes η_k · u / ‖u‖ with u the aggregated update, i.e. the schedule gains the
inverse dependence on the gradient norm that lets (compressed) SGD converge under (L0, L1)-smoothness
and heavy tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from compsde.core.checks import check_choice, check_int, check_number, describe

SCHEDULE_NAMES = ("constant", "cosine", "step", "poly", "linear")
#: The keys each schedule takes.
SCHEDULE_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": ("warmup_steps",), "cosine": ("final_ratio", "warmup_steps"), "step": ("gamma", "every", "warmup_steps"),
    "poly": ("power", "warmup_steps"), "linear": ("final_ratio", "warmup_steps"),
}


@dataclass(frozen=True)
class Schedule:
    """η_k for a run of ``steps`` steps. ``params`` holds the schedule's own keys (see module doc)."""

    name: str
    lr: float
    steps: int
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("schedule", self.name, SCHEDULE_NAMES)
        check_number("lr", self.lr, min=0.0, min_open=True)
        check_int("steps", self.steps, min=0)
        if not isinstance(self.params, dict):
            raise ValueError(f"schedule parameters must be a dict, got {describe(self.params)}")
        bad = sorted(set(self.params) - set(SCHEDULE_PARAMS[self.name]))
        if bad:
            raise ValueError(f"schedule {self.name!r} does not take {', '.join(map(str, bad))}; valid: {', '.join(SCHEDULE_PARAMS[self.name]) or 'none'}")
        where = f"schedule {self.name!r}"
        for k, v in self.params.items():
            if k == "final_ratio":
                check_number(f"{where}: final_ratio", v, min=0.0, max=1.0)
            elif k == "gamma":
                check_number(f"{where}: gamma", v, min=0.0, max=1.0, min_open=True)
            elif k == "every":
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                check_int(f"{where}: every", v, min=1)
            elif k == "warmup_steps":
                check_int(f"{where}: warmup_steps", v, min=0, max=max(self.steps, 0))
            else:
                check_number(f"{where}: power", v, min=0.0, min_open=True)
        # Every schedule here is non-increasing, so its last step has the smallest η: it must still be a
        # positive number (γ^(k/every) or (1 + k)^(−p) can underflow to 0 for extreme parameters).
        if self.steps > 0 and self.name in ("step", "poly"):
            last = self(self.steps - 1)
            if not last > 0.0:
                raise ValueError(f"{where} with {', '.join(f'{k} = {v!r}' for k, v in self.params.items())} gives "
                                 f"η = {last!r} at step {self.steps - 1} (underflow): the learning rate must stay > 0")

    def __call__(self, k: int) -> float:
        eta, p = float(self.lr), self.params
        warm = int(p.get("warmup_steps", 0))
        if k < warm:
            return eta * (k + 1) / warm
        k, steps = k - warm, self.steps - warm
        if self.name == "constant":
            return eta
        if self.name == "cosine":
            r = float(p.get("final_ratio", 0.0))
            return eta * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * k / max(1, steps))))
        if self.name == "linear":
            r = float(p.get("final_ratio", 0.0))
            return eta * (1.0 - (1.0 - r) * k / max(1, steps))
        if self.name == "step":
            every = int(p.get("every", max(1, steps // 3)))
            return eta * float(p.get("gamma", 0.1)) ** (k // every)
        power = float(p.get("power", 0.5))
        try:
            return eta / (1.0 + k) ** power
        except OverflowError:  # (1 + k)^p beyond the float range: η_k underflows to 0
            return 0.0
