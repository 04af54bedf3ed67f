"""Scaling rules: which hyperparameter changes keep a method's performance, from its SDE (docs/theory.md §3).

Each rule is an invariant of the hyperparameters. On a quadratic, the stationary loss of the SDE is
proportional to it, and (for the noise-dominated regime the seeds study) so is the whole loss curve
in SDE time, so keeping the invariant keeps the performance:

* ``dsgd``      η / (B N)               (E f_∞ ≈ η d s² / (4 N B))
* ``dcsgd``     η (1 + ω) / (B N)       (E f_∞ ≈ (1 + ω) η d s² / (4 N B)): DCSGD recovers DSGD(η, B, N)
                                         by growing B, N or both by the factor (1 + ω)
* ``dsignsgd``  η / (N √B)              (E f_∞ ≈ sqrt(π/2) η d s / (4 N √B)): doubling η needs 4× the
                                         batch or 2× the agents
* ``adam``/``adamw``/``rmsprop``/``rmspropw``: the square-root rule B → κB, η → √κ η, 1 − β_i → κ (1 − β_i),
  ε → ε/√κ, weight decay λ → √κ λ (Malladi et al. 2022); invariant η/√B. Derived here for the
  stationary loss (docs/theory.md §9.4: E f_∞ = Σ_j η σ̄² h_j/(4P(h_j + λ̃)), λ̃ = λP (decoupled) or λ, σ̄ = s/√B, P = σ̄ + ε, is
  invariant under the whole map); the β map, which keeps the moments' relaxation in the SDE time
  kη² of Malladi et al.'s noise-dominated regime, is recalled, and ``--validate`` checks the rule.

``solve`` takes a *from* setting and a *to* request that changes some hyperparameters and fixes
others, and solves for the one left free. Batch sizes and worker counts must be whole numbers: the
solution is rounded and the rounding reported with the invariant's value after it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compsde.core.checks import MAX_INT64, MAX_WORKERS

KEEP = "same"


@dataclass(frozen=True)
class Rule:
    """An invariant I(hyperparameters) = η^a (1 + ω)^c / (B^b N^n), with its derivation."""

    method: str
    formula: str
    exponents: dict[str, float]  # lr, batch, workers, omega → power in the invariant
    source: str
    hypothesis: bool = False
    #: Hyperparameters transformed along with the batch factor κ = B'/B (adaptive rule only).
    extra: dict[str, Callable[[float, float], float]] | None = None

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(self.exponents)

    def value(self, hp: dict[str, float]) -> float:
        """The invariant's value (inf where it leaves the range of floats)."""
        v = 1.0
        try:
            for key, power in self.exponents.items():
                base = 1.0 + hp[key] if key == "omega" else hp[key]
                v *= base**power
        except OverflowError:
            return math.inf
        return v


_SQRT_RULE_EXTRA: dict[str, Callable[[float, float], float]] = {
    "beta1": lambda b, kappa: 1.0 - kappa * (1.0 - b),
    "beta2": lambda b, kappa: 1.0 - kappa * (1.0 - b),
    "eps": lambda e, kappa: e / math.sqrt(kappa),
    "weight_decay": lambda w, kappa: w * math.sqrt(kappa),
}



def _sqrt_rule_extra(method: str) -> dict[str, Callable[[float, float], float]]:
    """The square-root rule's other maps for ``method``: RMSprop has no β₁, and a coupled (L2) weight
    decay is part of the objective, so only a decoupled one scales (λP is what enters the dynamics)."""
    out = {k: v for k, v in _SQRT_RULE_EXTRA.items() if method.startswith("adam") or k != "beta1"}
    if not method.endswith("w"):
        out["weight_decay"] = lambda w, kappa: w
    return out


RULES: dict[str, Rule] = {
    "dsgd": Rule("dsgd", "η/(B·N)", {"lr": 1.0, "batch": -1.0, "workers": -1.0}, "docs/theory.md §3 [derived]"),
    "dcsgd": Rule("dcsgd", "η(1+ω)/(B·N)", {"lr": 1.0, "omega": 1.0, "batch": -1.0, "workers": -1.0}, "docs/theory.md §3 [derived]; Compagnoni et al. 2025"),
    "dsignsgd": Rule("dsignsgd", "η/(N·√B)", {"lr": 1.0, "batch": -0.5, "workers": -1.0}, "docs/theory.md §3 [derived]; Compagnoni et al. 2025"),
    **{
        name: Rule(name, "η/√B (square-root rule)", {"lr": 1.0, "batch": -0.5},
                   "docs/theory.md §9.4 [derived for the stationary loss]; Malladi et al. 2022 [recalled: the β map]",
                   extra=_sqrt_rule_extra(name))
        for name in ("adam", "adamw", "rmsprop", "rmspropw")
    },
}
INTEGER = ("batch", "workers")


@dataclass
class Solution:
    """The solved setting. ``to`` holds every hyperparameter of the new setting."""

    rule: Rule
    frm: dict[str, float]
    to: dict[str, float]
    solved: str
    exact: float  # the solved variable before rounding
    rounded: bool

    @property
    def invariant_from(self) -> float:
        return self.rule.value(self.frm)

    @property
    def invariant_to(self) -> float:
        return self.rule.value(self.to)

    def as_dict(self) -> dict[str, Any]:
        def whole(d: dict[str, float]) -> dict[str, float | int]:
            return {k: int(v) if k in INTEGER else v for k, v in d.items()}

        out: dict[str, Any] = {
            "method": self.rule.method,
            "from": whole(self.frm),
            "to": whole(self.to),
            "solved": self.solved,
            "invariant": {
                "formula": self.rule.formula,
                "from": self.invariant_from,
                "to": self.invariant_to,
                "relative_change": self.invariant_to / self.invariant_from - 1.0,
                "source": self.rule.source,
                "hypothesis": self.rule.hypothesis,
            },
        }
        if self.rounded:
            out["rounding"] = {self.solved: {"exact": self.exact, "rounded": self.to[self.solved]}}
        return out

    def format(self) -> str:
        r = self.rule
        lines = [f"{r.method}: keep {r.formula}" + ("   [HYPOTHESIS: recalled square-root rule, check it with --validate]" if r.hypothesis else "")]
        keys = list(self.frm) + [k for k in self.to if k not in self.frm]
        w = max(len(k) for k in keys)
        for k in keys:
            a, b = self.frm.get(k), self.to.get(k)
            mark = "  ← solved" if k == self.solved else ("  (changed)" if a != b else "")
            lines.append(f"  {k:<{w}}  {_fmt(a):>12} → {_fmt(b):<12}{mark}")
        if self.rounded:
            lines.append(f"  {self.solved} rounded from {self.exact:.6g} to a whole number")
        change = self.invariant_to / self.invariant_from - 1.0
        change = 0.0 if abs(change) < 1e-12 else change
        lines.append(f"  invariant: {self.invariant_from:.6g} → {self.invariant_to:.6g} ({100 * change:+.3g} %)")
        if abs(change) > 0.01:
            lines.append(f"  note: whole-number {self.solved} cannot keep the invariant within 1 %; change another hyperparameter too")
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.6g}"


def parse_assignments(text: str, arg: str) -> dict[str, float | str]:
    """'lr=0.1,batch=32' → {'lr': 0.1, 'batch': 32.0}; 'workers=same' keeps the value of --from."""
    out: dict[str, float | str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{arg}: expected KEY=VALUE pairs separated by commas, got {part!r}")
        if key in out:
            raise ValueError(f"{arg}: {key} is given twice; give each hyperparameter once")
        val = val.strip()
        if val == KEEP:
            out[key] = KEEP
            continue
        try:
            out[key] = float(val)
        except ValueError:
            raise ValueError(f"{arg}: {key} must be a number (or '{KEEP}'), got {val!r}") from None
    return out


def solve(method: str, frm: dict[str, float], to: dict[str, float | str]) -> Solution:
    """Solve the rule of ``method`` for the one hyperparameter that ``to`` leaves free.

    Args:
        method: a key of ``RULES``.
        frm: the current setting: every variable of the rule (and, for the adaptive rule, optionally
            beta1, beta2, eps, weight_decay, which are carried along; those not given are the
            optimizer's defaults, ``compsde.optimizers``).
        to: the new values of the changed variables and, for variables to hold fixed, their value
            or ``"same"``. Exactly one of the rule's variables must be left out.
    """
    if method not in RULES:
        raise ValueError(f"unknown method {method!r} for scaling; valid: {', '.join(RULES)}")
    rule = RULES[method]
    valid = set(rule.variables) | set(rule.extra or {})
    for arg, d in (("--from", frm), ("--to", to)):
        bad = sorted(set(d) - valid)
        if bad:
            raise ValueError(f"{arg}: {method} has no hyperparameter {', '.join(bad)}; valid: {', '.join(sorted(valid))}")
    missing = [v for v in rule.variables if v not in frm]
    if missing:
        raise ValueError(f"--from must give every variable of {rule.formula}: missing {', '.join(missing)}")
    if rule.extra:  # the adaptive rule maps β, ε and λ too: those not given are the optimizer's defaults
        from compsde import optimizers

        defaults = optimizers.get(method).defaults
        frm = {**frm, **{k: v for k in rule.extra if k not in frm and (v := defaults.get(k)) is not None}}
    for key, v in frm.items():
        _check_value("--from", key, v)
    fixed = {k: (frm[k] if v == KEEP else float(v)) for k, v in to.items()}
    for key, v in fixed.items():
        _check_value("--to", key, v)
    free = [v for v in rule.variables if v not in fixed]
    if not free:
        raise ValueError(
            f"over-determined: --to fixes every variable of {rule.formula} ({', '.join(rule.variables)}); "
            "leave out the one to solve for"
        )
    if len(free) > 1:
        raise ValueError(
            f"under-determined: --to leaves {', '.join(free)} free; give all but one of them "
            f"(use KEY={KEEP} to keep a value of --from)"
        )
    solved = free[0]
    new = {k: v for k, v in fixed.items() if k in rule.exponents}
    # I = Π base_k^p_k  ⇒  base_solved = (target / Π_{k≠solved} base_k^p_k)^(1/p_solved)
    target = rule.value(frm)
    rest = rule.value({**new, solved: 0.0 if solved == "omega" else 1.0})
    try:
        base = (target / rest) ** (1.0 / rule.exponents[solved])
    except (OverflowError, ZeroDivisionError):
        base = math.inf
    if not (math.isfinite(base) and math.isfinite(target) and math.isfinite(rest) and rest > 0):
        raise ValueError(f"the rule's solution for {solved} leaves the range of numbers (invariant {rule.formula} = "
                         f"{target:.4g} from --from): the change you asked for is too extreme for this rule")
    exact = base - 1.0 if solved == "omega" else base
    if solved == "omega" and exact < 0:
        raise ValueError(f"no compressor fits: the rule needs ω = {exact:.4g} < 0 (more noise reduction than uncompressed DSGD)")
    if not exact > 0 and solved != "omega":
        raise ValueError(f"the rule needs {solved} = {exact!r}, which underflows to 0: the change you asked for is too extreme")
    value, rounded = exact, False
    if solved in INTEGER:
        if exact > _LIMITS[solved]:
            raise ValueError(f"the rule needs {solved} = {exact:.4g}, more than any run can have (at most "
                             f"{_LIMITS[solved]}): the change you asked for is too extreme")
        if exact < 0.5:
            raise ValueError(f"the rule needs {solved} = {exact:.4g}, which rounds to 0 ({solved} must be a whole "
                             "number ≥ 1): the change you asked for is too extreme for this rule")
        value = float(max(1, round(exact)))
        rounded = not math.isclose(value, exact, rel_tol=1e-9)
    try:
        _check_value("the rule's solution", solved, value)
    except ValueError as e:
        raise ValueError(f"{e}: the change you asked for is too extreme for this rule") from None
    new[solved] = value
    if rule.extra:
        kappa = new["batch"] / frm["batch"]
        for key, transform in rule.extra.items():
            if key in fixed:
                new[key] = fixed[key]
            elif key in frm:
                new[key] = transform(frm[key], kappa)
                try:
                    _check_value("the rule", key, new[key])
                except ValueError as e:
                    raise ValueError(f"{e} (κ = {kappa:g} is too large for this rule: 1 − β → κ(1 − β) must stay below 1)") from None
    ordered = {k: new[k] for k in list(frm) + [k for k in new if k not in frm]}
    return Solution(rule, dict(frm), ordered, solved, exact, rounded)


#: The largest batch and worker count a run may have (those of a config, ``compsde.experiments.schema``).
_LIMITS = {"batch": MAX_INT64, "workers": MAX_WORKERS}


def _check_value(arg: str, key: str, v: float) -> None:
    """The range of each hyperparameter, for --from, --to and the solution alike."""
    ok = math.isfinite(v) and (v >= 0 if key in ("omega", "weight_decay") else v > 0)
    if key in ("beta1", "beta2"):
        ok = 0 <= v < 1
    if key in INTEGER:
        ok = ok and float(v).is_integer() and 1 <= v <= _LIMITS[key]
    if not ok:
        what = {"omega": "a number ≥ 0", "batch": f"a whole number ≥ 1 and ≤ {_LIMITS['batch']}",
                "workers": f"a whole number ≥ 1 and ≤ {_LIMITS['workers']}", "beta1": "in [0, 1)", "beta2": "in [0, 1)",
                "weight_decay": "a number ≥ 0"}.get(key, "a number > 0")
        raise ValueError(f"{arg}: {key} must be {what}, got {v!r}")


# ---- checking a rule instead of trusting it ------------------------------------------------------


def stationary_loss_theory(method: str, hp: dict[str, float], *, dim: int, scale: float) -> float:
    """The first-order SDE's stationary loss on f = ½ Σ h_j x_j² with Gaussian noise of scale s (docs/theory.md §3).

    dsgd: η d s²/(4NB); dcsgd (Rand-k): (1 + ω) η d s²/(4NB); dsignsgd: sqrt(π/2) η d s/(4N√B).
    Independent of the spectrum h (to first order in η).
    """
    if method in ADAPTIVE:
        return adaptive_stationary_loss(method, hp, _validation_problem(dim).eigs, scale)
    eta, b, n = hp["lr"], hp["batch"], hp["workers"]
    if method == "dsgd":
        return eta * dim * scale**2 / (4 * n * b)
    if method == "dcsgd":
        return (1 + hp["omega"]) * eta * dim * scale**2 / (4 * n * b)
    if method == "dsignsgd":
        return math.sqrt(math.pi / 2) * eta * dim * scale / (4 * n * math.sqrt(b))
    raise ValueError(f"no closed-form stationary loss for {method!r}; valid: dsgd, dcsgd, dsignsgd, {', '.join(ADAPTIVE)}")


#: The adaptive methods whose rule ``validate`` runs.
ADAPTIVE = ("adam", "adamw", "rmsprop", "rmspropw")


def adaptive_stationary_loss(method: str, hp: dict[str, float], eigs: Any, scale: float) -> float:
    """RMSprop(W)/Adam(W)'s stationary loss on f = ½ Σ h_j x_j² with Gaussian noise s/√B (docs/theory.md §9.4):
    Σ_j η σ̄² h_j / (4 P (h_j + λ̃)), σ̄ = s/√(NB), P = σ̄ + ε, λ̃ = λP (decoupled) or λ (coupled)."""
    from compsde import optimizers

    opt = optimizers.get(method)
    h: dict[str, float] = {**{k: v for k, v in opt.defaults.items() if v is not None}, **hp}
    sigma = scale / math.sqrt(hp["batch"] * hp.get("workers", 1))
    p = sigma + h["eps"]
    lam = h["weight_decay"] * (p if getattr(opt.sde, "decoupled_decay", False) else 1.0)
    return float(sum(h["lr"] * sigma**2 * float(hj) / (4 * p * (float(hj) + lam)) for hj in eigs))


def _validation_problem(dim: int) -> Any:
    from compsde.objectives import problems

    return problems.make("quadratic", dim=dim, x0_scale=0.0)


@dataclass
class Validation:
    """Measured stationary losses of the *from* and *to* settings (optimizer and SDE) and their ratios."""

    rows: list[dict[str, Any]]

    def ratio(self, key: str) -> float:
        return self.rows[1][key] / self.rows[0][key]

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.rows, "ratio_to_over_from": {k: self.ratio(k) for k in ("optimizer", "sde", "theory")},
                "holds": self.holds, "tolerance": self.TOLERANCE}

    #: The rule holds when the optimizer's stationary losses agree within this relative tolerance (the
    #: Monte Carlo error of the defaults is ~2 %, the first-order theory's ~η h_max/P ≤ 5 %).
    TOLERANCE = 0.1

    @property
    def holds(self) -> bool:
        return abs(self.ratio("optimizer") - 1.0) <= self.TOLERANCE

    def format(self) -> str:
        head = f"{'setting':<9}{'method':<30}{'ω':>7}{'optimizer':>12}{'SDE':>12}{'theory':>12}"
        lines = ["stationary loss E f(x) on the validation quadratic (mean over runs and the second half of the run):", head]
        for r in self.rows:
            lines.append(f"{r['setting']:<9}{r['label']:<30}{r['omega']:>7.3g}{r['optimizer']:>12.5g}{r['sde']:>12.5g}{r['theory']:>12.5g}")
        lines.append(f"{'ratio to/from':<46}{self.ratio('optimizer'):>12.4f}{self.ratio('sde'):>12.4f}{self.ratio('theory'):>12.4f}")
        verdict = "holds" if self.holds else "does NOT hold"
        lines.append(f"the rule {verdict}: the optimizer's stationary losses differ by {100 * (self.ratio('optimizer') - 1):+.1f} % "
                     f"(tolerance ±{100 * self.TOLERANCE:g} %)")
        return "\n".join(lines)


def _algorithm_for(method: str, hp: dict[str, float], dim: int) -> tuple[Any, float]:
    """The simulated algorithm realising ``hp``; for dcsgd, scaled Rand-k with k = round(d/(1 + ω)), whose
    ω = d/k − 1 may differ from the requested one (it is reported, and the theory column uses it)."""
    from compsde import algorithms

    if method == "dcsgd":
        k = max(1, min(dim, round(dim / (1.0 + hp["omega"]))))
        a = algorithms.make("dsgd") if k == dim else algorithms.make("dcsgd", compressor="rand-k", k=k)
        return a, dim / k - 1.0
    if method in ("dsgd", "dsignsgd"):
        return algorithms.make(method), 0.0
    if method in ADAPTIVE:
        from compsde import optimizers

        keys = optimizers.get(method).keys
        hyper: dict[str, Any] = {k: v for k, v in hp.items() if k in keys}
        return algorithms.make(method, **hyper), 0.0
    raise ValueError(f"--validate runs dsgd, dcsgd, dsignsgd, {', '.join(ADAPTIVE)}; got {method!r}")


#: --validate refuses settings whose two runs would take longer than this (estimated).
MAX_VALIDATE_SECONDS = 3600.0


def validate(sol: Solution, *, dim: int = 20, scale: float = 1.0, repeats: int = 64, paths: int | None = None,
             seed: int = 0, relax_times: float = 8.0) -> Validation:
    """Run the *from* and *to* settings on a diagonal quadratic (eigenvalues in [0.5, 2], Gaussian noise
    of scale ``scale``) in the simulator and through their SDEs; report the stationary losses.

    Each run lasts 2 × ``relax_times`` relaxation times 1/(η h_min · drift gain) of the slowest
    coordinate and averages the loss over its second half. Settings whose runs would take longer than
    ``MAX_VALIDATE_SECONDS`` (estimated from the steps and sizes with the time model of a config run,
    ``compsde.experiments.estimates``) are refused with the estimate.
    """
    import torch

    from compsde.algorithms.schedules import Schedule
    from compsde.core.checks import check_int, check_seed
    from compsde.core.streams import SDE, generator
    from compsde.experiments import estimates
    from compsde.objectives import Noise, Oracle
    from compsde.sde import models
    from compsde.sde.integrators import integrate
    from compsde.sim.simulator import simulate

    check_int("repeats", repeats, min=1, max=1 << 20)
    check_seed("seed", seed)
    prob = _validation_problem(dim)
    noise = Noise("gaussian", scale)
    plans = []
    for setting, hp in (("from", sol.frm), ("to", sol.to)):
        algo, omega = _algorithm_for(sol.rule.method, hp, dim)
        eta, b, n = float(hp["lr"]), int(hp["batch"]), int(hp.get("workers", 1))
        # relaxation: dsgd/dcsgd contract at rate η h; dsignsgd's linearised drift gain is sqrt(2/π)√B h/s,
        # the adaptive methods' 1/P = 1/(s/√B + ε)
        gain = 1.0
        if sol.rule.method == "dsignsgd":
            gain = math.sqrt(2 / math.pi) * math.sqrt(b) / scale
        elif sol.rule.method in ADAPTIVE:
            gain = 1.0 / (scale / math.sqrt(b) + float(algo.hyper["eps"]))
        steps_f = 2 * relax_times / (eta * prob.eig_min * gain)
        # the optimizer's run and its SDE's (one path per repetition, diagonal noise), as a config run's
        steps_run = max(200.0, steps_f)
        seconds = (estimates.optimizer_seconds(steps_run, n, repeats, dim)
                   + estimates.sde_seconds(steps_run, paths or repeats, dim, dim))
        plans.append((setting, hp, algo, omega, eta, b, n, steps_f, seconds))
    total = sum(p[-1] for p in plans)
    if not math.isfinite(total) or total > MAX_VALIDATE_SECONDS:
        worst = max(plans, key=lambda p: p[-1])
        raise ValueError(
            f"--validate would take about {_duration(total)} (the {worst[0]!r} setting needs {worst[7]:.3g} steps of "
            f"{worst[6]} worker(s) at lr = {worst[4]:g}); the limit is {_duration(MAX_VALIDATE_SECONDS)} — "
            "choose a setting with a larger learning rate, or check the rule without --validate")
    rows: list[dict[str, Any]] = []
    for setting, hp, algo, omega, eta, b, n, steps_f, _ in plans:
        steps = max(200, math.ceil(steps_f))
        log_every = max(1, steps // 200)
        oracle = Oracle(prob, noise, workers=n, batch=b)
        tr = simulate(oracle, algo, Schedule("constant", eta, steps), repeats=repeats, seed=seed, log_every=log_every)
        keep = tr.steps >= steps // 2
        opt = float(tr.loss[keep].mean())
        model = models.from_algorithm(oracle, algo, eta)
        acc: list[float] = []

        integrate(model, torch.zeros(paths or repeats, dim, dtype=torch.float64), t1=steps * eta, dt=eta,
                  generator=generator(seed, SDE),
                  observe=functools.partial(_observe_loss, acc, prob, model, steps // 2),
                  observe_every=log_every)
        theory_hp = {**hp, "omega": omega}
        betas = ",".join(f"{k[0]}{k[-1]}={algo.hyper[k]:g}" for k in ("beta1", "beta2") if k in algo.hyper)
        rows.append({"setting": setting, "label": f"{algo.name}({betas})" if algo.hyper else algo.label(),
                     "lr": eta, "batch": b, "workers": n, "omega": omega, **algo.hyper,
                     "steps": steps, "optimizer": opt, "sde": sum(acc) / len(acc),
                     "theory": stationary_loss_theory(sol.rule.method if sol.rule.method != "dcsgd" or omega > 0 else "dsgd",
                                                      theory_hp, dim=dim, scale=scale)})
    return Validation(rows)


def _observe_loss(acc: list[float], prob: Any, model: Any, first: int, i: int, z: Any) -> None:
    """Collect the mean loss of the SDE's paths z at its steps i ≥ ``first`` into ``acc``."""
    if i >= first:
        acc.append(float(prob.loss(model.params(z)).mean()))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "forever"
    for unit, size in (("year", 3.15e7), ("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            v = seconds / size
            return f"{v:.3g} {unit}{'' if f'{v:.3g}' == '1' else 's'}"
    return f"{seconds:.3g} s"
