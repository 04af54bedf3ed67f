"""One compressed communication step on real gloo process groups: time and bytes, per compressor.

    python benchmarks/bench_distributed.py                   # d = 10⁷, 2 and 4 processes
    python benchmarks/bench_distributed.py --dim 1000000 --worlds 2 --repeats 5
    python benchmarks/bench_distributed.py --json out.json   # also write the numbers

For each world size N the script starts N local gloo processes (``compsde.distributed.launch.spawn``:
FileStore rendezvous, loopback, one thread per process). Every rank holds its own float32 gradient
of length d and runs, for each path, ``--repeats`` timed steps (after 2 warm-up steps), each split
into

* compress:    the codec's ``encode`` (own compressor draw included) — for fp32 all-reduce the copy
               into the send buffer;
* communicate: the collective: ``all_reduce`` for summable payloads, ``all_gather_single`` of the
               packed byte buffer otherwise;
* decompress + aggregate: decoding the N payloads (replaying the other ranks' rand-k draws) and
               the mean (or majority vote) into a reused d-length buffer.

A barrier precedes every step. Reported per path: the median over steps of the slowest rank's step
time, the medians of the three phases (mean over ranks), the bytes one rank hands to the collective,
the information-theoretic minimum of the message (below) and their ratio. The reference "copy" is
``buf.copy_(x)`` of one d-length float32 tensor into a reused buffer.

Information-theoretic minimum (log₂ of the number of distinct messages of the format, i.e. the
bits of an optimal fixed code; not the entropy of the data): fp32 / identity 32d; sign d;
scaled-sign d + 32; rand-k 32k (indices replayed or shared: no index bits); top-k 32k + log₂ C(d, k)
(values + which k-subset); natural d·log₂ 511 (±2^e for 255 non-zero exponent codes, or 0);
qsgd / natural-dithering with s levels 32 + d·log₂(2s + 1) (a sign only for non-zero levels);
top-k+natural log₂ C(d, k) + k·log₂ 511.

Memory: as ``bench_compressors.py``, glibc is told to keep freed memory (steady-state training loop);
the send/receive and aggregate buffers are reused across steps. With 4 processes on this 2-core
machine the ranks share cores (oversubscribed): world-4 timings measure contention as much as
communication.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PATHS = [
    # (label, compressor name, params, aggregation)
    ("fp32 all-reduce", None, {}, "mean"),
    ("sign (mean)", "sign", {}, "mean"),
    ("sign (majority vote)", "sign", {}, "majority"),
    ("scaled-sign", "scaled-sign", {}, "mean"),
    ("rand-k 1% (replayed indices)", "rand-k", {"ratio": 0.01}, "mean"),
    ("rand-k 1% shared (all-reduce)", "rand-k", {"ratio": 0.01, "shared": True}, "mean"),
    ("top-k 1%", "top-k", {"ratio": 0.01}, "mean"),
    ("natural", "natural", {}, "mean"),
    ("qsgd s=4", "qsgd", {"levels": 4}, "mean"),
    ("natural-dithering s=8", "natural-dithering", {"levels": 8}, "mean"),
    ("top-k 1% + natural", "top-k+natural", {"ratio": 0.01}, "mean"),
]


def log2_binom(d: int, k: int) -> float:
    return (math.lgamma(d + 1) - math.lgamma(k + 1) - math.lgamma(d - k + 1)) / math.log(2)


def min_bits(name: str | None, params: dict, d: int) -> float:
    """The information-theoretic minimum of one message (see module doc)."""
    from compsde.compressors import make

    if name in (None, "identity"):
        return 32.0 * d
    c = make(name, **params)
    k = c.support(d) if name.split("+")[0] in ("rand-k", "top-k") else d
    nat = math.log2(511)
    return {
        "sign": float(d),
        "scaled-sign": d + 32.0,
        "rand-k": 32.0 * k,
        "top-k": 32.0 * k + log2_binom(d, k),
        "natural": d * nat,
        "qsgd": 32.0 + d * math.log2(2 * params.get("levels", 4) + 1),
        "natural-dithering": 32.0 + d * math.log2(2 * params.get("levels", 4) + 1),
        "top-k+natural": log2_binom(d, k) + k * nat,
    }[name]


# ---- one rank --------------------------------------------------------------------------------------


def child(d: int, repeats: int, out_path: str) -> None:
    import torch.distributed as dist

    from bench_compressors import keep_freed_memory
    from compsde.compressors import make
    from compsde.distributed.collectives import all_gather_bytes
    from compsde.distributed.launch import init_from_env
    from compsde.distributed.wire import Layout, codec_for
    from compsde.streams import compressor_generator, shared_generator

    keep_freed_memory()
    torch.set_num_threads(1)
    ctx = init_from_env(timeout=300.0)
    rank, world = ctx.rank, ctx.world
    x = torch.randn(d, generator=torch.Generator().manual_seed(rank)).view(1, d)
    agg = torch.empty(1, d)
    copy_buf = torch.empty(1, d)

    def make_step(name: str | None, params: dict, how: str):
        """(one timed step → (compress, communicate, aggregate) seconds, bytes handed to the collective)."""
        if name is None:
            send = torch.empty(1, d)

            def fp32_step() -> tuple[float, float, float]:
                t0 = time.perf_counter()
                send.copy_(x)
                t1 = time.perf_counter()
                dist.all_reduce(send)
                t2 = time.perf_counter()
                torch.div(send, world, out=agg)
                return t1 - t0, t2 - t1, time.perf_counter() - t2

            return fp32_step, send.numel() * 4
        c = make(name, **params)
        codec = codec_for(c)
        own_gen = shared_generator(0) if c.shared_randomness else compressor_generator(0, rank)
        others = {j: compressor_generator(0, j) for j in range(world) if j != rank}
        replay = c.randomized and not c.shared_randomness and codec.needs_draws(d)
        if codec.summable:
            send = torch.empty(codec.sum_shape(1, d))
            layout = recv = None
        else:
            layout = Layout(codec.fields(1, d, torch.float32))
            send = torch.empty(layout.nbytes, dtype=torch.uint8)
            recv = torch.empty(world, layout.nbytes, dtype=torch.uint8)

        def step() -> tuple[float, float, float]:
            t0 = time.perf_counter()
            rnd = c.draw((1, 1), d, own_gen, torch.float32) if c.randomized else None
            rnd = None if rnd is None else rnd[0]
            parts, _ = codec.encode(x, rnd, need_message=False)
            if layout is None:
                send.copy_(parts["sum"])
            else:
                layout.pack(parts, out=send)
            t1 = time.perf_counter()
            if layout is None:
                dist.all_reduce(send)
            else:
                all_gather_bytes(recv.view(-1), send)
            t2 = time.perf_counter()
            if layout is None:
                total = codec.decode_sum(send, rnd, d)
                torch.div(total, world, out=agg) if how == "mean" else torch.sign(total, out=agg)
            else:
                rnds = [rnd if j == rank else (c.draw((1, 1), d, others[j], torch.float32)[0] if replay else rnd)
                        for j in range(world)]
                codec.aggregate(layout.unpack(recv), rnds, how, 1, d, torch.float32, exact=False, out=agg)
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        return step, send.numel() * send.element_size()

    steps = [(label, name, params, *make_step(name, params, how)) for label, name, params, how in PATHS]
    # Interleaved rounds: every path's samples are spread over the whole run, so a burst of load on
    # the (shared) machine hits all paths alike. A barrier precedes every step.
    times: list[list[tuple[float, float, float]]] = [[] for _ in steps]
    copy_times = []
    order = torch.Generator().manual_seed(1)  # the same on every rank
    for r in range(repeats + 2):
        # A fresh order every round: a path's timing does not depend on which path ran just before
        # (after a 40 MB all-reduce, the next collective was measured up to 50 % slower).
        for i in torch.randperm(len(steps), generator=order).tolist():
            step = steps[i][3]
            dist.barrier()
            t = step()
            if r >= 2:  # two warm-up rounds
                times[i].append(t)
        dist.barrier()
        t0 = time.perf_counter()
        copy_buf.copy_(x)
        if r >= 2:
            copy_times.append(time.perf_counter() - t0)
    results = []
    for (label, name, params, _, nbytes), ts in zip(steps, times):
        mine = torch.tensor(ts, dtype=torch.float64)  # (repeats, 3)
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine)
        if rank == 0:
            allr = torch.stack(every)  # (world, repeats, 3)
            step_ms = float(allr.sum(-1).amax(0).median()) * 1e3
            phases = [float(allr[..., i].mean(0).median()) * 1e3 for i in range(3)]
            bits = min_bits(name, params, d)
            results.append({"path": label, "step_ms": step_ms, "compress_ms": phases[0], "communicate_ms": phases[1],
                            "aggregate_ms": phases[2], "wire_bytes": nbytes, "min_bytes": bits / 8,
                            "ratio_to_min": nbytes * 8 / bits})
    copy_ms = statistics.median(copy_times) * 1e3
    copies = [torch.empty(1) for _ in range(world)]
    dist.all_gather(copies, torch.tensor([copy_ms]))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"world": world, "d": d, "repeats": repeats, "copy_ms": float(torch.stack(copies).median()),
                       "paths": results}, f)
    dist.barrier()
    dist.destroy_process_group()


# ---- parent ----------------------------------------------------------------------------------------


def table(res: dict) -> str:
    w, d = res["world"], res["d"]
    fp32 = next(r for r in res["paths"] if r["path"] == "fp32 all-reduce")
    lines = [f"### N = {w} processes, d = {d:,} (float32){' — 4 ranks on 2 cores: oversubscribed' if w > 2 else ''}",
             f"copy of one d-length float32 tensor (reused buffer): {res['copy_ms']:.1f} ms", "",
             "| path | step ms | × fp32 | compress | communicate | decompress+aggregate | bytes/worker/step | min bytes | bytes/min |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["paths"]:
        lines.append(f"| {r['path']} | {r['step_ms']:.1f} | {fp32['step_ms'] / r['step_ms']:.2f} | {r['compress_ms']:.1f} | "
                     f"{r['communicate_ms']:.1f} | {r['aggregate_ms']:.1f} | {r['wire_bytes']:,} | "
                     f"{r['min_bytes']:,.0f} | {r['ratio_to_min']:.3f} |")
    sign = next(r for r in res["paths"] if r["path"] == "sign (mean)")
    agg, copy = sign["aggregate_ms"], res["copy_ms"]
    lines += ["", f"sign step vs fp32 all-reduce step: {fp32['step_ms'] / sign['step_ms']:.2f}× faster "
                  f"(target ≥ 2× at N = 4); sign unpack + aggregate {agg:.1f} ms = {agg / copy:.1f} copies "
                  f"(target ≤ 5 per worker = {5 * w * copy:.1f} ms; even ≤ 5 in all: "
                  f"{'yes' if agg <= 5 * copy else 'no'})"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=10_000_000)
    p.add_argument("--worlds", default="2,4", help="comma-separated process counts (default 2,4)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.dim, args.repeats, args.child)
        return
    from compsde.distributed.launch import spawn

    out = []
    for w in [int(s) for s in args.worlds.split(",")]:
        with tempfile.TemporaryDirectory(prefix="compsde-bench-") as tmp:
            res_path = os.path.join(tmp, "res.json")
            spawn(w, [__file__, "--dim", str(args.dim), "--repeats", str(args.repeats), "--child", res_path],
                  timeout=300.0, jobdir=os.path.join(tmp, "job"))
            with open(res_path) as f:
                res = json.load(f)
        out.append(res)
        print(table(res), flush=True)
        print(flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
