"""Wire formats: what one worker hands to the collectives for each compressor family, and back.

A *codec* turns a worker's message input x (rows of length d, shape (rows, d): the R Monte Carlo
repetitions of a run, or one bucket of a DDP model) and the compressor's draw into *payload
tensors*, and turns the payloads of the workers back into their decompressed messages. The
decompressed message equals ``compressor.apply(x, rnd)`` bit for bit, in the run's dtype (a float64
run sends float64 values), which is what makes a distributed run reproduce the simulator.

Two modes, chosen from the compressor's declared ``summable``:

* **sum** (identity, rand-k with ``shared=True``, and compositions of those): the payload is one
  tensor in the run's dtype that an all-reduce sums over the workers; the receiver turns the sum of
  payloads into the sum of messages (``decode_sum``). Shared rand-k sends only its k values: every
  worker holds the shared indices.
* **gather** (everything else): the payload is a set of fixed-size fields (``Field``) packed into
  one byte buffer (``Layout``) that an all-gather concatenates; the receiver decodes each worker's
  fields (``decode``) and aggregates.

Formats (per row of length d; "planes" = fixed-width integers sent as bit planes, 8 per byte):

* ``sign``               d sign bits (bit = 1 for +1), packed 8 per byte, little bit order.
* ``scaled-sign``        d sign bits + the scale ‖x‖₁/d as one value.
* ``natural``            float32 runs: the 8-bit exponent field (one byte) + 1 sign bit per value
                         (9 bits, as declared); other dtypes: the top 16 bits of each value (sign,
                         exponent, zero mantissa bits).
* ``qsgd``, ``natural-dithering``  the norm as one value + per coordinate the level index and the
                         sign in 1 + ⌈log₂(s + 1)⌉ bit planes (as declared).
* sparsifiers            the k kept values (already scaled); top-k also sends its indices in
                         ⌈log₂ d⌉ bit planes each (as declared); rand-k sends no indices: the
                         receiver replays the sender's compressor stream (``needs_draws``), or, with
                         ``shared=True``, uses the shared draw it already has.
* compositions           the inner sparsifier's indices as above + the outer codec's payload on
                         the k kept values.
* anything else          the decompressed message as dense values (correct, not compressed).

Exactness limits (documented by the compressors themselves): natural compression's subnormal
outputs do not fit the exponent code (they arrive as ±0); a sign input that is NaN is sent through
an exact slow path (``sign_bits``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from compsde.aggregation import AGGREGATIONS
from compsde.compressors import Compressor
from compsde.compressors.base import index_bits
from compsde.compressors.compose import Compose
from compsde.compressors.quantizers import QSGD, Natural, NaturalDithering
from compsde.compressors.signs import ScaledSign, Sign, sign_pm1
from compsde.compressors.sparsifiers import Identity, Sparsifier

__all__ = [
    "ALIGN", "Codec", "Field", "Layout", "codec_for", "pack_bits", "pack_uint", "sign_bits",
    "unpack_bits", "unpack_uint",
]

#: Every field starts at a multiple of its element size and a worker's buffer is a multiple of
#: ALIGN bytes, so the fields of every worker in an all-gathered buffer can be viewed in place.
ALIGN = 8


# ---- bit packing ---------------------------------------------------------------------------------


def pack_bits(bits: Tensor) -> Tensor:
    """(..., d) bool (or 0/non-0 uint8) → (..., ⌈d/8⌉) uint8; coordinate 8b + j is bit j of byte b.

    On CPU this is ``np.packbits`` (~1 ms per 10⁷ bits here); elsewhere a torch fallback.
    """
    if bits.device.type == "cpu":
        return torch.from_numpy(np.packbits(bits.numpy(), axis=-1, bitorder="little"))
    d = bits.shape[-1]
    b = torch.nn.functional.pad(bits.to(torch.uint8), (0, (-d) % 8)).view(*bits.shape[:-1], -1, 8)
    w = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (b * w).sum(-1).to(torch.uint8)  # distinct powers of two: the sum is a bitwise or


def unpack_bits(packed: Tensor, d: int) -> Tensor:
    """Inverse of ``pack_bits``: (..., ⌈d/8⌉) uint8 → (..., d) uint8 holding 0/1."""
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=d, bitorder="little"))
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    u = (packed.unsqueeze(-1) >> shifts) & 1
    return u.reshape(*packed.shape[:-1], -1)[..., :d]


def pack_rows(bits: Tensor) -> Tensor:
    """(rows, n) bits → one flat stream of ⌈rows·n/8⌉ bytes (no padding between rows)."""
    return pack_bits(bits.reshape(-1))


def unpack_rows(packed: Tensor, rows: int, n: int) -> Tensor:
    """Inverse of ``pack_rows``: (rows, n) uint8 holding 0/1."""
    return unpack_bits(packed.reshape(-1), rows * n).view(rows, n)


def _nbits(rows: int, n: int) -> int:
    return (rows * n + 7) // 8


def pack_uint(values: Tensor, width: int) -> Tensor:
    """Integers in [0, 2^width) of shape (..., n) → ``width`` bit planes, (..., width, ⌈n/8⌉) uint8."""
    planes = [pack_bits(values & (1 << j)) for j in range(width)]
    if not planes:
        return torch.empty(*values.shape[:-1], 0, (values.shape[-1] + 7) // 8, dtype=torch.uint8)
    return torch.stack(planes, dim=-2)


def unpack_uint(planes: Tensor, n: int, dtype: torch.dtype = torch.int64) -> Tensor:
    """Inverse of ``pack_uint``: (..., width, ⌈n/8⌉) uint8 → (..., n) integers of ``dtype``."""
    width = planes.shape[-2]
    out = torch.zeros(*planes.shape[:-2], n, dtype=dtype, device=planes.device)
    for j in range(width):
        out |= unpack_bits(planes[..., j, :], n).to(dtype) << j
    return out


def unpack_uint8(planes: Tensor, n: int) -> Tensor:
    """``unpack_uint`` for at most 8 planes, as uint8: on CPU a Horner scheme of byte adds
    (acc ← 2·acc + plane), which numpy vectorises (its uint8 shifts are ~20× slower)."""
    width = planes.shape[-2]
    if width > 8 or planes.device.type != "cpu" or planes.dim() != 2:
        return unpack_uint(planes, n, torch.int64).to(torch.uint8)
    p = planes.numpy()
    acc = np.unpackbits(p[width - 1], count=n, bitorder="little")
    for j in range(width - 2, -1, -1):
        np.add(acc, acc, out=acc)
        np.add(acc, np.unpackbits(p[j], count=n, bitorder="little"), out=acc)
    return torch.from_numpy(acc)


def sign_bits(x: Tensor) -> Tensor:
    """Bool (..., d): True where ``sign_pm1(x)`` is +1, i.e. sign(0) = sign(−0.0) = +1.

    Fast path ``x >= 0`` (one comparison pass); it differs from ``sign_pm1`` only at NaN, whose sign
    ``sign_pm1`` takes from the NaN's sign bit. A non-finite sum detects any NaN (and inf) for the
    price of one reduction, and then the exact form ``¬signbit(x + 0.0)`` is used.
    """
    ge = x >= 0
    if not bool(torch.isfinite(x.sum())):
        return ~torch.signbit(x + 0.0)
    return ge


#: Elements per block in the CPU sign paths: a block's temporaries (bools, bytes, a float32 block)
#: stay in the core's cache (2 MB L2 here) instead of making passes over d-length arrays in memory.
#: Measured at d = 10⁷, 4 ranks on 2 cores: unpack + aggregate 11 ms blocked vs 19 ms unblocked.
BLOCK = 1 << 18


def pack_sign_rows(x: Tensor) -> Tensor:
    """``pack_rows(sign_bits(x))`` for x (rows, d), block by block on CPU: the comparison, the NaN
    check (a max over the block just read, so from cache) and the packing of one block at a time."""
    if x.device.type != "cpu":
        return pack_rows(sign_bits(x))
    xn = x.detach().reshape(-1).contiguous().numpy()
    n = xn.shape[0]
    out = np.empty((n + 7) // 8, dtype=np.uint8)
    ge = np.empty(min(BLOCK, n), dtype=bool)
    with np.errstate(invalid="ignore"):
        for i in range(0, n, BLOCK):
            xc = xn[i: i + BLOCK]
            g = np.greater_equal(xc, 0, out=ge[: xc.shape[0]])
            if np.isnan(np.max(xc)):  # max propagates NaN (a cached re-read of the block): exact form
                g = ~np.signbit(xc + xc.dtype.type(0.0))
            out[i // 8: (i + xc.shape[0] + 7) // 8] = np.packbits(g, bitorder="little")
    return torch.from_numpy(out)


# ---- layouts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One payload tensor of one worker: name, dtype and shape (fixed for a run)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


class Layout:
    """Fields packed into one uint8 buffer per worker: largest element size first, so every field
    starts aligned; the total is padded to a multiple of ``ALIGN`` bytes."""

    def __init__(self, fields: Sequence[Field]) -> None:
        self.fields = sorted(fields, key=lambda f: -f.itemsize)  # stable: equal sizes keep their order
        self.offsets: dict[str, int] = {}
        off = 0
        for f in self.fields:
            self.offsets[f.name] = off
            off += f.nbytes
        self.payload_bytes = off  # what the fields need
        self.nbytes = off + (-off) % ALIGN  # what one worker hands to the all-gather

    def pack(self, parts: dict[str, Tensor], out: Tensor | None = None) -> Tensor:
        """Copy the fields into a (nbytes,) uint8 buffer (``out`` if given); the padding is zeroed."""
        if out is None:
            out = torch.empty(self.nbytes, dtype=torch.uint8, device=_device(parts))
        for f in self.fields:
            off = self.offsets[f.name]
            dst = out[off: off + f.nbytes].view(f.dtype).view(f.shape)
            src = parts[f.name]
            if tuple(src.shape) != f.shape or src.dtype != f.dtype:
                raise ValueError(f"payload field {f.name!r}: expected {f.dtype} {f.shape}, got {src.dtype} {tuple(src.shape)}")
            dst.copy_(src)
        if self.nbytes > self.payload_bytes:
            out[self.payload_bytes:].zero_()
        return out

    def unpack(self, buf: Tensor) -> dict[str, Tensor]:
        """Views (no copy) of every field of every worker: (n, nbytes) uint8 → name → (n, *shape)."""
        n = buf.shape[0]
        out = {}
        for f in self.fields:
            off = self.offsets[f.name]
            out[f.name] = buf[:, off: off + f.nbytes].view(f.dtype).view(n, *f.shape)
        return out


def _device(parts: dict[str, Tensor]) -> torch.device:
    return next(iter(parts.values())).device if parts else torch.device("cpu")


# ---- codecs --------------------------------------------------------------------------------------


class Codec:
    """How the messages of one compressor travel (see module doc). Subclasses implement a mode.

    Shapes: x is (rows, d); ``rnd`` is that worker's draw with leading dim rows (or None); payload
    fields have shapes given by ``fields``; decoded messages are (rows, d).
    """

    #: sum mode (all-reduce) if True, gather mode (all-gather) otherwise.
    summable: bool = False

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor

    # -- what travels
    def fields(self, rows: int, d: int, dtype: torch.dtype) -> list[Field]:
        """Gather mode: the payload fields of one worker."""
        raise NotImplementedError

    def sum_shape(self, rows: int, d: int) -> tuple[int, ...]:
        """Sum mode: shape of the tensor that is all-reduced (dtype = the run's)."""
        raise NotImplementedError

    def needs_draws(self, d: int) -> bool:
        """Whether decoding a worker's payload needs that worker's draw (replayed by the receiver)."""
        return False

    # -- sender
    def encode(self, x: Tensor, rnd: Tensor | None, need_message: bool = True) -> tuple[dict[str, Tensor], Tensor | None]:
        """(payload fields, the decompressed message C(x)); the message may be None when not
        ``need_message`` (codecs that get it for free return it anyway)."""
        raise NotImplementedError

    # -- receiver
    def decode(self, parts: dict[str, Tensor], rnd: Tensor | None, rows: int, d: int, dtype: torch.dtype) -> Tensor:
        """One worker's message (rows, d) from its fields and, if needed, its draw."""
        raise NotImplementedError

    def decode_sum(self, summed: Tensor, rnd: Tensor | None, d: int) -> Tensor:
        """Sum mode: Σ_i C_i(x_i) (rows, d) from the all-reduced payload and the common draw."""
        raise NotImplementedError

    def total(self, views: dict[str, Tensor], rnds: Sequence[Tensor | None], rows: int, d: int,
              dtype: torch.dtype, *, exact: bool = True, out: Tensor | None = None) -> Tensor:
        """Gather mode: Σ_i m_i (rows, d) of the n workers' messages ((n, ...) fields, n draws).

        ``exact=True`` decodes the n messages into one (n, rows, d) tensor and sums it over dim 0,
        as the simulator sums its messages (``Method.finish`` then turns the sum into the update),
        so the result is the simulator's bit for bit. ``exact=False`` accumulates message by message,
        block by block where the codec can (no n·d buffer; for n ≥ 5 ``torch.sum`` may add in
        another order: round-off).
        """
        n = len(rnds)
        if not exact and rows == 1 and self.can_span(dtype):
            return self._blocked(views, None, n, d, dtype, out)
        one = lambda j: self.decode({k: v[j] for k, v in views.items()}, rnds[j], rows, d, dtype)  # noqa: E731
        if exact:
            first = one(0)
            msgs = torch.empty(n, *first.shape, dtype=first.dtype, device=first.device)
            msgs[0] = first
            for j in range(1, n):
                msgs[j] = one(j)
            return msgs.sum(0) if out is None else torch.sum(msgs, 0, out=out)
        acc = one(0)
        acc = acc.clone() if out is None else out.copy_(acc)
        for j in range(1, n):
            acc += one(j)
        return acc

    def aggregate(self, views: dict[str, Tensor], rnds: Sequence[Tensor | None], how: str, rows: int, d: int,
                  dtype: torch.dtype, *, exact: bool = True, out: Tensor | None = None) -> Tensor:
        """The aggregate (mean or majority vote, ``compsde.aggregation.aggregate_sum``) of the n
        messages, from ``total``; ``exact=False`` fuses the last step into the blocks where it can."""
        if how not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
        n = len(rnds)
        if not exact and rows == 1 and self.can_span(dtype):
            return self._blocked(views, how, n, d, dtype, out)
        return _finish(self.total(views, rnds, rows, d, dtype, exact=exact, out=out), how, n)

    # -- blocked decoding (one row): the temporaries of a block stay in cache
    def can_span(self, dtype: torch.dtype) -> bool:
        """Whether ``decode_span`` works for this dtype (one-row payloads)."""
        return False

    def decode_span(self, parts: dict[str, Tensor], lo: int, hi: int, dtype: torch.dtype) -> Tensor:
        """Positions [lo, hi) of one worker's one-row message, as a flat tensor (lo a multiple of 8)."""
        raise NotImplementedError

    def _blocked(self, views, how, n, d, dtype, out):
        """Σ_i m_i (``how`` None) or the aggregate, one ``BLOCK`` of coordinates at a time."""
        res = out if out is not None else torch.empty(1, d, dtype=dtype, device=next(iter(views.values())).device)
        flat = res.view(-1)
        workers = [{k: v[j] for k, v in views.items()} for j in range(n)]
        for lo in range(0, d, BLOCK):
            hi = min(d, lo + BLOCK)
            blk = flat[lo:hi]
            blk.copy_(self.decode_span(workers[0], lo, hi, dtype))
            for j in range(1, n):
                blk += self.decode_span(workers[j], lo, hi, dtype)
            if how is not None:
                _finish(blk, how, n)
        return res


def _finish(total: Tensor, how: str, n: int) -> Tensor:
    """Sum of messages → aggregate, in place: ``compsde.aggregation.aggregate_sum`` (mean = sum / n)."""
    if how == "mean":
        return total.div_(n)
    if how == "majority":
        return total.sign_()
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


class DenseCodec(Codec):
    """Fallback for compressors without a dedicated format: the decompressed message as values."""

    def fields(self, rows: int, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("values", dtype, (rows, d))]

    def encode(self, x, rnd, need_message=True):
        y = self.compressor.apply(x, rnd)
        return {"values": y}, y

    def decode(self, parts, rnd, rows, d, dtype):
        return parts["values"].clone()


class IdentityCodec(Codec):
    """C(x) = x: the gradient itself, summed by an all-reduce."""

    summable = True

    def sum_shape(self, rows: int, d: int) -> tuple[int, ...]:
        return (rows, d)

    def encode(self, x, rnd, need_message=True):
        return {"sum": x}, x  # Identity.apply returns x itself

    def decode_sum(self, summed, rnd, d):
        return summed


class SignCodec(Codec):
    """sign(x) ∈ {−1, +1}^d as d bits; aggregated by counting the +1s of all workers at once."""

    def fields(self, rows: int, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("bits", torch.uint8, (_nbits(rows, d),))]

    def encode(self, x, rnd, need_message=True):
        if need_message:
            y = sign_pm1(x)
            return {"bits": pack_rows(y > 0)}, y
        return {"bits": pack_sign_rows(x)}, None

    def decode(self, parts, rnd, rows, d, dtype):
        return unpack_rows(parts["bits"], rows, d).to(dtype).mul_(2).sub_(1)

    def total(self, views, rnds, rows, d, dtype, *, exact=True, out=None):
        return self._votes(views, None, rows, d, dtype, out)

    def aggregate(self, views, rnds, how, rows, d, dtype, *, exact=True, out=None):
        if how not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
        return self._votes(views, how, rows, d, dtype, out)

    def _votes(self, views, how, rows, d, dtype, out):
        """Σ_i m_i = 2c − n, with c the number of +1s per coordinate, computed in small integers
        (``vote_sum``) and converted once; then mean = (2c − n)/n or majority = sign(2c − n). All
        exactly the simulator's (sums of ±1 are exact in any order), whatever ``exact`` says. On CPU
        block by block (``BLOCK``), so the bytes and int8 votes of a block never leave the cache."""
        bits = views["bits"]
        n = bits.shape[0]
        res = out if out is not None else torch.empty(rows, d, dtype=dtype, device=bits.device)
        flat = res.view(-1)  # ``out`` must be contiguous
        total = rows * d
        step = BLOCK if bits.device.type == "cpu" else total
        scale = None if how != "mean" or n == 1 else (1.0 / n if n & (n - 1) == 0 else None)
        for i in range(0, total, step):
            m = min(step, total - i)
            v = vote_sum(bits[:, i // 8: (i + m + 7) // 8], m)
            if how == "majority":
                v = v.sign_()  # in the integer domain: nothing to do after the conversion
            blk = flat[i: i + m]
            blk.copy_(v)
            if how == "mean" and n > 1:
                # x·(1/n) equals x/n exactly when n is a power of two (and a multiply is cheaper).
                blk.mul_(scale) if scale is not None else blk.div_(n)
        return res


def vote_sum(bits: Tensor, d: int) -> Tensor:
    """Σ_i (2 b_i − 1) per position of n packed bit streams (n, ⌈d/8⌉): (d,) int8 (n ≤ 127) or int32.

    Each worker's bits are unpacked to bytes (``np.unpackbits``, a table lookup, ~0.5 ms per 10⁷ bits
    here) and counted with uint8 adds; 2c − n then fits an int8 (two in-place byte passes). The d
    floats of the result are written once, by the caller's conversion: the whole aggregate costs
    about three copies of a d-length float tensor for n = 4.
    """
    n = bits.shape[0]
    if bits.device.type == "cpu":
        b = bits.numpy()
        acc = np.unpackbits(b[0], axis=-1, count=d, bitorder="little")
        if n > 127:
            acc = acc.astype(np.int32)
        for j in range(1, n):
            np.add(acc, np.unpackbits(b[j], axis=-1, count=d, bitorder="little"), out=acc, casting="unsafe")
        np.add(acc, acc, out=acc)  # 2c (numpy's uint8 shift is not vectorised: 20× slower than an add)
        if n <= 127:
            acc -= np.uint8(n)  # wraps modulo 256: the bytes of the int8 value 2c − n
            return torch.from_numpy(acc.view(np.int8))
        acc -= n
        return torch.from_numpy(acc)
    wide = torch.int8 if n <= 127 else torch.int32
    acc = unpack_bits(bits[0], d).to(wide).mul_(2).sub_(1)
    for j in range(1, n):
        acc += unpack_bits(bits[j], d).to(wide).mul_(2).sub_(1)
    return acc


class ScaledSignCodec(Codec):
    """(‖x‖₁/d)·sign(x): d sign bits and one scale value per row."""

    def fields(self, rows: int, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("scale", dtype, (rows, 1)), Field("bits", torch.uint8, (_nbits(rows, d),))]

    def encode(self, x, rnd, need_message=True):
        d = x.shape[-1]
        if need_message:
            y = self.compressor.apply(x, rnd)
            # The scale exactly as ScaledSign.apply computes it (the message is ±scale).
            scale = x.abs().sum(dim=-1, keepdim=True) / d
            return {"scale": scale, "bits": pack_sign_rows(x)}, y
        scale = x.abs().sum(dim=-1, keepdim=True) / d
        return {"scale": scale, "bits": pack_sign_rows(x)}, None

    def decode(self, parts, rnd, rows, d, dtype):
        return unpack_rows(parts["bits"], rows, d).to(dtype).mul_(2).sub_(1).mul_(parts["scale"])

    def can_span(self, dtype):
        return True

    def decode_span(self, parts, lo, hi, dtype):
        u = unpack_bits(parts["bits"][lo // 8: (hi + 7) // 8], hi - lo)
        return u.to(dtype).mul_(2).sub_(1).mul_(parts["scale"].reshape(()))


class NaturalCodec(Codec):
    """Natural compression: every output is ±2^e or ±0 (or ±inf), so its mantissa bits are zero.

    float32: the exponent byte + a sign bit (9 bits per coordinate, as declared). Other dtypes: the
    top 16 bits of the value (float64: sign, 11 exponent bits and 4 zero mantissa bits).
    """

    def fields(self, rows: int, d: int, dtype: torch.dtype) -> list[Field]:
        if dtype == torch.float32:
            return [Field("exponent", torch.uint8, (rows, d)), Field("sign", torch.uint8, (_nbits(rows, d),))]
        if dtype.itemsize == 2:
            return [Field("values", dtype, (rows, d))]
        return [Field("top", torch.int16, (rows, d))]

    def encode(self, x, rnd, need_message=True):
        y = self.compressor.apply(x, rnd)
        if y.dtype == torch.float32:
            i = y.view(torch.int32)
            # (i >> 23) holds the sign above the 8 exponent bits; the uint8 cast keeps the low 8 bits.
            return {"exponent": (i >> 23).to(torch.uint8), "sign": pack_rows(i < 0)}, y
        if y.element_size() == 2:
            return {"values": y}, y
        shift = 8 * y.element_size() - 16
        return {"top": (y.view(_INT[y.element_size()]) >> shift).to(torch.int16)}, y

    def decode(self, parts, rnd, rows, d, dtype):
        if dtype == torch.float32:
            e = parts["exponent"].to(torch.int32) << 23
            s = unpack_rows(parts["sign"], rows, d).to(torch.int32).neg_().bitwise_and_(-(1 << 31))
            return e.bitwise_or_(s).view(torch.float32)
        if "values" in parts:
            return parts["values"].clone()
        it = _INT[dtype.itemsize]
        shift = 8 * dtype.itemsize - 16
        return (parts["top"].to(it) << shift).view(dtype)

    def can_span(self, dtype):
        return dtype == torch.float32

    def decode_span(self, parts, lo, hi, dtype):
        e = parts["exponent"][0, lo:hi].to(torch.int32) << 23
        s = unpack_bits(parts["sign"][lo // 8: (hi + 7) // 8], hi - lo).to(torch.int32).neg_().bitwise_and_(-(1 << 31))
        return e.bitwise_or_(s).view(torch.float32)


_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
#: dtype → (integer view, mantissa bits, exponent bias), for reading exponent fields of non-negative values.
_EXPONENT = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}


class _LevelCodec(Codec):
    """QSGD / natural dithering: y = ±‖x‖·L with L on a grid of s + 1 levels. Sends the norm and, per
    coordinate, the level index and the sign as 1 + ⌈log₂(s + 1)⌉ bit planes."""

    def width(self) -> int:
        return math.ceil(math.log2(self.compressor.levels + 1))  # type: ignore[attr-defined]

    def fields(self, rows: int, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("norm", dtype, (rows, 1)), Field("code", torch.uint8, (self.width() + 1, _nbits(rows, d)))]

    def level_index(self, y_abs: Tensor, norm: Tensor) -> Tensor:
        raise NotImplementedError

    def level_values(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        raise NotImplementedError

    def encode(self, x, rnd, need_message=True):
        y = self.compressor.apply(x, rnd)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # as the compressor computes it
        w = self.width()
        code = self.level_index(y.abs(), norm).to(torch.uint8)
        code |= torch.signbit(y).to(torch.uint8) << w
        return {"norm": norm, "code": pack_uint(code.reshape(-1), w + 1)}, y

    def signed_levels(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Code → ±L (level index in the low bits, sign on top; −0.0 for a negative zero), so that
        ``signed_levels[code] · scale`` is apply's ``copysign(L · scale, x)`` exactly (scale ≥ 0)."""
        lv = self.level_values(dtype, device)
        pad = torch.zeros((1 << self.width()) - lv.numel(), dtype=dtype, device=device)
        pos = torch.cat([lv, pad])
        return torch.cat([pos, -pos])

    def scale(self, norm: Tensor) -> Tensor:
        """The factor the levels are multiplied by (as the compressor computes it)."""
        raise NotImplementedError

    def decode(self, parts, rnd, rows, d, dtype):
        code = unpack_uint(parts["code"], rows * d, torch.int64).view(rows, d)
        return self.signed_levels(dtype, code.device)[code].mul_(self.scale(parts["norm"]))

    def can_span(self, dtype):
        return True

    def decode_span(self, parts, lo, hi, dtype):
        code = unpack_uint8(parts["code"][:, lo // 8: (hi + 7) // 8], hi - lo)
        table = self.signed_levels(dtype, code.device)
        if code.device.type == "cpu":  # numpy takes uint8 indices as they are (torch wants int64)
            vals = torch.from_numpy(np.take(table.numpy(), code.numpy()))
        else:
            vals = table[code.long()]
        return vals.mul_(self.scale(parts["norm"]).reshape(()))


class QSGDCodec(_LevelCodec):
    """QSGD with s levels: y_j = ±ξ_j·(‖x‖/s), ξ_j ∈ {0, …, s}."""

    def level_index(self, y_abs, norm):
        s = float(self.compressor.levels)  # type: ignore[attr-defined]
        c = norm / s
        if bool((c > 0).all()) and bool(torch.isfinite(c).all()):
            # |y| = ξ·c rounded: |y|/c is within a few ulps of the integer ξ ∈ [0, s].
            return y_abs.div_(c).round_()
        safe = torch.where(c > 0, c, torch.ones_like(c))
        xi = torch.nan_to_num(y_abs / safe).round_().clamp_(0, s)
        return torch.where(c > 0, xi, torch.zeros_like(xi))

    def level_values(self, dtype, device):
        return torch.arange(self.compressor.levels + 1, dtype=dtype, device=device)  # type: ignore[attr-defined]

    def scale(self, norm):
        # QSGD.apply: level.mul_(norm / s); the same product, so the same bits.
        return norm / float(self.compressor.levels)  # type: ignore[attr-defined]


class NaturalDitheringCodec(_LevelCodec):
    """Natural dithering with s levels: y_j = ±‖x‖·L_j, L_j ∈ {0, 2^(1−s), …, 1/2, 1}; index 0 is 0,
    index i ≥ 1 is 2^(i−s)."""

    def level_index(self, y_abs, norm):
        s = self.compressor.levels  # type: ignore[attr-defined]
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        lev = torch.nan_to_num(y_abs.div_(safe))  # exact: y = L·‖x‖ with L a power of two
        if lev.dtype in _EXPONENT:
            # L = 2^(i − s) is a normal power of two (or 0): its exponent field is bias + i − s, and
            # 0's field is 0, which the clamp maps to index 0 (bias > s for the levels allowed).
            it, mant, bias = _EXPONENT[lev.dtype]
            return ((lev.view(it) >> mant) - (bias - s)).clamp_(0, s)
        _, e = torch.frexp(lev)  # L = 0.5·2^e → log₂ L = e − 1
        idx = (e.to(torch.int64) - 1 + s).clamp_(0, s)
        return torch.where(lev > 0, idx, torch.zeros_like(idx))

    def level_values(self, dtype, device):
        s = self.compressor.levels  # type: ignore[attr-defined]
        return torch.tensor([0.0] + [2.0 ** (i - s) for i in range(1, s + 1)], dtype=dtype, device=device)

    def scale(self, norm):
        return norm  # NaturalDithering.apply: level.mul_(norm)


class SparseCodec(Codec):
    """C(x) = s·T_S x: the k kept values (scaled), and the indices S only if they depend on x (top-k).

    Rand-k's indices come from the sender's compressor stream, which every receiver replays
    (``needs_draws``); with ``shared=True`` every worker already holds the shared draw, and scaled
    rand-k is then summable (all-reduce of the k values).
    """

    def __init__(self, compressor: Sparsifier) -> None:
        super().__init__(compressor)
        self.summable = bool(compressor.summable)

    def sends_indices(self, d: int) -> bool:
        return self.compressor.index_bits(d) > 0

    def needs_draws(self, d: int) -> bool:
        c = self.compressor
        return not self.sends_indices(d) and c.randomized and not c.shared_randomness

    def _k(self, d: int) -> int:
        return self.compressor.support(d)

    def fields(self, rows, d, dtype):
        k = self._k(d)
        out = [Field("values", dtype, (rows, k))]
        if self.sends_indices(d) and index_bits(d) > 0:
            out.append(Field("index", torch.uint8, (index_bits(d), _nbits(rows, k))))
        return out

    def sum_shape(self, rows, d):
        return (rows, self._k(d))

    def _values(self, x: Tensor, idx: Tensor) -> Tensor:
        vals = x.gather(-1, idx)
        s = self.compressor.scale(x.shape[-1])  # type: ignore[attr-defined]
        return vals * s if s != 1.0 else vals

    def encode(self, x, rnd, need_message=True):
        c: Sparsifier = self.compressor  # type: ignore[assignment]
        idx = c.indices(x, rnd)
        vals = self._values(x, idx)
        y = torch.zeros_like(x).scatter_(-1, idx, vals) if need_message else None
        d = x.shape[-1]
        if self.summable:
            return {"sum": vals}, y
        parts = {"values": vals}
        if self.sends_indices(d) and index_bits(d) > 0:
            parts["index"] = pack_uint(idx.reshape(-1), index_bits(d))
        return parts, y

    def indices(self, parts: dict[str, Tensor], rnd: Tensor | None, rows: int, d: int) -> Tensor:
        k = self._k(d)
        if self.sends_indices(d):
            if index_bits(d) == 0:
                return torch.zeros(rows, k, dtype=torch.int64)
            return unpack_uint(parts["index"], rows * k, torch.int64).view(rows, k)
        # Indices are a function of the draw only (rand-k): the shape of x is all they need from it.
        # (The draw may come from a CPU generator while the values live on a GPU: callers move them.)
        return self.compressor.indices(torch.zeros(()).expand(rows, d), rnd)  # type: ignore[attr-defined]

    def decode(self, parts, rnd, rows, d, dtype):
        vals = parts["values"]
        idx = self.indices(parts, rnd, rows, d).to(vals.device)
        return torch.zeros(vals.shape[0], d, dtype=dtype, device=vals.device).scatter_(-1, idx, vals)

    def decode_sum(self, summed, rnd, d):
        idx = self.indices({}, rnd, summed.shape[0], d).to(summed.device)
        return torch.zeros(summed.shape[0], d, dtype=summed.dtype, device=summed.device).scatter_(-1, idx, summed)

    def total(self, views, rnds, rows, d, dtype, *, exact=True, out=None):
        if exact:
            return super().total(views, rnds, rows, d, dtype, exact=True, out=out)
        return self._scatter(views, rnds, rows, d, dtype, out, 1)

    def aggregate(self, views, rnds, how, rows, d, dtype, *, exact=True, out=None):
        if exact or how != "mean":
            return super().aggregate(views, rnds, how, rows, d, dtype, exact=exact, out=out)
        # mean: add v/n (k values per worker) rather than dividing all d coordinates afterwards
        return self._scatter(views, rnds, rows, d, dtype, out, len(rnds))

    def _scatter(self, views, rnds, rows, d, dtype, out, divide: int):
        vals = views["values"]
        acc = out.zero_() if out is not None else torch.zeros(rows, d, dtype=dtype, device=vals.device)
        for j in range(vals.shape[0]):
            idx = self.indices({k: v[j] for k, v in views.items()}, rnds[j], rows, d).to(vals.device)
            acc.scatter_add_(-1, idx, vals[j] / divide if divide != 1 else vals[j])
        return acc


class ComposeCodec(Codec):
    """outer ∘ inner: the inner sparsifier's indices (as ``SparseCodec``) + the outer codec's payload
    on the k kept values (rows of length k)."""

    def __init__(self, compressor: Compose) -> None:
        super().__init__(compressor)
        self.inner = SparseCodec(compressor.inner) if not isinstance(compressor.inner, Identity) else None
        self.outer = codec_for(compressor.outer)
        self.summable = bool(compressor.summable)

    def _split(self, rnd: Tensor | None, d: int) -> tuple[Tensor | None, Tensor | None]:
        c: Compose = self.compressor  # type: ignore[assignment]
        if rnd is None:
            return None, None
        a = c.inner.support(d) if c.inner.randomized else 0
        return (rnd[..., :a] if a else None), (rnd[..., a:] if c.outer.randomized else None)

    def _k(self, d: int) -> int:
        return self.compressor.inner.support(d)  # type: ignore[attr-defined]

    def needs_draws(self, d: int) -> bool:
        c: Compose = self.compressor  # type: ignore[assignment]
        inner_needs = self.inner is not None and not self.inner.sends_indices(d) and c.inner.randomized
        return (inner_needs and not c.shared_randomness) or self.outer.needs_draws(self._k(d))

    def fields(self, rows, d, dtype):
        if self.inner is None:
            return self.outer.fields(rows, d, dtype)
        out = [Field(f"o.{f.name}", f.dtype, f.shape) for f in self.outer.fields(rows, self._k(d), dtype)]
        out += [f for f in self.inner.fields(rows, d, dtype) if f.name == "index"]
        return out

    def sum_shape(self, rows, d):
        return (rows, self._k(d))

    def encode(self, x, rnd, need_message=True):
        c: Compose = self.compressor  # type: ignore[assignment]
        if rnd is None and c.randomized:
            raise ValueError(f"{c.name}: encode needs the draw; got rnd=None")
        d = x.shape[-1]
        ri, ro = self._split(rnd, d)
        if self.inner is None:
            return self.outer.encode(x, ro, need_message)
        idx = c.inner.indices(x, ri)  # type: ignore[attr-defined]
        vals = self.inner._values(x, idx)
        if self.summable:  # outer is the identity (the only summable outer)
            y = torch.zeros_like(x).scatter_(-1, idx, vals) if need_message else None
            return {"sum": vals}, y
        oparts, oy = self.outer.encode(vals, ro, need_message)
        parts = {f"o.{k}": v for k, v in oparts.items()}
        if self.inner.sends_indices(d) and index_bits(d) > 0:
            parts["index"] = pack_uint(idx.reshape(-1), index_bits(d))
        y = torch.zeros_like(x).scatter_(-1, idx, oy) if need_message else None
        return parts, y

    def decode(self, parts, rnd, rows, d, dtype):
        ri, ro = self._split(rnd, d)
        if self.inner is None:
            return self.outer.decode(parts, ro, rows, d, dtype)
        k = self._k(d)
        oparts = {name[2:]: v for name, v in parts.items() if name.startswith("o.")}
        vals = self.outer.decode(oparts, ro, rows, k, dtype)
        idx = self.inner.indices(parts, ri, rows, d).to(vals.device)
        return torch.zeros(rows, d, dtype=dtype, device=vals.device).scatter_(-1, idx, vals)

    def decode_sum(self, summed, rnd, d):
        ri, _ = self._split(rnd, d)
        if self.inner is None:
            return self.outer.decode_sum(summed, None, d)
        return self.inner.decode_sum(summed, ri, d)


def codec_for(compressor: Compressor) -> Codec:
    """The codec of a compressor: by family, with ``DenseCodec`` as the (uncompressed) fallback.

    Exact types for the dense families (a subclass may change ``apply``); sparsifiers by the
    ``indices``/``scale`` contract that ``Sparsifier.apply`` and ``Compose`` rely on already.
    """
    if isinstance(compressor, Compose):
        return ComposeCodec(compressor)
    if isinstance(compressor, Identity):
        return IdentityCodec(compressor)
    if isinstance(compressor, Sparsifier):
        return SparseCodec(compressor)
    exact = {Sign: SignCodec, ScaledSign: ScaledSignCodec, Natural: NaturalCodec, QSGD: QSGDCodec,
             NaturalDithering: NaturalDitheringCodec}
    return exact.get(type(compressor), DenseCodec)(compressor)
