"""The quality model of ``compsde advise``: each method's stationary loss against DSGD's at the measured noise.

From a noise probe (per-sample gradient-noise trace tr Σ, gradient norm ‖G‖², the noise's tail index α̂ ± se,
the per-coordinate signal-to-noise ratios, the workers' heterogeneity) and the current hyperparameters (η, B, N),
predict per method the excess loss it keeps at its plateau, the gap to DSGD's, and the η, B, N that close it.
Every number carries the label of where it comes from (docs/theory.md's convention):

* **[derived]** The linearised SDE of every memoryless method is an Ornstein–Uhlenbeck process
  dX = −A H X dt + √η S^{1/2} dW around the minimum (§3.1). For DSGD and DCSGD (A = I) the stationary
  covariance P solves HP + PH = ηS, so E f_∞ − f* = ½ tr(HP) = η tr S/4 for *any* Hessian H ≻ 0, and the
  trace of the diffusion is known from the probe (§2.5, §2.6, §3.5):

      DSGD:   tr S = tr Σ/(NB)                                  E f_∞ − f* = η tr Σ/(4NB)
      DCSGD:  tr S = (1/N)[(1 + ω) tr Σ/B + ω(‖G‖² + h²)]     (unbiased C with variance ω; h² = (1/N) Σ_i
                                                                  ‖∇f_i − ∇f‖² the workers' heterogeneity)

  so DCSGD's loss over DSGD's is 1 + ω + ωB(‖G‖² + h²)/tr Σ = 1 + ω(1 + B/b_simple) (+ the heterogeneity
  term), b_simple = tr Σ/‖G‖². DSignSGD's drift near the minimum is 2f(0)√B ∇f_j/s_j per coordinate
  (s_j the noise's scale, f the standardised law's density) and its diffusion 1/N (§2.7), so with a diagonal
  H its loss is η Σ_j s_j/(4N√B · 2f(0)) (§3.4): linear in the noise scale. At the learning rate whose drift
  matches DSGD's (η_s = η s/(2f(0)√B)) and isotropic scales its loss is 1/((2f(0))² Var T) times DSGD's: π/2
  for Gaussian noise, 1.25 for Student-t ν = 8, below 1 for ν ≤ 4. Majority vote: the drift gain is
  c_N times larger and the diffusion Var V = 1 − P(tie) instead of 1/N (below). Heavy tails: Var T = ∞ for a
  tail index α ≤ 2, so DSGD's and DCSGD's stationary losses are infinite (their SDEs are refused, §2.7) while
  the sign methods' drift and diffusion stay bounded. To order the methods of infinite variance: for α-stable
  noise (1 ≤ α < 2) scales add as scale^α, so Rand-k's update noise, (1/N)(d/k) Z_i on a coordinate kept with
  probability k/d, has (1 + ω)^(α − 1) times DSGD's tail constant (equal at α = 1, Cauchy), and the finite-variance
  parts (minibatch noise × (1 + ω), ω‖G‖²) break the tie.
* **[heuristic]** Using these on a network: the probe's ‖G‖² at its point is taken as a constant additive
  compression-noise source (the §3.5 noise check's assumption: it orders the levers as runs do, and
  overstates the remedy); the noise law of the sign methods is taken as Gaussian where the variance is finite
  (the minibatch mean's law, by the central limit theorem) and as Student-t with ν = α̂ where it is not (the
  Student-t law of ν < 2 has stable index ν); the per-coordinate scales as isotropic unless the probe measures their spread;
  the sign methods' learning rate is matched to DSGD's linearised drift at the mean scale; the tail
  thresholds (α̂ + 2se ≤ ``INFINITE_TAIL``: infinite variance, refused; α̂ − 2se ≤ ``HEAVY_TAIL``: flagged; α̂ is
  the probe's α-stable index, ≤ 2 and biased low for finite-variance noise, so the thresholds are calibrated).
* **[recalled]** Error feedback with a δ-contractive compressor has the SGD rate to leading order (Stich &
  Karimireddy 2019; §4.6 derives that its iterate is the SGD sum plus the memory); the memory bound
  E‖e‖² ≤ 4δ²η² E‖g‖² is derived here (one line below), its effect on the loss needs the sharpness.

The retuned settings come from ``compsde.sde.scaling``: the DCSGD rule η(1 + ω)/(BN) solved for B (first
order: B × (1 + ω)) and its noise check, which says when no batch size closes the gap because the compression
noise ω‖G‖² alone exceeds DSGD's noise (then the workers, which divide both, or the learning rate); the
DSignSGD rule η/(N√B) solved for the N or B that bring its loss down to DSGD's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compsde.algorithms import Algorithm
from compsde.core.checks import MAX_INT64, MAX_WORKERS, describe
from compsde.objectives.noise import Noise
from compsde.sde import scaling

__all__ = ["HEAVY_TAIL", "INFINITE_TAIL", "SATURATED", "NoiseStats", "Prediction", "Setting", "dcsgd_loss", "dsgd_loss",
           "ef_memory_bound", "majority_constants", "method_kind", "predict", "predict_all", "rank", "sign_loss",
           "sign_lr", "sign_saturation", "tail_status"]

#: The tail index is the α-stable index of the probe (``compsde.advise.probe.tail_index``): α̂ ≤ 2, with α̂ → 2 for
#: noise of finite variance, but biased low at a finite group size m (by O(1/log m): α̂ ≈ 1.9 for Student-t ν = 8 at
#: m = 8). Calibrated on differences of two Student-t draws (what the probe's samples are), m = 8, 96 groups of 2,000
#: coordinates: ν = 1 → α̂ = 1.00, 1.5 → 1.31, 2 → 1.52, 2.5 → 1.64, 3 → 1.72, 4 → 1.82, 8 → 1.93, Gaussian → 2.00
#: (standard errors ≤ 0.005). The variance counts as infinite where α̂ + 2se ≤ INFINITE_TAIL (ν ≤ 2 and a margin)
#: and as heavy (flagged: it may be infinite, and a sampled tr Σ converges slowly) where α̂ − 2se ≤ HEAVY_TAIL
#: (ν ≲ 3) [heuristic thresholds].
INFINITE_TAIL = 1.55
HEAVY_TAIL = 1.75
#: Below this saturation φ of the sign drift at the median SNR the sign methods' linearised predictions are flagged.
SATURATED = 0.5
#: Status of a prediction, best first (the ranking's first key).
STATUSES = ("ok", "flagged", "refused", "unmodelled")


def _number(name: str, v: Any, *, allow_inf: bool = False, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a {'positive ' if positive else ''}number, got {describe(v)}")
    if v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '≥ 0'}, got {v!r}")
    return float(v)


# ---- the probe's numbers -------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseStats:
    """What the quality model needs from a noise probe (``compsde.advise.probe.NoiseProbe`` or its ``as_dict()``).

    Attributes:
        trace_sigma: tr Σ, the trace of one sample's gradient-noise covariance (a minibatch of B has tr Σ/B);
            +∞ allowed (infinite variance).
        grad_norm_sq: ‖G‖², the squared norm of the full gradient at the probe's point.
        tail_index, tail_index_se: the α-stable tail index α̂ of the gradient noise (≤ 2; 2 for finite variance, as
            the probe estimates it; +∞ when not measured: light tails assumed) and its standard error.
        snr: per-coordinate signal-to-noise ratio of one sample, |∂_j f|/σ_j (σ_j its standard deviation),
            by quantile: {0.5: median, 0.9: ..., ...}.
        heterogeneity: H = (1/N) Σ_i ‖∇f_i − ∇f‖² / ‖G‖², the spread of the workers' full gradients relative to
            the gradient (0: IID), as the probe reports it; h² = H ‖G‖².
        noise_scale: s̄ = (1/d) Σ_j s_j, the mean per-coordinate scale of one sample's noise in units of the
            standardised law (σ_j = s_j √Var T); None: from tr Σ as √(isotropy · tr Σ/(d Var T)).
        isotropy: (Σ_j σ_j)²/(d tr Σ) ∈ (0, 1] (1: every coordinate equally noisy; Cauchy–Schwarz makes it ≤ 1).
    """

    trace_sigma: float
    grad_norm_sq: float
    tail_index: float = math.inf
    tail_index_se: float = 0.0
    snr: Mapping[float, float] = field(default_factory=dict)
    heterogeneity: float = 0.0
    noise_scale: float | None = None
    isotropy: float = 1.0

    def __post_init__(self) -> None:
        _number("trace_sigma", self.trace_sigma, allow_inf=True)
        _number("grad_norm_sq", self.grad_norm_sq)
        _number("tail_index", self.tail_index, allow_inf=True, positive=True)
        _number("tail_index_se", self.tail_index_se, allow_inf=True)
        _number("heterogeneity", self.heterogeneity)
        if self.noise_scale is not None:
            _number("noise_scale", self.noise_scale, positive=True)
        iso = _number("isotropy", self.isotropy, positive=True)
        if iso > 1.0 + 1e-9:
            raise ValueError(f"isotropy must be in (0, 1] ((Σ_j σ_j)² ≤ d tr Σ), got {iso!r}")
        if not isinstance(self.snr, Mapping):
            raise ValueError(f"snr must map quantiles in [0, 1] to values ≥ 0, got {describe(self.snr)}")
        for q, v in self.snr.items():
            _number(f"snr quantile {q!r}", q)
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"snr quantiles must be in [0, 1], got {q!r}")
            _number(f"snr[{q!r}]", v, allow_inf=True)

    @property
    def b_simple(self) -> float:
        """tr Σ/‖G‖²: the batch at which the minibatch noise equals the signal (McCandlish et al. 2018's simple
        noise scale); +∞ where ‖G‖ = 0."""
        return self.trace_sigma / self.grad_norm_sq if self.grad_norm_sq > 0 else math.inf

    @property
    def h2(self) -> float:
        """h² = (1/N) Σ_i ‖∇f_i − ∇f‖² (absolute)."""
        return self.heterogeneity * self.grad_norm_sq

    @property
    def tails(self) -> str:
        """``tail_status`` of the tail index; "infinite" also where tr Σ is."""
        return "infinite" if not math.isfinite(self.trace_sigma) else tail_status(self.tail_index, self.tail_index_se)

    @property
    def law(self) -> Noise:
        """The standardised noise law the sign methods' drift uses [heuristic]: Gaussian where the variance is
        finite (a minibatch mean, by the central limit theorem), Student-t with ν = α̂ where it is not."""
        if self.tails != "infinite":
            return Noise("gaussian")
        return Noise("student-t", nu=min(self.tail_index, 2.0))

    def mean_scale(self, dim: int) -> float | None:
        """s̄, or None where it cannot be known (infinite variance and no measured scale)."""
        if self.noise_scale is not None:
            return self.noise_scale
        v = self.law.variance()
        if not (math.isfinite(v) and math.isfinite(self.trace_sigma)):
            return None
        return math.sqrt(self.isotropy * self.trace_sigma / (dim * v))

    def as_dict(self) -> dict[str, Any]:
        return {"trace_sigma": self.trace_sigma, "grad_norm_sq": self.grad_norm_sq, "b_simple": self.b_simple,
                "tail_index": self.tail_index, "tail_index_se": self.tail_index_se,
                "snr": {str(q): v for q, v in sorted(self.snr.items())}, "heterogeneity": self.heterogeneity,
                "noise_scale": self.noise_scale, "isotropy": self.isotropy}

    @classmethod
    def from_probe(cls, probe: Any) -> NoiseStats:
        """From a ``NoiseProbe`` (attributes), its ``as_dict()`` or any mapping with the keys above. A tail index
        may be a number, a (value, se) pair or a mapping with ``value``/``alpha`` and ``se``; ``snr`` a mapping
        of quantiles (0.5, "0.5", "q50", "p50", "median") or a sequence of (quantile, value) pairs."""
        if isinstance(probe, NoiseStats):
            return probe
        if not isinstance(probe, Mapping):
            if hasattr(probe, "as_dict"):
                probe = probe.as_dict()
            else:
                probe = {k: getattr(probe, k) for k in dir(probe) if not k.startswith("_")}
        if not isinstance(probe, Mapping):
            raise ValueError(f"probe must be a NoiseProbe or a mapping of its values, got {describe(probe)}")
        missing = [k for k in ("trace_sigma", "grad_norm_sq") if probe.get(k) is None]
        if missing:
            raise ValueError(f"probe lacks {', '.join(missing)} (the gradient-noise trace tr Σ and the squared gradient "
                             f"norm ‖G‖²); it has {', '.join(sorted(map(str, probe))) or 'no keys'}")
        alpha, se = _tail(probe)
        het = probe.get("heterogeneity", 0.0)
        if isinstance(het, Mapping):
            het = het.get("value", het.get("mean_sq", 0.0))
        # the probe's unbiased estimates of ‖G‖² and of the heterogeneity can come out below 0 (their true values
        # are ≥ 0 and small against the noise): clipped at 0
        return cls(trace_sigma=_float(probe["trace_sigma"], "trace_sigma"),
                   grad_norm_sq=_clip(_float(probe["grad_norm_sq"], "grad_norm_sq")),
                   tail_index=alpha, tail_index_se=se, snr=_snr(probe.get("snr", probe.get("snr_quantiles"))),
                   heterogeneity=0.0 if het is None else _clip(_float(het, "heterogeneity")),
                   noise_scale=None if probe.get("noise_scale") is None else _float(probe["noise_scale"], "noise_scale"),
                   isotropy=_float(probe.get("isotropy", 1.0), "isotropy"))


def _clip(v: float) -> float:
    return max(0.0, v) if not math.isnan(v) else v


def _float(v: Any, name: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"probe {name} must be a number, got {describe(v)}") from None


def _tail(probe: Mapping[str, Any]) -> tuple[float, float]:
    t = probe.get("tail_index", probe.get("alpha"))
    se = probe.get("tail_index_se", probe.get("alpha_se", 0.0))
    if isinstance(t, Mapping):
        se = t.get("se", t.get("stderr", se))
        t = t.get("value", t.get("alpha", t.get("estimate")))
    elif isinstance(t, (tuple, list)) and len(t) == 2:
        t, se = t
    alpha = math.inf if t is None else _float(t, "tail_index")
    return (math.inf if math.isnan(alpha) else alpha), (0.0 if se is None else _float(se, "tail_index_se"))


def _snr(s: Any) -> dict[float, float]:
    if s is None:
        return {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(s, Mapping):
        items = s.items()
    elif isinstance(s, Sequence) and not isinstance(s, str):
        items = s
    else:
        raise ValueError(f"probe snr must map quantiles to values, got {describe(s)}")
    out: dict[float, float] = {}
    for q, v in items:
        if isinstance(q, str):
            key = q.strip().lower()
            if key == "median":
                key = "0.5"
            elif key[:1] in ("q", "p") and key[1:].replace(".", "", 1).isdigit():
                key = str(float(key[1:]) / 100.0)
            try:
                q = float(key)
            except ValueError:
                continue  # other summaries (mean, count, ...) are not quantiles
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[float(q)] = float(v)
    return out


def tail_status(alpha: float, se: float) -> str:
    """"infinite" where α̂ + 2se ≤ ``INFINITE_TAIL`` (the variance is infinite, confidently), "near" where
    α̂ − 2se ≤ ``HEAVY_TAIL`` (it may be, or is heavy-tailed), else "finite" [heuristic thresholds, calibrated for the
    probe's estimator; that a stable index α < 2 means infinite variance is exact]."""
    if alpha + 2.0 * se <= INFINITE_TAIL:
        return "infinite"
    if alpha - 2.0 * se <= HEAVY_TAIL:
        return "near"
    return "finite"


# ---- the hyperparameters -------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """η, B, N of a run."""

    lr: float
    batch: int
    workers: int

    def __post_init__(self) -> None:
        _number("lr", self.lr, positive=True)
        for key, top in (("batch", 1 << 40), ("workers", MAX_WORKERS)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                raise ValueError(f"{key} must be a whole number ≥ 1 and ≤ {top}, got {describe(v)}")

    def as_dict(self) -> dict[str, float]:
        return {"lr": self.lr, "batch": self.batch, "workers": self.workers}


# ---- the closed forms ----------------------------------------------------------------------------


def dsgd_loss(stats: NoiseStats, s: Setting) -> float:
    """η tr Σ/(4NB): DSGD's stationary excess loss, E f_∞ − f* = η tr S/4 with S = Σ/(NB) [derived, §3.1–3.2]."""
    return s.lr * stats.trace_sigma / (4.0 * s.workers * s.batch)


def dcsgd_loss(stats: NoiseStats, s: Setting, omega: float) -> float:
    """η[(1 + ω) tr Σ/B + ω(‖G‖² + h²)]/(4N): DCSGD's, from tr S of §2.6 (the Rand-k cross terms have zero trace;
    (1/N) Σ_i ‖∇f_i‖² = ‖G‖² + h²) [derived; ‖G‖² held at its probed value: heuristic]."""
    minibatch = (1.0 + omega) * stats.trace_sigma / s.batch
    compression = omega * (stats.grad_norm_sq + stats.h2)
    return s.lr * (minibatch + compression) / (4.0 * s.workers)


def majority_constants(n: int) -> tuple[float, float]:
    """(c_N, Var V) of the majority vote V = sign(Σ_i sign(g_i)) of N workers near the minimum, where each votes
    right with probability p = ½ + f(0)z: E V ≈ c_N (2p − 1) and Var V → 1 − P(tie) [derived].

    E V = P(K > N/2) − P(K < N/2) for K ~ Bin(N, p); at p = ½, dE V/dp = 2N C(N−1, (N−1)/2)/2^{N−1} (N odd) or
    N C(N, N/2)/2^{N−1} (N even), and 2p − 1 has derivative 2, so c_N is half of that (c_1 = c_2 = 1; c_N ≈
    √(2N/π)). A tie (even N) gives 0, so Var V = 1 − C(N, N/2)/2^N (even), 1 (odd)."""
    if n % 2:
        c = n * math.comb(n - 1, (n - 1) // 2) / 2.0 ** (n - 1)
        return c, 1.0
    c = n * math.comb(n, n // 2) / 2.0**n
    return c, 1.0 - math.comb(n, n // 2) / 2.0**n


def sign_lr(stats: NoiseStats, s: Setting, dim: int, *, majority: bool = False) -> float | None:
    """The sign method's learning rate whose linearised drift equals DSGD's at η: η_s · c_N 2f(0)√B/s̄ = η,
    i.e. η_s = η s̄/(c_N 2f(0)√B) [derived for isotropic scales; the match at the mean scale s̄: heuristic].
    None where s̄ is unknown."""
    scale = stats.mean_scale(dim)
    if scale is None:
        return None
    c = majority_constants(s.workers)[0] if majority else 1.0
    return s.lr * scale / (c * 2.0 * stats.law.density_at_zero() * math.sqrt(s.batch))


def sign_loss(stats: NoiseStats, s: Setting, dim: int, *, majority: bool = False) -> float | None:
    """DSignSGD's stationary excess loss at learning rate ``s.lr``: η Σ_j s_j q/(4 c_N √B 2f(0)) with q = 1/N
    and c_N = 1 (mean of signs) or q = Var V, c_N (majority vote) [derived, §3.4 with a diagonal Hessian;
    §9.9 at β = 0 for the vote]. Linear in the noise scale; finite for every tail index. None where s̄ is unknown."""
    scale = stats.mean_scale(dim)
    if scale is None:
        return None
    c, q = majority_constants(s.workers) if majority else (1.0, 1.0 / s.workers)
    return s.lr * dim * scale * q / (4.0 * c * math.sqrt(s.batch) * 2.0 * stats.law.density_at_zero())


def sign_saturation(stats: NoiseStats, batch: int) -> dict[float, float]:
    """φ(z) = (2F(z) − 1)/(2f(0) z) at the minibatch signal-to-noise z = √B · snr_q · √Var T of each probed
    quantile q: the sign drift over its linearisation (1 at low SNR, → 0 where the sign saturates, far from the
    minimum) [derived per coordinate; what it means for the whole run: heuristic]. Empty where the SNR or a finite
    variance is missing."""
    law = stats.law
    v = law.variance()
    if not stats.snr or not math.isfinite(v):
        return {}
    out = {}
    f0 = law.density_at_zero()
    for q, snr in sorted(stats.snr.items()):
        z = math.sqrt(batch) * snr * math.sqrt(v)
        out[q] = 1.0 if z == 0 else (1.0 / (2.0 * f0 * z) if math.isinf(z) else float(2.0 * law.cdf(z) - 1.0) / (2.0 * f0 * z))
    return out


def ef_memory_bound(stats: NoiseStats, s: Setting, delta: float) -> float:
    """4δ²η²(‖G‖² + h² + tr Σ/B): the bound on a worker's stationary EF memory E‖e‖² with a B3(δ) compressor
    [derived]: e' = v − C(v), v = e + ηg, so E‖e'‖² ≤ (1 − 1/δ)[(1 + 1/(2δ))E‖e‖² + (1 + 2δ)η²E‖g‖²]
    ≤ (1 − 1/(2δ))E‖e‖² + 2δη²E‖g‖² (Young), whose fixed point is 4δ²η²E‖g‖². The iterate is the SGD sum minus
    the mean memory (§4.6), so the loss moves by at most h_max/2 times this (a loose bound)."""
    return 4.0 * delta**2 * s.lr**2 * (stats.grad_norm_sq + stats.h2 + stats.trace_sigma / s.batch)


# ---- one method ----------------------------------------------------------------------------------


def method_kind(algorithm: Algorithm) -> str:
    """dsgd, dcsgd (unbiased compressor), dcsgd-biased, dsignsgd, dsignsgd-majority, ef, or other (not modelled:
    transforms, local methods, optimizers)."""
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"method must be a compsde Algorithm (compsde.algorithms.make(...)), got {describe(algorithm)}")
    comp = algorithm.compressor
    if algorithm.worker.names or algorithm.server.names or algorithm.local or algorithm.optimizer is not None \
            or algorithm.probe is not None:
        return "other"
    if algorithm.error_feedback:
        return "ef"
    if comp.name == "sign":
        return "dsignsgd-majority" if algorithm.aggregation == "majority" else "dsignsgd"
    if algorithm.aggregation != "mean":
        return "other"
    if comp.name == "identity":
        return "dsgd"
    return "dcsgd" if comp.unbiased else "dcsgd-biased"


@dataclass
class Prediction:
    """The quality model's answer for one method. Losses are excess losses over the plateau's minimum, in the
    loss's units (the OU model's E f_∞ − f*); ``loss_ratio`` and ``loss_gap`` are against DSGD at the current
    setting. ``retuned`` is the setting that closes the gap (None: nothing to close or no rule), ``levers`` the
    single-lever alternatives (+∞: no value of that lever does). ``notes`` start with their label."""

    label: str
    kind: str
    status: str
    setting: Setting
    stationary_loss: float | None
    loss_ratio: float | None
    loss_gap: float | None
    drift_factor: float | None
    omega: float | None = None
    delta: float | None = None
    retuned: Setting | None = None
    lever: str | None = None
    levers: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: The sample-estimate ratio used for ranking where the population value is infinite or unknown.
    rank_ratio: float = math.inf
    rank_tiebreak: float = 0.0
    saturation: dict[float, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.label, "kind": self.kind, "status": self.status, "setting": self.setting.as_dict(),
                "stationary_loss": self.stationary_loss, "loss_ratio": self.loss_ratio, "loss_gap": self.loss_gap,
                "drift_factor": self.drift_factor, "omega": self.omega, "delta": self.delta,
                "retuned": None if self.retuned is None else self.retuned.as_dict(), "lever": self.lever,
                "levers": self.levers, "notes": list(self.notes),
                "sign_saturation": {str(q): v for q, v in self.saturation.items()}}


def _ratio(a: float | None, b: float) -> float | None:
    if a is None:
        return None
    if math.isinf(b):
        return None if math.isinf(a) else 0.0
    if b == 0.0:
        return 1.0 if a == 0.0 else math.inf
    return a / b


def _whole(v: float) -> int:
    return max(1, math.ceil(v - 1e-9))


def predict(algorithm: Algorithm, stats: NoiseStats, setting: Setting, dim: int, *, label: str | None = None,
            sign_lr_given: float | None = None, spectrum: scaling.Spectrum | None = None) -> Prediction:
    """The quality model for one method at ``setting`` (see the module doc). ``sign_lr_given`` fixes the sign
    methods' learning rate (default: the one matching DSGD's drift, ``sign_lr``). ``spectrum`` (the Hessian's
    eigenvalues, optional) multiplies DSGD's and DCSGD's first-order losses by the discrete model's factor F
    (§3.3, exact on a quadratic with isotropic noise) and checks its stability ηh_max(1 + ω/N) < 2."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be the number of parameters, a whole number ≥ 1, got {describe(dim)}")
    kind = method_kind(algorithm)
    label = label or algorithm.label()
    tails = stats.tails
    comp = algorithm.compressor
    omega = comp.omega(dim) if comp.unbiased else None
    delta = comp.delta(dim)

    def factor(om: float, s: Setting) -> float:
        if spectrum is None:
            return 1.0
        hp = {"lr": s.lr, "batch": float(s.batch), "workers": float(s.workers), "omega": om}
        return scaling.correction("discrete", hp, spectrum)

    ref_sample = dsgd_loss(stats, setting)  # with the probe's finite-sample tr Σ: ranks methods of infinite variance
    ref = math.inf if tails == "infinite" else ref_sample * factor(0.0, setting)
    alpha_text = f"α̂ = {stats.tail_index:.3g} ± {stats.tail_index_se:.2g}"
    notes: list[str] = []
    heavy = {"infinite": f"[derived] variance infinite ({alpha_text}: α̂ + 2se ≤ {INFINITE_TAIL:g}): the stationary loss is infinite "
                         "(§2.7)",
             "near": f"[heuristic] heavy tails ({alpha_text}, α̂ − 2se ≤ {HEAVY_TAIL:g}): the variance may be infinite; "
                     "the prediction uses the sampled tr Σ"}
    if kind in ("dsgd", "dcsgd"):
        om = 0.0 if kind == "dsgd" else float(omega or 0.0)
        status = {"infinite": "refused", "near": "flagged"}.get(tails, "ok")
        f = factor(om, setting)
        first = dcsgd_loss(stats, setting, om)
        loss = math.inf if tails == "infinite" else first * f
        if tails != "finite":
            notes.append(heavy[tails])
        if kind == "dsgd":
            notes.append("[derived] η tr Σ/(4NB): the OU model's E f_∞ − f* = η tr S/4, for any Hessian (§3.1–3.2)")
        else:
            b_s = stats.b_simple
            notes.append(f"[derived] loss ratio to DSGD 1 + ω + ωB(‖G‖² + h²)/tr Σ with ω = {om:.4g}, "
                         f"B/b_simple = {setting.batch / b_s if math.isfinite(b_s) else 0.0:.3g} (§2.6, §3.5); "
                         "‖G‖² held at the probe's value [heuristic]")
        if spectrum is not None:
            if not math.isfinite(f):
                status = "refused" if status != "refused" else status
                loss = math.inf
                notes.append(f"[derived] unstable: η h_max (1 + ω/N) ≥ 2 with h_max = {spectrum.eig_max:g} (§3.3)")
            else:
                notes.append(f"[derived] × F = {f:.4g}, the discrete model's factor for the given spectrum (§3.3)")
        if tails == "infinite":  # rank by the noise's tail constant, then by the finite-variance parts
            alpha = max(1.0, min(2.0, stats.tail_index))
            rank_ratio = (1.0 + om) ** (alpha - 1.0)
            notes.append(f"[derived for α-stable noise and rand-k; heuristic otherwise] the tail constant of the update's "
                         f"noise is (1 + ω)^(α − 1) = {rank_ratio:.3g} times DSGD's: (1/N)(d/k) per kept coordinate, kept "
                         "with probability k/d, and α-stable scales add as scale^α")
            tiebreak = _ratio(first, ref_sample) if math.isfinite(ref_sample) and ref_sample > 0 else 1.0 + om
        else:
            rank_ratio = (_ratio(loss, ref) if math.isfinite(loss) else
                          (first / ref_sample if 0 < ref_sample < math.inf else math.inf)) or 0.0
            tiebreak = rank_ratio
        pred = Prediction(label, kind, status, setting, loss, _ratio(loss, ref), None, 1.0, omega=omega, delta=delta,
                          notes=notes, rank_ratio=rank_ratio, rank_tiebreak=float(tiebreak or 0.0))
        if kind == "dcsgd" and om > 0 and status != "refused" and math.isfinite(stats.trace_sigma) and stats.trace_sigma > 0:
            _retune_dcsgd(pred, stats, setting, om)
        pred.loss_gap = None if pred.stationary_loss is None or math.isinf(ref) else pred.stationary_loss - ref
        return pred

    if kind in ("dsignsgd", "dsignsgd-majority"):
        majority = kind == "dsignsgd-majority"
        law = stats.law
        matched = sign_lr(stats, setting, dim, majority=majority)
        lr = sign_lr_given if sign_lr_given is not None else matched
        scale = stats.mean_scale(dim)
        if scale is None:
            notes.append("[heuristic] no noise scale: the variance is infinite and the probe measured no robust scale, so "
                         "neither the drift-matched learning rate nor the loss can be computed"
                         + ("" if lr is not None else " (give the sign methods' learning rate)")
                         + "; bounded for every tail (§2.7)")
            at = setting if lr is None else Setting(_number("sign_lr", lr, positive=True), setting.batch, setting.workers)
            return Prediction(label, kind, "ok", at, None, None, None, None, notes=notes, rank_ratio=0.0)
        assert lr is not None  # the matched one exists where the scale does
        s_lr = Setting(_number("sign_lr", lr, positive=True), setting.batch, setting.workers)
        s_loss = sign_loss(stats, s_lr, dim, majority=majority)
        assert s_loss is not None  # the scale is known
        c, q = majority_constants(setting.workers) if majority else (1.0, 1.0 / setting.workers)
        gain = c * 2.0 * law.density_at_zero() * math.sqrt(setting.batch) / scale
        drift = s_lr.lr * gain / setting.lr
        noise_text = "Gaussian" if law.name == "gaussian" else f"Student-t ν = α̂ = {law.dof:.3g}"
        notes.append(f"[derived] η_s Σ_j s_j q/(4 c_N √B 2f(0)) with q = {q:.3g}, c_N = {c:.3g}, 2f(0) = "
                     f"{2 * law.density_at_zero():.4f} ({noise_text} [heuristic law]); linear in the noise scale (§3.4"
                     + (", §9.9" if majority else "") + "); bounded for every tail index (§2.7)")
        if sign_lr_given is None:
            notes.append(f"[heuristic] learning rate {s_lr.lr:.4g} matches DSGD's linearised drift at the mean noise "
                         f"scale s̄ = {scale:.4g} (η_s = η s̄/(c_N 2f(0)√B)); "
                         + ("isotropic scales assumed" if stats.noise_scale is None and stats.isotropy == 1.0
                            else f"isotropy {stats.isotropy:.3g}"))
        else:
            notes.append(f"[derived] drift {drift:.3g}× DSGD's at the given learning rate {s_lr.lr:.4g}"
                         + (f" (matched: {matched:.4g})" if matched is not None else ""))
        if stats.heterogeneity > 0:
            notes.append("[derived] heterogeneous workers move the sign methods' stationary point (§3.4); not in the loss")
        sat = sign_saturation(stats, setting.batch)
        status = "ok"
        if sat:
            med = sat.get(0.5, min(sat.values()))
            notes.append(f"[heuristic] far from the minimum the sign saturates: drift {med:.3g}× its linearisation at the "
                         "median coordinate's minibatch SNR")
            if med < SATURATED:
                status = "flagged"
                notes.insert(0, f"[heuristic] high signal-to-noise: the median coordinate's sign drift is {med:.2g}× its "
                                "linearisation, so the drift-matched learning rate and the loss (both from the linear regime, "
                                "§2.7) do not hold; a sign step of η_s per coordinate may overshoot")
        pred = Prediction(label, kind, status, s_lr, s_loss, _ratio(s_loss, ref), None, drift, notes=notes,
                          rank_ratio=_ratio(s_loss, ref) or 0.0, rank_tiebreak=s_loss, saturation=sat)
        if pred.loss_ratio is not None and pred.loss_ratio > 1.0 + 1e-9:
            _retune_sign(pred, s_lr, pred.loss_ratio, majority)
        pred.loss_gap = None if math.isinf(ref) else s_loss - ref
        return pred

    if kind == "ef":
        status = {"infinite": "refused", "near": "flagged"}.get(tails, "ok")
        if tails != "finite":
            notes.append(heavy[tails].replace("(§2.7)", "(its memory is fed by g: §4.6) [heuristic]"))
        if delta is None:
            status = "flagged" if status == "ok" else status
            notes.append(f"[recalled] {comp.name} is not contractive (no δ): EF's analyses assume B3(δ) (§4.6)")
        loss = ref
        notes.append("[recalled] EF's leading term equals DSGD's (Stich & Karimireddy 2019): its iterate is the SGD sum "
                     "minus the workers' mean memory (§4.6, derived)")
        if delta is not None and math.isfinite(stats.trace_sigma):
            bound = ef_memory_bound(stats, setting, delta)
            if spectrum is not None:
                notes.append(f"[derived] memory E‖e‖² ≤ 4δ²η²E‖g‖² = {bound:.3g} (δ = {delta:.4g}); loss moves by ≤ "
                             f"h_max/2 · that = {spectrum.eig_max / 2 * bound:.3g} (a loose bound)")
            else:
                notes.append(f"[derived] memory E‖e‖² ≤ 4δ²η²E‖g‖² = {bound:.3g} (δ = {delta:.4g}); its effect on the loss "
                             "needs the sharpness h_max (a loose bound)")
        return Prediction(label, kind, status, setting, loss, _ratio(loss, ref), 0.0 if math.isfinite(ref) else None, 1.0,
                          omega=omega, delta=delta, notes=notes, rank_ratio=1.0, rank_tiebreak=1.0)

    if kind == "dcsgd-biased":
        notes.append(f"[derived] {comp.name} is biased: without error feedback DCSGD may diverge even on a strongly "
                     "convex problem (the Top-1 counter-example, §4.5); use ef")
        return Prediction(label, kind, "flagged", setting, None, None, None, None, delta=delta, notes=notes)
    notes.append("not modelled: the quality model covers dsgd, dcsgd, dsignsgd, dsignsgd-majority and ef without "
                 "transforms")
    return Prediction(label, kind, "unmodelled", setting, None, None, None, None, notes=notes)


def _retune_dcsgd(pred: Prediction, stats: NoiseStats, s: Setting, omega: float) -> None:
    """The settings keeping DSGD's noise power η tr S: the first-order rule B × (1 + ω) (``scaling.solve``), then
    the noise check's levers (``scaling.noise_check``), with ‖G‖² + h² as the compression-noise source."""
    frm = {"lr": s.lr, "batch": float(s.batch), "workers": float(s.workers), "omega": 0.0}
    sol = scaling.solve("dcsgd", frm, {"omega": omega, "lr": scaling.KEEP, "workers": scaling.KEEP}, model="first-order")
    check = scaling.noise_check(sol, stats.trace_sigma, math.sqrt(stats.grad_norm_sq + stats.h2))
    lev = check.levers()
    pred.levers = {"batch": lev["batch"], "workers": lev["workers"], "lr": lev["lr"]}
    first_b = sol.to["batch"]
    if math.isfinite(lev["batch"]) and lev["batch"] <= MAX_INT64:
        pred.retuned, pred.lever = Setting(s.lr, _whole(lev["batch"]), s.workers), "batch"
    elif lev["workers"] <= MAX_WORKERS:
        pred.retuned, pred.lever = Setting(s.lr, s.batch, _whole(lev["workers"])), "workers"
    else:
        pred.retuned, pred.lever = Setting(lev["lr"], s.batch, s.workers), "lr"
    share = check.as_dict()["compression_share_to"]
    text = (f"[derived] the rule η(1+ω)/(BN) asks B = {first_b:.6g} (first order); at the probed noise the compression "
            f"noise ω‖G‖² is {100 * share:.3g} % of DCSGD's noise there")
    if math.isfinite(lev["batch"]):
        text += f"; B = {lev['batch']:.4g} keeps DSGD's noise power η tr S"
    else:
        text += ("; no batch size closes the gap (η ω‖G‖²/N alone exceeds DSGD's noise power): "
                 f"N = {lev['workers']:.4g} workers or η = {lev['lr']:.4g} do")
    pred.notes.append(text)


def _retune_sign(pred: Prediction, s: Setting, ratio: float, majority: bool) -> None:
    """The DSignSGD rule η/(N√B) (``scaling.solve``) from the setting at DSGD's loss (learning rate η_s/r) to η_s:
    N × r or B × r² (the mean of signs); B × r² or η_s/r (majority vote, whose diffusion does not fall as 1/N)."""
    frm = {"lr": s.lr / ratio, "batch": float(s.batch), "workers": float(s.workers)}
    batch = scaling.solve("dsignsgd", frm, {"lr": s.lr, "workers": scaling.KEEP}, model="first-order").exact
    pred.levers = {"batch": batch, "lr": s.lr / ratio}
    if not majority:
        pred.levers["workers"] = scaling.solve("dsignsgd", frm, {"lr": s.lr, "batch": scaling.KEEP},
                                               model="first-order").exact
    if batch <= MAX_INT64:
        pred.retuned, pred.lever = Setting(s.lr, _whole(batch), s.workers), "batch"
    else:
        pred.retuned, pred.lever = Setting(s.lr / ratio, s.batch, s.workers), "lr"
    pred.notes.append(f"[derived] the rule η/(N√B) closes the {ratio:.3g}× gap with B × {ratio ** 2:.3g}"
                      + ("" if majority else f" or N × {ratio:.3g}") + f" or η_s / {ratio:.3g} (which slows the drift)")


def rank(predictions: Iterable[Prediction]) -> list[Prediction]:
    """Best first: by status (ok, flagged, refused, unmodelled), then by the loss ratio to DSGD (for methods of infinite
    variance, the tail constant of their noise, (1 + ω)^(α − 1), then the ratio at the probe's finite-sample tr Σ)."""
    return sorted(predictions, key=lambda p: (STATUSES.index(p.status), p.rank_ratio, p.rank_tiebreak))


def predict_all(algorithms: Mapping[str, Algorithm] | Sequence[Algorithm], stats: NoiseStats | Mapping[str, Any] | Any,
                setting: Setting, dim: int, *, sign_lr_given: float | None = None,
                spectrum: scaling.Spectrum | None = None) -> list[Prediction]:
    """``predict`` for every method (a mapping label → algorithm, or a sequence labelled by ``Algorithm.label``),
    in the given order; ``stats`` may be a probe or a mapping (``NoiseStats.from_probe``)."""
    st = NoiseStats.from_probe(stats)
    items = algorithms.items() if isinstance(algorithms, Mapping) else [(a.label(), a) for a in algorithms]
    return [predict(a, st, setting, dim, label=name, sign_lr_given=sign_lr_given, spectrum=spectrum) for name, a in items]
