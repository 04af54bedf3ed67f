"""Simulated workers on networks: seconds per training step's gradients, N = 16 workers, in one run.

Ways to get the N workers' minibatch gradients of one step (B samples each, the same iterate):

* ``simulator``  — ``NetworkOracle.grads`` (what the simulator runs): for models ``LayerGrads`` covers
                   (the MLP: every parameter a Linear layer's) one forward/backward over the N·B samples
                   with each layer's N weight gradients one batched GEMM; else the vmap path below;
* ``vmap``       — one ``torch.func`` call, vmap over workers of grad of functional_call;
* ``loop``       — ``NetworkOracle.loop_grads``: one autograd backward per worker (the reference);
* ``floor``      — one forward/backward over all N·B samples at once giving a single gradient: the
                   compute floor (the same FLOPs, without per-worker weight gradients to write).

Targets: the simulator's path within 1.3× of the floor and never slower than the loop. Each path runs in a process of
its own forked before any of them ran, and its peak memory is the rise of that process's peak resident
set (VmHWM, reset through /proc/self/clear_refs after the fork) over its warm-up and timed calls.

Usage: python benchmarks/bench_networks.py [--quick] [--workers N] [--batch B]
"""

from __future__ import annotations

import argparse
import multiprocessing

import torch
from timing import median_seconds

from compsde.core.streams import Streams
from compsde.objectives import problems


def _rss_peak_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _timed(fn, repeats: int, conn) -> None:
    base = _rss_peak_kb() if _reset_peak() else None
    seconds = median_seconds(fn, repeats)
    conn.send((seconds, (_rss_peak_kb() - base) / 1024 if base is not None else float("nan")))


def measure(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, peak memory rise in MB) of fn() after one warm-up call, in a forked process."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_timed, args=(fn, repeats, send))
    proc.start()
    out = recv.recv()
    proc.join()
    return out


def bench(label: str, net, workers: int, batch: int, repeats: int) -> None:
    o = net.oracle(None, workers=workers, batch=batch, dtype=torch.float32)
    s = o.sample(Streams(0, workers), range(workers), 1)
    x = o.x0().unsqueeze(0)
    xb, yb = o._batches(s, 0, workers)
    flat_x, flat_y = xb.reshape(-1, *xb.shape[3:]), yb.reshape(-1, *yb.shape[3:])
    g = torch.func.grad(o._loss_at)

    paths = {
        f"simulator ({'LayerGrads' if o.layer_grads is not None else 'vmap'})": lambda: o.grads(x, 0, workers, s),
        "vmap": lambda: o._vmap_grads(x, xb, yb),
        "per-worker loop": lambda: o.loop_grads(x, 0, workers, s),
        "floor: one batch of N·B": lambda: g(x[0], flat_x, flat_y),
    }
    res = {k: measure(fn, repeats) for k, fn in paths.items()}  # before any path ran here
    floor, loop = res["floor: one batch of N·B"][0], res["per-worker loop"][0]
    print(f"\n== {label}: d = {o.dim:,}, N = {workers}, B = {batch}, float32 ==")
    print(f"{'path':<26}{'ms/step':>10}{'× floor':>9}{'× loop':>8}{'peak MB':>9}")
    for k, (t, mb) in res.items():
        print(f"{k:<26}{t * 1e3:>10.1f}{t / floor:>9.2f}{t / loop:>8.2f}{mb:>9.1f}")
    ref = paths["per-worker loop"]()
    for k in list(paths)[:2]:
        assert torch.allclose(paths[k]().view_as(ref), ref, rtol=1e-4, atol=1e-6), k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 10
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    bench("MLP 784-256-10 on MNIST", problems.make("mlp", dataset="mnist", hidden=[256]), args.workers, args.batch, reps)
    bench("ViT (patch 7, width 64, depth 2) on MNIST",
          problems.make("vit", dataset="mnist", patch=7, width=64, depth=2, heads=4), args.workers, args.batch, reps)


if __name__ == "__main__":
    main()
