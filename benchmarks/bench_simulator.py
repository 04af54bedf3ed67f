"""Simulator throughput against loop baselines, measured in the same run (ratios, not absolute times).

Two sizes from the foundation issue:

* small (the seeds' Monte Carlo regime): N = 64 workers, R = 256 repetitions, d = 20, float64;
  target: the vectorised simulator ≥ 10× the reference loop.
* large: N = 64, R = 32, d = 10⁴, float32; targets: never slower than the loop, and one step within
  10× the time of one copy of the (N, R, d) gradient tensor (the memory-traffic floor).

Baselines:
* ``reference`` — ``simulate_reference``: the plain loop over repetitions and workers, one vector of
  length d at a time (what the tests compare against);
* ``per-worker`` — a loop over the N workers only, each handling its (R, d) slice with the same
  compressor code: the strongest loop one would write by hand.

Usage: python benchmarks/bench_simulator.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from timing import median_seconds

from compsde import algorithms
from compsde.algorithms.schedules import Schedule
from compsde.objectives import Noise, Oracle, problems
from compsde.sim import simulate, simulate_reference


def per_worker_loop(problem, noise, method, schedule, *, workers, repeats, dtype, seed=0):
    """Baseline: Python loop over workers, vectorised over repetitions (plain algorithms only)."""
    p = problem.to(dtype)
    d = p.dim
    gen = torch.Generator().manual_seed(seed)
    x = p.x0().expand(repeats, d).clone()
    mem = torch.zeros(workers, repeats, d, dtype=dtype) if method.error_feedback else None
    comp = method.compressor
    for k in range(schedule.steps):
        z = noise.sample(workers, (repeats,), d, 1, gen, dtype) if noise.active else None
        rnd = comp.draw((1 if comp.shared_randomness else workers, repeats), d, gen, dtype)
        lr = schedule(k)
        total = torch.zeros_like(x)
        for i in range(workers):
            g = p.worker_grads(x, workers)[i]
            if z is not None:
                g = g + z[i]
            r = None if rnd is None else rnd[min(i, rnd.shape[0] - 1)]
            if mem is not None:
                v = mem[i] + lr * g
                m = comp.apply(v, r)
                mem[i] = v - m
            else:
                m = comp.apply(g, r)
            total += m
        direction = total / workers if method.aggregation == "mean" else torch.sign(total)
        x = x - (direction if method.error_feedback else lr * direction)
    return x


def bench(label: str, *, workers: int, repeats: int, dim: int, dtype: torch.dtype, steps: int, ref_steps: int,
          method_specs: list[tuple[str, dict]], reps: int) -> None:
    prob = problems.make("quadratic", dim=dim)
    noise = Noise("gaussian", 1.0)
    copy_src = torch.randn(workers, repeats, dim, dtype=dtype)
    copy_dst = torch.empty_like(copy_src)
    t_copy = median_seconds(lambda: copy_dst.copy_(copy_src), 5)
    t_fresh = median_seconds(lambda: copy_src.clone(), 5)
    print(f"\n== {label}: N={workers}, R={repeats}, d={dim}, {str(dtype).replace('torch.', '')} ==")
    print(f"one copy of the (N, R, d) tensor: {t_copy * 1e3:.2f} ms into a reused buffer, {t_fresh * 1e3:.2f} ms into a fresh one")
    print(f"{'method':<34}{'sim ms/step':>12}{'ref ms/step':>12}{'sim/ref':>9}{'loop ms/step':>14}{'sim/loop':>9}{'step/copy':>11}")
    for name, params in method_specs:
        m = algorithms.make(name, **params)
        oracle = Oracle(prob, noise, workers=workers, dtype=dtype)
        kw = dict(workers=workers, repeats=repeats, dtype=dtype)
        sim = median_seconds(lambda oracle=oracle, m=m: simulate(oracle, m, Schedule("constant", 0.01, steps), repeats=repeats,
                                                                 log_every=steps), reps) / steps
        ref = median_seconds(lambda oracle=oracle, m=m: simulate_reference(oracle, m, Schedule("constant", 0.01, ref_steps),
                                                                           repeats=repeats, log_every=ref_steps), 1) / ref_steps
        loop = median_seconds(lambda m=m, kw=kw: per_worker_loop(prob, noise, m, Schedule("constant", 0.01, steps), **kw),
                              reps) / steps
        print(f"{m.label():<34}{sim * 1e3:>12.3f}{ref * 1e3:>12.2f}{ref / sim:>8.1f}×{loop * 1e3:>14.3f}{loop / sim:>8.1f}×{sim / t_copy:>10.1f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine a second thread makes timings erratic)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    specs = [
        ("dsgd", {}),
        ("dcsgd", {"compressor": "rand-k", "ratio": 0.25}),
        ("dcsgd", {"compressor": "top-k", "ratio": 0.25}),
        ("dcsgd", {"compressor": "natural"}),
        ("dsignsgd", {}),
        ("ef", {"compressor": "top-k", "ratio": 0.25}),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench("small", workers=64, repeats=256, dim=20, dtype=torch.float64, steps=5 if q else 20, ref_steps=1,
          method_specs=specs[:2] if q else specs, reps=3 if q else 5)
    bench("large", workers=64, repeats=32, dim=10_000, dtype=torch.float32, steps=2 if q else 5, ref_steps=1,
          method_specs=specs[:2] if q else specs, reps=2 if q else 3)


if __name__ == "__main__":
    main()
