"""Sparsifiers: keep k of the d coordinates of every row (and the identity, which keeps all d).

All of them have the form C(x) = s · T_S x, where T_S zeroes every coordinate outside a set S of k
indices and s is a scale; they differ in how S is chosen:

* ``identity``         S = {1..d}, s = 1.
* ``rand-k``           S uniform among the k-subsets, s = d/k (unbiased) — Stich et al. 2018,
                        "Sparsified SGD with memory"; Beznosikov et al. 2020, "On biased compression
                        for distributed learning".
* ``rand-k-unscaled``  S uniform, s = 1 (biased).
* ``top-k``            S = the k largest |x_j|, s = 1 (biased, deterministic).

Declared constants (derivations in each class). For a projection T_S, ⟨T_S x, x⟩ = ‖T_S x‖², and
‖x − T_S x‖² = ‖x‖² − ‖T_S x‖², which is why the B1/B2 ``β`` of every unscaled sparsifier is 1 and
its contraction follows from a lower bound on ‖T_S x‖².

Payload: the k kept values (``values``, already scaled) and, for top-k, their indices (``indices``,
⌈log₂ d⌉ bits each: they depend on the data); rand-k sends no indices, the receiver regenerates them
from the sender's draw (see ``RandK``). Every sparsifier declares ``support(d) = k`` and
``index_bits(d)``, which ``Compose`` uses to compress the kept values further.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from compsde.compressors import register
from compsde.compressors.base import (
    FLOAT_BITS,
    Compressor,
    Field,
    Payload,
    check_dim,
    check_draw_batch,
    check_k_ratio,
    index_bits,
    require_generator,
    resolve_k,
)

__all__ = ["Identity", "RandK", "RandKUnscaled", "Sparsifier", "TopK", "rand_k_indices", "top_k_indices"]


class Sparsifier(Compressor):
    """C(x) = s · T_S x: keep the coordinates in an index set S of size ``support(d)``, scale by s.

    Subclasses implement ``indices`` (the set S as an int64 tensor of shape (..., k), or ``None`` for
    "all coordinates in order") and ``scale``. ``apply`` and ``Compose`` are written in terms of them:
    ``Compose`` gathers the kept values x_S, hands them to the outer compressor as rows of length k and
    scatters the result back, so a sparsifier's randomness (if any) must be exactly its indices.
    """

    def indices(self, x: Tensor, rnd: Tensor | None) -> Tensor | None:
        """Kept indices of every row of x, shape (*x.shape[:-1], k), int64; ``None`` = all d."""
        raise NotImplementedError

    def scale(self, d: int) -> float:
        """The factor s applied to the kept values."""
        return 1.0

    def sends_indices(self, d: int) -> bool:
        """Whether the payload carries the indices (they depend on the data, not only on the draw)."""
        return self.index_bits(d) > 0

    def decode_needs_draw(self, d: int) -> bool:
        return self.randomized and not self.sends_indices(d)

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        k = self.support(d)
        out = [Field("values", "float", k)]
        if self.sends_indices(d):
            out.append(Field("indices", "uint", k, index_bits(d)))
        return out

    def _kept(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        """``indices``, which only ``Identity`` leaves None (and it encodes and decodes without them)."""
        idx = self.indices(x, rnd)
        if idx is None:
            raise ValueError(f"{self.name} keeps every coordinate: it has no indices to encode")
        return idx

    def kept_values(self, x: Tensor, idx: Tensor) -> Tensor:
        """s · x_S: the values a sparsifier sends for the kept indices ``idx``."""
        vals = x.gather(-1, idx)
        s = self.scale(x.shape[-1])
        return vals * s if s != 1.0 else vals

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        d = x.shape[-1]
        idx = self._kept(x, rnd)
        fields = {"values": self.kept_values(x, idx)}
        if self.sends_indices(d):
            fields["indices"] = idx
        return Payload(fields, d, x.dtype)

    def payload_indices(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        """The kept indices of a payload: sent (top-k) or regenerated from the sender's draw (rand-k)."""
        if "indices" in payload.fields:
            return payload.fields["indices"].long()
        shape = (*payload.batch_shape, payload.d)
        return self._kept(torch.zeros((), device=payload.device).expand(shape), rnd).to(payload.device)

    def subtract_kept(self, v: Tensor, payload: Payload, rnd: Tensor | None) -> Tensor:
        """v − decode(payload), in place in v (..., d), bit for bit: v_j − s·x_j at the kept indices and
        v_j − 0 = v_j elsewhere (−0.0 and NaN included), so only the k kept entries are touched. The
        indices must be distinct (every sparsifier's are); returns v."""
        idx = self.payload_indices(payload, rnd).expand(*v.shape[:-1], -1)
        vals = payload.fields["values"].expand(*v.shape[:-1], -1)
        return v.scatter_(-1, idx, v.gather(-1, idx) - vals)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        vals = payload.fields["values"]
        idx = self.payload_indices(payload, rnd)
        return torch.zeros(*vals.shape[:-1], payload.d, dtype=vals.dtype, device=vals.device).scatter_(-1, idx, vals)

    def decode_add(self, payload: Payload, rnd: Tensor | None, out: Tensor) -> Tensor:
        return out.scatter_add_(-1, self.payload_indices(payload, rnd), payload.fields["values"])

    def decode_sparse(self, payload: Payload, rnd: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The kept indices and values: Σ_i decode(payload_i) is then k adds per worker (``sparse_sum``),
        the dense sum's bits without a dense message per worker."""
        return self.payload_indices(payload, rnd), payload.fields["values"]

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        idx = self.indices(x, rnd)
        if idx is None:
            return x.clone()
        vals = self.kept_values(x, idx)
        # A fresh zero tensor rather than x * mask: the output must not alias the input, and
        # scatter touches only k entries after the O(d) zero fill.
        return torch.zeros_like(x).scatter_(-1, idx, vals)

    def bits(self, d: int) -> int:
        check_dim(self.name, d)
        return FLOAT_BITS * self.support(d) + self.index_bits(d)


@register
class Identity(Sparsifier):
    """C(x) = x. Unbiased with ω = 0, in B3(1), B1(1, 1), B2(1, 1); sends 32 d bits; summable."""

    name = "identity"
    unbiased = True

    def __init__(self) -> None:
        pass

    def indices(self, x: Tensor, rnd: Tensor | None) -> Tensor | None:
        return None

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        """Returns ``x`` itself: the only compressor whose output aliases its input (no copy)."""
        return x

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        return [Field("values", "float", d)]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        return Payload({"values": x}, x.shape[-1], x.dtype)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        return payload.fields["values"]

    def decode_add(self, payload: Payload, rnd: Tensor | None, out: Tensor) -> Tensor:
        return out.add_(payload.fields["values"])

    def decode_sparse(self, payload: Payload, rnd: Tensor | None) -> None:
        return None  # every coordinate is sent

    def omega(self, d: int) -> float:
        return 0.0

    def delta(self, d: int) -> float:
        return 1.0

    @property
    def summable(self) -> bool:
        return True


# ---- rand-k ------------------------------------------------------------------------------------


def rand_k_indices(batch_shape: tuple[int, ...], d: int, k: int, generator: torch.Generator) -> Tensor:
    """k distinct indices per row, each row a uniformly random k-subset of {0..d−1} (in random order).

    Returns an int64 tensor of shape (*batch_shape, k). Uses only ``generator``.

    For k ≤ d/4 this avoids permuting all d coordinates (``torch.randperm(10⁷)`` takes ~260 ms,
    see environment.md) by sequential sampling with rejection: draw m ≈ E[draws to see k distinct
    values] + 5 standard deviations indices *with* replacement (``torch.randint``, O(m)), keep the
    first occurrence of each value in draw order, take the first k kept. The first k distinct values
    of an i.i.d. uniform sequence form a uniform k-subset (the process is invariant under any
    permutation of {0..d−1}); conditioning on "m draws contain ≥ k distinct values" keeps that
    invariance, so rows that fall short simply redraw. Cost O(m log m) per row (a sort of m values),
    m ≤ (4/3)k + O(√k) for k ≤ d/4.

    For k > d/4 the m draws would approach d anyway, so each row is the first k of a random
    permutation of d: ``torch.randperm`` for a single row (~3.5× faster than an argsort at
    d = 10⁷), else the argsort of d float64 uniforms per row, vectorised over rows (float64 so that
    ties, which would bias the order, have negligible probability).
    """
    rows = math.prod(batch_shape)
    dev = generator.device
    if rows == 0:
        return torch.empty(*batch_shape, k, dtype=torch.int64, device=dev)
    if 4 * k > d:
        if rows == 1:
            return torch.randperm(d, generator=generator, device=dev)[:k].reshape(*batch_shape, k)
        u = torch.rand(rows, d, generator=generator, dtype=torch.float64, device=dev)
        return u.argsort(dim=-1)[:, :k].reshape(*batch_shape, k)
    m = _rand_k_num_draws(d, k)
    out = torch.empty(rows, k, dtype=torch.int64, device=dev)
    todo = torch.arange(rows, device=dev)
    while todo.numel() > 0:
        n = todo.numel()
        draws = torch.randint(d, (n, m), generator=generator, device=dev)
        # A stable sort groups equal values with their draw order preserved, so the first of each
        # group is that value's first occurrence in draw order.
        sv, perm = draws.sort(dim=-1, stable=True)
        first_sorted = torch.ones_like(sv, dtype=torch.bool)
        first_sorted[:, 1:] = sv[:, 1:] != sv[:, :-1]
        first = torch.empty_like(first_sorted).scatter_(-1, perm, first_sorted)
        rank = first.cumsum(dim=-1)  # number of distinct values seen up to each draw
        ok = rank[:, -1] >= k
        keep = first & (rank <= k) & ok[:, None]
        # Boolean indexing is row-major, so each complete row contributes exactly k values, in order.
        out[todo[ok]] = draws[keep].view(-1, k)
        todo = todo[~ok]
    return out.reshape(*batch_shape, k)


def _rand_k_num_draws(d: int, k: int) -> int:
    """Draws with replacement per row so that ≥ k distinct values come out with high probability.

    The draws needed to collect k distinct values are a sum of independent geometric variables with
    means d/(d − i), i < k, so E ≤ −d·log(1 − k/d) (the summand grows in i, compare with the
    integral) and Var = Σ (i/d)/(1 − i/d)² ≤ k·(k/d)/(1 − k/d)². With m = mean + 5 sd + 8 a row
    needs a redraw with probability ≤ 1/26 by Cantelli's inequality, and in practice far less
    (the sum is close to normal, and its mean and sd are over-estimated).
    """
    mean = -d * math.log1p(-k / d)
    sd = math.sqrt(k * (k / d)) / (1.0 - k / d)
    return min(int(math.ceil(mean + 5.0 * sd)) + 8, 4 * d)


class _KSparsifier(Sparsifier):
    """A sparsifier keeping k coordinates, k given as a count ``k`` or a fraction ``ratio`` of d."""

    def __init__(self, k: int | None = None, ratio: float | None = None) -> None:
        check_k_ratio(self.name, k, ratio)
        self.k = k
        self.ratio = ratio

    def params(self) -> dict[str, object]:
        return {"k": self.k} if self.k is not None else {"ratio": self.ratio}

    def support(self, d: int) -> int:
        return resolve_k(self.name, self.k, self.ratio, d)


class _UnscaledProjection(_KSparsifier):
    """Constants of an unscaled projection T_S with E‖T_S x‖² ≥ (k/d)‖x‖² (derivations in the subclasses):
    B3(d/k), B1(k/d, 1), B2(k/d, 1), since ⟨T_S x, x⟩ = ‖T_S x‖²."""

    def delta(self, d: int) -> float:
        return d / self.support(d)

    def b1(self, d: int) -> tuple[float, float]:
        return self.support(d) / d, 1.0

    def b2(self, d: int) -> tuple[float, float]:
        return self.support(d) / d, 1.0


class _RandKBase(_KSparsifier):
    randomized = True

    def __init__(self, k: int | None = None, ratio: float | None = None, shared: bool = False) -> None:
        super().__init__(k, ratio)
        if not isinstance(shared, bool):
            raise ValueError(f"{self.name}: shared must be True or False, got {shared!r}")
        self.shared = shared

    def params(self) -> dict[str, object]:
        out = super().params()
        if self.shared:
            out["shared"] = True
        return out

    def draw(
        self,
        batch_shape: tuple[int, ...],
        d: int,
        generator: torch.Generator | None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor:
        """The kept indices, int64 of shape (*batch_shape, k) (``dtype`` is ignored: they are indices).

        With ``shared=True`` the leading (worker) dimension of ``batch_shape`` is replaced by 1, so
        every worker uses the same indices (the remaining dims, e.g. Monte Carlo repetitions, still
        get independent draws); pass a batch shape whose first entry is the worker axis.
        """
        g = require_generator(self.name, generator)
        k = self.support(d)
        if self.shared and len(batch_shape) > 0:
            batch_shape = (1, *batch_shape[1:])
        return rand_k_indices(tuple(batch_shape), d, k, g)

    def indices(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        if rnd is None:
            raise ValueError(f"{self.name}: apply needs the draw (indices) from draw(); got rnd=None")
        d = x.shape[-1]
        k = self.support(d)
        idx = rnd.to(device=x.device, dtype=torch.int64)  # Compose may hand indices over as float64
        if idx.shape[-1] != k:
            raise ValueError(f"{self.name}: the draw has {idx.shape[-1]} indices per row, expected k = {k} for d = {d}")
        xb = check_draw_batch(self.name, x, idx)
        return idx.expand(*xb, k)

    def index_bits(self, d: int) -> int:
        return 0

    @property
    def shared_randomness(self) -> bool:
        return self.shared


@register
class RandK(_RandKBase):
    """Random-k sparsification, scaled: C(x) = (d/k) · T_S x with S a uniform k-subset.

    Unbiased: P(j ∈ S) = k/d, so E C(x)_j = (d/k)(k/d) x_j = x_j.
    Variance (exact): E‖C(x)‖² = Σ_j (k/d)(d/k)² x_j² = (d/k)‖x‖², hence
    E‖C(x) − x‖² = E‖C(x)‖² − ‖x‖² = (d/k − 1)‖x‖²: ω = d/k − 1, class U(d/k) (docs/theory.md §4).
    B1/B2 follow from the default conversion: (1, d/k).

    Bits: 32k. The indices are not sent: they are a function of the generator's seed and position,
    which sender and receiver share (the receiver replays the same ``draw``).

    ``shared=True``: all workers use one draw (see ``draw``), so their payloads are values at the
    same k positions and can be summed by an all-reduce (``summable``); each worker's C is still
    unbiased with the same ω, but the workers' errors are then correlated.

    Reference: Stich, Cordonnier, Jaggi 2018, "Sparsified SGD with memory"; Beznosikov et al. 2020.
    """

    name = "rand-k"
    unbiased = True

    def scale(self, d: int) -> float:
        return d / self.support(d)

    def omega(self, d: int) -> float:
        return d / self.support(d) - 1.0

    @property
    def summable(self) -> bool:
        return self.shared


@register
class RandKUnscaled(_RandKBase, _UnscaledProjection):
    """Random-k sparsification without scaling: C(x) = T_S x with S a uniform k-subset. Biased.

    E C(x) = (k/d) x and E‖C(x)‖² = ⟨E C(x), x⟩ = (k/d)‖x‖², so
    * B1(k/d, 1): α = k/d, β = 1 (equality in both);
    * B2(k/d, 1): γ = k/d, β = 1;
    * B3(d/k): E‖C(x) − x‖² = ‖x‖² − (k/d)‖x‖² = (1 − k/d)‖x‖².
    Bits 32k (indices regenerated from the shared seed, as for ``rand-k``).
    Reference: Beznosikov et al. 2020, "On biased compression for distributed learning".
    """

    name = "rand-k-unscaled"



# ---- top-k -------------------------------------------------------------------------------------

#: Below this row length torch.topk is already fast (≲ 1 ms), so the sampled-threshold path is off.
_FAST_TOPK_MIN_D = 1 << 17
#: Size of the fixed sample used to guess a threshold.
_SAMPLE = 1 << 16


@functools.lru_cache(maxsize=8)
def _sample_positions(d: int, device: str) -> Tensor:
    """Fixed pseudo-random positions (sorted, for memory locality) used to estimate a threshold.

    A fixed seed keeps top-k deterministic; a periodic or adversarial input can defeat the sample,
    but that only costs speed (the exact fallback), never correctness.
    """
    g = torch.Generator(device=device).manual_seed(0x5EED)
    return torch.randint(d, (_SAMPLE,), generator=g, device=device).sort().values


def _tie_select(a: Tensor, v: Tensor, k: int) -> Tensor:
    """Boolean mask with exactly k True per row: all a > v, then the lowest-index a == v.

    Rows of ``a`` hold magnitudes in index order; ``v`` (shape (rows,)) is each row's k-th largest
    value, so at least k entries are ≥ v and fewer than k are > v.
    """
    gt = a > v[:, None]
    eq = a == v[:, None]
    need = k - gt.sum(dim=-1, keepdim=True)
    return gt | (eq & (eq.cumsum(dim=-1) <= need))


def _topk_exact(a: Tensor, k: int) -> Tensor:
    """Reference path on magnitudes a (rows, d): torch.topk, then ties at the k-th value resolved
    to the lowest indices; returns (rows, k) indices in increasing order."""
    rows = a.shape[0]
    vals, idx = torch.topk(a, k, dim=-1, sorted=False)
    v = vals.amin(dim=-1)
    # Every row has ≥ k entries ≥ its v; more than rows·k in total means ties in some row. (A global
    # count_nonzero is a fast reduction; with dim= it goes through an int64 copy of the mask.)
    if int((a >= v[:, None]).count_nonzero()) > rows * k:
        # torch.topk's choice among tied values is unspecified: pick the lowest indices explicitly
        # (O(d) per row, only in this case).
        sel = _tie_select(a, v, k)
        return sel.nonzero()[:, 1].view(rows, k)
    return idx.sort(dim=-1).values


def _topk_sampled(x: Tensor, k: int) -> Tensor | None:
    """Exact top-k of |x| (rows, d) via a sampled threshold; ``None`` if the sample was unlucky.

    Pick t from a fixed sample of s positions so that ≥ k elements of the row pass |x| ≥ t with
    overwhelming probability but not many more, then run torch.topk on the candidates only. If the
    count of candidates c ≥ k, the row's k-th largest value is ≥ t, so every top-k element (and every
    element tied with the k-th) is a candidate: the result is exact, whatever the sample. The caller
    falls back to plain torch.topk when c < k in some row or c is a large part of the rows.

    Choosing the sample rank r: with q = d/s, the fraction of the row above the r-th largest sample
    value is ~Beta(r, s − r + 1), so c ≈ q·r ± q·√r. Requiring q·r − 5q√r ≥ k gives
    √r = (5 + √(25 + 4k/q))/2: c ≈ 1.06k at k = d/10, 1.2k at d/100, a few thousand for tiny k.

    The mask is computed as (x ≥ t) | (x ≤ −t) rather than |x| ≥ t: no d-sized float temporary
    (at d = 10⁷ a fresh 40 MB buffer costs ~20 ms of page faults, more than the comparisons).
    """
    rows, d = x.shape
    pos = _sample_positions(d, str(x.device))
    s = pos.numel()
    q = d / s
    r = math.ceil(((5.0 + math.sqrt(25.0 + 4.0 * k / q)) / 2.0) ** 2)
    if r > s or q * r > d / 4:
        return None  # candidates would be a large part of the row: plain topk is as good
    t = torch.topk(x[:, pos].abs(), r, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # (rows, 1)
    found = _candidates(x, t, rows * (d // 4))
    if found is None:
        return None  # e.g. t = 0 on a sparse row: the candidates would be a large part of it
    # Flat positions, row-major: each row's candidates in increasing index order.
    flat, cand_vals = found
    if rows == 1:
        if flat.numel() < k:
            return None
        cand_idx = flat.unsqueeze(0)
        cand = cand_vals.unsqueeze(0)
    else:
        row = torch.div(flat, d, rounding_mode="floor")
        col_in_x = flat - row * d
        counts = torch.bincount(row, minlength=rows)
        if bool((counts < k).any()):
            return None
        # Pad the ragged candidate lists to a (rows, c_max) matrix; padding −1 is below every
        # magnitude, so it is never selected (each row has ≥ k real candidates).
        cmax = int(counts.max())
        offsets = counts.cumsum(0) - counts
        col = torch.arange(flat.numel(), device=x.device) - offsets[row]
        cand = torch.full((rows, cmax), -1.0, dtype=x.dtype, device=x.device)
        cand_idx = torch.zeros((rows, cmax), dtype=torch.int64, device=x.device)
        cand[row, col] = cand_vals
        cand_idx[row, col] = col_in_x
    v = torch.topk(cand, k, dim=-1, sorted=False).values.amin(dim=-1)
    sel = _tie_select(cand, v, k)
    return cand_idx[sel].view(rows, k)


#: Elements per block of the CPU candidate scan: a block's magnitudes and mask stay in cache.
_SCAN_BLOCK = 1 << 16


def _candidates(x: Tensor, t: Tensor, limit: int) -> tuple[Tensor, Tensor] | None:
    """Flat positions p (row-major, increasing) of the entries of x (rows, d) with |x_p| ≥ t of their
    row (t: (rows, 1)), and those |x_p|; ``None`` as soon as there are more than ``limit``.

    NaN is never a candidate (a comparison with NaN is false). On the CPU (float32/64, one thread's
    worth of cache) a numpy scan block by block: |x|, the comparison and the positions of each block
    are computed while it is in cache, with no d-sized temporary (at d = 10⁷ a fresh 40 MB buffer
    costs ~20 ms of page faults, more than the arithmetic); elsewhere the same set from
    (x ≥ t) | (x ≤ −t), which is |x| ≥ t without a float temporary.
    """
    rows, d = x.shape
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        mask = (x >= t).logical_or_(x <= -t)
        if int(mask.count_nonzero()) > limit:
            return None
        flat = mask.view(-1).nonzero().squeeze(1)  # 1-D nonzero is cheaper than 2-D
        return flat, x.reshape(-1).index_select(0, flat).abs_()
    xn = x.detach().contiguous().numpy()
    tn = t.detach().reshape(-1).numpy()
    step = min(_SCAN_BLOCK, d)
    mag = np.empty(step, dtype=xn.dtype)
    hit = np.empty(step, dtype=bool)
    pos_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    count = 0
    for i in range(rows):
        row, ti = xn[i], tn[i]
        for lo in range(0, d, step):
            xb = row[lo: lo + step]
            m, h = mag[: xb.shape[0]], hit[: xb.shape[0]]
            np.abs(xb, out=m)
            np.greater_equal(m, ti, out=h)
            p = np.flatnonzero(h)
            if p.shape[0]:
                count += p.shape[0]
                if count > limit:
                    return None
                val_parts.append(m[p])
                pos_parts.append(p + (i * d + lo))
    if not pos_parts:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=x.dtype)
    return (torch.from_numpy(np.concatenate(pos_parts).astype(np.int64, copy=False)),
            torch.from_numpy(np.concatenate(val_parts)))


def top_k_indices(x: Tensor, k: int) -> Tensor:
    """Indices (..., k), increasing, of the k largest |x_j| of every row; ties → lowest index.

    Exact. For long rows (d ≥ 2¹⁷) it thresholds with a sampled estimate and runs torch.topk on
    ~1.1–1.2k candidates instead of d values (torch.topk at d = 10⁷, k = d/100 takes ~150 ms on this
    machine); otherwise, or when the estimate fails, it is torch.topk on |x|. Both paths return the
    same set (a test checks this), including under ties. NaN entries give unspecified results.
    """
    d = x.shape[-1]
    batch = tuple(x.shape[:-1])
    x2 = x.detach().reshape(-1, d)
    rows = x2.shape[0]
    idx: Tensor | None
    if k == d:
        idx = torch.arange(d, device=x.device).expand(rows, d)
    else:
        idx = None
        if d >= _FAST_TOPK_MIN_D and rows > 0:
            idx = _topk_sampled(x2, k)
        if idx is None:
            idx = _topk_exact(x2.abs(), k)
    return idx.reshape(*batch, k)


@register
class TopK(_UnscaledProjection):
    """Top-k sparsification: C(x) = T_S x with S the k coordinates of largest |x_j|. Deterministic.

    Ties at the k-th magnitude are broken towards the lowest index, so C is a function of x.
    Since S holds the k largest squares, ‖T_S x‖² ≥ (k/d)‖x‖² (the mean of the top k of d numbers is
    at least the mean of all d), and ⟨C(x), x⟩ = ‖C(x)‖². Hence
    * B3(d/k): ‖C(x) − x‖² = ‖x‖² − ‖T_S x‖² ≤ (1 − k/d)‖x‖² (equality for constant |x_j|);
    * B1(k/d, 1) and B2(k/d, 1).
    Bits: 32k values + k·⌈log₂ d⌉ for the indices (they depend on the data).
    Reference: Stich et al. 2018; Beznosikov et al. 2020 (class memberships, docs/theory.md §4).
    """

    name = "top-k"

    def indices(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        return top_k_indices(x, self.support(x.shape[-1]))

    def index_bits(self, d: int) -> int:
        return self.support(d) * index_bits(d)

