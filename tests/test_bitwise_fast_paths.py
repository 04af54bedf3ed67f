"""The CPU fast paths of top-k, scaled-sign and error feedback give the same bits as the plain formulas.

Every comparison here is exact (``torch.equal`` on the bytes, so −0.0 ≠ +0.0 and NaN payloads count):
these paths exist only to save time, and the simulator, the distributed backend and the DDP hook must
keep agreeing bit for bit, so no tolerance is allowed.
"""

from __future__ import annotations

import pytest
import torch

from compsde.algorithms.feedback import ErrorFeedback
from compsde.compressors import make
from compsde.compressors import signs as sg
from compsde.compressors import sparsifiers as sp
from compsde.compressors.base import Payload
from compsde.core.tensors import accumulate


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor, for comparisons that see −0.0 and NaN payloads."""
    return t.contiguous().view(torch.uint8) if t.dtype.is_floating_point else t


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def edge_rows(rows: int, d: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs with signed zeros, infinities, NaN, subnormals, ties and one huge constant."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, d, generator=g, dtype=dtype)
    zeros = a.clone()
    zeros[:, ::5] = 0.0
    zeros[:, 1::5] = -0.0
    zeros[0, 7] = float("inf")
    zeros[-1, 9] = -float("inf")
    nan = a.clone()
    nan[0, 3] = float("nan")
    tiny = torch.finfo(dtype).tiny / 4  # subnormal
    sub = torch.full((rows, d), tiny, dtype=dtype)
    sub[:, ::3] = -tiny
    return {"randn": a, "zeros-inf": zeros, "nan": nan, "all-zero": torch.zeros(rows, d, dtype=dtype),
            "negative-zero": torch.full((rows, d), -0.0, dtype=dtype), "subnormal": sub,
            "huge": torch.full((rows, d), torch.finfo(dtype).max / 1.5, dtype=dtype), "ties": a.mul(2).round()}


# ---- top-k: the candidate scan -------------------------------------------------------------------


def _candidates_by_mask(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = (x >= t).logical_or_(x <= -t)
    flat = mask.view(-1).nonzero().squeeze(1)
    return flat, x.reshape(-1).index_select(0, flat).abs_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows, d", [(1, 300_001), (3, 70_000)])
def test_candidate_scan_is_the_mask_of_magnitudes_at_least_t(dtype, rows, d):
    for name, x in edge_rows(rows, d, dtype).items():
        for q in (0.0, 0.5, 0.99):
            t = x.abs().nan_to_num(0.0).quantile(q, dim=-1, keepdim=True)
            got = sp._candidates(x, t, rows * d)
            assert got is not None
            ref = _candidates_by_mask(x, t)
            assert same(got[0], ref[0]) and same(got[1], ref[1]), (name, q)
    x = torch.randn(rows, d, dtype=dtype)
    assert sp._candidates(x, torch.zeros(rows, 1, dtype=dtype), rows * d // 4) is None  # over the limit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_k_indices_long_rows_equal_plain_topk(dtype):
    d = (1 << 18) + 13  # above _FAST_TOPK_MIN_D: the sampled threshold and the scan
    for name, x in edge_rows(2, d, dtype).items():
        if name == "nan":
            continue  # NaN entries give unspecified results (top_k_indices' contract)
        for k in (1, 100, d // 100, d // 5):
            assert same(sp.top_k_indices(x, k), sp._topk_exact(x.abs(), k)), (name, k)


# ---- scaled-sign ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scaled_sign_scale_in_the_reused_buffer_is_the_fresh_one(dtype):
    d = 3 * sg._BLOCK + 5  # long enough for the reused buffer
    for name, x in edge_rows(2, d, dtype).items():
        ref = x.abs().sum(dim=-1, keepdim=True) / d
        assert same(sg.ScaledSign._scale(x), ref), name
        assert same(sg.ScaledSign._scale(x[:, ::2]), x[:, ::2].abs().sum(dim=-1, keepdim=True) / x[:, ::2].shape[-1])
    # A shorter input after a longer one reuses a prefix of the buffer: still the same bits.
    short = torch.randn(1, 2 * sg._BLOCK + 1, dtype=dtype)
    assert same(sg.ScaledSign._scale(short), short.abs().sum(dim=-1, keepdim=True) / short.shape[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_scaled_sign_decode_sum_is_the_sum_of_decodes(dtype, n):
    c = make("scaled-sign")
    d = 1000
    g = torch.Generator().manual_seed(n)
    big = torch.finfo(dtype).max
    scales = [0.0, torch.finfo(dtype).tiny / 8, 0.75, big / 1.5, big, float("inf"), float("nan"), -2.0]
    for s in scales:
        payloads = []
        for i in range(n):
            positive = torch.rand(1, d, generator=g) < 0.5
            scale = torch.tensor([[s if i == 0 else 0.5 * (i + 1)]], dtype=dtype)
            payloads.append(Payload({"scale": scale, "positive": positive}, d, dtype))
        ref = None
        for p in payloads:
            ref = accumulate(ref, c.decode(p, None))
        assert ref is not None
        out = torch.empty(1, d, dtype=dtype)
        got = c.decode_sum(payloads, [None] * n, out=out)
        assert got.data_ptr() == out.data_ptr()
        assert same(got, ref), s
        assert same(c.decode_sum(payloads, [None] * n), ref), s  # without ``out``: the base path


# ---- error feedback ------------------------------------------------------------------------------


def _dense_feedback(c, u, memory, lr, rnd):
    """The formula: v = e + η u, m = decode(encode(v)), e ← v − m."""
    v = memory + lr * u
    payload = c.encode(v, rnd)
    return v, payload, v - c.decode(payload, rnd)


@pytest.mark.parametrize("spec", [("top-k", {"ratio": 0.01}), ("top-k", {"k": 3}), ("rand-k", {"ratio": 0.05}),
                                  ("rand-k", {"k": 4, "shared": True}), ("rand-k-unscaled", {"k": 7}),
                                  ("scaled-sign", {}), ("identity", {}), ("top-k+natural", {"k": 5})],
                         ids=lambda s: s[0] + str(s[1]))
@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_error_feedback_memory_is_the_dense_formula(spec, lr):
    c = make(spec[0], **spec[1])
    n, d = 2, (1 << 18) + 3
    for name, u in edge_rows(n, d, torch.float32, seed=1).items():
        if name == "nan" and spec[0].startswith("top-k"):
            continue  # NaN entries give unspecified top-k indices
        u = u[:, None]  # (workers, rows, d)
        memory = torch.randn(n, 1, d, generator=torch.Generator().manual_seed(2))
        rnd = c.draw((n, 1), d, torch.Generator().manual_seed(3), torch.float32) if c.randomized else None
        v, payload, e = _dense_feedback(c, u, memory, lr, rnd)
        ef = ErrorFeedback(c)
        got = ef(u, memory.clone(), lr, rnd, encode=True, messages=False)
        assert same(got.inputs, v) and same(got.memory, e), name
        assert got.payload is not None and all(same(got.payload.fields[f], payload.fields[f]) for f in payload.fields)
        held = memory.clone()
        reused = ef(u, held, lr, rnd, encode=True, messages=False, reuse_memory=True)
        assert same(reused.memory, e), name
        assert reused.payload is not None
        assert all(same(reused.payload.fields[f], payload.fields[f]) for f in payload.fields), name
        if spec[0] != "identity":  # the identity's payload is v itself: its memory cannot overwrite it
            assert reused.memory.data_ptr() == held.data_ptr(), name
        with_messages = ef(u, memory.clone(), lr, rnd, encode=True, messages=True)
        assert same(with_messages.memory, e) and same(with_messages.inputs, v), name


def test_ddp_hook_error_feedback_is_the_formula_bit_for_bit(tmp_path):
    """One rank, one bucket (a single weight of 600k entries, above the fast paths' thresholds): the
    hook's gradient is C(e + g) and its memory e + g − C(e + g), step after step, the memory updated in
    its own tensor."""
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from compsde.distributed import comm_hook

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for name, params in (("top-k", {"ratio": 0.02}), ("scaled-sign", {})):
            torch.manual_seed(0)
            model = nn.Linear(1000, 600, bias=False)
            plain = nn.Linear(1000, 600, bias=False)
            plain.weight.data.copy_(model.weight.data)
            ddp = DDP(model)
            state, hook = comm_hook(name, error_feedback=True, **params)
            ddp.register_comm_hook(state, hook)
            c = make(name, **params)
            e = torch.zeros(1, 1, model.weight.numel())
            held = None
            for step in range(3):
                x = torch.randn(8, 1000, generator=torch.Generator().manual_seed(step))
                plain.zero_grad()
                plain(x).square().mean().backward()
                assert plain.weight.grad is not None
                v = e + plain.weight.grad.reshape(1, 1, -1)
                m = c.decode(c.encode(v, None), None)
                e = v - m
                ddp.zero_grad()
                ddp(x).square().mean().backward()
                assert model.weight.grad is not None
                assert same(model.weight.grad.reshape(1, 1, -1), m), (name, step)
                (st,) = state.buckets.values()
                assert same(st["ef"], e), (name, step)
                if step > 0:
                    assert st["ef"].data_ptr() == held, (name, step)  # no fresh memory per step
                held = st["ef"].data_ptr()
    finally:
        dist.destroy_process_group()


# ---- sparse sums: k adds per worker, the mean only where values were sent ---------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("how", ["mean", "majority", None])
def test_sparse_sum_is_the_dense_sum_in_worker_order_then_the_aggregate(dtype, n, how):
    from compsde.algorithms.aggregation import Aggregate
    from compsde.compressors.base import sparse_sum

    rows, d, k = 3, 50, 12
    g = torch.Generator().manual_seed(n)
    parts, dense = [], []
    for j in range(n):
        # positions 0..3 sent by every worker (−0.0 at 0 by all, at 1 by some), the rest at random, distinct
        idx = torch.stack([torch.cat([torch.arange(4), 4 + torch.randperm(d - 4, generator=g)[:k - 4]]) for _ in range(rows)])
        vals = torch.randn(rows, k, generator=g, dtype=dtype)
        vals[:, 0] = -0.0
        vals[:, 1] = -0.0 if j % 2 == 0 else 0.0
        vals[0, 2] = torch.finfo(dtype).tiny / 2 ** j  # subnormals: the mean of the sum, not the sum of means
        vals[1, 3] = torch.finfo(dtype).max / 1.5  # the sum overflows
        vals[2, 3] = float("nan") if j == 1 else float("inf") * (-1) ** j
        parts.append((idx, vals))
        dense.append(torch.zeros(rows, d, dtype=dtype).scatter_(-1, idx, vals))
    finish = None if how is None else Aggregate(n, how)
    expect = accumulate(None, dense[0])
    for m in dense[1:]:
        expect = accumulate(expect, m)
    if finish is not None:
        expect = finish(expect)
    out = torch.full((rows, d), 7.0, dtype=dtype)  # a reused buffer with stale contents
    got = sparse_sum(parts, (rows, d), dtype, out=out, finish=finish)
    assert got.data_ptr() == out.data_ptr()
    nan = torch.isnan(expect)
    assert torch.equal(torch.isnan(got), nan) and torch.equal(bits(got[~nan]), bits(expect[~nan]))


@pytest.mark.parametrize("name, params", [("top-k", {"k": 5}), ("rand-k", {"k": 5}), ("top-k+natural", {"k": 5}),
                                          ("rand-k+qsgd", {"k": 6, "levels": 3})])
def test_sparse_decode_sum_of_negative_zero_rows_keeps_the_simulators_bits(name, params):
    c = make(name, **params)
    d, n = 20, 2
    x = torch.full((1, d), -0.0)
    x[0, :3] = torch.tensor([1.0, -2.0, 3.0])
    rnds = [c.draw((1,), d, torch.Generator().manual_seed(j), torch.float32) if c.randomized else None for j in range(n)]
    ys = [c.apply(x, r) for r in rnds]
    expect = accumulate(accumulate(None, ys[0]), ys[1])
    got = c.decode_sum([c.encode(x, r) for r in rnds], rnds)
    assert same(got, expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 4])
def test_sparse_mean_folded_into_the_values_keeps_the_bits_down_to_the_subnormal_range(dtype, n):
    """Values from the smallest admitted magnitude (tiny·n) up, with cancellations into the subnormal
    range: the mean folded into the values (one product per value) equals the mean of the dense sum."""
    from compsde.algorithms.aggregation import Aggregate
    from compsde.compressors.base import _scaling_commutes, sparse_sum

    d, k = 4000, 3000
    fi = torch.finfo(dtype)
    g = torch.Generator().manual_seed(n)
    base = torch.rand(k, generator=g, dtype=torch.float64).add_(1.0) * fi.tiny * n
    expo = torch.randint(0, 40, (k,), generator=g).to(torch.float64)
    first = (base * torch.exp2(expo) * torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0)).to(dtype)
    first[:5] = torch.tensor([fi.tiny * n, -fi.tiny * n, 0.0, -0.0, fi.max / (4 * n)], dtype=dtype)
    parts, dense = [], []
    for j in range(n):
        idx = torch.randperm(d, generator=g)[:k].view(1, k)
        vals = first.clone()
        if j % 2 == 1:  # near-cancellation of the previous worker's value at shared positions
            r = torch.randint(0, 3, (k,), generator=g)  # −x (sum +0), −x(1 + 2⁻¹⁰) (a sum ~2⁻¹⁰x), x
            vals = torch.where(r == 0, -first, torch.where(r == 1, -first * (1 + 2.0 ** -10), first))
            idx = parts[-1][0].clone()
        vals = vals.view(1, k)
        parts.append((idx, vals))
        dense.append(torch.zeros(1, d, dtype=dtype).scatter_(-1, idx, vals))
    finish = Aggregate(n, "mean")
    assert _scaling_commutes(parts, finish.scale, dtype)
    expect = dense[0].clone()
    for m in dense[1:]:
        expect.add_(m)
    finish(expect)
    assert same(sparse_sum(parts, (1, d), dtype, finish=finish), expect)
    bad = [(parts[0][0], parts[0][1].clone().fill_(fi.tiny))] + parts[1:]  # a value below tiny·n: not folded
    assert not _scaling_commutes(bad, finish.scale, dtype)
