"""Composition outer ∘ inner of a sparsifier (inner) and any compressor (outer), e.g. top-k+natural.

Built by the registry from a name joined by ``+`` (``make("top-k+natural", ratio=0.01)``); not
registered under a name of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

from compsde.compressors import compressor_class, names
from compsde.compressors.base import Compressor, Field, Payload, check_dim, concat_draws
from compsde.compressors.sparsifiers import Identity, RandKUnscaled, Sparsifier, TopK

__all__ = ["Compose"]

#: Inner compressors that are projections T_S (scale 1) with ‖x − T_S x‖² ≤ (1 − 1/δ₁)‖x‖² in
#: expectation; the composition's δ is derived for these only.
_PROJECTIONS = (TopK, RandKUnscaled, Identity)


class Compose(Compressor):
    """C(x) = outer(inner(x)), the outer compressor acting on the k values the inner one keeps.

    The inner must be a sparsifier (or the identity): it selects k = ``inner.support(d)`` coordinates
    S and a scale s; C gathers v = s·x_S (rows of length k), computes outer(v) as a length-k vector,
    and scatters it back into zeros at S. So the outer's constants are those at dimension k.

    Randomness: ``draw`` returns one tensor of shape (*batch, a + b): the inner's draw (its k indices;
    a = 0 for a deterministic inner) followed by the outer's draw for rows of length k (b values;
    b = 0 for a deterministic outer), both stored exactly (``concat_draws``: int64 when both are
    integers, as rand-k's indices and a quantizer's integer uniforms are). A shared inner draw (rand-k
    with ``shared=True``, leading dim 1) is expanded to the full batch first. ``apply`` splits it again.

    Theory (ω1, ω2 the parts' variances, ω2 taken at dimension k):
    * unbiased iff both parts are; then E‖C(x)‖² ≤ (1 + ω2) E‖inner(x)‖² ≤ (1 + ω2)(1 + ω1)‖x‖², so
      ω = (1 + ω1)(1 + ω2) − 1.
    * inner a projection T (top-k, rand-k-unscaled, identity) in B3(δ1) and outer unbiased with
      ω2 < 1: outer(Tx) − Tx lives on S and x − Tx off S, so
      E‖C(x) − x‖² = E‖outer(Tx) − Tx‖² + E‖x − Tx‖² ≤ ω2 E‖Tx‖² + ‖x‖² − E‖Tx‖²
                   = ‖x‖² − (1 − ω2) E‖Tx‖² ≤ (1 − (1 − ω2)/δ1)‖x‖²,
      using E‖Tx‖² ≥ ‖x‖²/δ1; hence δ = δ1/(1 − ω2). Otherwise δ is not declared (None).
    * projection inner in B1(α1, 1), B2(γ1, 1) and unbiased outer: E‖Tx‖² ≤ E‖C(x)‖² ≤ (1 + ω2)E‖Tx‖²
      and E C(x) = E Tx with ⟨E Tx, x⟩ = E‖Tx‖², so B1(α1, 1 + ω2) and B2(γ1, 1 + ω2) (top-k+natural:
      B1(k/d, 9/8)); otherwise the default conversions of ω or δ.
    * bits = inner.index_bits(d) + outer.bits(k): the indices (if sent) plus the outer's encoding
      of the k kept values.
    Reference: Horváth et al. 2019 (natural compression composed with sparsifiers);
    Beznosikov et al. 2020 (compositions of biased compressors).
    """

    def __init__(self, inner: Compressor, outer: Compressor) -> None:
        if not isinstance(inner, Sparsifier):
            valid = [n for n in names() if issubclass(compressor_class(n), Sparsifier)]
            raise ValueError(
                f"cannot compose with inner={inner!r}: the inner (left) part of a composition must be a "
                f"sparsifier whose kept values are what it sends; valid inner compressors: {', '.join(valid)}"
            )
        if not isinstance(outer, Compressor):
            raise ValueError(f"outer must be a Compressor, got {outer!r}")
        if inner.shared_randomness and outer.randomized and not outer.shared_randomness:
            # One draw holds both parts, so it cannot be shared for the inner and independent for the
            # outer; and per-worker random rounding would make the payloads unsummable anyway.
            raise ValueError(
                f"cannot compose {inner!r} (shared=True) with the randomized {outer.name!r}: use shared=False, "
                "or a deterministic outer compressor"
            )
        self.inner = inner
        self.outer = outer
        self.randomized = inner.randomized or outer.randomized  # type: ignore[misc]
        self.unbiased = inner.unbiased and outer.unbiased  # type: ignore[misc]

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.inner.name}+{self.outer.name}"

    def params(self) -> dict[str, object]:
        return {**self.inner.params(), **self.outer.params()}

    def __repr__(self) -> str:
        return f"{self.inner!r}+{self.outer!r}"

    # ---- randomness and arithmetic -------------------------------------------------------
    def _inner_size(self, d: int) -> int:
        return self.inner.support(d) if self.inner.randomized else 0

    def draw(
        self,
        batch_shape: tuple[int, ...],
        d: int,
        generator: torch.Generator | None,
        dtype: torch.dtype = torch.float64,
    ) -> Tensor | None:
        k = self.inner.support(d)
        ri = self.inner.draw(batch_shape, d, generator, dtype)
        ro = self.outer.draw(batch_shape, k, generator, dtype)
        parts = [r for r in (ri, ro) if r is not None]
        if not parts:
            return None
        return concat_draws(parts)

    def _split(self, rnd: Tensor | None, d: int) -> tuple[Tensor | None, Tensor | None]:
        """The inner's and the outer's parts of a draw."""
        if rnd is None:
            if self.randomized:
                raise ValueError(f"{self.name}: needs the draw from draw(); got rnd=None")
            return None, None
        a = self._inner_size(d)
        return (rnd[..., :a] if a else None), (rnd[..., a:] if self.outer.randomized else None)

    def decode_needs_draw(self, d: int) -> bool:
        return self.inner.decode_needs_draw(d) or self.outer.decode_needs_draw(self.inner.support(d))

    def fields(self, d: int, dtype: torch.dtype) -> list[Field]:
        k = self.inner.support(d)
        out = [Field(f"o.{f.name}", f.kind, f.count, f.width) for f in self.outer.fields(k, dtype)]
        return out + [f for f in self.inner.fields(d, dtype) if f.name == "indices"]

    def encode(self, x: Tensor, rnd: Tensor | None) -> Payload:
        d = x.shape[-1]
        ri, ro = self._split(rnd, d)
        idx = self.inner.indices(x, ri)
        vals = x if idx is None else self.inner.kept_values(x, idx)
        fields = {f"o.{k}": v for k, v in self.outer.encode(vals, ro).fields.items()}
        if idx is not None and self.inner.sends_indices(d):
            fields["indices"] = idx
        return Payload(fields, d, x.dtype)

    def _outer_values(self, payload: Payload, ro: Tensor | None) -> Tensor:
        """The outer compressor's decoding of the kept values (rows of length k)."""
        k = self.inner.support(payload.d)
        outer = Payload({n[2:]: v for n, v in payload.fields.items() if n.startswith("o.")}, k, payload.dtype)
        return self.outer.decode(outer, ro)

    def decode(self, payload: Payload, rnd: Tensor | None) -> Tensor:
        ri, ro = self._split(rnd, payload.d)
        vals = self._outer_values(payload, ro)
        if isinstance(self.inner, Identity):
            return vals
        idx = self.inner.payload_indices(payload, ri)
        return torch.zeros(*vals.shape[:-1], payload.d, dtype=vals.dtype, device=vals.device).scatter_(-1, idx, vals)

    def decode_sparse(self, payload: Payload, rnd: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The inner sparsifier's kept indices and the outer's decoded values there (None for an identity
        inner: every coordinate is sent)."""
        if isinstance(self.inner, Identity):
            return None
        ri, ro = self._split(rnd, payload.d)
        return self.inner.payload_indices(payload, ri), self._outer_values(payload, ro)

    def apply(self, x: Tensor, rnd: Tensor | None) -> Tensor:
        d = x.shape[-1]
        ri, ro = self._split(rnd, d)
        idx = self.inner.indices(x, ri)
        if idx is None:  # identity inner: the outer sees the whole row
            return self.outer.apply(x, ro)
        return torch.zeros_like(x).scatter_(-1, idx, self.outer.apply(self.inner.kept_values(x, idx), ro))

    # ---- declared theory -----------------------------------------------------------------
    def support(self, d: int) -> int:
        return self.outer.support(self.inner.support(d))

    def index_bits(self, d: int) -> int:
        return self.inner.index_bits(d) + self.outer.index_bits(self.inner.support(d))

    def bits(self, d: int) -> int:
        check_dim(self.name, d)
        return self.inner.index_bits(d) + self.outer.bits(self.inner.support(d))

    def omega(self, d: int) -> float | None:
        if not self.unbiased:
            return None
        w1 = self.inner.omega(d)
        w2 = self.outer.omega(self.inner.support(d))
        if w1 is None or w2 is None:
            return None
        return (1.0 + w1) * (1.0 + w2) - 1.0

    def delta(self, d: int) -> float | None:
        if not isinstance(self.inner, _PROJECTIONS) or not self.outer.unbiased:
            return None
        d1 = self.inner.delta(d)
        w2 = self.outer.omega(self.inner.support(d))
        if d1 is None or w2 is None or w2 >= 1.0:
            return None
        return d1 / (1.0 - w2)

    def _projection_b(self, d: int, lower: tuple[float, float] | None) -> tuple[float, float] | None:
        # Projection inner T (⟨E Tx, x⟩ = E‖Tx‖²) and unbiased outer O, independent:
        # E‖Tx‖² ≤ E‖O(Tx)‖² ≤ (1 + ω2) E‖Tx‖² and E C(x) = E Tx, so the inner's lower constant
        # (α1 resp. γ1, both bounds on E‖Tx‖²/‖x‖²) survives and β = 1 + ω2.
        w2 = self.outer.omega(self.inner.support(d)) if self.outer.unbiased else None
        if not isinstance(self.inner, _PROJECTIONS) or w2 is None or lower is None:
            return None
        return lower[0], 1.0 + w2

    def b1(self, d: int) -> tuple[float, float] | None:
        """B1(α1, 1 + ω2) for a projection inner in B1(α1, 1) and an unbiased outer; else default."""
        return self._projection_b(d, self.inner.b1(d)) or super().b1(d)

    def b2(self, d: int) -> tuple[float, float] | None:
        """B2(γ1, 1 + ω2) for a projection inner in B2(γ1, 1) and an unbiased outer; else default."""
        return self._projection_b(d, self.inner.b2(d)) or super().b2(d)

    @property
    def summable(self) -> bool:
        # e.g. shared rand-k followed by the identity; any per-worker quantisation breaks summing.
        return self.inner.summable and self.outer.summable

    @property
    def shared_randomness(self) -> bool:
        return self.inner.shared_randomness and (not self.outer.randomized or self.outer.shared_randomness)

