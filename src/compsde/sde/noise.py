"""Noise sources of an SDE solve: the law of the standardised increments ξ_n of W, one axis of a solve
(``compsde.sde.integrators``) next to the equation (``compsde.sde.models``) and the solver.

A step of size dt uses ΔW_n = sqrt(dt) ξ_n (the model's scaling by sqrt(η) is the solver's). Each source
declares what it is as data:

* ``GaussianIncrements``: ξ ~ N(0, I), the Brownian increments themselves; pathwise (strong) convergence.
* ``RademacherIncrements``: independent ±1 entries (the simplified weak Euler scheme of Kloeden & Platen,
  §14.1). Their first three moments match the Gaussian's (E ξ = 0, E ξ² = 1, E ξ³ = 0), which is what weak
  order 1 needs, and each entry costs one random bit instead of a Gaussian; the paths are not Brownian
  paths, so ``weak_only = True``: a solve that compares paths refuses it.

The configuration's strings (``run.increments``, ``simulate_sde(increments=...)``) name them through
``INCREMENTS`` and ``increments``, the one place they are mapped.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from compsde.core.checks import check_choice

__all__ = ["INCREMENTS", "GaussianIncrements", "NoiseSource", "RademacherIncrements", "increments", "rademacher_"]

_LITTLE_ENDIAN = sys.byteorder == "little"


@functools.lru_cache(maxsize=8)
def _byte_signs(dtype: torch.dtype) -> Tensor:
    """(256, 8) table: row b holds the 8 bits of byte b as ±1 (bit 0 first)."""
    bits = (torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1
    return (2 * bits - 1).to(dtype)


def rademacher_(out: Tensor, generator: torch.Generator) -> Tensor:
    """Fill ``out`` with independent ±1 entries: one random bit each, 56 per int64 drawn from ``generator``.

    ``random_()`` on int64 is uniform on [0, 2⁶³), so its top bit is always 0: only the 7 low bytes of
    each word are used (little-endian view). They are expanded through a 256 × 8 table (one gather,
    ``index_select``, several times cheaper than drawing one Gaussian per entry).
    """
    n = out.numel()
    nbytes = (n + 7) // 8
    words = torch.empty((nbytes + 6) // 7, dtype=torch.int64).random_(generator=generator)
    raw = words.view(torch.uint8).view(-1, 8)
    low = (raw[:, :7] if _LITTLE_ENDIAN else raw[:, 1:]).reshape(-1)[:nbytes].int()
    table = _byte_signs(out.dtype)
    if n % 8 == 0 and out.is_contiguous():
        torch.index_select(table, 0, low, out=out.view(-1, 8))
    else:
        out.copy_(torch.index_select(table, 0, low).view(-1)[:n].view(out.shape))
    return out


@dataclass(frozen=True)
class NoiseSource:
    """The law of the standardised increments ξ (mean 0, identity covariance). ``name``: the string that
    selects it; ``weak_only``: whether only the moments of the increments are right, not their paths."""

    name: ClassVar[str] = ""
    weak_only: ClassVar[bool] = False

    def fill(self, out: Tensor, generator: torch.Generator) -> Tensor:
        """Fill ``out`` with one step's increments from ``generator`` (on the generator's device)."""
        raise NotImplementedError

    def draw(self, out: Tensor, generator: torch.Generator) -> Tensor:
        """Fill ``out`` with this step's increments ξ, drawn on the generator's device and copied to
        ``out``'s, so a CUDA integration draws a CPU integration's numbers."""
        if out.device != generator.device:
            return out.copy_(self.fill(torch.empty(out.shape, dtype=out.dtype, device=generator.device), generator))
        return self.fill(out, generator)


@dataclass(frozen=True)
class GaussianIncrements(NoiseSource):
    """ξ ~ N(0, I): Brownian increments (weak and strong convergence).

    Drawn by ``normal_``: on the CPU generator a contiguous float32 buffer (a multiple of 16 entries) costs one
    32-bit MT19937 word per entry (two for float64), turned into Gaussians by Box–Muller in one vectorised
    kernel. Drawing the same words alone (as int64 ``random_``) takes about half its time, and every exact
    transform written as tensor operations over those words (Box–Muller, inverse CDF through ``erfinv``,
    a ziggurat's fast path) costs more than ``normal_`` altogether (``benchmarks/bench_sde.py`` prints the
    words' floor next to the fill), so ``normal_`` stays the fill.
    """

    name = "gaussian"

    def fill(self, out: Tensor, generator: torch.Generator) -> Tensor:
        return out.normal_(generator=generator)


@dataclass(frozen=True)
class RademacherIncrements(NoiseSource):
    """ξ with independent ±1 entries (``rademacher_``): the moments of Brownian increments up to the third,
    not their paths (weak order 1, no strong order)."""

    name = "rademacher"
    weak_only = True

    def fill(self, out: Tensor, generator: torch.Generator) -> Tensor:
        return rademacher_(out, generator)


#: The noise sources by the name a configuration gives them.
SOURCES: dict[str, type[NoiseSource]] = {cls.name: cls for cls in (GaussianIncrements, RademacherIncrements)}
#: Their names, in the order the configuration lists them.
INCREMENTS = tuple(SOURCES)


def increments(name: str) -> NoiseSource:
    """The noise source a configuration names ("gaussian" or "rademacher"); ValueError otherwise."""
    return SOURCES[check_choice("increments", name, INCREMENTS)]()
