"""Unbiased stochastic quantizers: natural compression, QSGD (random dithering), natural dithering.

Each rounds a value t stochastically to one of its two neighbours lo ≤ t ≤ hi on a grid,
up with probability p = (t − lo)/(hi − lo), which is unbiased and has variance
(t − lo)(hi − t). Their randomness is one uniform u ∈ [0, 1) per coordinate, and ``apply`` rounds up
where u < p.

The draw (``draw(batch_shape, d, generator, dtype)``, a tensor of shape (*batch_shape, d)) holds
these uniforms as integers: U ∈ [0, 2^b) with u = U·2⁻ᵇ, b = ``draw_bits(dtype)`` — 53 bits (int64)
for float64 inputs, 24 bits (int32) for float32, float16 and bfloat16. These are the very numbers
``torch.empty(..., dtype=dtype).uniform_(generator=g)`` gives on the CPU: there a float32 uniform is
(32 random bits mod 2²⁴)·2⁻²⁴ and a float64 one (64 random bits mod 2⁵³)·2⁻⁵³, exactly what
``random_(0, 2^b)`` draws from the same generator state (``_draw_integers``); float16 and bfloat16
uniforms are drawn as floats (torch rounds 24-bit uniforms to the narrower type) and stored as
U = u·2²⁴, exact since every value of those types in [0, 1) is a multiple of 2⁻²⁴. Drawing the
integers skips the int-to-float pass (~1.5× cheaper for float32), and "u < p" becomes exact integer
arithmetic: for natural compression p = mantissa·2^−m (m mantissa bits), so u < p ⟺
U < mantissa·2^(b−m); for the dithering quantizers u < p ⟺ U < p·2^b (an exact scaling by a power of
two, compared in floats holding U exactly). P(u < p) = p exactly when p is a multiple of 2⁻ᵇ (always
for natural compression) and within 2⁻ᵇ otherwise — the resolution of float32 arithmetic itself.

The hot paths use bit manipulation and in-place same-dtype arithmetic (see ``_round_pow2``); each
has a readable reference (``_round_pow2_reference`` with torch.frexp,
``NaturalDithering.apply_reference``) and the tests check that they agree bit for bit. On the CPU
(float16/32/64), encode, decode and natural compression's apply read the codes straight off the float
bits with numpy, one cache-sized block (``BLOCK``) at a time, writing each output once (see
``_pow2_codes``, ``_levels_numpy``, ``_level_bits``): the same bits as the torch path, which other
devices and bfloat16 take; the tests check that too.

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


def draw_bits(dtype: torch.dtype) -> int:
    """b, the bits of the integers U (u = U·2⁻ᵇ) a quantizer draws for inputs of ``dtype``: 53 for
    float64, 24 for float32, float16 and bfloat16 (see the module docstring)."""
    return 53 if dtype == torch.float64 else 24


def _draw_int(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype of a draw for inputs of ``dtype``: int64 (53 bits) or int32 (24 bits)."""
    return torch.int64 if draw_bits(dtype) > 31 else torch.int32


def _draw_integers(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """U with u = U·2⁻ᵇ the uniforms ``torch.empty(shape, dtype=dtype).uniform_(generator=gen)`` gives
    (on the CPU: bit for bit, and the generator advances alike). float32/float64: the integers are
    drawn directly (``random_(0, 2^b)`` keeps the same random bits uniform_ scales by 2⁻ᵇ; ~1.5×
    cheaper for float32, the int-to-float pass skipped); float16/bfloat16 (whose uniform_ rounds
    24-bit uniforms to the narrower type): drawn as floats and scaled by 2²⁴, exactly."""
    bits = draw_bits(dtype)
    if dtype in (torch.float32, torch.float64):
        return torch.empty(shape, dtype=_draw_int(dtype), device=gen.device).random_(0, 1 << bits, generator=gen)
    u = torch.empty(shape, dtype=dtype, device=gen.device).uniform_(generator=gen)
    return u.to(torch.float32).mul_(2.0**bits).to(torch.int32)


def _float_uniforms(U: Tensor, dtype: torch.dtype) -> Tensor:
    """u = U·2⁻ᵇ as floats of ``dtype`` (exact: the uniforms the draw stands for), for the torch paths."""
    bits = draw_bits(dtype)
    wide = torch.float64 if bits > 24 else torch.float32  # holds every U exactly
    return U.to(wide).mul_(2.0**-bits).to(dtype)


class _Uniforms(Compressor):
    """Shared ``draw``: one uniform u ∈ [0, 1) per coordinate, as the integer U = u·2^b with
    b = ``draw_bits`` of the input's floating dtype (see the module docstring)."""

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
        return _draw_integers((*batch_shape, d), gen, dtype)

    def _uniforms(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        """The draw's integers U for x (of ``_draw_int(x.dtype)``, on x's device), checked."""
        if rnd is None:
            raise ValueError(f"{self.name}: apply needs the uniforms from draw(); got rnd=None")
        if rnd.shape[-1] != x.shape[-1]:
            raise ValueError(f"{self.name}: the draw has rows of length {rnd.shape[-1]}, the input {x.shape[-1]}")
        check_draw_batch(self.name, x, rnd)
        want = _draw_int(x.dtype)
        if rnd.dtype == want:
            return rnd.to(device=x.device)
        if rnd.dtype not in (torch.int64, torch.float64):
            raise ValueError(
                f"{self.name}: a draw for {x.dtype} inputs holds {want} integers (from draw(..., dtype={x.dtype})), "
                f"got dtype {rnd.dtype}"
            )
        # Compose and Blockwise stack the draws of their parts as int64 or float64: the integers
        # themselves, which must lie in [0, 2^b] for x's dtype (a draw made for float64 inputs does not).
        bits = draw_bits(x.dtype)
        if rnd.numel():
            lo, hi = (float(v) for v in torch.aminmax(rnd))
            whole = not rnd.is_floating_point() or bool(torch.equal(rnd, rnd.trunc()))
            if not (lo >= 0 and hi <= 2.0**bits and whole):
                raise ValueError(
                    f"{self.name}: a draw for {x.dtype} inputs holds integers in [0, 2^{bits}); got values in "
                    f"[{lo}, {hi}]{'' if whole else ', not all whole numbers'} (drawn for another dtype?)"
                )
        return rnd.to(device=x.device, dtype=want)


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


_NUMPY_UINT = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64}


# ---- CPU paths: integer arithmetic on the float bits, with numpy, one cache-sized block at a time --

#: Elements per block of the CPU paths: a block's temporaries stay in the core's cache, and the
#: outputs are written once. Measured at d = 1.26·10⁷ float32, one thread: natural encode 135 ms as
#: whole-tensor torch passes, 12–25 ms in blocks of 2¹⁸ (2¹⁶–2¹⁹ within noise).
BLOCK = 1 << 18

#: The numpy dtypes of the floats the CPU paths take (numpy has no bfloat16: the torch path takes it),
#: and the integer dtype of each width.
_NUMPY_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_NUMPY_INT = {torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64}


def _cpu_path(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether values of ``dtype`` on ``device`` take the CPU path (numpy views of the tensors' memory);
    elsewhere (other devices, bfloat16) the same results come from whole-tensor torch ops."""
    return device.type == "cpu" and dtype in _NUMPY_FLOAT


def _on_numpy(x: Tensor) -> bool:
    """Whether the input x takes the CPU path."""
    return _cpu_path(x.device, x.dtype) and not x.requires_grad


def _row_blocks(x: Tensor, u: Tensor | None) -> tuple[np.ndarray, np.ndarray | None, list[tuple[slice, slice, slice]]]:
    """x (..., d) as a (rows, d) array X, the draw u (integers U; leading dims broadcast to x's) as an
    array U of rows, and the blocks of about ``BLOCK`` elements: (rows of X, the same rows of U,
    columns). A draw shared along x's leading dims (batch shape (1, ..., rest)) is not copied: X's
    row i uses U's row i mod (rows of U), and no block straddles two of U's repetitions."""
    d = x.shape[-1]
    X = x.detach().contiguous().numpy().reshape(-1, d)
    rows = urows = X.shape[0]
    U = None
    if u is not None:
        ub = u.reshape((1,) * (x.dim() - u.dim()) + tuple(u.shape))
        for j in range(x.dim()):  # the shortest prefix of shared dims after which u matches x
            if all(n == 1 for n in ub.shape[:j]) and tuple(ub.shape[j:]) == tuple(x.shape[j:]):
                U = ub.contiguous().numpy().reshape(-1, d)
                break
        else:  # shared along inner dims: copied to x's shape
            U = ub.expand(x.shape).contiguous().numpy().reshape(-1, d)
        urows = U.shape[0]
    rb, cb = max(1, BLOCK // d), min(d, BLOCK)
    if rows == 0:
        return X, U, []
    blocks = [(slice(rep + r0, rep + min(urows, r0 + rb)), slice(r0, min(urows, r0 + rb)), slice(c0, min(d, c0 + cb)))
              for rep in range(0, rows, urows) for r0 in range(0, urows, rb) for c0 in range(0, d, cb)]
    return X, U, blocks


def _pow2_codes(xi: np.ndarray, u: np.ndarray | None, dtype: torch.dtype, out: type[np.integer] | None = None) -> np.ndarray:
    """The exponent field of ``_round_pow2``'s output for one block: xi the integer view of x, u the
    draw's integers U of its uniforms (None: every u = 1/2, as ``Rounding`` rounds). A new integer
    array of xi's dtype, or of ``out`` (wide enough for the field: the payload's dtype, which skips a
    cast; where it is exactly the field's width, the truncating cast drops the sign without a mask).

    With x = ±σ·2^e (σ = 1 + mantissa·2^−m, m mantissa bits), p = σ − 1 = mantissa·2^−m; up iff
    u = U·2⁻ᵇ < p, i.e. U < mantissa·2^(b−m) — integers only, exact; rounding up adds 1 to the
    exponent field. Subnormals (field 0) round to 0 or the smallest normal number with the same
    p = |x|/tiny, so the same rule takes their field from 0 to 1; zeros have p = 0; the all-ones field
    (inf, NaN: ±inf in ``_round_pow2``) stays as it is."""
    _, nmant, nexp, _ = _float_layout(dtype)
    emask = (1 << nexp) - 1
    mant = xi & ((1 << nmant) - 1)
    if u is None:
        up = mant > (1 << (nmant - 1))  # 1/2 < p
    else:
        if mant.dtype.itemsize < u.dtype.itemsize:  # float16: the threshold needs 24 bits
            mant = mant.astype(u.dtype)
        mant <<= draw_bits(dtype) - nmant  # p·2^b
        up = u < mant
    code = xi >> nmant
    if out is not None:
        code = code.astype(out)
    if np.dtype(code.dtype).itemsize * 8 != nexp or np.dtype(code.dtype).kind != "u":
        code &= emask
    up &= code != emask
    code += up
    return code


def _less_uniforms(u: np.ndarray, p: np.ndarray, dtype: torch.dtype, out: np.ndarray, scaled: bool = False) -> None:
    """out = [U·2⁻ᵇ < p] for the draw's integers u = U and probabilities p ∈ [0, 1] of ``dtype``
    (p is consumed), exactly: as U < p·2^b, with p·2^b exact (a power-of-two scaling that cannot
    overflow) and U cast exactly to floats in the comparison (float32 for b = 24, float64 for 53).
    ``scaled``: p holds p·2^b already (see ``_compare_scale``)."""
    b = draw_bits(dtype)
    wide, sig = (np.float64, "dd->?") if b > 24 else (np.float32, "ff->?")
    if not scaled:
        p = p if p.dtype == wide else p.astype(wide)
        p *= 2.0**b
    np.less(u, p, out=out, casting="unsafe", signature=sig)


def _compare_scale(dtype: torch.dtype, k: int = 0) -> float:
    """2^b where a dithering quantizer can fold the comparison's scaling by 2^b (``_less_uniforms``)
    into its own scaling of r = |x|/‖x‖ by 2^k (r ≤ 1 + ε stays finite: float32 and float64 inputs
    with k + b below the largest exponent), else 1.0 (float16, or huge k)."""
    b = draw_bits(dtype)
    if dtype not in (torch.float32, torch.float64) or k + b >= math.frexp(torch.finfo(dtype).max)[1] - 1:
        return 1.0
    return 2.0**b


def _sign_mask(dtype: torch.dtype) -> int:
    """The sign bit of a float of ``dtype`` as a value of the signed integer of its width."""
    return -(1 << (8 * torch.empty((), dtype=dtype).element_size() - 1))


def _or_sign(bits: np.ndarray, negative: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """``bits`` (the integer view of floats of ``dtype``) with the sign bit set where ``negative``, in place."""
    s = negative.astype(bits.dtype)
    s *= _sign_mask(dtype)
    bits |= s
    return bits


def _natural_numpy(x: Tensor, u: Tensor | None, floats: bool) -> tuple[Tensor, ...]:
    """``Natural``'s payload (exponent codes, negative) on the CPU, or with ``floats`` the rounded values
    themselves (the codes moved back into place under x's sign bit): ``apply``, in one pass."""
    X, U, blocks = _row_blocks(x, u)
    it, nmant, nexp, _ = _float_layout(x.dtype)
    XI = X.view(_NUMPY_INT[it])
    if floats:
        out = np.empty(X.shape, dtype=X.dtype)
        OI = out.view(XI.dtype)
        sign = _sign_mask(x.dtype)
        for rx, ru, cols in blocks:
            xi = XI[rx, cols]
            code = _pow2_codes(xi, None if U is None else U[ru, cols], x.dtype)
            code <<= nmant
            code |= xi & sign
            OI[rx, cols] = code
        return (torch.from_numpy(out).view(x.shape),)
    codes = np.empty(X.shape, dtype=_NUMPY_UINT[_uint_dtype(nexp)])
    negative = np.empty(X.shape, dtype=np.bool_)
    for rx, ru, cols in blocks:
        xi = XI[rx, cols]
        codes[rx, cols] = _pow2_codes(xi, None if U is None else U[ru, cols], x.dtype, codes.dtype.type)
        np.less(xi, 0, out=negative[rx, cols])
    return torch.from_numpy(codes).view(x.shape), torch.from_numpy(negative).view(x.shape)


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

    def _up_uniforms(self, x: Tensor, rnd: Tensor | None) -> Tensor | None:
        """The draw's integers U (round up iff U·2⁻ᵇ < p); None for ``Rounding``'s fixed u = 1/2."""
        return self._uniforms(x, rnd)

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        u = self._up_uniforms(x, rnd)
        if _on_numpy(x):
            return _natural_numpy(x, u, floats=True)[0]
        return _round_pow2(x, torch.full((), 0.5, dtype=x.dtype, device=x.device) if u is None else _float_uniforms(u, x.dtype))

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("exponent", "uint", d, _float_layout(dtype)[2]), Field("negative", "bits", d)]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        if _on_numpy(x):
            exponent, negative = _natural_numpy(x, self._up_uniforms(x, rnd), floats=False)
        else:
            y = self.apply(x, rnd)
            exponent, negative = _exponent_field(y).to(_uint_dtype(_float_layout(y.dtype)[2])), torch.signbit(y)
        return Payload({"exponent": exponent, "negative": negative}, x.shape[-1], x.dtype)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        """The float with the exponent field ``exponent``, sign bit ``negative`` and a zero mantissa."""
        it, nmant, _, _ = _float_layout(payload.dtype)
        sign = _sign_mask(payload.dtype)
        exponent, negative = payload.fields["exponent"], payload.fields["negative"]
        if _cpu_path(exponent.device, payload.dtype):
            bits = exponent.numpy().astype(_NUMPY_INT[it])  # a new array: the payload stays as it is
            bits <<= nmant
            return torch.from_numpy(_or_sign(bits, negative.numpy(), payload.dtype).view(_NUMPY_FLOAT[payload.dtype]))
        e = exponent.to(it) << nmant
        return e.bitwise_or_(negative.to(it).neg_().bitwise_and_(sign)).view(payload.dtype)

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

    def _up_uniforms(self, x: Tensor, rnd: Tensor | None) -> None:
        # Natural compression with every uniform at 1/2: up iff 1/2 < σ − 1.
        return None

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

    def _levels_numpy(self, r: np.ndarray, u: np.ndarray, dtype: torch.dtype, out: np.ndarray) -> None:
        """``_levels`` on the CPU for one block, written into ``out`` (integers): r = |x|/‖x‖ (safe norm,
        no NaN: see encode; consumed), u the draw's integers U of its uniforms."""
        raise NotImplementedError

    def _check_dtype(self, dtype: torch.dtype) -> None:
        """ValueError if the levels cannot be represented in ``dtype`` (nothing to check by default)."""

    def _numpy_path(self, x: Tensor, u: Tensor, norm: Tensor, values: bool) -> tuple[Tensor, ...]:
        """On the CPU, block by block: |x|/‖x‖ as ``_levels`` computes it, the level indices in cache,
        then either the payload's (level, negative) or, with ``values``, decode's ±L·scale of them
        (``apply``: its copysign(L·scale, x) bit for bit where the norm is finite)."""
        X, U, blocks = _row_blocks(x, u)
        assert U is not None
        safe = torch.where(norm > 0, norm, torch.ones_like(norm)).reshape(-1, 1).numpy()
        ldt = _NUMPY_UINT[_uint_dtype(self.width())]
        if values:
            out = np.empty(X.shape, dtype=X.dtype)
            scale = self.scale(norm).reshape(-1, 1).numpy()
        else:
            level = np.empty(X.shape, dtype=ldt)
            negative = np.empty(X.shape, dtype=np.bool_)
        # r = |x|/‖x‖ is NaN only in rows with a NaN or an infinity (whose norm is not finite):
        # those get level 0, as encode's nan_to_num gives.
        finite = bool(torch.isfinite(norm).all())
        with np.errstate(all="ignore"):  # overflow to inf and inf/inf = NaN, silently, as in torch
            for rx, ru, cols in blocks:
                xb = X[rx, cols]
                r = np.abs(xb)
                r /= safe[rx]
                if not finite:
                    np.fmax(r, 0.0, out=r)  # NaN → 0
                if values:
                    lv = np.empty(xb.shape, dtype=ldt)
                    self._levels_numpy(r, U[ru, cols], x.dtype, lv)
                    v = _or_sign(self._level_bits(lv, x.dtype), np.signbit(xb), x.dtype).view(X.dtype)
                    np.multiply(v, scale[rx], out=out[rx, cols])
                else:
                    self._levels_numpy(r, U[ru, cols], x.dtype, level[rx, cols])
                    np.signbit(xb, out=negative[rx, cols])
        if values:
            return (torch.from_numpy(out).view(x.shape),)
        return torch.from_numpy(level).view(x.shape), torch.from_numpy(negative).view(x.shape)

    def _fast_apply(self, x: Tensor, u: Tensor, norm: Tensor) -> Tensor | None:
        """``apply`` on the CPU path, or None where it does not apply: off the CPU, or rows with a
        non-finite norm (whose NaN results the torch path computes, NaN bits included)."""
        if not _on_numpy(x) or not bool(torch.isfinite(norm).all()):
            return None
        self._check_dtype(x.dtype)
        return self._numpy_path(x, u, norm, values=True)[0]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        norm = _row_norm(x)
        u = self._uniforms(x, rnd)
        self._check_dtype(x.dtype)
        if _on_numpy(x):
            idx, neg = self._numpy_path(x, u, norm, values=False)
        else:
            lv = self._levels(x, _float_uniforms(u, x.dtype), norm).nan_to_num_(nan=0.0).clamp_(0, self.levels)
            idx, neg = lv.to(_uint_dtype(self.width())), torch.signbit(x)
        return Payload({"norm": norm, "level": idx, "negative": neg}, x.shape[-1], x.dtype)

    def signed_levels(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Code → ±L for the code ``level + (levels + 1)·negative``: the level values, then their negatives
        (−0.0 for level 0), so one lookup gives copysign(L, x) and ``signed_levels[code] · scale`` is
        ``apply``'s copysign(L · scale, x) bit for bit (scale ≥ 0)."""
        lv = self.level_values(dtype, device)
        return torch.cat([lv, -lv])

    def _level_bits(self, level: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        """The level values (``level_values``) of the indices ``level`` on the CPU, as a new array of
        the integer view of ``dtype``."""
        raise NotImplementedError

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        f = payload.fields
        level, negative = f["level"], f["negative"]
        if _cpu_path(level.device, payload.dtype):
            # ±L built from the bits (the sign before the product: the same operands as the table's
            # −L · scale), then scaled: a few passes in cache, ~3× cheaper than a table lookup with numpy.
            bits = _or_sign(self._level_bits(level.numpy(), payload.dtype), negative.numpy(), payload.dtype)
            signed = bits.view(_NUMPY_FLOAT[payload.dtype])
            with np.errstate(all="ignore"):  # 0 · inf = NaN, silently, as in torch
                signed *= self.scale(f["norm"]).numpy()
            return torch.from_numpy(signed)
        table = self.signed_levels(payload.dtype, payload.device)
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

    def _levels_numpy(self, r: np.ndarray, u: np.ndarray, dtype: torch.dtype, out: np.ndarray) -> None:
        # ``_levels``'s arithmetic (np.clip with both bounds: ~3× faster than np.minimum here). With
        # c = 2^b (``_compare_scale``), r·s·c is round(r·s)·c exactly where r·s is a normal number, and
        # where r·s is subnormal both give 0 < p iff r > 0 and u < p only for U = 0: the same levels.
        s = float(self.levels)
        c = _compare_scale(dtype, math.ceil(math.log2(s)))
        r *= s * c
        if r.max() < c:  # every level is 0 or 1 (s·|x_j| < ‖x‖ for all j, usual at large d): p = r·s, no clip
            _less_uniforms(u, r, dtype, out, scaled=c != 1.0)
            return
        r *= 1.0 / c
        np.clip(r, 0.0, s, out=r)
        level = np.floor(r)
        r -= level  # p
        out[...] = level
        up = np.empty(r.shape, dtype=np.bool_)
        _less_uniforms(u, r, dtype, up)
        out += up

    def level_values(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.arange(self.levels + 1, dtype=dtype, device=device)

    def _level_bits(self, level: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        return level.astype(_NUMPY_FLOAT[dtype]).view(_NUMPY_INT[_float_layout(dtype)[0]])

    def scale(self, norm: Tensor) -> Tensor:
        return norm / float(self.levels)

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        norm = _row_norm(x)
        u = self._uniforms(x, rnd)
        fast = self._fast_apply(x, u, norm)
        if fast is not None:
            return fast
        return self._levels(x, _float_uniforms(u, x.dtype), norm).mul_(self.scale(norm)).copysign_(x)

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


    def _check_dtype(self, dtype: torch.dtype) -> None:
        if 2.0 ** (1 - self.levels) < torch.finfo(dtype).tiny:
            raise ValueError(
                f"{self.name}: levels={self.levels} puts the smallest level 2^(1−levels) below the smallest "
                f"normal {dtype} ({torch.finfo(dtype).tiny:.3g}); use levels ≤ {-math.floor(math.log2(torch.finfo(dtype).tiny)) + 1}"
            )

    def _level_fractions(self, x: Tensor, u: Tensor, norm: Tensor) -> Tensor:
        """The level L_j ∈ {0, 2^(1−s), …, 1/2, 1} of every coordinate (a fraction of the norm)."""
        self._check_dtype(x.dtype)
        b = 2.0 ** (1 - self.levels)  # smallest nonzero level
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

    def _levels_numpy(self, r: np.ndarray, u: np.ndarray, dtype: torch.dtype, out: np.ndarray) -> None:
        """``_levels`` from the bits of t = r·2^(s−1) (exact: a power of two, t ≤ 2^(s−1)). For t ≥ 1
        (r ≥ b = 2^(1−s)) with t = σ·2^j, σ ∈ [1, 2): lo = 2^(j+1−s) is level index j + 1 and
        p = (r − lo)/lo = σ − 1, read off the mantissa (as in ``_pow2_codes``); for t < 1 (r < b) the
        index is 0 and p = r/b = t. Up iff u < p adds 1 to the index."""
        _, nmant, _, bias = _float_layout(dtype)
        c = _compare_scale(dtype, self.levels - 1)
        r *= 2.0 ** (self.levels - 1) * c  # t·c, exact (a power of two, finite)
        if r.max() < c:  # every r below b (usual at large d and few levels): index [u < t], no clip
            _less_uniforms(u, r, dtype, out, scaled=c != 1.0)
            return
        r *= 1.0 / c  # t again, exactly
        np.clip(r, 0.0, 2.0 ** (self.levels - 1), out=r)  # min(r, 1)·2^(s−1)
        big = r >= 1.0
        ti = r.view(_NUMPY_INT[_float_layout(dtype)[0]])
        idx = ti >> nmant
        idx -= bias - 1  # j + 1
        np.clip(idx, 0, self.levels, out=idx)
        m = ti & ((1 << nmant) - 1)
        m |= bias << nmant
        p = m.view(r.dtype)
        p -= 1.0  # σ − 1
        np.copyto(p, r, where=~big)
        out[...] = idx
        up = np.empty(p.shape, dtype=np.bool_)
        _less_uniforms(u, p, dtype, up)
        out += up

    def level_values(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        s = self.levels
        return torch.tensor([0.0] + [2.0 ** (i - s) for i in range(1, s + 1)], dtype=dtype, device=device)

    def _level_bits(self, level: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        # 2^(i − s) has the exponent field bias − s + i (a normal number: see _check_dtype); 0 for i = 0.
        it, nmant, _, bias = _float_layout(dtype)
        bits = level.astype(_NUMPY_INT[it])
        bits += bias - self.levels
        bits <<= nmant
        bits *= level != 0
        return bits

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        norm = _row_norm(x)
        u = self._uniforms(x, rnd)
        fast = self._fast_apply(x, u, norm)
        if fast is not None:
            return fast
        return self._level_fractions(x, _float_uniforms(u, x.dtype), norm).mul_(norm).copysign_(x)

    def apply_reference(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        """Readable reference of ``apply`` (same output for the same draw); used by the tests."""
        u = _float_uniforms(self._uniforms(x, rnd), x.dtype)
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

