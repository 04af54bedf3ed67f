"""SDEs of the single-node optimizers (SignSGD, RMSprop(W), Adam(W), SAM/USAM, SGDA, SEG, SHGD).

Each model's drift and diffusion against Monte Carlo moments of one optimizer step at random points
(and random optimizer states), closed forms on quadratics and games, the weak order of an adaptive
SDE, and the refusals. Tolerances are a few standard errors of the Monte Carlo estimates (computed
from the samples), plus, where the model is an approximation, the size of the term it drops (said
at each check).
"""

import math

import pytest
import torch

from compsde import algorithms
from compsde.algorithms.aggregation import sum_messages
from compsde.algorithms.schedules import Schedule
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import models
from compsde.sde.integrators import EulerMaruyama, integrate
from compsde.sde.tracking import simulate_sde
from compsde.sim.simulator import simulate

F64 = torch.float64


def one_step(oracle, algo, x, eta, samples, seed=0, state=None):
    """K independent optimizer steps from the point x (d,) (and optimizer state ``state(X)``):
    the per-unit-step updates U = (x − x')/η (K, d) and the new state."""
    n, d = oracle.workers, oracle.dim
    big = x.expand(samples, d).clone()
    gen = torch.Generator().manual_seed(seed)
    z = oracle.noise.sample(n, (samples,), d, oracle.batch, gen, F64) if oracle.noise.active else None
    st = algo.init(big, n) if state is None else state(big)
    fn = oracle.grad_fn(0, n, z)
    g = fn if not algo.single_evaluation else fn(big)
    out = algo.workers_step(g, {"worker": st["worker"], "ef": st["ef"]}, big, eta, None)
    new = algo.server_step(sum_messages(out.messages), n, st, eta)
    return (big - new["params"]) / eta, new


def moments_close(u, mean, cov, extra_mean=0.0, extra_cov=0.0, z=5.0):
    """|model − MC| ≤ z standard errors (+ a stated approximation bound) for the mean and covariance."""
    k = u.shape[0]
    mc_mean = u.mean(0)
    dev = u - mc_mean
    mc_cov = dev.T @ dev / (k - 1)
    se_mean = u.std(0) / math.sqrt(k)
    # SE of a sample covariance entry: sqrt(Var(dev_i dev_j)/K)
    se_cov = (dev.unsqueeze(2) * dev.unsqueeze(1)).std(0) / math.sqrt(k)
    # An outcome of probability p < 3/K is likely never drawn (then the sample SE is 0): it can move a
    # mean of bounded updates (signs: |U| ≤ 1) by 2p ≤ 6/K, a floor on both tolerances.
    extra_mean, extra_cov = extra_mean + 6.0 / k, extra_cov + 6.0 / k
    assert ((mean - mc_mean).abs() <= z * se_mean + extra_mean + 1e-12).all(), (mean, mc_mean, se_mean)
    assert ((cov - mc_cov).abs() <= z * se_cov + extra_cov + 1e-12).all(), (cov, mc_cov, se_cov)


QUAD = problems.make("quadratic", dim=4, rotate=True, eig_min=0.5, eig_max=2.0, seed=1)
GAME = problems.make("quadratic-game", player_dim=2)
BILINEAR = problems.make("bilinear-game", player_dim=3)

PROBE_CASES = [
    ("usam", {"rho": 0.3}, QUAD, Noise("gaussian", 0.7), 2),
    ("sgda", {}, GAME, Noise("gaussian", 0.7), 2),
    ("seg", {}, GAME, Noise("gaussian", 0.7), 1),
    ("seg", {"rho": 0.4}, BILINEAR, Noise("gaussian", [0.5, 1.0]), 2),
    ("shgd", {}, GAME, Noise("gaussian", 0.7), 2),
    ("signsgd", {}, QUAD, Noise("gaussian", 0.7), 1),
    ("signsgd", {}, QUAD, Noise("student-t", 0.7, 1.0), 1),
    ("signsgd", {}, QUAD, Noise("gaussian", [0.5, 1.5]), 2),
]


@pytest.mark.parametrize("method, hyper, problem, noise, workers", PROBE_CASES,
                         ids=[f"{c[0]}-{c[3].name}-N{c[4]}-{i}" for i, c in enumerate(PROBE_CASES)])
def test_memoryless_models_match_one_step_moments(method, hyper, problem, noise, workers):
    """On quadratics and linear games with additive noise these closed forms are exact, not approximate:
    USAM's and SEG's probes are linear in the sample, SHGD's Jacobian is constant, and SignSGD's drift
    and diffusion are the sign's mean and variance. (The games' second-order drift term is (η − dt)/2
    J_m m, zero at dt = η: the first-order moments are compared.)"""
    eta = 0.05
    oracle = Oracle(problem, noise, workers=workers, batch=2)
    algo = algorithms.make(method, **hyper)
    model = models.from_algorithm(oracle, algo, eta)
    assert not isinstance(model, models.MonteCarloSDE)
    x = torch.randn(3, problem.dim, dtype=F64, generator=torch.Generator().manual_seed(2))
    for i in range(3):
        u, _ = one_step(oracle, algo, x[i], eta, 40_000, seed=i)
        mean = model.drift(x[i : i + 1])[0]
        cov = model.covariance(x[i : i + 1])[0]
        moments_close(u, mean, cov)


def _moments(server_state):
    """The adaptive transform's state (the dict holding v) in a server state, chained or not."""
    parts = server_state if isinstance(server_state, tuple) else (server_state,)
    return next(p for p in parts if isinstance(p, dict) and "v" in p)


def _state_setter(algo, **values):
    """``state(X)`` for ``one_step``: the adaptive transform's state set to ``values`` (broadcast)."""

    def state(big):
        st = algo.init(big, 1)
        core = _moments(st["server"])
        for k, v in values.items():
            core[k] = core[k].fill_(v) if isinstance(v, int) else v.expand_as(big).clone()  # a count: (..., 1)
        return st

    return state


@pytest.mark.parametrize("method", ["rmsprop", "rmspropw", "adam", "adamw"])
def test_adaptive_models_match_one_step_moments_of_the_augmented_state(method):
    """From a random state (x, m, v, step count k): x's drift, m's drift and covariance (exact: m is
    linear in g) and v's drift (exact: E g² = ∇f² + diag Σ̄) against 200,000 optimizer steps.

    The model drops (documented in ``AdaptiveSDE``) v's one-step covariance (1 − β₂)² Var(g²)/η², bounded
    here by its exact Gaussian value; x's and m's covariances (and, for Adam, their cross-covariance) are
    exact but for x's preconditioner, evaluated at v's one-step mean like x's drift. It takes
    1/√v at v's one-step mean, whose relative fluctuation (1 − β₂) sd(g²)/v̄' bounds the error of x's
    drift (times |drift|, twice for safety)."""
    eta, d, k = 0.01, 4, 200_000
    prob = problems.make("quadratic", dim=d, rotate=True, eig_min=0.5, eig_max=2.0, seed=3, heterogeneity=0.0)
    oracle = Oracle(prob, Noise("gaussian", 0.7), workers=1, batch=1)
    adam = method.startswith("adam")
    hyper = {"beta2": 0.999, "weight_decay": 0.1} | ({"beta1": 0.9} if adam else {})
    algo = algorithms.make(method, **hyper)
    model = models.from_algorithm(oracle, algo, eta)
    assert isinstance(model, models.AdaptiveSDE) and model.state_dim == (3 * d + 2 if adam else 2 * d)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(d, dtype=F64, generator=gen)
    m0 = 0.3 * torch.randn(d, dtype=F64, generator=gen)
    v0 = 0.2 + torch.rand(d, dtype=F64, generator=gen)
    count = 7
    b1, b2 = hyper.get("beta1", 0.0), hyper["beta2"]
    values = {"v": v0} | ({"m": m0, "count": count} if adam else {})
    u, new = one_step(oracle, algo, x, eta, k, seed=1, state=_state_setter(algo, **values))
    z = torch.cat([x, m0, v0, torch.tensor([1 - b1**count, 1 - b2**count], dtype=F64)] if adam else [x, v0])[None]
    drift, cov = model.drift(z)[0], model.covariance(z)[0]
    # exact Gaussian moments of g at x (coupled decay: g + λx; isotropic noise s² per coordinate)
    lam = 0.1 if method in ("rmsprop", "adam") else 0.0
    gm = prob.grad(x) + lam * x
    s2 = 0.49
    var_g2 = 4 * gm**2 * s2 + 2 * s2**2
    vbar = v0 + (1 - b2) * (gm**2 + s2 - v0)
    rel = (1 - b2) * var_g2.sqrt() / vbar
    extra = 2 * rel * drift[:d].abs()
    core = _moments(new["server"])
    if adam:
        um = (m0 - core["m"]) / eta
        both = torch.cat([u, um], 1)
        moments_close(both, drift[: 2 * d], cov[: 2 * d, : 2 * d], extra_mean=torch.cat([extra, 0 * extra]),
                      extra_cov=2 * rel.max() * cov[: 2 * d, : 2 * d].abs())
    else:
        moments_close(u, drift[:d], cov[:d, :d], extra_mean=extra, extra_cov=2 * rel.max() * cov[:d, :d].abs().max())
    uv = (v0 - core["v"]) / eta
    vs = slice(2 * d, 3 * d) if adam else slice(d, 2 * d)
    assert torch.count_nonzero(cov[vs, vs]) == 0  # v is an ODE: the model drops v's one-step covariance,
    dropped = (1 - b2) ** 2 * (var_g2 if not lam else 4 * gm**2 * s2 + 2 * s2**2) / eta**2
    moments_close(uv, drift[vs], torch.diag(dropped))  # which is (1 − β₂)² Var(ḡ²)/η², as documented


def test_adam_sde_has_weak_order_one_from_a_warm_start():
    """|E f(x_T) − E f(X_T)| at T = 1 for η = 0.04, 0.02, 0.01 with 1 − β_i = ρ_i η (ρ₁ = 2, ρ₂ = 0.5 fixed,
    the SDE's scaling), from a warm state (m = ∇f(x₀), v = E g², bias corrections ≈ 1): slope 1.

    From Adam's cold start (m = v = 0) the bias-corrected v̂ averages only k samples at step k, so the
    early steps are sign-like and the error gains a term ~ η Σ_k 1/k ~ η log(1/η) (fitted slope ≈ 0.75 at
    these η; docs/theory.md §9.3). Measured with 40,000 runs and paths: errors 4.2e-3, 2.2e-3, 1.2e-3
    (standard errors 1.2e-4, 0.9e-4, 0.6e-4), slope 0.92. Here 20,000 of each: standard errors √2 larger,
    the slope's ≈ 0.06; the bounds allow ±0.3."""
    prob = problems.make("quadratic", dim=2, eig_min=0.5, eig_max=2.0)
    s, t1, runs = 0.5, 1.0, 20_000
    oracle = Oracle(prob, Noise("gaussian", s), workers=1)
    x0 = prob.x0()
    g0 = prob.grad(x0)
    errors, lrs = [], [0.04, 0.02, 0.01]
    for eta in lrs:
        algo = algorithms.make("adam", beta1=1 - 2.0 * eta, beta2=1 - 0.5 * eta)
        steps = round(t1 / eta)
        big = x0.expand(runs, 2).clone()
        st = _state_setter(algo, m=g0, v=g0**2 + s**2, count=10**6)(big)
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            g = prob.grad(st["params"]) + s * torch.randn(runs, 2, generator=gen, dtype=F64)
            out = algo.workers_step(g[None], {"worker": st["worker"], "ef": st["ef"]}, st["params"], eta, None)
            st = algo.server_step(sum_messages(out.messages), 1, st, eta)
        model = models.from_algorithm(oracle, algo, eta)
        z0 = torch.cat([x0, g0, g0**2 + s**2, torch.ones(2, dtype=F64)])
        z = integrate(model, z0.expand(runs, -1).contiguous(), t1=steps * eta, dt=eta / 8,
                      generator=torch.Generator().manual_seed(1))
        errors.append(abs(float(prob.loss(st["params"]).mean() - prob.loss(model.params(z)).mean())))
    slope = math.log(errors[0] / errors[-1]) / math.log(lrs[0] / lrs[-1])
    assert abs(slope - EulerMaruyama.weak_order) <= 0.3, (errors, slope)


@pytest.mark.parametrize("method, workers", [("signsgd", 1), pytest.param("signsgd", 4, marks=pytest.mark.slow),
                                             pytest.param("rmsprop", 1, marks=pytest.mark.slow), ("adam", 1),
                                             pytest.param("adam", 4, marks=pytest.mark.slow)])
def test_stationary_loss_on_a_quadratic_matches_the_closed_form(method, workers):
    """On f = ½ Σ h_j x_j² with Gaussian noise s/√B per coordinate, N workers averaging (ḡ's noise has
    standard deviation σ̄ = s/√(NB)), the linearised SDEs are Ornstein–Uhlenbeck processes
    (docs/theory.md §9.4):

    * SignSGD: drift ≈ sqrt(2/π) h x/σ̄, diffusion 1 → Var x_j = sqrt(π/2) η σ̄/(2h_j), E f = sqrt(π/2) η d σ̄/4
    * RMSprop, Adam: v → σ̄², P = σ̄ + ε → Var x_j = η σ̄²/(2 h_j P), E f = η d σ̄²/(4P) ≈ η d σ̄/4

    linear in the noise scale, like SignSGD: the invariant of the square-root rule is η/√B. Adam's momentum
    changes Var x by a relative O(η h/(P(1 − β₁))) ≤ 4 % here, the linearisation by a few %. Sampling:
    128 runs over the second half of 6,000 steps, relaxation time 1/(η h_min gain) ≤ 1,000 steps: ≥ 380
    independent samples of f (relative SD √(2/20)): relative SE ≈ 1.6 %. Allow 10 %; the optimizer's
    per-coordinate variances (each with relative SE ≈ 7 %) within 30 %, and the SDE's loss within 10 %."""
    d, s, b, eta, steps = 20, 1.0, 1, 0.002, 6000
    prob = problems.make("quadratic", dim=d, x0_scale=0.0)
    oracle = Oracle(prob, Noise("gaussian", s), workers=workers, batch=b)
    algo = algorithms.make(method)
    sched = Schedule("constant", eta, steps)
    sigma = s / math.sqrt(workers * b)
    if method == "signsgd":
        var = math.sqrt(math.pi / 2) * eta * sigma / (2 * prob.eigs)
    else:
        var = eta * sigma**2 / (2 * prob.eigs * (sigma + algo.hyper["eps"]))
    theory = float((0.5 * prob.eigs * var).sum())
    tr = simulate(oracle, algo, sched, repeats=128, seed=0, log_every=20)
    keep = tr.steps >= steps // 2
    assert float(tr.loss[keep].mean()) == pytest.approx(theory, rel=0.10)
    x = tr.x  # final iterates (R, d)
    assert (x.var(0) / var).mean() == pytest.approx(1.0, rel=0.10)
    assert torch.allclose(x.var(0), var, rtol=0.30)
    sde, _ = simulate_sde(oracle, algo, sched, paths=128, seed=1, log_every=20)
    assert float(sde.loss[keep].mean()) == pytest.approx(theory, rel=0.10)


def _bilinear_closed_forms(method, eta, b, t):
    """Per pair (x_j, y_j) of the noise-free bilinear game with coupling b: the optimizer's factor
    ‖z_{k+1}‖²/‖z_k‖² and the modified equation's exact growth rate of ‖z‖² per unit time."""
    if method == "sgda":  # z ← (I − ηM) z, |1 − iηb|² = 1 + η²b²; rate η b² (drift Mz − (η/2) b² z)
        return 1 + eta**2 * b**2, eta * b**2
    if method == "seg":  # (1 − η²b²)I − ηM: (1 − η²b²)² + η²b²; drift (M − ηM²) + (η/2)(M − ηM²)²: −η b² − η³b⁴
        return (1 - eta**2 * b**2) ** 2 + eta**2 * b**2, -eta * b**2 - eta**3 * b**4
    # shgd: JᵀF = MᵀM z = b² z: (1 − η b²)²; drift b² + (η/2) b⁴
    return (1 - eta * b**2) ** 2, -2 * (b**2 + 0.5 * eta * b**4)


@pytest.mark.parametrize("method", ["sgda", "seg", "shgd"])
def test_bilinear_game_closed_forms(method):
    """Noise-free, on f = xᵀBy: the optimizer follows its exact linear map (to rounding), and the SDE's
    modified equation grows or contracts ‖z‖² at the rate that map has to O(η²) per unit time: SGDA
    spirals out at rate η b², SEG contracts at η b², SHGD at 2b² + η b⁴. Integrated with 20 substeps
    (Euler's own error is removed by the model, docs/theory.md §9.6), the SDE's ‖z_T‖² matches the closed
    form e^{rate T} to 1e-3 relative (the remaining O(η² T) terms)."""
    prob = problems.make("bilinear-game", player_dim=3, coupling_min=0.5, coupling_max=1.5)
    eta, steps = 0.05, 200
    oracle = Oracle(prob, Noise("none"), workers=1)
    algo = algorithms.make(method)
    tr = simulate(oracle, algo, Schedule("constant", eta, steps), repeats=1, log_every=steps)
    z0 = prob.x0()
    pair = z0[:3] ** 2 + z0[3:] ** 2
    factor, rate = zip(*(_bilinear_closed_forms(method, eta, float(b), steps * eta) for b in prob.b))
    exact = float((pair * torch.tensor(factor, dtype=F64) ** steps).sum())
    assert float(tr.loss[-1, 0]) == pytest.approx(exact, rel=1e-10)
    sde, _ = simulate_sde(oracle, algo, Schedule("constant", eta, steps), paths=1, log_every=steps, substeps=20)
    continuous = float((pair * torch.exp(torch.tensor(rate, dtype=F64) * steps * eta)).sum())
    assert float(sde.loss[-1, 0]) == pytest.approx(continuous, rel=1e-3)
    assert float(sde.loss[-1, 0]) == pytest.approx(exact, rel=0.02)
    if method == "sgda":
        assert exact > 1.5 * float(pair.sum())  # spirals out
    else:
        assert exact < 0.75 * float(pair.sum())  # converges


def test_seg_stationary_distance_on_a_noisy_bilinear_game():
    """SEG (ρ = η) with Gaussian noise s/√B on f = xᵀBy: per pair, A = (1 − η²b²)I − ηM contracts ‖z‖² by
    1 − η²b² + η⁴b⁴ and the noise −η(I − ηM)Z adds 2η²(1 + η²b²)s²/B, so
    E‖z_∞‖² = Σ_j 2 s²(1 + η²b_j²) / (B b_j² (1 − η²b_j²)) — of order 1 whatever η (the noise and the
    contraction are both O(η) per unit time). The SDE's OU limit gives 2s²/(B b²) per pair. Relaxation
    time 1/(η² b_min²) = 400 steps: from z = 0, the second half of 4,000 steps is ≥ 5 relaxation times
    in (bias ≤ e⁻⁵), and 256 runs give ≥ 1,200 independent samples of a sum of 8 squares (relative SD
    ≈ 0.5): relative SE ≈ 1.5 %; allow 6 % for the optimizer and 5 % for the SDE against its OU limit."""
    prob = problems.make("bilinear-game", player_dim=4, coupling_min=1.0, coupling_max=2.0, x0_scale=0.0)
    eta, s, b, steps = 0.05, 0.5, 2, 4000
    oracle = Oracle(prob, Noise("gaussian", s), workers=1, batch=b)
    algo = algorithms.make("seg")
    cb = prob.b
    exact = float((2 * s**2 * (1 + eta**2 * cb**2) / (b * cb**2 * (1 - eta**2 * cb**2))).sum())
    sched = Schedule("constant", eta, steps)
    tr = simulate(oracle, algo, sched, repeats=256, seed=0, log_every=20)
    keep = tr.steps >= steps // 2
    assert float(tr.loss[keep].mean()) == pytest.approx(exact, rel=0.06)
    sde, _ = simulate_sde(oracle, algo, sched, paths=256, seed=1, log_every=20, substeps=4)
    assert float(sde.loss[keep].mean()) == pytest.approx(float((2 * s**2 / (b * cb**2)).sum()), rel=0.05)


def test_usam_drift_is_the_gradient_of_the_implicitly_regularised_loss():
    """USAM's SDE drift is ∇(f + (ρ/2)‖∇f‖²) (exactly the closed form F + ρ H F), checked by autograd on a
    non-quadratic loss; SAM's Monte Carlo drift without noise is ∇f(x + ρ∇f/‖∇f‖) = ∇(f + ρ‖∇f‖) + O(ρ²)."""
    prob = problems.make("l0l1-cosh", dim=5, sharpness=1.5)
    x = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.5
    rho = 0.05

    def regularised(y, power):
        y = y.detach().requires_grad_(True)
        gnorm = prob.grad(y).norm(dim=-1)
        loss = prob.loss(y) + rho * (0.5 * gnorm**2 if power == 2 else gnorm)
        return torch.autograd.grad(loss.sum(), y)[0]

    usam = models.from_algorithm(Oracle(prob, Noise("none"), workers=1), algorithms.make("usam", rho=rho), 0.1)
    torch.testing.assert_close(usam.drift(x), regularised(x, 2), rtol=1e-12, atol=1e-12)
    sam = models.from_algorithm(Oracle(prob, Noise("none"), workers=1), algorithms.make("sam", rho=rho), 0.1)
    assert isinstance(sam, models.MonteCarloSDE)
    got = sam.drift(x, sam.step_args(generator=torch.Generator().manual_seed(0)))
    ref = regularised(x, 1)
    # O(ρ²): measured ≤ 0.6 ρ²‖∇f‖ at these points (the third derivative times ‖∇f‖²/‖∇f‖); allow 2 ρ²
    assert ((got - ref).norm(dim=-1) <= 2 * rho**2 * ref.norm(dim=-1)).all()
    assert ((got - prob.grad(x)).norm(dim=-1) > 0.5 * rho).all()  # and the regulariser is really there


def test_sdes_that_do_not_exist_are_refused_with_the_reason():
    quad = problems.make("quadratic", dim=4)
    with pytest.raises(ValueError, match="finite gradient-noise variance.*nu = 2"):
        models.from_algorithm(Oracle(quad, Noise("student-t", 1.0, 2.0), workers=1), algorithms.make("adam"), 0.01)
    with pytest.raises(ValueError, match="finite gradient-noise variance"):
        models.from_algorithm(Oracle(quad, Noise("student-t", 1.0, 1.0), workers=1), algorithms.make("usam"), 0.01)
    # SignSGD's SDE exists for every ν; averaged over N > 1 workers Student-t has no closed CDF: Monte Carlo
    one = models.from_algorithm(Oracle(quad, Noise("student-t", 1.0, 1.0), workers=1), algorithms.make("signsgd"), 0.01)
    four = models.from_algorithm(Oracle(quad, Noise("student-t", 1.0, 1.0), workers=4), algorithms.make("signsgd"), 0.01)
    assert isinstance(one, models.SignSGDSDE) and isinstance(four, models.MonteCarloSDE)
    # a momentum transform on SAM carries state: no SDE of this form
    with pytest.raises(ValueError, match="no first-order SDE of this form"):
        models.from_algorithm(Oracle(quad, Noise("gaussian", 1.0), workers=1),
                              algorithms.make("sam", server={"momentum": 0.9}), 0.01)


@pytest.mark.parametrize("method", ["usam", "seg", "shgd"])
def test_probe_sdes_on_a_non_linear_field(method):
    """On a non-quadratic loss the probe models use autodiff (J v by two reverse passes, composable with the
    games' second-order term): the SDE integrates, and its first-order drift matches Monte Carlo moments of
    one step up to the O(ρ²) of the linearised probe (ρ = 0.05: allow 5 SE + 2ρ²‖m‖)."""
    prob = problems.make("l0l1-cosh", dim=3, sharpness=1.5, x0_scale=0.2)  # start at 0.6: |∇f| ≈ 0.7
    oracle = Oracle(prob, Noise("gaussian", 0.3), workers=1)
    algo = algorithms.make(method, **({"rho": 0.05} if method != "shgd" else {}))
    model = models.from_algorithm(oracle, algo, 0.05)
    assert isinstance(model, models.ProbeSDE)
    sde, _ = simulate_sde(oracle, algo, Schedule("constant", 0.05, 20), paths=8, log_every=10, substeps=2)
    assert bool(torch.isfinite(sde.loss).all())
    x = 0.5 * torch.ones(1, 3, dtype=F64)
    u, _ = one_step(oracle, algo, x[0], 0.05, 40_000)
    mean = model._first_order(x, model.step_args())[0]
    moments_close(u, mean, model.covariance(x)[0], extra_mean=2 * 0.05**2 * mean.abs().max(),
                  extra_cov=0.1 * model.covariance(x)[0].abs().max())


def test_probe_sdes_need_one_jacobian_for_all_workers():
    """Each worker probes with its own gradient: with per-worker Hessians (the Top-1 counter-example's
    three quadratics) the mean step is (1/N) Σ (I + ρH_i) g_i, not (I + ρH̄) ḡ, so USAM gets the Monte
    Carlo model, whose drift is the step itself (no noise); SGDA (L = I) keeps its closed form."""
    prob = problems.make("top1-counterexample")
    oracle = Oracle(prob, Noise("none"), workers=3)
    usam = algorithms.make("usam", rho=0.1)
    model = models.from_algorithm(oracle, usam, 0.01, mc_samples=2)
    assert isinstance(model, models.MonteCarloSDE)
    x = torch.tensor([[1.0, 0.5, -0.3]], dtype=F64)
    u, _ = one_step(oracle, usam, x[0], 0.01, 2)
    torch.testing.assert_close(model.drift(x, model.step_args(generator=torch.Generator().manual_seed(0)))[0], u[0], rtol=1e-12, atol=1e-12)
    assert isinstance(models.from_algorithm(oracle, algorithms.make("sgda"), 0.01), models.ProbeSDE)


def test_shgd_step_under_no_grad():
    """SHGD differentiates the field inside the step; the simulator's callers may hold torch.no_grad."""
    oracle = Oracle(BILINEAR, Noise("gaussian", 0.1), workers=2)
    with torch.no_grad():
        tr = simulate(oracle, algorithms.make("shgd"), Schedule("constant", 0.05, 5), repeats=2)
    assert bool(torch.isfinite(tr.x).all())
