"""Noise models against their distributions (fixed seeds; tolerances from the sample size)."""

import math

import pytest
import torch
from scipy import stats

from compsde.objectives import Noise

NUS = [1, 2, 3, 8, 64]


@pytest.mark.parametrize("nu", NUS)
def test_student_t_samples_follow_the_distribution(nu):
    # KS test with n = 20000: the statistic under H0 is ~0.0096 at the 0.1% level; a wrong ν
    # (e.g. ν=3 vs 8) gives a KS distance > 0.02, so the test can fail.
    gen = torch.Generator().manual_seed(nu)
    t = Noise("student-t", 1.0, nu).standard((20000,), gen, torch.float64)
    assert stats.kstest(t.numpy(), stats.t(nu).cdf).pvalue > 1e-3


def test_gaussian_samples_and_batch_and_worker_scales():
    gen = torch.Generator().manual_seed(0)
    noise = Noise("gaussian", [1.0, 2.0, 4.0])
    z = noise.sample(3, (4000,), 5, batch=4, generator=gen)
    assert z.shape == (3, 4000, 5)
    # std of 20000 Gaussians has relative standard error 1/sqrt(2n) = 0.5%; allow 3%.
    std = z.reshape(3, -1).std(1)
    torch.testing.assert_close(std, torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), rtol=0.03, atol=0)


def test_sampling_is_deterministic_and_uses_no_global_rng():
    noise = Noise("student-t", 1.0, 3.0)
    torch.manual_seed(1)
    a = noise.sample(2, (3,), 4, 1, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    b = noise.sample(2, (3,), 4, 1, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = noise.sample(2, (3,), 4, 1, torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


def test_sign_expectations_match_science_md():
    # science.md §2: E[sign(0.7 + 1.3 Z)] = erf(0.7/(1.3 √2)) = 0.4097 (Gaussian).
    g = Noise("gaussian")
    assert float(2 * g.cdf(0.7 / 1.3) - 1) == pytest.approx(0.4097, abs=1e-4)
    expected = [0.3145, 0.3558, 0.3724, 0.3951, 0.4079]
    for nu, e in zip(NUS, expected):
        assert float(2 * Noise("student-t", 1.0, nu).cdf(0.5385) - 1) == pytest.approx(e, abs=1e-4)


def test_density_at_zero_matches_science_md():
    expected = [0.6366, 0.7071, 0.7351, 0.7734, 0.7948]  # 2 f_ν(0)
    for nu, e in zip(NUS, expected):
        assert 2 * Noise("student-t", 1.0, nu).density_at_zero() == pytest.approx(e, abs=1e-4)
    assert 2 * Noise("gaussian").density_at_zero() == pytest.approx(math.sqrt(2 / math.pi))
    assert Noise("student-t", 1.0, 2).variance() == math.inf
    assert Noise("student-t", 1.0, 4).variance() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "laplace"}, "noise name must be one of"),
        ({"name": "gaussian", "scale": -1.0}, "noise scale"),
        ({"name": "student-t", "nu": 0}, "nu"),
    ],
)
def test_bad_noise_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Noise(**kwargs)


def test_per_worker_scale_must_match_workers():
    with pytest.raises(ValueError, match="workers = 4"):
        Noise("gaussian", [1.0, 2.0]).sample(4, (1,), 2, 1, torch.Generator())


def test_nu_belongs_to_student_t_only():
    assert Noise("student-t").nu == 3.0 and Noise("student-t", nu=2).nu == 2.0
    assert Noise("gaussian").nu is None and Noise("none").nu is None
    for name in ("gaussian", "none"):
        with pytest.raises(ValueError, match=f"noise nu = 3.0 does not apply to noise '{name}'"):
            Noise(name, nu=3.0)
    with pytest.raises(ValueError, match="has no degrees of freedom"):
        _ = Noise("gaussian").dof


def test_gaussian_sign_mean_is_erf_with_sign_at_zero_variance():
    """E sign(G), G ~ N(m, v): erf(m/√(2v)), the point mass's sign where v = 0 (sign(0) = +1); Noise's
    standardised form (v = 1) is bit for bit erf(z/√2), as it was before it went through the helper."""
    from compsde.objectives.noise import gaussian_sign_mean

    m = torch.tensor([-2.0, -0.0, 0.0, 0.5, 3.0, -1.0, 0.0], dtype=torch.float64)
    v = torch.tensor([1.0, 1.0, 1.0, 4.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    want = [math.erf(-2 / math.sqrt(2)), 0.0, 0.0, math.erf(0.5 / math.sqrt(8)), 1.0, -1.0, 1.0]
    assert gaussian_sign_mean(m, v).tolist() == pytest.approx(want, abs=1e-15)  # float64 rounding of erf
    # Monte Carlo check of the sign probability at v > 0: 4e5 draws, standard error ≤ 1/√(4e5) ≈ 1.6e-3
    g = torch.Generator().manual_seed(0)
    draws = 0.5 + 2.0 * torch.randn(400_000, generator=g, dtype=torch.float64)
    emp = torch.where(draws >= 0, 1.0, -1.0).mean()
    assert float(emp) == pytest.approx(float(gaussian_sign_mean(torch.tensor(0.5), torch.tensor(4.0))), abs=5 * 1.6e-3)
    for dtype in (torch.float32, torch.float64):
        z = 3 * torch.randn(10_000, generator=g, dtype=dtype)
        assert torch.equal(Noise("gaussian").sign_mean(z), torch.erf(z / math.sqrt(2.0)))
