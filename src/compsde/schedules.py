"""Learning-rate schedules η_k, k = 0, 1, …, steps − 1, and the gradient-norm-normalised step.

* ``constant``: η_k = η.
* ``cosine``:   η_k = η (r + (1 − r) · ½ (1 + cos(π k / K))), r = ``final_ratio`` (default 0).
* ``step``:     η_k = η · γ^⌊k / every⌋ (``gamma`` default 0.1, ``every`` default K/3).
* ``poly``:     η_k = η / (1 + k)^p (``power`` default 0.5): the classical decaying schedule with
  Σ η_k = ∞ (and Σ η_k² < ∞ for p > ½) that the (L0, L1) analysis (Compagnoni et al., seed 001) uses.

Normalisation (``normalize = true`` in a series) is orthogonal to the schedule: the step becomes
η_k · u / ‖u‖ with u the aggregated update, i.e. the schedule gains the inverse dependence on the
gradient norm that lets (compressed) SGD converge under (L0, L1)-smoothness and heavy tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

SCHEDULE_NAMES = ("constant", "cosine", "step", "poly")
#: The keys each schedule takes.
SCHEDULE_PARAMS: dict[str, tuple[str, ...]] = {"constant": (), "cosine": ("final_ratio",), "step": ("gamma", "every"), "poly": ("power",)}


@dataclass(frozen=True)
class Schedule:
    """η_k for a run of ``steps`` steps. ``params`` holds the schedule's own keys (see module doc)."""

    name: str
    lr: float
    steps: int
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {self.name!r}")
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        bad = sorted(set(self.params) - set(SCHEDULE_PARAMS[self.name]))
        if bad:
            raise ValueError(f"schedule {self.name!r} does not take {', '.join(bad)}; valid: {', '.join(SCHEDULE_PARAMS[self.name]) or 'none'}")
        valid = {
            "final_ratio": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
            "gamma": (lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
            "every": (lambda v: float(v).is_integer() and v >= 1, "an integer ≥ 1"),
            "power": (lambda v: 0.0 < v and math.isfinite(v), "a finite number > 0"),
        }
        for k, v in self.params.items():
            ok, what = valid[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise ValueError(f"schedule {self.name!r}: {k} must be {what}, got {v!r}")

    def __call__(self, k: int) -> float:
        eta, p = float(self.lr), self.params
        if self.name == "constant":
            return eta
        if self.name == "cosine":
            r = float(p.get("final_ratio", 0.0))
            return eta * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * k / max(1, self.steps))))
        if self.name == "step":
            every = int(p.get("every", max(1, self.steps // 3)))
            return eta * float(p.get("gamma", 0.1)) ** (k // every)
        return eta / (1.0 + k) ** float(p.get("power", 0.5))


def normalized(update: Tensor, eps: float = 1e-30) -> Tensor:
    """u / ‖u‖ along the last dimension (rows with ‖u‖ = 0 stay 0)."""
    return update / update.norm(dim=-1, keepdim=True).clamp_min(eps)
