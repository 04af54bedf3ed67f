"""SignSGD: x ← x − η sign(ḡ), sign(0) = +1 (Bernstein, Wang, Azizzadenesheli, Anandkumar 2018).

With N workers it steps on the sign of their mean gradient (data parallel). Its SDE (Compagnoni et al.
2024, docs/theory.md [paper 3], §9.2): drift E sign(ḡ), diffusion diag(1 − E sign(ḡ)²) (``SignSGDSDE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from compsde.algorithms.optimizer import Optimizer
from compsde.compressors.signs import sign_pm1
from compsde.optim import sign
from compsde.sde.models import SignSGDSDE


def _plain(g: Tensor, mem: dict[str, Any], x: Tensor, h: Mapping[str, Any]) -> Tensor:
    return sign_pm1(g)


SIGNSGD = Optimizer("signsgd", "SignSGD", "x ← x − η sign(ḡ)", server=lambda h: sign(), plain=_plain, sde=SignSGDSDE)
