"""Euler–Maruyama throughput (paths × steps per second) against torchsde and a bare loop, in one run.

Setting from the SDE issue: M = 10⁴ paths, d = 100, diagonal noise (DSGD's SDE on a diagonal
quadratic: drift −H x, constant diagonal diffusion), the same step dt for every contender:

* ``compsde``      ``compsde.sde.integrators.integrate`` of the model ``compsde.sde.from_algorithm`` builds
                    for the oracle (``compsde.objectives.Oracle``: the problem with N = 4 workers'
                    Gaussian noise) and ``compsde.algorithms.make("dsgd")`` — the closed-form DSGD SDE —
                    with Gaussian and with Rademacher increments;
* ``torchsde``     ``torchsde.sdeint(method="euler")`` on the same SDE (its default Brownian interval);
* ``bare loop``    x ← x − dt·h⊙x + c·ξ_k with ξ pre-drawn before the clock starts (the practical
                    limit: no model call, no random numbers inside the loop);
* ``normal_ fill``  a step's Gaussians alone: ``normal_`` on the (M, d) buffer, as ``GaussianIncrements`` draws
                    them (one 32-bit MT19937 word per float32 Gaussian, two per float64 one, transformed by
                    Box–Muller in torch's fused kernel);
* ``random words``  the floor under it: the same generator words drawn alone, as int64 words (``random_`` on
                    int64 consumes two 32-bit outputs per word, the cheapest way to pull words through torch's
                    generator; M·d/2 of them for float32, M·d for float64). A Gaussian fill that uses as many
                    words cannot cost less.

Targets: ≥ 10× torchsde and within 2× of the bare loop. The last line splits the Gaussian step into the bare
loop, the words and their transform, to show what stands between it and the 2× target.

Second table, the single-node optimizers' SDEs (SignSGD, RMSprop, Adam with its state (x, m, v, ι), USAM,
SEG on a game with the modified equation's drift): one integrator step of M paths against one step of
the optimizer itself on R = M repetitions (``compsde.sim.simulate``, the same oracle, d = 1,000).
Target: ≤ 2× the optimizer's step.

Usage: python benchmarks/bench_sde.py [--quick]
"""

from __future__ import annotations

import argparse
import math
from functools import partial

import torch
from timing import median_seconds

from compsde import algorithms
from compsde.objectives import Noise, Oracle, problems
from compsde.sde import from_algorithm
from compsde.sde.integrators import integrate
from compsde.sde.noise import increments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine a second thread makes timings erratic)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    m_paths, d = 10_000, 100
    steps = 20 if args.quick else 100
    reps = 2 if args.quick else 3
    eta = dt = 0.01
    prob = problems.make("quadratic", dim=d)
    oracle = Oracle(prob, Noise("gaussian", 1.0), workers=4, batch=1)
    model = from_algorithm(oracle, algorithms.make("dsgd"), lr=eta)
    x0 = prob.x0().to(dtype).expand(m_paths, d).contiguous()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; M = {m_paths} paths, d = {d}, {steps} steps, {args.dtype}")

    results: dict[str, float] = {}
    for inc in ("gaussian", "rademacher"):
        source = increments(inc)
        results[f"compsde EM ({inc})"] = median_seconds(
            lambda source=source: integrate(model, x0, t1=steps * dt, dt=dt, generator=gen, noise=source), reps)

    h = prob.eigs.to(dtype)
    c = math.sqrt(eta * dt) * model.std
    xi = torch.randn(steps, m_paths, d, dtype=dtype, generator=gen)

    def bare() -> None:
        x = x0.clone()
        for k in range(steps):
            x.sub_(x * h, alpha=dt).add_(xi[k], alpha=c)

    results["bare loop (pre-drawn noise)"] = median_seconds(bare, reps)

    gaussian, buf = increments("gaussian"), torch.empty(m_paths, d, dtype=dtype)
    words = torch.empty(m_paths * d * (2 if dtype == torch.float64 else 1) // 2, dtype=torch.int64)

    def fills() -> None:
        for _ in range(steps):
            gaussian.fill(buf, gen)

    def floor() -> None:
        for _ in range(steps):
            words.random_(generator=gen)

    results["normal_ fill alone"] = median_seconds(fills, reps)
    results["random words alone (floor)"] = median_seconds(floor, reps)

    try:
        import torchsde

        class TS(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"

            def f(self, t, y):
                return -(y * h)

            def g(self, t, y):
                return torch.full_like(y, math.sqrt(eta) * model.std)

        ts = torch.tensor([0.0, steps * dt], dtype=dtype)
        results["torchsde sdeint(euler)"] = median_seconds(lambda: torchsde.sdeint(TS(), x0, ts, method="euler", dt=dt), 1)
    except ImportError:
        print("torchsde not installed: skipped")

    base = results["compsde EM (gaussian)"]
    bare_t = results["bare loop (pre-drawn noise)"]
    print(f"{'contender':<30}{'ms/step':>10}{'paths·steps/s':>16}{'vs compsde(gauss)':>19}")
    for name, t in results.items():
        print(f"{name:<30}{t / steps * 1e3:>10.3f}{m_paths * steps / t:>16.3g}{t / base:>18.2f}×")
    if "torchsde sdeint(euler)" in results:
        for inc in ("gaussian", "rademacher"):
            ours = results[f"compsde EM ({inc})"]
            print(f"compsde EM ({inc}): {results['torchsde sdeint(euler)'] / ours:.1f}× faster than torchsde (target ≥ 10×), "
                  f"{ours / bare_t:.2f}× the bare loop (target ≤ 2×)")
    fill_t, floor_t = results["normal_ fill alone"], results["random words alone (floor)"]
    print(f"gaussian step = bare loop {bare_t / steps * 1e3:.2f} + Gaussians {fill_t / steps * 1e3:.2f} "
          f"(of which random words {floor_t / steps * 1e3:.2f}) + rest {(base - bare_t - fill_t) / steps * 1e3:.2f} ms; "
          f"with the words alone as noise: {(bare_t + floor_t) / bare_t:.2f}× the bare loop")
    optimizer_table(steps, reps, dtype)


def optimizer_table(steps: int, reps: int, dtype: torch.dtype) -> None:
    """SDE step vs optimizer step for the single-node optimizers (see module doc)."""
    from compsde.algorithms.schedules import Schedule
    from compsde.sde.tracking import simulate_sde
    from compsde.sim import simulate

    m_paths, d = 1_000, 1_000
    quad, game = problems.make("quadratic", dim=d), problems.make("bilinear-game", player_dim=d // 2)
    print(f"\nsingle-node optimizers: M = R = {m_paths}, d = {d}, {steps} steps; target: SDE ≤ 2× the optimizer")
    print(f"{'method':<10}{'optimizer ms/step':>19}{'SDE ms/step':>13}{'SDE / optimizer':>17}")
    for name in ("signsgd", "rmsprop", "adam", "usam", "seg"):
        oracle = Oracle(game if name == "seg" else quad, Noise("gaussian", 1.0), workers=1, dtype=dtype)
        algo = algorithms.make(name)
        sched = Schedule("constant", 0.01, steps)
        opt = median_seconds(partial(simulate, oracle, algo, sched, repeats=m_paths, log_every=steps), reps)
        sde = median_seconds(partial(simulate_sde, oracle, algo, sched, paths=m_paths, log_every=steps), reps)
        print(f"{name:<10}{opt / steps * 1e3:>19.3f}{sde / steps * 1e3:>13.3f}{sde / opt:>16.2f}×")


if __name__ == "__main__":
    main()
