"""SDE models against Monte Carlo moments of the update, and the Euler–Maruyama integrator against theory.

Tolerances are a few standard errors of the Monte Carlo estimates they compare against.
"""

import math

import numpy as np
import pytest
import torch

from compsde import algorithms
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import models
from compsde.sde.integrators import EulerMaruyama, integrate


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
    drift = model.drift(x, gen)
    cov = model.covariance(x, gen)
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

    def evaluate(self, x, xi, generator=None):
        return self.theta * x, self.sigma * xi

    def second_moment(self, x0, t):
        e = math.exp(-2 * self.theta * t)
        return x0**2 * e + self.eta * self.sigma**2 / (2 * self.theta) * (1 - e)


@pytest.mark.parametrize("increments", ["gaussian", "rademacher"])
def test_euler_maruyama_weak_order_is_one_on_ornstein_uhlenbeck(increments):
    ou = OU(theta=1.0, sigma=0.5, eta=0.2)
    solver = EulerMaruyama(increments)
    dts = [0.2, 0.1, 0.05, 0.025]
    m = 400_000
    errs = []
    for i, dt in enumerate(dts):
        x = integrate(ou, torch.ones(m, 1, dtype=torch.float64), t1=1.0, dt=dt, generator=torch.Generator().manual_seed(i), solver=solver)
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
    with pytest.raises(ValueError, match="increments must be one of"):
        EulerMaruyama("uniform")


def test_normalised_methods_have_an_sde_under_any_noise():
    # ‖U‖ = 1 for a normalised step: mean and covariance exist even for Cauchy noise.
    prob = problems.make("l0l1-cosh", dim=3)
    m = algorithms.make("dsgd", normalize=True)
    model = models.from_algorithm(Oracle(prob, Noise("student-t", 1.0, 1.0), workers=2, batch=1), m, 0.1, mc_samples=64)
    assert model.noise_type == "sampled"
    cov = model.covariance(torch.ones(2, 3, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(cov).all()) and float(torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1).max()) <= 1.0 + 1e-12
