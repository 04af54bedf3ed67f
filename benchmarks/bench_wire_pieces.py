"""Where one DDP-hook bucket exchange spends its time, piece by piece, without a network.

For each compressor, at n gradient values (float32) and N ranks simulated in one process, the pieces of
``compsde.advise.cost.measure_codec`` (the cost model's own measurement): the workers' half (worker
transform, error feedback, encode: ``Algorithm.workers_step`` as the hook calls it; DDP's copy of the
gradient into the bucket is not in it), the packing into the wire format, the replayed draws, and the
receiver's Σ_i decode + the mean (``Wire``'s decode, with ``finish``); and, for scale, one copy of the
bucket into a reused buffer (one pass). Medians over ``--repeats`` calls, one torch thread, in CPU time of the calling thread
(``time.thread_time``: on a shared machine wall time mostly measures the others).

Usage: python benchmarks/bench_wire_pieces.py [--n 12600000] [--workers 2] [--only top-k,sign]
"""

from __future__ import annotations

import argparse

import torch

from compsde import algorithms
from compsde.advise.cost import cpu_median_seconds, measure_codec

ROWS = [("sign", {"compressor": "sign"}, False), ("scaled-sign", {"compressor": "scaled-sign"}, False),
        ("rand-k 1%", {"compressor": "rand-k", "ratio": 0.01}, False),
        ("top-k 1%", {"compressor": "top-k", "ratio": 0.01}, False),
        ("top-k 1% + EF", {"compressor": "top-k", "ratio": 0.01}, True),
        ("qsgd 4", {"compressor": "qsgd", "levels": 4}, False), ("natural", {"compressor": "natural"}, False),
        ("natural-dithering 4", {"compressor": "natural-dithering", "levels": 4}, False),
        ("top-k+natural 1%", {"compressor": "top-k+natural", "ratio": 0.01}, False)]


def profile_row(label: str, kw: dict, ef: bool, n: int, workers: int, repeats: int) -> str:
    """One compressor's pieces (ms) as a table row."""
    kw = dict(kw)
    algo = algorithms.make("ef" if ef else "dcsgd", kw.pop("compressor"), **kw)
    c = measure_codec(algo, n, workers, repeats=repeats)
    g, buf = torch.randn(n), torch.empty(n)
    one = cpu_median_seconds(lambda: buf.copy_(g), repeats)
    tot = c.encode + c.pack + c.draws + c.decode
    return (f"{label:22s} {c.encode * 1e3:8.1f} {c.pack * 1e3:6.1f} {c.draws * 1e3:6.1f} {c.decode * 1e3:11.1f} "
            f"{tot * 1e3:7.1f} {one * 1e3:9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12_600_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"n = {a.n}, N = {a.workers}")
    print(f"{'compressor':22s} {'workers':>8s} {'pack':>6s} {'draws':>6s} {'decode+mean':>11s} {'total':>7s} {'one pass':>9s}  ms")
    for label, kw, ef in ROWS:
        if a.only and not any(s in label for s in a.only.split(",")):
            continue
        print(profile_row(label, kw, ef, a.n, a.workers, a.repeats), flush=True)


if __name__ == "__main__":
    main()
