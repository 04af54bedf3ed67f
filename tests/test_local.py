"""Local methods: synchronisation schedules (QSR on the paper's values) and the LocalSGD wrapper for users'
own loops under a real 2-process gloo group."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from compsde.algorithms.sync import SyncSchedule

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("lr,h", [(0.008, 4), (0.004, 19), (0.002, 76), (0.001, 306)])
def test_qsr_on_the_papers_values(lr, h):
    # α = 0.0175, H_base = 4: H = max(4, ⌊(α/η)²⌋)
    assert SyncSchedule("qsr", period=4, alpha=0.0175).next_period(100, lr, None) == h


def test_qsr_power_warmup_and_cap():
    s = SyncSchedule("qsr", period=4, alpha=0.0175, warmup_steps=50)
    assert s.next_period(10, 1e-5, None) == 4  # warm-up: the base period, whatever η
    assert s.next_period(50, 0.001, None) == 306
    assert s.next_period(50, 0.001, 100) == 100  # capped by the steps remaining
    assert s.next_period(50, 0.001, 0) == 1
    assert SyncSchedule("qsr", period=4, alpha=0.0175, power=1.0).next_period(0, 0.001, None) == 17  # ⌊17.5⌋
    assert s.next_period(60, 0.0, None) == 4  # η = 0 (a schedule's last step): the base period
    assert SyncSchedule("qsr", period=1, alpha=1.0).next_period(0, 1e-300, None) == 2**62  # no overflow


def test_other_schedules():
    assert SyncSchedule().next_period(5, 0.1, None) == 1
    assert SyncSchedule("constant", period=8).next_period(0, 0.1, 5) == 5
    post = SyncSchedule("post-local", period=8, switch_step=100)
    assert [post.next_period(k, 0.1, None) for k in (0, 99, 100, 500)] == [1, 1, 8, 8]


@pytest.mark.parametrize("kw,match", [
    ({"name": "qsr", "period": 4}, "needs alpha"),
    ({"name": "qsr", "period": 4, "alpha": -1.0}, "alpha"),
    ({"name": "constant", "period": 0}, "period"),
    ({"name": "constant", "period": 4, "alpha": 0.1}, "does not take alpha"),
    ({"name": "every-step", "period": 3}, "does not take period"),
    ({"name": "hourly"}, "sync must be one of"),
    ({"name": "qsr", "alpha": 0.1, "power": math.inf}, "power"),
    ({"name": "post-local", "period": 2, "switch_step": -1}, "switch_step"),
])
def test_bad_schedules_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        SyncSchedule(**kw)


def test_local_sgd_wrapper_in_a_real_group(tmp_path):
    """2 gloo processes (tests/local_sgd_ranks.py): averaging exactly at the steps QSR gives, replicas equal
    right after each averaging and different between, resume mid-period, disagreeing ranks refused."""
    from compsde.distributed.launch import spawn

    out = tmp_path / "local.json"
    spawn(2, [str(ROOT / "tests" / "local_sgd_ranks.py"), str(out)], timeout=60, jobdir=tmp_path / "job")
    r = json.loads(out.read_text())
    # the schedule replayed: lr_k = 0.02/√(1 + k); H decided at the step that follows each averaging
    sched, expected, k = SyncSchedule("qsr", period=2, alpha=0.06), [], 0
    while k < 40:
        k += sched.next_period(k, 0.02 / math.sqrt(1 + k), 40 - k)
        expected.append(k)
    assert r["averaged"] == expected and expected[-1] == 40 and len(set(b - a for a, b in zip([0] + expected, expected))) > 1
    assert r["equal_after"] and r["differ_between"]
    assert r["rounds"] == len(expected) and r["bytes"] == len(expected) * 7 * 4  # 6 weights + 1 bias, float32
    assert r["resume_equal"] and r["disagreement_refused"]


# ---- local methods in the simulator and on torch.distributed -------------------------------------

def _oracle(**kw):
    from compsde.objectives import Noise, Oracle, problems

    return Oracle(problems.make("quadratic", dim=6, **kw), Noise("gaussian", 0.5), workers=4, batch=1)


def test_local_sgd_every_step_is_dsgd():
    import torch

    from compsde import Schedule, algorithms, simulate

    o = _oracle(heterogeneity=1.0)
    a = simulate(o, algorithms.make("dsgd"), Schedule("cosine", 0.1, 30), repeats=3, log_every=10)
    b = simulate(o, algorithms.make("local-sgd", sync=SyncSchedule()), Schedule("cosine", 0.1, 30), repeats=3, log_every=10)
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-14)  # x̄ − mean(x̄ − x_i) vs x − η mean g_i: round-off
    assert torch.equal(a.rounds, b.rounds) and b.sync_period.tolist() == [1, 1, 1, 1]


def test_local_steps_without_noise_on_identical_workers_are_gradient_descent():
    """Homogeneous workers without noise take the same local steps: averaging changes nothing, so any
    period gives plain gradient descent, with one communication round per period."""
    import torch

    from compsde import Schedule, algorithms, simulate
    from compsde.objectives import Oracle, problems

    o = Oracle(problems.make("quadratic", dim=6), None, workers=3, batch=1)
    gd = simulate(o, algorithms.make("dsgd"), Schedule("constant", 0.1, 24), log_every=24)
    loc = simulate(o, algorithms.make("local-sgd", sync=SyncSchedule("constant", period=5)), Schedule("constant", 0.1, 24), log_every=24)
    torch.testing.assert_close(gd.x, loc.x, rtol=1e-12, atol=1e-14)
    assert int(loc.rounds[-1]) == 5  # periods 5, 5, 5, 5, then 4 (capped by the steps left)


def test_local_periods_rounds_and_bits_follow_the_schedule():
    from compsde import Schedule, algorithms, simulate

    sync = SyncSchedule("qsr", period=2, alpha=0.3)
    sched = Schedule("cosine", 0.1, 40)
    algo = algorithms.make("local-adamw", "top-k", k=2, error_feedback=True, sync=sync)
    tr = simulate(_oracle(heterogeneity=1.0), algo, sched, repeats=2, log_every=1)
    ends, k = [], 0
    while k < 40:
        k += sync.next_period(k, sched(k), 40 - k)
        ends.append(k)
    rounds = tr.rounds.tolist()
    assert [s for s in range(1, 41) if rounds[s] == rounds[s - 1] + 1] == ends  # an averaging exactly there
    assert tr.bits[-1] == len(ends) * algo.bits(6)
    assert tr.sync_period[0] == ends[0] and tr.sync_period[-1] == ends[-1] - ends[-2]


def test_local_methods_in_configs_and_their_errors():
    from compsde.experiments import build as config

    def cfg(**series):
        return {"run": {"steps": 4, "repeats": 1}, "problem": {"name": "quadratic", "dim": 4},
                "series": [{"lr": 0.1, "workers": 2, **series}]}

    exp = config.build(config.resolve(cfg(method="local-sgd", sync="qsr", period=2, alpha=0.2, schedule="cosine")))
    assert exp.series[0].algorithm.sync == SyncSchedule("qsr", period=2, alpha=0.2)
    assert exp.series[0].label == "Local SGD qsr(period=2,alpha=0.2) cosine"
    for bad, match in [(dict(method="dsgd", period=3), "applies to the local methods"),
                       (dict(method="local-sgd", sync="hourly"), "sync must be one of"),
                       (dict(method="local-sgd", sync="constant", alpha=0.1), "sync 'constant' takes period"),
                       (dict(method="local-sgd", sync="qsr", period=2), "needs alpha"),
                       (dict(method="local-sgd", sync="qsr", alpha=0.1, power=1, schedule="poly"), "ambiguous"),
                       (dict(method="local-adamw", worker={"momentum": 0.9}), "momentum does not apply")]:
        with pytest.raises(ValueError, match=match):
            config.build(config.resolve(cfg(**bad)))


def test_torch_backend_runs_local_methods_as_the_simulator_does(tmp_path):
    import torch

    from compsde.experiments import build as config
    from compsde.experiments.torch_backend import run as run_torch
    from compsde.sim import simulate

    series = [{"method": "local-sgd", "sync": "qsr", "period": 2, "alpha": 0.3, "schedule": "cosine", "lr": 0.1,
               "workers": 4, "worker": {"momentum": 0.5}, "average_state": True},
              {"method": "local-adamw", "sync": "constant", "period": 3, "compressor": "top-k", "k": 2,
               "error_feedback": True, "lr": 0.01, "workers": 4},
              {"method": "local-sgd", "sync": "post-local", "period": 4, "switch_step": 5, "compressor": "rand-k", "k": 3,
               "server": {"momentum": 0.9, "nesterov": True}, "outer_lr": 0.7, "lr": 0.1, "workers": 3}]
    cfg = {"run": {"steps": 16, "repeats": 2, "seed": 2, "log_every": 4, "dtype": "float64"},
           "problem": {"name": "quadratic", "dim": 6, "heterogeneity": 1.0}, "noise": {"name": "gaussian", "scale": 0.5},
           "series": series}
    exp = config.build(config.resolve(cfg), "local")
    res = run_torch(exp, tmp_path / "out", workers=4, timeout=60, progress=False, plots=False)
    for spec, tr in zip(exp.series, res.traces):
        ref = simulate(spec.oracle, spec.algorithm, spec.schedule, repeats=2, seed=2, log_every=4)
        torch.testing.assert_close(tr.x, ref.x, rtol=1e-12, atol=1e-14)  # the all-reduce of plain averaging may round
        assert torch.equal(tr.rounds, ref.rounds) and torch.equal(tr.sync_period, ref.sync_period)
        assert torch.equal(tr.bytes, ref.bytes), spec.label


def test_learning_rate_warm_up_and_the_linear_schedule():
    from compsde import Schedule

    s = Schedule("cosine", 0.1, 110, {"warmup_steps": 10})
    assert [s(k) for k in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert s(10) == pytest.approx(0.1) and s(60) == pytest.approx(0.05)  # cosine over the remaining 100 steps
    lin = Schedule("linear", 0.2, 100, {"final_ratio": 0.5})
    assert [lin(0), lin(50), lin(99)] == pytest.approx([0.2, 0.15, 0.2 * (1 - 0.5 * 99 / 100)])
    with pytest.raises(ValueError, match="warmup_steps"):
        Schedule("constant", 0.1, 10, {"warmup_steps": 11})


def test_qsr_keeps_its_base_period_during_the_learning_rate_warm_up():
    from compsde.experiments import build as config

    cfg = {"run": {"steps": 40, "repeats": 1, "log_every": 1}, "problem": {"name": "quadratic", "dim": 4},
           "series": [{"method": "local-sgd", "sync": "qsr", "period": 2, "alpha": 0.5, "lr": 0.1, "schedule": "cosine",
                       "warmup_steps": 10, "workers": 2}]}
    spec = config.build(config.resolve(cfg)).series[0]
    assert spec.algorithm.sync.warmup_steps == 10 and spec.schedule(0) == pytest.approx(0.01)
    from compsde.sim import simulate

    tr = simulate(spec.oracle, spec.algorithm, spec.schedule, log_every=1)
    assert set(tr.sync_period[:10].tolist()) == {2}  # at η = 0.01..0.1, (α/η)² = 25..2500 would be far larger
    assert max(tr.sync_period.tolist()) > 2


def test_average_state_averages_the_inner_optimizer_at_each_round():
    import torch

    from compsde import Schedule, algorithms
    from compsde.sim.exchange import InProcessExchange
    from compsde.sim.loop import Loop

    o = _oracle(heterogeneity=1.0)
    for avg in (False, True):
        algo = algorithms.make("local-adamw", sync=SyncSchedule("constant", period=3), average_state=avg)
        ex = InProcessExchange(algo, 2, o.dim, o.dtype)
        loop = Loop(algo, o, Schedule("constant", 0.01, 6), repeats=2, seed=0, log_every=3, exchange=ex)
        for _ in range(3):
            loop.step()
        m = loop.state["worker"]["m"]
        assert torch.allclose(m, m[:1].expand_as(m)) == avg  # after the round: equal moments only if averaged
        if avg:
            assert ex.log.rounds == 1 and ex.log.bytes == 3 * 6 * 8  # per repetition: the delta, then m and v (float64)
    with pytest.raises(ValueError, match="average_state"):
        algorithms.make("dsgd", average_state=True)


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_adam_transform_is_torch_adam_and_adamw(decay):
    """x ← x − η u with u from ``adam`` (chained with decoupled weight decay) against torch.optim.Adam(W)
    on the same gradients, 20 steps in float64."""
    import torch

    from compsde.optim import adam, add_decayed_weights, chain

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, dtype=torch.float64, generator=g)
    grads = [torch.randn(7, dtype=torch.float64, generator=g) for _ in range(20)]
    t = chain(adam(0.9, 0.99, 1e-8), add_decayed_weights(decay)) if decay else adam(0.9, 0.99, 1e-8)
    x, st = x0.clone(), t.init(x0)
    p = x0.clone().requires_grad_(True)
    opt = (torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=decay) if decay
           else torch.optim.Adam([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8))
    for gr in grads:
        u, st = t.update(gr, st, x)
        x = x - 0.01 * u
        p.grad = gr.clone()
        opt.step()
    # same formulas; torch applies the decay as p(1 − ηλ) before the step, here as −ηλx inside it: round-off only
    torch.testing.assert_close(x, p.detach(), rtol=1e-12, atol=1e-14)


def test_switching_the_sync_schedule_with_set_drops_the_old_schedules_keys():
    from compsde.experiments.build import load

    exp = load("qsr", ["series.2.sync=constant", "run.steps=4"])
    s = exp.series[2]
    assert s.algorithm.sync.name == "constant" and s.algorithm.sync.period == 4  # period kept, alpha dropped
    assert "alpha" not in s.config


@pytest.mark.parametrize("case", ["diloco-top-k-ef", "rand-k-state-averaged"])
def test_local_sgd_driver_equals_the_simulator(tmp_path, case):
    """``LocalSGD`` for users' loops runs the simulator's algorithm: torch.optim.SGD with momentum as the inner
    optimizer of 2 ranks fed the simulator's gradients, compressed deltas (top-k with error feedback and DiLoCo's
    Nesterov outer step; rand-k, whose indices the receivers replay, with the inner state averaged) end at the
    simulator's iterate, with its rounds and bytes. (Tolerance 1e-12: torch's SGD step x.add_(buf, alpha=−η)
    may round differently from the simulator's x − η·m.)"""
    import sys as _sys

    import torch

    from compsde import algorithms
    from compsde.algorithms.schedules import Schedule
    from compsde.distributed.launch import spawn
    from compsde.sim import simulate

    _sys.path.insert(0, str(ROOT / "tests"))
    import local_sgd_equivalence_ranks as ranks

    out = tmp_path / "eq.json"
    spawn(2, [str(ROOT / "tests" / "local_sgd_equivalence_ranks.py"), str(out), case], timeout=60, jobdir=tmp_path / "job")
    r = json.loads(out.read_text())
    kw = dict(ranks.CASES[case])
    algo = algorithms.make("local-sgd", kw.pop("compressor"), sync=kw.pop("sync"), server=kw.pop("outer", None),
                           worker={"momentum": ranks.MOMENTUM}, **kw)
    tr = simulate(ranks.oracle(2), algo, Schedule("constant", ranks.LR, ranks.STEPS), seed=ranks.SEED,
                  log_every=ranks.STEPS)
    torch.testing.assert_close(torch.tensor(r["x"], dtype=torch.float64), tr.x[0], rtol=1e-12, atol=1e-12)
    assert r["rounds"] == int(tr.rounds[-1]) and r["bytes"] == float(tr.bytes[-1])
    assert not torch.equal(tr.x[0], ranks.oracle(2).x0())
