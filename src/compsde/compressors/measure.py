"""Monte Carlo measurement of a compressor's constants, for comparison with what it declares.

For a fixed family of test vectors x (``reference_vectors``) and ``samples`` independent draws of C(x),
estimate E C(x), E‖C(x)‖², E‖C(x) − x‖², and report the worst case over the vectors of

* bias      max ‖E C(x) − x‖/‖x‖ (with its standard error sqrt(tr Cov C(x) / n)/‖x‖ — for an unbiased
            compressor the estimate is pure noise, of the order of that standard error);
* ω̂         max E‖C(x) − x‖²/‖x‖² (the variance of class U, meaningful for unbiased compressors);
* δ̂         from the same maximum r̂: r̂ = 1 − 1/δ̂, i.e. δ̂ = 1/(1 − r̂) (∞ if r̂ ≥ 1; class B3);
* α̂ (B1)    min E‖C(x)‖²/‖x‖²;
* β̂ (B1)    max E‖C(x)‖²/⟨E C(x), x⟩;
* γ̂ (B2)    min ⟨E C(x), x⟩/‖x‖²;
* β̂ (B2)    max E‖C(x)‖²/⟨E C(x), x⟩ (the same quantity as β̂ of B1: both classes bound E‖C‖² by
            β⟨E C, x⟩; reported twice to sit next to each declared β).

A declared constant is a bound over *all* x, a measured one a worst case over a few vectors, so
"measured inside declared" is the test (measured ≤ declared for ω, δ, β; ≥ for α, γ), up to
``TOL_SE`` standard errors of Monte Carlo noise; equality is expected only where a test vector
attains the bound (one-hot or constant vectors for the sparsifiers and scaled sign, ±(4/3)·2^j
entries for natural compression).

``compressor_table`` / ``format_table`` back the command ``compsde compressors --dim D``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from compsde.compressors import make, param_names
from compsde.compressors import names as registered_names  # `names` is a parameter below
from compsde.compressors.base import Compressor
from compsde.core.checks import MAX_SEED, check_seed

__all__ = ["DEFAULT_EXTRA", "TOL_SE", "compare", "compressor_table", "default_compressor", "format_table", "measure", "reference_vectors"]

#: Measured constants may cross the declared ones by this many standard errors before a row is
#: flagged (one-sided normal tail 3e-5 per comparison; there are ~10 per row).
TOL_SE = 4.0
#: Compositions listed by default after the registered names.
DEFAULT_EXTRA = ["top-k+natural"]
#: The most compressed numbers ``compressor_table`` takes on (samples × vectors × d × compressors).
MAX_WORK = 2e10
#: Keep one chunk of samples × d below this many elements (memory).
_CHUNK_ELEMS = 1 << 20  # 8 MB of float64: below glibc's mmap threshold, so buffers get reused


def reference_vectors(d: int, seed: int = 0) -> dict[str, Tensor]:
    """A fixed family of float64 test vectors of length d, generated from ``seed`` only."""
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"dim must be an integer ≥ 1, got {d!r}")
    g = torch.Generator().manual_seed(check_seed("seed", seed))
    f64 = torch.float64

    def randn() -> Tensor:
        return torch.randn(d, generator=g, dtype=f64)

    def signs() -> Tensor:
        return torch.randint(0, 2, (d,), generator=g).to(f64) * 2 - 1

    out: dict[str, Tensor] = {}
    out["gaussian"] = randn()
    sparse = torch.zeros(d, dtype=f64)
    pos = torch.randperm(d, generator=g)[: max(1, d // 20)]
    sparse[pos] = randn()[: pos.numel()]
    out["sparse"] = sparse
    one_hot = torch.zeros(d, dtype=f64)
    one_hot[int(torch.randint(d, (1,), generator=g))] = 1.0
    out["one-hot"] = one_hot
    out["constant"] = torch.ones(d, dtype=f64)
    out["alternating"] = signs()  # constant magnitude, mixed signs: ties everywhere for top-k
    u = torch.rand(d, generator=g, dtype=f64)
    out["cauchy"] = torch.tan(math.pi * (u - 0.5))  # heavy tails
    out["lognormal"] = signs() * torch.exp(2.0 * randn())  # magnitudes over several decades
    spike = 0.01 * randn()
    spike[0] = 1.0
    out["spike+noise"] = spike
    out["ramp"] = torch.arange(1, d + 1, dtype=f64)
    # ±(4/3)·2^j: where natural compression's variance ratio 1/8 is attained.
    j = torch.randint(-4, 5, (d,), generator=g).to(f64)
    out["pow2*4/3"] = signs() * (4.0 / 3.0) * torch.pow(2.0, j)
    return out


def _stats(c: Compressor, x: Tensor, samples: int, gen: torch.Generator) -> dict[str, float]:
    """Per-vector Monte Carlo estimates, as ratios to ‖x‖² (or ‖x‖), with standard errors."""
    d = x.shape[-1]
    n = samples if c.randomized else 1
    chunk = max(1, min(n, _CHUNK_ELEMS // d))
    sum_c = torch.zeros(d, dtype=torch.float64)
    err, sq, ip = [], [], []
    done = 0
    while done < n:
        m = min(chunk, n - done)
        # Batch shape (1, m): the samples are repetitions of one worker, so a compressor whose draw
        # is shared across workers (the leading axis) still gets independent samples.
        y = c(x.expand(1, m, d), gen)[0].to(torch.float64)
        sum_c += y.sum(0)
        # Directly rather than as ‖C‖² − 2⟨C, x⟩ + ‖x‖², whose cancellation would report the
        # identity's error as ~1e-16 instead of 0; the chunk keeps the temporary small.
        err.append(torch.linalg.vector_norm(y - x, dim=-1).square())
        sq.append(torch.linalg.vector_norm(y, dim=-1).square())
        ip.append(y @ x)
        done += m
    nx2 = float(x.square().sum())
    e, s, p = torch.cat(err), torch.cat(sq), torch.cat(ip)
    mean = sum_c / n

    def se(v: Tensor) -> float:
        return float(v.std() / math.sqrt(n)) if n > 1 else 0.0

    # tr Cov C(x) = E‖C‖² − ‖E C‖², unbiased estimate with the n/(n − 1) factor.
    tr_cov = max(0.0, (float(s.mean()) - float(mean.square().sum())) * n / (n - 1)) if n > 1 else 0.0
    return {
        "bias": float((mean - x).norm()) / math.sqrt(nx2),
        "bias_se": math.sqrt(tr_cov / n / nx2),
        "err": float(e.mean()) / nx2,
        "err_se": se(e) / nx2,
        "sq": float(s.mean()) / nx2,
        "sq_se": se(s) / nx2,
        "ip": float(p.mean()) / nx2,
        "ip_se": se(p) / nx2,
    }


def measure(c: Compressor, dim: int, samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Worst-case Monte Carlo constants of ``c`` over ``reference_vectors(dim, seed)`` (see module doc).

    Returns a dict with, for each measured quantity, its value, standard error (``*_se``) and the
    test vector attaining the worst case (``*_at``).
    """
    if not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer ≥ 2, got {samples!r}")
    gen = torch.Generator().manual_seed((check_seed("seed", seed) + 1) % (MAX_SEED + 1))
    per = {name: _stats(c, x, samples, gen) for name, x in reference_vectors(dim, seed).items()}

    def worst(key: str, sign: float) -> tuple[float, float, str]:
        at = max(per, key=lambda v: sign * per[v][key])
        return per[at][key], per[at][key + "_se"], at

    def beta(v: str) -> float:
        q = per[v]
        return q["sq"] / q["ip"] if q["ip"] > 0 else math.inf

    def beta_se(v: str) -> float:
        q = per[v]
        if not q["ip"] > 0:
            return 0.0
        # Delta method, ignoring the (usually positive) covariance of the two means: conservative.
        return beta(v) * math.hypot(q["sq_se"] / q["sq"] if q["sq"] else 0.0, q["ip_se"] / q["ip"])

    bias, bias_se, bias_at = worst("bias", 1.0)
    err, err_se, err_at = worst("err", 1.0)
    alpha, alpha_se, alpha_at = worst("sq", -1.0)
    gamma, gamma_se, gamma_at = worst("ip", -1.0)
    beta_at = max(per, key=beta)
    b, b_se = beta(beta_at), beta_se(beta_at)
    # δ̂ = 1/(1 − r̂); its standard error by the delta method: r_se/(1 − r̂)².
    delta = 1.0 / (1.0 - err) if err < 1.0 else math.inf
    delta_se = err_se / (1.0 - err) ** 2 if err < 1.0 else 0.0
    return {
        "bias": bias, "bias_se": bias_se, "bias_at": bias_at,
        "omega": err, "omega_se": err_se, "omega_at": err_at,
        "delta": delta, "delta_se": delta_se, "delta_at": err_at,
        "alpha": alpha, "alpha_se": alpha_se, "alpha_at": alpha_at,
        "beta": b, "beta_se": b_se, "beta_at": beta_at,
        "gamma": gamma, "gamma_se": gamma_se, "gamma_at": gamma_at,
    }  # fmt: skip


def default_compressor(name: str, dim: int) -> Compressor:
    """``name`` (possibly a composition) with the table's defaults: ratio 0.1 for sparsifiers,
    levels 4 for quantizers."""
    accepted = {p for part in name.split("+") for p in param_names(part.strip())}
    defaults = {"ratio": 0.1, "levels": 4}
    return make(name, **{k: v for k, v in defaults.items() if k in accepted})


def _check(row: dict[str, Any]) -> list[str]:
    """Which declared constants the measurement contradicts (beyond TOL_SE standard errors)."""
    bad = []
    t = TOL_SE
    if row["unbiased"] and row["bias"] > t * row["bias_se"] + 1e-12:
        bad.append("bias")
    if row["omega"] is not None and row["omega_hat"] > row["omega"] + t * row["omega_hat_se"] + 1e-9:
        bad.append("omega")
    if row["delta"] is not None:
        # Compare on the error scale r = 1 − 1/δ, where the standard error is known.
        if row["omega_hat"] > 1.0 - 1.0 / row["delta"] + t * row["omega_hat_se"] + 1e-9:
            bad.append("delta")
    for cls, lo_key, beta_key in (("b1", "alpha", "beta1"), ("b2", "gamma", "beta2")):
        if row[cls] is None:
            continue
        lo, beta = row[cls]
        if row[lo_key + "_hat"] < lo - t * row[lo_key + "_hat_se"] - 1e-9:
            bad.append(lo_key)
        if row[beta_key + "_hat"] > beta + t * row[beta_key + "_hat_se"] + 1e-9:
            bad.append(beta_key)
    return bad


def compressor_table(dim: int, samples: int = 2000, seed: int = 0, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Declared vs measured constants at dimension ``dim`` for each compressor in ``names``.

    ``names`` defaults to every registered compressor plus ``DEFAULT_EXTRA`` (top-k+natural), each
    built by ``default_compressor``. One dict per compressor: ``name``, ``params``, ``bits``,
    ``bits_per_coord``, declared ``unbiased``/``omega``/``delta``/``b1``/``b2`` and the measured
    ``bias``, ``omega_hat``, ``delta_hat``, ``alpha_hat``, ``beta1_hat``, ``gamma_hat``,
    ``beta2_hat`` (each with ``*_se``), plus ``violations`` (declared constants the measurement
    contradicts) and ``ok``.
    """
    from compsde.core.checks import check_int
    from compsde.core.tensors import check_memory

    check_int("dim", dim, min=1)
    check_int("samples", samples, min=2)
    check_seed("seed", seed)
    todo = list(names) if names is not None else [*registered_names(), *DEFAULT_EXTRA]
    n_vectors = len(reference_vectors(1, seed))
    check_memory(8 * dim * (n_vectors + 8) + 8 * _CHUNK_ELEMS * 4, f"measuring compressors at dim = {dim}", "reduce --dim")
    # Each compressor draws `samples` compressions of every reference vector: refuse what would take
    # hours (about 1e8 numbers per second here, for the cheap compressors).
    work = samples * n_vectors * dim * len(todo)
    if work > MAX_WORK:
        raise ValueError(f"measuring {len(todo)} compressor(s) at dim = {dim} with {samples} samples means "
                         f"{work:.3g} compressed numbers, more than {MAX_WORK:.0e} (hours here): reduce --dim or --samples")
    return [compare(default_compressor(name, dim), dim, samples, seed) for name in todo]


def compare(c: Compressor, dim: int, samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One row of ``compressor_table`` for an already built compressor ``c``."""
    m = measure(c, dim, samples, seed)
    row: dict[str, Any] = {
        "name": c.name,
        "params": c.params(),
        "bits": c.bits(dim),
        "bits_per_coord": c.bits(dim) / dim,
        "unbiased": c.unbiased,
        "omega": c.omega(dim) if c.unbiased else None,
        "delta": c.delta(dim),
        "b1": c.b1(dim),
        "b2": c.b2(dim),
        "bias": m["bias"],
        "bias_se": m["bias_se"],
        "omega_hat": m["omega"],
        "omega_hat_se": m["omega_se"],
        "delta_hat": m["delta"],
        "delta_hat_se": m["delta_se"],
        "alpha_hat": m["alpha"],
        "alpha_hat_se": m["alpha_se"],
        "beta1_hat": m["beta"],
        "beta1_hat_se": m["beta_se"],
        "gamma_hat": m["gamma"],
        "gamma_hat_se": m["gamma_se"],
        "beta2_hat": m["beta"],
        "beta2_hat_se": m["beta_se"],
        "worst_vectors": {k: m[k + "_at"] for k in ("bias", "omega", "alpha", "beta", "gamma")},
    }
    row["violations"] = _check(row)
    row["ok"] = not row["violations"]
    return row


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "inf"
    return f"{v:.4g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of ``compressor_table`` rows: declared | measured for each constant."""
    head = ["compressor", "bits/coord", "unbiased", "bias (±se)", "ω decl | meas", "δ decl | meas",
            "B1 α decl | meas", "B1 β decl | meas", "B2 γ decl | meas", "B2 β decl | meas", "check"]  # fmt: skip
    table = [head]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        b1 = r["b1"] or (None, None)
        b2 = r["b2"] or (None, None)
        table.append([
            f"{r['name']}({params})",
            f"{r['bits_per_coord']:.4g}",
            "yes" if r["unbiased"] else "no",
            f"{r['bias']:.2g} (±{r['bias_se']:.1g})",
            f"{_fmt(r['omega'])} | {_fmt(r['omega_hat'])}",
            f"{_fmt(r['delta'])} | {_fmt(r['delta_hat'])}",
            f"{_fmt(b1[0])} | {_fmt(r['alpha_hat'])}",
            f"{_fmt(b1[1])} | {_fmt(r['beta1_hat'])}",
            f"{_fmt(b2[0])} | {_fmt(r['gamma_hat'])}",
            f"{_fmt(b2[1])} | {_fmt(r['beta2_hat'])}",
            "ok" if r["ok"] else "VIOLATES " + ",".join(r["violations"]),
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = (
        "measured = worst case over the test vectors (gaussian, sparse, one-hot, constant, alternating, cauchy,\n"
        "lognormal, spike+noise, ramp, pow2*4/3); ω/δ measured from max E‖C(x)−x‖²/‖x‖² for every compressor;\n"
        f"check: declared bounds hold within {TOL_SE:g} standard errors."
    )
    return "\n".join(lines) + "\n" + note
