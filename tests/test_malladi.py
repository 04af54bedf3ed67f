"""Malladi et al.'s SDEs of RMSprop and Adam (``compsde.sde.malladi``) and the ``sde`` choice of a series.

The models' drift and diffusion against the paper's closed forms written in its own units (σ, σ₀ = ση,
ε₀ = εη, c = (1 − β)/η², time kη²) and converted to the library's (docs/theory.md §9.10), exactly, for
two splits σ²Σ = Σ̄ of the noise; the mapping to the library's own SDE (they differ in u's target by ∇f²
only); weak agreement with the optimizer where the noise dominates the gradient; the refusals; and the
``adaptive-sde-comparison`` preset's claim.
"""

from __future__ import annotations

import json
import math
import tomllib

import numpy as np
import pytest
import torch

from compsde import algorithms
from compsde.algorithms.schedules import Schedule
from compsde.experiments import cli
from compsde.experiments.build import build, dumps, resolve
from compsde.experiments.runner import run_experiment
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import alternatives, malladi
from compsde.sde.integrators import integrate_schedule
from compsde.sde.models import from_algorithm
from compsde.sde.tracking import simulate_sde
from compsde.sim.simulator import simulate

F64 = torch.float64
QUAD = problems.make("quadratic", dim=5, eig_min=0.5, eig_max=2.0)


def _oracle(sigma=0.8, batch=4, workers=1):
    return Oracle(QUAD, Noise("gaussian", sigma), workers=workers, batch=batch)


def _paper_rmsprop(grad, u, diag, sigma, eta, eps, beta2, dt):
    """Malladi et al.'s RMSprop SDE in their units with noise scale σ (Σ = diag / σ², u = v / σ²): their drift
    of (θ, u) per unit of their time t and the θ block of their diffusion, at the end-of-step u (module doc of
    ``compsde.sde.malladi``); ``dt`` is the library's step, ηdt in their time."""
    s0, e0, c2 = sigma * eta, eps * eta, (1 - beta2) / eta**2
    sig = diag / sigma**2
    u_end = u + c2 * eta * dt * (sig - u)
    p = s0 * u_end.sqrt() + e0
    return -grad / p, c2 * (sig - u), s0 * sig.sqrt() / p


def _paper_adam(grad, m, u, diag, sigma, eta, eps, beta1, beta2, t, dt):
    """Their Adam SDE likewise: drift of (θ, m, u) per unit of their time and the m block of the diffusion;
    γ_i at the end of the step, their time η(t + dt)."""
    s0, e0 = sigma * eta, eps * eta
    c1, c2 = (1 - beta1) / eta**2, (1 - beta2) / eta**2
    sig = diag / sigma**2
    t_end = eta * (t + dt)
    g1, g2 = 1 - math.exp(-c1 * t_end), 1 - math.exp(-c2 * t_end)
    m_end = m + c1 * eta * dt * (grad - m)
    u_end = u + c2 * eta * dt * (sig - u)
    p = s0 * u_end.sqrt() + e0 * math.sqrt(g2)
    return -(math.sqrt(g2) / g1) * m_end / p, c1 * (grad - m), c2 * (sig - u), s0 * c1 * sig.sqrt()


def _diffusion(model, z, args, t):
    """S^{1/2} as (M, state, noise) columns at time t."""
    eye = torch.eye(model.noise_dim, dtype=F64)
    return torch.stack([model.evaluate(t, z, eye[j].expand(z.shape[0], -1).clone(), args)[1].clone()
                        for j in range(model.noise_dim)], -1)


@pytest.mark.parametrize("sigma_split", [1.0, 3.0])
@pytest.mark.parametrize("substeps", [1, 4])
def test_rmsprop_model_is_the_papers_closed_form_in_library_units(sigma_split, substeps):
    """Library drift = η × their drift, library S^{1/2} = their diffusion (W_t = √η W'_s), u = v/σ²: the same
    numbers whatever σ the noise is split with (σ²Σ = Σ̄ is all that enters)."""
    o, eta = _oracle(), 0.02
    algo = algorithms.make("rmsprop", beta2=0.95, eps=1e-3)
    model = malladi.make(o, algo, eta)
    assert isinstance(model, malladi.MalladiRMSpropSDE) and model.state_dim == 10
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=gen, dtype=F64)
    v = torch.rand(3, 5, generator=gen, dtype=F64)
    z = torch.cat([x, v], 1)
    args = model.step_args(dt=eta / substeps)
    out, _ = model.evaluate(0.7, z.clone(), torch.zeros(3, 5, dtype=F64), args)
    diag = torch.full((5,), 0.8**2 / 4, dtype=F64)  # Σ̄ = σ²/B per coordinate
    dx, du, sx = _paper_rmsprop(QUAD.grad(x), v / sigma_split**2, diag, sigma_split, eta, 1e-3, 0.95, args.dt)
    torch.testing.assert_close(out[:, :5], -eta * dx, rtol=1e-12, atol=0)
    torch.testing.assert_close(out[:, 5:], -eta * du * sigma_split**2, rtol=1e-12, atol=1e-15)  # v = σ²u
    a = _diffusion(model, z, args, 0.7)
    torch.testing.assert_close(torch.diagonal(a[:, :5, :5], dim1=1, dim2=2), sx, rtol=1e-12, atol=0)
    off = a[:, :5, :5] - torch.diag_embed(torch.diagonal(a[:, :5, :5], dim1=1, dim2=2))
    assert (a[:, 5:] == 0).all() and (off == 0).all()  # diagonal; u is an ODE


@pytest.mark.parametrize("sigma_split", [1.0, 0.25])
@pytest.mark.parametrize("k", [0, 7])
def test_adam_model_is_the_papers_closed_form_in_library_units(sigma_split, k):
    """At optimizer step k (library time kη, theirs kη²), γ_i = 1 − exp(−(1 − β_i)(k + 1)) at the step's end;
    x has no diffusion, m's is σ₀c₁Σ^{1/2}; u and v = σ²u as for RMSprop."""
    o, eta = _oracle(sigma=1.3, batch=2), 0.01
    algo = algorithms.make("adam", beta1=0.9, beta2=0.97, eps=1e-2)
    model = malladi.make(o, algo, eta)
    assert isinstance(model, malladi.MalladiAdamSDE) and model.state_dim == 15
    gen = torch.Generator().manual_seed(1)
    x, m = torch.randn(2, 5, generator=gen, dtype=F64), torch.randn(2, 5, generator=gen, dtype=F64)
    v = torch.rand(2, 5, generator=gen, dtype=F64)
    z = torch.cat([x, m, v], 1)
    args, t = model.step_args(), k * eta
    out, _ = model.evaluate(t, z.clone(), torch.zeros(2, 5, dtype=F64), args)
    diag = torch.full((5,), 1.3**2 / 2, dtype=F64)
    dx, dm, du, sm = _paper_adam(QUAD.grad(x), m, v / sigma_split**2, diag, sigma_split, eta, 1e-2, 0.9, 0.97, t, args.dt)
    torch.testing.assert_close(out[:, :5], -eta * dx, rtol=1e-12, atol=0)
    torch.testing.assert_close(out[:, 5:10], -eta * dm, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out[:, 10:], -eta * du * sigma_split**2, rtol=1e-12, atol=1e-15)
    a = _diffusion(model, z, args, t)
    assert (a[:, :5] == 0).all() and (a[:, 10:] == 0).all()
    torch.testing.assert_close(torch.diagonal(a[:, 5:10, :5], dim1=1, dim2=2), sm.expand(2, 5), rtol=1e-12, atol=0)
    # the time mapping: γ₁ at step k is the paper's 1 − exp(−c₁ t) at t = (k + 1)η², not the optimizer's 1 − β₁^(k+1)
    pc = model.constants(eta)
    assert pc.time((k + 1) * eta) == pytest.approx((k + 1) * eta**2, rel=1e-12)
    assert pc.gamma(pc.c1, pc.time((k + 1) * eta)) == pytest.approx(1 - math.exp(-0.1 * (k + 1)), rel=1e-12)


def test_malladis_sdes_are_the_librarys_with_grad_f_squared_dropped_from_the_second_moment():
    """In library units, on the same state: u's drift differs from the library's v's by exactly ρ₂∇f²
    (ρ₂ = (1 − β₂)/η), Adam's m blocks agree exactly; at ∇f = 0 RMSprop's two models are one."""
    o, eta = _oracle(sigma=2.0, batch=1), 0.01
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, generator=gen, dtype=F64)
    v = torch.rand(4, 5, generator=gen, dtype=F64)
    rms = algorithms.make("rmsprop", beta2=0.9)
    mine, theirs = from_algorithm(o, rms, eta), malladi.make(o, rms, eta)
    for at in (x, torch.zeros_like(x)):
        z = torch.cat([at, v], 1)
        d_lib, d_mal = mine.drift(z), theirs.drift(z)
        torch.testing.assert_close(d_mal[:, 5:] - d_lib[:, 5:], (0.1 / eta) * QUAD.grad(at) ** 2, rtol=1e-10, atol=1e-12)
    z0 = torch.cat([torch.zeros_like(x), v], 1)
    torch.testing.assert_close(theirs.drift(z0), mine.drift(z0), rtol=1e-12, atol=0)
    torch.testing.assert_close(theirs.covariance(z0), mine.covariance(z0), rtol=1e-12, atol=0)
    adam = algorithms.make("adam", beta1=0.8, beta2=0.9)
    mine, theirs = from_algorithm(o, adam, eta), malladi.make(o, adam, eta)
    m = torch.randn(4, 5, generator=gen, dtype=F64)
    z_lib = torch.cat([x, m, v, torch.full((4, 2), 0.5, dtype=F64)], 1)  # (x, m, v, ι₁, ι₂)
    z_mal = torch.cat([x, m, v], 1)
    d_lib, d_mal = mine.drift(z_lib), theirs.drift(z_mal)
    torch.testing.assert_close(d_mal[:, 5:10], d_lib[:, 5:10], rtol=1e-12, atol=0)
    torch.testing.assert_close(d_mal[:, 10:] - d_lib[:, 10:15], (0.1 / eta) * QUAD.grad(x) ** 2, rtol=1e-10, atol=1e-12)
    c_lib, c_mal = mine.covariance(z_lib), theirs.covariance(z_mal)
    torch.testing.assert_close(c_mal[:, 5:10, 5:10], c_lib[:, 5:10, 5:10], rtol=1e-12, atol=0)


def test_the_second_moment_is_the_ema_of_the_noise_variance_at_the_optimizers_steps():
    """With dt = η (one solver step per optimizer step) u after k steps is exactly (1 − β₂ᵏ) diag Σ̄ from
    u = 0, whatever x does: the optimizer's E v_k with ∇f² left out (their time t = kη², c₂t = (1 − β₂)k)."""
    o, eta, k = _oracle(sigma=1.0, batch=1), 0.01, 50
    model = malladi.make(o, algorithms.make("rmsprop", beta2=0.9), eta)
    z = integrate_schedule(model, model.initial(o.x0().expand(3, 5).contiguous()), lr=Schedule("constant", eta, k, {}),
                           steps=k, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z[:, 5:], torch.full((3, 5), 1 - 0.9**k, dtype=F64), rtol=1e-12, atol=0)


def _loss_means(method, hyper, steps, runs, dim=100):
    p = problems.make("quadratic", dim=dim, x0_scale=0.3)
    o = Oracle(p, Noise("gaussian", 1.0), workers=1)
    a = algorithms.make(method, **hyper)
    s = Schedule("constant", 0.01, steps, {})
    opt = simulate(o, a, s, repeats=runs, seed=1, log_every=steps // 3).loss.double().numpy()[1:]
    sde = simulate_sde(o, a, s, paths=runs, seed=2, log_every=steps // 3, model=malladi.make(o, a, 0.01))[0]
    sde_loss = sde.loss.double().numpy()[1:]
    se = np.sqrt(opt.var(1, ddof=1) / runs + sde_loss.var(1, ddof=1) / runs)
    return opt.mean(1), sde_loss.mean(1), se


@pytest.mark.parametrize("method, hyper, allowance", [
    ("rmsprop", {}, 0.01),
    ("adam", {"beta1": 0.99, "beta2": 0.99}, 0.03),
])
def test_weak_agreement_with_the_optimizer_where_the_noise_dominates(method, hyper, allowance):
    """Quadratic (d = 100, |∇f| ≤ 0.6 per coordinate against noise 1), η = 0.01, 300 steps: the mean loss of
    400 runs and 400 independent paths at steps 100, 200, 300 within 4 standard errors of their difference
    (computed from the runs) plus the model's known bias. RMSprop: 1 %, the order of ∇f²/diag Σ̄ ≤ η h/(2σ̄) at
    the noise floor, which u leaves out. Adam: 3 %, that plus 1 − β₁² ≈ 2 %, x's stationary variance lost to
    the step's noise reaching x one step late through m (no noise on x; docs/theory.md §9.10)."""
    opt, sde, se = _loss_means(method, hyper, 300, 400)
    assert (np.abs(sde - opt) <= 4 * se + allowance * opt).all(), (opt, sde, se)


# ---- the choice of a series and the refusals ---------------------------------------------------------


def _config(**series):
    s = {"method": "rmsprop", "lr": 0.01, "sde": "malladi", **series}
    return {"run": {"steps": 6, "repeats": 2, "log_every": 2}, "problem": {"name": "quadratic", "dim": 4},
            "noise": {"name": "gaussian", "scale": 1.0}, "series": [s]}


def test_a_series_chooses_its_sde_and_the_choice_round_trips():
    cfg = resolve(_config())
    assert cfg["series"][0]["sde"] == "malladi" and cfg["series"][0]["label"] == "RMSprop SDE malladi"
    assert resolve(tomllib.loads(dumps(cfg))) == cfg
    plain = resolve(_config(sde="compsde"))
    assert plain["series"][0]["sde"] == "compsde" and plain["series"][0]["label"] == "RMSprop"
    assert "sde" not in resolve({**_config(), "series": [{"method": "rmsprop", "lr": 0.01}]})["series"][0]
    exp = build(cfg)
    model = alternatives.build_model("malladi", exp.series[0].oracle, exp.series[0].algorithm, 0.01)
    assert isinstance(model, malladi.MalladiRMSpropSDE) and "Malladi" in model.description


@pytest.mark.parametrize("series, match", [
    ({"sde": "malady"}, r"series\.0\.sde must be one of 'compsde', 'malladi', got 'malady'"),
    ({"sde": 1}, r"series\.0\.sde"),
    ({"method": "signsgd"}, r"series\.0\.sde = 'malladi': Malladi et al.'s SDEs describe rmsprop, rmspropw, adam, "
                            r"adamw, not method 'signsgd'"),
    ({"method": "dsgd"}, r"not method 'dsgd'"),
    ({"method": "adamw"}, r"series\.0\.sde = 'malladi' needs weight_decay = 0 \(got 0\.01 for 'adamw'"),
    ({"method": "rmsprop", "weight_decay": 0.1}, r"needs weight_decay = 0 \(got 0\.1"),
    ({"schedule": "cosine"}, r"series\.0\.sde = 'malladi' needs a constant learning rate \(got schedule 'cosine'\)"),
])
def test_the_config_refuses_a_choice_that_does_not_describe_the_series(series, match):
    with pytest.raises(ValueError, match=match):
        resolve(_config(**series))


def test_adamw_without_weight_decay_is_adam_and_is_accepted():
    assert resolve(_config(method="adamw", weight_decay=0.0))["series"][0]["sde"] == "malladi"


def test_the_model_refuses_what_it_does_not_describe():
    o = _oracle()
    with pytest.raises(ValueError, match=r"needs gradient noise \(σ₀ > 0\)"):
        malladi.make(Oracle(QUAD, Noise("none"), workers=1), algorithms.make("rmsprop"), 0.01)
    with pytest.raises(ValueError, match=r"describe rmsprop, rmspropw, adam, adamw, not method 'signsgd'"):
        malladi.make(o, algorithms.make("signsgd"), 0.01)
    with pytest.raises(ValueError, match=r"describes rmsprop, rmspropw, adam, adamw as their recipes build them, not"):
        malladi.make(o, algorithms.make("dsgd"), 0.01)
    with pytest.raises(ValueError, match=r"needs weight_decay = 0 \(got 0\.01 for 'rmspropw'"):
        malladi.make(o, algorithms.make("rmspropw"), 0.01)
    with pytest.raises(ValueError, match="MalladiAdamSDE is the SDE of Adam, not of 'rmsprop'"):
        malladi.MalladiAdamSDE(o, algorithms.make("rmsprop"), 0.01)
    with pytest.raises(ValueError, match=r"sde must be one of 'compsde', 'malladi', got 'ito'"):
        alternatives.build_model("ito", o, algorithms.make("rmsprop"), 0.01)
    with pytest.raises(ValueError, match="algorithm must be a compsde Algorithm"):
        malladi.make(o, "rmsprop", 0.01)


def test_tracking_refuses_an_explicit_choice_the_series_cannot_have(tmp_path):
    """A series whose chosen alternative refuses it is an error, not a series run without an SDE."""
    cfg = _config(noise={"name": "none"})
    with pytest.raises(ValueError, match=r"series\.0 \('RMSprop SDE malladi ν=none'\)\.sde = 'malladi': .*σ₀ > 0|"
                                         r"series\.0 .*\.sde = 'malladi': .*needs gradient noise"):
        run_experiment(cfg, out_dir=tmp_path / "run", progress=False, plots=False, track=True)


def test_track_reports_which_sde_each_series_integrated(tmp_path):
    cfg = _config()
    cfg["series"] = [{"method": "rmsprop", "lr": 0.01, "label": "own"}, {"method": "rmsprop", "lr": 0.01, "label": "M", "sde": "malladi"}]
    out = run_experiment(cfg, out_dir=tmp_path / "run", progress=False, plots=False, track=True)
    series = json.loads((out / "summary.json").read_text(encoding="utf-8"))["series"]
    assert [s["sde"]["model"] for s in series] == ["compsde", "malladi"]
    assert series[0]["final"] == series[1]["final"]  # one optimizer run (common random numbers)
    assert all(s["tracking"]["mean_rel_error"] is not None for s in series)


@pytest.mark.slow
def test_adaptive_sde_comparison_preset_agree_where_noise_dominates_and_part_where_the_gradient_does(tmp_path):
    """At the preset's size (4 runs and paths of d = 4,000) the mean relative errors were, compsde / Malladi:
    batch 1 RMSprop 1.7 / 2.1 %, Adam 1.4 / 4.2 %, Adam β₁ = 0.9 1.7 / 17 %; batch 400 RMSprop 1.2 / 26 %, Adam
    2.7 / 54 %. The bounds leave room for another machine's arithmetic."""
    out = tmp_path / "cmp"
    assert cli.main(["track", "adaptive-sde-comparison", "--no-progress", "--no-plots", "--out", str(out)]) == 0
    s = {e["label"]: e for e in json.loads((out / "summary.json").read_text(encoding="utf-8"))["series"]}
    err = {label: e["tracking"]["mean_rel_error"] for label, e in s.items()}
    for label, e in s.items():
        assert e["sde"]["model"] == ("malladi" if "Malladi" in label else "compsde"), label
        if "Compagnoni" in label:
            assert err[label] < 0.05, (label, err[label])
    assert err["RMSprop, batch 1: Malladi et al.'s SDE"] < 0.05 and err["Adam, batch 1: Malladi et al.'s SDE"] < 0.08
    assert err["Adam β₁ = 0.9, batch 1: Malladi et al.'s SDE"] > 0.1
    for method in ("RMSprop", "Adam"):
        assert err[f"{method}, batch 400: Malladi et al.'s SDE"] > 4 * err[f"{method}, batch 400: Compagnoni et al.'s SDE"]
        assert err[f"{method}, batch 400: Malladi et al.'s SDE"] > 0.15


def test_the_derived_label_follows_an_override_of_the_sde():
    from compsde.experiments.overrides import apply_overrides

    raw = _config()
    raw["series"][0].pop("sde")
    assert resolve(raw)["series"][0]["label"] == "RMSprop"
    assert resolve(apply_overrides(resolve(raw), ["series.0.sde=malladi"]))["series"][0]["label"] == "RMSprop SDE malladi"


@pytest.mark.parametrize("sigma", [0.1, 1.0, 10.0, 100.0])
def test_the_x_drifts_meet_in_the_noise_dominated_limit(sigma):
    """At v = u = diag Σ̄ (their stationary second moment) the RMSprop x drifts differ by the ∇f² that the
    library's one-step v' holds: ratio (√(D + (1 − β₂)∇f²) + ε)/(√D + ε) exactly, → 1 as σ → ∞ (their regime,
    σ ~ 1/η). σ₀ > 0 always: a noise-free oracle is refused (test_the_model_refuses_what_it_does_not_describe)."""
    o, eta, b2, eps = Oracle(QUAD, Noise("gaussian", sigma), workers=1), 0.01, 0.9, 1e-8
    algo = algorithms.make("rmsprop", beta2=b2, eps=eps)
    x = torch.linspace(-1, 1, 5, dtype=F64).expand(2, 5)
    z = torch.cat([x, torch.full((2, 5), sigma**2, dtype=F64)], 1)
    lib, mal = from_algorithm(o, algo, eta).drift(z)[:, :5], malladi.make(o, algo, eta).drift(z)[:, :5]
    g2 = QUAD.grad(x) ** 2
    ratio = ((sigma**2 + (1 - b2) * g2).sqrt() + eps) / (sigma + eps)
    torch.testing.assert_close(mal, lib * ratio, rtol=1e-12, atol=1e-300)
    assert (ratio - 1).max() <= (1 - b2) * g2.max() / (2 * sigma**2) + 1e-15
