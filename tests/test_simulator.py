"""The vectorised simulator against the reference loop, closed-form trajectories and divergence handling."""

import math

import pytest
import torch

from compsde import methods, problems
from compsde.noise import Noise
from compsde.schedules import Schedule
from compsde.simulator import simulate, simulate_reference

# (method, compressor params) — every method and every compressor family, EF around biased and unbiased.
CASES = [
    ("dsgd", {}),
    ("dcsgd", {"compressor": "rand-k", "k": 3}),
    ("dcsgd", {"compressor": "rand-k", "k": 3, "shared": True}),
    ("dcsgd", {"compressor": "rand-k-unscaled", "ratio": 0.5}),
    ("dcsgd", {"compressor": "top-k", "k": 2}),
    ("dcsgd", {"compressor": "natural"}),
    ("dcsgd", {"compressor": "qsgd", "levels": 2}),
    ("dcsgd", {"compressor": "natural-dithering", "levels": 3}),
    ("dcsgd", {"compressor": "scaled-sign"}),
    ("dcsgd", {"compressor": "top-k+natural", "k": 3}),
    ("dsignsgd", {}),
    ("dsignsgd-majority", {}),
    ("ef", {"compressor": "top-k", "k": 1}),
    ("ef", {"compressor": "scaled-sign"}),
    ("dcsgd", {"compressor": "rand-k", "k": 2, "normalize": True}),
]


@pytest.mark.parametrize("method, params", CASES, ids=[f"{m}-{p.get('compressor', '')}-{i}" for i, (m, p) in enumerate(CASES)])
@pytest.mark.parametrize("noise", [Noise("gaussian", 0.5), Noise("student-t", [0.3, 0.6, 1.0], 2.0)], ids=["gauss", "t2"])
def test_vectorised_equals_reference_loop(method, params, noise):
    prob = problems.make("quadratic", dim=6, rotate=True, heterogeneity=1.0)
    m = methods.make(method, **params)
    sched = Schedule("cosine", 0.1, 12)
    kw = dict(workers=3, batch=2, repeats=4, seed=3, dtype=torch.float64, log_every=4)
    fast = simulate(prob, noise, m, sched, **kw)
    ref = simulate_reference(prob, noise, m, sched, **kw)
    # Same draws, same arithmetic up to summation order: float64 round-off only.
    torch.testing.assert_close(fast.x, ref.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.compression_error, ref.compression_error, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert torch.equal(fast.steps, torch.tensor([0, 4, 8, 12]))
    assert torch.equal(fast.bits, fast.steps.double() * m.compressor.bits(6))


def test_float32_runs_in_float32_and_matches_its_reference():
    prob = problems.make("quadratic", dim=8, rotate=True)
    m = methods.make("dcsgd", compressor="rand-k", ratio=0.5)
    sched = Schedule("constant", 0.05, 50)
    kw = dict(workers=4, repeats=8, dtype=torch.float32, log_every=10)
    a = simulate(prob, Noise("gaussian", 0.1), m, sched, **kw)
    b = simulate_reference(prob, Noise("gaussian", 0.1), m, sched, **kw)
    assert a.x.dtype == torch.float32
    # float32 draws differ from float64 ones, so compare with the float32 reference: round-off only.
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eta", [0.01, 0.1])
def test_top1_gd_follows_the_closed_form_divergence(eta):
    # seed 003: x^k = (1 + 11η/6)^k x⁰ for distributed GD with Top-1 on the counter-example.
    prob = problems.make("top1-counterexample")
    m = methods.make("dcsgd", compressor="top-k", k=1)
    steps = 30
    tr = simulate(prob, Noise("none"), m, Schedule("constant", eta, steps), workers=3, log_every=steps)
    expected = (1 + 11 * eta / 6) ** steps * prob.x0()
    torch.testing.assert_close(tr.x[0], expected, rtol=1e-12, atol=0)


def test_top1_divergence_is_recorded_and_error_feedback_converges():
    prob = problems.make("top1-counterexample")
    sched = Schedule("constant", 0.05, 3000)
    top1 = simulate(prob, Noise("none"), methods.make("dcsgd", compressor="top-k", k=1), sched, workers=3, repeats=2, log_every=100)
    # ‖x^k − x⁰‖ passes 1e6·(1 + √3) when (1 + 11η/6)^k ≈ 1.6e6, i.e. k ≈ 144 for η = 0.05.
    k_expected = math.ceil(math.log(1e6 * (1 + math.sqrt(3)) / math.sqrt(3) + 1) / math.log(1 + 11 * 0.05 / 6))
    assert top1.diverged_step.tolist() == [k_expected, k_expected]
    assert math.isinf(float(top1.loss[-1, 0]))
    assert bool(torch.isfinite(top1.x).all())  # never NaN or inf in the state
    assert top1.diverged_fraction()[-1] == 1.0 and top1.diverged_fraction()[0] == 0.0
    ef = simulate(prob, Noise("none"), methods.make("ef", compressor="top-k", k=1), sched, workers=3, log_every=100)
    gd = simulate(prob, Noise("none"), methods.make("dsgd"), sched, workers=3, log_every=100)
    assert float(ef.loss[-1, 0]) < 1e-8 and float(gd.loss[-1, 0]) < 1e-8
    assert int(ef.diverged_step[0]) == -1


def test_partial_divergence_keeps_other_repetitions():
    # Cauchy noise with a large step: some repetitions of DSGD on cosh blow up, others do not.
    prob = problems.make("l0l1-cosh", dim=2)
    tr = simulate(prob, Noise("student-t", 1.0, 1.0), methods.make("dsgd"), Schedule("constant", 0.1, 100),
                  workers=1, repeats=64, seed=1, log_every=25)
    frac = float(tr.diverged_fraction()[-1])
    assert 0.0 < frac < 1.0
    live = tr.loss[-1][torch.isfinite(tr.loss[-1])]
    assert live.numel() == round(64 * (1 - frac))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workers": 0}, "workers must be an integer ≥ 1, got 0"),
        ({"batch": 0}, "batch must be an integer ≥ 1, got 0"),
        ({"repeats": 2.5}, "repeats must be an integer ≥ 1, got 2.5"),
    ],
)
def test_bad_run_arguments(kwargs, match):
    args = dict(workers=2, batch=1, repeats=1) | kwargs
    with pytest.raises(ValueError, match=match):
        simulate(problems.make("quadratic", dim=2), Noise("none"), methods.make("dsgd"), Schedule("constant", 0.1, 1), **args)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: methods.make("adam"), "unknown method 'adam'; valid methods: dsgd"),
        (lambda: methods.make("dcsgd"), "needs a compressor"),
        (lambda: methods.make("dsgd", compressor="top-k", k=1), "implies compressor 'identity'"),
        (lambda: methods.make("ef", compressor="top-k", k=1, normalize=True), "normalize"),
        (lambda: Schedule("linear", 0.1, 10), "schedule must be one of"),
        (lambda: Schedule("constant", -0.1, 10), "lr must be a finite number > 0, got -0.1"),
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
        ("cosine", {"final_ratio": 5.0}, "final_ratio must be a number in \\[0, 1\\], got 5.0"),
        ("step", {"gamma": 3.0}, "gamma must be a number in \\(0, 1\\], got 3.0"),
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
    import compsde.simulator as sim

    monkeypatch.setattr(sim, "CHUNK_ELEMENTS", chunk_elements)
    prob = problems.make("quadratic", dim=3, heterogeneity=0.5)
    m = methods.make("ef", compressor="top-k", k=1)
    kw = dict(workers=3, repeats=4, seed=2, log_every=100)
    fast = sim.simulate(prob, Noise("gaussian", 0.3), m, Schedule("constant", 1.5, 400), **kw)
    ref = sim.simulate_reference(prob, Noise("gaussian", 0.3), m, Schedule("constant", 1.5, 400), **kw)
    assert bool((fast.diverged_step > 0).all())
    assert torch.equal(fast.diverged_step, ref.diverged_step)
    torch.testing.assert_close(fast.x, ref.x)
    torch.testing.assert_close(fast.x, prob.x0().expand(4, 3))  # frozen at the start


def test_chunked_step_equals_the_reference_loop(monkeypatch):
    import compsde.simulator as sim

    monkeypatch.setattr(sim, "CHUNK_ELEMENTS", 2 * 4 * 6)  # two workers per chunk, five workers
    prob = problems.make("quadratic", dim=6, rotate=True, heterogeneity=1.0)
    for name, params in [("dcsgd", {"compressor": "rand-k", "k": 2, "shared": True}), ("dsignsgd-majority", {}),
                         ("ef", {"compressor": "top-k", "k": 2})]:
        m = methods.make(name, **params)
        kw = dict(workers=5, batch=2, repeats=4, seed=3, log_every=5)
        fast = sim.simulate(prob, Noise("student-t", 0.5, 3.0), m, Schedule("constant", 0.1, 10), **kw)
        ref = sim.simulate_reference(prob, Noise("student-t", 0.5, 3.0), m, Schedule("constant", 0.1, 10), **kw)
        torch.testing.assert_close(fast.x, ref.x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast.compression_error, ref.compression_error, rtol=1e-9, atol=1e-12, equal_nan=True)
