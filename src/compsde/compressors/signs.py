"""Sign compressors: one bit per coordinate.

Convention: sign(0) = +1. A zero coordinate is then sent as "+", so every coordinate is one of two
symbols and exactly 1 bit suffices (a three-valued sign would need log₂ 3 bits per coordinate, or a
separate zero mask). For ``sign`` this makes C(0) = (1, …, 1); for ``scaled-sign`` the scale ‖x‖₁/d
multiplies it, and a zero coordinate contributes 0 to ⟨C(x), x⟩ either way, so the constants below
hold unchanged.

References: Bernstein et al. 2018 (signSGD); Karimireddy et al. 2019 (scaled sign, error feedback);
Beznosikov et al. 2020, "On biased compression for distributed learning" (class memberships).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from compsde.compressors import register
from compsde.compressors.base import FLOAT_BITS, Compressor, Field, Payload, check_dim
from compsde.compressors.wire import count_ones

__all__ = ["ScaledSign", "Sign", "sign_bits", "sign_pm1"]


def sign_pm1(x: Tensor) -> Tensor:
    """sign(x) with sign(0) = +1 (and sign(−0.0) = +1), same dtype as x.

    Computed as copysign(1, x + 0.0): adding +0.0 turns −0.0 into +0.0 (IEEE round-to-nearest) and
    leaves every other value unchanged. Two float passes; ``torch.where(x >= 0, 1, −1)`` is ~10×
    slower on CPU.
    """
    return torch.ones_like(x).copysign_(x + 0.0)


#: Elements per block of the CPU path of ``sign_bits``: a block's floats and bools stay in cache.
_BLOCK = 1 << 18


def sign_bits(x: Tensor) -> Tensor:
    """Bool (..., d): True where ``sign_pm1(x)`` is +1, i.e. sign(0) = sign(−0.0) = +1.

    Fast path ``x >= 0`` (one comparison pass); it differs from ``sign_pm1`` only at NaN, whose sign
    ``sign_pm1`` takes from the NaN's sign bit, so NaN is detected (a max, which propagates NaN) and
    then the exact form ``¬signbit(x + 0.0)`` is used. Long CPU inputs go block by block through numpy
    (compare, then the max of the block just read, from cache): at d = 10⁷ several times faster than
    torch's comparison into a fresh bool tensor followed by a separate NaN check.
    """
    if x.device.type != "cpu" or x.numel() < 2 * _BLOCK:
        if x.numel() and not bool(torch.isfinite(x.sum())):
            return ~torch.signbit(x + 0.0)
        return x >= 0
    xn = x.detach().contiguous().reshape(-1).numpy()
    out = np.empty(xn.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        for i in range(0, xn.shape[0], _BLOCK):
            xb, ob = xn[i: i + _BLOCK], out[i: i + _BLOCK]
            np.greater_equal(xb, 0, out=ob)
            if np.isnan(np.max(xb)):
                ob[:] = ~np.signbit(xb + xb.dtype.type(0.0))
    return torch.from_numpy(out).view(x.shape)


_scratch_buffers = threading.local()


def _scratch(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """A CPU tensor of ``shape`` and ``dtype`` with arbitrary contents, reused by this thread across
    calls (the prefix of one buffer per dtype, grown as needed): a temporary of a long input without
    the page faults of a fresh allocation on every step. Its contents last until the next call."""
    bufs = getattr(_scratch_buffers, "bufs", None)
    if bufs is None:
        bufs = _scratch_buffers.bufs = {}
    numel = math.prod(shape)
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = bufs[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def _pm1_into(positive: Tensor, out: Tensor) -> Tensor:
    """``_pm1(positive, out.dtype)`` written into ``out`` (same shape): the same conversion and
    arithmetic without a fresh tensor."""
    if positive.dtype == torch.bool:
        positive = positive.view(torch.uint8)
    return out.copy_(positive).mul_(2.0).sub_(1.0)


def _decode_into(positive: Tensor, scale: Tensor, out: Tensor) -> Tensor:
    """(2b − 1)·s, the decoded scaled signs of one row (``scale`` of one element), written into ``out``.

    (2b − 1)·s is ±s exactly. For a finite s > 0 with 2s finite in out's dtype, −s + 2s·b gives the same
    ±s in one pass after the conversion of b (2s·b is 0 or 2s exactly; −s + 0 = −s and −s + 2s = s
    exactly, fused or not); any other s (0, whose −1·0 is −0.0, inf, NaN) takes ``_pm1``'s operations.
    """
    if scale.numel() == 1 and out.dtype.is_floating_point:
        sv = float(scale.reshape(()).item())
        if 0.0 < sv and 2.0 * sv <= torch.finfo(out.dtype).max:
            if positive.dtype == torch.bool:
                positive = positive.view(torch.uint8)
            return torch.add(scale.reshape(()).neg(), out.copy_(positive), alpha=2.0 * sv, out=out)
    return _pm1_into(positive, out).mul_(scale)


def _pm1(positive: Tensor, dtype: torch.dtype) -> Tensor:
    """±1 of the given dtype from sign bits (True = +1): 2b − 1. Bools are converted through their
    bytes: torch's bool → float conversion is ~6× slower than uint8 → float here."""
    if positive.dtype == torch.bool:
        positive = positive.view(torch.uint8)
    return positive.to(dtype).mul_(2.0).sub_(1.0)


@register
class Sign(Compressor):
    """C(x) = sign(x) ∈ {−1, +1}^d, sign(0) = +1. Bits: d.

    Biased and in none of the classes U, B1, B2, B3: C ignores the scale of x, so for x = ε·1 with
    ε → 0, ‖C(x) − x‖² → d while ‖x‖² → 0 (no B3 or U bound), and E‖C(x)‖²/‖x‖² = 1/ε² → ∞ while
    ⟨C(x), x⟩ = ε d, so E‖C(x)‖² ≤ β⟨C(x), x⟩ would need β ≥ 1/ε (no B1/B2 bound). Hence ω, δ, b1,
    b2 are all None; use it through majority vote / sign methods or through ``scaled-sign``.
    """

    name = "sign"
    elementwise = True
    counted = "positive"

    def __init__(self) -> None:
        pass

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("positive", "bits", d)]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        return Payload({"positive": sign_bits(x)}, x.shape[-1], x.dtype)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        return _pm1(payload.fields["positive"], payload.dtype)

    def decode_sum(self, payloads: Iterable[Payload], rnds: Sequence[Tensor | None], out: Tensor | None = None) -> Tensor:
        """Σ_i sign_i from the number of +1s per coordinate (``decode_count``)."""
        payloads = list(payloads)
        if not payloads:
            raise ValueError("decode_sum needs at least one payload")
        bits = [p.fields["positive"] for p in payloads]
        if out is None:
            out = torch.empty(bits[0].shape, dtype=payloads[0].dtype, device=bits[0].device)
        return self.decode_count(count_ones(bits), len(bits), out)

    def decode_count(self, count: Tensor, n: int, out: Tensor) -> Tensor:
        """Σ_i sign_i = 2c − n with c the number of +1s per coordinate: the same bits as adding the ±1
        messages (sums of ±1 are exact). On the CPU 2c − n is formed in c's bytes (an int8 while
        n ≤ 127: |2c − n| ≤ n) and converted once: one float pass instead of three."""
        if count.device.type == "cpu" and count.dtype == torch.uint8 and n <= 127:
            c = count.numpy()
            np.add(c, c, out=c)
            np.subtract(c, np.uint8(n), out=c)  # wraps modulo 256: the bytes of the int8 value 2c − n
            return out.copy_(torch.from_numpy(c.view(np.int8)).view(out.shape))
        return out.copy_(count.view(out.shape)).mul_(2.0).sub_(float(n))

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        return sign_pm1(x)

    def bits(self, d: int) -> int:
        return check_dim(self.name, d)


@register
class ScaledSign(Compressor):
    """C(x) = (‖x‖₁/d) · sign(x), sign(0) = +1. Deterministic, biased. Bits: d signs + one float32.

    Derivation of the constants (sign(x_j)·x_j = |x_j|, also for x_j = 0):
    * ‖C(x)‖² = d·(‖x‖₁/d)² = ‖x‖₁²/d and ⟨C(x), x⟩ = (‖x‖₁/d)·Σ_j |x_j| = ‖x‖₁²/d, so
      ‖C(x)‖² = ⟨C(x), x⟩: β = 1 in both B1 and B2.
    * ‖x‖₂ ≤ ‖x‖₁ gives ‖C(x)‖² = ‖x‖₁²/d ≥ ‖x‖²/d: α = γ = 1/d, so B1(1/d, 1) and B2(1/d, 1);
      equality for a one-hot x, so 1/d is attained.
    * ‖C(x) − x‖² = ‖C‖² − 2⟨C, x⟩ + ‖x‖² = ‖x‖² − ‖x‖₁²/d ≤ (1 − 1/d)‖x‖²: B3(δ = d).
    (Upper side: ‖x‖₁² ≤ d‖x‖², so ‖C(x)‖² ≤ ‖x‖², equality for constant |x_j|, where C(x) = x.)
    Reference: Karimireddy et al. 2019, "Error feedback fixes SignSGD"; Beznosikov et al. 2020.
    """

    name = "scaled-sign"
    elementwise = True

    def __init__(self) -> None:
        pass

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("scale", "float", 1), Field("positive", "bits", d)]

    @staticmethod
    def _scale(x: Tensor) -> Tensor:
        """‖x‖₁/d per row: the sum of |x| taken by torch over the same (..., d) layout whether |x| is
        fresh or, for long CPU inputs, written into this thread's reused buffer (``_scratch``, no page
        faults), so the bits are the same."""
        if x.device.type == "cpu" and x.numel() >= 2 * _BLOCK and x.is_contiguous() and not x.requires_grad:
            mag = torch.abs(x, out=_scratch(x.shape, x.dtype))
        else:
            mag = x.abs()
        return mag.sum(dim=-1, keepdim=True) / x.shape[-1]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        return Payload({"scale": self._scale(x), "positive": sign_bits(x)}, x.shape[-1], x.dtype)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        return _pm1(payload.fields["positive"], payload.dtype).mul_(payload.fields["scale"])

    def decode_sum(self, payloads: Iterable[Payload], rnds: Sequence[Tensor | None], out: Tensor | None = None) -> Tensor:
        """Σ_i s_i·sign_i in worker order (m_0, then + m_1, …, as ``accumulate``), each m_i = ±s_i the bits
        of ``decode`` (``_decode_into``); worker 0 is decoded straight into ``out`` and every other into
        one temporary, with no fresh tensor per worker."""
        payloads = list(payloads)
        if not payloads:
            raise ValueError("decode_sum needs at least one payload")
        bits = [p.fields["positive"] for p in payloads]
        shape = bits[0].shape
        if out is None or out.shape != shape or out.dtype != payloads[0].dtype or any(b.shape != shape for b in bits):
            return super().decode_sum(payloads, rnds, out=out)
        _decode_into(bits[0], payloads[0].fields["scale"], out)
        tmp = torch.empty_like(out) if len(bits) > 1 else None
        for p, b in zip(payloads[1:], bits[1:]):
            assert tmp is not None
            out.add_(_decode_into(b, p.fields["scale"], tmp))
        return out

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        return sign_pm1(x).mul_(self._scale(x))

    def bits(self, d: int) -> int:
        return check_dim(self.name, d) + FLOAT_BITS

    def delta(self, d: int) -> float:
        return float(d)

    def b1(self, d: int) -> tuple[float, float]:
        return 1.0 / d, 1.0

    def b2(self, d: int) -> tuple[float, float]:
        return 1.0 / d, 1.0
