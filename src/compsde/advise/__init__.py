"""``compsde advise``: which compression method to train with, from the model's measured gradient noise.

Three parts, each usable alone:

* ``compsde.advise.probe``   the noise probe: tr Σ, ‖G‖², the tail index α̂, the SNR, the heterogeneity;
* ``compsde.advise.cost``    the cost model: the predicted seconds of one step of each method on a link;
* ``compsde.advise.quality`` the quality model: each method's stationary loss against DSGD's at the measured
  noise, and the η, B, N that close the gap (docs/theory.md §2–3, §4.6; ``compsde.sde.scaling``).

``advise`` (a user's ``nn.Module``, loss and data loader), ``advise_oracle`` (a library gradient oracle) and
``advise_config`` (a preset or config, as ``compsde advise`` takes) run the probe, then ``advise_from_probe``
ties the models into a table — method × predicted seconds per step × predicted loss gap × retuned η, B, N —
and a recommendation with its reasons (``Advice``; ``Advice.write`` saves advice.json).

The recommendation [heuristic]: among the methods the quality model does not flag or refuse, the one with the
least predicted time to reach DSGD's stationary loss, that is the seconds per step at the retuned setting
divided by the drift factor (sign methods: times the saturation of their drift at the median SNR). Without a
cost model, the method with the fewest bits per step among those within ``QUALITY_TOLERANCE`` of DSGD's loss.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compsde import algorithms
from compsde.advise import cost
from compsde.advise.cost import (
    Codec,
    Compute,
    GroupCosts,
    Link,
    StepPrediction,
    ddp_buckets,
    hookable,
    measure_codec,
    measure_compute,
    measure_group,
    measure_hook_overhead,
    method_algorithm,
    method_label,
    predict_step_seconds,
)
from compsde.advise.probe import NoiseProbe, plot_probe, probe_model, probe_oracle, tail_index
from compsde.advise.quality import NoiseStats, Prediction, Setting, predict_all, rank
from compsde.algorithms import Algorithm
from compsde.core.checks import check_path, describe
from compsde.core.files import atomic_write
from compsde.sde import scaling

__all__ = ["DEFAULT_METHODS", "QUALITY_TOLERANCE", "TIME_TOLERANCE", "Advice", "Codec", "Compute", "CostFn", "GroupCosts", "Link",
           "NoiseProbe", "StepPrediction", "ddp_buckets", "measure_codec", "measure_compute", "measure_group", "measure_hook_overhead", "predict_step_seconds", "advise", "advise_config",
           "advise_from_probe", "advise_oracle", "config_experiment", "decisive_agreement", "default_cost", "format_validation", "parse_method", "plot_probe",
           "probe_model", "probe_oracle", "tail_index", "validate"]

#: The candidates when none are given: name[:compressor[:key=value,...]] (``parse_method``).
DEFAULT_METHODS = ("dsgd", "dcsgd:rand-k:ratio=0.1", "dcsgd:natural", "dsignsgd", "dsignsgd-majority",
                   "ef:top-k:ratio=0.01", "ef:scaled-sign")
#: A method within this relative loss of DSGD's counts as matching it when no cost model is available.
QUALITY_TOLERANCE = 0.10
#: Predicted times within this relative difference count as equal: the better quality wins.
TIME_TOLERANCE = 0.05

#: (algorithm, setting) → predicted seconds of one step (None: unknown).
CostFn = Callable[[Algorithm, Setting], float | None]


def parse_method(spec: str) -> tuple[str, Algorithm]:
    """'dcsgd:rand-k:ratio=0.1' → ('dcsgd rand-k(ratio=0.1)', the algorithm): name[:compressor[:k=v,...]]."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--methods: each method is name[:compressor[:key=value,...]] (e.g. dcsgd:rand-k:ratio=0.1), "
                         f"got {describe(spec)}")
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) > 3:
        raise ValueError(f"--methods: {spec!r} has more than name:compressor:params")
    name, comp = parts[0], (parts[1] or None) if len(parts) > 1 else None
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in (parts[2].split(",") if len(parts) > 2 else []))):
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"--methods: {spec!r}: compressor parameters are key=value, got {item!r}")
        try:
            num = float(val)
        except ValueError:
            raise ValueError(f"--methods: {spec!r}: {key.strip()} must be a number, got {val!r}") from None
        params[key.strip()] = int(num) if num.is_integer() and key.strip() != "ratio" else num
    try:
        algo = algorithms.make(name, comp, **params)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--methods: {spec!r}: {e}") from None
    label = name + (f" {comp}" if comp else "") + (f"({', '.join(f'{k}={v:g}' for k, v in params.items())})" if params else "")
    return label, algo


def _methods(methods: Iterable[str | tuple[str, Algorithm] | Algorithm] | None) -> dict[str, Algorithm]:
    out: dict[str, Algorithm] = {}
    for m in DEFAULT_METHODS if methods is None else methods:
        if isinstance(m, str):
            label, algo = parse_method(m)
        elif isinstance(m, Algorithm):
            label, algo = m.label(), m
        elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], Algorithm):
            label, algo = str(m[0]), m[1]
        else:
            raise ValueError(f"methods: each is a spec string, an Algorithm or a (label, Algorithm) pair, got {describe(m)}")
        out[label] = algo
    if not out:
        raise ValueError("methods is empty: give at least one method (dsgd is added as the reference)")
    if not any(cost.is_dsgd(a) for a in out.values()):
        out = {"dsgd": algorithms.make("dsgd"), **out}  # the reference every gap is measured against
    return out


@dataclass
class Advice:
    """The table (one row per method, best first), the recommendation and its reasons, and what they came from.

    ``rows`` hold each method's full prediction (notes, levers, times); advice.json's ``table`` is their summary
    (``TABLE_KEYS``: what the report and the printed table show) and ``details`` the full rows."""

    rows: list[dict[str, Any]]
    recommendation: str
    reasons: list[str]
    probe: dict[str, Any]
    cost: dict[str, Any]
    setting: Setting
    predictions: list[Prediction] = field(default_factory=list)
    algorithms: dict[str, Algorithm] = field(default_factory=dict)
    #: ``validate``'s rows, when the advice was checked in the simulator.
    validation: list[dict[str, Any]] | None = None
    #: The probe itself when it was a ``NoiseProbe`` (``plot_probe`` draws its figures); not part of advice.json.
    noise_probe: NoiseProbe | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = {"table": [_table_row(r) for r in self.rows], "recommendation": self.recommendation,
               "reasons": self.reasons, "probe": self.probe, "cost": self.cost, "setting": self.setting.as_dict(),
               "details": self.rows}
        if self.validation is not None:
            out["validation"] = self.validation
        return out

    def write(self, path: str | Path) -> Path:
        """Write advice.json (into ``path`` if it is a directory or a path not ending in .json) and return its path."""
        p = Path(check_path("out", path))
        if p.is_dir() or p.suffix.lower() != ".json" or str(path).endswith(("/", "\\")):
            p = p / "advice.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, json.dumps(_jsonable(self.as_dict()), indent=2, ensure_ascii=False) + "\n")
        return p

    def format(self) -> str:
        head = ["method", "status", "s/step", "loss ×DSGD", "gap", "retuned η, B, N", "s to DSGD loss"]
        body = []
        for r in self.rows:
            ret = r["retuned"]
            body.append([r["method"], r["status"], _fmt(r["seconds_per_step"]), _fmt(r["loss_ratio"]),
                         _fmt(r["loss_gap"]),
                         "-" if ret is None else f"{ret['lr']:.3g}, {ret['batch']}, {ret['workers']}" + f" ({r['lever']})",
                         _fmt(r["seconds_to_dsgd_loss"])])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        s = self.setting
        out = [f"at η = {s.lr:g}, B = {s.batch}, N = {s.workers}; losses are excess losses at the plateau (OU model), "
               "see the notes in advice.json for what is derived and what is heuristic", line(head)]
        out += [line(b) for b in body]
        out.append(f"recommendation: {self.recommendation}")
        out += [f"  - {r}" for r in self.reasons]
        if self.validation is not None:
            out.append(format_validation(self.validation))
        return "\n".join(out)


def _table_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """A method's summary: the η it is predicted at (the sign methods' own), its predicted seconds per step, loss
    ratio and gap to DSGD, the retuned η, B, N and the lever, and the seconds to DSGD's loss."""
    ret = r["retuned"] or {}
    return {"method": r["method"], "status": r["status"], "lr": r["setting"]["lr"], "bits_per_step": r["bits_per_step"],
            "seconds_per_step": r["seconds_per_step"], "loss_ratio": r["loss_ratio"], "loss_gap": r["loss_gap"],
            "retuned_lr": ret.get("lr"), "retuned_batch": ret.get("batch"), "retuned_workers": ret.get("workers"),
            "lever": r["lever"], "seconds_to_dsgd_loss": r["seconds_to_dsgd_loss"]}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.3g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    """JSON without NaN/Infinity tokens: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# ---- the cost model: the one place it is called ----------------------------------------------------


def default_cost(dim: int, *, batch: int, link: Any = None, compute: Any = None) -> tuple[CostFn | None, dict[str, Any]]:
    """The cost model (``compsde.advise.cost.predict_step_seconds``) at ``dim`` parameters as a ``CostFn``, and what to
    record about it; (None, the reason) where it cannot run.

    ``link`` is a ``cost.Link``, (bandwidth bytes/s, latency s), or a ``cost.GroupCosts`` measured on real ranks
    (``cost.measure_group``, ``compsde.advise.ranks.measure_series``): its link, compute, gradient buckets and each
    method's hook overhead are used, and the codecs are timed with its ranks' torch threads. ``compute`` is the compute
    seconds of one step at batch ``batch`` (a number or a ``cost.Compute``; None: 0, communication and codec only,
    or the group's). At another batch B' the compute is scaled by B'/B [heuristic]. Each method's codec seconds are
    measured once per worker count and bucket size (``cost.measure_codec``)."""
    group = link if isinstance(link, cost.GroupCosts) else None
    buckets: list[int] = [dim]
    if group is not None:
        link = group.link
        compute = group.compute if compute is None else compute
        buckets = list(group.buckets)
        if sum(buckets) != dim:
            raise ValueError(f"the measured gradient buckets {buckets} hold {sum(buckets)} values, not the model's {dim}")
    if link is None:
        return None, {"available": False, "reason": "no link given: the bandwidth and latency between the workers "
                                                    "(--bandwidth, --latency), or measured on real ranks (--ranks)"}
    if not isinstance(link, cost.Link):
        if not (isinstance(link, (tuple, list)) and len(link) == 2):
            raise ValueError(f"link must be a compsde.advise.cost.Link, (bandwidth bytes/s, latency s) or GroupCosts, "
                             f"got {describe(link)}")
        link = cost.Link(*link)
    total = 0.0 if compute is None else float(compute.total if hasattr(compute, "total") else compute)
    if not (math.isfinite(total) and total >= 0):
        raise ValueError(f"compute must be the seconds of one step's compute, a finite number ≥ 0, got {describe(compute)}")
    parts = compute if isinstance(compute, cost.Compute) else None
    codecs: dict[tuple[str, int, int], Codec] = {}

    def fn(algorithm: Algorithm, s: Setting) -> float | None:
        key = cost.method_label(algorithm)
        for n in set(buckets):
            if (key, s.workers, n) not in codecs:
                with _threads(None if group is None else group.threads):
                    codecs[key, s.workers, n] = cost.measure_codec(algorithm, n, s.workers)
        scale = s.batch / batch
        c = (cost.Compute(parts.forward * scale, parts.backward * scale, parts.optimizer) if parts is not None
             else total * scale)
        overhead = 0.0 if group is None else group.overhead.get(key)
        if overhead is None:
            raise ValueError(f"no hook overhead was measured on the ranks for {key}")
        pred = cost.predict_step_seconds(algorithm, compute=c, link=link, workers=s.workers, buckets=buckets,
                                         codec=[codecs[key, s.workers, n] for n in buckets], hook_overhead=overhead)
        return float(pred.seconds)

    notes = ["[heuristic] the compute at a retuned batch B' is the measured compute × B'/B"]
    if compute is None:
        notes.append("no compute time: the seconds are communication and codec only")
    info: dict[str, Any] = {"available": True, "link": {"bandwidth": link.bandwidth, "latency": link.latency},
                            "compute_seconds": total, "batch": batch, "notes": notes}
    if group is not None:
        info["measured_on_ranks"] = group.as_dict()
        notes.append(f"[heuristic] the link, compute and hook overheads measured on {group.workers} ranks are used at "
                     "every N (the ring formulas carry N; contention of more ranks for a link is not measured)")
    return fn, info


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: left as they are)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _measure_compute(model: Any, loss_fn: Callable[[Any, Any], Any], inputs: Any, targets: Any, batch: int) -> float | None:
    """The compute seconds of one step of ``model`` at batch ``batch`` (``cost.measure_compute`` on a copy, on the
    given samples, scaled to ``batch`` samples); None without the cost model."""
    import copy

    n = int(inputs.shape[0])
    c = cost.measure_compute(copy.deepcopy(model), lambda m, b: loss_fn(m(b[0]), b[1]), (inputs, targets))
    return float(c.total) * batch / max(1, n)


# ---- the core ------------------------------------------------------------------------------------


def advise_from_probe(probe: Any, *, dim: int, lr: float, batch: int, workers: int,
                      methods: Iterable[str | tuple[str, Algorithm] | Algorithm] | None = None,
                      cost: CostFn | None = None, cost_info: Mapping[str, Any] | None = None,
                      sign_lr: float | None = None, spectrum: scaling.Spectrum | None = None) -> Advice:
    """The table and the recommendation from a probe's values (a ``NoiseProbe``, its ``as_dict()`` or a mapping
    of ``NoiseStats``' fields) at ``dim`` parameters and the current η, B, N. ``cost`` predicts one step's
    seconds (None: no time column; the recommendation then goes by bits, see the module doc)."""
    stats = NoiseStats.from_probe(probe)
    setting = Setting(lr, batch, workers)
    algos = _methods(methods)
    preds = rank(predict_all(algos, stats, setting, dim, sign_lr_given=sign_lr, spectrum=spectrum))
    rows = []
    def seconds(algo: Algorithm, s: Setting | None) -> float | None:
        if cost is None or s is None:
            return None
        try:
            return cost(algo, s)
        except (ValueError, NotImplementedError):  # a method the cost model does not cover
            return None

    for p in preds:
        algo = algos[p.label]
        t = seconds(algo, p.setting) if p.status != "unmodelled" else None
        t_ret = seconds(algo, p.retuned) if p.retuned is not None else t
        steps = _steps_factor(p)
        to_quality = None if t_ret is None or steps is None or p.status == "refused" else t_ret * steps
        rows.append({**p.as_dict(), "bits_per_step": algo.bits(dim), "seconds_per_step": t,
                     "seconds_per_step_retuned": t_ret, "steps_factor": steps, "seconds_to_dsgd_loss": to_quality})
    rec, reasons = _recommend(preds, rows, stats, cost is not None)
    probe_dict = stats.as_dict()
    if not isinstance(probe, (Mapping, NoiseStats)) and hasattr(probe, "as_dict"):
        probe_dict = {**probe_dict, "raw": probe.as_dict()}
    elif isinstance(probe, Mapping):
        probe_dict = {**probe_dict, "raw": dict(probe)}
    info = dict(cost_info) if cost_info is not None else {"available": cost is not None}
    return Advice(rows, rec, reasons, probe_dict, info, setting, preds, algos,
                  noise_probe=probe if isinstance(probe, NoiseProbe) else None)


def _steps_factor(p: Prediction) -> float | None:
    """Steps to DSGD's progress relative to DSGD: 1/drift factor, and for the sign methods 1/φ at the median
    SNR (the saturation of the sign far from the minimum) [heuristic]."""
    if p.drift_factor is None or p.drift_factor <= 0:
        return None
    f = 1.0 / p.drift_factor
    if p.saturation:
        f /= p.saturation.get(0.5, min(p.saturation.values()))
    return f


def _recommend(preds: Sequence[Prediction], rows: Sequence[dict[str, Any]], stats: NoiseStats,
               timed: bool) -> tuple[str, list[str]]:
    reasons: list[str] = []
    ref = next((p for p in preds if p.kind == "dsgd"), None)
    if ref is not None and ref.status == "refused":
        reasons.append(f"the gradient noise has infinite variance (tail index α̂ = {stats.tail_index:.3g} ± "
                       f"{stats.tail_index_se:.2g}): DSGD, DCSGD and EF have no finite stationary loss; the sign methods "
                       "stay bounded (docs/theory.md §2.7)")
    elif ref is not None and ref.status == "flagged":
        reasons.append(f"the gradient noise is heavy-tailed (α̂ = {stats.tail_index:.3g} ± {stats.tail_index_se:.2g}): "
                       "the variance-based predictions of DSGD, DCSGD and EF are unreliable")
    ok = [(p, r) for p, r in zip(preds, rows) if p.status == "ok"]
    if not ok:
        best = preds[0]
        reasons.append(f"every method is flagged or refused; {best.label} ranks first ({best.notes[0] if best.notes else ''})")
        return best.label, reasons
    timed_ok = [(p, r) for p, r in ok if r["seconds_to_dsgd_loss"] is not None]
    if timed_ok:
        fastest = min(r["seconds_to_dsgd_loss"] for _, r in timed_ok)
        near = [(p, r) for p, r in timed_ok if r["seconds_to_dsgd_loss"] <= (1.0 + TIME_TOLERANCE) * fastest]
        p, r = near[0]  # the best-ranked of those within TIME_TOLERANCE of the fastest
        target = "DSGD's stationary loss" if ref is None or ref.status == "ok" else "a finite stationary loss"
        if len(near) > 1:
            reasons.append(f"{', '.join(q.label for q, _ in near)} are within {100 * TIME_TOLERANCE:g} % of the fastest: "
                           f"{p.label} ranks best on quality")
        reasons.append(f"{p.label} reaches {target} in the least predicted time: "
                       f"{r['seconds_to_dsgd_loss']:.3g} s per DSGD step of progress ({_fmt(r['seconds_per_step_retuned'])} s per step"
                       + (f" at the retuned {p.lever}" if p.retuned is not None else "")
                       + f" × {r['steps_factor']:.3g} steps relative to DSGD) [heuristic combination]")
        for q, rq in ok:
            if q is not p:
                reasons.append(f"{q.label}: {_fmt(rq['seconds_to_dsgd_loss'])} (loss ×{_fmt(q.loss_ratio)} at "
                               f"{_fmt(rq['seconds_per_step'])} s per step)")
        missing = [q.label for q, rq in ok if rq["seconds_to_dsgd_loss"] is None]
        if missing:
            reasons.append(f"no predicted time for {', '.join(missing)} (not compared)")
    else:
        why = "no cost model" if not timed else "no time to DSGD's quality could be predicted for these methods"
        good = [(p, r) for p, r in ok if p.loss_ratio is not None and p.loss_ratio <= 1.0 + QUALITY_TOLERANCE]
        if good:
            p, r = min(good, key=lambda pr: (pr[1]["bits_per_step"], pr[0].rank_ratio))
            reasons.append(f"{why}: chose by bits per step among the methods within {100 * QUALITY_TOLERANCE:g} % of "
                           "DSGD's stationary loss")
        else:
            p, r = ok[0]
            reasons.append(f"{why}, and no method within {100 * QUALITY_TOLERANCE:g} % of DSGD's stationary loss: chose "
                           "the best-ranked")
        reasons.append(f"{p.label}: {r['bits_per_step']} bits per step"
                       + (f", loss ×{_fmt(p.loss_ratio)}" if p.loss_ratio is not None else ", loss not predicted"))
    if p.retuned is not None:
        s = p.retuned
        reasons.append(f"{p.label} needs η = {s.lr:.4g}, B = {s.batch}, N = {s.workers} ({p.lever}) to match DSGD's loss")
    for q in preds:
        if q.status in ("refused", "flagged") and q.notes:
            reasons.append(f"{q.label} {q.status}: {q.notes[0]}")
    return p.label, reasons


# ---- the entry points that run the probe ----------------------------------------------------------


def advise(model: Any = None, loss_fn: Any = None, loader: Any = None, *, lr: float, batch: int, workers: int,
           methods: Iterable[str | tuple[str, Algorithm] | Algorithm] | None = None, probe: Any = None,
           cost: CostFn | None = None, link: Any = None, compute: float | None = None, sign_lr: float | None = None,
           spectrum: scaling.Spectrum | None = None, out: str | Path | None = None) -> Advice:
    """Advice for a user's ``nn.Module`` trained with ``loss_fn`` (outputs, targets) → loss on ``loader`` ((inputs,
    targets) batches) at learning rate ``lr``, per-worker batch ``batch`` and ``workers`` workers.

    Runs ``compsde.advise.probe.probe_model`` (unless ``probe`` gives its values), the cost model (``cost``, or
    ``compsde.advise.cost`` on ``link`` — a ``Link`` or (bandwidth bytes/s, latency s) — with the compute seconds
    ``compute``, measured on the loader's first batch when not given) and the quality model; writes advice.json
    to ``out`` if given.

    On the real group (under ``torchrun``), measure the link, the compute, the buckets and the hook overheads there
    and pass them as ``link``: every rank calls ``costs = measure_group(model, lambda m, b: loss_fn(m(b[0]), b[1]),
    (inputs, targets), methods)``, then one rank ``advise(model, loss_fn, loader, ..., link=costs)``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {describe(model)}")
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if dim == 0:
        raise ValueError("model has no trainable parameters")
    measure = cost is None and link is not None and compute is None and not isinstance(link, GroupCosts)
    if probe is None or measure:
        if not callable(loss_fn):
            raise ValueError(f"loss_fn must be a function (outputs, targets) → scalar loss, got {describe(loss_fn)}")
    if probe is None:
        probe = probe_model(model, loss_fn, loader)
    if measure:
        try:
            inputs, targets = next(iter(loader))
        except (TypeError, ValueError, StopIteration):
            raise ValueError("loader must yield (inputs, targets) batches to measure the compute time (or pass compute=)") from None
        compute = _measure_compute(model, loss_fn, inputs, targets, batch)
    return _finish(probe, dim, lr, batch, workers, methods, cost, link, compute, sign_lr, spectrum, out)


def advise_oracle(oracle: Any, params: Any = None, *, lr: float, batch: int | None = None, workers: int | None = None,
                  methods: Iterable[str | tuple[str, Algorithm] | Algorithm] | None = None, probe: Any = None,
                  cost: CostFn | None = None, link: Any = None, compute: float | None = None,
                  sign_lr: float | None = None, spectrum: scaling.Spectrum | None = None,
                  out: str | Path | None = None) -> Advice:
    """Advice for a library gradient oracle (``compsde.objectives``) from ``params`` (default its initial point;
    the probe warms up from there); B and N default to the oracle's. The compute time of a network's step is
    measured on its model when ``link`` is given and ``compute`` is not (other oracles: 0)."""
    from compsde.objectives.network import NetworkOracle
    from compsde.objectives.oracle import GradientOracle

    if not isinstance(oracle, GradientOracle):
        raise ValueError(f"oracle must be a compsde gradient oracle (Oracle or NetworkOracle), got {describe(oracle)}")
    b = oracle.batch if batch is None else batch
    if probe is None:
        probe = probe_oracle(oracle, oracle.x0() if params is None else params)
    if (cost is None and link is not None and compute is None and not isinstance(link, GroupCosts)
            and isinstance(oracle, NetworkOracle)):
        compute = _measure_compute(oracle.base_model, oracle.loss_fn, oracle.x_train[:b], oracle.y_train[:b], b)
    return _finish(probe, int(oracle.dim), lr, b, oracle.workers if workers is None else workers, methods, cost, link,
                   compute, sign_lr, spectrum, out)


def config_experiment(source: Any, overrides: Iterable[str] = (), *, series: int = 0, validate_steps: int | None = None,
                      validate_repeats: int = 2, ranks: int | None = None, throttle: str | None = None,
                      methods: Iterable[str | tuple[str, Algorithm] | Algorithm] | None = None,
                      link: Any = None, compute: Any = None, cost: Any = None) -> Any:
    """The built ``Experiment`` that ``advise_config`` advises on (``source``: a preset, config file, run folder,
    config dict or an ``Experiment`` already built, which ``overrides`` must then leave empty), after checking
    ``series``, the ``validate`` sizes, the ``ranks`` to measure on (``compsde.advise.ranks.check_series``) and the
    ``methods``: every check that needs no probe, so a caller can make them before it writes anything."""
    _methods(methods)
    from compsde.core.checks import check_int
    from compsde.experiments import build

    if validate_steps is not None:  # before the probe runs
        check_int("--validate steps", validate_steps, min=4, max=10**6)
    check_int("--repeats", validate_repeats, min=1, max=1 << 16)
    if isinstance(source, build.Experiment):
        if list(overrides):
            raise ValueError("overrides apply to a config, not to a built Experiment: give the preset or config instead")
        exp = source
    else:
        exp = build.load(source, overrides)
    if isinstance(series, bool) or not isinstance(series, int) or not 0 <= series < len(exp.series):
        raise ValueError(f"--series must be a series index in 0..{len(exp.series) - 1} of {exp.name!r}, got {describe(series)}")
    if throttle is not None and ranks is None:
        raise ValueError("--throttle builds a link between ranks: give --ranks 2 with it")
    if ranks is not None:
        from compsde.advise.ranks import check_series

        if link is not None or compute is not None or cost is not None:
            raise ValueError("--ranks measures the link and the compute: leave out --bandwidth, --latency and --compute "
                             "(and cost=)")
        check_series(exp, series, ranks, throttle)
    return exp


def advise_config(source: Any, overrides: Iterable[str] = (), *, series: int = 0, validate_steps: int | None = None,
                  validate_repeats: int = 2, ranks: int | None = None, throttle: str | None = None,
                  **kwargs: Any) -> Advice:
    """Advice for series ``series`` of a preset, config file, run folder, config dict or built ``Experiment``
    (``compsde advise``): its oracle, learning rate, batch and workers. ``kwargs`` go to ``advise_oracle``.

    With ``ranks``, the cost model's link, compute, buckets and hook overheads are measured on that many local
    processes running the series' network in DDP (``compsde.advise.ranks.measure_series``; over a link throttled to
    ``throttle``, e.g. "1gbit", when given: 2 ranks, root). With ``validate_steps``, the best-ranked methods are then
    run in the simulator (``validate``: their losses), and with ``ranks`` also timed on the ranks (their seconds per
    step beside the prediction at N = ``ranks``); the advice holds the comparison."""
    exp = config_experiment(source, overrides, series=series, validate_steps=validate_steps,
                            validate_repeats=validate_repeats, ranks=ranks, throttle=throttle,
                            methods=kwargs.get("methods"), link=kwargs.get("link"), compute=kwargs.get("compute"),
                            cost=kwargs.get("cost"))
    spec = exp.series[series]
    group = None
    if ranks is not None:
        from compsde.advise import ranks as ranks_mod

        methods = kwargs.get("methods")
        specs = list(DEFAULT_METHODS if methods is None else methods)
        if not all(isinstance(m, str) for m in specs):
            raise ValueError(f"with ranks, give methods as specs name[:compressor[:k=v,...]], got {describe(methods)}")
        labels = {parse_method(m)[0]: m for m in specs}
        if kwargs.get("probe") is None:
            kwargs["probe"] = probe_oracle(spec.oracle, spec.oracle.x0())
        timed: list[str] = []
        if validate_steps is not None:  # the methods ``validate`` runs, from the ranking without a cost model
            ranking = advise_oracle(spec.oracle, lr=float(spec.config["lr"]), batch=spec.batch, workers=spec.workers,
                                    **{**kwargs, "out": None})
            timed = [labels.get(p.label, "dsgd") for p in _validated(ranking.predictions)]
        group = ranks_mod.measure_series(exp, series, list(dict.fromkeys(["dsgd", *specs])), ranks=ranks,
                                         throttle=throttle, timed=timed)
        kwargs["link"] = group
    adv = advise_oracle(spec.oracle, lr=float(spec.config["lr"]), batch=spec.batch, workers=spec.workers, **kwargs)
    if group is not None:
        adv.cost["measured_on_ranks"]["throttle"] = throttle
    if validate_steps is not None:
        adv.validation = validate(adv, spec.problem, spec.noise, steps=validate_steps, repeats=validate_repeats)
        if group is not None:
            _add_step_times(adv, group, spec.batch)
        if kwargs.get("out") is not None:
            adv.write(kwargs["out"])
    return adv


def _add_step_times(adv: Advice, group: cost.GroupCosts, batch: int) -> None:
    """Beside each validated method: its seconds per step measured on the ranks and the cost model's prediction at
    the same size (N = the ranks, the series' batch)."""
    assert adv.validation is not None
    fn, _ = default_cost(sum(group.buckets), batch=batch, link=group)
    assert fn is not None
    for row in adv.validation:
        algo = adv.algorithms[row["method"]]
        try:
            key = cost.method_label(cost.method_algorithm(algo))
        except ValueError:  # no DDP hook runs it: not timed
            row["measured_seconds_per_step"] = row["predicted_seconds_per_step_on_ranks"] = None
            continue
        row["measured_seconds_per_step"] = group.measured.get(key)
        row["predicted_seconds_per_step_on_ranks"] = fn(algo, Setting(row["setting"]["lr"], batch, group.workers))


def _finish(probe: Any, dim: int, lr: float, batch: int, workers: int,
            methods: Iterable[str | tuple[str, Algorithm] | Algorithm] | None, cost: CostFn | None, link: Any,
            compute: float | None, sign_lr: float | None, spectrum: scaling.Spectrum | None,
            out: str | Path | None) -> Advice:
    info: dict[str, Any] | None = None
    if cost is None and isinstance(link, GroupCosts):
        missing = [label for label, a in _methods(methods).items() if hookable(a) and
                   method_label(method_algorithm(a)) not in link.overhead]
        if missing:
            raise ValueError(f"the GroupCosts given as link hold no hook overhead for {', '.join(missing)}: measure "
                             "every method on the group (measure_group(..., methods)) before advising on it")
    if cost is None:
        cost, info = default_cost(dim, batch=batch, link=link, compute=compute)
    adv = advise_from_probe(probe, dim=dim, lr=lr, batch=batch, workers=workers, methods=methods, cost=cost,
                            cost_info=info, sign_lr=sign_lr, spectrum=spectrum)
    if out is not None:
        adv.write(out)
    return adv


# ---- checking the advice instead of trusting it ----------------------------------------------------


def validate(advice: Advice, problem: Any, noise: Any, *, steps: int, top: int = 3, repeats: int = 2,
             seed: int = 0) -> list[dict[str, Any]]:
    """Run DSGD and the ``top`` best-ranked other methods of ``advice`` (each at its row's η, B, N: the sign methods
    at their matched learning rate) for ``steps`` steps in the simulator on ``problem`` (a ``Network`` or a problem
    of ``compsde.objectives.problems``) with ``noise``, and return per method the predicted loss ratio to DSGD and
    the measured final loss (the mean training loss over the last quarter of the run, median over ``repeats``).
    The measured loss includes the plateau's own loss, which the predicted excess loss does not: compare orders."""
    from compsde.algorithms.schedules import Schedule
    from compsde.core.checks import check_int
    from compsde.objectives import Oracle
    from compsde.objectives.network import Network
    from compsde.sim.simulator import simulate

    check_int("--validate steps", steps, min=4, max=10**6)
    check_int("top", top, min=1)
    out: list[dict[str, Any]] = []
    chosen = _validated(advice.predictions, top)
    for p in chosen:
        s = p.setting
        oracle = (problem.oracle(noise, workers=s.workers, batch=s.batch) if isinstance(problem, Network)
                  else Oracle(problem, noise, workers=s.workers, batch=s.batch))
        tr = simulate(oracle, advice.algorithms[p.label], Schedule("constant", s.lr, steps), repeats=repeats, seed=seed,
                      log_every=max(1, steps // 40))
        keep = tr.steps >= (3 * steps) // 4
        out.append({"method": p.label, "status": p.status, "setting": s.as_dict(), "predicted_loss_ratio": p.loss_ratio,
                    "predicted_rank": advice.predictions.index(p), "measured_final_loss": float(tr.loss[keep].mean(0).median())})
    order = sorted(range(len(out)), key=lambda i: out[i]["measured_final_loss"])
    for rank_measured, i in enumerate(order):
        out[i]["measured_rank"] = rank_measured
    return out


def _validated(predictions: Sequence[Prediction], top: int = 3) -> list[Prediction]:
    """The methods ``validate`` runs: DSGD and the ``top`` best-ranked others that the quality model covers."""
    chosen = [p for p in predictions if p.kind == "dsgd"][:1]
    return chosen + [p for p in predictions if p.kind != "dsgd" and p.status != "unmodelled"][:top]


def format_validation(rows: Sequence[dict[str, Any]]) -> str:
    timed = any("measured_seconds_per_step" in r for r in rows)
    head = f"{'method':<28}{'status':<10}{'lr':>10}{'B':>6}{'N':>5}{'pred. loss ×DSGD':>18}{'measured loss':>15}"
    if timed:
        head += f"{'pred. ms/step':>15}{'measured ms/step':>18}{'pred./meas.':>13}"
    lines = ["validation (simulator; measured = mean training loss over the last quarter, median over repetitions):", head]
    for r in rows:
        s = r["setting"]
        line = (f"{r['method']:<28}{r['status']:<10}{s['lr']:>10.4g}{s['batch']:>6}{s['workers']:>5}"
                f"{_fmt(r['predicted_loss_ratio']):>18}{_fmt(r['measured_final_loss']):>15}")
        if timed:
            p, m = r.get("predicted_seconds_per_step_on_ranks"), r.get("measured_seconds_per_step")
            line += (f"{_fmt(None if p is None else 1e3 * p):>15}{_fmt(None if m is None else 1e3 * m):>18}"
                     f"{_fmt(None if p is None or not m else p / m):>13}")
        lines.append(line)
    if timed:
        lines.append("ms/step: one DDP step with the method's hook on the ranks (median of the timed steps) and the cost "
                     "model's prediction for those ranks, at the series' batch")
    pred = [r["method"] for r in sorted(rows, key=lambda r: r["predicted_rank"])]
    meas = [r["method"] for r in sorted(rows, key=lambda r: r["measured_rank"])]
    lines.append(f"predicted order: {', '.join(pred)}; measured order: {', '.join(meas)}")
    agree, pairs = decisive_agreement(rows)
    lines.append(f"pairs the model orders decisively (another status, or loss ratios more than {100 * DECISIVE:g} % apart): "
                 f"{agree} of {pairs} come out in the predicted order" + (" (the rest are predicted ties)" if pairs else ""))
    return "\n".join(lines)


#: Predicted loss ratios closer than this (relative) count as a tie when the advice is checked.
DECISIVE = 0.10


def decisive_agreement(rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(agreeing, all) pairs of ``validate`` rows that the quality model orders decisively: a different status, or
    predicted loss ratios more than ``DECISIVE`` apart; agreeing when the measured losses have the same order."""
    ranked = sorted(rows, key=lambda r: r["predicted_rank"])
    agree = pairs = 0
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            ra, rb = a["predicted_loss_ratio"], b["predicted_loss_ratio"]
            tie = a["status"] == b["status"] and (ra is None or rb is None or rb <= (1 + DECISIVE) * ra)
            if not tie:
                pairs += 1
                agree += a["measured_final_loss"] < b["measured_final_loss"]
    return agree, pairs
