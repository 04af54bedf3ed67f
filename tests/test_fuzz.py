"""A fuzzer for the entry points: hundreds of generated inputs, and none may crash, hang or be accepted
when it is invalid.

Each entry point's arguments have a validity predicate (the specification). For every generated value:
* invalid → a ``ValueError`` whose message names the argument (never another exception, never accepted);
* valid → the call succeeds or refuses with a ``ValueError`` (e.g. a size that does not fit in memory).
A call that takes longer than ``DEADLINE`` seconds counts as a hang. The generation is derandomised, so
CI sees the same inputs every time; the counts are printed with ``pytest -s``.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compsde import algorithms, compressors, optimizers
from compsde.algorithms.schedules import Schedule
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import scaling
from compsde.sde.models import from_algorithm
from compsde.sim import simulate

DEADLINE = 20
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])

# Values a user may type anywhere: wrong types, out-of-range numbers, non-finite floats, huge integers.
ANY = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, -1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 1e-300, 1e300, math.nan, math.inf, -math.inf]),
    st.text(max_size=6), st.sampled_from(["", "no", "yes", "1", "rand-k", "$\\frac{"]),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def is_int(v: Any, lo: int | None = None, hi: int = 2**63 - 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and v <= hi


def is_num(v: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    if not math.isfinite(f):
        return False
    if lo is not None and (f < lo or (lo_open and f == lo)):
        return False
    return not (hi is not None and (f > hi or (hi_open and f == hi)))


#: entry point → counts of generated inputs (printed at the end of the module with ``pytest -s``).
COUNTS: dict[str, dict[str, int]] = {}


class Outcome:
    """The counts of one entry point."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = COUNTS.setdefault(name, {"invalid refused": 0, "valid accepted": 0, "valid refused": 0})


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = {k: sum(c[k] for c in COUNTS.values()) for k in ("invalid refused", "valid accepted", "valid refused")}
    print(f"\nfuzzer: {sum(total.values())} generated inputs: {total}")
    for name, c in COUNTS.items():
        print(f"  {name}: {c}")


@contextmanager
def deadline(seconds: int = DEADLINE):
    def boom(*_: Any) -> None:
        raise TimeoutError(f"hung: no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def expect(outcome: Outcome, call: Callable[[], Any], valid: bool, names: tuple[str, ...]) -> None:
    """Run ``call``: invalid input must raise a ValueError naming one of ``names``; valid input may only
    succeed or raise a ValueError. Anything else (another exception, a hang, an accepted invalid input)
    fails the test with the input shown by hypothesis.

    A valid input may be refused (the fuzzer's validity model is coarser than the code's: a config over
    the memory limit, a problem too small for its workers), but within a bound: per entry point, at most
    4 refusals per valid input accepted, plus 6 (the configs, the most refused, measured 41 refused to 17
    accepted), so an entry point that refused every valid input fails at its 7th.
    With no ``names`` the call site does not model validity (``valid`` is True: either outcome is
    fine, e.g. arbitrary bytes as a data file) and refusals are not bounded."""
    with deadline():
        try:
            call()
        except ValueError as e:
            msg = str(e)
            assert "\n" not in msg.strip(), f"a multi-line error message: {msg!r}"
            if not valid:
                assert any(n in msg for n in names), f"the message does not name {names}: {msg!r}"
            outcome.counts["valid refused" if valid else "invalid refused"] += 1
            refused, accepted = outcome.counts["valid refused"], outcome.counts["valid accepted"]
            assert not (valid and names) or refused <= 4 * accepted + 6, (
                f"{outcome.name}: {refused} valid inputs refused against {accepted} accepted; this one: {msg!r}")
            return
    assert valid, "accepted an invalid input"
    outcome.counts["valid accepted"] += 1


# ---- compressors ---------------------------------------------------------------------------------

COMPRESSOR_PARAMS = {"k": lambda v, d: is_int(v, 1, d), "ratio": lambda v, d: is_num(v, 0.0, 1.0, lo_open=True),
                     "levels": lambda v, d: is_int(v, 1, 1 << 16), "shared": lambda v, d: isinstance(v, bool)}


@FUZZ
@given(name=st.one_of(st.sampled_from(compressors.names() + ["top-k+natural", "rand-k+qsgd"]), ANY),
       key=st.sampled_from(sorted(COMPRESSOR_PARAMS)), value=ANY, d=st.sampled_from([1, 5, 64]))
def test_fuzz_compressors_make(name, key, value, d):
    out = Outcome("compressors.make")
    known = isinstance(name, str) and all(p in compressors.names() for p in name.split("+"))
    accepted = {p for part in name.split("+") for p in compressors.param_names(part)} if known else set()
    params: dict[str, Any] = {} if value is None else {key: value}  # None means "not given" (configs pass every key)
    if "k" in accepted and key not in ("k", "ratio"):
        params["k"] = 1  # sparsifiers need one of k or ratio
    needs_k = "k" in accepted and not ({"k", "ratio"} & set(params))
    valid = known and not needs_k and (value is None or (key in accepted and COMPRESSOR_PARAMS[key](value, d)))
    if valid and "k" in params and params["k"] > d:
        valid = False

    def call() -> None:
        c = compressors.make(name, **params)
        c.bits(d)
        x = torch.randn(2, d, dtype=torch.float64)
        c(x, torch.Generator().manual_seed(0))

    expect(out, call, valid, ("compressor", key, "k", "ratio", str(name)))


# ---- algorithms and transforms -------------------------------------------------------------------


@FUZZ
@given(name=st.one_of(st.sampled_from(algorithms.names()), ANY), compressor=st.one_of(st.sampled_from([None, "top-k", "sign", "identity"]), ANY),
       side=st.sampled_from(["worker", "server"]), key=st.sampled_from(["momentum", "nesterov", "weight_decay", "beta"]),
       value=st.one_of(st.floats(0.0, 0.99), st.booleans(), ANY), normalize=st.one_of(st.booleans(), ANY))
def test_fuzz_algorithms_make(name, compressor, side, key, value, normalize):
    out = Outcome("algorithms.make")
    known = isinstance(name, str) and name in algorithms.names()
    implied = algorithms.implied_compressor(name) if known else None
    comp_ok = (compressor is None and implied is not None) or (isinstance(compressor, str) and compressor in ("top-k", "sign", "identity")
                                                               and (implied is None or compressor == implied))
    params = {"k": 1} if compressor == "top-k" else {}
    value_ok = {"momentum": lambda v: is_num(v, 0.0, 1.0, hi_open=True), "nesterov": lambda v: isinstance(v, bool),
                "weight_decay": lambda v: is_num(v, 0.0), "beta": lambda v: False}[key](value)
    norm_ok = isinstance(normalize, bool) and not (normalize and known and name == "ef")
    valid = known and comp_ok and value_ok and norm_ok

    def call() -> None:
        a = algorithms.make(name, compressor, normalize=normalize, **{side: {key: value}}, **params)
        oracle = Oracle(problems.make("quadratic", dim=3), Noise("gaussian", 0.1), workers=2)
        simulate(oracle, a, Schedule("constant", 0.1, 2), repeats=2)

    expect(out, call, valid, ("algorithm", "compressor", key, side, "normalize", "momentum", "implies"))


OPTIMIZER_VALID = {"beta": lambda v: is_num(v, 0.0, 1.0, hi_open=True), "beta1": lambda v: is_num(v, 0.0, 1.0, hi_open=True), "beta2": lambda v: is_num(v, 0.0, 1.0, hi_open=True),
                   "eps": lambda v: is_num(v, 0.0, lo_open=True), "weight_decay": lambda v: is_num(v, 0.0),
                   "rho": lambda v: is_num(v, 0.0, lo_open=True)}


@FUZZ
@given(name=st.one_of(st.sampled_from(optimizers.names()), ANY), key=st.sampled_from(sorted(OPTIMIZER_VALID)),
       value=st.one_of(st.floats(0.0, 0.999), ANY), workers=st.sampled_from([1, 2]), sde=st.booleans())
def test_fuzz_single_node_optimizers_and_their_sdes(name, key, value, workers, sde):
    """Every optimizer with every hyperparameter (those it does not take must be refused by name), one
    step in the simulator on a quadratic or a game, and its SDE."""
    out = Outcome("optimizers (make, simulate, SDE)")
    known = isinstance(name, str) and name in optimizers.REGISTRY
    # None is "not given" (the default) for every hyperparameter keyword of make
    valid = known and (value is None or key in optimizers.get(name).keys and OPTIMIZER_VALID[key](value))

    def call() -> None:
        a = algorithms.make(name, **{key: value})
        game = name in ("sgda", "seg", "shgd")
        prob = problems.make("bilinear-game", player_dim=2) if game else problems.make("quadratic", dim=3)
        oracle = Oracle(prob, Noise("gaussian", 0.5), workers=workers)
        sched = Schedule("constant", 0.05, 2)
        tr = simulate(oracle, a, sched, repeats=2)
        assert tr.loss.shape == (3, 2)
        if sde:
            from compsde.sde.tracking import simulate_sde

            simulate_sde(oracle, a, sched, paths=2, mc_samples=4)

    expect(out, call, valid, ("algorithm", key))


GAME_ARGS = {"player_dim": lambda v: is_int(v, 1), "coupling_min": lambda v: is_num(v), "coupling_max": lambda v: is_num(v),
             "a_min": lambda v: is_num(v), "a_max": lambda v: is_num(v), "c_min": lambda v: is_num(v),
             "c_max": lambda v: is_num(v), "x0_scale": lambda v: is_num(v), "heterogeneity": lambda v: is_num(v, 0.0)}


@FUZZ
@given(game=st.sampled_from(["bilinear-game", "quadratic-game"]), key=st.sampled_from(sorted(GAME_ARGS)),
       value=st.one_of(st.floats(-3.0, 3.0), st.integers(1, 20), ANY))
def test_fuzz_games(game, key, value):
    """Games' parameters: ranges (min ≤ max), a pair without a unique equilibrium (a c + b² = 0), a
    bilinear game's coupling ≤ 0, and keys the bilinear game does not take, all refused by name."""
    out = Outcome("games")
    takes = key not in ("a_min", "a_max", "c_min", "c_max") or game == "quadratic-game"
    valid = takes and GAME_ARGS[key](value)
    defaults = {"coupling_min": 0.5, "coupling_max": 2.0, "a_min": 0.2, "a_max": 1.0, "c_min": 0.2, "c_max": 1.0}
    if valid and key in defaults:
        f = float(value)
        lo, hi = (f, defaults[key.replace("min", "max")]) if key.endswith("min") else (defaults[key.replace("max", "min")], f)
        valid = lo <= hi and not (game == "bilinear-game" and key == "coupling_min" and f <= 0)
        if valid and game == "quadratic-game":  # a_j c_j + b_j² over the pairs (5 evenly spaced values each)
            r = {k: defaults[k] for k in defaults} | {key: f}
            pts = [(r["a_min"] + (r["a_max"] - r["a_min"]) * t, r["coupling_min"] + (r["coupling_max"] - r["coupling_min"]) * t,
                    r["c_min"] + (r["c_max"] - r["c_min"]) * t) for t in (0, 0.25, 0.5, 0.75, 1.0)]
            valid = all(abs(a * c + b * b) >= 1e-12 for a, b, c in pts)

    def call() -> None:
        p = problems.make(game, **{key: value})
        if p.dim <= 1000:
            simulate(Oracle(p, Noise("gaussian", 0.5), workers=1), algorithms.make("seg"), Schedule("constant", 0.05, 1), repeats=2)

    expect(out, call, valid, (key, game))


# ---- schedules, noise, problems, oracles, runs -----------------------------------------------------


@FUZZ
@given(name=st.one_of(st.sampled_from(["constant", "cosine", "step", "poly"]), ANY),
       lr=st.one_of(st.floats(1e-4, 1.0), ANY), steps=st.one_of(st.integers(0, 50), ANY),
       key=st.sampled_from(["final_ratio", "gamma", "every", "power", "warmup"]),
       value=st.one_of(st.floats(0.01, 1.0), st.integers(1, 20), ANY))
def test_fuzz_schedules(name, lr, steps, key, value):
    out = Outcome("Schedule")
    from compsde.algorithms.schedules import SCHEDULE_PARAMS

    known = isinstance(name, str) and name in SCHEDULE_PARAMS
    takes = known and key in SCHEDULE_PARAMS[name]
    check = {"final_ratio": lambda v: is_num(v, 0.0, 1.0), "gamma": lambda v: is_num(v, 0.0, 1.0, lo_open=True),
             "every": lambda v: (is_int(v, 1) or (isinstance(v, float) and v.is_integer() and v >= 1 and math.isfinite(v))),
             "power": lambda v: is_num(v, 0.0, lo_open=True), "warmup": lambda v: False}[key]
    valid = known and takes and check(value) and is_num(lr, 0.0, lo_open=True) and is_int(steps, 0)
    if valid and steps > 0:
        s = Schedule.__new__(Schedule)  # the extreme-parameter rule: η at the last step must stay > 0
        object.__setattr__(s, "name", name), object.__setattr__(s, "lr", lr)
        object.__setattr__(s, "steps", steps), object.__setattr__(s, "params", {key: value})
        try:
            valid = s(steps - 1) > 0
        except (OverflowError, ValueError):
            valid = False

    def call() -> None:
        sch = Schedule(name, lr, steps, {key: value})
        for k in (0, min(steps, 10**6) - 1 if is_int(steps, 1) else 0):
            assert math.isfinite(sch(k)) and sch(k) >= 0

    expect(out, call, valid, ("schedule", "lr", "steps", key))


@FUZZ
@given(name=st.one_of(st.sampled_from(["none", "gaussian", "student-t"]), ANY),
       scale=st.one_of(st.floats(0.0, 10.0), st.lists(st.floats(0.0, 2.0), min_size=1, max_size=3), ANY),
       nu=st.one_of(st.floats(0.1, 100.0), ANY))
def test_fuzz_noise(name, scale, nu):
    out = Outcome("Noise")
    scales = scale if isinstance(scale, list) else [scale]
    # ν is Student-t's only: any other noise refuses one (None means "not given")
    nu_ok = is_num(nu, 0.0, lo_open=True) or nu is None if name == "student-t" else nu is None
    valid = (isinstance(name, str) and name in ("none", "gaussian", "student-t") and len(scales) > 0
             and all(is_num(s, 0.0) for s in scales) and nu_ok)
    expect(out, lambda: Noise(name, scale, nu), valid, ("noise",))


PROBLEM_ARGS = {
    "dim": lambda v: is_int(v, 1),
    "eig_min": lambda v: is_num(v), "eig_max": lambda v: is_num(v),
    "rotate": lambda v: isinstance(v, bool), "heterogeneity": lambda v: is_num(v, 0.0),
    "seed": lambda v: is_int(v, 0, 2**64 - 1), "x0_scale": lambda v: is_num(v),
}


@FUZZ
@given(key=st.sampled_from(sorted(PROBLEM_ARGS)), value=st.one_of(st.floats(0.0, 3.0), st.integers(1, 50), ANY),
       workers=st.one_of(st.integers(1, 8), ANY), batch=st.one_of(st.integers(1, 8), ANY))
def test_fuzz_problems_and_oracles(key, value, workers, batch):
    out = Outcome("problems.make + Oracle")
    kw = {key: value}
    valid = PROBLEM_ARGS[key](value) and is_int(workers, 1) and is_int(batch, 1)
    if valid and key == "eig_min":
        valid = value <= 2.0  # eig_max defaults to 2
    if valid and key == "eig_max":
        valid = value >= 0.5

    def call() -> None:
        p = problems.make("quadratic", **kw)
        o = Oracle(p, Noise("gaussian", 1.0), workers=workers, batch=batch)
        if p.dim <= 1000 and workers <= 64:
            simulate(o, algorithms.make("dsgd"), Schedule("constant", 0.01, 1), repeats=2)

    expect(out, call, valid, (key, "workers", "batch", "quadratic"))


@FUZZ
@given(repeats=st.one_of(st.integers(1, 8), ANY), seed=st.one_of(st.integers(0, 2**64 - 1), ANY),
       log_every=st.one_of(st.integers(1, 4), ANY), oracle=st.sampled_from(["ok", "ok", None, "problem"]),
       algo=st.sampled_from(["ok", "ok", None, "name"]))
def test_fuzz_simulate_and_sde(repeats, seed, log_every, oracle, algo):
    out = Outcome("simulate / simulate_sde / from_algorithm")
    o = Oracle(problems.make("quadratic", dim=3), Noise("gaussian", 0.5), workers=2) if oracle == "ok" else (
        problems.make("quadratic", dim=3) if oracle == "problem" else None)
    a = algorithms.make("dcsgd", compressor="rand-k", k=1) if algo == "ok" else ("dcsgd" if algo == "name" else None)
    valid = oracle == "ok" and algo == "ok" and is_int(repeats, 1) and is_int(seed, 0, 2**64 - 1) and is_int(log_every, 1)

    def call() -> None:
        from compsde.sde.tracking import simulate_sde

        sched = Schedule("constant", 0.05, 2)
        simulate(o, a, sched, repeats=repeats, seed=seed, log_every=log_every)
        simulate_sde(o, a, sched, paths=repeats, seed=seed, log_every=log_every)
        from_algorithm(o, a, 0.05)

    expect(out, call, valid, ("oracle", "algorithm", "repeats", "seed", "log_every", "paths", "memory"))


# ---- scaling rules ---------------------------------------------------------------------------------


@FUZZ
@given(method=st.one_of(st.sampled_from(list(scaling.RULES)), ANY), lr=ANY, batch=ANY, workers=ANY,
       omega=ANY, to_key=st.sampled_from(["lr", "batch", "workers", "omega", "beta1", "nope"]), to_value=ANY)
def test_fuzz_scaling_solve(method, lr, batch, workers, omega, to_key, to_value):
    out = Outcome("scaling.solve")
    known = isinstance(method, str) and method in scaling.RULES

    def text(v: Any) -> str:
        return str(v)

    frm_text = f"lr={text(lr)},batch={text(batch)},workers={text(workers)},omega={text(omega)}"
    to_text = f"{to_key}={text(to_value)}"

    def call() -> None:
        frm = scaling.parse_assignments(frm_text, "--from")
        if method in scaling.ADAPTIVE:
            frm = {k: v for k, v in frm.items() if k in ("lr", "batch")}
        elif method != "dcsgd":
            frm.pop("omega", None)
        sol = scaling.solve(method, frm, scaling.parse_assignments(to_text, "--to"))
        for v in sol.to.values():
            assert math.isfinite(v), sol.to
        # whatever is solved lies in the range --from accepts (a whole number ≥ 1 and at most the limits)
        assert 1 <= sol.to.get("batch", 1) <= 2**63 - 1 and 1 <= sol.to.get("workers", 1) <= 10**6, sol.to
        assert sol.to["lr"] > 0, sol.to
        sol.format()
        sol.as_dict()

    # The full validity of a scaling request is the solver's job; the fuzzer checks that whatever comes
    # in, the answer is a result with finite numbers or a one-line ValueError.
    expect(out, call, True, ())
    if not known:
        with pytest.raises(ValueError):
            call()


# ---- the examples a new user tried --------------------------------------------------------------


@pytest.mark.parametrize("call, words", [
    (lambda: compressors.make(5), "compressor name must be a string"),
    (lambda: algorithms.make("dsgd", compressor=compressors.make("sign")), "implies compressor 'identity'"),
    (lambda: simulate(None, algorithms.make("dsgd"), Schedule("constant", 0.1, 1)), "oracle must be"),
    (lambda: simulate(problems.make("quadratic"), algorithms.make("dsgd"), Schedule("constant", 0.1, 1)), "oracle must be"),
    (lambda: Schedule("constant", 0.1, -5), "steps must be an integer ≥ 0, got -5"),
    (lambda: problems.make("quadratic", rotate="no"), "rotate must be true or false, got 'no'"),
    (lambda: Schedule("poly", 0.1, 10, {"power": 1e300}), "underflow"),
    (lambda: Noise("student-t", 1.0, math.nan), "nu"),
    (lambda: problems.make("l0l1-cosh", sharpness=math.inf), "sharpness"),
    (lambda: problems.make("quadratic", dim=10**12), "memory"),
    (lambda: scaling.solve("dsgd", {"lr": 1e-300, "batch": 1.0, "workers": 1.0}, {"lr": 1e300, "batch": "same"},
                           model="first-order"), "too extreme"),
    # the exact (discrete) model: a learning rate beyond the stability edge of the spectrum
    (lambda: scaling.solve("dsgd", {"lr": 1e-300, "batch": 1.0, "workers": 1.0}, {"lr": 1e300, "batch": "same"}),
     "--to: lr = 1e+300 gives η h_max = 2e+300 ≥ 2 at any workers: the discrete model's stationary loss is infinite"),
    # a solution the rule cannot keep: a whole number that rounds to 0, or more workers than a run may have
    (lambda: scaling.solve("dsgd", {"lr": 1.0, "batch": 1.0, "workers": 1.0}, {"lr": 1e-300, "workers": "same"},
                           model="first-order"), "the rule needs batch = 1e-300, which rounds to 0"),
    (lambda: scaling.solve("dsgd", {"lr": 1.0, "batch": 1.0, "workers": 1.0}, {"lr": 1e100, "batch": "same"},
                           model="first-order"), "the rule needs workers = 1e+100, more than any run can have (at most 1000000)"),
    (lambda: scaling.solve("dsgd", {"lr": 1.0, "batch": 1e300, "workers": 1.0}, {"lr": 1.0, "workers": "same"}),
     "--from: batch must be a whole number ≥ 1 and ≤ 9223372036854775807, got 1e+300"),
    (lambda: scaling.parse_assignments("lr=0.1,lr=0.2", "--from"), "--from: lr is given twice"),
    # compressors: what they compress and how long a vector is
    (lambda: compressors.make("rand-k", k=1)(torch.randn(2, 4), "abc"),
     "compressor 'rand-k': generator must be a torch.Generator or None, got 'abc'"),
    (lambda: compressors.make("sign")([1.0, 2.0]), "compressor 'sign': x must be a torch.Tensor of shape (..., d), got [1.0, 2.0]"),
    (lambda: compressors.make("qsgd")(torch.arange(4).reshape(1, 4), torch.Generator()),
     "compressor 'qsgd': x must be a floating-point tensor (float32 or float64), got dtype torch.int64"),
    (lambda: compressors.make("sign")(torch.zeros(2, 0)), "compressor 'sign': d (the vector length) must be an integer ≥ 1, got 0"),
    *[(lambda n=n: compressors.make(n, **({"k": 1} if "k" in compressors.param_names(n) else {})).bits(0),
       f"compressor {n!r}: d (the vector length) must be an integer ≥ 1, got 0") for n in compressors.names()],
    (lambda: compressors.make("top-k+natural", k=1).bits(-3), "compressor 'top-k+natural': d (the vector length) must be"),
    # problems, oracles and runs
    (lambda: problems.make("quadratic", dim=3).loss(torch.zeros(2, 5)), "quadratic: x must have shape (..., d = 3), got shape (2, 5)"),
    (lambda: problems.make("quadratic", dim=3).grad([1.0, 2.0, 3.0]), "quadratic: x must be a torch.Tensor of shape (..., d = 3)"),
    (lambda: Oracle(problems.make("quadratic", dim=3), workers=1, dtype=torch.int64),
     "dtype must be one of float32, float64, got torch.int64"),
    (lambda: simulate(Oracle(problems.make("quadratic", dim=3), workers=1), algorithms.make("dsgd"),
                      Schedule("constant", 0.1, 1), progress=5), "progress must be a function or None, got 5"),
    (lambda: simulate(Oracle(problems.make("quadratic", dim=3), workers=1), algorithms.make("dsgd"),
                      Schedule("constant", 0.1, 1), observe="x"), "observe must be a function or None, got 'x'"),
    (lambda: Noise("gaussian", 1.0, nu=-5), "noise nu = -5 does not apply to noise 'gaussian'"),
    (lambda: Noise("none", 0.0, nu=3.0), "noise nu = 3.0 does not apply to noise 'none'"),
    (lambda: Noise("student-t", 1.0, nu=-5), "noise nu (Student-t degrees of freedom) must be a finite number > 0, got -5"),
    (lambda: _build().load(5), "source must be a preset name, a config file or run folder (a string or pathlib.Path), "
                               "or a config dict, got 5"),
    (lambda: _runner().run_experiment(TINY, out_dir=5, progress=False, plots=False),
     "out_dir must be a path (a string or pathlib.Path), got 5"),
])
def test_examples_of_bad_python_calls(call, words):
    with pytest.raises(ValueError, match=None) as e:
        call()
    assert words in str(e.value), str(e.value)


def _build() -> Any:
    from compsde.experiments import build

    return build


def _runner() -> Any:
    from compsde.experiments import runner

    return runner


def _seed_entry_points() -> dict[str, Callable[[Any], Any]]:
    """Every public function that takes a seed, called with one (and otherwise tiny arguments)."""
    from compsde.compressors import measure
    from compsde.distributed import comm_hook
    from compsde.objectives import data
    from compsde.objectives import models as nets
    from compsde.sde.tracking import simulate_sde
    from compsde.sim import simulate_reference

    def oracle() -> Oracle:
        return Oracle(problems.make("quadratic", dim=3), Noise("gaussian", 0.5), workers=2)

    sched = Schedule("constant", 0.1, 1)
    one = scaling.solve("dsgd", {"lr": 0.1, "batch": 1.0, "workers": 1.0}, {"lr": 0.1, "batch": "same"})
    return {
        "simulate": lambda s: simulate(oracle(), algorithms.make("dsgd"), sched, seed=s),
        "simulate_reference": lambda s: simulate_reference(oracle(), algorithms.make("dsgd"), sched, seed=s),
        "simulate_sde": lambda s: simulate_sde(oracle(), algorithms.make("dsgd"), sched, paths=2, seed=s),
        "scaling.validate": lambda s: scaling.validate(one, repeats=2, seed=s),
        "measure.reference_vectors": lambda s: measure.reference_vectors(3, seed=s),
        "measure.measure": lambda s: measure.measure(compressors.make("sign"), 3, samples=4, seed=s),
        "measure.compressor_table": lambda s: measure.compressor_table(3, samples=4, seed=s, names=["sign"]),
        "problems.make": lambda s: problems.make("quadratic", dim=3, heterogeneity=1.0, seed=s),
        "problems.make(mlp)": lambda s: problems.make("mlp", hidden=[2], eval_samples=8, seed=s),
        "data.load": lambda s: data.load("teacher", seed=s),
        "data.worker_shards": lambda s: data.worker_shards(torch.zeros(10, dtype=torch.long), 2, seed=s),
        "objectives.models.build": lambda s: nets.build("mlp", (4,), 2, seed=s, hidden=[3]),
        "comm_hook": lambda s: comm_hook("sign", seed=s),
    }


@pytest.mark.parametrize("entry", sorted(_seed_entry_points()))
@pytest.mark.parametrize("seed", [-1, 2**64, 2**70, 1.0, "0"])
def test_every_seed_entry_point_refuses_seeds_out_of_range_by_name(entry, seed):
    """Seeds are integers in [0, 2⁶⁴ − 1] everywhere (``compsde.core.checks.check_seed``): out of range,
    each entry point names its ``seed`` and the range, rather than torch's "Overflow when unpacking"."""
    with pytest.raises(ValueError) as e:
        _seed_entry_points()[entry](seed)
    assert f"seed must be an integer in [0, {2**64 - 1}], got {seed!r}" in str(e.value), str(e.value)


@pytest.mark.parametrize("entry", ["measure.measure", "simulate", "data.load"])
def test_the_largest_seed_is_accepted(entry):
    _seed_entry_points()[entry](2**64 - 1)


def test_a_million_workers_of_a_tiny_problem_are_refused_up_front():
    """Each worker holds two torch.Generator streams (~2.7 kB each) whatever d and R are: 10⁶ workers with
    d = 4 and 2 repetitions need ~8 GB, which a 4 GB address-space limit (``ulimit -v``) refuses before
    any stream is created — within seconds, not after 46 s and a std::bad_alloc."""
    import subprocess
    import sys
    import time

    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))\n"
            "from compsde import Noise, Oracle, Schedule, algorithms, problems, simulate\n"
            "o = Oracle(problems.make('quadratic', dim=4), Noise('gaussian', 0.5), workers=10**6)\n"
            "import time; t = time.perf_counter()\n"
            "try:\n    simulate(o, algorithms.make('dsgd'), Schedule('constant', 0.01, 3), repeats=2)\n"
            "except ValueError as e:\n    print(f'{time.perf_counter() - t:.3f}', e)\n")
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    seconds, _, message = res.stdout.strip().partition(" ")
    assert "a run with 1000000 worker(s) × 2 repetition(s) × d = 4 (with each worker's random streams) needs about" in message
    assert "reduce repeats, workers or the dimension" in message
    # the refusal itself: well under a second here (a loaded 2-core machine); 5 s leaves room for load
    assert float(seconds) < 5.0, seconds
    assert time.perf_counter() - t < 60  # the whole process, imports included


# ---- configs -----------------------------------------------------------------------------------

TINY = {"run": {"steps": 3, "repeats": 2, "seed": 0, "log_every": 1},
        "problem": {"name": "quadratic", "dim": 4}, "noise": {"name": "gaussian", "scale": 0.5},
        "series": [{"method": "dcsgd", "compressor": "rand-k", "k": 2, "lr": 0.1, "workers": 2},
                   {"method": "dsignsgd", "lr": 0.05}]}
COUNT_KEYS = {"steps", "repeats", "log_every", "paths", "substeps", "mc_samples", "dim", "workers", "batch", "k"}
STR_KEYS = {"dtype", "device", "increments", "title", "label", "group", "method", "compressor", "schedule", "name"}
BOOL_KEYS = {"rotate", "normalize"}
CONFIG_KEYS = [("run", k) for k in ("steps", "repeats", "seed", "log_every", "dtype", "device", "title", "paths",
                                   "substeps", "increments", "mc_samples", "name", "bogus")] + \
              [("problem", k) for k in ("dim", "eig_min", "eig_max", "rotate", "heterogeneity", "x0_scale", "name", "bogus")] + \
              [("noise", k) for k in ("name", "scale", "nu")] + \
              [("series.0", k) for k in ("lr", "k", "ratio", "workers", "batch", "schedule", "normalize", "label", "group",
                                         "method", "compressor", "worker", "server", "steps", "noise", "bogus",
                                         "sync", "period", "alpha", "outer_lr", "per_layer", "beta1", "rho")]


def certainly_invalid(key: str, value: Any) -> bool:
    """Mutations any reader of the schema knows are wrong (the fuzzer asserts they are refused)."""
    if key == "bogus":
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return True
    if key in COUNT_KEYS and not is_int(value, 1):
        return True
    if key in ("lr",) and not is_num(value, 0.0, lo_open=True):
        return True
    if key == "seed" and not is_int(value, 0):
        return True
    if key in BOOL_KEYS and not isinstance(value, bool):
        return True
    if key in STR_KEYS and not isinstance(value, str):
        return True
    # with Gaussian noise ν does not apply; the TINY series (dcsgd, dsignsgd) take no optimizer hyperparameters
    return key in ("nu", "beta1", "rho")


def _toml_ok(value: Any) -> bool:
    """Values TOML can hold (the fuzzer hands configs over as dicts, as a TOML file would)."""
    return value is not None and not (isinstance(value, dict) and any(not isinstance(k, str) for k in value))


@FUZZ
@given(where=st.sampled_from(CONFIG_KEYS), value=ANY.filter(_toml_ok))
def test_fuzz_configs(where, value, tmp_path_factory):
    import copy

    from compsde.experiments import build, runner

    out = Outcome("configs (resolve, build, run)")
    section, key = where
    cfg = copy.deepcopy(TINY)
    if section.startswith("series"):
        cfg["series"][int(section.split(".")[1])][key] = value
    else:
        cfg[section][key] = value
    invalid = certainly_invalid(key, value)
    # Valid but large sizes are legitimate runs, only long: the estimates refuse the absurd ones, and
    # the fuzzer keeps to runs of a few seconds.
    assume(not (key in COUNT_KEYS and is_int(value, 65)))
    dest = tmp_path_factory.mktemp("fuzz-config")

    def call() -> None:
        exp = build.load(cfg)
        runner.run_experiment(exp, dest, progress=False, plots=False)

    expect(out, call, not invalid, (key,))


# ---- the command line --------------------------------------------------------------------------

SET_VALUES = st.one_of(st.sampled_from(["0", "-1", "1e400", "nan", "inf", "[1]", "{a = 1}", "true", '"x"', "",
                                        "9223372036854775808", "1e-320", "'$\\\\frac{'", "2", "0.5"]),
                       st.floats(0.001, 8.0).map(lambda v: f"{v:.3g}"), st.integers(1, 16).map(str),
                       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8))


def _cli(argv: list[str], capsys: Any) -> tuple[int, str]:
    from compsde.experiments.cli import main

    with deadline():
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own usage errors: status 2 and a usage line
            code = e.code if isinstance(e.code, int) else 2
    err = capsys.readouterr().err
    return code, err


def _check_cli(out: Outcome, code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = [ln for ln in err.strip().splitlines() if ln]
        assert lines and (lines[-1].startswith("error: ") or "error:" in lines[-1]), err
        out.counts["invalid refused"] += 1
    else:
        out.counts["valid accepted"] += 1


@FUZZ
@given(cmd=st.sampled_from(["run", "track"]), where=st.sampled_from(CONFIG_KEYS), text=SET_VALUES,
       before=st.booleans())
def test_fuzz_cli_run_and_track(cmd, where, text, before, tmp_path_factory, capsys):
    from compsde.experiments import tomlio

    out = Outcome("CLI run/track --set")
    d = tmp_path_factory.mktemp("fuzz-cli")
    cfg = d / "tiny.toml"
    cfg.write_text(tomlio.dumps(TINY))
    section, key = where
    assume(not (key in COUNT_KEYS and text.strip().isdigit() and 65 <= int(text) < 10**9))
    item = f"{section}.{key}={text}"
    sets = ["--set", item]
    argv = [cmd, *sets, str(cfg)] if before else [cmd, str(cfg), *sets]
    code, err = _cli([*argv, "--out", str(d / "o"), "--no-progress", "--no-plots"], capsys)
    _check_cli(out, code, err)


@FUZZ
@given(method=st.one_of(st.sampled_from(["dsgd", "dcsgd", "dsignsgd", "adam", "nope"]), st.text(max_size=4)),
       frm=st.lists(st.tuples(st.sampled_from(["lr", "batch", "workers", "omega", "beta1", "x", ""]), SET_VALUES), max_size=5),
       to=st.lists(st.tuples(st.sampled_from(["lr", "batch", "workers", "omega", "eps", ""]),
                             st.one_of(SET_VALUES, st.just("same"))), max_size=4),
       flags=st.lists(st.sampled_from(["--json", "--validate", "--repeats=0", "--repeats=4", "--seed=-1", "--model=sde",
                                      "--model=first-order", "--spectrum=1:2:5", "--noise=2", "--grad-norm=0.5"]), max_size=2))
def test_fuzz_cli_scale(method, frm, to, flags, capsys):
    out = Outcome("CLI scale")
    frm_text = ",".join(f"{k}={v}" for k, v in frm)
    to_text = ",".join(f"{k}={v}" for k, v in to)
    code, err = _cli(["scale", method, "--from", frm_text, "--to", to_text, *flags], capsys)
    _check_cli(out, code, err)


@pytest.mark.parametrize("argv, message", [
    (["compressors", "--dim", "3", "--seed", str(2**70)], f"error: --seed must be an integer in [0, {2**64 - 1}], got {2**70}"),
    (["compressors", "--dim", "3", "--seed", "-1"], "error: --seed must be an integer in [0, "),
    (["scale", "dsgd", "--from", "lr=0.1,batch=1,workers=1", "--to", "lr=0.2,batch=same", "--validate", "--seed", str(2**64)],
     f"error: --seed must be an integer in [0, {2**64 - 1}], got {2**64}"),
    (["scale", "dsgd", "--from", "lr=0.1,lr=0.2,batch=1,workers=1", "--to", "lr=0.3,batch=same"],
     "error: --from: lr is given twice"),
    (["scale", "dsgd", "--from", "lr=1,batch=1,workers=1", "--to", "lr=0.3,lr=0.4,batch=same"], "error: --to: lr is given twice"),
    (["scale", "dsgd", "--from", "lr=1e300,batch=1e300,workers=1", "--to", "lr=1e-300,workers=same"],
     "error: --from: batch must be a whole number ≥ 1 and ≤ 9223372036854775807, got 1e+300"),
    (["scale", "dsgd", "--from", "lr=1e300,batch=1e18,workers=1", "--to", "lr=1e-300,workers=same", "--model", "first-order"],
     "error: the rule needs batch = 0.0, which underflows to 0"),
    (["scale", "dsgd", "--from", "lr=1,batch=1,workers=1", "--to", "lr=1e-10,workers=same", "--model", "first-order"],
     "error: the rule needs batch = 1e-10, which rounds to 0"),
    (["scale", "dsgd", "--from", "lr=1,batch=1,workers=1", "--to", "lr=1e-10,workers=same"],
     "error: --from: lr = 1 gives η h_max = 2 ≥ 2: the discrete model's stationary loss is infinite there (valid: η h_max < 2, "
     "here lr < 1, with h_max = 2 from the spectrum; pass --spectrum"),
    (["scale", "dcsgd", "--from", "lr=0.1,batch=1,workers=1,omega=0", "--to", "omega=3,lr=same,workers=same", "--spectrum", "1:2"],
     "error: --spectrum: expected EIG_MIN:EIG_MAX:DIM (e.g. 0.5:2:20), got '1:2'"),
])
def test_cli_seed_and_scale_refusals(argv, message, capsys):
    code, err = _cli(argv, capsys)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_cli_scale_prints_no_endless_numbers(capsys):
    from compsde.experiments.cli import main

    assert main(["scale", "dsgd", "--from", "lr=1e20,batch=1,workers=1", "--to", "lr=2e20,batch=same", "--model", "first-order"]) == 0
    out = capsys.readouterr().out
    assert "1e+20" in out and "100000000000000000000" not in out, out


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(["compressors", "presets", "run", "--dim", "--samples", "--names",
                                                "--seed", "--version", "--backend", "torch", "--timeout", "--workers",
                                                "--checkpoint-every", "--resume", "noise-resilience", "--out", ""]),
                               SET_VALUES), min_size=1, max_size=5))
def test_fuzz_cli_anything(argv, capsys, tmp_path_factory):
    """Arbitrary argument lists: a usage error or a clean refusal, never a traceback. Runs that would
    start (a preset or processes) are not generated: --out points nowhere useful and the torch backend
    is only given options it must refuse before launching."""
    out = Outcome("CLI arbitrary arguments")
    if "run" in argv and ("noise-resilience" in argv or "torch" in argv):
        argv = [a for a in argv if a not in ("noise-resilience",)] + ["--set", "run.steps=0"]
    code, err = _cli(argv, capsys)
    _check_cli(out, code, err)


# ---- the DDP communication hook ----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_rank_group(tmp_path_factory):
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("store") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@FUZZ
@given(compressor=st.one_of(st.sampled_from(["sign", "top-k", "rand-k", "natural", "qsgd", "identity"]), ANY),
       error_feedback=st.one_of(st.booleans(), ANY), aggregation=st.one_of(st.sampled_from(["mean", "majority"]), ANY),
       seed=st.one_of(st.integers(0, 10), ANY), ratio=st.one_of(st.none(), st.floats(0.05, 1.0), ANY))
def test_fuzz_ddp_hook(compressor, error_feedback, aggregation, seed, ratio, one_rank_group):
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from compsde.distributed import comm_hook

    out = Outcome("DDP comm_hook")
    sparse = compressor in ("top-k", "rand-k")
    params = {} if ratio is None else {"ratio": ratio}
    valid = (isinstance(compressor, str) and compressor in ("sign", "top-k", "rand-k", "natural", "qsgd", "identity")
             and isinstance(error_feedback, bool) and aggregation in ("mean", "majority") and is_int(seed, 0, 2**64 - 1)
             and ((sparse and is_num(ratio, 0.0, 1.0, lo_open=True)) or (not sparse and ratio is None)))

    def call() -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EF around an unbiased compressor warns, as it should
            state, hook = comm_hook(compressor, error_feedback=error_feedback, aggregation=aggregation, seed=seed,
                                    **params)
        model = DDP(nn.Linear(3, 1).double())
        model.register_comm_hook(state, hook)
        model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()

    expect(out, call, valid, ("compressor", "error_feedback", "aggregation", "seed", "ratio", "k"))


# ---- networks and data files ---------------------------------------------------------------------

NETWORK_ARGS = {
    "dataset": lambda v: v in ("digits", "breast-cancer", "teacher", "mixture"),
    "hidden": lambda v: (is_int(v, 1, 1 << 20) or (isinstance(v, list) and 0 < len(v) <= 64
                                                    and all(is_int(h, 1, 1 << 20) for h in v))),
    "split": lambda v: v in ("iid", "dirichlet"), "alpha": lambda v: is_num(v, 0.0, 1e6, lo_open=True),
    "eval_samples": lambda v: is_int(v, 1, 1 << 24), "sde_samples": lambda v: is_int(v, 2, 1 << 16),
    "test_fraction": lambda v: is_num(v, 0.0, 1.0, lo_open=True, hi_open=True),
    "seed": lambda v: is_int(v, 0, 2**64 - 1), "path": lambda v: v is None,
}


#: Values each key accepts, drawn half the time (the other half: anything, from ANY).
NETWORK_VALID = {
    "dataset": st.sampled_from(["digits", "breast-cancer", "teacher", "mixture"]),
    "hidden": st.one_of(st.integers(1, 64), st.lists(st.integers(1, 64), min_size=1, max_size=3)),
    "split": st.sampled_from(["iid", "dirichlet"]), "alpha": st.floats(0.01, 1e3),
    "eval_samples": st.integers(1, 2000), "sde_samples": st.integers(2, 100), "test_fraction": st.floats(0.01, 0.99),
    "seed": st.integers(0, 2**64 - 1), "path": st.none(),
}


@FUZZ
@given(case=st.sampled_from(sorted(NETWORK_ARGS)).flatmap(lambda k: st.tuples(st.just(k), st.one_of(NETWORK_VALID[k], ANY))),
       workers=st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), ANY),
       batch=st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), ANY))
def test_fuzz_network_problems(case, workers, batch):
    """A network problem (an MLP on bundled data) with one mutated key, then one simulated step: invalid
    keys are refused by name; valid ones train or are refused with a ValueError (a Dirichlet split
    leaving a worker without samples, say)."""
    key, value = case
    out = Outcome("network problems + NetworkOracle")
    valid = NETWORK_ARGS[key](value) and is_int(workers, 1) and is_int(batch, 1)

    def call() -> None:
        net = problems.make("mlp", **{"hidden": [4], key: value})
        o = net.oracle(workers=workers, batch=batch)
        if workers <= 64 and batch <= 64:
            simulate(o, algorithms.make("dsignsgd"), Schedule("constant", 0.01, 1), repeats=1)

    expect(out, call, valid, (key, "workers", "batch", "dataset", "alpha", "hidden"))


@FUZZ
@given(kind=st.sampled_from(["idx", "cifar", "text", "libsvm"]), data=st.binary(max_size=64),
       header=st.sampled_from([b"", b"\x00\x00\x08\x01", b"\x00\x00\x08\x03\x00\x00\x00\x02", b"\x80\x04}q\x00",
                               b"\xff\xff\xff\xff", b"1 1:0.5\n", b"\xef\xbb\xbf"]))
def test_fuzz_data_files(kind, data, header, tmp_path_factory):
    """Generated bytes as each file format: a ValueError naming the file, or a successful read."""
    from compsde.objectives import data as D

    out = Outcome("data file loaders")
    folder = tmp_path_factory.mktemp("f")
    path = folder / "f.bin"
    path.write_bytes(header + data)
    read = {"idx": lambda: D.load_idx(path), "cifar": lambda: D.load_cifar10(path),
            "text": lambda: D.text_windows(D._text_file(path), 2), "libsvm": lambda: D.load_libsvm(path)}[kind]

    def call() -> None:
        try:
            read()
        except ValueError as e:
            assert str(path) in str(e) or "text has" in str(e), f"the message does not name the file: {e}"
            raise

    expect(out, call, True, ())


SYNC_VALID = {"period": lambda v: is_int(v, 1, 1 << 40), "alpha": lambda v: v is None or is_num(v, 0.0, 1e6, lo_open=True),
              "power": lambda v: is_num(v, 0.0, 16.0, lo_open=True), "warmup_steps": lambda v: is_int(v, 0),
              "switch_step": lambda v: is_int(v, 0)}


@FUZZ
@given(name=st.one_of(*[st.sampled_from(["every-step", "constant", "post-local", "qsr"])] * 3, ANY),
       key=st.sampled_from(sorted(SYNC_VALID)), value=st.one_of(st.integers(1, 10), st.floats(0.01, 2.0), ANY),
       lr=st.one_of(*[st.floats(0.0, 1.0)] * 3, ANY), step=st.one_of(*[st.integers(0, 100)] * 3, ANY))
def test_fuzz_sync_schedules(name, key, value, lr, step):
    """SyncSchedule and next_period: bad names, keys, values, learning rates and steps are refused by name."""
    from compsde.algorithms.sync import SYNC_PARAMS, SyncSchedule

    out = Outcome("sync schedules")
    kw = {key: value}
    if name == "qsr" and key != "alpha":
        kw["alpha"] = 0.1
    valid = (isinstance(name, str) and name in SYNC_PARAMS and SYNC_VALID[key](value)
             and (key in SYNC_PARAMS[name] or value == SyncSchedule.__dataclass_fields__[key].default)
             and not (name == "qsr" and key == "alpha" and value is None)
             and is_num(lr, 0.0) and is_int(step, 0))

    def call() -> None:
        s = SyncSchedule(name, **kw)
        h = s.next_period(step, lr, 50)
        assert 1 <= h <= 50

    expect(out, call, valid, ("sync", key, "lr", "step", "alpha"))


ADVISE_BAD = {  # each flag with values `compsde advise` must refuse before any probe or process runs
    "--ranks": ["0", "1", "-2", "65", "1e3", "x", ""],
    "--throttle": ["", "1", "gbit", "0gbit", "1e9gbit", "fast", "1 gbit/s", "-1mbit"],
    "--bandwidth": ["0", "-1", "nan", "inf", "x"],
    "--latency": ["-1", "nan", "inf", "x"],
    "--compute": ["-1", "nan", "inf", "x"],
    "--series": ["-1", "3", "99", "x"],
    "--validate": ["0", "3", "-5", "1e9", "x"],
    "--repeats": ["0", "-1", "x"],
    "--sign-lr": ["0", "-1", "nan", "inf"],
    "--spectrum": ["", "1", "1:2", "2:1:5", "0:1:5", "a:b:c", "1:2:0"],
    "--method": ["", "dcsgd", "nope", "dcsgd:nope", "dcsgd:rand-k:ratio=x", "dcsgd:rand-k:ratio=2", "a:b:c:d"],
}
ADVISE_GOOD = {"--ranks": "2", "--bandwidth": "1e8", "--latency": "1e-4", "--compute": "0.01", "--series": "1",
               "--validate": "20", "--repeats": "1", "--sign-lr": "0.001", "--spectrum": "0.1:2:100",
               "--method": "dsignsgd", "--throttle": "1gbit"}


class _Started(Exception):
    """The probe or the ranks of `compsde advise` started: its arguments were accepted."""


@FUZZ
@given(bad=st.sampled_from(sorted(ADVISE_BAD)), data=st.data(),
       good=st.lists(st.sampled_from(sorted(ADVISE_GOOD)), max_size=3, unique=True))
def test_fuzz_cli_advise(bad, data, good, capsys, tmp_path_factory, monkeypatch):
    """`compsde advise` with one bad value (``ADVISE_BAD``) or an arbitrary one among valid options: a bad value, or
    a combination that conflicts (--ranks with --bandwidth, --throttle without --ranks), exits 2 with one error line
    and no traceback before the probe or any rank starts, and writes nothing."""
    import compsde.advise as advise_mod
    from compsde.advise import ranks as ranks_mod

    def started(*a, **k):
        raise _Started

    monkeypatch.setattr(advise_mod, "probe_oracle", started)
    monkeypatch.setattr(ranks_mod, "measure_series", started)
    known_bad = data.draw(st.booleans())
    value = data.draw(st.sampled_from(ADVISE_BAD[bad]) if known_bad else SET_VALUES)
    out_file = tmp_path_factory.mktemp("advise") / "a.json"
    argv = ["advise", "mlp-sde-tracking", bad, value]
    for flag in good:
        if flag != bad:
            argv += [flag, ADVISE_GOOD[flag]]
    argv += ["--out", str(out_file)]
    outcome = Outcome("CLI advise")
    try:
        code, err = _cli(argv, capsys)
    except _Started:
        assert not known_bad, f"{argv}: a bad value reached the probe"
        outcome.counts["valid accepted"] += 1
        return
    _check_cli(outcome, code, err)
    assert code == 2 and not out_file.exists()
