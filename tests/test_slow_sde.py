"""The slow SDE of SGD, Local SGD and QSR on the sharpness valley (docs/theory.md §5.5, ``compsde.sde.slow``):
the problem and its label-like noise, ψ and the drift factors, and the drift of y measured in the simulator
against the ODE the slow SDE reduces to, with tolerances from the standard error over repetitions plus the
slow SDE's own O(ηh) discretisation allowance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from compsde import Schedule, algorithms, simulate
from compsde.algorithms.sync import SyncSchedule
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import slow


def _valley(**kw):
    return problems.make("sharpness-valley", **{"dim": 11, "h0": 1.0, **kw})


# ---- the problem and its noise --------------------------------------------------------------------


def test_valley_gradient_minima_start_and_gradient_flow_projection():
    p = _valley(dim=5, h0=2.0, x0_scale=0.7)
    z = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    (auto,) = torch.autograd.grad(p.loss(z).sum(), z)
    torch.testing.assert_close(p.grad(z.detach()), auto, rtol=1e-12, atol=1e-12)
    on = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1.3]], dtype=torch.float64)  # a point of Γ = {x = 0}
    assert float(p.loss(on)) == 0.0 and float(p.grad(on).norm()) == 0.0
    assert p.x_opt is None and p.normal_dim == 4
    x0 = p.x0()
    assert float(x0[:-1].norm()) == pytest.approx(0.7) and float(x0[-1]) == 0.0
    assert float(p.metrics(x0.unsqueeze(0))["sharpness"]) == pytest.approx(2.0)  # h(y⁰) = h0
    # Noiseless gradient descent ends on Γ: each step moves y by Δ‖x‖²/(4 − 2ηh) (the discrete form of
    # dy/d‖x‖² = 1/4), within ηh/2 relative of Φ's −‖x⁰‖²/4.
    o = Oracle(p, None, workers=1)
    eta = 5e-3  # ηh ≤ 0.01
    tr = simulate(o, algorithms.make("dsgd"), Schedule("constant", eta, 2000), log_every=2000)
    y_end = math.log(float(tr.metrics["sharpness"][-1, 0]) / 2.0)
    phi = float(p.projection(x0))
    assert 0.0 < (y_end - phi) / phi < eta * 2.0  # GD goes a little further than gradient flow
    assert float(p.projection(x0)) == pytest.approx(-0.49 / 4)


def test_valley_noise_is_label_like_normal_only_and_scaled_by_the_curvature():
    """The oracle's noise is σ √h(y) T/√B in x and exactly 0 in y; the SDE models see its covariance."""
    from compsde.core.streams import Streams
    from compsde.sde.models import from_algorithm

    p = _valley(dim=4, h0=3.0)
    o = Oracle(p, Noise("gaussian", 0.5), workers=2, batch=4)
    point = torch.tensor([0.0, 0.0, 0.0, 0.4], dtype=torch.float64)  # on Γ, h = 3 e^0.4
    h = 3.0 * math.exp(0.4)
    rows = 20000
    z = o.sample(Streams(0, 2, noise=range(2)), range(2), rows)
    g = o.grads(point.expand(rows, 4), 0, 2, z)  # (2, rows, 4)
    assert float(g[..., -1].abs().max()) == 0.0  # no noise along the valley
    var = g[..., :-1].var(dim=1)
    want = 0.25 * h / 4
    assert float((var / want - 1).abs().max()) < 5 * math.sqrt(2 / rows)  # sample variance: sd √(2/n)
    # the DSGD SDE's diffusion: (1/N²) Σ_i σ_i² diag(h I, 0)/B
    model = from_algorithm(o, algorithms.make("dsgd"), 0.1)
    cov = model.covariance(point.unsqueeze(0))[0]
    torch.testing.assert_close(cov, torch.diag(torch.tensor([want / 2] * 3 + [0.0], dtype=torch.float64)))


def test_valley_refuses_bad_parameters_by_name():
    with pytest.raises(ValueError, match="dim must be an integer ≥ 2"):
        problems.make("sharpness-valley", dim=1)
    with pytest.raises(ValueError, match="h0"):
        problems.make("sharpness-valley", h0=0.0)
    with pytest.raises(ValueError, match="does not take heterogeneity"):
        problems.make("sharpness-valley", heterogeneity=1.0)


# ---- ψ and the drift factors ----------------------------------------------------------------------


def test_psi_and_the_drift_factors_limits():
    assert slow.psi(0.0) == 0.0
    for z in (1e-10, 1e-6, 1e-3, 0.5, 3.0, 50.0):
        exact = (math.exp(-z) - 1 + z) / z if z > 1e-4 else z / 2 - z * z / 6
        assert slow.psi(z) == pytest.approx(exact, rel=1e-9)
    zs = np.linspace(0, 40, 401)
    vals = [slow.psi(float(z)) for z in zs]
    assert all(b > a for a, b in zip(vals, vals[1:])) and vals[-1] == pytest.approx(1.0, abs=0.03)
    assert slow.drift_factor(4, 0.0) == 1.0  # H = 1: SGD
    assert slow.drift_factor(1, 5.0) == 1.0  # one worker: SGD
    assert slow.drift_factor(4, 1e7) == pytest.approx(4.0, rel=1e-6)  # β → ∞ (QSR): K times SGD
    # the exact per-round factor: 1/(1 − ηh/2) at H = 1, and → drift_factor(K, (H − 1)ηh) as η → 0 at fixed β
    assert slow.round_factor(4, 1, 0.01) == pytest.approx(1 / 0.995)
    for beta_h in (0.1, 1.0, 5.0):
        errs = []
        for eta_h in (1e-2, 1e-3):
            period = round(beta_h / eta_h) + 1
            errs.append(abs(slow.round_factor(4, period, eta_h) / slow.drift_factor(4, (period - 1) * eta_h) - 1))
        assert errs[1] < 0.2 * errs[0] and errs[1] < 2e-3, (beta_h, errs)  # O(ηh)
    with pytest.raises(ValueError, match="eta_h"):
        slow.round_factor(4, 3, 2.5)


def test_periods_are_the_simulators():
    p = _valley(dim=3)
    o = Oracle(p, Noise("gaussian", 1.0), workers=2)
    sched = Schedule("cosine", 0.05, 300)
    sync = SyncSchedule("qsr", period=2, alpha=0.2)
    tr = simulate(o, algorithms.make("local-sgd", sync=sync), sched, log_every=1)
    hs = slow.periods(sched, sync)
    assert tr.sync_period is not None
    assert tr.sync_period[1:].tolist() == hs.tolist()  # the period in force during step k, logged after it
    assert slow.periods(sched, None).tolist() == [1] * 300


def test_prediction_refuses_what_it_does_not_model():
    p = _valley(dim=3)
    o = Oracle(p, Noise("gaussian", 1.0), workers=2)
    sched = Schedule("constant", 0.01, 10)
    assert slow.predicts(o, algorithms.make("dsgd"))
    with pytest.raises(ValueError, match="identity compressor"):
        slow.valley_prediction(o, algorithms.make("dcsgd", "rand-k", ratio=0.5), sched)
    with pytest.raises(ValueError, match="no transforms"):
        slow.valley_prediction(o, algorithms.make("local-sgd", sync=SyncSchedule(), worker={"momentum": 0.9}), sched)
    q = Oracle(problems.make("quadratic", dim=3), Noise("gaussian", 1.0), workers=2)
    with pytest.raises(ValueError, match="sharpness-valley"):
        slow.valley_prediction(q, algorithms.make("dsgd"), sched)
    with pytest.raises(ValueError, match="finite noise variance"):
        slow.valley_prediction(Oracle(p, Noise("student-t", 1.0, nu=2.0), workers=2), algorithms.make("dsgd"), sched)


# ---- the drift measured against the slow SDE ------------------------------------------------------


def _drift(sync, eta=0.02, steps=1200, start=200, repeats=64, workers=4, schedule="constant"):
    """Δy measured between the logged step ``start`` and the end (mean and standard error over repetitions),
    the slow SDE's Δy over the same steps, and the slow SDE's own O(η) error allowance (``_allowance``).
    Starts on Γ (x⁰ = 0), so y is the slow variable from the first step."""
    o = Oracle(_valley(x0_scale=0.0), Noise("gaussian", 1.0), workers=workers, batch=1)
    algo = algorithms.make("local-sgd", sync=sync)
    sched = Schedule(schedule, eta, steps)
    tr = simulate(o, algo, sched, repeats=repeats, log_every=start, seed=3)
    y = torch.log(tr.metrics["sharpness"]).double()  # h0 = 1: y = log h
    i0 = tr.steps.tolist().index(start)
    d = (y[-1] - y[i0]).numpy()
    pred = slow.valley_prediction(o, algo, sched)["y"]  # from Φ(x⁰) = 0
    # the iterate logged at ``start`` is the averaged point of the last round that ended by then
    hs, ends, k = slow.periods(sched, algo.sync), [0], 0
    while k < steps:
        k += int(hs[k])
        ends.append(k)
    last = max(e for e in ends if e <= start)
    h_min = math.exp(float(y[-1].mean()))  # the flattest point of the window
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(repeats)), float(pred[-1] - pred[last]), \
        _allowance(sched, last, h_min)


def _allowance(sched, start, h_min):
    """The slow SDE's relative error at finite η, to first order (docs/theory.md §5.5): ηh for the stationary
    variance's 1/(1 − ηh/2) and a round's first-order terms (``round_factor``), plus the lag of E‖x‖² behind
    a decaying η: relaxing in 1/(2ηh) steps toward a level ∝ η, it stays higher by |Δη_k|/(2η_k² h) relative,
    which over the window weighs to (η_start − η_end)/(2h Σ η_k²). At a constant η only the first term."""
    etas = np.array([sched(k) for k in range(start, sched.steps + 1)])
    lag = (etas[0] - etas[-1]) / (2 * h_min * float((etas[:-1] ** 2).sum()))
    return float(etas.max()) * 1.0 + lag  # h ≤ 1 along these runs (h0 = 1, y decreasing)


def _check(meas, se, pred, allowance):
    """|measured − slow SDE| ≤ 4 standard errors + the slow SDE's O(η) allowance (relative, ``_allowance``)."""
    assert abs(meas - pred) <= 4 * se + allowance * abs(pred), (meas, se, pred, allowance)


def test_sgd_and_local_sgd_drift_along_the_valley_as_the_slow_sde_predicts():
    """Data-parallel SGD (H = 1: the drift of SGD with the total batch K·B_loc) and Local SGD with H = β/η
    (β = 1, F = 1 + 3ψ(2βh) ≈ 2.2 here): the measured Δy of y over 1,000 steps at η = 0.02 against the slow
    SDE's; the ratio of their drifts is F within the errors, far from 1 (SGD) and from K = 4 (QSR)."""
    eta = 0.02
    m_sgd, se_sgd, p_sgd, a_sgd = _drift(SyncSchedule(), eta=eta)
    _check(m_sgd, se_sgd, p_sgd, a_sgd)
    m_loc, se_loc, p_loc, a_loc = _drift(SyncSchedule("constant", period=50), eta=eta)
    _check(m_loc, se_loc, p_loc, a_loc)
    ratio, want = m_loc / m_sgd, p_loc / p_sgd
    assert 1.6 < want < 2.6 and ratio == pytest.approx(want, rel=0.06)


@pytest.mark.slow
def test_qsr_and_its_powers_drift_as_the_slow_sde_predicts_under_a_decaying_learning_rate():
    """QSR (H = (α/η)², β = α²/η → ∞: F → K), H = β/η (power 1) and power 3, with a cosine learning rate
    from η = 0.02 over 4,000 steps (~15 s): Δy from step 400 on within the errors of the slow SDE integrated
    along the same schedule and periods; QSR's drift is more than twice SGD's (K = 4 in the limit η → 0)."""
    eta = 0.02
    m_sgd, se_sgd, p_sgd, a_sgd = _drift(SyncSchedule(), eta=eta, steps=4000, start=400, schedule="cosine")
    _check(m_sgd, se_sgd, p_sgd, a_sgd)
    for sync in (SyncSchedule("qsr", alpha=0.2), SyncSchedule("qsr", alpha=2.0, power=1),
                 SyncSchedule("qsr", alpha=0.0928, power=3)):
        m, se, p, a = _drift(sync, eta=eta, steps=4000, start=400, schedule="cosine")
        _check(m, se, p, a)
        if sync.power == 2:  # the drift ratio to SGD's is the slow SDE's, well above 1 (the window differs a little)
            assert m / m_sgd == pytest.approx(p / p_sgd, rel=0.06) and p / p_sgd > 2.0


@pytest.mark.slow
def test_qsr_sharpness_preset_tracks_its_slow_sde(tmp_path):
    """The preset at 3,000 steps and 16 repetitions (~15 s): every series' final sharpness within 3 % of its
    slow SDE's, data parallel the sharpest, and QSR with fewer rounds than the constant period."""
    from compsde.experiments import cli

    out = tmp_path / "run"
    assert cli.main(["run", "qsr-sharpness", "--no-progress", "--no-plots", "--out", str(out), "--set",
                     "run.steps=3000", "run.repeats=16"]) == 0
    series = json.loads((out / "summary.json").read_text(encoding="utf-8"))["series"]
    final = {s["label"]: s["final"] for s in series}
    for label, f in final.items():
        assert f["sharpness"] == pytest.approx(f["sharpness_slow_sde"], rel=0.03), label
    dp = final["data parallel (H = 1)"]["sharpness"]
    assert all(f["sharpness"] < 0.9 * dp for label, f in final.items() if not label.startswith("data parallel"))


def test_qsr_sharpness_preset_writes_the_prediction_and_its_figure(tmp_path):
    """A small run of the preset (200 steps, 2 repetitions): metrics.csv has the sharpness and the slow SDE's
    prediction for every series, equal at step 0 only up to the start's projection (h(Φ(x⁰)) = e^{−1/4}),
    and sharpness.png is drawn."""
    import csv

    from compsde.experiments import cli

    out = tmp_path / "run"
    assert cli.main(["run", "qsr-sharpness", "--no-progress", "--out", str(out), "--set", "run.steps=200",
                     "run.repeats=2", "run.log_every=50"]) == 0
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["series"] for r in rows} == {s["label"] for s in
                                           json.loads((out / "summary.json").read_text(encoding="utf-8"))["series"]}
    for r in rows:
        assert float(r["sharpness"]) > 0 and float(r["sharpness_slow_sde"]) > 0
        if r["step"] == "0":
            assert float(r["sharpness"]) == 1.0 and float(r["sharpness_slow_sde"]) == pytest.approx(math.exp(-0.25))
    assert (out / "sharpness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
