"""Wire formats without processes: every codec's decoded message is ``compressor.apply`` bit for bit,
aggregation of decoded payloads is the simulator's, and the byte counts are what the formats say."""

from __future__ import annotations

import math

import pytest
import torch

from compsde import compressors
from compsde.aggregation import aggregate_sum
from compsde.distributed.wire import (
    ALIGN, Field, Layout, codec_for, pack_bits, pack_uint, sign_bits, unpack_bits, unpack_uint,
)
from compsde.streams import compressor_generator, shared_generator

# Every compressor family, shared and independent rand-k, and compositions (summable or not).
CASES = [
    ("identity", {}), ("rand-k", {"k": 3}), ("rand-k", {"k": 3, "shared": True}),
    ("rand-k-unscaled", {"ratio": 0.5}), ("rand-k-unscaled", {"k": 4, "shared": True}), ("top-k", {"k": 2}),
    ("natural", {}), ("qsgd", {"levels": 2}), ("qsgd", {"levels": 7}), ("natural-dithering", {"levels": 3}),
    ("sign", {}), ("scaled-sign", {}), ("top-k+natural", {"k": 3}), ("rand-k+qsgd", {"k": 4, "levels": 3}),
    ("rand-k+sign", {"k": 5, "shared": True}), ("rand-k+identity", {"k": 3, "shared": True}),
    ("identity+natural", {}), ("top-k+scaled-sign", {"k": 4}),
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in p.items())}" for n, p in CASES]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _inputs(n: int, rows: int, d: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(rows, d, generator=g, dtype=torch.float64).mul_(torch.logspace(-3, 3, d, dtype=torch.float64)).to(dtype)
          for _ in range(n)]
    xs[0][0, 0] = 0.0
    xs[1 % n][0, -1] = -0.0
    if d > 3:
        xs[-1][-1, :] = 0.0  # a zero row: norms 0, top-k ties
    return xs


def _draws(c, n: int, rows: int, d: int, dtype: torch.dtype) -> list[torch.Tensor | None]:
    if not c.randomized:
        return [None] * n
    if c.shared_randomness:
        r = c.draw((1, rows), d, shared_generator(7), dtype)[0]
        return [r] * n
    return [c.draw((1, rows), d, compressor_generator(7, j), dtype)[0] for j in range(n)]


def _fits(name: str, params: dict, d: int) -> bool:
    try:
        compressors.make(name, **params).bits(d)
        return True
    except ValueError:  # k > d
        return False


@pytest.mark.parametrize("name, params, d", [(n, p, d) for (n, p) in CASES for d in (1, 7, 64) if _fits(n, p, d)],
                         ids=[f"{i}-d{d}" for i, (n, p) in zip(IDS, CASES) for d in (1, 7, 64) if _fits(n, p, d)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_decoded_messages_equal_apply_bit_for_bit(name, params, d, dtype):
    c = compressors.make(name, **params)
    n, rows = 3, 4
    codec = codec_for(c)
    xs = _inputs(n, rows, d, dtype, seed=d)
    rnds = _draws(c, n, rows, d, dtype)
    ys = [c.apply(xs[j], rnds[j]) for j in range(n)]
    if codec.summable:
        parts = [codec.encode(xs[j], rnds[j])[0]["sum"] for j in range(n)]
        total = codec.decode_sum(torch.stack(parts).sum(0), rnds[0], d)
        # The sum of payloads vs the sum of messages: the same numbers added in another order.
        torch.testing.assert_close(total, torch.stack(ys).sum(0), rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)
        return
    layout = Layout(codec.fields(rows, d, dtype))
    bufs = []
    for j in range(n):
        parts, y = codec.encode(xs[j], rnds[j], need_message=True)
        assert torch.equal(_bits(y), _bits(ys[j])), "the sender's own message must be apply's"
        parts_fast, _ = codec.encode(xs[j], rnds[j], need_message=False)
        for k in parts:
            assert torch.equal(parts[k], parts_fast[k]), k
        bufs.append(layout.pack(parts))
    views = layout.unpack(torch.stack(bufs))
    for j in range(n):
        m = codec.decode({k: v[j] for k, v in views.items()}, rnds[j], rows, d, dtype)
        assert m.dtype == dtype
        assert torch.equal(_bits(m), _bits(ys[j])), f"worker {j}: decoded message differs from apply"
    # The simulator sums the messages and finishes with aggregate_sum (Method.finish).
    total = torch.stack(ys).sum(0)
    assert torch.equal(codec.total(views, rnds, rows, d, dtype, exact=True), total)
    fast_total = codec.total(views, rnds, rows, d, dtype, exact=False)
    atol = 4 * n * torch.finfo(dtype).eps * float(torch.stack(ys).abs().max())
    torch.testing.assert_close(fast_total, total, rtol=0, atol=atol)
    for how in ("mean", "majority"):
        ref = aggregate_sum(total, n, how)
        exact = codec.aggregate(views, rnds, how, rows, d, dtype, exact=True)
        assert torch.equal(exact, ref), how
        fast = codec.aggregate(views, rnds, how, rows, d, dtype, exact=False)
        # Another summation order (and v/n summed instead of Σv/n): round-off of the largest message.
        torch.testing.assert_close(fast, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 300])
def test_sign_counting_aggregate_is_exact_for_any_worker_count(n):
    c = compressors.make("sign")
    codec = codec_for(c)
    rows, d = 2, 37
    g = torch.Generator().manual_seed(n)
    xs = [torch.randn(rows, d, generator=g, dtype=torch.float64) for _ in range(n)]
    layout = Layout(codec.fields(rows, d, torch.float64))
    views = layout.unpack(torch.stack([layout.pack(codec.encode(x, None, False)[0]) for x in xs]))
    msgs = torch.stack([c.apply(x, None) for x in xs])
    assert torch.equal(codec.total(views, [None] * n, rows, d, torch.float64), msgs.sum(0))
    for how in ("mean", "majority"):
        got = codec.aggregate(views, [None] * n, how, rows, d, torch.float64, exact=False)
        assert torch.equal(got, aggregate_sum(msgs.sum(0), n, how)), how


def test_sign_bits_match_sign_pm1_on_special_values():
    from compsde.compressors.signs import sign_pm1

    x = torch.tensor([1.0, -1.0, 0.0, -0.0, math.inf, -math.inf, 1e-300, -1e-300, 5e-324, -5e-324])
    assert torch.equal(sign_bits(x), sign_pm1(x) > 0)
    # NaN of either sign goes through the exact path (copysign takes the NaN's sign bit).
    nan = torch.tensor([math.nan, 1.0, -2.0, 0.0, -0.0])
    neg_nan = (-nan[:1]).clone()
    both = torch.cat([nan, neg_nan])
    assert torch.equal(sign_bits(both), sign_pm1(both) > 0)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 63, 64, 1000])
def test_bit_packing_round_trip(d):
    g = torch.Generator().manual_seed(d)
    bits = torch.rand(3, d, generator=g) < 0.5
    packed = pack_bits(bits)
    assert packed.shape == (3, (d + 7) // 8) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, d).bool(), bits)
    # Bit j of byte b holds coordinate 8b + j (little bit order).
    assert int(pack_bits(torch.tensor([True] + [False] * 7))[0]) == 1
    for width in (1, 3, 13, 24):
        v = torch.randint(0, 1 << width, (d,), generator=g)
        planes = pack_uint(v, width)
        assert planes.shape == (width, (d + 7) // 8)
        assert torch.equal(unpack_uint(planes, d), v)


def test_layout_aligns_every_field_and_pads_to_align():
    lay = Layout([Field("a", torch.uint8, (3,)), Field("b", torch.float64, (2,)), Field("c", torch.int32, (1,))])
    assert lay.nbytes % ALIGN == 0 and lay.payload_bytes == 3 + 16 + 4
    for f in lay.fields:
        assert lay.offsets[f.name] % f.itemsize == 0
    parts = {"a": torch.tensor([1, 2, 3], dtype=torch.uint8), "b": torch.tensor([1.5, -2.0], dtype=torch.float64),
             "c": torch.tensor([7], dtype=torch.int32)}
    views = lay.unpack(torch.stack([lay.pack(parts), lay.pack(parts)]))
    for k, v in parts.items():
        assert torch.equal(views[k][1], v)
    with pytest.raises(ValueError, match="payload field 'b'"):
        lay.pack({**parts, "b": torch.zeros(3, dtype=torch.float64)})


@pytest.mark.parametrize("d", [8, 10_000, 10_001, 1 << 20])
def test_sign_payload_is_d_over_8_bytes_plus_a_constant(d):
    """The issue's accounting: one bit per coordinate, 8 per byte, only alignment padding on top."""
    for dtype in (torch.float32, torch.float64):
        lay = Layout(codec_for(compressors.make("sign")).fields(1, d, dtype))
        assert lay.payload_bytes == math.ceil(d / 8)
        assert lay.nbytes - d / 8 < ALIGN + 1
        lay = Layout(codec_for(compressors.make("scaled-sign")).fields(1, d, dtype))
        assert lay.payload_bytes == math.ceil(d / 8) + dtype.itemsize


@pytest.mark.parametrize("name, params", [("natural", {}), ("qsgd", {"levels": 4}), ("natural-dithering", {"levels": 5}),
                                          ("top-k", {"ratio": 0.01}), ("rand-k", {"ratio": 0.01}),
                                          ("top-k+natural", {"ratio": 0.01})])
def test_float32_payloads_match_the_declared_bits(name, params):
    """In float32 runs every format sends what ``bits(d)`` declares, up to byte rounding per field."""
    d = 100_000
    c = compressors.make(name, **params)
    lay = Layout(codec_for(c).fields(1, d, torch.float32))
    declared = c.bits(d) / 8
    assert declared <= lay.payload_bytes <= declared + 8 * len(lay.fields) + 16


def test_unknown_compressor_falls_back_to_dense_values():
    from compsde.compressors.signs import Sign

    class Negate(Sign):  # a subclass with another apply: no dedicated format
        def apply(self, x, rnd):
            return -x

    codec = codec_for(Negate())
    x = torch.randn(2, 5, dtype=torch.float64)
    parts, y = codec.encode(x, None)
    lay = Layout(codec.fields(2, 5, torch.float64))
    views = lay.unpack(lay.pack(parts).unsqueeze(0))
    assert torch.equal(codec.decode({k: v[0] for k, v in views.items()}, None, 2, 5, torch.float64), -x)
