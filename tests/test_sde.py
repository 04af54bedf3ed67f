"""SDE models against Monte Carlo moments of the update, and the Euler–Maruyama integrator against theory.

Tolerances are a few standard errors of the Monte Carlo estimates they compare against.
"""

import math

import numpy as np
import pytest
import torch

from compsde import algorithms
from compsde.algorithms.schedules import Schedule
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import models
from compsde.sde.integrators import EulerMaruyama, integrate, integrate_schedule
from compsde.sde.noise import GaussianIncrements, NoiseSource, RademacherIncrements
from compsde.sde.noise import increments as noise_source
from compsde.sde.tracking import simulate_sde


def update_moments(problem, noise, algo, x, workers, batch, samples, seed=0):
    """Monte Carlo mean and covariance of one update U (per unit step) at each point of x (M, d)."""
    gen = torch.Generator().manual_seed(seed)
    grads = problem.worker_grads(x, workers)  # (N, M, d)
    g = grads.unsqueeze(1).expand(workers, samples, *x.shape)
    if noise.active:
        g = g + noise.sample(workers, (samples, x.shape[0]), x.shape[1], batch, gen)
    comp = algo.compressor
    rnd = comp.draw((1 if comp.shared_randomness else workers, samples, x.shape[0]), x.shape[1], gen, torch.float64)
    u = algo.unit_update(g, rnd)  # (K, M, d)
    mean = u.mean(0)
    dev = u - mean
    cov = torch.einsum("kmi,kmj->mij", dev, dev) / (samples - 1)
    return mean, cov, u


CASES = [
    ("dsgd", {}, Noise("gaussian", [0.5, 1.0, 1.5]), "diagonal"),
    ("dcsgd", {"compressor": "rand-k", "k": 2}, Noise("gaussian", 0.7), "diagonal-lowrank"),
    ("dcsgd", {"compressor": "rand-k", "k": 3}, Noise("student-t", 0.7, 5.0), "diagonal-lowrank"),
    ("dsignsgd", {}, Noise("gaussian", [0.5, 1.0, 1.5]), "diagonal"),
    ("dsignsgd", {}, Noise("student-t", 1.0, 1.0), "diagonal"),
    ("dcsgd", {"compressor": "natural"}, Noise("gaussian", 0.5), "sampled"),
    ("dsignsgd-majority", {}, Noise("gaussian", 1.0), "sampled"),
]


@pytest.mark.parametrize("hetero", [0.0, 1.5], ids=["homog", "hetero"])
@pytest.mark.parametrize("method, params, noise, noise_type", CASES, ids=[f"{c[0]}-{c[1].get('compressor', '')}-{c[2].name}-{i}" for i, c in enumerate(CASES)])
def test_drift_and_diffusion_match_monte_carlo_moments(method, params, noise, noise_type, hetero):
    d, n, b, k = 4, 3, 2, 40_000
    prob = problems.make("quadratic", dim=d, rotate=True, heterogeneity=hetero, seed=1)
    m = algorithms.make(method, **params)
    model = models.from_algorithm(Oracle(prob, noise, workers=n, batch=b), m, 0.1, mc_samples=4000)
    assert model.noise_type == noise_type
    x = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(3)
    args = model.step_args(generator=gen)
    drift = model.drift(x, args)
    cov = model.covariance(x, args)
    mc_mean, mc_cov, u = update_moments(prob, noise, m, x, n, b, k)
    # Standard errors of the Monte Carlo estimates from the samples themselves; 5 SE (plus 4 SE of
    # the model's own estimate for Monte Carlo models, which use 4000 samples) bounds a fluke.
    se_mean = u.std(0) / math.sqrt(k)
    dev = u - mc_mean
    se_cov = (torch.einsum("kmi,kmj->kmij", dev, dev).std(0) / math.sqrt(k))
    # A Monte Carlo model estimates from its own 4000 samples: its SE is √(k/4000) times ours, and a
    # coordinate constant in our k samples may still vary in its (absolute slack 10/4000).
    slack = 1.0 if noise_type != "sampled" else 1.0 + math.sqrt(k / 4000)
    atol = 1e-12 if noise_type != "sampled" else 10 / 4000
    assert bool(((drift - mc_mean).abs() <= 5 * slack * se_mean + atol).all()), (drift, mc_mean)
    # The covariance's standard error needs finite fourth moments of the update: sign messages are
    # bounded (every moment exists, Cauchy noise included); an unbounded update needs ν > 4.
    bounded = m.compressor.name == "sign"
    assert bounded or noise.name != "student-t" or noise.nu > 4, "a case without a defined covariance SE"
    assert bool(((cov - mc_cov).abs() <= 5 * slack * se_cov + atol).all()), (cov, mc_cov)


def test_rand_k_diffusion_is_a_square_root_of_diag_minus_lowrank():
    prob = problems.make("quadratic", dim=6, heterogeneity=2.0)
    model = models.from_algorithm(Oracle(prob, Noise("gaussian", 0.3), workers=4, batch=1), algorithms.make("dcsgd", compressor="rand-k", k=2), 0.1)
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, diag, u = model._factors(x)
    dense = torch.diag_embed(diag) - u @ u.transpose(-1, -2)
    torch.testing.assert_close(model.covariance(x), dense, rtol=1e-10, atol=1e-12)


def test_heavy_tails_refused_for_dsgd_but_not_for_dsignsgd():
    prob = problems.make("quadratic", dim=3)
    with pytest.raises(ValueError, match="infinite variance"):
        models.from_algorithm(Oracle(prob, Noise("student-t", 1.0, 2.0), workers=2, batch=1), algorithms.make("dsgd"), 0.1)
    with pytest.raises(ValueError, match="infinite variance"):
        models.from_algorithm(Oracle(prob, Noise("student-t", 1.0, 1.0), workers=2, batch=1), algorithms.make("dcsgd", compressor="natural"), 0.1)
    model = models.from_algorithm(Oracle(prob, Noise("student-t", 1.0, 1.0), workers=2, batch=1), algorithms.make("dsignsgd"), 0.1)
    assert "closed form" in model.description
    with pytest.raises(ValueError, match="error feedback"):
        models.from_algorithm(Oracle(prob, Noise("gaussian", 1.0), workers=2, batch=1), algorithms.make("ef", compressor="top-k", k=1), 0.1)


class OU(models.SDEModel):
    """dX = −θ X dt + sqrt(η) σ dW in dimension d (known solution)."""

    noise_type = "diagonal"
    description = "Ornstein–Uhlenbeck"

    def __init__(self, theta, sigma, eta, d=1):  # no oracle: a model is its drift and diffusion
        self.theta, self.sigma, self.eta, self.dim, self.noise_dim = theta, sigma, eta, d, d

    def evaluate(self, t, x, xi, args):
        return self.theta * x, self.sigma * xi

    def second_moment(self, x0, t):
        e = math.exp(-2 * self.theta * t)
        return x0**2 * e + self.eta * self.sigma**2 / (2 * self.theta) * (1 - e)


@pytest.mark.parametrize("increments", ["gaussian", "rademacher"])
def test_euler_maruyama_weak_order_is_one_on_ornstein_uhlenbeck(increments):
    ou = OU(theta=1.0, sigma=0.5, eta=0.2)
    solver, noise = EulerMaruyama(), noise_source(increments)
    dts = [0.2, 0.1, 0.05, 0.025]
    m = 400_000
    errs = []
    for i, dt in enumerate(dts):
        x = integrate(ou, torch.ones(m, 1, dtype=torch.float64), t1=1.0, dt=dt, generator=torch.Generator().manual_seed(i), solver=solver,
                      noise=noise)
        errs.append(abs(float((x * x).mean()) - ou.second_moment(1.0, 1.0)))
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    # The exact EM errors of E X² here are 0.025, 0.012, 0.0061, 0.0030 (slope 1.01); the MC SE of
    # E X² with 4·10⁵ paths is ≈ 2.5e-4, under 10 % of the smallest error, so the fitted log-log slope
    # is within ±0.2 of the declared weak order 1.
    assert abs(slope - solver.weak_order) < 0.2, (errs, slope)


def test_euler_maruyama_matches_torchsde_euler():
    torchsde = pytest.importorskip("torchsde")
    ou = OU(theta=1.5, sigma=0.8, eta=0.05, d=3)
    m, dt, t1 = 20_000, 0.05, 1.0
    ours = integrate(ou, torch.ones(m, 3, dtype=torch.float64), t1=t1, dt=dt, generator=torch.Generator().manual_seed(0))

    class TS(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -ou.theta * y

        def g(self, t, y):
            return torch.full_like(y, math.sqrt(ou.eta) * ou.sigma)

    torch.manual_seed(1)  # torchsde draws its Brownian motion from the global generator
    ts = torchsde.sdeint(TS(), torch.ones(m, 3, dtype=torch.float64), torch.tensor([0.0, t1], dtype=torch.float64), method="euler", dt=dt)[-1]
    # Both are the same Euler scheme: equal mean and variance up to MC error (SE of the mean ≈ sd/√(3m),
    # of the variance ≈ var·√(2/(3m))); 5 SE.
    sd = float(ours.std())
    assert abs(float(ours.mean()) - float(ts.mean())) < 5 * sd * math.sqrt(2 / (3 * m))
    assert abs(float(ours.var()) - float(ts.var())) < 5 * sd**2 * math.sqrt(2 * 2 / (3 * m))
    # and both match the exact discrete second moment of EM: (1 − θdt)^{2n} + ησ²dt Σ_j (1 − θdt)^{2j}
    a, n = 1 - ou.theta * dt, round(t1 / dt)
    exact = a ** (2 * n) + ou.eta * ou.sigma**2 * dt * sum(a ** (2 * j) for j in range(n))
    assert float((ours * ours).mean()) == pytest.approx(exact, rel=0.02)


def test_sde_stationary_loss_matches_closed_forms():
    # docs/theory.md §3 on f = ½ Σ h_j x_j², d = 10, s = 1: the OU limit of DSGD's SDE has
    # E f = η d s²/(4NB); EM with step dt has exactly Σ_j η s²/(2NB(2 − h_j dt)).
    d, n, b, eta, dt = 10, 2, 2, 0.1, 0.025
    prob = problems.make("quadratic", dim=d, x0_scale=0.0)
    model = models.from_algorithm(Oracle(prob, Noise("gaussian", 1.0), workers=n, batch=b), algorithms.make("dsgd"), eta)
    losses = []
    integrate(model, torch.zeros(1000, d, dtype=torch.float64), t1=40.0, dt=dt, generator=torch.Generator().manual_seed(0),
              observe=lambda i, x: losses.append(float(prob.loss(x).mean())) if i * dt >= 10.0 else None, observe_every=40)
    got = sum(losses) / len(losses)
    exact_em = float((eta / (2 * n * b * (2 - prob.eigs * dt))).sum())
    # 1000 paths × 31 nearly independent times (spacing 1.0 ≥ relaxation time 1/(2h_min) = 1): relative
    # SE ≈ sqrt(2/d)/sqrt(31000) ≈ 0.25 %; 2 % is 8 SE.
    assert got == pytest.approx(exact_em, rel=0.02)
    assert got == pytest.approx(eta * d / (4 * n * b), rel=0.02 + dt * 2.0 / 2)

    # DSignSGD's SDE: sqrt(π/2) η d s / (4 N √B) for Gaussian noise (linearised; small η).
    eta = 0.01
    model = models.from_algorithm(Oracle(prob, Noise("gaussian", 1.0), workers=n, batch=b), algorithms.make("dsignsgd"), eta)
    losses = []
    integrate(model, torch.zeros(1000, d, dtype=torch.float64), t1=60.0, dt=eta, generator=torch.Generator().manual_seed(1),
              observe=lambda i, x: losses.append(float(prob.loss(x).mean())) if i * eta >= 20.0 else None, observe_every=100)
    theory = math.sqrt(math.pi / 2) * eta * d / (4 * n * math.sqrt(b))
    # Linearisation error a few %; sampling: 1000 paths × 40 observations ~1.8 time units apart (the
    # relaxation time 1/(√(2/π)√B h_min)) give a relative SE < 0.5 %. Allow 8 %.
    assert sum(losses) / len(losses) == pytest.approx(theory, rel=0.08)


def test_integrate_rejects_bad_steps():
    ou = OU(1.0, 1.0, eta=0.1)
    g = torch.Generator()
    with pytest.raises(ValueError, match="dt must be in"):
        integrate(ou, torch.zeros(2, 1), t1=1.0, dt=0.2, generator=g)
    with pytest.raises(ValueError, match="whole number of steps"):
        integrate(ou, torch.zeros(2, 1), t1=1.0, dt=0.03, generator=g)
    with pytest.raises(ValueError, match="increments must be one of gaussian, rademacher, got 'uniform'"):
        noise_source("uniform")


def test_normalised_methods_have_an_sde_under_any_noise():
    # ‖U‖ = 1 for a normalised step: mean and covariance exist even for Cauchy noise.
    prob = problems.make("l0l1-cosh", dim=3)
    m = algorithms.make("dsgd", normalize=True)
    model = models.from_algorithm(Oracle(prob, Noise("student-t", 1.0, 1.0), workers=2, batch=1), m, 0.1, mc_samples=64)
    assert model.noise_type == "sampled"
    cov = model.covariance(torch.ones(2, 3, dtype=torch.float64), model.step_args(generator=torch.Generator().manual_seed(0)))
    assert bool(torch.isfinite(cov).all()) and float(torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).max()) <= 1.0 + 1e-12


class GBM(models.SDEModel):
    """dX = −θ X dt + sqrt(η) σ X dW in one dimension: multiplicative noise, exact solution pathwise."""

    noise_type = "diagonal"
    description = "geometric Brownian motion"

    def __init__(self, theta, sigma, eta):
        self.theta, self.sigma, self.eta, self.dim, self.noise_dim = theta, sigma, eta, 1, 1

    def evaluate(self, t, x, xi, args):
        return self.theta * x, self.sigma * x * xi


class Replay(NoiseSource):
    """Replays pre-drawn standardised increments, one (M, 1) block per step (a test's fixed Brownian path)."""

    def __init__(self, blocks):
        object.__setattr__(self, "blocks", iter(blocks))

    def fill(self, out, generator):
        return out.copy_(next(self.blocks))


def test_euler_maruyama_strong_order_is_its_declared_one_on_geometric_brownian_motion():
    """Strong error E|X_T^EM − X_T| against the exact solution X_T = X_0 exp((−θ − ησ²/2)T + sqrt(η)σ W_T) on the
    same Brownian paths (coarse increments summed from the finest ones): slope in dt ≈ ``strong_order`` (½)."""
    gbm, solver = GBM(theta=0.5, sigma=1.0, eta=1.0), EulerMaruyama()
    m, fine = 20_000, 2**-8
    dw = torch.randn(round(1 / fine), m, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * math.sqrt(fine)
    exact = torch.exp(-(gbm.theta + gbm.eta * gbm.sigma**2 / 2) + math.sqrt(gbm.eta) * gbm.sigma * dw.sum(0))
    dts, errs = [2**-3, 2**-4, 2**-5, 2**-6], []
    for dt in dts:
        group = round(dt / fine)
        blocks = dw.reshape(-1, group, m, 1).sum(1) / math.sqrt(dt)  # ξ_n = (W_{(n+1)dt} − W_{n dt}) / sqrt(dt)
        x = integrate(gbm, torch.ones(m, 1, dtype=torch.float64), t1=1.0, dt=dt, generator=torch.Generator(),
                      solver=solver, noise=Replay(blocks), pathwise=True)
        errs.append(float((x - exact).abs().mean()))
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    # The errors are measured on the same 2·10⁴ paths at every dt (common random numbers): their relative
    # SE is ≈ 1 % and nearly cancels in the slope; the leading term ∝ sqrt(dt) is not yet alone at dt = 1/8
    # (a drift term ∝ dt adds to it), so ±0.15 of the declared ½.
    assert abs(slope - solver.strong_order) < 0.15, (errs, slope)


class NarrowSolver(EulerMaruyama):
    """An Euler–Maruyama that declares it handles diagonal noise only (to see a pairing refused)."""

    noise_types = frozenset({"diagonal"})


def test_a_solve_whose_axes_do_not_pair_is_refused_before_it_starts():
    prob = problems.make("quadratic", dim=3)
    mc = models.from_algorithm(Oracle(prob, Noise("gaussian", 1.0), workers=2), algorithms.make("dcsgd", compressor="natural"), 0.1)
    assert mc.noise_type == "sampled" and mc.noise_type in EulerMaruyama.noise_types
    g = torch.Generator()
    with pytest.raises(ValueError, match="NarrowSolver does not support the noise type 'sampled' of MonteCarloSDE; "
                                         "it supports diagonal"):
        integrate(mc, torch.zeros(2, 3), t1=0.1, dt=0.1, generator=g, solver=NarrowSolver())
    with pytest.raises(ValueError, match="does not support the noise type 'sampled'"):
        integrate_schedule(mc, torch.zeros(2, 3), lr=lambda k: 0.1, steps=1, generator=g, solver=NarrowSolver())
    with pytest.raises(ValueError, match="does not support the noise type 'sampled'"):
        simulate_sde(Oracle(prob, Noise("gaussian", 1.0), workers=2), algorithms.make("dcsgd", compressor="natural"),
                     Schedule("constant", 0.1, 2), paths=2, mc_samples=4, solver=NarrowSolver())
    ou = OU(1.0, 1.0, eta=0.1)
    with pytest.raises(ValueError, match="RademacherIncrements matches the increments' moments, not Brownian paths"):
        integrate(ou, torch.zeros(2, 1), t1=0.1, dt=0.1, generator=g, noise=RademacherIncrements(), pathwise=True)
    integrate(ou, torch.zeros(2, 1), t1=0.1, dt=0.1, generator=g, noise=GaussianIncrements(), pathwise=True)  # fine
    with pytest.raises(ValueError, match="solver must be a compsde.sde.integrators.Solver .*got 'rademacher'"):
        integrate(ou, torch.zeros(2, 1), t1=0.1, dt=0.1, generator=g, solver="rademacher")
    with pytest.raises(ValueError, match="noise must be a compsde.sde.noise.NoiseSource .*got 'rademacher'"):
        integrate(ou, torch.zeros(2, 1), t1=0.1, dt=0.1, generator=g, noise="rademacher")
    with pytest.raises(ValueError, match=r"events\[0\] must be an event"):
        integrate_schedule(ou, torch.zeros(2, 1), lr=lambda k: 0.1, steps=1, generator=g, events=[3])
    assert RademacherIncrements.weak_only and not GaussianIncrements.weak_only
    assert noise_source("rademacher") == RademacherIncrements() and noise_source("gaussian") == GaussianIncrements()


def test_gaussian_increments_follow_the_standard_normal_law():
    """The law of ``GaussianIncrements`` on n = 10⁷ float32 entries (ten steps' (10⁴, 100) buffers), against
    N(0, 1). Each tolerance is 5 standard errors at this n (a correct sampler fails one with probability
    ~6e-7): mean 1/√n, variance √(2/n), E ξ³ √(15/n) (E ξ⁶ = 15), E ξ⁴ √(96/n) (E ξ⁸ − 9 = 96); tail counts
    binomial √(n p (1 − p)); lag-1 correlations 1/√(n'), n' the number of products. KS on the first 10⁶
    (p > 1e-3: it detects a CDF error of ~2e-3; the tail counts test the extremes it cannot see)."""
    from scipy import stats

    steps, shape = 10, (10_000, 100)
    g = torch.Generator().manual_seed(2024)
    x = torch.empty(steps, *shape)
    for k in range(steps):
        GaussianIncrements().draw(x[k], g)
    z = x.double().reshape(-1)
    n = z.numel()

    def within(est, exact, se):
        assert abs(est - exact) <= 5 * se, f"{est} vs {exact} ± 5·{se:.2e}"

    within(z.mean().item(), 0.0, 1 / math.sqrt(n))
    within(z.square().mean().item(), 1.0, math.sqrt(2 / n))
    within(z.pow(3).mean().item(), 0.0, math.sqrt(15 / n))
    within(z.pow(4).mean().item(), 3.0, math.sqrt(96 / n))
    size = z.abs()
    for a in (2.0, 3.0, 4.0, 4.5):  # P(|ξ| > 4) = 6.33e-5: 633 of 10⁷ expected, standard error 25
        p = 2 * stats.norm.sf(a)
        within((size > a).sum().item(), n * p, math.sqrt(n * p * (1 - p)))
    assert stats.kstest(z[:1_000_000].numpy(), "norm").pvalue > 1e-3
    flat = z.view(steps, -1)
    lag_entry = (flat[:, 1:] * flat[:, :-1]).reshape(-1)       # neighbours within a draw
    lag_step = (flat[1:] * flat[:-1]).reshape(-1)              # the same entry in consecutive draws
    for prod in (lag_entry, lag_step):
        within(prod.mean().item(), 0.0, 1 / math.sqrt(prod.numel()))
    # the same seed gives the same numbers
    again = torch.empty(shape)
    GaussianIncrements().draw(again, torch.Generator().manual_seed(2024))
    assert torch.equal(again, x[0])


class Recorded(OU):
    """OU that records the (t, η_k, dt) of every evaluation."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def evaluate(self, t, x, xi, args):
        self.seen.append((t, args.lr, args.dt))
        return super().evaluate(t, x, xi, args)


def test_events_run_at_optimizer_step_boundaries_and_may_change_the_state():
    """An event that zeroes coordinate 0 after every optimizer step: the coordinate is 0 at every boundary
    (it moves within a step's substeps, pulled by nothing but its noise), the other moves; events see k = 1..steps
    in order with the args of the step that just ended, a later event sees an earlier one's change, and the model
    receives the schedule's η_k and dt = η_k / substeps at SDE time t = Σ η_j + (substep) dt, nothing mutated."""
    ou = Recorded(theta=1.0, sigma=1.0, eta=0.2, d=2)
    lrs = [0.2, 0.1, 0.1, 0.05]
    calls, seen_by_second, at_boundary = [], [], []

    def zero_first(k, z, args):
        calls.append((k, args.lr, args.dt))
        z[:, 0] = 0.0
        return z

    def second(k, z, args):
        seen_by_second.append(float(z[:, 0].abs().max()))
        return z

    z = integrate_schedule(ou, torch.ones(5, 2, dtype=torch.float64), lr=lambda k: lrs[k], steps=4, substeps=2,
                           generator=torch.Generator().manual_seed(0), events=[zero_first, second],
                           observe=lambda k, z: at_boundary.append(z[:, 0].clone()))
    assert calls == [(k + 1, lrs[k], lrs[k] / 2) for k in range(4)]
    assert seen_by_second == [0.0] * 4 and all(bool((c == 0).all()) for c in at_boundary[1:])
    assert bool((at_boundary[0] == 1).all())  # observe(0) sees the start, before any event
    assert bool((z[:, 0] == 0).all()) and bool((z[:, 1] != 1).all())
    ts = [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.425]
    assert [s[1:] for s in ou.seen] == [(eta, eta / 2) for eta in lrs for _ in range(2)]
    assert [s[0] for s in ou.seen] == pytest.approx(ts, abs=1e-15)
    assert not hasattr(ou, "lr") and not hasattr(ou, "dt")
    # an event may replace the state by a new tensor: the solve goes on with it
    z = integrate_schedule(ou, torch.ones(3, 2, dtype=torch.float64), lr=lambda k: 0.1, steps=3,
                           generator=torch.Generator().manual_seed(0), events=[lambda k, z, a: torch.full_like(z, k)])
    assert bool((z == 3).all())


def test_a_model_is_evaluated_with_the_args_it_is_given():
    """No model state between evaluations: SEG's probe radius is the step's η (args.lr), the Monte Carlo model
    samples from args.generator, and a Monte Carlo model without one says how to give it."""
    game = problems.make("bilinear-game", player_dim=2)
    seg = models.from_algorithm(Oracle(game, Noise("none"), workers=1), algorithms.make("seg"), 0.1)
    x = torch.ones(1, 4, dtype=torch.float64)
    f = game.grad(x)
    for eta in (0.1, 0.02):  # first order: m = (I − ηJ)F
        want = f - eta * game.jvp(x, f)
        torch.testing.assert_close(seg._first_order(x, seg.step_args(lr=eta)), want, rtol=1e-12, atol=1e-12)
    mc = models.from_algorithm(Oracle(problems.make("quadratic", dim=3), Noise("gaussian", 1.0), workers=2),
                               algorithms.make("dcsgd", compressor="natural"), 0.1, mc_samples=8)
    x = torch.ones(2, 3, dtype=torch.float64)
    a = mc.drift(x, mc.step_args(generator=torch.Generator().manual_seed(4)))
    b = mc.drift(x, mc.step_args(generator=torch.Generator().manual_seed(4)))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="MonteCarloSDE needs a generator .*model.step_args\\(generator=...\\)"):
        mc.drift(x)
    with pytest.raises(ValueError, match="args must be compsde.sde.models.StepArgs .*got <torch._C.Generator"):
        mc.drift(x, torch.Generator())
