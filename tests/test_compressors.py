"""Conformance and statistical tests for every compressor (compsde.compressors).

Statistical tests fix their seeds, so they are deterministic; their tolerances are a few standard
errors *estimated from the same sample*, so that a correct implementation passes with a probability
stated next to each test (if the seed were changed), and a wrong constant fails by many SEs.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from compsde.compressors import make, names
from compsde.compressors import sparsifiers as sp
from compsde.compressors.base import Compressor, index_bits
from compsde.compressors.compose import Compose
from compsde.compressors.measure import compare, compressor_table, format_table, reference_vectors

D = 10  # the conformance dimension; every spec must accept it


#: (name, params): every registered name at least once, plus compositions. Adding a compressor
#: means adding a line here (``test_specs_cover_registry`` enforces it).
SPECS: list[tuple[str, dict[str, object]]] = [
    ("identity", {}),
    ("rand-k", {"k": 3}),
    ("rand-k", {"ratio": 0.5}),  # k = 5 > d/4: the argsort regime
    ("rand-k", {"k": 3, "shared": True}),
    ("rand-k-unscaled", {"k": 2}),
    ("top-k", {"k": 3}),
    ("top-k", {"ratio": 0.3}),
    ("sign", {}),
    ("scaled-sign", {}),
    ("natural", {}),
    ("rounding", {}),
    ("qsgd", {"levels": 1}),
    ("qsgd", {"levels": 4}),
    ("natural-dithering", {"levels": 1}),
    ("natural-dithering", {"levels": 3}),
    ("top-k+natural", {"k": 4}),
    ("rand-k+qsgd", {"k": 4, "levels": 2}),
    ("rand-k-unscaled+natural-dithering", {"k": 5, "levels": 2}),
    ("identity+natural", {}),
    ("top-k+rand-k", {"ratio": 0.4}),  # both take ratio: the outer keeps 0.4 of the inner's k = 4
]


def _id(spec: tuple[str, dict[str, object]]) -> str:
    name, params = spec
    return name + "(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")"


def build(spec: tuple[str, dict[str, object]]) -> Compressor:
    return make(spec[0], **spec[1])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_x(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


specs = pytest.mark.parametrize("spec", SPECS, ids=[_id(s) for s in SPECS])
randomized_specs = pytest.mark.parametrize(
    "spec", [s for s in SPECS if build(s).randomized], ids=[_id(s) for s in SPECS if build(s).randomized]
)
unbiased_specs = pytest.mark.parametrize(
    "spec", [s for s in SPECS if build(s).unbiased], ids=[_id(s) for s in SPECS if build(s).unbiased]
)


def test_specs_cover_registry() -> None:
    covered = {part for name, _ in SPECS for part in name.split("+")}
    assert set(names()) <= covered, f"add a SPECS entry for {set(names()) - covered}"
    assert any("+" in name for name, _ in SPECS)


# ---- conformance: shapes, determinism, randomness hygiene, draw/apply ---------------------------


@specs
@pytest.mark.parametrize("shape", [(D,), (3, D), (4, 3, D)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype(spec, shape, dtype) -> None:
    c = build(spec)
    x = rand_x(shape, dtype=dtype)
    y = c(x, gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    # Only the identity returns its input itself (no copy of a tensor that may be 10⁷ × workers long).
    assert (y.data_ptr() == x.data_ptr()) == (c.name == "identity")


@specs
def test_same_seed_same_output_and_different_seed_differs(spec) -> None:
    c = build(spec)
    x = rand_x((8, D))
    assert torch.equal(c(x, gen(5)), c(x, gen(5)))
    if c.randomized:
        assert not torch.equal(c(x, gen(5)), c(x, gen(6)))
    else:
        assert torch.equal(c(x, gen(5)), c(x, None))


@specs
def test_no_global_rng(spec) -> None:
    c = build(spec)
    x = rand_x((4, D))
    torch.manual_seed(1)
    before = torch.get_rng_state()
    y1 = c(x, gen(3))
    assert torch.equal(before, torch.get_rng_state()), "the global RNG was used"
    torch.manual_seed(2)
    assert torch.equal(y1, c(x, gen(3))), "the output depends on the global seed"


@randomized_specs
def test_randomized_requires_generator(spec) -> None:
    c = build(spec)
    with pytest.raises(ValueError, match="generator"):
        c(rand_x((D,)))


@specs
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draw_apply_equals_call(spec, dtype) -> None:
    c = build(spec)
    x = rand_x((2, 3, D), dtype=dtype)
    rnd = c.draw((2, 3), D, gen(7), dtype)
    assert torch.equal(c.apply(x, rnd), c(x, gen(7)))
    if rnd is not None:  # apply is deterministic given the draw
        assert torch.equal(c.apply(x, rnd), c.apply(x, rnd.clone()))


@specs
def test_draw_with_leading_one_broadcasts_over_workers(spec) -> None:
    c = build(spec)
    n, r = 4, 3
    x = rand_x((n, r, D))
    rnd = c.draw((1, r), D, gen(8), x.dtype)
    y = c.apply(x, rnd)
    for i in range(n):  # reference loop: each worker with the one shared draw
        ri = None if rnd is None else rnd[0]
        assert torch.equal(y[i], c.apply(x[i], ri))
    # identical inputs on every worker + one shared draw = identical outputs
    same = x[:1].expand(n, r, D)
    ys = c.apply(same, rnd)
    assert all(torch.equal(ys[0], ys[i]) for i in range(n))


def test_draw_that_does_not_broadcast_is_rejected() -> None:
    c = make("rand-k", k=2)
    rnd = c.draw((5,), D, gen(0))
    with pytest.raises(ValueError, match="broadcast"):
        c.apply(rand_x((3, D)), rnd)
    q = make("natural")
    with pytest.raises(ValueError, match="broadcast"):
        q.apply(rand_x((3, D)), q.draw((5,), D, gen(0), torch.float32))


def test_shared_rand_k_uses_one_draw_for_all_workers() -> None:
    c = make("rand-k", k=3, shared=True)
    assert c.summable and c.shared_randomness
    assert not make("rand-k", k=3).summable
    assert make("identity").summable
    x = rand_x((5, 2, D)) + 10.0  # no zeros, so the support is the kept set
    y = c(x, gen(0))
    assert c.draw((5, 2), D, gen(0)).shape == (1, 2, 3)
    support = y != 0
    assert all(torch.equal(support[0], support[i]) for i in range(5))
    assert not torch.equal(support[0, 0], support[0, 1])  # repetitions still independent (this seed)


# ---- unbiasedness and variance bounds by Monte Carlo --------------------------------------------

N_MC = 20_000


def _mc(c: Compressor, x: torch.Tensor, n: int = N_MC, seed: int = 11) -> torch.Tensor:
    """n independent draws of C(x) (float64), shape (n, d).

    The samples are repetitions of one worker, batch shape (1, n): a compressor with shared
    randomness (rand-k, shared=True) shares its draw across the leading (worker) axis only.
    """
    return c(x.to(torch.float64).expand(1, n, x.shape[-1]), gen(seed))[0]


def _mc_vectors(d: int, heavy: bool = True) -> dict[str, torch.Tensor]:
    v = reference_vectors(d, seed=3)
    keys = ["gaussian", "one-hot", "constant", "pow2*4/3", "spike+noise"] + (["cauchy"] if heavy else [])
    return {k: v[k] for k in keys}


@unbiased_specs
def test_unbiased_by_monte_carlo(spec) -> None:
    # Each coordinate's sample mean is within 5 standard errors of x_j; the SE is estimated from the
    # same 20 000 draws (CLT). 5 SE gives a two-sided false-alarm rate of 6e-7 per coordinate, and
    # this test makes ~10 specs × 5 vectors × 10 coordinates = 500 comparisons: ≲ 3e-4 overall.
    # Heavy-tailed vectors are left out here: with a dynamic range of 10³ (Cauchy entries) a small
    # coordinate's output is a rare large value (e.g. a QSGD level of the big norm), seen a handful
    # of times in 20 000 draws, so the sample SE is itself unreliable and the CLT does not apply.
    # They stay in the ω/δ tests and in the vector-level bias check of the measure table.
    c = build(spec)
    for vname, x in _mc_vectors(D, heavy=False).items():
        y = _mc(c, x)
        mean, se = y.mean(0), y.std(0) / math.sqrt(N_MC)
        err = (mean - x).abs()
        assert bool((err <= 5 * se + 1e-12 * x.abs().max()).all()), (vname, (err / se).max())


@pytest.mark.parametrize("spec", [s for s in SPECS if build(s).omega(D) is not None or build(s).delta(D) is not None],
                         ids=[_id(s) for s in SPECS if build(s).omega(D) is not None or build(s).delta(D) is not None])  # fmt: skip
def test_omega_and_delta_bounds_by_monte_carlo(spec) -> None:
    # E‖C(x) − x‖²/‖x‖² (sample mean over 20 000 draws) may exceed the declared ω, resp. 1 − 1/δ,
    # by at most 5 of its standard errors (one-sided rate 3e-7 per comparison). Several test
    # vectors attain the bound exactly (rand-k, top-k, scaled sign, natural on ±(4/3)·2^j).
    c = build(spec)
    w = c.omega(D) if c.unbiased else None
    dl = c.delta(D)
    for vname, x in _mc_vectors(D).items():
        y = _mc(c, x, n=N_MC if c.randomized else 1)
        e = (y - x).square().sum(-1) / x.square().sum()
        m, se = float(e.mean()), float(e.std() / math.sqrt(e.numel())) if e.numel() > 1 else 0.0
        if w is not None:
            assert m <= w + 5 * se + 1e-9, (vname, m, w, se)
        if dl is not None:
            assert m <= 1 - 1 / dl + 5 * se + 1e-9, (vname, m, dl, se)


@specs
@pytest.mark.parametrize("dim", [D, 48])
def test_declared_constants_hold_on_the_measure_vectors(spec, dim) -> None:
    # The measure module's check: bias, ω, δ, B1 (α, β), B2 (γ, β) over its ten test vectors,
    # each within TOL_SE = 4 standard errors (one-sided 3e-5 per comparison).
    c = build(spec)
    row = compare(c, dim, samples=1000, seed=4)
    assert row["ok"], (row["violations"], row)


def test_rounding_attains_its_constants_at_one_and_a_half_times_a_power_of_two() -> None:
    # σ = 3/2 rounds down to 2/3 of x: ‖C − x‖² = ‖x‖²/9 (δ = 9/8), ‖C‖² = (4/9)‖x‖² (α = 4/9),
    # ⟨C, x⟩ = (2/3)‖x‖² (γ = 2/3); just above 3/2 it rounds up to C/x → 4/3 (β = 4/3).
    c = make("rounding")
    x = torch.tensor([[1.5, -3.0, 0.75, 6.0]], dtype=torch.float64)
    y = c(x)
    assert torch.equal(y, x / 1.5)
    assert float((y - x).square().sum() / x.square().sum()) == pytest.approx(1 - 1 / c.delta(4))
    assert float(y.square().sum() / x.square().sum()) == pytest.approx(c.b1(4)[0])
    assert float((y * x).sum() / x.square().sum()) == pytest.approx(c.b2(4)[0])
    up = c(x * (1 + 1e-9))
    assert float(up.square().sum() / (up * x).sum()) == pytest.approx(c.b1(4)[1], rel=1e-6)
    assert not c.randomized and c.draw((1,), 4, None) is None


def test_rand_k_error_is_exact() -> None:
    d, k = 12, 4
    c = make("rand-k", k=k)
    # |x_j| = 1 for all j: ‖C(x) − x‖² = (d/k − 1)²·k + (d − k) = (d/k − 1)·d for *every* draw.
    x = torch.tensor([1.0, -1.0] * (d // 2), dtype=torch.float64)
    e = (_mc(c, x, n=500) - x).square().sum(-1)
    torch.testing.assert_close(e, torch.full_like(e, (d / k - 1) * d), rtol=1e-12, atol=0)
    # General x: E‖C(x) − x‖² = (d/k − 1)‖x‖² exactly, checked by enumerating all k-subsets (the
    # draw is uniform over them) and by Monte Carlo within 4 SE.
    x = rand_x((d,), seed=2, dtype=torch.float64)
    # ‖C(x) − x‖² = (d/k − 1)²‖x_S‖² + ‖x‖² − ‖x_S‖² for the kept set S
    exact = sum((d / k - 1) ** 2 * x[list(s)].square().sum() + x.square().sum() - x[list(s)].square().sum()
                for s in itertools.combinations(range(d), k)) / math.comb(d, k)  # fmt: skip
    torch.testing.assert_close(exact, (d / k - 1) * x.square().sum(), rtol=1e-12, atol=0)
    e = (_mc(c, x) - x).square().sum(-1)
    assert abs(float(e.mean()) - float(exact)) <= 4 * float(e.std()) / math.sqrt(N_MC)


def test_top_k_error_is_deterministic_and_exact() -> None:
    x = rand_x((5, 30), seed=4, dtype=torch.float64)
    k = 7
    y = make("top-k", k=k)(x)
    small = x.square().sort(dim=-1).values[:, : 30 - k].sum(-1)  # the d − k smallest squares
    torch.testing.assert_close((y - x).square().sum(-1), small, rtol=1e-12, atol=0)
    assert ((y != 0).sum(-1) == k).all()


def test_scaled_sign_error_is_exact() -> None:
    x = rand_x((4, 9), seed=5, dtype=torch.float64)
    y = make("scaled-sign")(x)
    expect = x.square().sum(-1) - x.abs().sum(-1).square() / 9
    torch.testing.assert_close((y - x).square().sum(-1), expect)
    torch.testing.assert_close(y.square().sum(-1), (y * x).sum(-1))  # β = 1 exactly


def test_natural_attains_one_eighth() -> None:
    # |x_j| = (4/3)·2^j: Var = (1/3)(2/3)a² = x_j²/8 per coordinate, so E‖C(x) − x‖² = ‖x‖²/8.
    x = reference_vectors(D, seed=0)["pow2*4/3"]
    e = (_mc(make("natural"), x) - x).square().sum(-1) / x.square().sum()
    assert abs(float(e.mean()) - 1 / 8) <= 4 * float(e.std()) / math.sqrt(N_MC)


def test_natural_dithering_omega_recalled_formula() -> None:
    # The recalled ω = 1/8 + min(√d·2^(1−s), d·2^(2−2s)) is checked against vectors built to make
    # the variance large: every r_j = |x_j|/‖x‖ at b/2 (b = 2^(1−s), the smallest level), where
    # the per-coordinate variance r(b − r) = b²/4 is maximal. For d = 256, s = 4: b = 1/8 and
    # x = 1 gives r_j = 1/16 = b/2 and E‖C − x‖²/‖x‖² = 256/256 = 1 exactly, against the derived
    # bound 1/8 + min(2, 1) = 1.125 and the recalled 2.125.
    c = make("natural-dithering", levels=4)
    x = torch.ones(256, dtype=torch.float64)
    e = (_mc(c, x, n=4000) - x).square().sum(-1) / x.square().sum()
    assert abs(float(e.mean()) - 1.0) <= 4 * float(e.std()) / math.sqrt(4000)
    assert c.omega(256) == pytest.approx(1 / 8 + 2.0)
    for d, s in [(10, 1), (10, 2), (64, 3), (100, 4), (1000, 4)]:
        b = 2.0 ** (1 - s)
        m = min(d - 1, int(0.99 * 4 / b**2))  # m coordinates at r = b/2, the rest of ‖r‖ = 1 in one
        r = torch.zeros(d, dtype=torch.float64)
        r[1 : m + 1] = b / 2
        r[0] = math.sqrt(1 - m * b * b / 4)
        c = make("natural-dithering", levels=s)
        e = (_mc(c, r, n=4000) - r).square().sum(-1)
        mean, se = float(e.mean()), float(e.std()) / math.sqrt(4000)
        derived = 1 / 8 + min(math.sqrt(d) * b, d * b * b / 4)
        assert mean <= derived + 5 * se <= c.omega(d) + 5 * se, (d, s, mean, derived, c.omega(d))


# ---- fast paths equal their readable references -------------------------------------------------


def _awkward(dtype: torch.dtype, n: int = 4000) -> torch.Tensor:
    """Values that stress the bit tricks: zeros of both signs, exact powers of two, subnormals,
    values just below/above powers of two, and a wide random spread."""
    fi = torch.finfo(dtype)
    g = gen(0)
    e = 8 if dtype == torch.float16 else 20  # stay finite
    spread = torch.randn(n, generator=g, dtype=torch.float64) * torch.exp2(torch.randint(-e, e, (n,), generator=g).double())
    special = torch.tensor([0.0, -0.0, 1.0, -2.0, 0.75, 4 / 3, fi.tiny, -fi.tiny, fi.tiny / 2, fi.tiny / 8, 3 * fi.tiny / 4,
                            1 - fi.eps / 2, 1 + fi.eps, 2.0 ** (e - 1)], dtype=torch.float64)  # fmt: skip
    return torch.cat([special, spread]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_natural_fast_path_equals_reference(dtype) -> None:
    from compsde.compressors.quantizers import _float_uniforms, _round_pow2, _round_pow2_reference

    x = _awkward(dtype)
    for seed in range(3):
        u = torch.rand(x.shape, generator=gen(seed), dtype=torch.float64).to(dtype)
        assert torch.equal(_round_pow2(x, u), _round_pow2_reference(x, u))
    c = make("natural")
    y = c(x, gen(1))
    u = _float_uniforms(c.draw(x.shape[:-1], x.shape[-1], gen(1), dtype), dtype)
    assert torch.equal(y, _round_pow2_reference(x, u))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [1, 2, 4, 9])
def test_natural_dithering_fast_path_equals_reference(dtype, levels) -> None:
    c = make("natural-dithering", levels=levels)
    x = torch.stack([_awkward(dtype, 400)[:400], rand_x((400,), dtype=dtype), torch.zeros(400, dtype=dtype)])
    x[1, :10] = 0.0
    rnd = c.draw((3,), 400, gen(2), dtype)
    assert torch.equal(c.apply(x, rnd), c.apply_reference(x, rnd))
    assert torch.equal(c.decode(c.encode(x, rnd), rnd), c.apply_reference(x, rnd))


def _adversarial(dtype: torch.dtype, n: int = 1500) -> torch.Tensor:
    """(3, 4, n) values of both signs, in random order: random normals over a wide range, powers of
    two and their float neighbours below and above, subnormals (random mantissas), ±0;
    ``_awkward``'s specials first in each row."""
    fi = torch.finfo(dtype)
    g = gen(1)
    e = 8 if dtype == torch.float16 else 20
    p2 = torch.exp2(torch.randint(-e, e, (n,), generator=g).double()).to(dtype)
    near = torch.cat([p2, torch.nextafter(p2, torch.zeros_like(p2)), torch.nextafter(p2, torch.full_like(p2, math.inf))])
    sub = torch.randint(0, 1 << (fi.bits // 4 + 2), (n,), generator=g).to(dtype) * (fi.tiny * fi.eps)
    v = torch.cat([_awkward(dtype, n), near, sub])
    v = v * (2 * torch.randint(0, 2, v.shape, generator=g) - 1).to(dtype)
    specials = _awkward(dtype, 0)
    rows = v[torch.randint(0, v.numel(), (12, n - specials.numel()), generator=g)]
    return torch.cat([specials.expand(12, -1), rows], dim=1).reshape(3, 4, n)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


QUANTIZERS: list[tuple[str, dict[str, object]]] = [("natural", {}), ("rounding", {}), ("qsgd", {"levels": 1}), ("qsgd", {"levels": 5}),
              ("natural-dithering", {"levels": 1}), ("natural-dithering", {"levels": 4}), ("natural-dithering", {"levels": 12})]


@pytest.mark.parametrize("spec", QUANTIZERS, ids=[_id(s) for s in QUANTIZERS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_quantizer_cpu_path_equals_torch_path(spec, dtype, monkeypatch) -> None:
    """The CPU path (numpy, from the float bits, in blocks) and the whole-tensor torch path (the one
    other devices and bfloat16 take, checked against the readable references below) give the same
    bits: payload fields, decode, apply, and decode ∘ encode = apply (NaN positions only compared as
    NaN: their sign bit is an artefact of the arithmetic). On adversarial values with an all-zero row,
    then also with a row of ±inf and NaN and a row whose norm overflows; a draw shared by the leading
    dim; blocks smaller than a row or of two rows."""
    from compsde.compressors import quantizers as q

    c = build(spec)
    finite = _adversarial(dtype)
    finite[2, 0] = 0.0
    special = finite.clone()
    special[1, 2, 3:9] = torch.tensor([math.inf, -math.inf, math.nan, -math.nan, 0.0, -0.0], dtype=dtype)
    special[0, 3, 7] = -torch.finfo(dtype).max  # its row's norm overflows to inf
    for x, block, shared in itertools.product((finite, special), (1000, 3000), (False, True)):
        monkeypatch.setattr(q, "BLOCK", block)  # rows of 1500: two blocks per row, or two rows per block
        rnd = c.draw((1, 4) if shared else (3, 4), x.shape[-1], gen(int(shared)), dtype)
        fast, fast_y = c.encode(x, rnd), c.apply(x, rnd)
        fast_dec = c.decode(fast, rnd)
        with monkeypatch.context() as m:
            m.setattr(q, "_cpu_path", lambda device, dtype: False)
            slow, slow_y = c.encode(x, rnd), c.apply(x, rnd)
            slow_dec = c.decode(slow, rnd)
        assert fast.fields.keys() == slow.fields.keys()
        for k in fast.fields:
            f, s = fast.fields[k], slow.fields[k]
            assert f.dtype == s.dtype and torch.equal(_bits(f) if f.is_floating_point() else f, _bits(s) if s.is_floating_point() else s), k
        assert torch.equal(_bits(fast_y), _bits(slow_y))
        assert torch.equal(_bits(fast_dec), _bits(slow_dec))
        nan = fast_y.isnan()
        assert torch.equal(nan, fast_dec.isnan()) and torch.equal(_bits(fast_dec)[~nan], _bits(fast_y)[~nan])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (1,), (3, 17), (2, 1, 4097)])
def test_quantizer_draw_is_the_float_uniforms_as_integers(dtype, shape) -> None:
    """A quantizer's draw holds the integers U = u·2^b of the very uniforms u that
    ``uniform_(generator=g)`` gives in the input's dtype (b = 24, or 53 for float64), and leaves the
    generator where uniform_ leaves it: the same random numbers as a float draw."""
    from compsde.compressors.quantizers import draw_bits

    b = draw_bits(dtype)
    for name in ("natural", "qsgd", "natural-dithering"):
        g = gen(7)
        rnd = make(name).draw(shape[:-1], shape[-1] if shape else 5, g, dtype)
        h = gen(7)
        u = torch.empty(*shape[:-1], shape[-1] if shape else 5, dtype=dtype).uniform_(generator=h)
        assert rnd is not None and rnd.dtype == (torch.int64 if b == 53 else torch.int32)
        assert bool((rnd >= 0).all() and (rnd < 2**b).all())
        assert torch.equal(rnd.double() * 2.0**-b, u.double())
        assert torch.equal(torch.randint(0, 1 << 30, (4,), generator=g), torch.randint(0, 1 << 30, (4,), generator=h))


def _grid_draw(x: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A draw for x whose uniforms are random or, at every other position, one of a few grid values
    (0, 1/2, 1/4, 3/4, 1/8 and their neighbours): "u < p" at u = p exactly and one step either side."""
    from compsde.compressors.quantizers import draw_bits

    b = draw_bits(dtype)
    rnd = make("natural").draw(tuple(x.shape[:-1]), x.shape[-1], gen(seed), dtype)
    assert rnd is not None
    grid = torch.tensor([0.0, 0.5, 0.25, 0.75, 0.125, 0.875], dtype=torch.float64).to(dtype)
    below, above = torch.nextafter(grid, torch.zeros_like(grid)), torch.nextafter(grid, torch.ones_like(grid))
    special = (torch.cat([grid, below[1:], above]).double() * 2.0**b).to(rnd.dtype)
    pick = special[torch.randint(0, special.numel(), rnd.shape, generator=gen(seed + 1))]
    return torch.where(torch.arange(rnd.shape[-1]) % 2 == 0, pick, rnd)


def _exact_rows(dtype: torch.dtype, d: int) -> torch.Tensor:
    """Rows whose norms and ratios |x_j|/‖x‖ are exact, so that the rounding probabilities fall on
    the grid of ``_grid_draw``: constant rows (d a power of four), ±powers of two, a zero row; and
    rows with subnormal entries beside ones, with and without one large entry."""
    ones = torch.ones(d, dtype=torch.float64)
    pow2 = torch.exp2(torch.randint(-6, 6, (d,), generator=gen(3)).double())
    tiny = torch.finfo(dtype).tiny * torch.rand(d, generator=gen(4), dtype=torch.float64)  # subnormal ratios
    mixed = torch.where(torch.arange(d) % 3 == 0, tiny, ones)  # all levels 0 or 1 (the quantizers' short cut)
    spike = mixed.clone()
    spike[5] = 1e3  # one level s, the rest below b: the general path
    rows = [ones, -0.5 * ones, ones * torch.tensor([1.0, -1.0]).repeat(d // 2), pow2, 1.5 * pow2, mixed, spike,
            torch.zeros(d, dtype=torch.float64)]
    return torch.stack(rows).to(dtype)


def _float_formula(name: str, levels: int, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The quantizers' outputs for float uniforms u (of x's dtype), written plainly: what the
    implementation computed before its draws became integers."""
    from compsde.compressors.quantizers import _round_pow2_reference

    if name == "natural":
        return _round_pow2_reference(x, u)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    if name == "qsgd":
        s = float(levels)
        r = (x.abs() / safe * s).clamp(max=s)
        level = r.floor()
        return (torch.where(u < r - level, level + 1.0, level) * (norm / s)).copysign(x)
    r = (x.abs() / safe).clamp(max=1.0)
    b = 2.0 ** (1 - levels)
    small = torch.where(u < r / b, torch.full_like(r, b), torch.zeros_like(r))
    return torch.copysign(torch.where(r < b, small, _round_pow2_reference(r, u)), x) * norm


STOCHASTIC = [("natural", {}), ("qsgd", {"levels": 1}), ("qsgd", {"levels": 4}), ("natural-dithering", {"levels": 2}),
              ("natural-dithering", {"levels": 4}), ("natural-dithering", {"levels": 9})]


@pytest.mark.parametrize("spec", STOCHASTIC, ids=[_id(s) for s in STOCHASTIC])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["cpu", "torch"])
def test_quantizers_with_integer_draws_equal_the_float_uniform_formulas(spec, dtype, path, monkeypatch) -> None:
    """apply, and decode ∘ encode, with the integer draw U give bit for bit what the float formulas give
    with u = U·2^−b: on adversarial values and on rows whose probabilities sit on the grid of u, with
    draws at u = p and one step either side; on the CPU path (numpy) and the torch path (which
    requires_grad inputs, bfloat16 and other devices take)."""
    from compsde.compressors import quantizers as q

    name, params = spec
    c = build(spec)
    levels = int(params.get("levels", 0))  # type: ignore[call-overload]
    if path == "torch":
        monkeypatch.setattr(q, "_cpu_path", lambda device, dtype: False)
    for x in (_adversarial(dtype).reshape(12, -1), _exact_rows(dtype, 1024)):
        x[0, 0] = 0.0
        rnd = _grid_draw(x, dtype, seed=x.shape[-1])
        u = (rnd.double() * 2.0 ** -q.draw_bits(dtype)).to(dtype)
        assert torch.equal(u.double() * 2.0 ** q.draw_bits(dtype), rnd.double())  # the uniforms of the draw, exactly
        want = _float_formula(name, levels, x, u)
        got = c.apply(x.clone().requires_grad_(True) if path == "torch" else x, rnd).detach()
        assert torch.equal(_bits(got), _bits(want))
        assert torch.equal(_bits(c.decode(c.encode(x, rnd), rnd)), _bits(want))
        shared = rnd[:1]  # one draw for every row
        want = _float_formula(name, levels, x, u[:1].expand_as(x))
        assert torch.equal(_bits(c.apply(x, shared)), _bits(want))


def test_quantizer_refuses_a_draw_for_another_dtype() -> None:
    """A draw is integers for one input dtype: one made for float64 (53 bits) or float uniforms are
    refused with float32 inputs, rather than read at the wrong scale; Compose's int64/float64 copies
    of the right integers are taken."""
    c, x = make("natural"), rand_x((2, 30))
    wide = c.draw((2,), 30, gen(0), torch.float64)
    with pytest.raises(ValueError, match=r"natural: a draw for torch.float32 inputs holds integers in \[0, 2\^24\)"):
        c.apply(x, wide)
    with pytest.raises(ValueError, match="not all whole numbers"):
        c.apply(x, torch.rand(2, 30, generator=gen(0), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"holds torch.int32 integers .* got dtype torch.int16"):
        c.apply(x, torch.zeros(2, 30, dtype=torch.int16))
    rnd = c.draw((2,), 30, gen(0), x.dtype)
    assert rnd is not None
    y = c.apply(x, rnd)
    assert torch.equal(c.apply(x, rnd.to(torch.int64)), y) and torch.equal(c.apply(x, rnd.to(torch.float64)), y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_natural_and_rounding_equal_the_reference(dtype) -> None:
    """The codes from the bits equal ``_round_pow2_reference`` (frexp, divisions) on finite values;
    ±inf stays ±inf and NaN becomes ±inf (exponent field all ones, mantissa dropped)."""
    from compsde.compressors.quantizers import _float_uniforms, _round_pow2_reference

    x = _adversarial(dtype)
    nat, rnd_ = make("natural"), make("rounding")
    for seed in range(2):
        rnd = nat.draw((3, 4), x.shape[-1], gen(seed), dtype)
        assert rnd is not None
        assert torch.equal(_bits(nat.apply(x, rnd)), _bits(_round_pow2_reference(x, _float_uniforms(rnd, dtype))))
    half = torch.full_like(x, 0.5)
    assert torch.equal(_bits(rnd_.apply(x, None)), _bits(_round_pow2_reference(x, half)))
    special = torch.tensor([math.inf, -math.inf, math.nan, -math.nan], dtype=dtype)
    for c in (nat, rnd_):
        y = c.apply(special, c.draw((), 4, gen(0), dtype))
        assert torch.isinf(y).all() and torch.equal(torch.signbit(y), torch.signbit(special))


def test_qsgd_outputs_are_levels_of_the_norm() -> None:
    x = rand_x((5, 40), dtype=torch.float64)
    for s in (1, 3, 8):
        y = make("qsgd", levels=s)(x, gen(s))
        lv = y.abs() * s / x.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(lv, lv.round(), rtol=0, atol=1e-9)
        assert float(lv.max()) <= s + 1e-9
        assert bool((torch.sign(y) * torch.sign(x) >= 0).all())


def test_natural_dithering_levels_too_large_for_dtype() -> None:
    c = make("natural-dithering", levels=200)
    with pytest.raises(ValueError, match="levels=200"):
        c(rand_x((5,)), gen(0))
    c(rand_x((5,), dtype=torch.float64), gen(0))  # 2^-199 is a normal float64


# ---- exact constants and bits -------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 100, 1000, 1024])
def test_bits(d: int) -> None:
    k = min(5, d)
    assert make("sign").bits(d) == d
    assert make("scaled-sign").bits(d) == d + 32
    assert make("identity").bits(d) == 32 * d
    assert make("rand-k", k=k).bits(d) == 32 * k
    assert make("rand-k", k=k, shared=True).bits(d) == 32 * k
    assert make("rand-k-unscaled", k=k).bits(d) == 32 * k
    assert make("top-k", k=k).bits(d) == 32 * k + k * (math.ceil(math.log2(d)) if d > 1 else 0)
    assert make("top-k", k=k).index_bits(d) == k * index_bits(d)
    assert make("natural").bits(d) == 9 * d
    assert make("qsgd", levels=4).bits(d) == 32 + d * (1 + 3)
    assert make("qsgd", levels=1).bits(d) == 32 + d * 2
    assert make("natural-dithering", levels=3).bits(d) == 32 + d * (1 + 2)
    # compositions: inner indices + the outer's bits for k values
    assert make("top-k+natural", k=k).bits(d) == k * index_bits(d) + 9 * k
    assert make("rand-k+qsgd", k=k, levels=2).bits(d) == 32 + k * (1 + 2)
    assert make("identity+natural").bits(d) == 9 * d


def test_bits_examples() -> None:
    assert make("top-k", k=10).bits(1000) == 320 + 10 * 10
    assert make("top-k+natural", k=10).bits(1000) == 100 + 90


def test_declared_constants() -> None:
    d = 100
    assert make("identity").omega(d) == 0 and make("identity").delta(d) == 1
    rk = make("rand-k", ratio=0.1)
    assert rk.unbiased and rk.omega(d) == pytest.approx(9) and rk.support(d) == 10
    ru = make("rand-k-unscaled", k=10)
    assert not ru.unbiased and ru.delta(d) == 10 and ru.b1(d) == (0.1, 1.0) and ru.b2(d) == (0.1, 1.0)
    tk = make("top-k", k=10)
    assert tk.delta(d) == 10 and tk.b1(d) == (0.1, 1.0) and tk.b2(d) == (0.1, 1.0)
    s = make("sign")
    assert (s.omega(d), s.delta(d), s.b1(d), s.b2(d), s.unbiased) == (None, None, None, None, False)
    ss = make("scaled-sign")
    assert ss.delta(d) == d and ss.b1(d) == (1 / d, 1.0) and ss.b2(d) == (1 / d, 1.0)
    assert make("natural").omega(d) == 1 / 8
    assert make("qsgd", levels=4).omega(d) == min(d / 16, 10 / 4)
    tn = make("top-k+natural", k=10)
    assert not tn.unbiased and tn.omega(d) is None
    assert tn.delta(d) == pytest.approx(10 / (1 - 1 / 8))
    assert tn.b1(d) == (0.1, 1.125) and tn.b2(d) == (0.1, 1.125)
    rn = make("rand-k+natural", k=10)
    assert rn.unbiased and rn.omega(d) == pytest.approx(10 * 9 / 8 - 1) and rn.delta(d) is None
    assert make("top-k+sign", k=10).delta(d) is None
    # the outer's ω is taken at dimension k: qsgd at k = 10 has ω = min(10/4, √10/2)
    assert make("rand-k+qsgd", k=10, levels=2).omega(d) == pytest.approx(10 * (1 + min(10 / 4, math.sqrt(10) / 2)) - 1)
    assert tn.name == "top-k+natural" and tn.params() == {"k": 10}
    assert make("top-k+qsgd", ratio=0.1, levels=3).params() == {"ratio": 0.1, "levels": 3}


@pytest.mark.parametrize("x, expect", [((1.0, -3.0, 2.0), (0.0, -3.0, 0.0)),
                                       ((3.0, -1.0, 2.0), (3.0, 0.0, 0.0)),
                                       ((0.5, 1.0, -2.0), (0.0, 0.0, -2.0))])  # fmt: skip
def test_top1_picks_the_largest(x, expect) -> None:
    assert make("top-k", k=1)(torch.tensor(x)).tolist() == list(expect)


def test_top_k_ties_go_to_the_lowest_index() -> None:
    x = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0])
    assert make("top-k", k=2)(x).tolist() == [0, -2.0, 2.0, 0, 0, 0]
    assert make("top-k", k=4)(x).tolist() == [0, -2.0, 2.0, 0, -2.0, 2.0]


def test_sign_of_zero_is_plus_one() -> None:
    assert make("sign")(torch.tensor([0.0, -0.0, -1.5, 2.0])).tolist() == [1.0, 1.0, -1.0, 1.0]
    assert make("scaled-sign")(torch.tensor([0.0, -2.0])).tolist() == [1.0, -1.0]


def test_zero_vector() -> None:
    z = torch.zeros(2, D)
    for spec in SPECS:
        c = build(spec)
        if c.name != "sign":
            assert torch.equal(c(z, gen(0)), z), spec


# ---- composition --------------------------------------------------------------------------------


def test_composition_keeps_top_k_support_and_quantises_values() -> None:
    x = rand_x((3, 50), seed=9)
    c = make("top-k+natural", k=6)
    y = c(x, gen(1))
    keep = make("top-k", k=6)(x) != 0
    assert torch.equal(y != 0, keep)
    m, _ = torch.frexp(y[keep].abs())
    assert bool((m == 0.5).all()) and bool((torch.sign(y[keep]) == torch.sign(x[keep])).all())
    # the outer sees exactly the kept values as rows of length k
    idx = sp.top_k_indices(x, 6)
    rnd = c.draw((3,), 50, gen(2), x.dtype)
    y = c.apply(x, rnd)
    nat = make("natural").apply(x.gather(-1, idx), rnd)
    assert torch.equal(y.gather(-1, idx), nat)


def test_compose_rejects_a_non_sparsifier_inner() -> None:
    with pytest.raises(ValueError, match=r"inner=sign\(\).*top-k"):
        make("sign+natural")
    with pytest.raises(ValueError, match=r"inner=natural\(\).*identity, rand-k, rand-k-unscaled, top-k"):
        Compose(make("natural"), make("sign"))


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: make("rand-kk"), ["'rand-kk'", "rand-k", "top-k", "natural", "qsgd"]),
        (lambda: make("top-k", k=0), ["k", "0"]),
        (lambda: make("rand-k", ratio=1.5), ["ratio", "1.5"]),
        (lambda: make("top-k", k=2, ratio=0.5), ["k=2", "ratio=0.5"]),
        (lambda: make("rand-k"), ["k=None", "ratio=None"]),
        (lambda: make("top-k", k=20)(rand_x((10,))), ["k", "20", "d = 10"]),
        (lambda: make("rand-k", ratio=0.5, k=None).draw((2,), 0, gen(0)), ["k", "d = 0"]),
        (lambda: make("qsgd", levels=0), ["levels", "0"]),
        (lambda: make("natural-dithering", levels=2.5), ["levels", "2.5"]),
        (lambda: make("natural", levels=3), ["levels", "natural"]),
        (lambda: make("top-k", kk=3), ["kk", "k", "ratio"]),
        (lambda: make("top-k+natural", k=3, foo=1), ["foo"]),
        (lambda: make("rand-k", k=2, shared="yes"), ["shared", "'yes'"]),
        (lambda: make("top-k+rand-k", k=4, ratio=0.5), ["k=4", "ratio=0.5"]),
    ],
    ids=["unknown-name", "k=0", "ratio=1.5", "k-and-ratio", "neither", "k>d", "d=0", "levels=0",
         "levels-float", "unknown-param", "unknown-param-2", "unknown-param-compose", "shared", "compose-k-ratio"],
)  # fmt: skip
def test_bad_input_messages(call, words) -> None:
    with pytest.raises(ValueError) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ---- rand-k index draws: uniform k-subsets in both regimes --------------------------------------


@pytest.mark.parametrize("d, k", [(8, 2), (8, 3), (7, 1), (6, 4)])
def test_rand_k_subsets_are_uniform(d: int, k: int) -> None:
    # Chi-square goodness of fit over all C(d, k) subsets; (8, 2) and (7, 1) use sequential
    # sampling (4k ≤ d), (8, 3) and (6, 4) the argsort path. p > 1e-4 fails with prob 1e-4 per case.
    n = 400 * math.comb(d, k)
    idx = sp.rand_k_indices((n,), d, k, gen(d * 10 + k))
    assert idx.shape == (n, k) and idx.dtype == torch.int64
    s = idx.sort(-1).values
    assert bool((s[:, 1:] != s[:, :-1]).all()) and int(s.min()) >= 0 and int(s.max()) < d
    code = (s * torch.tensor([d**i for i in range(k)])).sum(-1)
    counts = torch.bincount(code, minlength=d**k)
    valid = [sum(c * d**i for i, c in enumerate(comb)) for comb in itertools.combinations(range(d), k)]
    assert int(counts[valid].sum()) == n
    assert stats.chisquare(counts[valid].numpy()).pvalue > 1e-4


@pytest.mark.parametrize("d, k", [(1000, 10), (1000, 250), (1000, 600), (200_000, 2000)])
def test_rand_k_inclusion_frequencies(d: int, k: int) -> None:
    # Each coordinate's inclusion count c_j over R rows has mean R·p and variance R·p(1 − p),
    # p = k/d; a uniform k-subset's indicator vector has covariance p(1 − p)·d/(d − 1)·(I − 11ᵀ/d),
    # so Σ_j (c_j − Rp)²/(Rp(1 − p)) · (d − 1)/d is approximately χ²(d − 1) (every expected count is
    # ≥ 20). Fails with probability 1e-4 if correct. The first two cases use sequential sampling.
    rows = 2000
    idx = sp.rand_k_indices((rows,), d, k, gen(k))
    counts = torch.bincount(idx.flatten(), minlength=d).to(torch.float64)
    p = k / d
    stat = float(((counts - rows * p).square() / (rows * p * (1 - p))).sum()) * (d - 1) / d
    assert stats.chi2.sf(stat, d - 1) > 1e-4
    s = idx.sort(-1).values
    assert bool((s[:, 1:] != s[:, :-1]).all())


def test_rand_k_single_row_large_k_is_uniform() -> None:
    # One row with k > d/4 takes the torch.randperm path: chi-square over the 15 subsets of
    # {0..5} of size 4 from 3000 single-row draws of one generator (false alarm 1e-4).
    d, k = 6, 4
    g = gen(1)
    s = torch.cat([sp.rand_k_indices((1,), d, k, g) for _ in range(200 * math.comb(d, k))]).sort(-1).values
    assert bool((s[:, 1:] != s[:, :-1]).all())
    code = (s * torch.tensor([d**i for i in range(k)])).sum(-1)
    counts = torch.bincount(code, minlength=d**k)
    valid = [sum(c * d**i for i, c in enumerate(comb)) for comb in itertools.combinations(range(d), k)]
    assert int(counts[valid].sum()) == s.shape[0]
    assert stats.chisquare(counts[valid].numpy()).pvalue > 1e-4


def test_rand_k_redraw_path_stays_uniform(monkeypatch) -> None:
    # Force too few draws (m = k + 1) so most rows fall short and are redrawn: the conditioning
    # on "≥ k distinct" must leave the subsets uniform.
    monkeypatch.setattr(sp, "_rand_k_num_draws", lambda d, k: k + 1)
    d, k = 8, 2
    n = 400 * math.comb(d, k)
    s = sp.rand_k_indices((n,), d, k, gen(0)).sort(-1).values
    assert bool((s[:, 1] != s[:, 0]).all())
    counts = torch.bincount(s[:, 0] * d + s[:, 1], minlength=d * d)
    valid = [a * d + b for a, b in itertools.combinations(range(d), 2)]
    assert stats.chisquare(counts[valid].numpy()).pvalue > 1e-4


def test_rand_k_does_not_permute_all_coordinates(monkeypatch) -> None:
    # For k ≪ d the draw is O(k): no randperm/argsort of length d.
    def boom(*a, **kw):
        raise AssertionError("full permutation used")

    monkeypatch.setattr(torch, "randperm", boom)
    monkeypatch.setattr(torch.Tensor, "argsort", boom)
    idx = make("rand-k", k=100).draw((3,), 10**7, gen(0))
    assert idx.shape == (3, 100)


# ---- exact fast top-k ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("k", [1, 37, 2621, 26214])
def test_fast_top_k_matches_torch_topk(rows: int, k: int) -> None:
    d = 1 << 18  # above _FAST_TOPK_MIN_D, so the sampled-threshold path is used
    x = rand_x((rows, d), seed=k, dtype=torch.float64)
    a = x.abs()
    kth = a.sort(-1, descending=True).values[:, k - 1 : k + 1]
    assert bool((kth[:, 0] > kth[:, 1]).all()), "precondition: no tie at the k-th value"
    fast = sp._topk_sampled(x, k)
    assert fast is not None, "the sampled threshold should succeed on Gaussian data"
    ref = torch.topk(a, k, dim=-1).indices.sort(-1).values
    assert torch.equal(fast, ref)
    assert torch.equal(sp.top_k_indices(x, k), ref)


def test_fast_top_k_with_ties_and_adversarial_inputs() -> None:
    d = sp._FAST_TOPK_MIN_D
    g = gen(0)
    cases = {
        "few-values": torch.randint(-3, 4, (2, d), generator=g).float(),  # massive ties
        "sparse": torch.zeros(2, d).index_fill_(1, torch.arange(0, d, 2053), 1.0),  # fewer nonzeros than k
        "periodic": torch.arange(d).remainder(64).float().expand(2, d).clone(),
        "constant": torch.ones(1, d),
    }
    for name, x in cases.items():
        for k in (5, 100, 3000):
            ref = sp._topk_exact(x.abs(), k)
            assert torch.equal(sp.top_k_indices(x, k), ref), name
            sampled = sp._topk_sampled(x, k)
            if sampled is not None:
                assert torch.equal(sampled, ref), name
            # the rule: all strictly larger, then ties at the k-th value by lowest index
            v = x.abs().sort(-1, descending=True).values[:, k - 1 : k]
            sel = x.abs().gather(-1, ref)
            assert bool((sel >= v).all())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=40),
)
def test_top_k_property(values: list[float], k: int) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    k = min(k, x.numel())
    y = make("top-k", k=k)(x)
    idx = sp.top_k_indices(x, k)
    assert idx.numel() == k and torch.unique(idx).numel() == k
    kept = torch.zeros_like(x, dtype=torch.bool)
    kept[idx] = True
    assert torch.equal(y[kept], x[kept]) and bool((y[~kept] == 0).all())
    if k < x.numel():
        assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
    assert int((y != 0).sum()) == min(k, int((x != 0).sum()))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32), min_size=1, max_size=30),
    st.integers(min_value=0, max_value=2**31),
)
def test_natural_property(values: list[float], seed: int) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    y = make("natural")(x, gen(seed))
    tiny = torch.finfo(torch.float32).tiny
    sub = (x != 0) & (x.abs() < tiny)  # below the smallest normal: rounded to 0 or ±tiny (unbiased)
    assert bool(((y[sub] == 0) | (y[sub] == torch.copysign(torch.tensor(tiny), x[sub]))).all())
    nz = x.abs() >= tiny
    assert bool((y[x == 0] == 0).all())
    m, _ = torch.frexp(y[nz])
    assert bool((m.abs() == 0.5).all())  # ±powers of two
    assert bool((torch.sign(y[nz]) == torch.sign(x[nz])).all())
    a, b = x[nz].abs().double(), y[nz].abs().double()
    assert bool((b <= 2 * a).all()) and bool((b > a / 2).all())
    lo = torch.exp2(torch.floor(torch.log2(a)))
    assert bool(((b == lo) | (b == 2 * lo)).all())


# ---- the measurement table ----------------------------------------------------------------------


def test_compressor_table_lists_everything_and_agrees() -> None:
    rows = compressor_table(dim=20, samples=500, seed=0)
    listed = [r["name"] for r in rows]
    assert listed == names() + ["top-k+natural"]
    assert all(r["ok"] for r in rows), [(r["name"], r["violations"]) for r in rows if not r["ok"]]
    text = format_table(rows)
    for n in listed:
        assert n in text
    with pytest.raises(ValueError, match="dim"):
        compressor_table(dim=0)


def test_shared_inner_cannot_compose_with_a_randomized_outer() -> None:
    with pytest.raises(ValueError, match="shared=True"):
        make("rand-k+natural", k=2, shared=True)
    assert make("rand-k+identity", k=2, shared=True).summable


# ---- block-wise (per-layer) compression ----------------------------------------------------------

BLOCK_SPECS = [("top-k", {"ratio": 0.25}), ("rand-k", {"ratio": 0.5}), ("qsgd", {"levels": 2}), ("scaled-sign", {}),
               ("natural", {}), ("rand-k", {"k": 1, "shared": True}), ("top-k+natural", {"ratio": 0.5})]


@pytest.mark.parametrize("spec", BLOCK_SPECS, ids=[_id(s) for s in BLOCK_SPECS])
def test_blockwise_is_the_inner_compressor_on_each_block(spec) -> None:
    from compsde.compressors.blockwise import Blockwise

    blocks = [3, 8, 5]
    inner = build(spec)
    c = Blockwise(inner, blocks)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, dtype=torch.float64, generator=g)
    rnd = c.draw((4,), 16, g)
    y = c.apply(x, rnd)
    # the same draw, block by block, through the inner compressor
    g2 = torch.Generator().manual_seed(0)
    torch.randn(4, 16, dtype=torch.float64, generator=g2)
    parts = [inner.apply(p, inner.draw((4,), b, g2)) for p, b in zip(x.split(blocks, -1), blocks)]
    assert torch.equal(y, torch.cat(parts, -1))
    assert torch.equal(c.decode(c.encode(x, rnd), rnd), y)
    assert c.bits(16) == sum(inner.bits(b) for b in blocks)
    row = compare(c, 16, samples=1000, seed=4)  # the declared constants hold (measure module)
    assert row["ok"], (row["violations"], row)


def test_blockwise_top_k_keeps_the_largest_of_every_block() -> None:
    from compsde.compressors.blockwise import Blockwise

    c = Blockwise(make("top-k", k=1), [2, 2])
    x = torch.tensor([[5.0, 1.0, 0.1, -0.2]])
    assert torch.equal(c(x), torch.tensor([[5.0, 0.0, 0.0, -0.2]]))  # top-1 of the row would drop -0.2
    assert c.delta(4) == 2.0 and c.b1(4) == (0.5, 1.0)
    with pytest.raises(ValueError, match="blocks cover d = 4"):
        c(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        Blockwise(make("top-k", k=1), [2, 0])
