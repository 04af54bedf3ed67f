"""The quality model of ``compsde advise`` (``compsde.advise.quality``) against the closed forms of docs/theory.md
§2–3 (exactly), the scaling rules of ``compsde.sde.scaling``, and its heavy-tail flags."""

import math

import numpy as np
import pytest
import torch

from compsde import algorithms
from compsde.advise import quality
from compsde.advise.quality import NoiseStats, Setting
from compsde.objectives.noise import Noise
from compsde.sde import scaling


def _stats(d=20, s=1.0, **kw):
    """Isotropic Gaussian noise of scale s per coordinate: tr Σ = d s² (tail index 2: finite variance)."""
    return NoiseStats(trace_sigma=d * s * s, grad_norm_sq=kw.pop("g2", 0.0), tail_index=2.0, **kw)


HP = {"lr": 0.05, "batch": 4.0, "workers": 3.0}
SET = Setting(0.05, 4, 3)


# ---- the closed forms ----------------------------------------------------------------------------


def test_dsgd_and_dcsgd_losses_are_the_first_order_closed_forms():
    d, s = 20, 1.7
    spec = scaling.Spectrum(0.5, 2.0, d)
    st = _stats(d, s)
    assert quality.dsgd_loss(st, SET) == pytest.approx(
        scaling.stationary_loss_theory("dsgd", HP, scale=s, model="first-order", spectrum=spec), rel=1e-13)
    for omega in (0.125, 3.0, 99.0):
        assert quality.dcsgd_loss(st, SET, omega) == pytest.approx(
            scaling.stationary_loss_theory("dcsgd", {**HP, "omega": omega}, scale=s, model="first-order", spectrum=spec),
            rel=1e-13)


def test_dcsgd_ratio_is_one_plus_omega_times_one_plus_b_over_b_simple():
    st = NoiseStats(trace_sigma=50.0, grad_norm_sq=2.0, heterogeneity=0.0)
    for omega in (0.5, 3.0):
        r = quality.dcsgd_loss(st, SET, omega) / quality.dsgd_loss(st, SET)
        assert r == pytest.approx(1 + omega * (1 + SET.batch / st.b_simple), rel=1e-13)
    # the heterogeneity adds to ‖G‖²: (1/N) Σ_i ‖∇f_i‖² = ‖G‖² + h², h² = H ‖G‖² (the probe's relative H)
    het = NoiseStats(trace_sigma=50.0, grad_norm_sq=2.0, heterogeneity=1.5)
    assert quality.dcsgd_loss(het, SET, 3.0) == pytest.approx(
        quality.dcsgd_loss(NoiseStats(trace_sigma=50.0, grad_norm_sq=5.0), SET, 3.0), rel=1e-13)


def test_ou_stationary_loss_is_eta_trace_over_four_for_any_hessian():
    """The identity behind the quality model: HP + PH = ηS ⇒ ½ tr(HP) = η tr S/4, for non-diagonal H and S."""
    from scipy.linalg import solve_continuous_lyapunov

    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.standard_normal((6, 6))
        h = a @ a.T + 0.1 * np.eye(6)
        b = rng.standard_normal((6, 6))
        s = b @ b.T
        eta = 0.03
        p = solve_continuous_lyapunov(h, eta * s)
        assert 0.5 * np.trace(h @ p) == pytest.approx(eta * np.trace(s) / 4, rel=1e-10)


@pytest.mark.parametrize("nu", [math.inf, 1.0, 1.4])
def test_sign_loss_is_the_closed_form(nu):
    """Finite variance: Gaussian law with the scale from tr Σ; infinite (α̂ = ν < 2): Student-t ν with the given scale."""
    d, s = 20, 1.3
    noise = Noise("gaussian") if math.isinf(nu) else Noise("student-t", nu=nu)
    st = (NoiseStats(trace_sigma=d * s * s, grad_norm_sq=0.0, tail_index=2.0) if math.isinf(nu) else
          NoiseStats(trace_sigma=1e3, grad_norm_sq=0.0, tail_index=nu, tail_index_se=0.05, noise_scale=s))
    assert st.law.name == noise.name and st.law.nu == noise.nu
    want = SET.lr * d * s / (4 * SET.workers * math.sqrt(SET.batch) * 2 * noise.density_at_zero())
    assert quality.sign_loss(st, SET, d) == pytest.approx(want, rel=1e-12)
    if math.isinf(nu):  # the library's own closed form (Gaussian)
        assert quality.sign_loss(st, SET, d) == pytest.approx(
            scaling.stationary_loss_theory("dsignsgd", HP, scale=s), rel=1e-12)


def test_the_sign_law_follows_the_tails():
    """docs/theory.md §3.4's 2f(0): 2/π for Cauchy (α̂ = 1), √(2/π) where the variance is finite."""
    assert 2 * NoiseStats(1.0, 0.0, tail_index=1.0, tail_index_se=0.1).law.density_at_zero() == pytest.approx(0.6366, abs=1e-4)
    for alpha in (1.95, 2.0, math.inf):
        assert 2 * NoiseStats(1.0, 0.0, tail_index=alpha).law.density_at_zero() == pytest.approx(math.sqrt(2 / math.pi))
    assert NoiseStats(math.inf, 0.0).tails == "infinite"  # an infinite measured trace, whatever α̂ says


@pytest.mark.parametrize("n", range(1, 10))
def test_majority_constants_match_the_binomial_law(n):
    """c_N = ½ dE V/dp at p = ½ and Var V at p = ½, from the exact law of K ~ Bin(N, p)."""

    def ev(p):
        k = np.arange(n + 1)
        pmf = np.array([math.comb(n, int(j)) for j in k]) * p**k * (1 - p) ** (n - k)
        v = np.sign(2 * k - n)
        return float((pmf * v).sum()), float((pmf * v * v).sum())

    c, var = quality.majority_constants(n)
    eps = 1e-6
    assert c == pytest.approx((ev(0.5 + eps)[0] - ev(0.5 - eps)[0]) / (2 * eps) / 2, rel=1e-6)
    assert var == pytest.approx(ev(0.5)[1] - ev(0.5)[0] ** 2, rel=1e-12)
    assert c <= math.sqrt(2 * n / math.pi) + 0.5


def test_matched_sign_lr_gives_unit_drift_and_the_ratio_one_over_two_f0_squared_var():
    d = 50
    for iso in (1.0, 0.6):
        st = _stats(d, 0.7, isotropy=iso)
        p = quality.predict(algorithms.make("dsignsgd"), st, SET, d)
        assert p.drift_factor == pytest.approx(1.0, rel=1e-12)
        # 1/((2f(0))² Var T) = π/2 for isotropic Gaussian noise; spread scales ((Σσ_j)² < d tr Σ) favour the sign
        assert p.loss_ratio == pytest.approx(iso * math.pi / 2, rel=1e-12)
        # majority vote at its matched lr: N Var V/c_N² times DSGD's ratio... relative to the mean of signs
        pm = quality.predict(algorithms.make("dsignsgd-majority"), st, SET, d)
        c, var = quality.majority_constants(SET.workers)
        assert pm.loss_ratio / p.loss_ratio == pytest.approx(SET.workers * var / c**2, rel=1e-12)
        assert pm.drift_factor == pytest.approx(1.0, rel=1e-12)


def test_sign_saturation_is_one_at_zero_snr_and_falls():
    st = NoiseStats(1.0, 0.0, snr={0.1: 0.0, 0.5: 0.1, 0.9: 2.0})
    sat = quality.sign_saturation(st, 16)
    assert sat[0.1] == 1.0
    z = 4 * 0.1
    assert sat[0.5] == pytest.approx(math.erf(z / math.sqrt(2)) / (math.sqrt(2 / math.pi) * z), rel=1e-12)
    assert 0 < sat[0.9] < sat[0.5] < 1


# ---- the retuned settings ------------------------------------------------------------------------


def test_dcsgd_retune_is_the_scaling_rule_and_its_noise_check():
    d = 100
    comp = algorithms.make("dcsgd", "rand-k", ratio=0.25)  # ω = 3
    # no gradient: the first-order rule B × (1 + ω) keeps η tr S exactly
    p = quality.predict(comp, NoiseStats(trace_sigma=40.0, grad_norm_sq=0.0), SET, d)
    assert p.omega == pytest.approx(3.0)
    assert p.loss_ratio == pytest.approx(4.0)
    assert p.lever == "batch" and p.retuned == Setting(SET.lr, 16, SET.workers)
    # a gradient: B must grow more, as the noise check says
    st = NoiseStats(trace_sigma=40.0, grad_norm_sq=2.0)
    p = quality.predict(comp, st, SET, d)
    sol = scaling.solve("dcsgd", {**HP, "omega": 0.0}, {"omega": 3.0, "lr": "same", "workers": "same"}, model="first-order")
    lev = scaling.noise_check(sol, 40.0, math.sqrt(2.0)).levers()
    assert p.levers == pytest.approx(lev)
    assert p.retuned is not None and p.retuned.batch == math.ceil(lev["batch"] - 1e-9) and p.lever == "batch"
    # check: the retuned batch brings DCSGD's loss to DSGD's (up to rounding up)
    exact = Setting(SET.lr, SET.batch, SET.workers)
    assert quality.dcsgd_loss(st, Setting(SET.lr, p.retuned.batch, SET.workers), 3.0) <= quality.dsgd_loss(st, exact) * (1 + 1e-12)
    # ‖G‖² dominating: no batch size closes the gap; the workers do
    big = NoiseStats(trace_sigma=40.0, grad_norm_sq=20.0)
    p = quality.predict(comp, big, SET, d)
    assert math.isinf(p.levers["batch"]) and p.lever == "workers"
    assert quality.dcsgd_loss(big, p.retuned, 3.0) <= quality.dsgd_loss(big, SET) * (1 + 1e-12)
    assert any("no batch size" in n for n in p.notes)


def test_sign_retune_follows_the_dsignsgd_rule():
    d = 50
    st = _stats(d, 0.7)  # Gaussian: matched-drift ratio π/2
    p = quality.predict(algorithms.make("dsignsgd"), st, SET, d)
    r = math.pi / 2
    assert p.levers["workers"] == pytest.approx(SET.workers * r, rel=1e-9)
    assert p.levers["batch"] == pytest.approx(SET.batch * r * r, rel=1e-9)
    assert p.retuned is not None and p.retuned.batch == math.ceil(SET.batch * r * r)
    loss = quality.sign_loss(st, p.retuned, d)
    assert loss <= quality.dsgd_loss(st, SET) * (1 + 1e-12)


def test_ef_memory_bound_holds_in_a_simulation():
    """E‖e‖² ≤ 4δ²η²E‖g‖² for EF with top-k (δ = d/k) at stationarity."""
    d, k, eta = 40, 4, 0.1
    comp = algorithms.make("ef", "top-k", k=k).compressor
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    e = torch.zeros(256, d, dtype=torch.float64)
    acc = []
    for step in range(600):
        g = mean + 2.0 * torch.randn(256, d, generator=gen, dtype=torch.float64)
        v = e + eta * g
        e = v - comp(v)
        if step >= 300:
            acc.append(float(e.square().sum(1).mean()))
    st = NoiseStats(trace_sigma=4.0 * d, grad_norm_sq=float(mean.square().sum()))
    bound = quality.ef_memory_bound(st, Setting(eta, 1, 1), comp.delta(d))
    assert np.mean(acc) <= bound
    p = quality.predict(algorithms.make("ef", "top-k", k=k), st, Setting(eta, 1, 1), d)
    assert p.loss_ratio == 1.0 and p.status == "ok" and any(n.startswith("[recalled]") for n in p.notes)


# ---- heavy tails, flags, ranking -----------------------------------------------------------------


def test_tail_status_thresholds():
    inf, heavy = quality.INFINITE_TAIL, quality.HEAVY_TAIL
    assert quality.tail_status(1.0, 0.2) == "infinite"
    assert quality.tail_status(inf - 0.01, 0.0) == "infinite"
    assert quality.tail_status(inf - 0.05, 0.1) == "near"  # the interval straddles the limit
    assert quality.tail_status(heavy + 0.05, 0.1) == "near"
    assert quality.tail_status(heavy + 0.05, 0.0) == "finite"
    # the calibration: the probe's α̂ for Student-t ν = 2, 3, 8 and Gaussian noise (m = 8, quality.py's table)
    assert [quality.tail_status(a, 0.005) for a in (1.52, 1.72, 1.93, 2.0)] == ["infinite", "near", "finite", "finite"]
    assert quality.tail_status(math.inf, 0.0) == "finite"


def test_infinite_variance_refuses_dsgd_dcsgd_and_ef_and_ranks_sign_first():
    d = 30
    st = NoiseStats(trace_sigma=1e4, grad_norm_sq=1.0, tail_index=1.0, tail_index_se=0.1, noise_scale=0.5)
    methods = {"DSGD": algorithms.make("dsgd"), "DCSGD": algorithms.make("dcsgd", "rand-k", ratio=0.25),
               "DSignSGD": algorithms.make("dsignsgd"), "EF": algorithms.make("ef", "top-k", k=3)}
    preds = {p.label: p for p in quality.predict_all(methods, st, SET, d)}
    for name in ("DSGD", "DCSGD", "EF"):
        assert preds[name].status == "refused", name
        assert any("variance infinite" in n for n in preds[name].notes)
    assert math.isinf(preds["DSGD"].stationary_loss) and math.isinf(preds["DCSGD"].stationary_loss)
    sign = preds["DSignSGD"]
    assert sign.status == "ok" and math.isfinite(sign.stationary_loss) and sign.loss_ratio == 0.0
    # Cauchy: 2f(0) = 2/π
    lr = SET.lr * 0.5 / ((2 / math.pi) * math.sqrt(SET.batch))
    assert sign.setting.lr == pytest.approx(lr, rel=1e-12)
    order = [p.label for p in quality.rank(preds.values())]
    assert order[0] == "DSignSGD" and order.index("DSGD") < order.index("DCSGD")
    # without a measured scale the sign method still ranks first, with no number
    st2 = NoiseStats(trace_sigma=1e4, grad_norm_sq=1.0, tail_index=1.0, tail_index_se=0.1)
    p2 = quality.predict(algorithms.make("dsignsgd"), st2, SET, d)
    assert p2.stationary_loss is None and p2.status == "ok"
    assert quality.rank([quality.predict(algorithms.make("dsgd"), st2, SET, d), p2])[0] is p2


def test_near_two_is_flagged_not_refused():
    st = NoiseStats(trace_sigma=100.0, grad_norm_sq=1.0, tail_index=1.8, tail_index_se=0.1)
    p = quality.predict(algorithms.make("dcsgd", "rand-k", ratio=0.5), st, SET, 10)
    assert p.status == "flagged" and math.isfinite(p.stationary_loss)
    assert p.notes[0].startswith("[heuristic] heavy tails")


def test_biased_without_ef_and_unmodelled_methods():
    st = NoiseStats(trace_sigma=10.0, grad_norm_sq=1.0)
    p = quality.predict(algorithms.make("dcsgd", "top-k", k=2), st, SET, 10)
    assert p.status == "flagged" and "§4.5" in p.notes[0]
    p = quality.predict(algorithms.make("adam"), st, SET, 10)
    assert p.status == "unmodelled"
    assert [q.status for q in quality.rank([p, quality.predict(algorithms.make("dsgd"), st, SET, 10)])] == ["ok", "unmodelled"]


def test_spectrum_applies_the_discrete_factor_and_refuses_unstable_settings():
    st = _stats(20, 1.0)
    spec = scaling.Spectrum(0.5, 2.0, 20)
    p = quality.predict(algorithms.make("dsgd"), st, SET, 20, spectrum=spec)
    assert p.stationary_loss == pytest.approx(
        scaling.stationary_loss_theory("dsgd", HP, scale=1.0, model="discrete", spectrum=spec), rel=1e-12)
    fast = Setting(1.5, 4, 1)  # η h_max (1 + ω/N) = 1.5·2·4 ≥ 2
    p = quality.predict(algorithms.make("dcsgd", "rand-k", ratio=0.25), st, fast, 20, spectrum=spec)
    assert p.status == "refused" and math.isinf(p.stationary_loss)


# ---- input ---------------------------------------------------------------------------------------


def test_from_probe_accepts_mappings_and_objects():
    st = NoiseStats.from_probe({"trace_sigma": 3.0, "grad_norm_sq": 0.5, "tail_index": {"value": 2.9, "se": 0.3},
                                "snr": {"q50": 0.2, "p90": 1.0, "mean": 0.4}, "heterogeneity": None, "b_simple": 6.0})
    assert st.tail_index == 2.9 and st.tail_index_se == 0.3 and st.snr == {0.5: 0.2, 0.9: 1.0}
    assert st.b_simple == 6.0

    class Probe:
        def as_dict(self):
            return {"trace_sigma": 1.0, "grad_norm_sq": 2.0, "tail_index": (4.0, 0.5), "snr": [(0.5, 0.3)]}

    st = NoiseStats.from_probe(Probe())
    assert (st.tail_index, st.tail_index_se, st.snr) == (4.0, 0.5, {0.5: 0.3})


@pytest.mark.parametrize("bad, msg", [
    ({"grad_norm_sq": 1.0}, "probe lacks trace_sigma"),
    ({"trace_sigma": -1.0, "grad_norm_sq": 1.0}, "trace_sigma must be ≥ 0"),
    ({"trace_sigma": 1.0, "grad_norm_sq": "x"}, "grad_norm_sq must be a number"),
    ({"trace_sigma": 1.0, "grad_norm_sq": 1.0, "tail_index": 0.0}, "tail_index must be > 0"),
    ({"trace_sigma": 1.0, "grad_norm_sq": 1.0, "isotropy": 2.0}, "isotropy must be in (0, 1]"),
    ({"trace_sigma": 1.0, "grad_norm_sq": 1.0, "snr": {1.5: 0.1}}, "snr quantiles must be in [0, 1]"),
])
def test_bad_probe_values_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        NoiseStats.from_probe(bad)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="lr must be > 0"):
        Setting(0.0, 1, 1)
    with pytest.raises(ValueError, match="batch must be a whole number"):
        Setting(0.1, 2.5, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be the number of parameters"):
        quality.predict(algorithms.make("dsgd"), NoiseStats(1.0, 1.0), SET, 0)
    with pytest.raises(ValueError, match="method must be a compsde Algorithm"):
        quality.predict("dsgd", NoiseStats(1.0, 1.0), SET, 10)  # type: ignore[arg-type]


def test_high_snr_flags_the_sign_methods():
    """Far from the minimum (median minibatch SNR ≫ 1) the sign drift saturates: the linear-regime prediction is flagged."""
    low = NoiseStats(100.0, 1.0, tail_index=2.0, snr={0.5: 0.01})
    high = NoiseStats(100.0, 1.0, tail_index=2.0, snr={0.5: 2.0})
    assert quality.predict(algorithms.make("dsignsgd"), low, SET, 50).status == "ok"
    p = quality.predict(algorithms.make("dsignsgd"), high, SET, 50)
    assert p.status == "flagged" and p.saturation[0.5] < quality.SATURATED and "high signal-to-noise" in p.notes[0]


def test_sign_lr_given_without_a_scale():
    st = NoiseStats(trace_sigma=1e9, grad_norm_sq=0.0, tail_index=1.0, tail_index_se=0.01)
    p = quality.predict(algorithms.make("dsignsgd"), st, SET, 10, sign_lr_given=0.03)
    assert p.status == "ok" and p.setting.lr == 0.03 and p.stationary_loss is None and "no noise scale" in p.notes[0]
    p = quality.predict(algorithms.make("dsignsgd"), st, SET, 10)
    assert p.setting == SET and "give the sign methods' learning rate" in p.notes[0]
