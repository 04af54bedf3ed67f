"""The SDE of the local methods (``compsde.sde.local``): every worker's own SDE between averagings, the
algorithm's averaging round as a jump at the synchronisation schedule's times.

* Moments: on a quadratic with Gaussian noise, one Euler–Maruyama step of a worker's SDE with dt = η is that
  worker's SGD step in law (linear drift, Gaussian increments), so the SDE's paths and the optimizer's runs
  have the same law at every step, jumps included: the means and variances of x̄, of the workers' mean and of
  their spread, right before and right after an averaging, must agree within the Monte Carlo error. Each
  comparison allows 5 standard errors of the difference of two independent estimates (SE of a mean:
  sd/√M; of a variance: sqrt((μ₄ − s⁴)/M) with the sample's fourth central moment), a two-sided Gaussian
  tail of 6·10⁻⁷ per comparison.
* The jump: given the same states (and the same compressor draws) it is the simulator's averaging bit for
  bit (constant H, QSR, compression with error feedback, an outer optimizer, Local AdamW's averaged state).
* Communication: the rounds, bits, bytes and H the SDE records are the simulator's.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from compsde import algorithms
from compsde.algorithms.schedules import Schedule
from compsde.algorithms.sync import SyncSchedule
from compsde.core.streams import SDE, generator
from compsde.core.trees import leaves
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import models
from compsde.sde.integrators import integrate_schedule
from compsde.sde.local import Averaging, LocalSDE, WorkerOracle
from compsde.sde.tracking import simulate_sde
from compsde.sim import simulate
from compsde.sim.exchange import CommLog, InProcessExchange
from compsde.sim.loop import Loop


def _averaging_steps(sync: SyncSchedule, schedule: Schedule) -> list[int]:
    """The boundaries k (after step k − 1) that end with an averaging, by the schedule's own state machine."""
    state, out = SyncSchedule.init_state(), []
    for k in range(schedule.steps):
        state, averaging = sync.begin(state, k, schedule(k), schedule.steps)
        if averaging:
            out.append(k + 1)
            state = SyncSchedule.end_round(state)
    return out


def _stats(xbar: Tensor, local: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Estimates and their standard errors, per coordinate, over the rows (dim −2): the means and variances of
    x̄ and of the workers' mean, and the mean of the workers' spread (1/K) Σ_k ‖x_k − mean‖²."""
    wmean = local.mean(0)
    spread = (local - wmean).square().sum(-1).mean(0, keepdim=True).T  # (M, 1)
    out = {}
    for name, v in (("xbar", xbar), ("workers_mean", wmean)):
        m = v.shape[0]
        c = v - v.mean(0)
        var = c.square().mean(0)
        out[f"{name} mean"] = (v.mean(0), (var / m).sqrt())
        out[f"{name} var"] = (var * m / (m - 1), ((c**4).mean(0) - var**2).clamp_min(0).div(m).sqrt())
    out["spread mean"] = (spread.mean(0), spread.std(0) / math.sqrt(spread.shape[0]))
    return out


MOMENT_CASES = {
    "K=2, constant H=3": (2, SyncSchedule("constant", period=3), Schedule("constant", 0.1, 9)),
    "K=4, constant H=4": (4, SyncSchedule("constant", period=4), Schedule("constant", 0.05, 12)),
    # QSR on a decaying schedule: H = max(2, ⌊(0.15/η)²⌋) grows from 2 to 4 as η falls
    "K=3, QSR": (3, SyncSchedule("qsr", period=2, alpha=0.15), Schedule("cosine", 0.1, 14, {"final_ratio": 0.5})),
}


@pytest.mark.parametrize("case", list(MOMENT_CASES))
def test_moments_before_and_after_an_averaging_match_the_optimizer(case):
    k, sync, schedule = MOMENT_CASES[case]
    prob = problems.make("quadratic", dim=3, heterogeneity=2.0, x0_scale=1.0)
    oracle = Oracle(prob, Noise("gaussian", 1.0), workers=k, dtype=torch.float64)
    algo = algorithms.make("local-sgd", sync=sync)
    stops = _averaging_steps(sync, schedule)
    target = stops[1]  # the second averaging: the workers start it from x̄ ≠ x⁰
    at = {target - 1: "before", target: "after"}
    m = 20000
    # the optimizer: the state right after boundaries target − 1 and target
    loop = Loop(algo, oracle, schedule, repeats=m, seed=1, log_every=schedule.steps,
                exchange=InProcessExchange(algo, m, oracle.dim, oracle.dtype))
    opt = {}
    while loop.k < target:
        loop.step()
        if loop.k in at:
            opt[at[loop.k]] = _stats(loop.state["params"].clone(), loop.state["local"].clone())
    # the SDE: the same boundaries of the solve
    model = models.from_algorithm(oracle, algo, schedule.lr)
    assert isinstance(model, LocalSDE) and model.noise_type == "block-diagonal"
    sde = {}

    def observe(n: int, z: Tensor) -> None:
        if n in at:
            sde[at[n]] = _stats(model.params(z).clone(), model.worker_params(z).clone())

    log = CommLog()
    z0 = model.initial(oracle.x0().expand(m, oracle.dim).contiguous())
    integrate_schedule(model, z0, lr=schedule, steps=target, generator=generator(2, SDE),
                       events=model.events(log, m, oracle.dtype, schedule), observe=observe)
    assert log.rounds == 2
    for when in ("before", "after"):
        for name, (a, se_a) in opt[when].items():
            b, se_b = sde[when][name]
            tol = 5 * (se_a.square() + se_b.square()).sqrt() + 1e-12
            assert ((a - b).abs() <= tol).all(), (when, name, a, b, tol)
    # after an averaging every worker restarts from x̄: no spread, in both (up to the rounding of their mean)
    assert float(opt["after"]["spread mean"][0]) < 1e-25 and float(sde["after"]["spread mean"][0]) < 1e-25
    assert float(sde["before"]["spread mean"][0]) > 0.01  # the workers drift apart between averagings


JUMP_CASES = {
    "local-sgd, constant H": ("local-sgd", {"sync": SyncSchedule("constant", period=3)}),
    "local-sgd, QSR": ("local-sgd", {"sync": SyncSchedule("qsr", period=2, alpha=0.07)}),
    "top-k, error feedback, Nesterov outer step": (
        "local-sgd", {"sync": SyncSchedule("constant", period=2), "compressor": "top-k", "k": 2,
                      "error_feedback": True, "server": {"momentum": 0.7, "nesterov": True}, "outer_lr": 0.8}),
    "rand-k (the simulator's draws)": ("local-sgd", {"sync": SyncSchedule("constant", period=2), "compressor": "rand-k",
                                                     "k": 2}),
    "local-adamw, averaged state": ("local-adamw", {"sync": SyncSchedule("constant", period=3), "average_state": True,
                                                    "worker": {"weight_decay": 0.1}}),
}


@pytest.mark.parametrize("case", list(JUMP_CASES))
def test_the_jump_is_the_simulators_averaging_bit_for_bit(case):
    """At every averaging of a run: the simulator's states right before its averaging (its last local step
    replayed with the algorithm's own ``local_step``) mapped into the SDE's state, the jump applied, and the
    result compared with the simulator's state after the step, exactly."""
    name, kw = JUMP_CASES[case]
    k, d, rows = 3, 5, 4
    prob = problems.make("quadratic", dim=d, heterogeneity=1.5)
    oracle = Oracle(prob, Noise("none"), workers=k, dtype=torch.float64)  # deterministic local steps: replayable
    algo = algorithms.make(name, **kw)
    schedule = Schedule("cosine", 0.05, 12)
    model = models.from_algorithm(oracle, algo, schedule.lr)
    assert isinstance(model, LocalSDE)
    log = CommLog()
    event = model.events(log, rows, oracle.dtype, schedule)[0]
    assert isinstance(event, Averaging)
    loop = Loop(algo, oracle, schedule, repeats=rows, seed=3, log_every=1,
                exchange=InProcessExchange(algo, rows, d, oracle.dtype))
    stops = _averaging_steps(algo.sync, schedule)
    assert len(stops) >= 3
    z = model.initial(oracle.x0().expand(rows, d).contiguous())
    for stop in stops:
        while loop.k < stop - 1:
            loop.step()
        st, lr = loop.state, schedule(loop.k)
        new_x, new_w = algo.local_step(oracle.grads(st["local"], 0, k, None), st["worker"], st["local"], lr)
        z[:, :d] = st["params"]
        model.worker_params(z).copy_(new_x)
        if name == "local-adamw":
            adam = new_w[0] if isinstance(new_w, tuple) else new_w
            blocks = model.blocks(z)
            blocks[..., d: 2 * d] = adam["m"]
            blocks[..., 2 * d: 3 * d] = adam["v"]
        streams = loop.streams.state()  # the compressor draws the simulator's step is about to make
        event.average(z, None, draw=lambda count: loop.draw([] if count == 1 and algo.compressor.shared_randomness
                                                            else list(range(k))))
        loop.streams.load_state(streams)
        loop.step()
        after = loop.state
        assert torch.equal(model.params(z), after["params"]), (case, stop)
        assert torch.equal(model.worker_params(z), after["local"]), (case, stop)
        if algo.error_feedback:
            assert torch.equal(event.ef, after["ef"])
        if algo.server.stateful:
            for a, b in zip(leaves(event.server), leaves(after["server"]), strict=True):
                assert torch.equal(a, b)
        if name == "local-adamw":
            adam = after["worker"][0] if isinstance(after["worker"], tuple) else after["worker"]
            assert torch.equal(model.blocks(z)[..., d: 2 * d], adam["m"])
            assert torch.equal(model.blocks(z)[..., 2 * d: 3 * d], adam["v"])
    assert log.totals() == loop.exchange.log.totals()  # one round per averaging, the same bits and bytes


ROUND_CASES = {
    "every step": ("local-sgd", {"sync": SyncSchedule("every-step")}),
    "constant H = 5": ("local-sgd", {"sync": SyncSchedule("constant", period=5)}),
    "post-local": ("local-sgd", {"sync": SyncSchedule("post-local", period=4, switch_step=10)}),
    "QSR": ("local-sgd", {"sync": SyncSchedule("qsr", period=2, alpha=0.1)}),
    "QSR p = 1, Local AdamW, averaged state": ("local-adamw", {"sync": SyncSchedule("qsr", period=2, alpha=0.02, power=1.0),
                                                                "average_state": True}),
    "scaled sign with error feedback": ("local-sgd", {"sync": SyncSchedule("constant", period=3),
                                                      "compressor": "scaled-sign", "error_feedback": True}),
}


@pytest.mark.parametrize("case", list(ROUND_CASES))
def test_the_sde_records_the_simulators_communication(case):
    name, kw = ROUND_CASES[case]
    algo = algorithms.make(name, **kw)
    oracle = Oracle(problems.make("quadratic", dim=6, heterogeneity=0.5), Noise("gaussian", 0.5), workers=4,
                    dtype=torch.float32)
    schedule = Schedule("cosine", 0.05 if name == "local-sgd" else 0.004, 40)
    opt = simulate(oracle, algo, schedule, repeats=3, log_every=3)
    sde, model = simulate_sde(oracle, algo, schedule, paths=3, log_every=3)
    assert isinstance(model, LocalSDE)
    assert torch.equal(opt.rounds, sde.rounds) and int(sde.rounds[-1]) == len(_averaging_steps(algo.sync, schedule))
    assert torch.equal(opt.bits, sde.bits) and torch.equal(opt.bytes, sde.bytes)
    assert opt.sync_period is not None and torch.equal(opt.sync_period, sde.sync_period)


def test_local_adamw_is_every_worker_running_the_adamw_sde():
    oracle = Oracle(problems.make("quadratic", dim=4, heterogeneity=1.0), Noise("gaussian", 1.0), workers=2)
    algo = algorithms.make("local-adamw", sync=SyncSchedule("constant", period=2), worker={"weight_decay": 0.05})
    model = models.from_algorithm(oracle, algo, 0.01)
    assert model.state_dim == 4 + 2 * (3 * 4 + 2) and model.noise_dim == 2 * 4
    z = model.initial(torch.randn(3, 4, dtype=torch.float64))
    model.blocks(z)[..., 4:] = torch.rand(2, 3, 2 * 4 + 2, dtype=torch.float64)  # moments and ι's away from 0
    xi = torch.randn(3, model.noise_dim, dtype=torch.float64)
    drift, noise = (t.clone() for t in model.evaluate(0.0, z, xi.clone(), model.step_args()))
    assert torch.equal(drift[:, :4], torch.zeros(3, 4)) and torch.equal(noise[:, :4], torch.zeros(3, 4))
    for k in range(2):  # worker k's block: AdamW's SDE on worker k's objective and noise, its own ξ block
        one = models.from_algorithm(WorkerOracle(oracle, k), algorithms.make("adamw", weight_decay=0.05), 0.01)
        m, s = one.evaluate(0.0, model.blocks(z)[k].contiguous(), xi[:, 4 * k: 4 * k + 4].clone(), one.step_args())
        torch.testing.assert_close(model.blocks(drift)[k], m, rtol=0, atol=0)
        torch.testing.assert_close(model.blocks(noise)[k], s, rtol=0, atol=0)
    assert "adamw SDE" in model.description and "every 2 steps" in model.description


def test_worker_oracle_is_one_worker_of_its_parent():
    oracle = Oracle(problems.make("quadratic", dim=3, heterogeneity=1.0), Noise("gaussian", [1.0, 2.0, 3.0]), workers=3)
    x = torch.randn(5, 3, dtype=torch.float64)
    for i in range(3):
        one = WorkerOracle(oracle, i)
        assert one.workers == 1 and torch.equal(one.mean_grads(x), oracle.mean_grads(x)[i: i + 1])
        assert torch.equal(one.grad(x), oracle.mean_grads(x)[i])
        assert torch.equal(one.noise_variances(), oracle.noise_variances()[i: i + 1])
        assert one.to(torch.float32).mean_grads(x.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="index"):
        WorkerOracle(oracle, 3)
    with pytest.raises(ValueError, match="worker 0 only"):
        WorkerOracle(oracle, 0).mean_grads(x, 1, 2)


def test_refusals_say_why():
    quad = problems.make("quadratic", dim=3)
    gauss = Oracle(quad, Noise("gaussian", 1.0), workers=2)
    with pytest.raises(ValueError, match=r"inner step \(momentum.*not plain SGD or AdamW.*momentum buffer"):
        models.from_algorithm(gauss, algorithms.make("local-sgd", sync=SyncSchedule("constant", period=2),
                                                     worker={"momentum": 0.9}), 0.1)
    with pytest.raises(ValueError, match="finite gradient-noise variance"):  # each worker's SGD SDE needs Var g < ∞
        models.from_algorithm(Oracle(quad, Noise("student-t", 1.0, 2.0), workers=2),
                              algorithms.make("local-sgd", sync=SyncSchedule("constant", period=2)), 0.1)
    model = models.from_algorithm(gauss, algorithms.make("local-sgd", sync=SyncSchedule("constant", period=2)), 0.1)
    with pytest.raises(ValueError, match="learning-rate schedule"):  # the averaging times depend on η_k
        model.events(CommLog(), 2, torch.float64)
    rand = models.from_algorithm(gauss, algorithms.make("local-sgd", sync=SyncSchedule("constant", period=1),
                                                        compressor="rand-k", k=1), 0.1)
    ev = rand.events(CommLog(), 2, torch.float64, Schedule("constant", 0.1, 2))[0]
    with pytest.raises(ValueError, match="draws its compressor's randomness"):
        ev.average(rand.initial(torch.zeros(2, 3, dtype=torch.float64)), None)


def test_local_sgd_sde_on_a_network_uses_each_workers_shard():
    from compsde.objectives.network import MLPNetwork

    oracle = MLPNetwork("digits", hidden=(8,), sde_samples=16).oracle(workers=2, batch=8, dtype=torch.float64)
    algo = algorithms.make("local-sgd", sync=SyncSchedule("constant", period=2))
    model = models.from_algorithm(oracle, algo, 0.1)
    d = oracle.dim
    assert model.rank == 16 and model.noise_dim == 2 * (d + 16)
    x = oracle.x0().expand(2, d).contiguous()
    for i in range(2):
        torch.testing.assert_close(oracle.mean_grads(x, i, i + 1), oracle.mean_grads(x)[i: i + 1], rtol=0, atol=0)
        torch.testing.assert_close(oracle.noise_factors(x, i, i + 1), oracle.noise_factors(x)[i: i + 1], rtol=0, atol=0)
    schedule = Schedule("constant", 0.1, 4)
    opt = simulate(oracle, algo, schedule, repeats=2, log_every=2)
    sde, _ = simulate_sde(oracle, algo, schedule, paths=2, log_every=2)
    assert torch.equal(opt.rounds, sde.rounds) and torch.isfinite(sde.loss).all()
    assert float(sde.loss[-1].mean()) < float(sde.loss[0].mean())


def test_track_overlays_the_local_methods_sdes(tmp_path):
    """``compsde track local-sgd-sde`` at a small size: every series (quadratic and MLP; constant H, QSR, Local
    AdamW) gets its SDE, whose rows record the optimizer's rounds and H."""
    import csv
    import json

    from compsde.experiments import cli

    out = tmp_path / "track"
    assert cli.main(["track", "local-sgd-sde", "--no-progress", "--no-plots", "--out", str(out), "--set",
                     "run.steps=12", "run.repeats=1", "run.log_every=4"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert all(s["sde"]["noise_type"] == "block-diagonal" and s["tracking"]["mean_rel_error"] is not None
               for s in summary["series"])
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for s in summary["series"]:
        mine = {src: [(r["step"], r["comm_rounds"], r["sync_period"], r["bits"]) for r in rows
                      if r["series"] == s["label"] and r["source"] == src] for src in ("optimizer", "sde")}
        assert mine["optimizer"] == mine["sde"] and mine["sde"][-1][1] != "0", s["label"]


def test_local_sgd_sde_with_noise_shaped_by_the_problem():
    """On the sharpness valley the noise's covariance depends on the point (``Oracle.noise_factors``): each
    worker's block uses its own factors at its own iterate, and the SDE records the simulator's rounds."""
    oracle = Oracle(problems.make("sharpness-valley", dim=5), Noise("gaussian", 1.0), workers=3)
    algo = algorithms.make("local-sgd", sync=SyncSchedule("constant", period=4))
    model = models.from_algorithm(oracle, algo, 0.05)
    assert model.rank == 5 and model.noise_dim == 3 * (5 + 5)
    x = torch.randn(2, 5, dtype=torch.float64)
    f = oracle.noise_factors(x)
    for i in range(3):
        assert torch.equal(WorkerOracle(oracle, i).noise_factors(x), f[i: i + 1])
    schedule = Schedule("constant", 0.05, 40)
    opt = simulate(oracle, algo, schedule, repeats=64, log_every=10)
    sde, _ = simulate_sde(oracle, algo, schedule, paths=64, log_every=10)
    assert torch.equal(opt.rounds, sde.rounds) and int(sde.rounds[-1]) == 10
    assert torch.isfinite(sde.loss).all()
