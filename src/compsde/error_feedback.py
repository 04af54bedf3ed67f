"""Error feedback (EF) around any compressor: the worker keeps what compression dropped and resends it.

Karimireddy et al. (2019), Stich & Karimireddy (2019); seed 003:

    p_i = e_i + η g_i,   m_i = C_i(p_i),   e_i ← p_i − m_i,   x ← x − (1/N) Σ_i m_i.

The memory e_i stays on its worker; only m_i is communicated. With EF, biased compressors such as
Top-k converge where plain compressed GD diverges (the Top-1 counter-example).
"""

from __future__ import annotations

from torch import Tensor

from compsde.compressors import Compressor


def ef_step(compressor: Compressor, memory: Tensor, scaled_grads: Tensor, rnd: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """One EF round for a stack of workers: returns (compressed input p, messages m, new memory e),
    all of the shape of ``memory``.

    ``scaled_grads`` is η g (the step already multiplied in, as EF compresses the step, not the gradient).
    """
    p = memory + scaled_grads
    m = compressor.apply(p, rnd)
    return p, m, p - m
