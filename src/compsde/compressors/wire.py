"""The wire format of payloads: fields ↔ one byte buffer per worker, and the sum of decoded messages.

A compressor declares its payload's fields per row (``Compressor.fields``: float values, bits, or
unsigned integers of a given width); this module serialises them and never re-derives a compressor's
arithmetic. Per field, for ``rows`` rows (the R Monte Carlo repetitions of a run, or one gradient
bucket):

* ``float``  the values in the run's dtype, as they are;
* ``bits``   packed 8 per byte, little bit order, all rows in one stream (no padding between rows);
* ``uint``   width 8: one byte each; other widths: ``width`` bit planes, each packed like ``bits``.

Fields are laid out largest element size first (every field starts aligned) and a worker's buffer is
padded to a multiple of ``ALIGN`` bytes, so the fields of every worker in an all-gathered buffer can
be viewed in place. ``Layout.nbytes`` is what one worker hands to an all-gather; the simulator counts
the same number for its in-process exchange, so both report the same bytes.

``decode_sum`` turns n workers' buffers into Σ_i m_i, accumulating in worker order (never an
(n, rows, d) tensor), which is the simulator's order, so a distributed run reproduces it bit for bit.
For one-row payloads of an elementwise compressor it works one block of ``BLOCK`` coordinates at a
time, so the unpacked fields of a block stay in cache. A compressor whose sum depends only on how many
workers set each bit of one field (``Compressor.counted``: sign) is summed from those counts, taken
straight from the received bytes with numpy: no payload objects, one byte add per worker and
coordinate (the per-block cost of payload objects alone was half the sign receiver's time). A
compressor whose per-coordinate fields are a few bits per worker (scaled-sign, QSGD and natural
dithering at a few levels, a few workers) is summed by table lookup (``_decode_table``): every
combination of the workers' codes decoded and summed once, then one lookup per coordinate. Sparse
messages (top-k, rand-k, composed with a quantiser) are scatter-added (``base.sparse_sum``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from compsde.compressors.base import Compressor, Field, Payload, sparse_sum

__all__ = ["ALIGN", "BLOCK", "Layout", "count_ones", "decode_sum", "pack_bits", "pack_uint", "unpack_bits", "unpack_uint", "wire_bytes"]

ALIGN = 8
#: Coordinates per block in the blocked decode (see module doc): a block's temporaries stay in the
#: core's cache (2 MB L2 here). Measured at d = 10⁷, 4 ranks on 2 cores: 11 ms blocked vs 19 ms unblocked.
BLOCK = 1 << 18


# ---- bit packing ---------------------------------------------------------------------------------


def pack_bits(bits: Tensor) -> Tensor:
    """(n,) bool (or 0/non-0 uint8) → (⌈n/8⌉,) uint8; entry 8b + j is bit j of byte b.

    On CPU this is ``np.packbits`` (~1 ms per 10⁷ bits here); elsewhere a torch fallback.
    """
    bits = bits.reshape(-1)
    if bits.device.type == "cpu":
        return torch.from_numpy(np.packbits(bits.contiguous().numpy(), bitorder="little"))
    n = bits.shape[0]
    b = torch.nn.functional.pad(bits.to(torch.uint8), (0, (-n) % 8)).view(-1, 8)
    w = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (b * w).sum(-1).to(torch.uint8)  # distinct powers of two: the sum is a bitwise or


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_bits``: (⌈n/8⌉,) uint8 → (n,) bool."""
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.contiguous().numpy(), count=n, bitorder="little")).view(torch.bool)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).reshape(-1)[:n].bool()


def pack_uint(values: Tensor, width: int) -> Tensor:
    """Integers in [0, 2^width) → ``width`` bit planes, (width, ⌈n/8⌉) uint8.

    The values are narrowed to the smallest integer dtype that holds them (uint8 for width ≤ 8) before
    the per-plane shifts: packing bytes is ~40× cheaper than packing int64s here.
    """
    narrow = torch.uint8 if width <= 8 else torch.int32 if width <= 31 else torch.int64
    v = values.reshape(-1).to(narrow)
    n = v.shape[0]
    if v.device.type == "cpu" and width <= 8:
        # Bit j of each byte, masked and packed (packbits packs every non-zero byte as 1) with numpy one
        # cache-sized block at a time: ~6× cheaper than torch's uint8 shifts over the whole row.
        vn = v.contiguous().numpy()
        planes = np.empty((width, (n + 7) // 8), dtype=np.uint8)
        tmp = np.empty(min(n, _PACK_BLOCK), dtype=np.uint8)
        for lo in range(0, n, _PACK_BLOCK):
            hi = min(n, lo + _PACK_BLOCK)
            t = tmp[: hi - lo]
            for j in range(width):
                np.bitwise_and(vn[lo:hi], 1 << j, out=t)
                planes[j, lo // 8: (hi + 7) // 8] = np.packbits(t, bitorder="little")
        return torch.from_numpy(planes)
    out = torch.empty(width, (n + 7) // 8, dtype=torch.uint8, device=values.device)
    for j in range(width):
        plane = (v >> j) & 1
        out[j] = pack_bits(plane if narrow == torch.uint8 else plane.to(torch.uint8))
    return out


#: Values per block of ``pack_uint``'s CPU path (a multiple of 8: each block fills whole bytes).
_PACK_BLOCK = 1 << 16


def unpack_uint(planes: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_uint``: (width, ⌈n/8⌉) uint8 → (n,) integers: uint8 for width ≤ 8 on the CPU
    (a decoder that indexes with them widens them itself), int64 otherwise."""
    width = planes.shape[0]
    if planes.device.type == "cpu" and width <= 8:
        # A Horner scheme of byte adds (acc ← 2·acc + plane), which numpy vectorises (its uint8 shifts
        # are ~20× slower).
        p = planes.contiguous().numpy()
        acc = np.unpackbits(p[width - 1], count=n, bitorder="little")
        for j in range(width - 2, -1, -1):
            np.add(acc, acc, out=acc)
            np.add(acc, np.unpackbits(p[j], count=n, bitorder="little"), out=acc)
        return torch.from_numpy(acc)
    if planes.device.type == "cpu":
        # The same Horner scheme in int32 (int64 beyond 31 bits), shifts and ors on whole arrays: ~25 %
        # cheaper than widening each unpacked plane to a tensor of int64 and shifting it.
        p = planes.contiguous().numpy()
        acc = np.unpackbits(p[width - 1], count=n, bitorder="little").astype(np.int32 if width <= 31 else np.int64)
        for j in range(width - 2, -1, -1):
            np.left_shift(acc, 1, out=acc)
            np.bitwise_or(acc, np.unpackbits(p[j], count=n, bitorder="little"), out=acc)
        return torch.from_numpy(acc.astype(np.int64, copy=False))
    out = torch.zeros(n, dtype=torch.int64, device=planes.device)
    for j in range(width):
        out |= unpack_bits(planes[j], n).long() << j
    return out


def count_ones(ones: Sequence[Tensor]) -> Tensor:
    """Per position, how many of n 0/1 tensors of one shape (bool or uint8: n workers' bits, unpacked)
    are 1: uint8 while the count fits a byte (n ≤ 255), int32 beyond; byte adds with numpy on the CPU."""
    if ones[0].device.type == "cpu":
        arrays = [t.numpy().view(np.uint8) for t in ones]
        arrays[0] = arrays[0].copy()  # the accumulator: the inputs stay as they are
        return torch.from_numpy(_count(arrays, len(arrays)))
    acc = torch.zeros(ones[0].shape, dtype=torch.uint8 if len(ones) <= 255 else torch.int32, device=ones[0].device)
    for t in ones:
        acc.add_(t)
    return acc


def _count(ones: Iterable[np.ndarray], n: int) -> np.ndarray:
    """Σ of n ≥ 1 0/1 uint8 arrays, accumulated in the first (uint8; a new int32 array for n > 255)."""
    acc: np.ndarray | None = None
    for u in ones:
        if acc is None:
            acc = u.astype(np.int32) if n > 255 else u
        else:
            np.add(acc, u, out=acc)
    assert acc is not None  # callers pass at least one array
    return acc


# ---- layouts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    field: Field
    offset: int
    nbytes: int
    itemsize: int


class Layout:
    """The byte layout of one worker's payload for ``rows`` rows of length d in ``dtype``."""

    def __init__(self, fields: Sequence[Field], rows: int, d: int, dtype: torch.dtype) -> None:
        self.fields, self.rows, self.d, self.dtype = list(fields), rows, d, dtype
        fsize = torch.empty((), dtype=dtype).element_size()
        sized = []
        for f in self.fields:
            n = rows * f.count
            if f.kind == "float":
                sized.append((f, n * fsize, fsize))
            elif f.kind == "bits" or (f.kind == "uint" and f.width != 8):
                planes = 1 if f.kind == "bits" else f.width
                sized.append((f, planes * ((n + 7) // 8), 1))
            else:  # uint of width 8: one byte each
                sized.append((f, n, 1))
        sized.sort(key=lambda s: -s[2])  # stable: equal sizes keep their order
        self.slots: list[_Slot] = []
        off = 0
        for f, nb, item in sized:
            self.slots.append(_Slot(f, off, nb, item))
            off += nb
        self.payload_bytes = off  # what the fields need
        self.nbytes = off + (-off) % ALIGN  # what one worker hands to the all-gather

    def pack(self, payload: Payload, out: Tensor | None = None) -> Tensor:
        """The payload as a (nbytes,) uint8 buffer (``out`` if given); the padding is zeroed."""
        if out is None:
            out = torch.empty(self.nbytes, dtype=torch.uint8, device=payload.device)
        for s in self.slots:
            f, src = s.field, payload.fields[s.field.name]
            dst = out[s.offset: s.offset + s.nbytes]
            if f.kind == "float":
                dst.view(self.dtype).copy_(src.reshape(-1))
            elif f.kind == "bits":
                dst.copy_(pack_bits(src))
            elif f.width == 8:
                dst.copy_(src.reshape(-1))
            else:
                dst.view(f.width, -1).copy_(pack_uint(src, f.width))
        if self.nbytes > self.payload_bytes:
            out[self.payload_bytes:].zero_()
        return out

    def unpack(self, buf: Tensor, lo: int = 0, hi: int | None = None) -> Payload:
        """The payload in one worker's (nbytes,) buffer; with ``lo``/``hi`` (one-row layouts, lo a
        multiple of 8) only coordinates [lo, hi) of the per-coordinate fields, the per-row fields whole."""
        hi = self.d if hi is None else hi
        part = (lo, hi) != (0, self.d)
        out: dict[str, Tensor] = {}
        for s in self.slots:
            f = s.field
            raw = buf[s.offset: s.offset + s.nbytes]
            n = self.rows * f.count
            a, b = (lo, hi) if (part and f.count == self.d) else (0, n)
            if f.kind == "float":
                t = raw.view(self.dtype)[a:b]
            elif f.kind == "bits":
                t = unpack_bits(raw[a // 8: (b + 7) // 8], b - a)
            elif f.width == 8:
                t = raw[a:b]
            else:
                t = unpack_uint(raw.view(f.width, -1)[:, a // 8: (b + 7) // 8], b - a)
            out[f.name] = t.view(self.rows, -1) if not part else t.view(1, -1)
        return Payload(out, hi - lo if part else self.d, self.dtype)


def wire_bytes(compressor: Compressor, rows: int, d: int, dtype: torch.dtype) -> int:
    """Bytes one worker hands to the collective for ``rows`` rows of length d: the payload's float
    values for an all-reduce (summable payloads), else its all-gather buffer (alignment included)."""
    layout = Layout(compressor.fields(d, dtype), rows, d, dtype)
    return layout.payload_bytes if compressor.summable else layout.nbytes


def decode_sum(compressor: Compressor, layout: Layout, buffers: Tensor, rnds: Sequence[Tensor | None],
               out: Tensor | None = None, finish: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Σ_i decode(payload_i) (rows, d) from n workers' buffers (n, nbytes), in worker order.

    ``rnds[i]`` is worker i's draw (replayed by the receiver when the payload omits what the draw
    determines). One-row payloads of an elementwise compressor are decoded block by block. Pass a
    reused ``out`` (rows, d): a fresh d-length tensor costs page faults on every step. ``finish`` (an
    elementwise function applied in place, e.g. the mean) is applied to each block as soon as it is
    summed, while it is in cache.
    """
    n, rows, d = buffers.shape[0], layout.rows, layout.d
    if compressor.counted is not None and buffers.device.type == "cpu":
        return _decode_counted(compressor, layout, buffers, out, finish)
    if not (rows == 1 and compressor.elementwise and d > BLOCK):
        first = layout.unpack(buffers[0])
        sparse = compressor.decode_sparse(first, rnds[0])
        if sparse is not None:  # k adds per worker, and ``finish`` only where some worker sent a value
            rest = (compressor.decode_sparse(layout.unpack(buffers[j]), rnds[j]) for j in range(1, n))
            return sparse_sum(itertools.chain([sparse], rest), (rows, d), layout.dtype, out=out, finish=finish,
                              device=buffers.device)
        total = compressor.decode_sum((layout.unpack(buffers[j]) for j in range(n)), rnds, out=out)
        return total if finish is None else finish(total)
    if out is None:
        out = torch.empty(rows, d, dtype=layout.dtype, device=buffers.device)
    if _table_planes(compressor, layout, n, buffers.device) is not None:
        return _decode_table(compressor, layout, buffers, out, finish)
    flat = out.view(-1)
    workers = list(buffers)
    for lo in range(0, d, BLOCK):
        hi = min(d, lo + BLOCK)
        block = (layout.unpack(buf, lo, hi) for buf in workers)  # one worker's block at a time
        summed = compressor.decode_sum(block, [None] * n, out=flat[lo:hi].view(1, -1))
        if finish is not None:
            finish(summed)
    return out


#: The most bits of all n workers' codes of one coordinate that ``_decode_table`` looks up (a table of
#: 2^16 values: 256 KB of float32, within the core's cache).
TABLE_BITS = 16


def _table_planes(compressor: Compressor, layout: Layout, n: int, device: torch.device) -> list[tuple[_Slot, int]] | None:
    """The bit planes of one worker's code of a coordinate, most significant first, as (slot, plane), when
    ``_decode_table`` applies: one row on the CPU, an elementwise compressor whose per-coordinate fields
    are all bits or narrow integers (bit planes), n workers' codes together at most ``TABLE_BITS`` bits,
    and a float dtype numpy has."""
    if device.type != "cpu" or layout.rows != 1 or not compressor.elementwise or layout.dtype not in _NUMPY_FLOATS:
        return None
    coords = [s for s in layout.slots if s.field.count == layout.d]
    if any(s.field.kind == "float" or (s.field.kind == "uint" and s.field.width >= 8) for s in coords):
        return None
    planes = [(s, j) for s in coords for j in range(s.field.width if s.field.kind == "uint" else 1)]
    if not planes or n * len(planes) > TABLE_BITS:
        return None
    return planes[::-1]  # the last field's top plane is the code's most significant bit


_NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _decode_table(compressor: Compressor, layout: Layout, buffers: Tensor, out: Tensor,
                  finish: Callable[[Tensor], Tensor] | None) -> Tensor:
    """``decode_sum`` (then ``finish``) by table lookup, for n workers' one-row payloads whose
    per-coordinate fields are a code of b bits per worker (``_table_planes``: scaled-sign's sign, the
    dithering quantisers' level and sign), n·b ≤ ``TABLE_BITS``.

    An elementwise decoder's message at a coordinate is a function of that coordinate's code and of the
    per-row fields (norms, scales) alone. So each worker's 2^b possible messages are decoded once, by the
    compressor's own ``decode`` (with that worker's per-row fields), and summed in worker order over
    all combinations of codes, m_0[c_0] + m_1[c_1] + … (the same IEEE additions, value by value, as the
    dense sum), then ``finish`` is applied to that table: every entry is the bits the blocked decode would
    give for that combination. Per coordinate there remains the combined code (the workers' bit planes,
    unpacked one cache-sized block at a time and joined with byte adds) and one lookup into the table.
    """
    n, d = buffers.shape[0], layout.d
    planes = _table_planes(compressor, layout, n, buffers.device)
    assert planes is not None
    b = len(planes)
    codes = torch.arange(1 << b)
    table: Tensor | None = None
    for j in range(n):
        p = layout.unpack(buffers[j], 0, 0)  # the per-row fields (the per-coordinate ones are empty)
        fields = dict(p.fields)
        pos = 0
        for s in [s for s in layout.slots if s.field.count == d]:
            w = s.field.width if s.field.kind == "uint" else 1
            v = (codes >> pos) & ((1 << w) - 1)
            fields[s.field.name] = (v.bool() if s.field.kind == "bits" else v.to(torch.uint8)).view(1, -1)
            pos += w
        m = compressor.decode(Payload(fields, 1 << b, layout.dtype), None).reshape(-1)
        table = m.clone() if table is None else (table.unsqueeze(-1) + m)  # accumulate: total + m_j
    assert table is not None
    if finish is not None:
        table = finish(table)
    lookup = table.reshape(-1).contiguous().numpy()
    raw = buffers.numpy()
    flat = out.view(-1).numpy()
    acc = np.empty(min(d, BLOCK), dtype=np.uint8) if n * b <= 8 else np.empty(min(d, BLOCK), dtype=np.uint16)
    pairs = _pair_table(lookup) if acc.dtype == np.uint8 and lookup.itemsize <= 4 and d >= _PAIRS_MIN_D else None
    for lo in range(0, d, BLOCK):
        hi = min(d, lo + BLOCK)
        a = acc[: hi - lo]
        first = True
        for j in range(n):  # worker 0's code is the most significant: the table's index order
            for s, k in planes:
                plane = raw[j, s.offset: s.offset + s.nbytes].reshape(-1, (d + 7) // 8)[k, lo // 8: (hi + 7) // 8]
                bits = np.unpackbits(plane, count=hi - lo, bitorder="little")
                if first:
                    a[:] = bits
                    first = False
                else:
                    np.add(a, a, out=a)
                    np.add(a, bits, out=a)
        if pairs is None:
            np.take(lookup, a, out=flat[lo:hi], mode="clip")
            continue
        even = (hi - lo) & ~1
        np.take(pairs, a[:even].view("<u2"), out=flat[lo: lo + even].view(pairs.dtype), mode="clip")
        if even < hi - lo:
            flat[hi - 1] = lookup[a[-1]]
    return out


#: Row length from which ``_decode_table`` looks up two coordinates at once (its 2¹⁶-entry pair table
#: costs a fraction of a millisecond to build; the lookups of a block then take ~40 % less time).
_PAIRS_MIN_D = 1 << 20


def _pair_table(lookup: np.ndarray) -> np.ndarray:
    """For a ``lookup`` of at most 256 2- or 4-byte values: entry c₀ + 256·c₁ holds the bytes of
    (lookup[c₀], lookup[c₁]), as one unsigned integer of twice the width (raw bytes: NaN payloads kept),
    so that the codes of two neighbouring coordinates, read as one little-endian uint16, find both values."""
    full = np.zeros(256, dtype=lookup.dtype)  # codes of fewer than 8 bits use the first 2^bits entries
    full[: lookup.shape[0]] = lookup
    c = np.arange(1 << 16)
    pair = np.empty((1 << 16, 2), dtype=lookup.dtype)
    pair[:, 0] = full[c & 255]
    pair[:, 1] = full[c >> 8]
    return pair.view(np.uint64 if lookup.itemsize == 4 else np.uint32).reshape(-1)


def _decode_counted(compressor: Compressor, layout: Layout, buffers: Tensor, out: Tensor | None,
                    finish: Callable[[Tensor], Tensor] | None) -> Tensor:
    """``decode_sum`` of a compressor whose sum depends only on the per-bit counts of one field (sign):
    each block of the field's bits is unpacked worker by worker with numpy and counted, then decoded
    from the counts, in cache; no other per-worker work."""
    n, total = buffers.shape[0], layout.rows * layout.d
    slot = next(s for s in layout.slots if s.field.name == compressor.counted)
    bits = buffers.numpy()[:, slot.offset: slot.offset + slot.nbytes]  # all rows in one bit stream
    if out is None:
        out = torch.empty(layout.rows, layout.d, dtype=layout.dtype)
    flat = out.view(-1)
    for lo in range(0, total, BLOCK):
        hi = min(total, lo + BLOCK)
        ones = (np.unpackbits(bits[j, lo // 8: (hi + 7) // 8], count=hi - lo, bitorder="little") for j in range(n))
        block = compressor.decode_count(torch.from_numpy(_count(ones, n)), n, flat[lo:hi])
        if finish is not None:
            finish(block)
    return out
