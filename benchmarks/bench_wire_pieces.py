"""Where one DDP-hook bucket exchange spends its time, piece by piece, without a network.

For each compressor, at n gradient values (float32) and N ranks simulated in one process: the
workers' half (worker transform, error feedback, encode: ``Algorithm.workers_step`` as the hook calls
it), the packing into the wire format, the replayed draws, and the receiver's Σ_i decode + the mean
(``Wire``'s decode, with ``finish``) written into the bucket; the floor is one copy of the bucket
into a reused buffer (one pass). Medians over ``--repeats`` calls, one torch thread, in CPU time of
the calling thread (``time.thread_time``: on a shared machine wall time mostly measures the others). The
bucket's copy of each rank's gradient (one pass) is inside the workers' column.

Usage: python benchmarks/bench_wire_pieces.py [--n 12600000] [--workers 2] [--only top-k,sign]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import timing
import torch

from compsde import algorithms, compressors
from compsde.compressors import Payload
from compsde.compressors.wire import Layout, decode_sum
from compsde.core.streams import Streams
from compsde.distributed.collectives import finish_direction

#: CPU time of the calling thread (module doc).
median_seconds = partial(timing.median_seconds, clock=time.thread_time)

ROWS = [("sign", {"compressor": "sign"}, False), ("scaled-sign", {"compressor": "scaled-sign"}, False),
        ("rand-k 1%", {"compressor": "rand-k", "ratio": 0.01}, False),
        ("top-k 1%", {"compressor": "top-k", "ratio": 0.01}, False),
        ("top-k 1% + EF", {"compressor": "top-k", "ratio": 0.01}, True),
        ("qsgd 4", {"compressor": "qsgd", "levels": 4}, False), ("natural", {"compressor": "natural"}, False),
        ("natural-dithering 4", {"compressor": "natural-dithering", "levels": 4}, False),
        ("top-k+natural 1%", {"compressor": "top-k+natural", "ratio": 0.01}, False)]


def profile_row(label: str, kw: dict, ef: bool, grads: list[torch.Tensor], bucket: torch.Tensor, repeats: int) -> str:
    """One compressor's pieces (ms) as a table row."""
    n, N = bucket.numel(), len(grads)
    kw = dict(kw)
    comp = compressors.make(kw.pop("compressor"), **kw)
    algo = algorithms.make("ef" if ef else "dcsgd", comp)
    streams = Streams(0, N, noise=[], compressor=range(N))
    layout = Layout(comp.fields(n, torch.float32), 1, n, torch.float32)
    recv = torch.empty(N, layout.nbytes, dtype=torch.uint8)
    states = [algo.init(torch.zeros(1, n), 1) for _ in range(N)]
    payloads: list = [None] * N
    rnds: list = [None] * N

    def workers(j: int) -> None:
        rnd = algo.draw(streams, [j], 1, n, torch.float32)
        bucket.copy_(grads[j])  # the hook's bucket (its own copy: not timed separately)
        st = states[j]
        out = algo.workers_step(bucket.view(1, 1, n), {"worker": st["worker"], "ef": st["ef"]}, None, 1.0, rnd,
                                encode=True, messages=False, reuse_memory=True)
        st["worker"], st["ef"] = out.state["worker"], out.state["ef"]
        assert out.payload is not None
        payloads[j] = {k: v[0] for k, v in out.payload.fields.items()}
        rnds[j] = None if rnd is None else rnd[0]

    def pack() -> None:
        for j in range(N):
            layout.pack(Payload(payloads[j], n, torch.float32), out=recv[j])

    def draws() -> None:
        for j in range(1, N):
            if comp.randomized and comp.decode_needs_draw(n):
                algo.draw(streams, [j], 1, n, torch.float32)

    def receive() -> None:
        finish_direction(algo, N, None, lambda fin: decode_sum(comp, layout, recv, rnds, out=bucket.view(1, n),
                                                                finish=fin))

    t_w = median_seconds(lambda: [workers(j) for j in range(N)], repeats) / N
    t_p = median_seconds(pack, repeats) / N
    t_d = median_seconds(draws, repeats)
    t_r = median_seconds(receive, repeats)
    tot = t_w + t_p + t_d + t_r
    return f"{label:22s} {t_w * 1e3:8.1f} {t_p * 1e3:6.1f} {t_d * 1e3:6.1f} {t_r * 1e3:11.1f} {tot * 1e3:7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12_600_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    n, N = a.n, a.workers
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(n, generator=g) * 1e-3 for _ in range(N)]
    bucket, spare = torch.empty(n), torch.empty(n)
    copy = median_seconds(lambda: spare.copy_(grads[0]), a.repeats)
    print(f"n = {n}, N = {N}; one pass (copy into a reused buffer): {copy * 1e3:.1f} ms")
    print(f"{'compressor':22s} {'workers':>8s} {'pack':>6s} {'draws':>6s} {'decode+mean':>11s} {'total':>7s}  ms")
    for label, kw, ef in ROWS:
        if a.only and not any(s in label for s in a.only.split(",")):
            continue
        print(profile_row(label, kw, ef, grads, bucket, a.repeats), flush=True)

if __name__ == "__main__":
    main()
