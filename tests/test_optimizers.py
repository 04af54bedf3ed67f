"""The named optimizers' recipes (``compsde.optimizers``): one conformance test over the registry, and
Signum, added as one file, with its SDE checked against the optimizer.

Monte Carlo tolerances are a few standard errors of the estimates (``moments_close``); the tracking
tolerance is the SDE's first-order weak error at this η plus the Monte Carlo error of the mean losses."""

from __future__ import annotations

import math

import pytest
import torch
from cases import CASES
from test_sde_optimizers import moments_close

from compsde import algorithms, optimizers
from compsde.algorithms.aggregation import sum_messages
from compsde.algorithms.schedules import Schedule
from compsde.experiments import schema
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import models
from compsde.sde.tracking import simulate_sde
from compsde.sim import simulate

F64 = torch.float64


@pytest.mark.parametrize("name", optimizers.names())
def test_every_optimizer_conforms(name):
    """Its defaults pass its own checks; make builds it with them and labels it; the config schema takes
    exactly its keys; the shared cases run it (simulator = reference = torch backend); it has an SDE model,
    the Monte Carlo model (memoryless), or says why not."""
    opt = optimizers.get(name)
    assert opt.hyper({}) == opt.defaults
    algo = algorithms.make(name)
    assert algo.optimizer is opt and opt.built(algo) and name in algo.label()
    assert schema.optimizer_keys(name) == opt.keys and set(opt.keys) <= set(schema.OPTIMIZER_KEYS)
    assert any(method == name for method, _ in CASES), f"{name} has no conformance case in tests/cases.py"
    assert opt.sde is not None or algo.memoryless or opt.no_sde
    for h in opt.hypers:
        with pytest.raises(ValueError, match=h.key):
            algorithms.make(name, **{h.key: -1.0})  # every range excludes -1
    with pytest.raises(ValueError, match="does not take"):
        algorithms.make(name, **{next(k for k in schema.OPTIMIZER_KEYS if k not in opt.keys): 0.5})


def _signum_step(oracle, algo, beta, x, momenta, eta, samples, seed):
    """K independent Signum steps from x (d,) with the workers' averaged momenta m_i (N, d) (the recipe
    keeps heavy-ball momenta h_i = m_i/(1 − β): the same signs): the updates per unit η of x (K, d) and of
    the m_i (K, N·d)."""
    n, d = momenta.shape
    big = x.expand(samples, d).clone()
    z = oracle.noise.sample(n, (samples,), d, oracle.batch, torch.Generator().manual_seed(seed), F64)
    st = algo.init(big, n)
    st["worker"]["momentum"].copy_((momenta / (1 - beta)).unsqueeze(1).expand_as(st["worker"]["momentum"]))
    out = algo.workers_step(oracle.grads(big, 0, n, z), {"worker": st["worker"], "ef": None}, big, eta, None)
    new = algo.server_step(sum_messages(out.messages), n, st, eta)
    m_new = (1 - beta) * out.state["worker"]["momentum"]  # (N, K, d)
    return (big - new["params"]) / eta, ((momenta.unsqueeze(1) - m_new) / eta).transpose(0, 1).reshape(samples, -1)


@pytest.mark.parametrize("workers, noise", [(1, Noise("gaussian", 0.6)), (2, Noise("gaussian", 0.6)),
                                            (3, Noise("gaussian", [0.4, 0.6, 0.9])), (3, Noise("student-t", 0.6, 4.0))],
                         ids=["N1", "N2-ties", "N3-scales", "N3-student-t"])
def test_signum_sde_matches_one_step_moments(workers, noise):
    """From random states (x, m_1..m_N): the model's drift and covariance of (U_x, U_m) are the exact mean
    and covariance of one step's update per unit η (the vote's law is exact; m's noise is the gradient
    noise's covariance), compared with 40,000 steps."""
    eta, beta, d = 0.05, 0.5, 3
    prob = problems.make("quadratic", dim=d, rotate=True, heterogeneity=1.0, seed=2)
    oracle = Oracle(prob, noise, workers=workers, batch=2)
    algo = algorithms.make("signum", beta=beta)
    model = models.from_algorithm(oracle, algo, eta)
    assert type(model).__name__ == "SignumSDE" and model.state_dim == (workers + 1) * d
    gen = torch.Generator().manual_seed(3)
    for trial in range(2):
        x = 0.3 * torch.randn(d, dtype=F64, generator=gen)
        m = 0.2 * torch.randn(workers, d, dtype=F64, generator=gen)
        u_x, u_m = _signum_step(oracle, algo, beta, x, m, eta, 40_000, seed=trial)
        z = torch.cat([x, m.reshape(-1)])[None]
        moments_close(torch.cat([u_x, u_m], 1), model.drift(z)[0], model.covariance(z)[0])


def test_signum_sde_tracks_the_optimizer_on_a_quadratic():
    """Three workers with their own gradients (heterogeneity) and Gaussian noise, 400 steps: the mean loss of
    the SDE's paths follows the optimizer's runs (the SDE keeps each step's first two moments: the error
    left is the first-order weak error, measured here at 2–3 % of the loss)."""
    prob = problems.make("quadratic", dim=20, eig_min=0.2, eig_max=2.0, heterogeneity=0.5, seed=1)
    oracle = Oracle(prob, Noise("gaussian", 1.0), workers=3)
    algo = algorithms.make("signum", beta=0.9)
    sched = Schedule("constant", 0.01, 400)
    opt = simulate(oracle, algo, sched, repeats=256, seed=1, log_every=40)
    sde, model = simulate_sde(oracle, algo, sched, paths=256, seed=2, log_every=40)
    assert type(model).__name__ == "SignumSDE"
    a, b = opt.loss.mean(1), sde.loss.mean(1)
    se = torch.sqrt(opt.loss.var(1) / 256 + sde.loss.var(1) / 256)
    assert float(a[-1]) < 0.2 * float(a[0])  # it converged to the noise floor
    assert ((a - b).abs() <= 0.05 * a + 4 * se).all(), (a, b)


def test_signum_sde_is_refused_where_it_does_not_exist():
    algo = algorithms.make("signum")
    with pytest.raises(ValueError, match="infinite variance"):  # m's noise needs finite variance
        models.from_algorithm(Oracle(problems.make("quadratic", dim=3), Noise("student-t", 1.0, 2.0), workers=1), algo, 0.1)
    custom = algorithms.make("dsignsgd-majority", worker={"momentum": 0.9})  # the same step, not the recipe
    with pytest.raises(ValueError, match="no first-order SDE"):
        models.from_algorithm(Oracle(problems.make("quadratic", dim=3), Noise("gaussian", 1.0), workers=2), custom, 0.1)


def test_signum_with_no_noise_is_majority_vote_sign_descent():
    """Deterministic gradients: each worker's vote is the sign of its momentum; the SDE's vote is the same
    and its diffusion vanishes (Var V = 0)."""
    prob = problems.make("quadratic", dim=4, heterogeneity=1.0)
    oracle = Oracle(prob, Noise("none"), workers=3)
    model = models.from_algorithm(oracle, algorithms.make("signum", beta=0.5), 0.1)
    z = torch.randn(5, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    drift, noise = model.evaluate(0.0, z.clone(), torch.randn(5, 16, dtype=F64), model.step_args())
    mu = 0.5 * z[:, 4:].reshape(5, 3, 4) + 0.5 * oracle.mean_grads(z[:, :4]).transpose(0, 1)
    vote = torch.sign(torch.where(mu >= 0, 1.0, -1.0).sum(1))
    assert torch.equal(drift[:, :4], vote.to(F64)) and float(noise.abs().max()) == 0.0
    assert math.isclose(float(drift[0, 4]), (0.5 / 0.1) * float(z[0, 4] - oracle.mean_grads(z[:1, :4])[0, 0, 0]))


def test_signum_leave_one_out_laws_match_the_direct_recursion():
    """Removing one worker from the vote count's law (both recursion directions, p on either side of 1/2,
    p = 0 and 1 included) gives the law of the others' count to rounding (1e-12 at N = 9)."""
    from compsde.optimizers.signum import _count_law, _without

    gen = torch.Generator().manual_seed(0)
    p = torch.rand(9, 50, dtype=F64, generator=gen)
    p[0, :5], p[1, 5:10] = 0.0, 1.0
    law = _count_law(p)
    for i in range(9):
        direct = _count_law(torch.cat([p[:i], p[i + 1:]]))
        for a, b in zip(_without(law, p[i]), direct, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
