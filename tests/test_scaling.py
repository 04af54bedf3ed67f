"""The scaling-rule solver on worked examples (science.md §3) and on bad requests."""

import math

import pytest

from compsde.sde.scaling import RULES, parse_assignments, solve, validate


@pytest.mark.parametrize(
    "method, frm, to, key, expected",
    [
        # DCSGD with ω = 3 recovers DSGD(η, B, N) by (1 + ω) = 4× the agents ...
        ("dcsgd", {"lr": 0.1, "batch": 8, "workers": 2, "omega": 0}, {"omega": 3, "lr": "same", "batch": "same"}, "workers", 8),
        # ... or 4× the batch
        ("dcsgd", {"lr": 0.1, "batch": 8, "workers": 2, "omega": 0}, {"omega": 3, "lr": "same", "workers": "same"}, "batch", 32),
        # ... or, at fixed B and N, a 4× smaller learning rate
        ("dcsgd", {"lr": 0.1, "batch": 8, "workers": 2, "omega": 0}, {"omega": 3, "batch": 8, "workers": 2}, "lr", 0.025),
        # DSignSGD: doubling η needs 4× the batch or 2× the agents
        ("dsignsgd", {"lr": 0.1, "batch": 8, "workers": 2}, {"lr": 0.2, "workers": "same"}, "batch", 32),
        ("dsignsgd", {"lr": 0.1, "batch": 8, "workers": 2}, {"lr": 0.2, "batch": "same"}, "workers", 4),
        # DSGD: linear scaling rule
        ("dsgd", {"lr": 0.1, "batch": 32, "workers": 1}, {"batch": 128, "workers": 1}, "lr", 0.4),
        # the compression a larger batch pays for
        ("dcsgd", {"lr": 0.1, "batch": 8, "workers": 2, "omega": 0}, {"lr": 0.1, "batch": 24, "workers": 2}, "omega", 2.0),
    ],
)
def test_worked_examples(method, frm, to, key, expected):
    """The first-order invariants' algebra (the exact models' solutions are tested below)."""
    sol = solve(method, frm, to, model="first-order")
    assert sol.solved == key
    assert sol.to[key] == pytest.approx(expected)
    assert sol.invariant_to == pytest.approx(sol.invariant_from)
    assert not sol.rounded
    d = sol.as_dict()
    assert set(d) >= {"method", "from", "to", "invariant"} and set(d["to"]) == set(RULES[method].variables)


def test_rounding_is_reported():
    sol = solve("dsignsgd", {"lr": 0.1, "batch": 8, "workers": 2}, {"lr": 0.3, "batch": "same"})
    assert sol.exact == pytest.approx(6.0) and not sol.rounded
    sol = solve("dsignsgd", {"lr": 0.1, "batch": 8, "workers": 3}, {"lr": 0.25, "batch": "same"})
    assert sol.exact == pytest.approx(7.5) and sol.rounded and sol.to["workers"] == 8.0
    assert sol.as_dict()["rounding"] == {"workers": {"exact": pytest.approx(7.5), "rounded": 8.0}}
    assert "rounded from 7.5" in sol.format()


def test_square_root_rule_carries_adam_hyperparameters():
    sol = solve("adamw", {"lr": 1e-3, "batch": 64, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1}, {"batch": 256})
    assert sol.to["lr"] == pytest.approx(2e-3)
    assert sol.to["beta1"] == pytest.approx(0.6) and sol.to["beta2"] == pytest.approx(0.996)
    assert sol.to["eps"] == pytest.approx(5e-9) and sol.to["weight_decay"] == pytest.approx(0.2)
    assert sol.as_dict()["invariant"]["hypothesis"] is False and "HYPOTHESIS" not in sol.format()
    with pytest.raises(ValueError, match="rmsprop has no hyperparameter beta1"):
        solve("rmsprop", {"lr": 1e-3, "batch": 64, "beta1": 0.9}, {"batch": 256})


def test_square_root_rule_maps_the_defaults_it_was_not_given():
    """β, ε and a decoupled λ left out of --from are the optimizer's defaults, and the rule maps them too."""
    sol = solve("adamw", {"lr": 0.01, "batch": 1}, {"batch": 4})
    assert sol.to["weight_decay"] == pytest.approx(0.02) and sol.to["eps"] == pytest.approx(5e-9)
    assert sol.to["beta1"] == pytest.approx(0.6) and sol.frm["beta2"] == 0.999
    assert solve("rmsprop", {"lr": 0.01, "batch": 1}, {"batch": 4}).to["weight_decay"] == 0.0  # coupled: kept
    with pytest.raises(ValueError, match="κ = 16 is too large"):
        solve("adam", {"lr": 0.01, "batch": 1}, {"batch": 16})  # the default β₁ = 0.9 cannot take κ = 16


@pytest.mark.parametrize("method", [pytest.param("adam", marks=pytest.mark.slow), "adamw",
                                    pytest.param("rmsprop", marks=pytest.mark.slow)])
def test_square_root_rule_validates_on_the_stationary_loss(method):
    """B → 4B with the rule keeps the stationary loss η d σ̄²/(4P) (docs/theory.md §9.4); the same η at 4B
    halves it, and the check says the rule then does not hold. 64 runs, relative SE ≈ 2 %."""
    import dataclasses

    frm = {"lr": 0.01, "batch": 1.0, "eps": 1e-8, "weight_decay": 0.05} | ({"beta1": 0.9} if method.startswith("adam") else {})
    sol = solve(method, {**frm, "beta2": 0.999}, {"batch": 4})
    val = validate(sol, dim=10, repeats=64)
    assert val.holds and val.ratio("theory") == pytest.approx(1.0, rel=1e-9)
    assert val.ratio("sde") == pytest.approx(1.0, abs=0.1)
    for row in val.rows:
        assert row["optimizer"] == pytest.approx(row["theory"], rel=0.1) and row["sde"] == pytest.approx(row["theory"], rel=0.1)
    naive = dataclasses.replace(sol, to={**sol.to, "lr": frm["lr"]})
    bad = validate(naive, dim=10, repeats=64)
    assert not bad.holds and bad.ratio("optimizer") == pytest.approx(0.5, rel=0.1)
    assert "does NOT hold" in bad.format() and bad.as_dict()["holds"] is False


@pytest.mark.parametrize(
    "method, frm, to, match",
    [
        ("sgd", {}, {}, "unknown method 'sgd' for scaling; valid: dsgd"),
        ("dsgd", {"lr": 0.1, "batch": 8}, {"lr": 0.2}, "missing workers"),
        ("dsgd", {"lr": 0.1, "batch": 8, "workers": 1}, {"lr": 0.2, "batch": 8, "workers": 1}, "over-determined"),
        ("dcsgd", {"lr": 0.1, "batch": 8, "workers": 1, "omega": 0}, {"omega": 3}, "under-determined: --to leaves lr, batch, workers free"),
        ("dsgd", {"lr": 0.1, "batch": 8, "workers": 1, "momentum": 0.9}, {"lr": 0.2}, "no hyperparameter momentum"),
        ("dsgd", {"lr": 0.1, "batch": 8.5, "workers": 1}, {"lr": 0.2, "workers": 1}, "batch must be a whole number ≥ 1 and ≤ 9223372036854775807, got 8.5"),
        ("dsgd", {"lr": -0.1, "batch": 8, "workers": 1}, {"batch": 16, "workers": 1}, "lr must be a number > 0, got -0.1"),
        ("dcsgd", {"lr": 0.1, "batch": 8, "workers": 2, "omega": 0}, {"lr": 0.1, "batch": 4, "workers": 2}, r"ω = -0\.49\d* < 0 \(more noise reduction"),
    ],
)
def test_bad_requests(method, frm, to, match):
    with pytest.raises(ValueError, match=match):
        solve(method, frm, to)


def test_parse_assignments():
    assert parse_assignments("lr=0.1, batch=32,workers=same", "--to") == {"lr": 0.1, "batch": 32.0, "workers": "same"}
    with pytest.raises(ValueError, match="--from: lr must be a number"):
        parse_assignments("lr=fast", "--from")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments("lr", "--from")
    assert math.isclose(RULES["dsignsgd"].value({"lr": 0.2, "batch": 4, "workers": 2}), 0.05)


@pytest.mark.parametrize(
    "method, frm, to",
    [
        # DSGD → DCSGD with ω = 3 (Rand-5 of 20), recovered by 4× the batch
        ("dcsgd", {"lr": 0.05, "batch": 1, "workers": 2, "omega": 0}, {"omega": 3, "lr": "same", "workers": "same"}),
        # DSignSGD: 2× the learning rate with 4× the batch
        ("dsignsgd", {"lr": 0.01, "batch": 1, "workers": 2}, {"lr": 0.02, "workers": "same"}),
    ],
)
def test_validate_runs_both_settings_and_the_rule_holds(method, frm, to):
    from compsde.sde.scaling import validate

    sol = solve(method, frm, to)
    val = validate(sol, repeats=32)
    # DCSGD keeps the exact discrete stationary loss (up to the whole-number batch); DSignSGD's rule is first
    # order in η. 32 runs give a sampling error of ~2 %. Without the rule the ratio would be 4 (DCSGD) or
    # 2 (DSignSGD), so a 15 % band separates "holds" from "broken".
    assert val.ratio("optimizer") == pytest.approx(1.0, abs=0.15)
    assert val.ratio("sde") == pytest.approx(1.0, abs=0.15)
    expected = sol.loss(sol.to) / sol.loss(sol.frm) if sol.model != "first-order" else 1.0
    assert val.ratio("theory") == pytest.approx(expected, rel=1e-9)
    for row in val.rows:
        assert row["optimizer"] == pytest.approx(row["theory"], rel=0.15)
    assert set(val.as_dict()["ratio_to_over_from"]) == {"optimizer", "sde", "theory"}


def test_square_root_rule_refuses_a_batch_factor_that_breaks_beta():
    # κ = 16 takes 1 − β1 = 0.1 to 1.6: β1 = −0.6 is not a momentum; the solver must say so.
    with pytest.raises(ValueError, match="κ = 16 is too large"):
        solve("adam", {"lr": 1e-3, "batch": 64, "beta1": 0.9, "beta2": 0.999}, {"batch": 1024})


# ---- the exact models: the discrete linearised optimizer and the SDE (docs/theory.md §3.3, §3.5) ----------------

from compsde.sde.scaling import (  # noqa: E402
    DEFAULT_SPECTRUM,
    Spectrum,
    correction,
    noise_check,
    stationary_loss_theory,
)

README_FROM = {"lr": 0.1, "batch": 8, "workers": 2, "omega": 0}
README_TO = {"omega": 3, "lr": "same", "workers": "same"}


def _recursion_loss(hp, eigs, s=1.0, steps=20000):
    """½ Σ h_j E x_j² at the fixed point of the per-coordinate second-moment recursion of DCSGD with
    scaled Rand-k on the quadratic: E x'² = (1 − ηh)² E x² + η² [(1 + ω)s²/(NB) + (ω/N) h² E x²]."""
    eta, b, n, om = hp["lr"], hp["batch"], hp["workers"], hp.get("omega", 0.0)
    total = 0.0
    for h in eigs:
        v = 0.0
        for _ in range(steps):
            v_new = (1 - eta * h) ** 2 * v + eta**2 * ((1 + om) * s**2 / (n * b) + om / n * h**2 * v)
            if v_new == v:
                break
            v = v_new
        total += 0.5 * h * v
    return total


@pytest.mark.parametrize("hp", [
    {"lr": 0.1, "batch": 8, "workers": 2, "omega": 0.0},
    {"lr": 0.1, "batch": 36, "workers": 2, "omega": 3.0},
    {"lr": 0.3, "batch": 1, "workers": 4, "omega": 9.0},
    {"lr": 0.02, "batch": 2, "workers": 4, "omega": 3.0},
])
def test_discrete_model_is_the_fixed_point_of_the_optimizers_second_moments(hp):
    """The closed form Σ_j η(1 + ω)s²/(2NB(2 − ηh_j(1 + ω/N))) is the recursion's fixed point (1e-10); the
    SDE's value solves 2h_j E x_j² = η[(1 + ω)s²/(NB) + (ω/N) h_j² E x_j²]; both are F × the first order."""
    eigs = DEFAULT_SPECTRUM.eigs
    got = stationary_loss_theory("dcsgd", hp, scale=1.3, model="discrete")
    assert got == pytest.approx(_recursion_loss(hp, eigs, s=1.3), rel=1e-10)
    eta, b, n, om = hp["lr"], hp["batch"], hp["workers"], hp["omega"]
    q = (1 + om) * 1.3**2 / (n * b)
    sde = sum(0.5 * h * eta * q / (2 * h - eta * om / n * h**2) for h in eigs)
    assert stationary_loss_theory("dcsgd", hp, scale=1.3, model="sde") == pytest.approx(sde, rel=1e-12)
    first = stationary_loss_theory("dcsgd", hp, scale=1.3)
    assert first == pytest.approx((1 + om) * eta * 20 * 1.3**2 / (4 * n * b), rel=1e-12)
    assert got / first == pytest.approx(correction("discrete", hp, DEFAULT_SPECTRUM), rel=1e-12)
    assert first <= stationary_loss_theory("dcsgd", hp, scale=1.3, model="sde") <= got
    dsgd = {k: v for k, v in hp.items() if k != "omega"}
    assert stationary_loss_theory("dsgd", dsgd, model="discrete") == pytest.approx(
        _recursion_loss({**dsgd, "omega": 0.0}, eigs), rel=1e-10)


@pytest.mark.parametrize("model", ["discrete", "sde"])
@pytest.mark.parametrize("method, frm, to", [
    ("dcsgd", README_FROM, {"omega": 3, "batch": "same", "workers": "same"}),   # lr
    ("dcsgd", README_FROM, {"lr": "same", "batch": 10, "workers": "same"}),     # omega
    ("dcsgd", {"lr": 0.3, "batch": 4, "workers": 3, "omega": 2}, {"lr": 0.05, "batch": 4, "workers": 3}),  # omega, smaller lr
    ("dsgd", {"lr": 0.1, "batch": 32, "workers": 1}, {"batch": 128, "workers": 1}),  # lr
])
def test_solver_keeps_the_stationary_loss_exactly(method, frm, to, model):
    sol = solve(method, frm, to, model=model)
    assert not sol.rounded and sol.first_order is not None
    assert sol.loss(sol.to) == pytest.approx(sol.loss(sol.frm), rel=1e-10)
    fo = solve(method, frm, to, model="first-order")
    assert sol.first_order == pytest.approx(fo.to[sol.solved], rel=1e-12)
    d = sol.as_dict()["stationary_loss"]
    assert abs(d["relative_change"]) < 1e-10 and d["spectrum"] == {"eig_min": 0.5, "eig_max": 2.0, "dim": 20}


@pytest.mark.parametrize("key, to", [("workers", {"omega": 3, "lr": "same", "batch": "same"}),
                                     ("batch", README_TO)])
@pytest.mark.parametrize("model", ["discrete", "sde"])
def test_whole_number_solutions_keep_the_loss_before_rounding(key, to, model):
    sol = solve("dcsgd", README_FROM, to, model=model)
    assert sol.solved == key
    exact = {**sol.to, key: sol.exact}
    assert sol.loss(exact) == pytest.approx(sol.loss(sol.frm), rel=1e-10)
    # the whole number is the neighbour of the root that keeps the loss closest
    other = math.floor(sol.exact) if sol.to[key] == math.ceil(sol.exact) else math.ceil(sol.exact)
    assert abs(math.log(sol.loss(sol.to) / sol.loss(sol.frm))) <= abs(math.log(sol.loss({**sol.to, key: other}) / sol.loss(sol.frm)))


def test_the_readme_example_batch():
    """DSGD(η = 0.1, B = 8, N = 2) → Rand-k with ω = 3: the first-order rule's B = 32 leaves the discrete
    stationary loss 11.6 % high (the compression noise ω h_j² x_j²/N); the exact rule asks B = 35.7 → 36."""
    sol = solve("dcsgd", README_FROM, README_TO)
    assert sol.model == "discrete" and sol.to["batch"] == 36 and sol.exact == pytest.approx(35.6975, abs=1e-4)
    assert sol.first_order == pytest.approx(32.0)
    fo = {**sol.to, "batch": 32.0}
    assert sol.loss(fo) / sol.loss(sol.frm) == pytest.approx(1.11555, abs=1e-5)
    text = sol.format()
    assert "first-order rule η(1+ω)/(B·N): batch = 32, loss +11.6 %" in text
    assert "valid while η h_max (1 + ω/N) < 2: 0.2 → 0.5" in text and "default: the validation quadratic's" in text


def test_stationary_loss_is_monotone_in_each_lever():
    """Increasing in η and ω, decreasing in B and N, on the range where it is finite — what makes the
    root find well posed (one root)."""
    import numpy as np

    base = {"lr": 0.1, "batch": 8.0, "workers": 2.0, "omega": 3.0}
    for model, kap in (("discrete", lambda hp: 1 + hp["omega"] / hp["workers"]), ("sde", lambda hp: hp["omega"] / hp["workers"])):
        lr_max = 2 / (2.0 * kap(base))
        for key, grid, sign in (("lr", np.linspace(1e-3, lr_max * 0.999, 200), 1), ("batch", np.arange(1, 200), -1),
                                ("workers", np.arange(2, 200), -1), ("omega", np.linspace(0, 2 * (2 / 0.2 - (model == "discrete")) * 0.999, 200), 1)):
            vals = [stationary_loss_theory("dcsgd", {**base, key: float(v)}, model=model) for v in grid]
            assert all(math.isfinite(v) for v in vals), (model, key)
            assert np.all(sign * np.diff(vals) > 0), (model, key)
    # beyond the edge the loss is infinite
    assert stationary_loss_theory("dcsgd", {**base, "lr": 0.4}, model="discrete") == math.inf
    assert math.isfinite(stationary_loss_theory("dcsgd", {**base, "lr": 0.4}, model="sde"))


def test_root_find_edge_cases():
    # the same setting: the root is the --from value itself (ω = 0 exactly, not -1e-16)
    assert solve("dcsgd", README_FROM, {"lr": "same", "batch": "same", "workers": "same"}).to["omega"] == 0.0
    # a target near the stability edge: lr just below 2/(h_max(1 + ω/N)) = 0.4
    sol = solve("dcsgd", {"lr": 0.39, "batch": 8, "workers": 2, "omega": 3}, {"omega": 3, "batch": 16, "workers": 2})
    assert 0.39 < sol.to["lr"] < 0.4 and sol.loss(sol.to) == pytest.approx(sol.loss(sol.frm), rel=1e-10)
    # the first-order guess lies beyond the valid range (lr0 = 0.8 > 0.4): the root find still lands inside
    sol = solve("dcsgd", {"lr": 0.2, "batch": 8, "workers": 2, "omega": 3}, {"omega": 3, "batch": 32, "workers": 2})
    assert sol.first_order == pytest.approx(0.8) and sol.to["lr"] < 0.4
    assert sol.loss(sol.to) == pytest.approx(sol.loss(sol.frm), rel=1e-10)
    assert "loss infinite: outside the valid range" in sol.format()
    # workers close to N_min = ηh_max ω/(2 − ηh_max): many workers needed, whole number rounded to a valid one
    sol = solve("dcsgd", {"lr": 0.1, "batch": 64, "workers": 1, "omega": 0}, {"lr": 0.9, "batch": 64, "omega": 3})
    assert sol.to["workers"] > 0.9 * 2 * 3 / (2 - 0.9 * 2) and math.isfinite(sol.loss(sol.to))
    # tiny and huge numbers stay finite (logs throughout)
    sol = solve("dcsgd", {"lr": 1e-300, "batch": 1, "workers": 1, "omega": 0}, {"omega": 1e6, "batch": "same", "workers": "same"})
    assert 0 < sol.to["lr"] and sol.loss(sol.to) == pytest.approx(sol.loss(sol.frm), rel=1e-10)
    # a one-eigenvalue spectrum
    one = Spectrum(1.0, 1.0, 1)
    sol = solve("dcsgd", README_FROM, README_TO, spectrum=one)
    assert sol.exact == pytest.approx(32 * (2 - 0.1) / (2 - 0.1 * 2.5))


@pytest.mark.parametrize("method, frm, to, kwargs, match", [
    # --from outside the range where the discrete loss is finite: named, with the valid learning rates
    ("dsgd", {"lr": 1.0, "batch": 8, "workers": 1}, {"lr": "same", "batch": 4}, {},
     r"--from: lr = 1 gives η h_max = 2 ≥ 2: the discrete model's stationary loss is infinite there \(valid: η h_max < 2, here lr < 1, with h_max = 2"),
    ("dcsgd", README_FROM, {"omega": 3, "lr": 0.5, "workers": "same"}, {},
     r"--to: lr = 0.5, ω = 3, workers = 2 gives η h_max \(1 \+ ω/N\) = 2.5 ≥ 2 at any batch: .*here lr < 0.4"),
    ("dcsgd", README_FROM, {"omega": 3, "lr": 1.5, "batch": "same"}, {}, r"--to: lr = 1.5 gives η h_max = 3 ≥ 2 at any workers"),
    ("dcsgd", README_FROM, {"lr": 1.5, "batch": "same", "workers": "same"}, {}, r"at any omega"),
    ("dcsgd", README_FROM, {"omega": 3, "lr": 0.7, "workers": "same"}, {"model": "sde"}, r"--to: .*η h_max ω/N = 2.1 ≥ 2 at any batch"),
    ("dsignsgd", {"lr": 0.1, "batch": 8, "workers": 2}, {"lr": 0.2, "batch": "same"}, {"model": "discrete"},
     r"--model discrete is available for dsgd and dcsgd only; dsignsgd keeps its first-order invariant"),
    ("dsgd", {"lr": 0.1, "batch": 8, "workers": 2}, {"lr": 0.2, "batch": "same"}, {"model": "exact"},
     r"--model must be one of discrete, sde, first-order, got 'exact'"),
])
def test_exact_model_refusals(method, frm, to, kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve(method, frm, to, **kwargs)
    # the same request to first order, or with a spectrum that allows it, is answered
    if method == "dsgd" and "model" not in kwargs:
        assert solve(method, frm, to, model="first-order").to["workers"] == 2
        assert solve(method, frm, to, spectrum=Spectrum(0.1, 1.0, 20)).to["workers"] == 2


@pytest.mark.parametrize("text, match", [
    ("0.5:2", r"--spectrum: expected EIG_MIN:EIG_MAX:DIM \(e.g. 0.5:2:20\), got '0.5:2'"),
    ("a:2:3", "EIG_MIN, EIG_MAX and DIM must be numbers"),
    ("0:2:20", r"--spectrum: eig_min must be a number > 0 \(the stationary loss needs positive curvature\), got 0.0"),
    ("2:1:20", "need eig_min ≤ eig_max, got eig_min = 2.0, eig_max = 1.0"),
    ("0.5:2:2.5", r"dim must be a whole number ≥ 1 and ≤ 1000000, got '2.5'"),
    ("0.5:2:0", r"dim must be a whole number ≥ 1 and ≤ 1000000, got 0"),
    ("0.5:inf:20", "eig_max must be a number > 0"),
])
def test_spectrum_refusals(text, match):
    with pytest.raises(ValueError, match=match):
        Spectrum.parse(text)


def test_spectrum_matches_the_validation_quadratic():
    from compsde.objectives import problems

    for sp in (DEFAULT_SPECTRUM, Spectrum.parse("0.1:3:7"), Spectrum(2.0, 2.0, 1)):
        prob = problems.make("quadratic", dim=sp.dim, eig_min=sp.eig_min, eig_max=sp.eig_max)
        assert [float(h) for h in prob.eigs] == pytest.approx(list(sp.eigs), rel=1e-15)


def test_validation_of_the_readme_example_holds():
    """The README's example: the exact rule (B = 36) holds on the validation quadratic, the first-order
    rule (B = 32) does not. The optimizer's ratio is within 3 standard errors (64 runs: ~1.3 %) of the
    discrete model's 0.9916, and the SDE integrated with dt = η reproduces the discrete model too."""
    import dataclasses

    sol = solve("dcsgd", README_FROM, README_TO)
    val = validate(sol)
    se = val.ratio_se()
    assert 0.005 < se < 0.03
    assert val.holds and val.ratio("optimizer") == pytest.approx(val.ratio("theory"), abs=3 * se)
    assert val.ratio("theory") == pytest.approx(0.99160, abs=1e-5) and val.ratio("sde") == pytest.approx(0.9916, abs=0.02)
    for row in val.rows:
        assert row["optimizer"] == pytest.approx(row["theory"], rel=3 * row["optimizer_se"] / row["optimizer"] + 1e-3)
    naive = dataclasses.replace(sol, to={**sol.to, "batch": 32.0})
    bad = validate(naive)
    assert not bad.holds and bad.ratio("theory") == pytest.approx(1.11555, abs=1e-5)


def test_validate_refuses_a_dimension_the_rule_was_not_solved_for():
    sol = solve("dcsgd", README_FROM, README_TO)
    with pytest.raises(ValueError, match=r"validate: dim = 10 differs from the spectrum the rule was solved for \(20 eigenvalues"):
        validate(sol, dim=10)


# ---- the noise check: minibatch noise (1 + ω) tr Σ/B against compression noise ω ‖∇f‖² ---------------------------


def test_noise_check_warns_when_the_compression_noise_matters_and_names_the_levers():
    """A GPT-like plateau: the 4× batch the first-order rule asks leaves the compression noise ω‖∇f‖²/N
    untouched; 4× (and more) the workers cut it."""
    sol = solve("dcsgd", {"lr": 0.15, "batch": 8, "workers": 2, "omega": 0}, README_TO, model="first-order")
    assert sol.to["batch"] == 32
    check = noise_check(sol, trace=10.0, grad_norm=1.0)
    assert check.warns and check.change == pytest.approx((1.25 + 3.0) / 1.25 - 1)  # η/N cancels
    lev = check.levers()
    assert lev["batch"] == math.inf  # η ω G²/N = 0.225 > the --from power 0.09375: no batch size can
    for key in ("workers", "lr"):
        assert check.power({**check.base, key: lev[key]}) == pytest.approx(check.power(sol.frm), rel=1e-12)
    assert check.base == {"lr": 0.15, "batch": 8.0, "workers": 2.0, "omega": 3.0}
    text = check.format()
    assert text.count("\n") == 1 and "warning: the rule assumes (1+ω)tr Σ/B ≫ ω‖∇f‖², which fails here" in text
    assert "workers = 12.8" in text and "no batch size (η ω‖∇f‖²/N = 0.225 alone reaches the --from power 0.09375)" in text
    # a smaller gradient: a batch exists, and keeps the power
    check = noise_check(sol, trace=10.0, grad_norm=0.3)
    b = check.levers()["batch"]
    assert math.isfinite(b) and b > 32 and check.power({**check.base, "batch": b}) == pytest.approx(check.power(sol.frm), rel=1e-12)
    # the gradient noise dominates: no warning
    quiet = noise_check(sol, trace=10.0, grad_norm=0.05)
    assert not quiet.warns and "\n" not in quiet.format() and "the rule's assumption holds" in quiet.format()
    assert set(quiet.as_dict()) >= {"power", "relative_change", "warns", "keeps_power"}


def test_noise_check_checks_the_first_order_rule_also_under_the_discrete_model():
    sol = solve("dcsgd", README_FROM, README_TO)  # discrete: B = 36
    check = noise_check(sol, trace=10.0, grad_norm=1.0)
    assert check.rule_to["batch"] == 32.0 and "first-order rule's batch = 32" in check.format()


@pytest.mark.parametrize("method, trace, grad, match", [
    ("dsignsgd", 1.0, 1.0, "--noise and --grad-norm apply to dsgd and dcsgd"),
    ("dcsgd", -1.0, 1.0, "--noise must be a number ≥ 0, got -1.0"),
    ("dcsgd", 1.0, math.nan, "--grad-norm must be a number ≥ 0, got nan"),
    ("dcsgd", 0.0, 0.0, "--noise and --grad-norm are both 0"),
    ("dcsgd", 0.0, 1.0, "--noise is 0 and --from has ω = 0"),
])
def test_noise_check_refusals(method, trace, grad, match):
    if method == "dsignsgd":
        sol = solve(method, {"lr": 0.1, "batch": 8, "workers": 2}, {"lr": 0.2, "batch": "same"})
    else:
        sol = solve(method, README_FROM, README_TO)
    with pytest.raises(ValueError, match=match):
        noise_check(sol, trace, grad)


def test_cli_scale_noise_check_and_spectrum(capsys):
    from compsde.experiments.cli import main

    argv = ["scale", "dcsgd", "--from", "lr=0.15,batch=8,workers=2,omega=0", "--to", "omega=3,lr=same,workers=same"]
    assert main([*argv, "--noise", "10", "--grad-norm", "1"]) == 0
    out = capsys.readouterr().out
    assert "warning: the rule assumes" in out and "batch = 36" not in out
    assert main([*argv, "--noise", "10"]) == 2
    assert "--noise and --grad-norm go together" in capsys.readouterr().err
    assert main([*argv, "--spectrum", "0.1:1:50", "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["stationary_loss"]["spectrum"] == {"eig_min": 0.1, "eig_max": 1.0, "dim": 50} and d["model"] == "discrete"
    assert main([*argv, "--model", "first-order"]) == 0
    assert "batch               8 → 32" in capsys.readouterr().out
    assert main([*argv, "--spectrum", "1:2"]) == 2
    assert "error: --spectrum: expected EIG_MIN:EIG_MAX:DIM" in capsys.readouterr().err
