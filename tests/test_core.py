"""The core's contracts: the layout rules, state as plain data, the transforms against torch.optim,
the per-worker streams, the summation order, and argument checks."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
import torch

import compsde
from compsde import algorithms, optim
from compsde.algorithms.schedules import Schedule
from compsde.core.checks import check_int, check_number, check_seed
from compsde.core.streams import Streams
from compsde.core.tensors import accumulate, check_memory
from compsde.core.trees import put, take, tree_map
from compsde.objectives import Noise, Oracle, problems
from compsde.sim import simulate, simulate_reference


def test_version_and_public_api():
    assert isinstance(compsde.__version__, str) and compsde.__version__[0].isdigit()
    for name in compsde.__all__:
        assert hasattr(compsde, name), name


def test_core_never_imports_the_experiment_layer_and_the_worker_not_the_config():
    code = ("import sys, compsde, compsde.sim, compsde.sde, compsde.sde.scaling, compsde.distributed, "
            "compsde.distributed.worker, compsde.distributed.collectives, compsde.distributed.checkpoint; "
            "print(sorted(m for m in sys.modules if m.startswith('compsde.experiments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("nesterov", [False, True])
def test_server_momentum_is_torch_sgd_momentum(nesterov):
    """One worker, no noise, no compression: DSGD with server-side (Nesterov) momentum is torch.optim.SGD's
    update (dampening 0), bit for bit."""
    prob = problems.make("quadratic", dim=5, rotate=True)
    algo = algorithms.make("dsgd", server={"momentum": 0.9, "nesterov": nesterov})
    tr = simulate(Oracle(prob, Noise("none"), workers=1), algo, Schedule("constant", 0.1, 25), log_every=25)
    x = prob.x0().clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.1, momentum=0.9, nesterov=nesterov)
    for _ in range(25):
        opt.zero_grad()
        x.grad = prob.grad(x.detach())
        opt.step()
    torch.testing.assert_close(tr.x[0], x.detach(), rtol=1e-14, atol=1e-15)


def test_worker_momentum_before_compression_is_signum():
    """Sign of each worker's momentum (Signum, Bernstein et al. 2018) averaged: the worker transform
    runs before compression, and its state is per worker."""
    prob = problems.make("quadratic", dim=4, heterogeneity=1.0)
    algo = algorithms.make("dsignsgd", worker={"momentum": 0.5})
    oracle = Oracle(prob, Noise("gaussian", 0.3), workers=3)
    fast = simulate(oracle, algo, Schedule("constant", 0.01, 7), repeats=2, seed=4, log_every=7)
    ref = simulate_reference(oracle, algo, Schedule("constant", 0.01, 7), repeats=2, seed=4, log_every=7)
    assert torch.equal(fast.x, ref.x)
    state = algo.init(torch.zeros(2, 4, dtype=torch.float64), 3)
    assert state["worker"]["momentum"].shape == (3, 2, 4) and state["ef"] is None


def test_decoupled_weight_decay_shrinks_the_iterate():
    t = optim.chain(optim.momentum(0.0), optim.add_decayed_weights(0.5))
    g = torch.zeros(2, 3)
    x = torch.ones(2, 3)
    u, _ = t.update(g, t.init(x), x)
    assert torch.equal(u, 0.5 * x)
    with pytest.raises(ValueError, match="weight_decay needs the parameters"):
        optim.add_decayed_weights(0.1).update(g, None, None)
    assert optim.chain().names == () and optim.chain(optim.normalize()).names == ("normalize",)


def test_state_is_plain_data_that_torch_load_reads_back():
    algo = algorithms.make("ef", compressor="top-k", k=1, worker={"momentum": 0.9}, server={"momentum": 0.5})
    st = algo.init(torch.randn(4, 3, dtype=torch.float64), 2)
    buf = io.BytesIO()
    torch.save(st, buf)
    back = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    flat = lambda s: [t for t in _leaves(s)]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(flat(st), flat(back), strict=True))


def _leaves(tree):
    out = []
    tree_map(lambda t: out.append(t), tree)
    return out


def test_take_and_put_write_a_chunk_back():
    tree = {"a": torch.zeros(5, 2), "n": 3, "b": None, "c": (torch.ones(5, 1),)}
    part = take(tree, 1, 3)
    new = tree_map(lambda t: t + 7, part)
    out = put(tree, 1, 3, new)
    assert out["n"] == 3 and out["b"] is None  # a non-tensor leaf is not per-worker: it cannot change
    assert torch.equal(tree["a"][1:3], torch.full((2, 2), 7.0)) and torch.equal(tree["a"][0], torch.zeros(2))
    assert torch.equal(tree["c"][0][1:3], torch.full((2, 1), 8.0))


def test_streams_are_per_worker_and_restorable():
    a, b = Streams(3, 4), Streams(3, 4, noise=[2])
    x = a.draw("noise", [2], lambda g: torch.randn(5, generator=g))
    y = b.draw("noise", [2], lambda g: torch.randn(5, generator=g))
    assert torch.equal(x, y)  # worker 2 draws the same alone as with the others
    st = b.state()
    z1 = b.draw("noise", [2], lambda g: torch.randn(5, generator=g))
    b.load_state(st)
    assert torch.equal(b.draw("noise", [2], lambda g: torch.randn(5, generator=g)), z1)
    with pytest.raises(ValueError, match="holds no noise stream for worker 1"):
        b.draw("noise", [1], lambda g: torch.randn(1, generator=g))
    with pytest.raises(ValueError, match="seed must be an integer in"):
        Streams(2**64, 1)


def test_messages_are_summed_in_worker_order():
    m = torch.tensor([[1e16], [1.0], [-1e16], [1.0]], dtype=torch.float64)
    total = None
    for j in range(4):
        total = accumulate(total, m[j])
    assert float(total[0]) == ((1e16 + 1.0) - 1e16) + 1.0  # = 1.0: left to right, not pairwise (= 2.0)
    assert float(algorithms.aggregation.sum_messages(m)[0]) == 1.0


def test_checks_name_the_argument_value_and_range():
    with pytest.raises(ValueError, match=r"workers must be an integer ≥ 1, got True"):
        check_int("workers", True, min=1)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got nan"):
        check_number("lr", math.nan, min=0.0, min_open=True)
    with pytest.raises(ValueError, match=r"x must be a finite number, got 1e\+400|x must be a finite number, got 10"):
        check_number("x", 10**400)
    assert check_seed("seed", 2**64 - 1) == 2**64 - 1
    with pytest.raises(ValueError, match=r"a run needs about .* of memory, but only .* is available; shrink it"):
        check_memory(1e30, "a run", "shrink it")


def test_a_step_may_evaluate_the_gradient_several_times_with_one_sample():
    """A probe step (here USAM's ascent step, g = ∇f(x + ρ ∇f(x))) runs in the simulator unchanged; on
    f = ½ xᵀ H x without noise its step is x ← x − η H (I + ρ H) x."""
    prob = problems.make("quadratic", dim=4)
    base = algorithms.make("dsgd")
    algo = algorithms.make("usam", rho=0.1)
    assert not algo.single_evaluation and base.single_evaluation
    tr = simulate(Oracle(prob, Noise("none"), workers=1), algo, Schedule("constant", 0.2, 5), log_every=5)
    h = prob.eigs
    x = prob.x0().clone()
    for _ in range(5):
        x = x - 0.2 * h * (1 + 0.1 * h) * x
    torch.testing.assert_close(tr.x[0], x, rtol=1e-14, atol=0)
    # with noise, both evaluations see the same sample: the noise enters once, shifted by ρ H z
    noisy = simulate(Oracle(prob, Noise("gaussian", 1.0), workers=2), algo, Schedule("constant", 0.2, 3), repeats=2)
    assert bool(torch.isfinite(noisy.x).all())


def test_a_loop_resumed_from_its_saved_state_ends_with_the_same_iterates():
    """Everything a step carries over — iterates, error-feedback memory, worker and server momentum,
    every generator, the record and the communication counters — is in ``Loop.state_dict``: a loop
    restored from it (through torch.save / weights-only load) continues exactly as an uninterrupted one."""
    from compsde.sim.exchange import InProcessExchange
    from compsde.sim.loop import Loop

    prob = problems.make("quadratic", dim=5, heterogeneity=0.5)
    oracle = Oracle(prob, Noise("student-t", 0.5, 3.0), workers=3)
    algo = algorithms.make("ef", compressor="rand-k", k=2, worker={"momentum": 0.9}, server={"momentum": 0.5})
    sched = Schedule("cosine", 0.05, 20)

    def loop() -> Loop:
        return Loop(algo, oracle, sched, repeats=4, seed=7, log_every=3,
                    exchange=InProcessExchange(algo, 4, prob.dim, torch.float64))

    whole = loop()
    while not whole.done:
        whole.step()
    first = loop()
    for _ in range(11):
        first.step()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    second = loop()
    second.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    while not second.done:
        second.step()
    a, b = whole.trace(), second.trace()
    assert torch.equal(a.x, b.x) and torch.equal(a.loss, b.loss) and torch.equal(a.bits, b.bits)
    assert torch.equal(a.rounds, b.rounds)
    torch.testing.assert_close(a.compression_error, b.compression_error, rtol=0, atol=0, equal_nan=True)


def test_stream_memory_covers_what_a_generator_really_costs():
    """``Streams.memory`` counts ``GENERATOR_BYTES`` per stream; measured here as the growth of the
    resident set over 20 000 generators (in a fresh process, so freed memory elsewhere does not hide it),
    it must not be more than that (the constant is the measured 2.7 kB rounded up)."""
    from compsde.core.streams import DRAW_BYTES, GENERATOR_BYTES

    code = ("import torch\n"
            "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "r = rss(); gens = [torch.Generator().manual_seed(i) for i in range(20000)]\n"
            "print((rss() - r) / 20000)\n")
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/statm")
    per = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1000 < per <= GENERATOR_BYTES, per
    assert Streams.memory(10, 10) == 21 * GENERATOR_BYTES + 20 * DRAW_BYTES


def test_available_memory_respects_an_address_space_limit():
    """Under ``ulimit -v`` (RLIMIT_AS) only the limit minus what the process has mapped can be allocated,
    whatever the machine has free."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc are Linux's")
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))\n"
            "from compsde.core.tensors import available_memory\n"
            "print(available_memory())\n")
    avail = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < avail < 3 << 30
