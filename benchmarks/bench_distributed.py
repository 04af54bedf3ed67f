"""One compressed communication step on real gloo process groups: time and bytes, per compressor.

    python benchmarks/bench_distributed.py                   # d = 10⁷, 2 and 4 processes
    python benchmarks/bench_distributed.py --quick           # d = 10⁵, 3 rounds (a smoke run)
    python benchmarks/bench_distributed.py --dim 1000000 --worlds 2 --repeats 5
    python benchmarks/bench_distributed.py --json out.json   # also write the numbers

For each world size N the script starts N local gloo processes (``compsde.distributed.launch.spawn``:
FileStore rendezvous, loopback, one thread per process). Every rank holds its own float32 gradient
of length d and runs, for each path, ``--repeats`` timed steps (after 2 warm-up steps), each split
into

* compress:    this rank's compressor draw (``Algorithm.draw`` from its stream of
               ``compsde.core.streams``, or the shared stream), the workers' half
               ``Algorithm.workers_step(..., encode=True, messages=False)`` (which returns the
               ``Payload`` without decoding the sender's own message, as the DDP hook's call does), and
               serialising the payload:
               ``compsde.compressors.wire.Layout.pack`` into the reused send buffer, or
               ``compsde.distributed.collectives.flat_floats`` for a summable payload — for fp32
               all-reduce the copy into the send buffer;
* communicate: the collective: ``all_reduce`` for summable payloads, ``all_gather_bytes``
               (``all_gather_single``) of the packed byte buffers otherwise;
* decompress + aggregate: replaying the other ranks' draws where decoding needs them (rand-k's
               indices), then ``compsde.distributed.collectives.receive`` as the DDP hook calls it:
               ``decode_sum`` (decode and sum in worker order, block by block for one-row payloads of
               elementwise compressors, with the mean or majority vote applied to each block in
               cache) into a reused d-length buffer; or ``decode`` of the all-reduced payload and
               ``Algorithm.direction``.

These are the calls ``compsde.distributed.comm_hook`` makes per gradient bucket (the hook replays the
draws before the collective; here they are timed with the decoding, as the old codec path was).

A barrier precedes every step. Reported per path: the median over steps of the slowest rank's step
time, the medians of the three phases (mean over ranks), the bytes one rank hands to the collective,
the information-theoretic minimum of the message (below) and their ratio. The reference "copy" is
``buf.copy_(x)`` of one d-length float32 tensor into a reused buffer. Each path's first (untimed)
step is checked against the in-process step (every rank's message ``apply(x_j, rnd_j)`` with its
draw replayed from fresh streams, summed in worker order), and the script prints which paths differ
and by how much (an all-reduce sums in the collective's order, not in worker order).

Targets (printed under each table): the sign step ≥ 2× faster than the fp32 all-reduce step at N = 4,
and sign's unpack + aggregate within 5 copies of a d-length tensor per worker.

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

    from compsde import algorithms
    from compsde.algorithms import Algorithm
    from compsde.compressors import Payload, make
    from compsde.compressors.wire import Layout
    from compsde.core.streams import Streams
    from compsde.distributed.collectives import all_gather_bytes, flat_floats, receive, unflat_floats
    from compsde.distributed.launch import init_from_env

    keep_freed_memory()
    torch.set_num_threads(1)
    ctx = init_from_env(timeout=300.0)
    rank, world = ctx.rank, ctx.world
    x = torch.randn(d, generator=torch.Generator().manual_seed(rank)).view(1, d)
    agg = torch.empty(1, d)
    copy_buf = torch.empty(1, d)
    dtype = torch.float32

    def make_step(label: str, name: str | None, params: dict, how: str):
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

            exact[label] = 0.0  # nothing is compressed
            return fp32_step, send.numel() * 4
        c = make(name, **params)
        algo = algorithms.make("dcsgd", c)
        if how != algo.aggregation:
            algo = Algorithm(algo.name, c, how, algo.error_feedback, algo.worker, algo.server)
        # Every rank's compressor stream (its own, the others' replayed) and the shared one, as the hook.
        streams = Streams(0, world, noise=[], compressor=range(world))
        state = algo.init(torch.zeros(1, d, dtype=dtype), 1)
        wstate = {"worker": state["worker"], "ef": state["ef"]}
        shared = c.randomized and c.shared_randomness
        replay = c.randomized and not c.shared_randomness and not c.summable and c.decode_needs_draw(d)
        if c.summable:
            layout = recv = send = None
        else:
            layout = Layout(c.fields(d, dtype), 1, d, dtype)
            send = torch.empty(layout.nbytes, dtype=torch.uint8)
            recv = torch.empty(world, layout.nbytes, dtype=torch.uint8)
        sent = [0]

        def step() -> tuple[float, float, float]:
            t0 = time.perf_counter()
            rnd = algo.draw(streams, [] if shared else [rank], 1, d, dtype)  # (1, 1, ·) or None
            own = None if rnd is None else rnd[0]
            out = algo.workers_step(x.view(1, 1, d), wstate, None, 1.0, rnd, encode=True, messages=False)
            payload = Payload({k: v[0] for k, v in out.payload.fields.items()}, d, dtype)
            buf = flat_floats(payload) if layout is None else layout.pack(payload, out=send)
            t1 = time.perf_counter()
            if layout is None:
                dist.all_reduce(buf)
            else:
                all_gather_bytes(recv.view(-1), buf)
            t2 = time.perf_counter()
            if layout is None:
                last[0], _ = algo.direction(c.decode(unflat_floats(buf, payload), own), world, state["server"], None)
            else:
                rnds = [own if j == rank or not replay else algo.draw(streams, [j], 1, d, dtype)[0] for j in range(world)]
                last[0], _ = receive(algo, layout, recv, rnds, agg, state["server"])  # the DDP hook's receiver
            sent[0] = buf.numel() * buf.element_size()
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        last: list[torch.Tensor | None] = [None]
        step()  # untimed: learns the bytes (a summable payload's send buffer is made per step) and is checked
        # Check the exchange: the first step's direction must be the in-process one, Σ_j apply(x_j, rnd_j)
        # in worker order with every rank's first draw replayed from fresh streams (the simulator's step).
        fresh = Streams(0, world, noise=[], compressor=range(world))
        total = None
        for j in range(world):
            xj = torch.randn(d, generator=torch.Generator().manual_seed(j)).view(1, d)
            rj = algo.draw(fresh, [] if shared else [j], 1, d, dtype)
            mj = c.apply(xj, None if rj is None else rj[0])
            total = mj.clone() if total is None else total.add_(mj)
            if shared:  # one shared draw per step
                fresh = Streams(0, world, noise=[], compressor=range(world))
        expected, _ = algo.direction(total, world, state["server"], None)
        # 0 when equal (the sign of zeros aside), else the largest difference relative to the largest entry
        exact[label] = float((last[0] - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
        return step, sent[0]

    exact: dict[str, float] = {}
    steps = [(label, name, params, *make_step(label, name, params, how)) for label, name, params, how in PATHS]
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
    flags = torch.tensor([exact[label] for label, *_ in PATHS], dtype=torch.float64)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # the worst rank
    exact = {label: f for (label, *_), f in zip(PATHS, flags.tolist())}
    copy_ms = statistics.median(copy_times) * 1e3
    copies = [torch.empty(1) for _ in range(world)]
    dist.all_gather(copies, torch.tensor([copy_ms]))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"world": world, "d": d, "repeats": repeats, "copy_ms": float(torch.stack(copies).median()),
                       "paths": results, "exact": exact}, f)
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
    wrong = [f"{p} (max difference {e:.1e} of the largest entry)" for p, e in res.get("exact", {}).items() if e]
    lines += ["", "first step's direction against the in-process step (Σ_j apply(x_j, rnd_j) in worker order): "
                  + (f"different for {'; '.join(wrong)}" if wrong else "equal for every path")]
    sign = next(r for r in res["paths"] if r["path"] == "sign (mean)")
    agg, copy = sign["aggregate_ms"], res["copy_ms"]
    lines += ["", f"sign step vs fp32 all-reduce step: {fp32['step_ms'] / sign['step_ms']:.2f}× faster "
                  f"(target ≥ 2× at N = 4); sign unpack + aggregate {agg:.1f} ms = {agg / copy:.1f} copies "
                  f"(target ≤ 5 per worker = {5 * w * copy:.1f} ms; even ≤ 5 in all: "
                  f"{'yes' if agg <= 5 * copy else 'no'})"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=None, help="gradient length d (default 10⁷, quick 10⁵)")
    p.add_argument("--worlds", default="2,4", help="comma-separated process counts (default 2,4)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7, quick 3)")
    p.add_argument("--quick", action="store_true", help="d = 10⁵ and 3 rounds unless --dim/--repeats say otherwise")
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dim is None:
        args.dim = 100_000 if args.quick else 10_000_000
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
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
