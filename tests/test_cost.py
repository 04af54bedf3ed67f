"""The cost model (``compsde.advise.cost``): the collectives' formulas, the bytes from the library's own
wire accounting, the step schedule, the measurements, the refusals, and a link measured between the two
ranks of a real gloo group on loopback (with a DDP hook's bytes and buckets against the model's)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist

from compsde import algorithms, compressors
from compsde.advise.cost import (
    Codec,
    Compute,
    Link,
    all_gather_seconds,
    all_reduce_seconds,
    collective_messages,
    collective_seconds,
    ddp_buckets,
    measure_codec,
    measure_compute,
    measure_hook_overhead,
    method_algorithm,
    predict_step_seconds,
)
from compsde.compressors.wire import wire_bytes

LINK = Link(bandwidth=125e6, latency=1e-4)  # 1 Gbit/s, 100 µs


# ---- the link and the collectives -------------------------------------------------------------------


def test_ring_formulas():
    b = 50e6
    for n in (2, 3, 4, 8):
        # all-reduce: reduce-scatter + all-gather, N − 1 steps each of b/N bytes per rank
        steps = 2 * (n - 1)
        assert math.isclose(all_reduce_seconds(b, n, LINK), steps * LINK.message_seconds(b / n))
        # all-gather: N − 1 steps of b bytes
        assert math.isclose(all_gather_seconds(b, n, LINK), (n - 1) * LINK.message_seconds(b))
        assert collective_seconds("all_reduce", b, n, LINK) == all_reduce_seconds(b, n, LINK)
        assert collective_seconds("all_gather", b, n, LINK) == all_gather_seconds(b, n, LINK)
    # two ranks: the all-reduce sends as many bytes as the all-gather, with one more latency
    assert math.isclose(all_reduce_seconds(b, 2, LINK) - all_gather_seconds(b, 2, LINK), LINK.latency)
    assert math.isclose(all_gather_seconds(b, 2, LINK), 1e-4 + 0.4)
    assert all_reduce_seconds(b, 1, LINK) == 0.0 == all_gather_seconds(b, 1, LINK)
    with pytest.raises(ValueError, match="collective must be one of all_reduce, all_gather, got 'broadcast'"):
        collective_seconds("broadcast", b, 2, LINK)
    with pytest.raises(ValueError, match="workers must be an integer ≥ 1, got 0"):
        all_reduce_seconds(b, 0, LINK)
    with pytest.raises(ValueError, match="nbytes must be a finite number ≥ 0, got -1"):
        all_gather_seconds(-1, 2, LINK)


def test_link_fit_and_refusals():
    assert Link.from_bits(1e9, 2e-4) == Link(125e6, 2e-4)
    assert math.isclose(LINK.message_seconds(125e6), 1.0001)
    sizes = [1e3, 1e5, 1e7]
    fitted = Link.fit(sizes, [LINK.message_seconds(s) for s in sizes])
    assert math.isclose(fitted.bandwidth, LINK.bandwidth, rel_tol=1e-9)
    assert math.isclose(fitted.latency, LINK.latency, rel_tol=1e-6)
    assert Link.fit([0, 1e6], [0.0, 1e-3]).latency == 0.0
    assert Link.fit([1e3, 1e6], [1e-4, 1e-3]).latency >= 0.0  # a negative intercept (noise) is taken as 0
    with pytest.raises(ValueError, match=r"Link bandwidth \(bytes/s\) must be a finite number > 0, got 0"):
        Link(0, 1e-3)
    with pytest.raises(ValueError, match=r"Link latency \(s\) must be a finite number ≥ 0, got -1"):
        Link(1e6, -1)
    with pytest.raises(ValueError, match=r"Link bandwidth \(bytes/s\) must be a finite number > 0, got nan"):
        Link(float("nan"), 0)
    with pytest.raises(ValueError, match="needs ≥ 2 .* got 1 sizes, 1 times and 1 message counts"):
        Link.fit([1e3], [1e-3])
    with pytest.raises(ValueError, match="two distinct message sizes"):
        Link.fit([1e3, 1e3], [1e-3, 2e-3])
    with pytest.raises(ValueError, match="two distinct message sizes"):
        Link.fit([1e3, 2e3], [1e-3, 2e-3], messages=[1, 2])
    # collectives of 4 ranks, fitted jointly by their ring steps: exact on exact times
    pts = [(kind, b) for kind in ("all_reduce", "all_gather") for b in (1e4, 1e7)]
    got = Link.fit([collective_messages(k, b, 4)[1] for k, b in pts], [collective_seconds(k, b, 4, LINK) for k, b in pts],
                   messages=[collective_messages(k, b, 4)[0] for k, b in pts])
    assert math.isclose(got.bandwidth, LINK.bandwidth, rel_tol=1e-9) and math.isclose(got.latency, LINK.latency, rel_tol=1e-6)
    assert collective_messages("all_reduce", 100, 4) == (6, 150) and collective_messages("all_gather", 100, 4) == (3, 300)
    with pytest.raises(ValueError, match="do not grow with the sizes"):
        Link.fit([1e3, 1e6], [2e-3, 1e-3])
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        Link.measure()


# ---- the prediction ---------------------------------------------------------------------------------


METHODS = {
    "dsgd": algorithms.make("dsgd"),
    "sign": algorithms.make("dsignsgd"),
    "sign majority": algorithms.make("dsignsgd-majority"),
    "scaled-sign": algorithms.make("dcsgd", "scaled-sign"),
    "top-k + EF": algorithms.make("ef", "top-k", ratio=0.01),
    "rand-k": algorithms.make("dcsgd", "rand-k", ratio=0.01),
    "rand-k shared": algorithms.make("dcsgd", "rand-k", ratio=0.01, shared=True),
    "qsgd": algorithms.make("dcsgd", "qsgd", levels=4),
    "natural": algorithms.make("dcsgd", "natural"),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_bytes_and_collective_follow_the_library_accounting(name):
    algo = METHODS[name]
    buckets = [4_001, 100_000]
    codec = Codec(0, 0, 0, 0)
    p = predict_step_seconds(algo, compute=Compute(0, 0), link=LINK, workers=4, buckets=buckets, codec=codec)
    comp = algo.compressor
    assert p.bytes == sum(wire_bytes(comp, 1, n, torch.float32) for n in buckets)
    assert p.collective == ("all_reduce" if comp.summable else "all_gather")
    assert p.wire == pytest.approx(sum(collective_seconds(p.collective, wire_bytes(comp, 1, n, torch.float32), 4, LINK)
                                       for n in buckets))
    # nothing but the wire: the buckets' collectives run back to back
    assert p.seconds == pytest.approx(p.wire) and p.exposed == pytest.approx(p.wire) and p.cpu == 0
    if name == "dsgd":
        assert p.bytes == 4 * sum(buckets) and p.collective == "all_reduce"
    if name.startswith("sign"):
        assert p.bytes == sum(math.ceil(n / 8 / 8) * 8 for n in buckets)
    half = predict_step_seconds(algo, compute=Compute(0, 0), link=LINK, workers=4, d=4_001, codec=codec,
                                dtype=torch.float16)
    assert half.bytes == wire_bytes(comp, 1, 4_001, torch.float16)


def test_one_bucket_is_the_sum_of_its_parts_and_buckets_overlap_the_backward_pass():
    algo = METHODS["sign"]
    compute = Compute(forward=0.010, backward=0.020, optimizer=0.003)
    codec = Codec(encode=0.004, pack=0.001, draws=0.0005, decode=0.006)
    d = 1_000_000
    wire = all_gather_seconds(wire_bytes(algo.compressor, 1, d, torch.float32), 2, LINK)
    p = predict_step_seconds(algo, compute=compute, link=LINK, workers=2, d=d, codec=codec)
    assert p.seconds == pytest.approx(compute.total + codec.total + wire)
    assert p.exposed == pytest.approx(wire) and p.cpu == pytest.approx(codec.total)
    # Two equal buckets: the first one's collective runs during the second half of the backward pass.
    c2 = Codec(encode=0.004, pack=0.0, draws=0.0, decode=0.006)
    lk = Link(bandwidth=1e12, latency=0.005)  # each collective: 5 ms
    q = predict_step_seconds(algo, compute=Compute(0.010, 0.020), link=lk, workers=2, buckets=[d, d], codec=c2)
    # cpu: fwd 10, bwd 10 + enc 4 → 24: collective 1 until 29; bwd 10 + enc 4 → 38; collective 2 until 43
    # decode 1 (ready at 29) waits for the CPU: 38 → 44; decode 2 → 50
    assert q.seconds == pytest.approx(0.050, abs=1e-6)
    assert q.exposed == pytest.approx(0.0, abs=1e-6)  # both collectives hidden behind CPU work
    # the same step with one bucket of the same total: nothing hides
    r = predict_step_seconds(algo, compute=Compute(0.010, 0.020), link=lk, workers=2, d=2 * d,
                             codec=Codec(encode=0.008, pack=0, draws=0, decode=0.012))
    assert r.seconds == pytest.approx(0.055, abs=1e-6)
    assert predict_step_seconds(algo, compute=0.03, link=lk, workers=2, d=d, codec=c2).compute == pytest.approx(0.03)
    assert set(p.as_dict()) >= {"method", "collective", "bytes", "seconds", "buckets"}


def test_prediction_refusals():
    algo = METHODS["sign"]
    kw = {"compute": Compute(0.01, 0.02), "link": LINK, "workers": 2}
    with pytest.raises(ValueError, match="give exactly one of d .* and buckets"):
        predict_step_seconds(algo, **kw)
    with pytest.raises(ValueError, match="give exactly one of d .* and buckets"):
        predict_step_seconds(algo, d=10, buckets=[10], **kw)
    with pytest.raises(ValueError, match="d must be an integer ≥ 1, got 0"):
        predict_step_seconds(algo, d=0, **kw)
    with pytest.raises(ValueError, match="codec must be a Codec or one Codec per bucket \\(2\\)"):
        predict_step_seconds(algo, buckets=[10, 20], codec=[Codec(0, 0, 0, 0)], **kw)
    with pytest.raises(ValueError, match="link must be a compsde.advise.cost.Link"):
        predict_step_seconds(algo, d=10, compute=0.1, link=(1e9, 0), workers=2)
    with pytest.raises(ValueError, match="compute must be a Compute .* got 'fast'"):
        predict_step_seconds(algo, d=10, compute="fast", link=LINK, workers=2)
    with pytest.raises(ValueError, match=r"Compute backward \(s\) must be a finite number ≥ 0, got -1"):
        Compute(0.1, -1)
    with pytest.raises(ValueError, match=r"Codec decode \(s\) must be a finite number ≥ 0, got inf"):
        Codec(0, 0, 0, math.inf)
    with pytest.raises(ValueError, match="'dcsgd' cannot be built .*'ef:top-k:ratio=0.01'"):
        method_algorithm("dcsgd")
    with pytest.raises(ValueError, match="method must be a compsde Algorithm or an algorithm name, got 3"):
        method_algorithm(3)
    from compsde.algorithms.sync import SyncSchedule

    with pytest.raises(ValueError, match="'local-sgd' is a local method"):
        method_algorithm(algorithms.make("local-sgd", sync=SyncSchedule("constant", period=4)))
    with pytest.raises(ValueError, match="'sam' evaluates the gradient again at a probe point"):
        method_algorithm(algorithms.make("sam"))


def test_ddp_buckets_match_torch_assignment():
    sizes = [10, 300_000, 50, 4_000_000, 7, 2_000_000, 3_000_000, 9]
    got = ddp_buckets(sizes)
    assign = getattr(dist, "_compute_bucket_assignment_by_size", None)
    if assign is not None:
        tensors = [torch.empty(s) for s in sizes]
        idx, _ = assign(tensors, [2**20, 25 * 2**20], [False] * len(sizes))
        assert got == [sum(sizes[i] for i in b) for b in idx]
    assert got == [300_010, 50 + 4_000_000 + 7 + 2_000_000 + 3_000_000, 9]  # closed once ≥ 1 MiB, then ≥ 25 MiB
    model = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.Linear(600, 600), torch.nn.Linear(600, 600))
    assert ddp_buckets(model) == [360_600, 721_200]
    assert ddp_buckets(model, bucket_cap_mb=1, first_bucket_mb=1) == [360_600] * 3
    with pytest.raises(ValueError, match="params holds no trainable parameters"):
        ddp_buckets([])
    with pytest.raises(ValueError, match="bucket_cap_mb must be a finite number > 0, got 0"):
        ddp_buckets(sizes, bucket_cap_mb=0)


# ---- measurements -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dsgd", "sign majority", "top-k + EF", "rand-k", "rand-k shared", "qsgd"])
def test_measure_codec(name):
    c = measure_codec(METHODS[name], 20_000, 3, repeats=2)
    assert all(v >= 0 and math.isfinite(v) for v in (c.encode, c.pack, c.draws, c.decode))
    assert c.encode > 0 and c.decode > 0 and c.total == pytest.approx(c.sender + c.decode)
    if name != "rand-k":
        assert c.draws < 1e-3  # nothing to replay (sign, top-k are deterministic; shared draws travel)
    with pytest.raises(ValueError, match="n must be an integer ≥ 1, got 0"):
        measure_codec(METHODS[name], 0, 2)
    with pytest.raises(ValueError, match="dtype must be a floating-point torch dtype"):
        measure_codec(METHODS[name], 10, 2, dtype=torch.int32)


def test_hook_overhead():
    """The hook's fixed cost per bucket, measured in a private one-rank group; counted once per bucket."""
    extra = measure_hook_overhead("dsignsgd", n=1024, repeats=5, warmup=2)
    assert 0 <= extra < 0.05 and not dist.is_initialized()
    with pytest.raises(ValueError, match="with a link runs over the initialised process group: there is none"):
        measure_hook_overhead("dsignsgd", link=LINK)
    codec = Codec(0.001, 0, 0, 0.001)
    kw = {"compute": Compute(0.01, 0.02), "link": LINK, "workers": 2, "buckets": [1000, 1000], "codec": codec}
    base = predict_step_seconds("dsignsgd", **kw)
    more = predict_step_seconds("dsignsgd", hook_overhead=0.002, **kw)
    assert more.cpu == pytest.approx(base.cpu + 0.004)
    assert more.seconds >= base.seconds + 0.002  # at least the last bucket's, which nothing hides
    with pytest.raises(ValueError, match="hook_overhead must be a finite number ≥ 0, got -0.001"):
        predict_step_seconds("dsignsgd", hook_overhead=-0.001, **kw)


def test_measure_codec_and_prediction_of_a_named_method():
    p = predict_step_seconds("dsignsgd", compute=0.01, link=LINK, workers=2, d=10_000, repeats=2)
    assert p.cpu > 0 and p.seconds > 0.01 + p.wire
    assert p.bytes == wire_bytes(compressors.make("sign"), 1, 10_000, torch.float32)


def test_measure_compute():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    x, y = torch.randn(16, 32), torch.randn(16, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = lambda m, b: (m(b[0]) - b[1]).square().mean()  # noqa: E731
    c = measure_compute(model, loss, (x, y), ddp=False, repeats=2, warmup=1)
    assert c.forward > 0 and c.backward > 0 and c.optimizer >= 0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # no optimizer: no step
    assert all(p.grad is None for p in model.parameters())
    # inside DDP (a private one-rank group): a copy takes the steps, the model and its optimizer stay as they are
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    c = measure_compute(model, loss, (x, y), optimizer=opt, repeats=2)
    assert c.forward > 0 and c.backward > 0 and c.optimizer > 0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())) and not opt.state
    assert not dist.is_initialized()  # the private group is gone
    with pytest.raises(ValueError, match="loss_fn must return a scalar loss tensor"):
        measure_compute(model, lambda m, b: m(b[0]), (x, y), ddp=False)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module, got 'net'"):
        measure_compute("net", lambda m, b: m(b), x)
    with pytest.raises(ValueError, match="model has no parameters that require gradients"):
        measure_compute(torch.nn.Tanh(), lambda m, b: m(b).sum(), x)
    with pytest.raises(ValueError, match="ddp must be true or false, got 1"):
        measure_compute(model, loss, (x, y), ddp=1)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer or None"):
        measure_compute(model, lambda m, b: m(b[0]).sum(), (x, y), optimizer="sgd")


# ---- a real group -----------------------------------------------------------------------------------

RANK_SCRIPT = r"""
import json, os, sys, gc
import torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from compsde.advise import cost
from compsde.distributed import comm_hook
from compsde.distributed.launch import init_from_env

torch.set_num_threads(1)
ctx = init_from_env(60)
rank, world = dist.get_rank(), dist.get_world_size()
link = cost.Link.measure(sizes=(1 << 10, 1 << 21), repeats=5)
mid = 1 << 20
measured, = cost.time_collective("all_gather", [mid], repeats=5)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(600, 600), nn.Linear(600, 600), nn.Linear(600, 600))
buckets = cost.ddp_buckets(model)
ddp = DDP(model)
state, hook = comm_hook("sign")
ddp.register_comm_hook(state, hook)
for _ in range(3):
    ddp(torch.randn(2, 600)).square().mean().backward()
pred = cost.predict_step_seconds(state.algorithm, compute=0.0, link=link, workers=world, buckets=buckets,
                                 codec=cost.Codec(0, 0, 0, 0))
out = {"bandwidth": link.bandwidth, "latency": link.latency, "measured": measured,
       "predicted": cost.all_gather_seconds(mid, world, link), "buckets": buckets,
       "hook_buckets": [state.bucket_numel[i] for i in sorted(state.bucket_numel)],
       "hook_bytes": state.wire_bytes_per_step(), "pred_bytes": pred.bytes}
del ddp, state
gc.collect()
dist.barrier()
open(sys.argv[1] + f"/rank{rank}.json", "w").write(json.dumps(out))
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # as compsde's own ranks leave: gloo's destructors can abort at exit
"""


@pytest.mark.xdist_group("link-timing")
def test_link_measured_between_two_gloo_ranks(tmp_path):
    """Two processes on loopback: the fitted link predicts a third all-gather size, every rank gets the
    same link, and a sign hook's real buckets and bytes are the model's."""
    from compsde.distributed.launch import spawn

    spawn(2, ["-c", RANK_SCRIPT, str(tmp_path)], timeout=120, jobdir=tmp_path / "job")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["bandwidth"], r0["latency"]) == (r1["bandwidth"], r1["latency"])
    assert r0["bandwidth"] > 1e7 and 0 <= r0["latency"] < 0.05, r0
    # loopback timings on a shared machine are noisy: the fit must get the order of magnitude
    assert 0.2 < r0["predicted"] / r0["measured"] < 5, r0
    assert r0["hook_buckets"] == r0["buckets"] == [360_600, 721_200]
    assert r0["hook_bytes"] == r0["pred_bytes"] == r1["hook_bytes"]


# ---- measured on a group ----------------------------------------------------------------------------


def test_measure_steps_in_a_group_of_one_and_its_refusals(tmp_path):
    """``measure_steps`` times each method's DDP step (an Algorithm's hook, DDP's own all-reduce, a (state, hook)
    pair) and leaves the model as it was; bad methods and a missing group are refused by name."""
    from compsde.advise.cost import _unchanged, measure_steps

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(5, 8)
    loss = lambda m, b: m(b).square().mean()  # noqa: E731
    with pytest.raises(RuntimeError, match="initialise one first"):
        measure_steps(model, loss, x, {"ddp": None})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        out = measure_steps(model, loss, x, {"ddp": None, "sign": algorithms.make("dsignsgd"),
                                             "noop": (None, _unchanged)}, optimizer=sgd, steps=2, rounds=2, warmup=1)
        assert set(out) == {"ddp", "sign", "noop"} and all(0 < t < 5 for t in out.values()), out
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # copies took the steps
        for bad, match in (({}, "non-empty dict"), ({"x": 3}, r"methods\['x'\] must be"),
                           ({"x": "dsgd"}, r"methods\['x'\] must be")):
            with pytest.raises(ValueError, match=match):
                measure_steps(model, loss, x, bad)
        with pytest.raises(ValueError, match="steps must be"):
            measure_steps(model, loss, x, {"ddp": None}, steps=0)
    finally:
        dist.destroy_process_group()


def test_group_costs_drive_the_cost_model(monkeypatch):
    """``GroupCosts`` survive their dict form, and ``default_cost`` built on them predicts what
    ``predict_step_seconds`` does with the same link, compute, buckets, overhead and codecs."""
    from compsde.advise import Setting, default_cost
    from compsde.advise.cost import GroupCosts, method_label

    sign, dsgd = algorithms.make("dsignsgd"), algorithms.make("dsgd")
    g = GroupCosts(2, LINK, Compute(1e-3, 2e-3, 5e-4), (1000, 3000), {method_label(sign): 2e-4, method_label(dsgd): 1e-4},
                   {method_label(sign): 4e-3}, 1)
    assert GroupCosts.from_dict(json.loads(json.dumps(g.as_dict()))) == g
    fn, info = default_cost(4000, batch=8, link=g)
    assert fn is not None and info["measured_on_ranks"]["buckets"] == [1000, 3000]
    codec = Codec(1e-4, 0, 0, 2e-4)
    import compsde.advise.cost as cost_mod

    monkeypatch.setattr(cost_mod, "measure_codec", lambda *a, **k: codec)
    for algo in (sign, dsgd):
        got = fn(algo, Setting(0.1, 16, 2))  # batch 16: twice the forward and backward
        want = predict_step_seconds(algo, compute=Compute(2e-3, 4e-3, 5e-4), link=LINK, workers=2, buckets=[1000, 3000],
                                    codec=codec, hook_overhead=g.overhead[method_label(algo)])
        assert got == pytest.approx(want.seconds, rel=1e-12)
    with pytest.raises(ValueError, match="no hook overhead"):
        fn(algorithms.make("dcsgd", "rand-k", ratio=0.1), Setting(0.1, 8, 2))
    with pytest.raises(ValueError, match="hold 4000 values, not the model's 10"):
        default_cost(10, batch=8, link=g)


def test_link_measure_measures_larger_sizes_where_the_times_do_not_grow(monkeypatch):
    """Where no fit is possible (times that shrink with the size: loopback beside other processes), the largest size
    and one 16 times larger are measured again and fitted alone; past 64 MiB the fit's error stands."""
    import compsde.advise.cost as cost_mod

    def exact(sizes):
        out = []
        for n in sizes:
            for kind in ("all_reduce", "all_gather"):
                m, b = collective_messages(kind, n, 2)
                out.append((b, m * LINK.latency + b / LINK.bandwidth, m))
        return out

    calls = []

    def noisy_then_exact(group, sizes, repeats, warmup):
        calls.append(list(sizes))
        if len(calls) == 1:  # measured on loopback beside another test's ranks: 1 KiB slower than 2 MiB
            return [(b, t, m) for (b, _, m), t in zip(exact(sizes), [3.29e-3, 3.99e-3, 1.11e-3, 3.45e-3])]
        return exact(sizes)

    monkeypatch.setattr(cost_mod, "_link_points", noisy_then_exact)
    monkeypatch.setattr(cost_mod.dist, "get_world_size", lambda group=None: 2)
    link = Link.measure(sizes=(1024, 2 << 20))
    assert calls == [[1024, 2 << 20], [2 << 20, 32 << 20]]
    assert link.bandwidth == pytest.approx(LINK.bandwidth, rel=1e-9)
    calls.clear()
    monkeypatch.setattr(cost_mod, "_link_points", lambda g, sizes, r, w: calls.append(list(sizes)) or
                        [(b, 1e-2 - b * 1e-10, m) for b, _, m in exact(sizes)])  # always shrinking
    with pytest.raises(ValueError, match="do not grow"):
        Link.measure(sizes=(1024, 2 << 20))
    assert calls[-1] == [32 << 20, 64 << 20]
    calls.clear()  # 64 ranks: an all-gather's receive buffer stays within 256 MiB, each send within 4 MiB
    monkeypatch.setattr(cost_mod.dist, "get_world_size", lambda group=None: 64)
    with pytest.raises(ValueError, match="do not grow"):
        Link.measure(sizes=(1024, 2 << 20))
    assert calls == [[1024, 2 << 20], [2 << 20, 4 << 20]]
