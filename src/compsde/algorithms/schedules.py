"""Learning-rate schedules η_k, k = 0, 1, …, steps − 1, and the gradient-norm-normalised step.

* ``constant``: η_k = η.
* ``cosine``:   η_k = η (r + (1 − r) · ½ (1 + cos(π k / K))), r = ``final_ratio`` (default 0).
* ``step``:     η_k = η · γ^⌊k / every⌋ (``gamma`` default 0.1, ``every`` default max(1, ⌊(K − W)/3⌋):
  a third of the steps after the warm-up).
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
from collections.abc import Mapping
from dataclasses import dataclass, field

from compsde.core.checks import check_choice, check_int, check_number, describe

SCHEDULE_NAMES = ("constant", "cosine", "step", "poly", "linear")
#: The keys each schedule takes.
SCHEDULE_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": ("warmup_steps",), "cosine": ("final_ratio", "warmup_steps"), "step": ("gamma", "every", "warmup_steps"),
    "poly": ("power", "warmup_steps"), "linear": ("final_ratio", "warmup_steps"),
}
#: The defaults of the schedules' keys but ``every``, whose default depends on the run (``default_every``).
SCHEDULE_DEFAULTS: dict[str, float] = {"final_ratio": 0.0, "gamma": 0.1, "power": 0.5, "warmup_steps": 0}


def default_every(steps: int, warmup_steps: int = 0) -> int:
    """The step schedule's default period for a run of K = ``steps`` steps with W = ``warmup_steps``:
    max(1, ⌊(K − W)/3⌋), a third of the steps after the warm-up (the schedule runs over those)."""
    return max(1, (steps - warmup_steps) // 3)


def schedule_params(name: str, steps: int, params: Mapping[str, float]) -> dict[str, float]:
    """Every key schedule ``name`` takes, from ``params`` where given, else its default for a run of
    ``steps`` steps (``SCHEDULE_DEFAULTS``, ``default_every``). The one source of the defaults:
    ``Schedule`` runs them, the config schema writes them into a resolved config and leaves them out of
    derived labels."""
    warm = int(params.get("warmup_steps", SCHEDULE_DEFAULTS["warmup_steps"]))
    defaults = {**SCHEDULE_DEFAULTS, "every": default_every(steps, warm)}
    return {k: params[k] if k in params else defaults[k] for k in SCHEDULE_PARAMS[name]}


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
        eta, p = float(self.lr), schedule_params(self.name, self.steps, self.params)
        warm = int(p["warmup_steps"])
        if k < warm:
            return eta * (k + 1) / warm
        k, steps = k - warm, self.steps - warm
        if self.name == "constant":
            return eta
        if self.name == "cosine":
            r = float(p["final_ratio"])
            return eta * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * k / max(1, steps))))
        if self.name == "linear":
            r = float(p["final_ratio"])
            return eta * (1.0 - (1.0 - r) * k / max(1, steps))
        if self.name == "step":
            return eta * float(p["gamma"]) ** (k // int(p["every"]))
        power = float(p["power"])
        try:
            return eta / (1.0 + k) ** power
        except OverflowError:  # (1 + k)^p beyond the float range: η_k underflows to 0
            return 0.0
