"""The compressor interface: an operator C on rows of a tensor, with its theory declared as data.

A compressor maps x of shape (..., d) to C(x) of the same shape, compressing every row (the last
dimension) independently. It does so in two halves, the sender's and the receiver's:

    rnd = C.draw(batch_shape, d, generator, dtype)   # all randomness, from the generator only
    p = C.encode(x, rnd)                             # the payload: what travels (a ``Payload``)
    y = C.decode(p, rnd)                             # what the receiver reconstructs
    y = C.apply(x, rnd)                              # = decode(encode(x, rnd), rnd), bit for bit

``C(x, generator)`` draws and applies. ``rnd`` is a tensor whose leading dimensions broadcast against
``x.shape[:-1]`` (so one draw of batch shape (1, R) can be shared by N workers), or ``None`` for a
deterministic compressor. The receiver decodes with the sender's draw: a payload omits whatever the
draw determines (Rand-k's indices), and the receiver replays the sender's stream instead.

A payload is a set of named fields (``fields(d, dtype)`` declares them per row: float values, single
bits, or unsigned integers of a given width); the wire format (``compsde.compressors.wire``) only
serialises them — bit-packing the bits, packing the integers into ``width``-bit planes — and never
re-derives a compressor's arithmetic. ``apply`` may be a faster path than decode ∘ encode; a
conformance test checks that both agree bit for bit, special values (±0, subnormals, ±inf, NaN)
included.

Theory is declared per dimension d (the classes of Beznosikov et al. 2020, docs/theory.md §4):

* ``unbiased`` and ``omega(d)``: E C(x) = x and E‖C(x) − x‖² ≤ ω‖x‖² (class U(ζ) with ζ = 1 + ω);
* ``delta(d)``: E‖C(x) − x‖² ≤ (1 − 1/δ)‖x‖² (class B3(δ));
* ``b1(d)`` = (α, β): α‖x‖² ≤ E‖C(x)‖² ≤ β⟨E C(x), x⟩ (class B1);
* ``b2(d)`` = (γ, β): max{γ‖x‖², E‖C(x)‖²/β} ≤ ⟨E C(x), x⟩ (class B2);
* ``bits(d)``: the exact number of bits one worker sends for one vector of length d, counting
  values (32-bit floats unless the compressor quantises them), indices, norms and scales.

``b1``/``b2`` default to the conversions in the seed's table (U(ζ) ⇒ B1(1, ζ), B2(1, ζ);
B3(δ) ⇒ B1(1/(4δ²), 2), B2(1/(2δ), 2)); a compressor with tighter constants overrides them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from compsde.core.checks import check_int, describe
from compsde.core.tensors import accumulate, broadcast_shapes

#: Bits of one uncompressed value on the wire (float32).
FLOAT_BITS = 32
#: Field kinds of a payload (see ``Field``).
FIELD_KINDS = ("float", "bits", "uint")


@dataclass(frozen=True)
class Field:
    """One field of a payload, per row of the input: ``count`` entries of one kind.

    * ``float``: values in the run's dtype;
    * ``bits``:  booleans, one bit each on the wire;
    * ``uint``:  integers in [0, 2^width), ``width`` bits each on the wire.
    """

    name: str
    kind: str
    count: int
    width: int = 0

    def wire_bits(self, dtype: torch.dtype) -> int:
        """Bits of this field for one row on the wire (before byte alignment)."""
        if self.kind == "float":
            return self.count * 8 * torch.empty((), dtype=dtype).element_size()
        if self.kind == "bits":
            return self.count
        return self.count * self.width


@dataclass
class Payload:
    """What one encode produced: ``fields`` (name → tensor of shape (*batch, count); bool for ``bits``,
    an integer dtype for ``uint``, the run's dtype for ``float``), the row length ``d`` and the dtype of
    the decoded rows."""

    fields: dict[str, Tensor]
    d: int
    dtype: torch.dtype

    @property
    def batch_shape(self) -> tuple[int, ...]:
        t = next(iter(self.fields.values()))
        return tuple(t.shape[:-1])

    @property
    def device(self) -> torch.device:
        return next(iter(self.fields.values())).device


def index_bits(d: int) -> int:
    """Bits of one coordinate index in a vector of length d: ⌈log₂ d⌉ (0 for d = 1)."""
    return max(0, math.ceil(math.log2(d))) if d > 1 else 0


class Compressor:
    """Base class. Subclasses set ``name`` and implement ``fields``, ``encode``, ``decode`` (whatever
    sends payloads needs them: the distributed backend, the DDP hook, the wire accounting), ``bits``
    and the declared theory; ``apply`` defaults to decode ∘ encode and may be overridden with a faster,
    equal path."""

    name: ClassVar[str] = ""
    #: E C(x) = x for every x.
    unbiased: ClassVar[bool] = False
    #: Needs random numbers (``draw`` returns a tensor).
    randomized: ClassVar[bool] = False

    #: decode of a block of coordinates needs only that block of each per-coordinate field (and the
    #: per-row fields): the wire can then decode and aggregate block by block, in cache.
    elementwise: ClassVar[bool] = False

    #: The name of a ``bits`` field when Σ_i decode(payload_i) depends only on how many of the n
    #: payloads set each of its bits (sign: Σ_i ±1 = 2c − n); ``decode_count`` maps the counts to the
    #: sum, and the wire counts the bits straight from the received bytes.
    counted: ClassVar[str | None] = None

    # ---- randomness and arithmetic -------------------------------------------------------
    def draw(
        self,
        batch_shape: tuple[int, ...],
        d: int,
        generator: torch.Generator | None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor | None:
        """All random numbers one call needs for inputs of shape (*batch_shape, d) and ``dtype`` (the
        draw is for that dtype: the quantizers draw integer uniforms whose width follows it)."""
        return None

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        """The payload's fields for one row of length d (their sizes on the wire follow from them)."""
        raise NotImplementedError

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        """The payload of every row of ``x`` (shape (..., d)) using the draw ``rnd``."""
        raise NotImplementedError

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        """The decompressed rows (shape (*batch, d), the payload's dtype) from a payload and the draw
        that encoded it."""
        raise NotImplementedError

    def decode_needs_draw(self, d: int) -> bool:
        """Whether ``decode`` needs the sender's draw (the payload omits what the draw determines, as
        Rand-k's indices), so a receiver must replay the sender's stream."""
        return False

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        """Compress and decompress every row of ``x`` (shape (..., d)) using the draw ``rnd``:
        ``decode(encode(x, rnd), rnd)`` (subclasses may override with a faster, equal path)."""
        return self.decode(self.encode(x, rnd), rnd)

    def decode_sum(self, payloads: Iterable[Payload], rnds: Sequence[Tensor | None], out: Tensor | None = None) -> Tensor:
        """Σ_i decode(payload_i, rnd_i), accumulated in worker order (``compsde.core.tensors.accumulate``)
        without holding more than one decoded message at a time, written into ``out`` if given (a buffer
        reused every step: a fresh d-length tensor pays page faults). A compressor may count instead
        (sign: the votes), as long as the result is the same bits."""
        payloads = iter(payloads)
        first = next(payloads, None)
        if first is None:
            raise ValueError("decode_sum needs at least one payload")
        sparse = self.decode_sparse(first, rnds[0])
        if sparse is not None:
            rest = (self.decode_sparse(p, r) for p, r in zip(payloads, rnds[1:]))
            return sparse_sum(itertools.chain([sparse], rest), (*first.batch_shape, first.d), first.dtype, out,
                              device=first.device)
        total = None
        for p, r in zip(itertools.chain([first], payloads), rnds):
            m = self.decode(p, r)
            total = out.copy_(m) if total is None and out is not None else accumulate(total, m)
        if total is None:
            raise ValueError("decode_sum needs at least one payload")
        return total

    def decode_sparse(self, payload: Payload, rnd: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """``(indices, values)``, both (*batch, k), when ``decode(payload, rnd)`` is +0.0 outside k distinct
        positions per row and ``values`` there (a sparsifier's message); None otherwise. A compressor that
        returns them is summed by ``sparse_sum``: k adds per worker instead of a dense message each."""
        return None

    def decode_count(self, count: Tensor, n: int, out: Tensor) -> Tensor:
        """Σ_i decode(payload_i) into ``out`` from the per-bit counts of the ``counted`` field over the n
        payloads (``count`` is consumed)."""
        raise NotImplementedError(f"{self.name} does not decode from bit counts")

    def decode_add(self, payload: Payload, rnd: Tensor | None, out: Tensor) -> Tensor:
        """``out += decode(payload, rnd)`` in place (a sparsifier adds its k values without a dense
        temporary; the result may then differ from the dense sum in the sign of zero entries)."""
        return out.add_(self.decode(payload, rnd))

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw from ``generator`` and compress every row of ``x``, a floating-point tensor (..., d), d ≥ 1."""
        if not isinstance(x, Tensor):
            raise ValueError(f"compressor {self.name!r}: x must be a torch.Tensor of shape (..., d), got {describe(x)}")
        if not x.is_floating_point():
            raise ValueError(f"compressor {self.name!r}: x must be a floating-point tensor (float32 or float64), "
                             f"got dtype {x.dtype}")
        if x.dim() < 1:
            raise ValueError(f"compressor {self.name!r}: x must have at least one dimension (..., d), got shape {tuple(x.shape)}")
        check_dim(self.name, x.shape[-1])
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"compressor {self.name!r}: generator must be a torch.Generator or None, got {describe(generator)}")
        if self.randomized:
            require_generator(self.name, generator)
        rnd = self.draw(tuple(x.shape[:-1]), x.shape[-1], generator, x.dtype)
        return self.apply(x, rnd)

    # ---- declared theory -----------------------------------------------------------------
    def omega(self, d: int) -> float | None:
        """ω with E‖C(x) − x‖² ≤ ω‖x‖² (unbiased compressors only), else None."""
        return None

    def delta(self, d: int) -> float | None:
        """δ of class B3(δ): E‖C(x) − x‖² ≤ (1 − 1/δ)‖x‖², or None if not contractive.

        By default an unbiased compressor with ω < 1 is in B3(1/(1 − ω)) (its error bound ω‖x‖² is
        already a contraction); others declare their own.
        """
        w = self.omega(d) if self.unbiased else None
        if w is not None and w < 1.0:
            return 1.0 / (1.0 - w)
        return None

    def b1(self, d: int) -> tuple[float, float] | None:
        """(α, β) of class B1(α, β), by default from ω or δ via the seed's conversion table."""
        w = self.omega(d) if self.unbiased else None
        if w is not None:
            return 1.0, 1.0 + w
        dl = self.delta(d)
        if dl is not None:
            return 1.0 / (4.0 * dl * dl), 2.0
        return None

    def b2(self, d: int) -> tuple[float, float] | None:
        """(γ, β) of class B2(γ, β), by default from ω or δ via the seed's conversion table."""
        w = self.omega(d) if self.unbiased else None
        if w is not None:
            return 1.0, 1.0 + w
        dl = self.delta(d)
        if dl is not None:
            return 1.0 / (2.0 * dl), 2.0
        return None

    def support(self, d: int) -> int:
        """Number of values sent for a vector of length d (k for sparsifiers)."""
        return d

    def index_bits(self, d: int) -> int:
        """Bits spent on coordinate indices for a vector of length d."""
        return 0

    def bits(self, d: int) -> int:
        """Exact bits one worker sends for one vector of length d ≥ 1 (every implementation refuses d < 1
        with ``check_dim``: a zero-length vector is not sent)."""
        raise NotImplementedError

    # ---- communication -------------------------------------------------------------------
    @property
    def summable(self) -> bool:
        """Payloads of different workers can be summed field by field and decoded once
        (decode is linear in the payload and the fields' layout does not depend on x): an
        all-reduce of payloads then gives the sum of the messages."""
        return False

    @property
    def shared_randomness(self) -> bool:
        """All workers use one shared draw (same seed), rather than independent ones."""
        return False

    def __repr__(self) -> str:  # e.g. rand-k(k=5)
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name}({params})"

    def params(self) -> dict[str, object]:
        """The parameters this compressor was built with (for configs and reports)."""
        return {}


def sparse_sum(parts: Iterable[tuple[Tensor, Tensor] | None], shape: tuple[int, ...], dtype: torch.dtype,
               out: Tensor | None = None, finish: Callable[[Tensor], Tensor] | None = None,
               device: torch.device | str = "cpu") -> Tensor:
    """Σ_i m_i of n ≥ 1 sparse messages m_i, given as ``(indices, values)`` (*batch, k_i) (``decode_sparse``:
    m_i is +0.0 outside its k_i distinct indices), written into ``out`` (``shape``) if given, bit for bit the
    dense sum in worker order (``accumulate``: m_0 + m_1 + …), then ``finish`` (elementwise, in place).

    ``out`` is zeroed once and each worker's values are scatter-added (O(k) per worker, no dense message).
    Every sum then equals the dense one except at −0.0: the dense sum of IEEE values is −0.0 exactly where
    every summand is −0.0 (x + y is −0.0 only for −0.0 + −0.0, and a cancellation gives +0.0), while the
    scatter-adds start from +0.0 and so never give −0.0 — those positions (where every worker sent −0.0,
    rare: found among the k values of each) are set to −0.0 afterwards.

    A ``finish`` that multiplies by a power of two h = 2^−m (``finish.scale``: the mean over 2^m workers)
    is folded into the values, saving its pass over the d entries, when that gives the same bits: if every
    value v is finite, 0 or |v|·h ≥ the smallest normal, and n·max|v| ≤ max/2. Then every value and every
    partial sum is a multiple of q = 2^(e_min + m − p + 1) (p: the significand's bits), so the products
    with h are exact (normal, or multiples of the least subnormal), and rounding commutes with the
    scaling: fl(s + v)·h = fl(s·h + v·h) — in the normal range because scaling by 2^−m only shifts the
    exponent, below it because a multiple of q under 2^(e_min + m) is a float, so both sides are exact
    (and no partial sum overflows). Otherwise ``finish`` is one pass over ``out``.
    """
    total = torch.empty(shape, dtype=dtype, device=device) if out is None else out
    numel, d = total.numel(), shape[-1]
    pairs: list[tuple[Tensor, Tensor]] = []
    for part in parts:
        if part is None:
            raise ValueError("sparse_sum: a payload without a sparse decoding (decode_sparse gave None)")
        idx, vals = part
        pairs.append((idx.expand(*shape[:-1], idx.shape[-1]), vals.expand(*shape[:-1], vals.shape[-1])))
    if not pairs:
        raise ValueError("decode_sum needs at least one payload")
    scale = getattr(finish, "scale", None)
    if scale is not None and dtype.is_floating_point and _scaling_commutes(pairs, scale, dtype):
        pairs = [(idx, vals * scale) for idx, vals in pairs]
        finish = None
    total.zero_()
    neg_zero: Tensor | None = None  # flat positions where every worker so far sent −0.0
    for j, (idx, vals) in enumerate(pairs):
        total.scatter_add_(-1, idx, vals)
        if j == 0 or (neg_zero is not None and neg_zero.numel()):
            nz = (vals == 0) & torch.signbit(vals)
            rows = torch.arange(0, numel, d, device=idx.device).view(*shape[:-1], 1)
            flat = (idx + rows)[nz] if bool(nz.any()) else idx.new_empty(0)
            neg_zero = flat if neg_zero is None else neg_zero[torch.isin(neg_zero, flat)]
    if neg_zero is not None and neg_zero.numel():
        total.view(-1)[neg_zero] = -0.0
    return total if finish is None else finish(total)


def _scaling_commutes(pairs: Sequence[tuple[Tensor, Tensor]], scale: float, dtype: torch.dtype) -> bool:
    """Whether Σ_i (v_i · scale) is fl(Σ_i v_i) · scale bit for bit for the sparse values of ``pairs``
    (``sparse_sum``'s condition: finite values, each 0 or ≥ tiny/scale in magnitude, no overflow)."""
    fi = torch.finfo(dtype)
    m = math.log2(1.0 / scale)
    if scale <= 0.0 or m != int(m):
        return False
    least = fi.tiny / scale
    for _, vals in pairs:
        a = vals.abs()
        if not bool(torch.isfinite(a).all()):
            return False
        if a.numel() and float(a.max()) * len(pairs) > fi.max / 2:
            return False
        if bool(((a < least) & (a != 0)).any()):
            return False
    return True


def check_dim(name: str, d: object) -> int:
    """The length d of a compressed vector: an integer ≥ 1 (what ``bits``, ``__call__`` and the theory take)."""
    return check_int(f"compressor {name!r}: d (the vector length)", d, min=1)


def require_generator(name: str, generator: torch.Generator | None) -> torch.Generator:
    """The generator a randomized compressor draws from; a clear error if none was passed."""
    if generator is None:
        raise ValueError(
            f"compressor {name!r} is randomized: pass generator=torch.Generator() (no global random state is used)"
        )
    return generator


def check_draw_batch(name: str, x: Tensor, rnd: Tensor) -> tuple[int, ...]:
    """Check that the draw's leading dims broadcast to x's leading dims (and not beyond); return x's."""
    xb = tuple(x.shape[:-1])
    try:
        out: tuple[int, ...] | None = broadcast_shapes(xb, tuple(rnd.shape[:-1]))
    except ValueError:
        out = None
    if out != xb:
        raise ValueError(
            f"{name}: the draw's leading dims {tuple(rnd.shape[:-1])} do not broadcast to the input's "
            f"leading dims {xb} (a draw of batch shape (1, ...) is shared by all workers)"
        )
    return xb


def concat_draws(parts: list[Tensor]) -> Tensor:
    """The draws of a compound compressor's parts as one tensor: broadcast to a common batch shape and
    concatenated along the last dim, in the parts' dtype where they share one, else as int64 where
    every part holds integers (indices, the quantizers' integer uniforms) and as float64 otherwise,
    both of which hold each part's values exactly; each part casts its slice back (see
    ``_Uniforms._uniforms``, ``RandK``)."""
    shape = broadcast_shapes(*(p.shape[:-1] for p in parts))
    if len({p.dtype for p in parts}) == 1:
        dtype = parts[0].dtype
    else:
        dtype = torch.float64 if any(p.is_floating_point() for p in parts) else torch.int64
    return torch.cat([p.to(dtype).expand(*shape, p.shape[-1]) for p in parts], dim=-1)


def resolve_k(name: str, k: int | None, ratio: float | None, d: int) -> int:
    """The number of kept coordinates for dimension d, from a count ``k`` or a fraction ``ratio``."""
    if k is not None:
        kk = int(k)
    else:
        assert ratio is not None
        kk = max(1, round(ratio * d))
    if not 1 <= kk <= d:
        raise ValueError(f"{name}: k must be between 1 and d = {d}, got k = {kk}")
    return kk


def check_k_ratio(name: str, k: int | None, ratio: float | None) -> None:
    """Validate that exactly one of ``k`` (count ≥ 1) and ``ratio`` (in (0, 1]) is given."""
    if (k is None) == (ratio is None):
        raise ValueError(f"{name}: give exactly one of k (a count) or ratio (a fraction of d), got k={k!r}, ratio={ratio!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"{name}: k must be an integer ≥ 1, got {k!r}")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0):
        raise ValueError(f"{name}: ratio must be a number in (0, 1], got {ratio!r}")
