"""Payloads and their wire format without processes: decode ∘ encode is ``apply`` bit for bit, the
serialised payload decodes to the same bits, sums of decoded payloads are the simulator's, and the byte
counts are what the fields say."""

from __future__ import annotations

import math

import pytest
import torch

from compsde import compressors
from compsde.algorithms.aggregation import sum_messages
from compsde.compressors import Field
from compsde.compressors.signs import sign_bits, sign_pm1
from compsde.compressors.wire import ALIGN, BLOCK, Layout, decode_sum, pack_bits, pack_uint, unpack_bits, unpack_uint
from compsde.core.streams import Streams

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
    """The raw bits of a float tensor: equality of these is bit-for-bit equality (±0 and NaNs included)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _inputs(n: int, rows: int, d: int, dtype: torch.dtype, seed: int, special: bool = True) -> list[torch.Tensor]:
    """n workers' inputs over nine decades, with zeros, −0, a zero row and, if ``special``, a subnormal,
    a huge value and a row with an infinity (a diverging run hands such rows to its compressor)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(rows, d, generator=g, dtype=torch.float64).mul_(torch.logspace(-3, 3, d, dtype=torch.float64)).to(dtype)
          for _ in range(n)]
    xs[0][0, 0] = 0.0
    xs[1 % n][0, -1] = -0.0
    if d > 3:
        xs[-1][-1, :] = 0.0  # a zero row: norms 0, top-k ties
        if special and rows > 2:
            tiny = torch.finfo(dtype).tiny
            xs[0][1, 1] = tiny / 8  # subnormal
            xs[0][1, 2] = -torch.finfo(dtype).max / 4
            xs[1 % n][2, 0] = math.inf
    return xs


def _draws(c, n: int, rows: int, d: int, dtype: torch.dtype) -> list[torch.Tensor | None]:
    if not c.randomized:
        return [None] * n
    s = Streams(7, n)
    if c.shared_randomness:
        r = c.draw((1, rows), d, s.shared, dtype)[0]
        return [r] * n
    return [c.draw((1, rows), d, s.gens["compressor"][j], dtype)[0] for j in range(n)]


def _fits(name: str, params: dict, d: int) -> bool:
    try:
        compressors.make(name, **params).bits(d)
        return True
    except ValueError:  # k > d
        return False


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits, NaNs included (any NaN equals any NaN: their payload bits are not specified)."""
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(_bits(a)[~nan], _bits(b)[~nan])


@pytest.mark.parametrize("name, params, d", [(n, p, d) for (n, p) in CASES for d in (1, 7, 64) if _fits(n, p, d)],
                         ids=[f"{i}-d{d}" for i, (n, p) in zip(IDS, CASES) for d in (1, 7, 64) if _fits(n, p, d)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_decode_encode_is_apply_bit_for_bit_also_through_the_wire(name, params, d, dtype):
    c = compressors.make(name, **params)
    n, rows = 3, 4
    xs = _inputs(n, rows, d, dtype, seed=d)
    rnds = _draws(c, n, rows, d, dtype)
    ys = [c.apply(xs[j], rnds[j]) for j in range(n)]
    layout = Layout(c.fields(d, dtype), rows, d, dtype)
    bufs = []
    for j in range(n):
        p = c.encode(xs[j], rnds[j])
        assert set(p.fields) == {f.name for f in c.fields(d, dtype)}
        assert _same(c.decode(p, rnds[j]), ys[j]), f"worker {j}: decode(encode(x)) differs from apply(x)"
        bufs.append(layout.pack(p))
    recv = torch.stack(bufs)
    for j in range(n):
        m = c.decode(layout.unpack(recv[j]), rnds[j])
        assert m.dtype == dtype and _same(m, ys[j]), f"worker {j}: the serialised payload decodes differently"
    # Σ_i m_i from the buffers, in worker order: the simulator's sum, bit for bit (sparse sums included).
    total = decode_sum(c, layout, recv, rnds)
    expect = sum_messages(torch.stack(ys))
    assert _same(total, expect)
    assert _same(c.decode_sum([layout.unpack(recv[j]) for j in range(n)], rnds), expect)
    if c.summable:  # the all-reduce path: payloads summed field by field, decoded once
        summed = {k: sum(c.encode(xs[j], rnds[j]).fields[k] for j in range(n)) for k in c.encode(xs[0], rnds[0]).fields}
        p0 = c.encode(xs[0], rnds[0])
        got = c.decode(type(p0)(summed, d, dtype), rnds[0])
        torch.testing.assert_close(got, expect, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("name, params", [("sign", {}), ("scaled-sign", {}), ("natural", {}), ("qsgd", {"levels": 5}),
                                          ("natural-dithering", {"levels": 4})])
def test_blocked_decode_of_one_long_row_equals_the_whole_row(name, params):
    c = compressors.make(name, **params)
    assert c.elementwise
    d, n = BLOCK + 1000, 3
    xs = [x[:1] for x in _inputs(n, 1, d, torch.float32, seed=1, special=False)]
    rnds = _draws(c, n, 1, d, torch.float32)
    layout = Layout(c.fields(d, torch.float32), 1, d, torch.float32)
    recv = torch.stack([layout.pack(c.encode(xs[j], rnds[j])) for j in range(n)])
    expect = sum_messages(torch.stack([c.apply(xs[j], rnds[j]) for j in range(n)]))
    assert _same(decode_sum(c, layout, recv, rnds), expect)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 127, 128, 255, 256, 300])
def test_sign_vote_count_is_the_sum_of_the_signs_for_any_worker_count(n):
    c = compressors.make("sign")
    rows, d = 2, 37
    g = torch.Generator().manual_seed(n)
    xs = [torch.randn(rows, d, generator=g, dtype=torch.float64) for _ in range(n)]
    for x in xs:  # unanimous columns: the count reaches n (past a byte from 256 workers on)
        x[:, 0].abs_()
        x[:, 1] = -x[:, 1].abs()
    got = c.decode_sum([c.encode(x, None) for x in xs], [None] * n)
    assert _same(got, sum_messages(torch.stack([c.apply(x, None) for x in xs])))


def test_sign_bits_match_sign_pm1_on_special_values():
    x = torch.tensor([1.0, -1.0, 0.0, -0.0, math.inf, -math.inf, 1e-300, -1e-300, 5e-324, -5e-324])
    assert torch.equal(sign_bits(x), sign_pm1(x) > 0)
    # NaN of either sign goes through the exact path (copysign takes the NaN's sign bit).
    nan = torch.tensor([math.nan, 1.0, -2.0, 0.0, -0.0])
    both = torch.cat([nan, (-nan[:1]).clone()])
    assert torch.equal(sign_bits(both), sign_pm1(both) > 0)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 63, 64, 1000])
def test_bit_packing_round_trip(d):
    g = torch.Generator().manual_seed(d)
    bits = torch.rand(3 * d, generator=g) < 0.5
    packed = pack_bits(bits)
    assert packed.shape == ((3 * d + 7) // 8,) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, 3 * d), bits)
    # Bit j of byte b holds entry 8b + j (little bit order).
    assert int(pack_bits(torch.tensor([True] + [False] * 7))[0]) == 1
    for width in (1, 3, 13, 24):
        v = torch.randint(0, 1 << width, (d,), generator=g)
        planes = pack_uint(v, width)
        assert planes.shape == (width, (d + 7) // 8)
        assert torch.equal(unpack_uint(planes, d).long(), v)


def test_layout_aligns_every_field_and_pads_to_align():
    fields = [Field("a", "uint", 3, 8), Field("b", "float", 2), Field("c", "bits", 5), Field("e", "uint", 4, 11)]
    lay = Layout(fields, rows=2, d=5, dtype=torch.float64)
    assert lay.nbytes % ALIGN == 0
    assert lay.payload_bytes == 6 + 2 * 2 * 8 + 2 + 11 * 1
    for s in lay.slots:
        assert s.offset % s.itemsize == 0
    g = torch.Generator().manual_seed(0)
    payload = compressors.Payload({"a": torch.randint(0, 256, (2, 3), generator=g).to(torch.uint8),
                                   "b": torch.randn(2, 2, generator=g, dtype=torch.float64),
                                   "c": torch.rand(2, 5, generator=g) < 0.5,
                                   "e": torch.randint(0, 2048, (2, 4), generator=g)}, 5, torch.float64)
    back = lay.unpack(lay.pack(payload))
    for k, v in payload.fields.items():
        assert torch.equal(back.fields[k].to(v.dtype), v), k


@pytest.mark.parametrize("d", [8, 10_000, 10_001, 1 << 20])
def test_sign_payload_is_d_over_8_bytes_plus_a_constant(d):
    """One bit per coordinate, 8 per byte, only alignment padding on top."""
    for dtype in (torch.float32, torch.float64):
        lay = Layout(compressors.make("sign").fields(d, dtype), 1, d, dtype)
        assert lay.payload_bytes == math.ceil(d / 8)
        assert lay.nbytes - d / 8 < ALIGN + 1
        lay = Layout(compressors.make("scaled-sign").fields(d, dtype), 1, d, dtype)
        assert lay.payload_bytes == math.ceil(d / 8) + dtype.itemsize


@pytest.mark.parametrize("name, params", [("natural", {}), ("qsgd", {"levels": 4}), ("natural-dithering", {"levels": 5}),
                                          ("top-k", {"ratio": 0.01}), ("rand-k", {"ratio": 0.01}),
                                          ("top-k+natural", {"ratio": 0.01}), ("sign", {}), ("scaled-sign", {})])
def test_float32_payloads_match_the_declared_bits(name, params):
    """In float32 runs every payload takes what ``bits(d)`` declares, up to byte rounding per field."""
    d = 100_000
    c = compressors.make(name, **params)
    lay = Layout(c.fields(d, torch.float32), 1, d, torch.float32)
    assert sum(f.wire_bits(torch.float32) for f in c.fields(d, torch.float32)) == c.bits(d)
    declared = c.bits(d) / 8
    assert declared <= lay.payload_bytes <= declared + len(lay.slots)


def test_sign_bits_of_a_long_row_with_nans_and_negative_zeros():
    """The blocked CPU path of ``sign_bits`` (rows over 2¹⁹ values) agrees with ``sign_pm1`` everywhere."""
    x = torch.randn(3 * (1 << 18) + 5, generator=torch.Generator().manual_seed(0))
    x[10], x[(1 << 18) + 3], x[-1], x[5] = math.nan, -math.nan, -0.0, 0.0
    assert torch.equal(sign_bits(x), sign_pm1(x) > 0)
    two = x[: 2 * (1 << 18) + 2].view(2, -1)  # several rows: the same bits, row by row
    assert torch.equal(sign_bits(two), sign_pm1(two) > 0)


@pytest.mark.parametrize("name, params", [("scaled-sign", {}), ("qsgd", {"levels": 4}), ("qsgd", {"levels": 2}),
                                          ("natural-dithering", {"levels": 4}), ("natural-dithering", {"levels": 3})])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_table_decode_of_one_long_row_is_the_simulators_sum_then_aggregate(name, params, n, pairs, dtype, monkeypatch):
    """The lookup of every combination of the workers' codes (wire._decode_table) gives the bits of the
    dense sum in worker order and the aggregate, for special rows too: a zero row, an infinite norm, NaN."""
    from compsde.algorithms.aggregation import Aggregate
    from compsde.compressors import wire

    monkeypatch.setattr(wire, "_PAIRS_MIN_D", 0 if pairs else 1 << 62)
    c = compressors.make(name, **params)
    d = BLOCK + 1001  # two blocks, an odd tail
    xs = [x[:1] for x in _inputs(n, 1, d, dtype, seed=n, special=False)]
    if n > 1:
        xs[1] = torch.zeros(1, d, dtype=dtype)
    if n > 2:
        xs[2][0, 11] = math.inf
    if n > 3:
        xs[3][0, 12] = math.nan
    rnds = _draws(c, n, 1, d, dtype)
    layout = Layout(c.fields(d, dtype), 1, d, dtype)
    recv = torch.stack([layout.pack(c.encode(xs[j], rnds[j])) for j in range(n)])
    assert wire._table_planes(c, layout, n, recv.device) is not None
    for how in ("mean", "majority"):
        expect = Aggregate(n, how)(sum_messages(torch.stack([c.apply(xs[j], rnds[j]) for j in range(n)])))
        assert _same(decode_sum(c, layout, recv, rnds, finish=Aggregate(n, how)), expect), how


@pytest.mark.parametrize("n", [1, 7, 8, 9, (1 << 16) - 1, (1 << 16) + 9, 3 * (1 << 16)])
@pytest.mark.parametrize("width", [1, 3, 7, 8, 12, 24, 40])
def test_uint_planes_are_the_bits_of_the_values(n, width):
    """pack_uint's plane j packs bit j of every value (pack_bits), whatever the path; unpack_uint inverts it."""
    g = torch.Generator().manual_seed(width)
    v = torch.randint(0, 2 ** width, (n,), generator=g, dtype=torch.int64)
    planes = pack_uint(v, width)
    assert planes.shape == (width, (n + 7) // 8) and planes.dtype == torch.uint8
    for j in range(width):
        assert torch.equal(planes[j], pack_bits(((v >> j) & 1).bool()))
    assert torch.equal(unpack_uint(planes, n).long(), v)
