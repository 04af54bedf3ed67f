"""The vectorised simulator against the reference loop, closed-form trajectories and divergence handling."""

import math

import pytest
import torch
from cases import CASES

from compsde import algorithms, compressors
from compsde.algorithms.schedules import Schedule
from compsde.objectives import Noise, Oracle, problems
from compsde.sim import loop as loop_mod
from compsde.sim import simulate, simulate_reference


@pytest.mark.parametrize("method, params", CASES, ids=[f"{m}-{p.get('compressor', '')}-{i}" for i, (m, p) in enumerate(CASES)])
@pytest.mark.parametrize("noise", [Noise("gaussian", 0.5), Noise("student-t", [0.3, 0.6, 1.0], 2.0)], ids=["gauss", "t2"])
def test_vectorised_equals_reference_loop(method, params, noise):
    prob = problems.make("quadratic", dim=6, rotate=True, heterogeneity=1.0)
    m = algorithms.make(method, **params)
    sched = Schedule("cosine", 0.1, 12)
    oracle = Oracle(prob, noise, workers=3, batch=2)
    kw = dict(repeats=4, seed=3, log_every=4)
    fast = simulate(oracle, m, sched, **kw)
    ref = simulate_reference(oracle, m, sched, **kw)
    # Same draws, same arithmetic, messages summed in the same (worker) order: equal up to the
    # round-off of batched vs one-vector matrix products (the rotated quadratic's gradient).
    torch.testing.assert_close(fast.x, ref.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.compression_error, ref.compression_error, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert torch.equal(fast.steps, torch.tensor([0, 4, 8, 12]))
    assert torch.equal(fast.bits, fast.steps.double() * m.compressor.bits(6))
    assert torch.equal(fast.rounds, fast.steps) and torch.equal(fast.bytes, ref.bytes)


def test_float32_runs_in_float32_and_matches_its_reference():
    prob = problems.make("quadratic", dim=8, rotate=True)
    m = algorithms.make("dcsgd", compressor="rand-k", ratio=0.5)
    sched = Schedule("constant", 0.05, 50)
    oracle = Oracle(prob, Noise("gaussian", 0.1), workers=4, dtype=torch.float32)
    a = simulate(oracle, m, sched, repeats=8, log_every=10)
    b = simulate_reference(oracle, m, sched, repeats=8, log_every=10)
    assert a.x.dtype == torch.float32
    # float32 draws differ from float64 ones, so compare with the float32 reference: round-off only.
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [0.01, 0.1])
def test_top1_gd_follows_the_closed_form_divergence(eta):
    # seed 003: x^k = (1 + 11η/6)^k x⁰ for distributed GD with Top-1 on the counter-example.
    prob = problems.make("top1-counterexample")
    m = algorithms.make("dcsgd", compressor="top-k", k=1)
    steps = 30
    tr = simulate(Oracle(prob, Noise("none"), workers=3), m, Schedule("constant", eta, steps), log_every=steps)
    expected = (1 + 11 * eta / 6) ** steps * prob.x0()
    torch.testing.assert_close(tr.x[0], expected, rtol=1e-12, atol=0)


def test_top1_divergence_is_recorded_and_error_feedback_converges():
    prob = problems.make("top1-counterexample")
    sched = Schedule("constant", 0.05, 3000)
    top1 = simulate(Oracle(prob, Noise("none"), workers=3), algorithms.make("dcsgd", compressor="top-k", k=1), sched, repeats=2, log_every=100)
    # ‖x^k − x⁰‖ passes 1e6·(1 + √3) when (1 + 11η/6)^k ≈ 1.6e6, i.e. k ≈ 144 for η = 0.05.
    k_expected = math.ceil(math.log(1e6 * (1 + math.sqrt(3)) / math.sqrt(3) + 1) / math.log(1 + 11 * 0.05 / 6))
    assert top1.diverged_step.tolist() == [k_expected, k_expected]
    assert math.isinf(float(top1.loss[-1, 0]))
    assert bool(torch.isfinite(top1.x).all())  # never NaN or inf in the state
    assert top1.diverged_fraction()[-1] == 1.0 and top1.diverged_fraction()[0] == 0.0
    ef = simulate(Oracle(prob, Noise("none"), workers=3), algorithms.make("ef", compressor="top-k", k=1), sched, log_every=100)
    gd = simulate(Oracle(prob, Noise("none"), workers=3), algorithms.make("dsgd"), sched, log_every=100)
    assert float(ef.loss[-1, 0]) < 1e-8 and float(gd.loss[-1, 0]) < 1e-8
    assert int(ef.diverged_step[0]) == -1


def test_partial_divergence_keeps_other_repetitions():
    # Cauchy noise with a large step: some repetitions of DSGD on cosh blow up, others do not.
    prob = problems.make("l0l1-cosh", dim=2)
    tr = simulate(Oracle(prob, Noise("student-t", 1.0, 1.0), workers=1), algorithms.make("dsgd"), Schedule("constant", 0.1, 100), repeats=64, seed=1, log_every=25)
    frac = float(tr.diverged_fraction()[-1])
    assert 0.0 < frac < 1.0
    live = tr.loss[-1][torch.isfinite(tr.loss[-1])]
    assert live.numel() == round(64 * (1 - frac))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workers": 0}, "workers must be an integer in \\[1, 1000000\\], got 0"),
        ({"batch": 0}, "batch must be an integer ≥ 1, got 0"),
        ({"repeats": 2.5}, "repeats must be an integer ≥ 1, got 2.5"),
        ({"seed": 2**64}, "seed must be an integer in \\[0, 18446744073709551615\\]"),
    ],
)
def test_bad_run_arguments(kwargs, match):
    args = dict(workers=2, batch=1, repeats=1) | kwargs
    prob = problems.make("quadratic", dim=2)
    with pytest.raises(ValueError, match=match):
        oracle = Oracle(prob, Noise("none"), workers=args.pop("workers"), batch=args.pop("batch"))
        simulate(oracle, algorithms.make("dsgd"), Schedule("constant", 0.1, 1), **args)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: algorithms.make("lion"), "unknown algorithm 'lion'; valid algorithms: dsgd"),
        (lambda: algorithms.make("adam", beta1=1.0), r"beta1 must be a finite number in \[0, 1\), got 1.0"),
        (lambda: algorithms.make("sam", rho=0.0), "rho must be"),
        (lambda: algorithms.make("adam", rho=0.1), "algorithm 'adam' does not take rho"),
        (lambda: algorithms.make("dcsgd"), "needs a compressor"),
        (lambda: algorithms.make("dsgd", compressor="top-k", k=1), "implies compressor 'identity'"),
        (lambda: algorithms.make("ef", compressor="top-k", k=1, normalize=True), "normalize"),
        (lambda: Schedule("exponential", 0.1, 10), "schedule must be one of"),
        (lambda: Schedule("constant", -0.1, 10), "lr must be a finite number > 0, got -0.1"),
        (lambda: Schedule("constant", 0.1, -5), "steps must be an integer ≥ 0, got -5"),
        (lambda: algorithms.make("dsgd", compressor=compressors.make("sign")), "implies compressor 'identity'"),
        (lambda: algorithms.make("dcsgd", compressor=5), "compressor must be a compressor name or a Compressor, got 5"),
        (lambda: algorithms.make("dcsgd", compressor="top-k", k=1, worker={"momentum": 1.5}), "momentum must be a finite number in \\[0, 1\\)"),
        (lambda: algorithms.make("dcsgd", compressor="top-k", k=1, server={"mom": 0.5}), "server does not take mom"),
        (lambda: Schedule("step", 0.1, 10, {"power": 1.0}), "does not take power"),
    ],
)
def test_bad_method_and_schedule(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_schedules_values():
    assert Schedule("cosine", 1.0, 10)(0) == 1.0 and Schedule("cosine", 1.0, 10)(10) == pytest.approx(0.0)
    assert Schedule("step", 1.0, 9, {"gamma": 0.5, "every": 3})(7) == 0.25
    assert Schedule("poly", 1.0, 10, {"power": 1.0})(3) == 0.25


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("cosine", {"final_ratio": 5.0}, "final_ratio must be a finite number in \\[0, 1\\], got 5.0"),
        ("step", {"gamma": 3.0}, "gamma must be a finite number in \\(0, 1\\], got 3.0"),
        ("poly", {"power": 1e300}, "gives η = 0.0 at step 9 \\(underflow\\)"),
        ("step", {"every": 0.5}, "every must be an integer ≥ 1, got 0.5"),
    ],
)
def test_schedule_parameter_ranges(name, params, match):
    with pytest.raises(ValueError, match=match):
        Schedule(name, 0.1, 10, params)


def test_infinite_noise_scale_is_rejected():
    with pytest.raises(ValueError, match="finite number"):
        Noise("gaussian", math.inf)


@pytest.mark.parametrize("chunk_elements", [1 << 18, 16])  # one chunk, and one worker per chunk
def test_diverging_runs_stay_frozen_and_chunks_match_the_reference(monkeypatch, chunk_elements):
    # η = 1.5 on eigenvalues up to 2: |1 − 1.5 h| > 1 for h > 4/3, so every run diverges, at a step that
    # depends on its noise; 400 steps would overflow to inf/NaN if a frozen run kept moving.
    monkeypatch.setattr(loop_mod, "CHUNK_ELEMENTS", chunk_elements)
    prob = problems.make("quadratic", dim=3, heterogeneity=0.5)
    m = algorithms.make("ef", compressor="top-k", k=1, worker={"momentum": 0.5})
    oracle = Oracle(prob, Noise("gaussian", 0.3), workers=3)
    kw = dict(repeats=4, seed=2, log_every=100)
    fast = simulate(oracle, m, Schedule("constant", 1.5, 400), **kw)
    ref = simulate_reference(oracle, m, Schedule("constant", 1.5, 400), **kw)
    assert bool((fast.diverged_step > 0).all())
    assert torch.equal(fast.diverged_step, ref.diverged_step)
    torch.testing.assert_close(fast.x, ref.x)
    torch.testing.assert_close(fast.x, prob.x0().expand(4, 3))  # frozen at the start


def test_chunked_step_equals_the_reference_loop(monkeypatch):
    monkeypatch.setattr(loop_mod, "CHUNK_ELEMENTS", 2 * 4 * 6)  # two workers per chunk, five workers
    prob = problems.make("quadratic", dim=6, rotate=True, heterogeneity=1.0)
    for name, params in [("dcsgd", {"compressor": "rand-k", "k": 2, "shared": True}), ("dsignsgd-majority", {}),
                         ("ef", {"compressor": "top-k", "k": 2})]:
        m = algorithms.make(name, **params)
        oracle = Oracle(prob, Noise("student-t", 0.5, 3.0), workers=5, batch=2)
        kw = dict(repeats=4, seed=3, log_every=5)
        fast = simulate(oracle, m, Schedule("constant", 0.1, 10), **kw)
        ref = simulate_reference(oracle, m, Schedule("constant", 0.1, 10), **kw)
        torch.testing.assert_close(fast.x, ref.x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast.compression_error, ref.compression_error, rtol=1e-9, atol=1e-12, equal_nan=True)
