"""The gradient-noise probe: what a model's stochastic gradients look like, measured along a short warm-up.

``probe_model(model, loss_fn, loader, ...)`` (a user's ``nn.Module``, a loss and a data loader) and
``probe_oracle(oracle, params, ...)`` (the library's oracles, ``compsde.objectives``) run a few plain SGD
steps and, at ``points`` steps of that warm-up, draw ``repetitions`` big batches of ``big_batch`` samples,
each made of k = big_batch / small_batch small batches of ``small_batch`` samples, from every worker. Every
statistic below comes from the k small-batch gradients g₁ … g_k of each big batch (their mean is the
big-batch gradient), so memory stays O(d) per worker whatever the batch sizes.

**Gradient norm, noise trace and the simple noise scale** (McCandlish et al. 2018, "An empirical model of
large-batch training", appendix A.1; the estimators of gpt-neox's ``GradientNoiseScale``). For a batch of
B samples drawn independently, E‖g_B‖² = ‖G‖² + tr Σ / B, with Σ the per-sample gradient covariance. With
m = mean_i ‖g_i‖² (batch B_s) and b = ‖mean_i g_i‖² (batch B_b = k B_s) of one big batch,

    tr Σ ≈ S = (m − b) / (1/B_s − 1/B_b),      ‖G‖² ≈ (B_b b − B_s m) / (B_b − B_s)

are unbiased, and B_simple = tr Σ / ‖G‖² is the ratio of their means over the repetitions. A loader that
draws without replacement from n samples shrinks the variance of a batch of B by (n − B)/(n − 1); the probe
ignores that factor, which is 1 − O(B/n).

**Several workers** (per-worker loaders, or an oracle with N > 1 workers: heterogeneous shards). Each big
batch comes from one worker's shard, so S and the ‖G‖² formula estimate tr Σ_i and ‖G_i‖² of that
worker; averaged over a round of one big batch per worker they give the mean tr Σ_i (what each worker's
minibatch carries) and (1/N) Σ ‖G_i‖² = ‖G‖² + H, with the heterogeneity H = (1/N) Σ ‖G_i − G‖². H is
estimated from the workers' mean big-batch gradients ĝ_i (n_i big batches each) without bias:
(1/N) Σ ‖ĝ_i − ĝ‖² − (1/N)(1 − 1/N) Σ_i tr Σ_i/(n_i B_b), so ‖G‖² = mean ‖G_i‖² − Ĥ, and the probe
reports the heterogeneity H/‖G‖². Standard errors of these (tr Σ, ‖G‖², B_simple, H/‖G‖²) are
delete-one-round jackknife errors over the rounds (a round is one big batch per worker: a single loader's
round is one repetition); for one worker the jackknife of the ratio of means is the delta method's error
up to O(1/R).

**Per-coordinate signal-to-noise** r_j = |G_j| / σ_j, σ_j² the per-sample variance of coordinate j: the
quantity that sets DSignSGD's drift, E sign(g_j) = 2F(√B r_j) − 1 at batch B (docs/theory.md §2.7). σ_j² is
B_s times the within-worker variance of the small-batch gradients; G_j² is estimated by ĝ_j² − σ̂_j²/n_s
(n_s samples in all: the bias of the squared mean removed), clipped at 0. The probe reports quantiles of r_j
over the coordinates that move at all (σ_j > 0 or G_j ≠ 0), and, as its error, the standard error of one
coordinate's r at that quantile, √(1/n_s + r²/(2(n − N))) for n small batches (Gaussian-noise
approximation; heavier tails make it larger, and for infinite-variance noise r is not defined: it shrinks
towards 0 as n grows).

**Tail index** α of the gradient noise by the estimator of Mohammadi, Mohammadpour and Ogata (2015,
"On estimating the tail index and the spectral measure of multivariate α-stable distributions",
Corollary 2.4) as Şimşekli, Sagun and Gürbüzbalaban use it (2019, "A tail-index analysis of stochastic
gradient noise in deep neural networks", §4, Theorem 2): for K = m·K₂ i.i.d. symmetric strictly α-stable
X_i and group sums Y_l = Σ_{i ∈ group l} X_i of m consecutive samples,

    1/α̂ = (1/log m) ( (1/K₂) Σ_l log|Y_l| − (1/K) Σ_i log|X_i| ),

which converges to 1/α. The noise samples here are differences g_{2i} − g_{2i+1} of two small-batch
gradients of the same big batch: exactly centred and symmetric whatever E g is, and α-stable with the same
α as the noise when the noise is. Groups sum m differences of one coordinate (of one worker); every
coordinate gives one such estimate per group, and a coordinate whose group holds an exact zero (a
parameter the batch does not reach) is left out of that group. The estimate pools all coordinates; its
standard error treats each group (m disjoint pairs of draws, shared by all coordinates) as one
independent unit: 1/α̂ is the mean over units of (mean log|Y| − mean log|X|)/log m, so its error is their
standard deviation over √units, and α̂'s is that times α̂². α ≤ 2 for stable laws: noise of finite variance
gives α̂ → 2 as m grows, with a bias of order 1/log m from the shape of its law (for differences of
Student-t ν = 8 draws and m = 8, α̂ ≈ 1.9; Gaussian noise gives 2 exactly in expectation), while Cauchy
noise (ν = 1, α = 1) gives 1.

Across the probe points the values are averaged (``NoiseProbe.per_point`` keeps each point; standard
errors combine as independent), except the tail index, which pools the groups of every point.
``plot_probe`` draws the figures of a probe into a directory.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compsde.core.checks import MAX_WORKERS, check_callable, check_int, check_number, check_path, check_seed, describe
from compsde.core.tensors import check_memory

__all__ = ["PROBE_FIGURES", "QUANTILES", "NoiseProbe", "plot_probe", "probe_model", "probe_oracle", "tail_index"]

#: The quantiles of the per-coordinate signal-to-noise ratio a probe reports.
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
#: The most small-batch gradients a probe draws in all (points × workers × repetitions × k): a guard
#: against settings that would run for hours.
MAX_DRAWS = 1 << 22


@dataclass
class NoiseProbe:
    """What a probe measured (see the module doc); every ``*_se`` is that quantity's standard error.

    Per-sample quantities: ``trace_sigma`` = tr Σ (a batch of B has noise trace tr Σ / B) and the
    signal-to-noise ratios ``snr`` (r_j at batch 1: multiply by √B for batch B). ``heterogeneity`` is
    (1/N) Σ ‖G_i − G‖² / ‖G‖² (None for one worker). ``tail_index`` is α̂ (≤ 2 in theory; finite-variance
    noise gives about 2), with ``tail_inverse`` = 1/α̂, the estimator's own scale, where the error is
    symmetric. ``per_point`` holds every quantity at each probed step.

    ``grad_norm_sq`` is unbiased, so where the noise swamps the signal it can come out near or below 0 (compare
    it with its error): B_simple is then meaningless. For noise of infinite variance (α̂ clearly below 2) tr Σ,
    B_simple and the signal-to-noise ratios are not defined either, and their estimates grow (or shrink) with
    the number of draws; the tail index is the quantity to read there.
    """

    small_batch: int
    big_batch: int
    repetitions: int
    workers: int
    tail_group: int
    steps: list[int]
    grad_norm_sq: float
    grad_norm_sq_se: float
    trace_sigma: float
    trace_sigma_se: float
    b_simple: float
    b_simple_se: float
    snr: dict[str, float]
    snr_se: dict[str, float]
    snr_coordinates: int
    tail_index: float
    tail_index_se: float
    tail_inverse: float
    tail_inverse_se: float
    tail_units: int
    heterogeneity: float | None = None
    heterogeneity_se: float | None = None
    warmup_loss: list[float] = field(default_factory=list)
    per_point: list[dict[str, Any]] = field(default_factory=list)
    se_method: str = ("jackknife over rounds (one big batch per worker) for grad_norm_sq, trace_sigma, b_simple, "
                      "heterogeneity; units of m pairs for the tail index; per-coordinate delta method for snr")

    @property
    def snr_median(self) -> float:
        return self.snr["0.5"]

    def as_dict(self) -> dict[str, Any]:
        """The probe as JSON-ready data (non-finite numbers become None)."""
        return _jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v


# ---- the tail index ------------------------------------------------------------------------------


def _tail_units(x: Tensor, m: int) -> Tensor:
    """Per group of m consecutive rows of x (K₂·m, d) — centred symmetric noise samples, one column per
    coordinate — the unit statistic (mean_j log|Y_j| − mean_{i,j} log|X_ij|)/log m over the columns with no
    exact zero in the group; (K₂,) float64, NaN for a group with no usable column."""
    k2 = x.shape[0] // m
    g = x[: k2 * m].reshape(k2, m, -1).double()
    y = g.sum(1)  # (K₂, d)
    ok = (g != 0).all(1) & (y != 0)
    logx = g.abs().clamp_min(torch.finfo(torch.float64).tiny).log().mean(1)  # per column, mean over the m samples
    logy = y.abs().clamp_min(torch.finfo(torch.float64).tiny).log()
    cnt = ok.sum(1)
    diff = torch.where(ok, logy - logx, torch.zeros_like(logy)).sum(1) / cnt.clamp_min(1)
    return torch.where(cnt > 0, diff / math.log(m), torch.full_like(diff, math.nan))


def _tail_summary(units: Tensor) -> tuple[float, float, float, float, int]:
    """(α̂, se, 1/α̂, se) from unit statistics (NaN units dropped) and the number of units."""
    u = units[~torch.isnan(units)]
    n = int(u.numel())
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    inv = float(u.mean())
    inv_se = float(u.std() / math.sqrt(n)) if n > 1 else math.nan
    alpha = 1.0 / inv if inv > 0 else math.inf
    return alpha, inv_se * alpha * alpha, inv, inv_se, n


def tail_index(noise: Tensor, group: int) -> tuple[float, float]:
    """α̂ and its standard error by the Mohammadi estimator (module doc) from centred noise samples
    ``noise`` (n, d): rows are i.i.d. draws, columns coordinates (each its own scale), n = group·K₂ (extra
    rows are dropped). Each block of ``group`` rows is one independent unit of the error."""
    if not isinstance(noise, Tensor) or noise.dim() not in (1, 2) or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point tensor of shape (n,) or (n, d), got {describe(noise)}")
    check_int("group", group, min=2)
    x = noise.reshape(noise.shape[0], -1)
    if x.shape[0] < 2 * group:
        raise ValueError(f"noise has {x.shape[0]} samples: the tail index needs at least 2 groups of group = {group}")
    a, a_se, _, _, _ = _tail_summary(_tail_units(x, group))
    return a, a_se


# ---- the statistics of one probe point --------------------------------------------------------------


class _Point:
    """Accumulates one point's draws: per round and worker the big batch's (m, b) and mean gradient, the
    workers' sums of small-batch gradients, the pooled sum of squares and the tail's pairs and groups."""

    def __init__(self, workers: int, dim: int, small: int, big: int, group: int, keep_means: bool,
                 device: torch.device) -> None:
        self.n, self.d, self.b_small, self.b_big, self.m = workers, dim, small, big, group
        self.ms: list[list[float]] = []  # per round: m = mean_i ‖g_i‖² per worker
        self.bs: list[list[float]] = []  # per round: b = ‖mean_i g_i‖² per worker
        self.means: list[Tensor] = []  # per round: (N, d) big-batch means (several workers only)
        self.keep_means = keep_means
        self.sum = torch.zeros(workers, dim, dtype=torch.float64, device=device)  # where the gradients are
        self.sumsq = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count = [0] * workers
        self.pairs: list[list[Tensor]] = [[] for _ in range(workers)]
        self.units: list[float] = []

    def add_round(self, grads: Sequence[Tensor]) -> None:
        """One round: worker i's k small-batch gradients grads[i] (k, d)."""
        ms, bs, means = [], [], []
        for i, g in enumerate(grads):
            g = g.double()
            mean = g.mean(0)
            ms.append(float(g.square().sum(1).mean()))
            bs.append(float(mean.square().sum()))
            means.append(mean)
            self.sum[i] += g.sum(0)
            self.sumsq += g.square().sum(0)
            self.count[i] += g.shape[0]
            k2 = g.shape[0] // 2
            if k2:
                self.pairs[i].append(g[0: 2 * k2: 2] - g[1: 2 * k2: 2])
                self._flush(i)
        self.ms.append(ms)
        self.bs.append(bs)
        if self.keep_means:
            self.means.append(torch.stack(means))

    def _flush(self, i: int) -> None:
        have = sum(p.shape[0] for p in self.pairs[i])
        if have < self.m:
            return
        x = torch.cat(self.pairs[i])
        full = (x.shape[0] // self.m) * self.m
        self.units.extend(_tail_units(x[:full], self.m).tolist())
        self.pairs[i] = [x[full:]] if full < x.shape[0] else []

    # -- estimates --
    def _estimates(self, rounds: list[int], means: Tensor | None) -> dict[str, float]:
        """The estimates from ``rounds``; ``means`` (N, d): the workers' mean big-batch gradients over them."""
        bs, bb, n = self.b_small, self.b_big, self.n
        m = torch.tensor([self.ms[q] for q in rounds], dtype=torch.float64)  # (Q, N)
        b = torch.tensor([self.bs[q] for q in rounds], dtype=torch.float64)
        s = (m - b) / (1.0 / bs - 1.0 / bb)
        g2 = (bb * b - bs * m) / (bb - bs)
        tr = float(s.mean())
        gsq = float(g2.mean())
        het = math.nan
        if n > 1 and means is not None:
            raw = float((means - means.mean(0)).square().sum(1).mean())
            h = raw - (1.0 / n) * (1.0 - 1.0 / n) * float(s.mean(0).sum()) / (len(rounds) * bb)
            gsq -= h
            het = h / gsq if gsq != 0 else math.nan
        return {"trace_sigma": tr, "grad_norm_sq": gsq, "b_simple": tr / gsq if gsq != 0 else math.nan,
                "heterogeneity": het}

    def result(self, step: int) -> dict[str, Any]:
        rounds = list(range(len(self.ms)))
        q = len(rounds)
        total = torch.stack(self.means).sum(0) if self.keep_means else None  # (N, d)
        est = self._estimates(rounds, None if total is None else total / q)
        out: dict[str, Any] = {"step": step}
        drops = [self._estimates(rounds[:j] + rounds[j + 1:], None if total is None else (total - self.means[j]) / (q - 1))
                 for j in rounds]  # delete-one-round jackknife
        for key, val in est.items():
            jack = torch.tensor([dr[key] for dr in drops], dtype=torch.float64)
            se = float(((q - 1) / q * (jack - jack.mean()).square().sum()).sqrt())
            out[key], out[key + "_se"] = val, se
        if self.n == 1:
            out["heterogeneity"] = out["heterogeneity_se"] = None
        out.update(self._snr())
        alpha, alpha_se, inv, inv_se, units = _tail_summary(torch.tensor(self.units, dtype=torch.float64))
        out.update({"tail_index": alpha, "tail_index_se": alpha_se, "tail_inverse": inv, "tail_inverse_se": inv_se,
                    "tail_units": units})
        return out

    def _snr(self) -> dict[str, Any]:
        counts = torch.tensor(self.count, dtype=torch.float64, device=self.sum.device)
        n_all = float(counts.sum())
        ss = self.sumsq - (self.sum.square() / counts.view(-1, 1)).sum(0)
        var_small = ss.clamp_min(0) / max(n_all - self.n, 1.0)  # within-worker variance of a small-batch gradient
        sigma2 = self.b_small * var_small  # per sample
        mean = (self.sum / counts.view(-1, 1)).mean(0)
        samples = n_all * self.b_small
        signal2 = (mean.square() - sigma2 / samples).clamp_min(0)
        live = (sigma2 > 0) | (mean != 0)
        r = torch.where(sigma2 > 0, signal2.sqrt() / sigma2.clamp_min(1e-300).sqrt(), torch.full_like(mean, math.inf))[live]
        snr: dict[str, float] = {}
        snr_se: dict[str, float] = {}
        if r.numel():
            srt = r.sort().values
            for qq in QUANTILES:
                v = float(srt[min(int(round(qq * (srt.numel() - 1))), srt.numel() - 1)])
                snr[f"{qq:g}"] = v
                snr_se[f"{qq:g}"] = math.sqrt(1.0 / samples + v * v / (2.0 * max(n_all - self.n, 1.0))) \
                    if math.isfinite(v) else math.nan
        else:
            snr = {f"{qq:g}": math.nan for qq in QUANTILES}
            snr_se = dict(snr)
        return {"snr": snr, "snr_se": snr_se, "snr_coordinates": int(live.sum())}


def _combine(points: list[dict[str, Any]], key: str) -> tuple[float, float]:
    vals = [p[key] for p in points]
    ses = [p[key + "_se"] for p in points]
    if any(v is None for v in vals):
        return math.nan, math.nan
    n = len(vals)
    return sum(vals) / n, math.sqrt(sum(s * s for s in ses)) / n


def _summarise(points: list[dict[str, Any]], all_units: list[float], *, small: int, big: int, reps: int, workers: int,
               group: int, warmup_loss: list[float]) -> NoiseProbe:
    gsq, gsq_se = _combine(points, "grad_norm_sq")
    tr, tr_se = _combine(points, "trace_sigma")
    bsimple, bsimple_se = _combine(points, "b_simple")
    het = het_se = None
    if workers > 1:
        het, het_se = _combine(points, "heterogeneity")
    snr = {k: sum(p["snr"][k] for p in points) / len(points) for k in points[0]["snr"]}
    snr_se = {k: math.sqrt(sum(p["snr_se"][k] ** 2 for p in points)) / len(points) for k in points[0]["snr_se"]}
    alpha, alpha_se, inv, inv_se, units = _tail_summary(torch.tensor(all_units, dtype=torch.float64))
    return NoiseProbe(small_batch=small, big_batch=big, repetitions=reps, workers=workers, tail_group=group,
                      steps=[p["step"] for p in points], grad_norm_sq=gsq, grad_norm_sq_se=gsq_se, trace_sigma=tr,
                      trace_sigma_se=tr_se, b_simple=bsimple, b_simple_se=bsimple_se, snr=snr, snr_se=snr_se,
                      snr_coordinates=min(p["snr_coordinates"] for p in points), tail_index=alpha,
                      tail_index_se=alpha_se, tail_inverse=inv, tail_inverse_se=inv_se, tail_units=units,
                      heterogeneity=het, heterogeneity_se=het_se, warmup_loss=warmup_loss, per_point=points)


# ---- arguments ------------------------------------------------------------------------------------


def _check_common(warmup_steps: Any, points: Any, small_batch: Any, big_batch: Any, repetitions: Any,
                  tail_group: Any, lr: Any, seed: Any, workers: int, dim: int, draw_rows: int = 0) -> tuple[list[int], int]:
    """Validate the shared arguments; return the probe steps and k = big/small. ``draw_rows``: d-vectors a
    draw holds at once beyond the k small-batch gradients (an oracle's draws of several rows)."""
    check_int("warmup_steps", warmup_steps, min=0, max=10**7)
    check_int("small_batch", small_batch, min=1, max=1 << 24)
    check_int("big_batch", big_batch, min=2, max=1 << 24)
    if big_batch <= small_batch or big_batch % small_batch:
        raise ValueError(f"big_batch must be a multiple of small_batch = {small_batch} larger than it (k = big/small ≥ 2 "
                         f"small batches per big batch), got big_batch = {big_batch}")
    check_int("repetitions", repetitions, min=2, max=1 << 20)
    check_int("tail_group", tail_group, min=2, max=1 << 20)
    check_number("lr", lr, min=0.0)
    check_seed("seed", seed)
    if isinstance(points, bool) or not isinstance(points, (int, list, tuple)):
        raise ValueError(f"points must be a number of probe points ≥ 1 or a list of warm-up steps in [0, warmup_steps "
                         f"= {warmup_steps}], got {describe(points)}")
    if isinstance(points, int):
        check_int("points", points, min=1, max=warmup_steps + 1)
        steps = [warmup_steps] if points == 1 else sorted({round(i * warmup_steps / (points - 1)) for i in range(points)})
    else:
        if not points:
            raise ValueError("points must hold at least one warm-up step, got an empty list")
        for s in points:
            check_int("each of points", s, min=0, max=warmup_steps)
        steps = sorted(set(points))
    k = big_batch // small_batch
    pairs = repetitions * (k // 2)
    if pairs < 2 * tail_group:
        raise ValueError(f"tail_group = {tail_group} is too large: each point gives repetitions × (k // 2) = {pairs} pairs "
                         f"of small batches per worker, and the tail index needs at least 2 groups (use tail_group ≤ "
                         f"{max(pairs // 2, 1)} or more repetitions)")
    draws = len(steps) * workers * repetitions * k
    if draws > MAX_DRAWS:
        raise ValueError(f"this probe would draw {draws:,} small-batch gradients (points × workers × repetitions × "
                         f"big_batch/small_batch); at most {MAX_DRAWS:,}: reduce points, repetitions or big_batch")
    # per worker: its sum, the pairs buffer (≤ 2·tail_group + k rows) and round means; pooled: squares, scratch
    rows = workers * (1 + repetitions + 2 * tail_group + k) + 4 + 2 * k + draw_rows
    check_memory(8.0 * dim * rows, f"the probe's statistics (d = {dim:,}, {workers} worker(s), k = {k}, repetitions = "
                 f"{repetitions}, tail_group = {tail_group})", "reduce big_batch/small_batch, repetitions or tail_group")
    return steps, k


# ---- a user's model --------------------------------------------------------------------------------


class _Batches:
    """Batches of (inputs, targets) from a loader, re-iterated when it ends; ``take(n)`` cuts exactly n
    samples from consecutive batches."""

    def __init__(self, loader: Any, name: str, device: torch.device) -> None:
        if not isinstance(loader, Iterable):
            raise ValueError(f"{name} must be an iterable of (inputs, targets) batches such as a torch DataLoader, "
                             f"got {describe(loader)}")
        self.loader, self.name, self.device = loader, name, device
        self.it: Iterator[Any] | None = None  # started at the first batch, not before the arguments are checked
        self.rest: tuple[Tensor, Tensor] | None = None

    def batch(self) -> tuple[Tensor, Tensor]:
        if self.rest is not None:
            out, self.rest = self.rest, None
            return out
        if self.it is None:
            self.it = iter(self.loader)
        for attempt in range(2):
            try:
                item = next(self.it)
                break
            except StopIteration:
                self.it = iter(self.loader)
                if attempt == 1 or self.it is self.loader:
                    raise ValueError(f"{self.name} yielded no batch (an empty loader, or an iterator that is used up: "
                                     "pass a re-iterable loader such as a DataLoader)") from None
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not all(isinstance(t, Tensor) for t in item):
            raise ValueError(f"{self.name} must yield (inputs, targets) pairs of tensors, got {describe(item)}")
        x, y = item
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"{self.name} yielded inputs of shape {tuple(x.shape)} and targets of shape {tuple(y.shape)}: "
                             "both need the same nonzero number of samples on their first axis")
        return x.to(self.device), y.to(self.device)

    def take(self, n: int) -> tuple[Tensor, Tensor]:
        xs, ys, have = [], [], 0
        while have < n:
            x, y = self.batch()
            need = n - have
            if x.shape[0] > need:
                self.rest = (x[need:], y[need:])
                x, y = x[:need], y[:need]
            xs.append(x)
            ys.append(y)
            have += x.shape[0]
        return (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))


def _model_grad(model: nn.Module, params: Sequence[Tensor], loss_fn: Callable[..., Any], x: Tensor, y: Tensor) -> tuple[Tensor, float]:
    loss = loss_fn(model(x), y)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor (the batch's mean loss), got {describe(loss)}")
    grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    return flat.detach(), float(loss.detach())


def probe_model(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], loader: Iterable[Any], *,
                warmup_steps: int = 50, points: int | Sequence[int] = 3, small_batch: int = 8, big_batch: int = 128,
                repetitions: int = 8, tail_group: int = 8, lr: float = 0.01, seed: int = 0,
                worker_loaders: Sequence[Iterable[Any]] | Callable[[int], Iterable[Any]] | None = None,
                workers: int | None = None) -> NoiseProbe:
    """Probe the gradient noise of ``model`` (module doc).

    Args:
        model: the user's ``nn.Module`` (never changed: the probe trains a copy); its mode (train/eval) is kept,
            so dropout's noise counts as gradient noise.
        loss_fn: (outputs, targets) → the batch's mean loss (a scalar tensor).
        loader: an iterable of (inputs, targets) batches (a DataLoader), re-iterated as needed; the warm-up takes
            its batches as they come, the probe cuts them into batches of ``small_batch`` samples.
        warmup_steps: plain SGD steps x ← x − lr·g on the loader's batches.
        points: how many probe points, evenly spaced over the warm-up from step 0 to ``warmup_steps`` (1: at the
            end), or the list of steps.
        small_batch, big_batch: B_s and B_b (a multiple of B_s, k = B_b/B_s small batches per big batch).
        repetitions: big batches per worker and point (≥ 2: the jackknife's rounds).
        tail_group: m, the tail estimator's group size.
        lr: the warm-up's learning rate.
        seed: seeds torch's global generator inside the probe (restored afterwards), so a shuffling loader
            draws the same batches each time.
        worker_loaders: per-worker loaders (a sequence) or a function worker index → loader (with ``workers``):
            the probe's batches then come from each worker's loader, and the heterogeneity is measured.
        workers: N, with a function ``worker_loaders``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {describe(model)}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (outputs, targets) → scalar loss, got {describe(loss_fn)}")
    params0 = [p for p in model.parameters() if p.requires_grad]
    if not params0:
        raise ValueError("model has no parameters that require gradients")
    dim = sum(p.numel() for p in params0)
    device = params0[0].device
    sources: list[_Batches] = []
    if worker_loaders is None:
        if workers not in (None, 1):
            raise ValueError(f"workers = {describe(workers)} needs worker_loaders (one loader per worker)")
    elif not isinstance(worker_loaders, Sequence):
        check_callable("worker_loaders", worker_loaders)
        n = check_int("workers", workers, min=1, max=MAX_WORKERS)
        sources = [_Batches(worker_loaders(i), f"worker_loaders({i})", device) for i in range(n)]
    else:
        if isinstance(worker_loaders, (str, bytes)) or not worker_loaders:
            raise ValueError(f"worker_loaders must be a non-empty list of loaders or a function worker index → loader, "
                             f"got {describe(worker_loaders)}")
        if workers is not None and workers != len(worker_loaders):
            raise ValueError(f"workers = {describe(workers)} disagrees with the {len(worker_loaders)} worker_loaders given")
        check_int("number of worker_loaders", len(worker_loaders), min=1, max=MAX_WORKERS)
        sources = [_Batches(ld, f"worker_loaders[{i}]", device) for i, ld in enumerate(worker_loaders)]
    main = _Batches(loader, "loader", device)
    n = max(len(sources), 1)
    steps, k = _check_common(warmup_steps, points, small_batch, big_batch, repetitions, tail_group, lr, seed, n, dim)
    if not sources:
        sources = [main]
    net = copy.deepcopy(model)
    params = [p for p in net.parameters() if p.requires_grad]
    results: list[dict[str, Any]] = []
    units: list[float] = []
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(warmup_steps + 1):
            if step in steps:
                pt = _Point(n, dim, small_batch, big_batch, tail_group, keep_means=n > 1, device=device)
                for _ in range(repetitions):
                    pt.add_round([torch.stack([_model_grad(net, params, loss_fn, *src.take(small_batch))[0]
                                               for _ in range(k)]) for src in sources])
                results.append(pt.result(step))
                units.extend(pt.units)
            if step == warmup_steps:
                break
            g, loss = _model_grad(net, params, loss_fn, *main.batch())
            if not (math.isfinite(loss) and bool(torch.isfinite(g).all())):
                raise ValueError(f"the warm-up diverged at step {step} (loss {loss}): use a smaller lr (got {lr})")
            losses.append(loss)
            with torch.no_grad():
                lo = 0
                for p in params:
                    p.sub_(g[lo: lo + p.numel()].view_as(p).to(p.dtype), alpha=lr)
                    lo += p.numel()
    return _summarise(results, units, small=small_batch, big=big_batch, reps=repetitions, workers=n, group=tail_group,
                      warmup_loss=losses)


# ---- the library's oracles -------------------------------------------------------------------------


def probe_oracle(oracle: Any, params: Tensor | None = None, *, warmup_steps: int = 50,
                 points: int | Sequence[int] = 3, small_batch: int | None = None, big_batch: int | None = None,
                 repetitions: int = 8, tail_group: int = 8, lr: float = 0.01, seed: int = 0) -> NoiseProbe:
    """Probe the gradient noise of one of the library's oracles (``compsde.objectives.Oracle`` or a
    ``NetworkOracle``), injected noise included, from ``params`` (default ``oracle.x0()``).

    One draw of the oracle is one worker's gradient at the oracle's batch B_o (its minibatch plus σT/√B_o), so
    ``small_batch`` and ``big_batch`` are multiples of B_o (default B_o and 16 B_o): a small batch averages
    small_batch/B_o draws. The warm-up takes DSGD steps x ← x − lr·(1/N)Σ g_i with every worker's draw; the
    probe's draws come from each worker in turn (heterogeneous workers: heterogeneity is measured). The
    draws come from the oracle's own streams (``compsde.core.streams``) of run ``seed``.
    """
    from compsde.core.streams import Streams
    from compsde.objectives.oracle import GradientOracle

    if not isinstance(oracle, GradientOracle):
        raise ValueError(f"oracle must be a compsde gradient oracle (compsde.objectives.Oracle or NetworkOracle), "
                         f"got {describe(oracle)}")
    dim, n, bo = oracle.dim, oracle.workers, oracle.batch
    small_batch = bo if small_batch is None else small_batch
    big_batch = 16 * bo if big_batch is None else big_batch
    check_int("small_batch", small_batch, min=1, max=1 << 24)
    check_int("big_batch", big_batch, min=2, max=1 << 24)
    if small_batch % bo or big_batch % bo:
        raise ValueError(f"small_batch and big_batch must be multiples of the oracle's batch B = {bo} (one draw), got "
                         f"small_batch = {small_batch}, big_batch = {big_batch}")
    per = small_batch // bo
    steps, k = _check_common(warmup_steps, points, small_batch, big_batch, repetitions, tail_group, lr, seed, n, dim,
                             draw_rows=2 * (big_batch // bo))
    if hasattr(oracle, "check_memory"):  # a network's activations for the k·per minibatches of one draw
        oracle.check_memory(big_batch // bo)
    x = oracle.x0() if params is None else params
    if not isinstance(x, Tensor) or x.shape != (dim,) or not x.is_floating_point():
        raise ValueError(f"params must be a floating-point tensor of shape (d,) = ({dim},), got {describe(x)}")
    x = x.detach().to(device=oracle.device, dtype=oracle.dtype).clone()
    streams = Streams(seed, n)
    results: list[dict[str, Any]] = []
    units: list[float] = []
    losses: list[float] = []

    def draws(w: int, rows: int) -> Tensor:
        sample = oracle.sample(streams, [w], rows)
        return oracle.grads(x.unsqueeze(0).expand(rows, dim).contiguous(), w, w + 1, sample)[0]

    for step in range(warmup_steps + 1):
        if step in steps:
            pt = _Point(n, dim, small_batch, big_batch, tail_group, keep_means=n > 1, device=x.device)
            for _ in range(repetitions):
                pt.add_round([draws(w, k * per).reshape(k, per, dim).mean(1) for w in range(n)])
            results.append(pt.result(step))
            units.extend(pt.units)
        if step == warmup_steps:
            break
        sample = oracle.sample(streams, list(range(n)), 1)
        g = oracle.grads(x.unsqueeze(0), 0, n, sample).mean(0)[0]
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"the warm-up diverged at step {step}: use a smaller lr (got {lr})")
        losses.append(float(oracle.loss(x.unsqueeze(0))[0]))
        x = x - lr * g
    return _summarise(results, units, small=small_batch, big=big_batch, reps=repetitions, workers=n, group=tail_group,
                      warmup_loss=losses)


# ---- figures ----------------------------------------------------------------------------------------


#: The figures ``plot_probe`` may draw (the last only with several workers).
PROBE_FIGURES = ("probe_noise_scale.png", "probe_snr.png", "probe_tail_index.png", "probe_heterogeneity.png")


def plot_probe(probe: NoiseProbe, directory: str | Path, title: str = "gradient-noise probe") -> list[Path]:
    """Draw the probe's figures into ``directory`` (created if needed) and return their paths:
    ``probe_noise_scale.png`` (‖G‖², tr Σ and B_simple against the warm-up step, ±1 standard error),
    ``probe_snr.png`` (the quantiles of the per-coordinate signal-to-noise ratio at batch 1 and at B_s),
    ``probe_tail_index.png`` (α̂ per point with its error; α = 1 Cauchy and α = 2 finite variance marked) and,
    with several workers, ``probe_heterogeneity.png``."""
    from compsde.core.checks import check_text
    from compsde.core.files import atomic_write
    from compsde.experiments import plot_layout as lay

    if not isinstance(probe, NoiseProbe):
        raise ValueError(f"probe must be a NoiseProbe (from probe_model or probe_oracle), got {describe(probe)}")
    check_text(title, "title")
    out = Path(check_path("directory", directory))
    out.mkdir(parents=True, exist_ok=True)
    pts = probe.per_point
    steps = [p["step"] for p in pts]
    files: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        atomic_write(path, lay.figure_png(fig))
        files.append(path)

    def series(ax: Any, key: str, color: str, label: str, log: bool) -> None:
        v = [p[key] if p[key] is not None else math.nan for p in pts]
        e = [p[key + "_se"] if p[key + "_se"] is not None else math.nan for p in pts]
        ax.errorbar(steps, v, yerr=e, color=color, marker="o", capsize=3, linewidth=1.6, label=label)
        if log and all(math.isfinite(a) and a > 0 for a in v):
            ax.set_yscale("log")
        ax.set_xlabel("warm-up step")
        lay.number_axis(ax.xaxis, integer=True)
        ax.grid(True, alpha=0.3)

    note = (f"B_s = {probe.small_batch}, B_b = {probe.big_batch}, {probe.repetitions} big batches per worker and point, "
            f"N = {probe.workers}; bars: ±1 standard error")
    fig, axes = lay.grid(3, f"{title}: gradient noise scale", note, sharey=False,
                         panel_titles=True)
    for ax, key, label, c in zip(axes, ("grad_norm_sq", "trace_sigma", "b_simple"),
                                 ("‖G‖²", "tr Σ (per sample)", "B_simple = tr Σ / ‖G‖²"), lay.PALETTE):
        series(ax, key, c, label, log=True)
        lay.panel_title(ax, label, 0.0)
        ax.set_ylabel(label)
    save(fig, PROBE_FIGURES[0])

    fig, axes = lay.grid(1, f"{title}: per-coordinate signal-to-noise |E g_j| / sd(g_j)",
                         "lines: quantiles over coordinates at batch 1; dashed: the median at batch B_s (×√B_s)")
    ax = axes[0]
    for i, q in enumerate(QUANTILES):
        v = [p["snr"][f"{q:g}"] for p in pts]
        ax.plot(steps, v, marker="o", color=lay.PALETTE[i % len(lay.PALETTE)], label=f"q{round(q * 100)}")
    ax.plot(steps, [p["snr"]["0.5"] * math.sqrt(probe.small_batch) for p in pts], color="#555555", linestyle="--",
            label=f"median at B_s = {probe.small_batch}")
    if all(math.isfinite(p["snr"][f"{q:g}"]) and p["snr"][f"{q:g}"] > 0 for p in pts for q in QUANTILES):
        ax.set_yscale("log")
    ax.set_xlabel("warm-up step")
    ax.set_ylabel("signal-to-noise ratio")
    lay.number_axis(ax.xaxis, integer=True)
    ax.grid(True, alpha=0.3)
    lay.legends([ax])
    save(fig, PROBE_FIGURES[1])

    fig, axes = lay.grid(1, f"{title}: tail index of the gradient noise",
                         f"Mohammadi estimator, groups of m = {probe.tail_group} differences of small-batch gradients; "
                         f"pooled α̂ = {probe.tail_index:.3g} ± {probe.tail_index_se:.2g}")
    ax = axes[0]
    series(ax, "tail_index", lay.PALETTE[0], "α̂ per point", log=False)
    ax.axhline(2.0, color="#2ca02c", linestyle="--", linewidth=1.2, label="α = 2 (finite variance)")
    ax.axhline(1.0, color="#d62728", linestyle=":", linewidth=1.2, label="α = 1 (Cauchy)")
    ax.set_ylabel("tail index α̂")
    lay.legends([ax])
    save(fig, PROBE_FIGURES[2])

    if probe.workers > 1:
        fig, axes = lay.grid(1, f"{title}: heterogeneity of the workers",
                             "(1/N) Σ‖G_i − G‖² / ‖G‖², bias-corrected; bars: ±1 standard error")
        series(axes[0], "heterogeneity", lay.PALETTE[3], "heterogeneity", log=False)
        axes[0].set_ylabel("(1/N) Σ‖G_i − G‖² / ‖G‖²")
        save(fig, PROBE_FIGURES[3])
    return files
