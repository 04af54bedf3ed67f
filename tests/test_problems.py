"""Problems: exact gradients (against autograd), optima, heterogeneity, loaders, bad input."""

import math

import pytest
import torch

from compsde.objectives import problems
from compsde.objectives.data import load_libsvm

SPECS = [
    ("quadratic", {"dim": 6}),
    ("quadratic", {"dim": 6, "rotate": True, "heterogeneity": 2.0}),
    ("linear-regression", {"dim": 5, "samples": 40}),
    ("logistic-regression", {"dim": 5, "samples": 60, "heterogeneity": 1.0}),
    ("top1-counterexample", {"dim": 3}),
    ("l0l1-cosh", {"dim": 4, "sharpness": 1.5}),
    ("double-well", {"dim": 4, "h_sharp": 30.0, "h_flat": 0.5, "barrier": 2.0, "gap": 0.3, "heterogeneity": 1.0}),
]


@pytest.mark.parametrize("name, params", SPECS)
def test_gradients_match_autograd_and_optimum_is_stationary(name, params):
    p = problems.make(name, **params)
    x = torch.randn(7, p.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    (auto,) = torch.autograd.grad(p.loss(x).sum(), x)
    torch.testing.assert_close(p.grad(x.detach()), auto, rtol=1e-10, atol=1e-10)
    n = p.fixed_workers or 5
    wg = p.worker_grads(x.detach(), n)
    assert wg.shape == (n, 7, p.dim)
    torch.testing.assert_close(wg.mean(0), auto, rtol=1e-10, atol=1e-10)  # f = (1/N) Σ f_i
    assert p.x_opt is not None
    assert float(p.grad(p.x_opt).norm()) < 1e-9
    assert p.loss(p.x_opt) == pytest.approx(p.f_opt, abs=1e-12)
    assert float(p.suboptimality(x.detach()).min()) >= -1e-12


def test_heterogeneous_workers_disagree_but_share_the_optimum():
    p = problems.make("quadratic", dim=4, heterogeneity=3.0)
    g = p.worker_grads(torch.zeros(1, 4, dtype=torch.float64), 6)
    assert float(g.norm(dim=-1).min()) > 0.1  # workers are not at their own optimum at x*
    torch.testing.assert_close(g.mean(0), torch.zeros(1, 4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_quadratic_spectrum_defaults():
    p = problems.make("quadratic", dim=5, rotate=True)
    eig = torch.linalg.eigvalsh(p.hessian)
    torch.testing.assert_close(eig, torch.linspace(0.5, 2.0, 5, dtype=torch.float64))


def test_top1_counterexample_start_and_fixed_workers():
    p = problems.make("top1-counterexample", x0_scale=2.0)
    assert torch.equal(p.x0(), torch.full((3,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="workers = 3"):
        p.worker_grads(p.x0(), 4)


def test_l0l1_cosh_is_l0l1_smooth_but_not_l_smooth():
    s = 1.5
    p = problems.make("l0l1-cosh", dim=1, sharpness=s)
    x = torch.linspace(-20, 20, 401, dtype=torch.float64).unsqueeze(-1)
    hess = torch.cosh(s * x).squeeze(-1)
    assert bool((hess <= 1.0 + s * p.grad(x).abs().squeeze(-1) + 1e-9).all())  # L0 = 1, L1 = s
    assert float(hess.max()) > 1e10  # curvature unbounded: no global L


@pytest.mark.parametrize("gap", [0.0, 0.4])
def test_double_well_minima_curvatures_and_barrier(gap):
    h_s, h_f, b = 25.0, 0.5, 1.5
    p = problems.make("double-well", dim=3, h_sharp=h_s, h_flat=h_f, barrier=b, gap=gap)
    sharp, flat = -2 * math.sqrt((b - gap) / h_s), 2 * math.sqrt(b / h_f)
    torch.testing.assert_close(p.x0(), torch.full((3,), sharp, dtype=torch.float64))  # starts in the sharp minima
    torch.testing.assert_close(p.x_opt, torch.full((3,), flat, dtype=torch.float64))
    for u, value, curvature in ((sharp, gap, h_s), (flat, 0.0, h_f), (0.0, b, None)):
        x = torch.full((3,), u, dtype=torch.float64)
        assert float(p.grad(x).abs().max()) < 1e-12  # minima and the barrier top are stationary
        assert float(p.loss(x)) == pytest.approx(3 * value, abs=1e-12)  # equal depths when gap = 0
        if curvature is not None:
            hess = torch.autograd.functional.hessian(p.loss, x)
            torch.testing.assert_close(hess, curvature * torch.eye(3, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    # Each coordinate's profile: decreasing from the sharp minimum to the barrier top, then down to the flat
    # one (no other stationary point), curvature at most h_sharp / h_flat on either side, f ≥ f* = 0.
    u = torch.linspace(-10, 10, 40001, dtype=torch.float64).unsqueeze(-1)
    g = p.grad(u.expand(-1, 3))[:, 0]
    inside = (u[:, 0] > sharp + 1e-3) & (u[:, 0] < -1e-3)
    assert bool((g[inside] > 0).all()) and bool((g[(u[:, 0] > 1e-3) & (u[:, 0] < flat - 1e-3)] < 0).all())
    assert bool((g[u[:, 0] < sharp - 1e-3] < 0).all()) and bool((g[u[:, 0] > flat + 1e-3] > 0).all())
    curv = torch.diff(g) / torch.diff(u[:, 0])
    assert float(curv[u[1:, 0] < 0].max()) <= h_s * (1 + 1e-3) and float(curv[u[1:, 0] > 0].max()) <= h_f * (1 + 1e-3)
    assert float(p.suboptimality(u.expand(-1, 3)).min()) >= -1e-12
    q = p.to(torch.float32)  # a cast copy keeps the minima in its own dtype
    assert q.grad(q.x0()).dtype == torch.float32 and float(q.grad(q.x0()).abs().max()) < 1e-5


def test_libsvm_loader_roundtrip_and_errors(tmp_path):
    f = tmp_path / "tiny.libsvm"
    f.write_text("# comment\n+1 1:0.5 3:2\n-1 2:-1.5\n\n1 1:1 2:1 3:1 # trailing\n")
    a, b = load_libsvm(f)
    assert a.shape == (3, 3)
    torch.testing.assert_close(a[0], torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64))
    assert b.tolist() == [1.0, -1.0, 1.0]
    p = problems.make("logistic-regression", dim=3, dataset=str(f), l2=0.1)
    assert float(p.grad(p.x_opt).norm()) < 1e-9
    bad = tmp_path / "bad.libsvm"
    bad.write_text("1 0:3\n")
    with pytest.raises(ValueError, match=r"bad.libsvm:1: expected 'index:value' with index ≥ 1, got '0:3'"):
        load_libsvm(bad)
    with pytest.raises(ValueError, match="exceeds n_features = 2"):
        load_libsvm(f, n_features=2)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("cubic", {}, "unknown problem 'cubic'; valid names: quadratic"),
        ("quadratic", {"dim": 0}, "dim must be an integer ≥ 1, got 0"),
        ("quadratic", {"eig_min": 3.0}, "eig_min"),
        ("quadratic", {"size": 3}, "does not take size; valid parameters: dim"),
        ("top1-counterexample", {"dim": 4}, "dim = 3 only"),
        ("linear-regression", {"dataset": "/nonexistent"}, "LIBSVM"),
        ("l0l1-cosh", {"sharpness": 0}, "sharpness"),
        ("double-well", {"h_sharp": 0.5, "h_flat": 1.0}, "h_sharp must be ≥ h_flat = 1.0"),
        ("double-well", {"h_flat": 0}, "h_flat"),
        ("double-well", {"barrier": -1.0}, "barrier"),
        ("double-well", {"gap": 1.0}, r"gap must be a finite number in \[0, 1\)"),
    ],
)
def test_bad_problem_input(name, params, match):
    with pytest.raises(ValueError, match=match):
        problems.make(name, **params)


def test_to_dtype_keeps_values():
    p = problems.make("quadratic", dim=3, rotate=True).to(torch.float32)
    assert p.hessian.dtype == torch.float32
    assert p.loss(torch.ones(3)).dtype == torch.float32
    assert math.isfinite(float(p.loss(torch.ones(3))))


def test_data_file_sets_the_dimension_and_samples_is_synthetic_only(tmp_path):
    f = tmp_path / "wide.libsvm"
    f.write_text("".join(f"{1 if i % 2 else -1} {i % 40 + 1}:1.0 {(7 * i) % 40 + 1}:0.5\n" for i in range(80)))
    p = problems.make("logistic-regression", dataset=str(f))
    assert p.dim == 40 and p.a.shape == (80, 40)
    assert problems.make("linear-regression").a.shape == (200, 10)  # synthetic defaults
    with pytest.raises(ValueError, match="samples applies to synthetic data only"):
        problems.make("linear-regression", dataset=str(f), samples=10)
