"""Unbiased stochastic quantizers: natural compression, QSGD (random dithering), natural dithering.

Each rounds a value t stochastically to one of its two neighbours lo ≤ t ≤ hi on a grid,
up with probability p = (t − lo)/(hi − lo), which is unbiased and has variance
(t − lo)(hi − t). Their randomness is one uniform u ∈ [0, 1) per coordinate (``draw`` returns a
tensor of shape (*batch_shape, d)); ``apply`` rounds up where u < p. The uniforms have the input's
dtype: float32 uniforms are multiples of 2⁻²⁴, so P(u < p) = p exactly when p is a multiple of 2⁻²⁴
(always for natural compression, whose p = 2m − 1 has 23 fraction bits) and within 2⁻²⁴ otherwise —
the resolution of float32 arithmetic itself.

The hot paths use bit manipulation and in-place same-dtype arithmetic (see ``_round_pow2``); each
has a readable reference (``_round_pow2_reference`` with torch.frexp,
``NaturalDithering.apply_reference``) and the tests check that they agree bit for bit.

References: Alistarh et al. 2017, "QSGD: communication-efficient SGD via gradient quantization and
encoding"; Horváth, Ho, Horváth, Sahu, Canini, Richtárik 2019, "Natural compression for
distributed deep learning".
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from compsde.compressors import register
from compsde.compressors.base import FLOAT_BITS, Compressor, Field, Payload, check_dim, check_draw_batch, require_generator

__all__ = ["Natural", "NaturalDithering", "QSGD"]


#: Most quantisation levels a dithering compressor takes: 2¹⁶ levels already cost 17 bits per
#: coordinate, more than half a float32, and the decoder's level table stays small.
MAX_LEVELS = 1 << 16


def _check_levels(name: str, levels: object) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"{name}: levels must be an integer in [1, {MAX_LEVELS}], got levels={levels!r}")
    return levels


class _Uniforms(Compressor):
    """Shared ``draw``: one uniform in [0, 1) per coordinate, in the input's floating dtype."""

    unbiased = True
    randomized = True

    def draw(
        self,
        batch_shape: tuple[int, ...],
        d: int,
        generator: torch.Generator | None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor | None:
        gen = require_generator(self.name, generator)
        if not dtype.is_floating_point:
            dtype = torch.float64
        # uniform_ on an empty tensor: the same distribution as torch.rand, ~1.5× faster on CPU here.
        return torch.empty(*batch_shape, d, dtype=dtype, device=gen.device).uniform_(generator=gen)

    def _uniforms(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        if rnd is None:
            raise ValueError(f"{self.name}: apply needs the uniforms from draw(); got rnd=None")
        if rnd.shape[-1] != x.shape[-1]:
            raise ValueError(f"{self.name}: the draw has rows of length {rnd.shape[-1]}, the input {x.shape[-1]}")
        check_draw_batch(self.name, x, rnd)
        # Compose stores draws as float64; casting back to x's dtype is exact for a float32 draw.
        return rnd.to(device=x.device, dtype=x.dtype)


def _round_pow2_reference(x: Tensor, u: Tensor) -> Tensor:
    """Reference: round x stochastically to ±2^⌊log₂|x|⌋ or twice that (0 stays 0), unbiased, exact.

    frexp gives |x| = m·2^e with m ∈ [0.5, 1): lo = 2^(e−1) = |x|/(2m) (a correctly rounded
    division whose exact result is representable, so exact), and the probability of rounding up
    p = (|x| − lo)/lo = 2m − 1 (exact: 2m ∈ [1, 2)). Up iff u < p.

    Below the smallest normal number t (|x| < t, subnormal x) the grid is {0, t}: up to ±t with
    probability |x|/t (exact: a division by a power of two), so every output is 0, ±inf or a normal
    power of two, which an exponent field holds exactly (see ``Natural``).
    """
    a = x.abs()
    tiny = torch.finfo(x.dtype).tiny
    m, _ = torch.frexp(a)
    pos = a > 0
    m = torch.where(pos, m, torch.full_like(m, 0.5))  # frexp(0) = (0, 0): avoid 0/0 below
    lo = a / (2.0 * m)
    out = torch.where(u < 2.0 * m - 1.0, 2.0 * lo, lo)
    out = torch.where(a < tiny, torch.where(u < a / tiny, torch.full_like(a, tiny), torch.zeros_like(a)), out)
    return torch.copysign(torch.where(pos, out, torch.zeros_like(out)), x)


#: Integer dtype of the same width, to read a float's bits.
_INT_OF_WIDTH = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _float_layout(dtype: torch.dtype) -> tuple[torch.dtype, int, int, int]:
    """(integer view dtype, mantissa bits, exponent bits, exponent bias) of an IEEE floating dtype."""
    fi = torch.finfo(dtype)
    nmant = -round(math.log2(fi.eps))
    nbits = 8 * torch.empty((), dtype=dtype).element_size()
    nexp = nbits - 1 - nmant
    return _INT_OF_WIDTH[nbits // 8], nmant, nexp, (1 << (nexp - 1)) - 1


def _pow2_floor(a: Tensor) -> Tensor:
    """±2^⌊log₂|a|⌋ for normal a (sign kept), ±0 for zeros and subnormals: the float with its
    mantissa bits cleared. The sign and exponent are the top bits, so the mask is −2^(mantissa bits)
    in two's complement, for every IEEE dtype (float16/32/64, bfloat16)."""
    it, nmant, _, _ = _float_layout(a.dtype)
    return (a.contiguous().view(it) & -(1 << nmant)).view(a.dtype)


def _exponent_field(v: Tensor) -> Tensor:
    """The biased exponent field of every value of ``v`` (in the integer dtype of v's width): 0 for ±0,
    the all-ones code for ±inf and NaN."""
    it, nmant, nexp, _ = _float_layout(v.dtype)
    return (v.contiguous().view(it) >> nmant) & ((1 << nexp) - 1)


def _round_pow2(x: Tensor, u: Tensor) -> Tensor:
    """Fast path of ``_round_pow2_reference``, with identical output for the same u.

    lo = ``_pow2_floor(x)``; p = x/lo − 1 (exact: x/lo = 2m ∈ [1, 2)); "u < p" is computed as
    ceil(p − u) ∈ {0, 1} (the sign of a float difference is exact), result lo·(1 + up). Same-dtype
    in-place arithmetic only: on CPU, torch.where and bool-float arithmetic are several times slower
    than a float pass, and every fresh d-sized buffer pays page faults. Zeros give 0/0: mapped to
    p = 0. Subnormals (lo = 0, p = ∞) are rare and redone by the reference.
    """
    lo = _pow2_floor(x)
    p = torch.div(x, lo)
    p.sub_(1.0).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)
    # p = +∞ exactly at subnormal x (the only infinities: x/lo ≤ 2 otherwise). A max reduction is
    # vectorised; torch.isinf(p).any() is ~10× slower.
    sub = torch.isinf(p) if p.numel() and bool(p.amax() == math.inf) else None
    p.sub_(u).ceil_().add_(1.0)  # 1 + [u < p]
    out = lo.mul_(p)
    if sub is not None:
        idx = sub.nonzero(as_tuple=True)
        ub = u.expand_as(x)
        out[idx] = _round_pow2_reference(x[idx], ub[idx])
    return out


def _uint_dtype(width: int) -> torch.dtype:
    """The smallest torch integer dtype holding unsigned values of ``width`` bits."""
    return torch.uint8 if width <= 8 else torch.int16 if width <= 15 else torch.int32 if width <= 31 else torch.int64


@register
class Natural(_Uniforms):
    """Natural compression C_nat: each x_j rounded stochastically to ±2^⌊log₂|x_j|⌋ or ±2^⌈log₂|x_j|⌉.

    For |x_j| = t ∈ [a, 2a] (a a power of two): up with probability (t − a)/a, so E = t and
    Var = (t − a)(2a − t). With t = a·σ, σ ∈ [1, 2], Var/t² = (σ − 1)(2 − σ)/σ², maximal at σ = 4/3
    where it equals (1/3)(2/3)(9/16) = 1/8. Hence unbiased with ω = 1/8 (attained when every
    |x_j| is 4/3 times a power of two), zeros stay zero.

    Bits: 9 per coordinate — the sign and an 8-bit exponent (the float32 exponent field; its zero
    code encodes 0). Payload: ``exponent`` (the exponent field of the rounded value: 8 bits for
    float32, 11 for float64) and ``negative`` (its sign bit). Values below the smallest normal number
    t (1.2·10⁻³⁸ in float32) round to 0 or ±t (unbiased, see ``_round_pow2_reference``), so every
    output fits the exponent field; ω = 1/8 holds for vectors whose nonzero entries are ≥ t in
    magnitude, and such tiny entries add at most t²/4 of absolute variance each. Float32 values ≥ 2¹²⁷
    can round up to inf (exponent code 255).
    Reference: Horváth et al. 2019, "Natural compression for distributed deep learning".
    """

    name = "natural"
    elementwise = True

    def __init__(self) -> None:
        pass

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        return _round_pow2(x, self._uniforms(x, rnd))

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("exponent", "uint", d, _float_layout(dtype)[2]), Field("negative", "bits", d)]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        y = self.apply(x, rnd)
        nexp = _float_layout(y.dtype)[2]
        return Payload({"exponent": _exponent_field(y).to(_uint_dtype(nexp)), "negative": torch.signbit(y)},
                       x.shape[-1], x.dtype)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        it, nmant, _, _ = _float_layout(payload.dtype)
        nbits = 8 * torch.empty((), dtype=payload.dtype).element_size()
        e = payload.fields["exponent"].to(it) << nmant
        s = payload.fields["negative"].to(it).neg_().bitwise_and_(-(1 << (nbits - 1)))
        return e.bitwise_or_(s).view(payload.dtype)

    def omega(self, d: int) -> float | None:
        return 1.0 / 8.0

    def bits(self, d: int) -> int:
        return 9 * check_dim(self.name, d)


@register
class Rounding(Natural):
    """Deterministic power-of-two rounding: each x_j to the nearer of ±2^⌊log₂|x_j|⌋ and ±2^⌈log₂|x_j|⌉
    (ties, |x_j| = 1.5·2^e, to the lower one) — the biased counterpart of ``natural``, same payload.

    With |x_j| = σ·2^e, σ ∈ [1, 2): down for σ ≤ 3/2 (C/x = 1/σ ∈ [2/3, 1]), up otherwise
    (C/x = 2/σ ∈ (1, 4/3)), so c = C(x)_j/x_j ∈ [2/3, 4/3) and sign(C) = sign(x). Per coordinate
    (C − x)² = (1 − c)²x² ≤ x²/9, C² = c²x² ≥ (4/9)x², C·x = c·x² ≥ (2/3)x² and C² = c·(C·x) < (4/3)(C·x):
    B3(δ = 9/8), B1(4/9, 4/3), B2(2/3, 4/3); 4/9 and 2/3 are attained at σ = 3/2, 4/3 approached
    as σ ↓ 3/2. Zeros stay zero; subnormal inputs round to the nearer of 0 and the smallest normal
    number, so the constants hold for vectors whose nonzero entries are normal numbers.
    Reference: Beznosikov et al. 2020, "On biased compression for distributed learning" (deterministic
    rounding to powers of two, their figure 1).
    """

    name = "rounding"
    unbiased = False
    randomized = False

    def draw(self, batch_shape: tuple[int, ...], d: int, generator: torch.Generator | None,
             dtype: torch.dtype = torch.float64) -> None:
        return None

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        # Natural compression with every uniform at 1/2: up iff 1/2 < σ − 1.
        return _round_pow2(x, torch.full((), 0.5, dtype=x.dtype, device=x.device))

    def omega(self, d: int) -> None:
        return None

    def delta(self, d: int) -> float:
        return 9.0 / 8.0

    def b1(self, d: int) -> tuple[float, float]:
        return 4.0 / 9.0, 4.0 / 3.0

    def b2(self, d: int) -> tuple[float, float]:
        return 2.0 / 3.0, 4.0 / 3.0


def _row_norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class _Dithering(_Uniforms):
    """Shared parts of the norm-scaled dithering quantizers: ``levels`` and the payload, the ℓ2 norm
    as one float (``norm``) plus, per coordinate, the index of its level (``level``, one of
    levels + 1 codes, fixed width) and its sign (``negative``). A subclass computes the level index
    (``_levels``, as apply does) and the value of each index (``level_values``)."""

    elementwise = True

    def __init__(self, levels: int = 4) -> None:
        self.levels = _check_levels(self.name, levels)

    def params(self) -> dict[str, object]:
        return {"levels": self.levels}

    def width(self) -> int:
        """Bits of one level index: ⌈log₂(levels + 1)⌉."""
        return max(1, math.ceil(math.log2(self.levels + 1)))

    def bits(self, d: int) -> int:
        return FLOAT_BITS + check_dim(self.name, d) * (1 + self.width())

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("norm", "float", 1), Field("level", "uint", d, self.width()), Field("negative", "bits", d)]

    def _levels(self, x: Tensor, u: Tensor, norm: Tensor) -> Tensor:
        """The level index of every coordinate (float holding whole numbers), as ``apply`` rounds."""
        raise NotImplementedError

    def level_values(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The value of each level index 0..levels, as a fraction of the norm."""
        raise NotImplementedError

    def scale(self, norm: Tensor) -> Tensor:
        """The factor the level values are multiplied by (as ``apply`` computes it)."""
        return norm

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        norm = _row_norm(x)
        idx = self._levels(x, self._uniforms(x, rnd), norm).nan_to_num_(nan=0.0).clamp_(0, self.levels)
        return Payload({"norm": norm, "level": idx.to(_uint_dtype(self.width())), "negative": torch.signbit(x)},
                       x.shape[-1], x.dtype)

    def signed_levels(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Code → ±L for the code ``level + (levels + 1)·negative``: the level values, then their negatives
        (−0.0 for level 0), so one lookup gives copysign(L, x) and ``signed_levels[code] · scale`` is
        ``apply``'s copysign(L · scale, x) bit for bit (scale ≥ 0)."""
        lv = self.level_values(dtype, device)
        return torch.cat([lv, -lv])

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        f = payload.fields
        table = self.signed_levels(payload.dtype, payload.device)
        level, negative = f["level"], f["negative"]
        if level.device.type == "cpu" and self.levels < 127:
            # One byte code per coordinate and numpy's take: ~3× cheaper than torch indexing with int64.
            code = negative.view(torch.uint8) * (self.levels + 1) + level.to(torch.uint8)  # a new tensor: the payload stays as it is
            vals = torch.from_numpy(np.take(table.numpy(), code.numpy()))
        else:
            vals = table[level.long() + negative.long() * (self.levels + 1)]
        return vals.mul_(self.scale(f["norm"]))


@register
class QSGD(_Dithering):
    """QSGD / random dithering with s = ``levels`` levels on the ℓ2 norm (Alistarh et al. 2017).

    C(x)_j = ‖x‖ · sign(x_j) · ξ_j/s, where ξ_j ∈ {l, l + 1}, l = ⌊s|x_j|/‖x‖⌋, and ξ_j = l + 1 with
    probability s|x_j|/‖x‖ − l. Unbiased; per coordinate Var = (‖x‖/s)² p_j(1 − p_j) with
    p_j(1 − p_j) ≤ min(1/4, p_j) and p_j ≤ s|x_j|/‖x‖, so summing (Σ|x_j| ≤ √d‖x‖)
    E‖C(x) − x‖² ≤ min(d/(4s²), √d/s)‖x‖². Declared: ω = min(d/s², √d/s), the constant of
    Alistarh et al. Lemma 3.1 (a valid but in its first branch 4× looser bound).

    Bits: 32 for the norm + d·(1 + ⌈log₂(s + 1)⌉): a fixed-width code of the sign and of the level
    ξ ∈ {0, …, s} per coordinate (no Elias coding). A zero vector stays zero.
    """

    name = "qsgd"


    def _levels(self, x: Tensor, u: Tensor, norm: Tensor) -> Tensor:
        s = float(self.levels)
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))  # (rows, 1): cheap
        r = x.abs().div_(safe).mul_(s).clamp_(max=s)  # rounding can push |x_j|/‖x‖ a hair above 1
        level = r.floor()
        # r − level = p ∈ [0, 1); ceil(p − u) = [u < p] (exact sign), all in place (see _round_pow2).
        r.sub_(level).sub_(u).ceil_()
        return level.add_(r)

    def level_values(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.arange(self.levels + 1, dtype=dtype, device=device)

    def scale(self, norm: Tensor) -> Tensor:
        return norm / float(self.levels)

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        norm = _row_norm(x)
        return self._levels(x, self._uniforms(x, rnd), norm).mul_(self.scale(norm)).copysign_(x)

    def omega(self, d: int) -> float:
        s = self.levels
        return min(d / s**2, math.sqrt(d) / s)



@register
class NaturalDithering(_Dithering):
    """Natural dithering with s = ``levels``: random dithering on the power-of-two grid of ‖x‖.

    Let r_j = |x_j|/‖x‖₂ ∈ [0, 1] and the levels 0 < b = 2^(1−s) < 2^(2−s) < … < 1/2 < 1. Each r_j is
    rounded stochastically to its two neighbouring levels (up with probability proportional to the
    distance from the lower one), C(x)_j = ‖x‖ · sign(x_j) · level_j. Unbiased.

    Variance (derived here, per coordinate, in units of ‖x‖²):
    * r ∈ [a, 2a] with a ≥ b a power of two: (r − a)(2a − r) ≤ r²/8 (as for natural compression);
    * r ∈ [0, b): r(b − r) ≤ min(b·r, b²/4).
    Summing, with Σ r_j² = 1 and Σ r_j ≤ √d:
        E‖C(x) − x‖² ≤ (1/8 + min(√d·2^(1−s), d·2^(−2s))) ‖x‖².
    Declared: ω = 1/8 + min(√d·2^(1−s), d·2^(2−2s)), the constant recalled from Horváth et al. 2019
    (Theorem on natural dithering), which is ≥ the bound above (its second branch is 4× larger),
    hence valid. Monte Carlo (``compsde compressors --dim D`` and the tests) stays below both.
    The bound is not tight: the 1/8 and the small-r terms cannot both be attained.

    Bits: 32 for the norm + d·(1 + ⌈log₂(s + 1)⌉) (sign and one of s + 1 levels, fixed width).
    Reference: Horváth et al. 2019, "Natural compression for distributed deep learning".
    """

    name = "natural-dithering"


    def _level_fractions(self, x: Tensor, u: Tensor, norm: Tensor) -> Tensor:
        """The level L_j ∈ {0, 2^(1−s), …, 1/2, 1} of every coordinate (a fraction of the norm)."""
        b = 2.0 ** (1 - self.levels)  # smallest nonzero level
        if b < torch.finfo(x.dtype).tiny:
            raise ValueError(
                f"{self.name}: levels={self.levels} puts the smallest level 2^(1−levels) below the smallest "
                f"normal {x.dtype} ({torch.finfo(x.dtype).tiny:.3g}); use levels ≤ {-math.floor(math.log2(torch.finfo(x.dtype).tiny)) + 1}"
            )
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        r = x.abs().div_(safe).clamp_(max=1.0)  # r ∈ [0, 1]
        # One formula for both regions: lo = the power of two below r if that is ≥ b, else 0;
        # width = hi − lo = max(2^⌊log₂ r⌋, b) (= lo above b, = b below, since b is a power of two).
        # p = (r − lo)/width is exact (Sterbenz, and division by a power of two); subnormal and zero r
        # fall in the lower region, where pow2_floor's 0 is the right lo.
        lo = _pow2_floor(r)
        width = lo.clamp(min=b)
        lo.mul_(torch.div(lo, b).clamp_(max=1.0).floor_())  # × [lo ≥ b], exact for powers of two
        r.sub_(lo).div_(width).sub_(u).ceil_()  # [u < p]
        return width.mul_(r).add_(lo)

    def _levels(self, x: Tensor, u: Tensor, norm: Tensor) -> Tensor:
        # L = 2^(i − s) for index i ≥ 1 and L = 0 for i = 0: read i off L's exponent field
        # (bias − s + i); 0's field is 0, which the clamp maps to index 0 (bias ≥ s for valid levels).
        frac = self._level_fractions(x, u, norm).nan_to_num_(nan=0.0)  # NaN (a non-finite row): index 0
        _, _, _, bias = _float_layout(frac.dtype)
        return (_exponent_field(frac) - (bias - self.levels)).clamp_(0, self.levels).to(frac.dtype)

    def level_values(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        s = self.levels
        return torch.tensor([0.0] + [2.0 ** (i - s) for i in range(1, s + 1)], dtype=dtype, device=device)

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        norm = _row_norm(x)
        return self._level_fractions(x, self._uniforms(x, rnd), norm).mul_(norm).copysign_(x)

    def apply_reference(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        """Readable reference of ``apply`` (same output for the same draw); used by the tests."""
        u = self._uniforms(x, rnd)
        norm = _row_norm(x)
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        r = (x.abs() / safe).clamp(max=1.0)
        b = 2.0 ** (1 - self.levels)
        small = torch.where(u < r / b, torch.full_like(r, b), torch.zeros_like(r))
        level = torch.where(r < b, small, _round_pow2_reference(r, u))
        return torch.copysign(level, x) * norm

    def omega(self, d: int) -> float:
        s = self.levels
        return 1.0 / 8.0 + min(math.sqrt(d) * 2.0 ** (1 - s), d * 2.0 ** (2 - 2 * s))

