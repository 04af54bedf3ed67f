"""The gradient-noise probe (``compsde.advise.probe``) against exact values.

Tolerances: every comparison with an exact value allows 4 of the probe's own standard errors (a
two-sided 4σ band: a false failure about once in 16,000 runs for a Gaussian estimate; the jackknife's
error is itself uncertain by ~1/√(2(rounds − 1)), 13 % at 32 rounds, so 4 of them are still > 3 true
errors), and each test also checks that the error is small enough for the comparison to mean something.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from compsde.advise import NoiseProbe, plot_probe, probe_model, probe_oracle, tail_index
from compsde.advise.probe import QUANTILES
from compsde.objectives import problems
from compsde.objectives.data import load
from compsde.objectives.models import build
from compsde.objectives.network import MLPNetwork, cross_entropy
from compsde.objectives.noise import Noise
from compsde.objectives.oracle import Oracle


def _quantile(values: torch.Tensor, q: float) -> float:
    """The probe's nearest-rank quantile."""
    s = values.sort().values
    return float(s[min(int(round(q * (s.numel() - 1))), s.numel() - 1)])


# ---- the tail-index estimator on exact laws ------------------------------------------------------------


@pytest.mark.parametrize(("law", "alpha"), [("gaussian", 2.0), ("cauchy", 1.0)])
def test_tail_index_of_stable_laws(law: str, alpha: float) -> None:
    """Gaussian (2-stable) and Cauchy (1-stable) samples: the estimator is unbiased for 1/α, so α̂ lies
    within 4 standard errors of α (256 groups of 16 rows × 64 coordinates of different scales)."""
    gen = torch.Generator().manual_seed(1)
    scales = torch.logspace(-3, 2, 64, dtype=torch.float64)
    x = torch.randn(4096, 64, generator=gen, dtype=torch.float64)
    if law == "cauchy":
        x = x / torch.randn(4096, 64, generator=gen, dtype=torch.float64)
    a, se = tail_index(x * scales, 16)
    assert se < 0.1 * alpha
    assert abs(a - alpha) < 4 * se, (a, se)


# ---- a synthetic quadratic with known Gaussian noise ----------------------------------------------------


def test_quadratic_oracle_exact_values() -> None:
    """f = ½ Σ h_j x_j², Gaussian noise of sd σ per draw of batch 1, at x = 1: ‖G‖² = Σ h_j², tr Σ = d σ²,
    per-coordinate signal-to-noise h_j/σ — each recovered within 4 of the probe's standard errors."""
    d, sigma = 64, 2.0
    prob = problems.make("quadratic", dim=d, eig_min=0.5, eig_max=2.0)
    oracle = Oracle(prob, Noise("gaussian", scale=sigma), workers=1, batch=1)
    p = probe_oracle(oracle, warmup_steps=0, points=1, small_batch=1, big_batch=16, repetitions=64, tail_group=8, seed=3)
    g2 = float((prob.eigs ** 2).sum())
    assert p.grad_norm_sq_se < 0.1 * g2 and abs(p.grad_norm_sq - g2) < 4 * p.grad_norm_sq_se
    tr = d * sigma**2
    assert p.trace_sigma_se < 0.05 * tr and abs(p.trace_sigma - tr) < 4 * p.trace_sigma_se
    b = tr / g2
    assert abs(p.b_simple - b) < 4 * p.b_simple_se
    r = prob.eigs / sigma
    for q in QUANTILES:
        key = f"{q:g}"
        assert abs(p.snr[key] - _quantile(r, q)) < 4 * p.snr_se[key], (q, p.snr[key], _quantile(r, q), p.snr_se[key])
    # Gaussian noise is 2-stable: the tail estimator is unbiased for 1/2
    assert abs(p.tail_inverse - 0.5) < 4 * p.tail_inverse_se
    json.dumps(p.as_dict())  # JSON-ready


def test_quadratic_heterogeneous_workers() -> None:
    """Four workers with tilted objectives f_i = f − ⟨b_i, x⟩ (Σ b_i = 0): the heterogeneity
    (1/N) Σ‖b_i‖² / ‖∇f‖² and the global ‖∇f‖² are recovered within 4 standard errors, from per-worker
    draws whose own means are ∇f − b_i."""
    d, n = 32, 4
    prob = problems.make("quadratic", dim=d, heterogeneity=5.0, seed=2)
    oracle = Oracle(prob, Noise("gaussian", scale=1.0), workers=n, batch=2)
    p = probe_oracle(oracle, warmup_steps=0, points=1, small_batch=2, big_batch=32, repetitions=48, seed=5)
    x = torch.ones(d, dtype=torch.float64)
    g2 = float(prob.grad(x).square().sum())
    het = float(prob.tilts(n).square().sum(1).mean()) / g2
    assert p.workers == n and p.heterogeneity is not None and p.heterogeneity_se is not None
    assert p.heterogeneity_se < 0.2 * het and abs(p.heterogeneity - het) < 4 * p.heterogeneity_se
    assert abs(p.grad_norm_sq - g2) < 4 * p.grad_norm_sq_se
    assert abs(p.trace_sigma - d) < 4 * p.trace_sigma_se  # σ = 1 per sample: tr Σ = d


# ---- the digits MLP ------------------------------------------------------------------------------------


def _digits_mlp() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    data = load("digits")
    model = build("mlp", data.shape, data.classes, seed=0, hidden=(32,))
    return model, data.x, data.y


def test_digits_b_simple_matches_exact() -> None:
    """Minibatch noise only: B_simple from 32 pairs of batches (8 and 128 samples, drawn with replacement)
    agrees with tr Σ / ‖G‖² computed exactly from the per-sample gradients of the whole training set."""
    model, x, y = _digits_mlp()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cross_entropy(functional_call(model, p, (a.unsqueeze(0),)), b.unsqueeze(0))

    per = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([per[k].reshape(x.shape[0], -1) for k in params], 1).double()
    g = flat.mean(0)
    g2, tr = float(g.square().sum()), float((flat - g).square().sum(1).mean())
    b_exact = tr / g2
    sampler = RandomSampler(TensorDataset(x, y), replacement=True, num_samples=1 << 20,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, y), batch_size=64, sampler=sampler)
    p = probe_model(model, cross_entropy, loader, warmup_steps=0, points=1, small_batch=8, big_batch=128,
                    repetitions=32, seed=0)
    assert p.b_simple_se < 0.25 * b_exact
    assert abs(p.b_simple - b_exact) < 4 * p.b_simple_se, (p.b_simple, p.b_simple_se, b_exact)
    assert abs(p.grad_norm_sq - g2) < 4 * p.grad_norm_sq_se
    assert abs(p.trace_sigma - tr) < 4 * p.trace_sigma_se
    # per-coordinate signal-to-noise |G_j| / σ_j of the per-sample gradients, over the coordinates that move
    sd = (flat - g).square().mean(0).sqrt()
    live = (sd > 0) | (g != 0)
    r = torch.where(sd > 0, g.abs() / sd.clamp_min(1e-300), torch.full_like(g, math.inf))[live]
    for q in QUANTILES:
        key = f"{q:g}"
        assert abs(p.snr[key] - _quantile(r, q)) < 4 * p.snr_se[key], (q, p.snr[key], _quantile(r, q), p.snr_se[key])
    # the user's model is not trained by the probe
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())


def test_digits_warmup_points_and_plots(tmp_path) -> None:
    """A probe along a warm-up: the loss falls, every point is measured, the figures are written."""
    model, x, y = _digits_mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    p = probe_model(model, cross_entropy, loader, warmup_steps=40, points=3, small_batch=8, big_batch=64,
                    repetitions=4, tail_group=4, lr=0.5, seed=1)
    assert p.steps == [0, 20, 40] and len(p.per_point) == 3 and len(p.warmup_loss) == 40
    assert sum(p.warmup_loss[-10:]) < sum(p.warmup_loss[:10])
    files = plot_probe(p, tmp_path / "figs", title="digits")
    assert {f.name for f in files} == {"probe_noise_scale.png", "probe_snr.png", "probe_tail_index.png"}
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    # two shard loaders: the heterogeneity figure too
    half = x.shape[0] // 2
    order = torch.argsort(y)  # label-sorted shards: strongly heterogeneous
    shards = [DataLoader(TensorDataset(x[order[i * half:(i + 1) * half]], y[order[i * half:(i + 1) * half]]),
                         batch_size=16, shuffle=True) for i in range(2)]
    q = probe_model(model, cross_entropy, loader, warmup_steps=0, points=1, small_batch=8, big_batch=64,
                    repetitions=4, tail_group=4, worker_loaders=shards)
    assert q.workers == 2 and q.heterogeneity is not None and q.heterogeneity > 0.1
    assert "probe_heterogeneity.png" in {f.name for f in plot_probe(q, tmp_path / "h")}
    # a shard function gives the same probe (same seed: the loaders shuffle with the same generator state)
    q2 = probe_model(model, cross_entropy, loader, warmup_steps=0, points=1, small_batch=8, big_batch=64,
                     repetitions=4, tail_group=4, worker_loaders=lambda i: shards[i], workers=2)
    assert q2.as_dict() == q.as_dict()


def test_digits_injected_student_t_tail_index() -> None:
    """Student-t noise injected into the digits MLP's minibatch gradients: ν = 1 (Cauchy, α = 1) gives α̂
    within 4 standard errors of 1; ν = 8 has finite variance, where the estimator saturates near 2 (for
    differences of t₈ draws and groups of m = 8 it gives about 1.9, the bias of order 1/log m), clearly above
    ν = 1's: the two differ by more than 5 combined standard errors."""
    net = MLPNetwork(dataset="digits", hidden=(32,))
    res = {}
    for nu in (1.0, 8.0):
        oracle = net.oracle(Noise("student-t", scale=1.0, nu=nu), workers=1, batch=8)
        res[nu] = probe_oracle(oracle, warmup_steps=4, points=2, lr=1e-3, small_batch=8, big_batch=128,
                               repetitions=8, tail_group=8, seed=0)
    a1, a8 = res[1.0], res[8.0]
    assert a1.tail_index_se < 0.1 and abs(a1.tail_index - 1.0) < 4 * a1.tail_index_se, (a1.tail_index, a1.tail_index_se)
    assert 1.7 < a8.tail_index < 2.1, (a8.tail_index, a8.tail_index_se)
    assert a8.tail_index - a1.tail_index > 5 * math.hypot(a1.tail_index_se, a8.tail_index_se)


# ---- refusals --------------------------------------------------------------------------------------------


def _quad_oracle() -> Oracle:
    return Oracle(problems.make("quadratic", dim=4), Noise("gaussian"), workers=1, batch=2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"small_batch": 0}, "small_batch must be an integer"),
    ({"small_batch": 3}, "multiples of the oracle's batch"),
    ({"big_batch": 2}, "big_batch must be a multiple of small_batch"),
    ({"big_batch": 5}, "multiples of the oracle's batch"),
    ({"repetitions": 1}, r"repetitions must be an integer in \[2, "),
    ({"tail_group": 1}, r"tail_group must be an integer in \[2, "),
    ({"tail_group": 1000}, "tail_group = 1000 is too large"),
    ({"lr": -1.0}, "lr must be a finite number ≥ 0"),
    ({"lr": float("nan")}, "lr must be"),
    ({"seed": -1}, "seed must be an integer"),
    ({"warmup_steps": -2}, r"warmup_steps must be an integer in \[0, "),
    ({"points": 0}, "points must be an integer in"),
    ({"points": 5, "warmup_steps": 2}, r"points must be an integer in \[1, 3\]"),
    ({"points": [0, 7], "warmup_steps": 5}, "each of points must be an integer in"),
    ({"points": []}, "at least one warm-up step"),
    ({"points": 1.5}, "points must be a number of probe points"),
    ({"params": torch.zeros(3)}, r"params must be a floating-point tensor of shape \(d,\) = \(4,\)"),
    ({"repetitions": 1 << 19, "big_batch": 64}, "would draw"),
])
def test_probe_oracle_refuses(kwargs: dict, match: str) -> None:
    kw = {"warmup_steps": 0, "points": 1, "big_batch": 32, **kwargs}
    params = kw.pop("params", None)
    with pytest.raises(ValueError, match=match):
        probe_oracle(_quad_oracle(), params, **kw)


def test_probe_refuses_bad_inputs() -> None:
    model, x, y = _digits_mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    with pytest.raises(ValueError, match="oracle must be a compsde gradient oracle"):
        probe_oracle("quadratic")
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        probe_model("mlp", cross_entropy, loader)
    with pytest.raises(ValueError, match="loss_fn must be a function"):
        probe_model(model, 3, loader)
    with pytest.raises(ValueError, match="loader must be an iterable"):
        probe_model(model, cross_entropy, 5)
    with pytest.raises(ValueError, match=r"must yield \(inputs, targets\) pairs"):
        probe_model(model, cross_entropy, [x[:8]], warmup_steps=1, points=1)
    with pytest.raises(ValueError, match="same nonzero number of samples"):
        probe_model(model, cross_entropy, [(x[:8], y[:4])], warmup_steps=1, points=1)
    with pytest.raises(ValueError, match="used up"):
        probe_model(model, cross_entropy, iter([(x[:8], y[:8])]), warmup_steps=3, points=1)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        probe_model(model, lambda o, t: o, loader, warmup_steps=1, points=1)
    with pytest.raises(ValueError, match="needs worker_loaders"):
        probe_model(model, cross_entropy, loader, workers=3)
    with pytest.raises(ValueError, match="workers must be an integer"):
        probe_model(model, cross_entropy, loader, worker_loaders=lambda i: loader)
    with pytest.raises(ValueError, match="disagrees with the 2 worker_loaders"):
        probe_model(model, cross_entropy, loader, worker_loaders=[loader, loader], workers=3)
    with pytest.raises(ValueError, match="worker_loaders must be a non-empty list"):
        probe_model(model, cross_entropy, loader, worker_loaders=[])
    with pytest.raises(ValueError, match="warm-up diverged"):
        probe_model(model, cross_entropy, loader, warmup_steps=30, points=1, lr=1e30)
    with pytest.raises(ValueError, match="group must be an integer ≥ 2"):
        tail_index(torch.randn(64, 3), 1)
    with pytest.raises(ValueError, match="at least 2 groups"):
        tail_index(torch.randn(10, 3), 8)
    with pytest.raises(ValueError, match="probe must be a NoiseProbe"):
        plot_probe({"b_simple": 1.0}, "/tmp")
    assert isinstance(probe_oracle(_quad_oracle(), warmup_steps=0, points=1, big_batch=16, repetitions=2, tail_group=2),
                      NoiseProbe)


def test_memory_estimate_refuses_absurd_sizes(monkeypatch) -> None:
    """The statistics' memory is estimated before anything is allocated."""
    import compsde.advise.probe as probe_mod

    monkeypatch.setattr("compsde.core.tensors.available_memory", lambda device="cpu": 1 << 20)
    with pytest.raises(ValueError, match="the probe's statistics .* needs about"):
        probe_mod.probe_oracle(Oracle(problems.make("quadratic", dim=10_000), Noise("gaussian"), workers=1, batch=1),
                               warmup_steps=0, points=1)
