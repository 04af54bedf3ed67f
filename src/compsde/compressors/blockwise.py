"""Block-wise (per-layer) compression: one compressor applied to each block of a row independently.

A network's parameters travel as one flat row (``compsde.objectives.network.FlatParams``); compressing
each parameter tensor on its own — Top-k per layer, a scale per layer for scaled sign, QSGD with a
norm per layer — is ``Blockwise(inner, blocks)`` with ``blocks`` the tensors' sizes. Everything else
(error feedback, aggregation, the wire, the simulator ≡ torch backend) is unchanged: it is a
compressor of rows of length d = Σ blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from compsde.compressors.base import Compressor, Field, Payload, check_dim, concat_draws
from compsde.core.checks import check_int, describe

__all__ = ["Blockwise"]


def _drawn(rnd: Tensor | None) -> Tensor:
    """The draw of a randomized inner compressor (which always returns one)."""
    assert rnd is not None, "a randomized compressor's draw returned None"
    return rnd


class Blockwise(Compressor):
    """C(x) = (inner(x_1), …, inner(x_L)) for the blocks x_b of lengths ``blocks`` (in order, Σ = d).

    Randomness: one draw per call, the blocks' draws side by side in the inner's draw dtype
    (``concat_draws``, as ``Compose`` stores its parts). Payload: every field of every block, named ``b<j>.<field>``.

    Theory (the blocks' constants at their own lengths d_b; each block is independent):
    * unbiased iff the inner is; E‖C(x) − x‖² = Σ_b E‖inner(x_b) − x_b‖² ≤ Σ_b ω_b‖x_b‖² ≤ max_b ω_b ‖x‖²:
      ω = max_b ω_b, and likewise δ = max_b δ_b (B3);
    * B1: E‖C‖² = Σ_b E‖C_b‖² ≥ Σ_b α_b‖x_b‖² ≥ min α ‖x‖², and E‖C_b‖² ≤ β_b⟨E C_b, x_b⟩ (so each
      ⟨E C_b, x_b⟩ ≥ 0) gives E‖C‖² ≤ max β ⟨E C, x⟩: B1(min α_b, max β_b);
    * B2 likewise: ⟨E C, x⟩ ≥ min γ ‖x‖² and E‖C‖²/max β ≤ Σ_b E‖C_b‖²/β_b ≤ ⟨E C, x⟩: B2(min γ_b, max β_b);
    * bits = Σ_b inner.bits(d_b).
    Sign has no constants; per block it keeps the signs, so ``Blockwise(sign)`` is sign itself.
    """

    def __init__(self, inner: Compressor, blocks: Sequence[int]) -> None:
        if not isinstance(inner, Compressor):
            raise ValueError(f"inner must be a Compressor, got {describe(inner)}")
        if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__len__") or len(blocks) == 0:
            raise ValueError(f"blocks must be a non-empty list of block lengths, got {describe(blocks)}")
        self.blocks = tuple(check_int(f"blocks[{i}]", b, min=1) for i, b in enumerate(blocks))
        self.inner = inner
        self.randomized = inner.randomized  # type: ignore[misc]
        self.unbiased = inner.unbiased  # type: ignore[misc]
        self.dim = sum(self.blocks)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def params(self) -> dict[str, object]:
        return self.inner.params()

    def __repr__(self) -> str:
        return f"{self.inner!r} per block ({len(self.blocks)} blocks)"

    def _check(self, d: int) -> None:
        if d != self.dim:
            raise ValueError(f"{self!r}: the blocks cover d = {self.dim} coordinates, the rows have {d}")

    # ---- randomness and arithmetic -------------------------------------------------------
    @cached_property
    def _draw_widths(self) -> tuple[int, ...]:
        """Length of the inner's draw for each block (0 when deterministic)."""
        if not self.randomized:
            return tuple(0 for _ in self.blocks)
        g = torch.Generator().manual_seed(0)
        return tuple(_drawn(self.inner.draw((1,), b, g)).shape[-1] for b in self.blocks)

    def draw(self, batch_shape: tuple[int, ...], d: int, generator: torch.Generator | None,
             dtype: torch.dtype = torch.float64) -> Tensor | None:
        self._check(d)
        if not self.randomized:
            return None
        parts = [_drawn(self.inner.draw(batch_shape, b, generator, dtype)) for b in self.blocks]
        return concat_draws(parts)

    def _split(self, rnd: Tensor | None) -> list[Tensor | None]:
        if not self.randomized:
            return [None] * len(self.blocks)
        if rnd is None:
            raise ValueError(f"{self!r}: needs the draw from draw(); got rnd=None")
        out: list[Tensor | None] = []
        lo = 0
        for w in self._draw_widths:
            out.append(rnd[..., lo: lo + w])
            lo += w
        return out

    def _pieces(self, x: Tensor) -> list[Tensor]:
        self._check(x.shape[-1])
        return list(torch.split(x, list(self.blocks), dim=-1))

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        return torch.cat([self.inner.apply(p, r) for p, r in zip(self._pieces(x), self._split(rnd))], dim=-1)

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        self._check(d)
        return [Field(f"b{j}.{f.name}", f.kind, f.count, f.width)
                for j, b in enumerate(self.blocks) for f in self.inner.fields(b, dtype)]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        fields: dict[str, Tensor] = {}
        for j, (p, r) in enumerate(zip(self._pieces(x), self._split(rnd))):
            fields.update({f"b{j}.{k}": v for k, v in self.inner.encode(p, r).fields.items()})
        return Payload(fields, x.shape[-1], x.dtype)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        self._check(payload.d)
        parts = []
        for j, (b, r) in enumerate(zip(self.blocks, self._split(rnd))):
            pre = f"b{j}."
            sub = Payload({k[len(pre):]: v for k, v in payload.fields.items() if k.startswith(pre)}, b, payload.dtype)
            parts.append(self.inner.decode(sub, r))
        return torch.cat(parts, dim=-1)

    def decode_needs_draw(self, d: int) -> bool:
        return any(self.inner.decode_needs_draw(b) for b in self.blocks)

    # ---- declared theory -----------------------------------------------------------------
    def _per_block(self, fn: Callable[[int], Any]) -> list[Any]:
        return [fn(b) for b in self.blocks]

    def support(self, d: int) -> int:
        self._check(d)
        return sum(self._per_block(self.inner.support))

    def index_bits(self, d: int) -> int:
        self._check(d)
        return sum(self._per_block(self.inner.index_bits))

    def bits(self, d: int) -> int:
        check_dim(self.name, d)
        self._check(d)
        return sum(self._per_block(self.inner.bits))

    def omega(self, d: int) -> float | None:
        ws = self._per_block(self.inner.omega) if self.unbiased else [None]
        return None if any(w is None for w in ws) else max(ws)

    def delta(self, d: int) -> float | None:
        ds = self._per_block(self.inner.delta)
        return None if any(v is None for v in ds) else max(ds)

    def _b(self, which: Callable[[int], Any]) -> tuple[float, float] | None:
        cs = self._per_block(which)
        if any(c is None for c in cs):
            return None
        return min(c[0] for c in cs), max(c[1] for c in cs)

    def b1(self, d: int) -> tuple[float, float] | None:
        return self._b(self.inner.b1)

    def b2(self, d: int) -> tuple[float, float] | None:
        return self._b(self.inner.b2)

    @property
    def summable(self) -> bool:
        return self.inner.summable

    @property
    def shared_randomness(self) -> bool:
        return self.inner.shared_randomness
