"""DDP communication hooks on a real bandwidth limit: what each compressor buys per training step.

Two processes in two network namespaces joined by a veth pair throttled to ``--rate`` (1 Gbit/s) with
``tc tbf`` (``netns.py``), an MLP of three 2048 × 2048 layers (12.6M parameters, float32), batch 4, one
torch thread per process, ``DistributedDataParallel`` with each hook in turn (a fresh DDP model per hook,
the same weights and batches). Per hook, the median over ``--steps`` timed steps (after 3 warm-up steps) of
one training step: forward, backward (the hook runs inside it, overlapped with the rest of backward as DDP
allows), SGD step.

Rows:

* ``no communication`` — a hook that returns the bucket unchanged: the compute floor;
* ``fp32 all-reduce`` — DDP without a hook; ``torch fp16`` — torch's ``fp16_compress_hook``;
* every compsde compressor through ``compsde.distributed.comm_hook``.

Columns: the step time; the bytes one rank hands to the collectives per step (the hook's own count;
4d and 2d for DDP's and torch's); the wire time of those bytes at the link's rate; the ratio
step / (floor + wire); and the goal of the line (1.25 × (floor + wire), plus the passes over the gradient
the method cannot avoid: one pass = one copy of the gradient into a reused buffer, measured in the same run).
Needs root for ``ip netns`` and ``tc``; without it the script says so and stops. The namespaces and the link
are created and removed here (also on failure).

With ``--predict`` each rank first measures the link inside the namespaces (``Link.measure``: all-gathers
and all-reduces of 4 KiB and of the fp32 gradient's size, within 1 to 4 MiB; and, as a check of the ring formulas, all-gathers
and all-reduces of d/8 and 4d bytes against their prediction), the
model's compute (``measure_compute``: forward + backward + SGD step of DDP with a hook that does nothing), and after each hook
its codec's CPU seconds at each gradient bucket's size (``measure_codec``); the table then has the cost
model's prediction (``compsde.advise.cost.predict_step_seconds``) and predicted / measured (the floor's
prediction is that compute, measured before the hooks run).
``--width`` sets the layers' width (2048: 12.6M parameters; 256: 197k).

Usage: python benchmarks/bench_hooks.py [--steps 15] [--rate 1gbit] [--only sign,top-k ...] [--predict] [--width 2048]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time

import netns  # a sibling module: run as python benchmarks/bench_hooks.py
from timing import median_seconds

WIDTH, LAYERS, BATCH = 2048, 3, 4

#: (label, comm_hook keywords or a special name, passes over the gradient the goal allows beyond the floor)
HOOKS: list[tuple[str, dict | str, int]] = [
    ("no communication (floor)", "noop", 0),
    ("fp32 all-reduce (DDP)", "fp32", 0),
    ("torch fp16_compress_hook", "fp16", 0),
    ("compsde identity", {"compressor": "identity"}, 0),
    ("compsde sign (mean)", {"compressor": "sign"}, 0),
    ("compsde sign (majority)", {"compressor": "sign", "aggregation": "majority"}, 0),
    ("compsde scaled-sign", {"compressor": "scaled-sign"}, 1),
    ("compsde rand-k 1 %", {"compressor": "rand-k", "ratio": 0.01}, 0),
    ("compsde rand-k 1 % shared", {"compressor": "rand-k", "ratio": 0.01, "shared": True}, 0),
    ("compsde top-k 1 %", {"compressor": "top-k", "ratio": 0.01}, 3),
    ("compsde top-k 1 % + error feedback", {"compressor": "top-k", "ratio": 0.01, "error_feedback": True}, 4),
    ("compsde qsgd, 4 levels", {"compressor": "qsgd", "levels": 4}, 2),
    ("compsde natural", {"compressor": "natural"}, 2),
    ("compsde rounding", {"compressor": "rounding"}, 1),
    ("compsde natural-dithering, 4 levels", {"compressor": "natural-dithering", "levels": 4}, 2),
    ("compsde top-k 1 % + natural", {"compressor": "top-k+natural", "ratio": 0.01}, 3),
]


def child(steps: int, only: list[str], predict: bool = False, width: int = WIDTH) -> None:
    """One rank: every hook in turn; rank 0 prints one JSON line of results."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    from compsde import algorithms
    from compsde.advise import cost
    from compsde.distributed import comm_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=600))
    rank = dist.get_rank()
    torch.manual_seed(0)
    base = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)])
    d = sum(p.numel() for p in base.parameters())
    data = torch.Generator().manual_seed(100 + rank)
    batches = [torch.randn(BATCH, width, generator=data) for _ in range(4)]
    grad = torch.randn(d)
    buf = torch.empty(d)
    one_pass = median_seconds(lambda: buf.copy_(grad), 15, warmup=3)

    def noop(state, bucket):  # no annotations: DDP checks them as objects, and this module's are strings
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    model_info: dict = {}
    if predict:
        world = dist.get_world_size()
        # fitted where the step's messages are: from 4 KiB to the fp32 gradient (within 1 to 4 MiB)
        link = cost.Link.measure(sizes=(1 << 12, min(1 << 22, max(1 << 20, 4 * d))))
        checks = {}
        for kind in cost.COLLECTIVES:
            sizes = (max(1024, d // 8), 4 * d)  # the sizes of a sign and of an fp32 gradient
            for size, t in zip(sizes, cost.time_collective(kind, sizes, repeats=5)):
                checks[f"{kind} {size}"] = {"measured_ms": 1e3 * t,
                                            "predicted_ms": 1e3 * cost.collective_seconds(kind, size, world, link)}
        probe = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)])
        probe.load_state_dict(base.state_dict())
        # every rank: DDP over the group with a hook that does nothing (the floor, DDP's own work included)
        compute = cost.measure_compute(probe, lambda m, b: m(b).square().mean(), batches[0],
                                       optimizer=torch.optim.SGD(probe.parameters(), lr=1e-4), repeats=9)
        buckets = cost.ddp_buckets(probe)
        model_info = {"link": {"bandwidth_MBps": link.bandwidth / 1e6, "latency_us": 1e6 * link.latency},
                      "collective_checks": checks, "compute_ms": {k: 1e3 * v for k, v in vars(compute).items()},
                      "buckets": buckets}
        dist.barrier()

    def prediction(algo, state, builtin: bool = False) -> dict:
        """The cost model's step for ``algo``, its codec measured here at each bucket's size."""
        measured = {n: cost.measure_codec(algo, n, world, repeats=5) for n in set(buckets)}
        # over the group at the measured link (DDP's own all-reduce has no compsde hook)
        extra = 0.0 if builtin else cost.measure_hook_overhead(algo, link=link)
        p = cost.predict_step_seconds(algo, compute=compute, link=link, workers=world, buckets=buckets,
                                      codec=[measured[n] for n in buckets], hook_overhead=extra)
        real = None if state is None else [state.bucket_numel[i] for i in sorted(state.bucket_numel)]
        return {"pred_ms": 1e3 * p.seconds, "pred_bytes": p.bytes, "pred_cpu_ms": 1e3 * p.cpu,
                "pred_wire_ms": 1e3 * p.wire, "pred_exposed_ms": 1e3 * p.exposed, "hook_buckets": real,
                "overhead_ms": 1e3 * extra}

    out = []
    for label, spec, passes in HOOKS:
        if only and not any(o in label for o in only):
            continue
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)])
        model.load_state_dict(base.state_dict())
        ddp = DDP(model)
        state = None
        if spec == "noop":
            ddp.register_comm_hook(None, noop)
        elif spec == "fp16":
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif isinstance(spec, dict):
            state, hook = comm_hook(**spec)
            ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-4)
        times = []
        for i in range(3 + steps):
            dist.barrier()
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            ddp(batches[i % len(batches)]).square().mean().backward()
            opt.step()
            times.append(time.perf_counter() - t)
        nbytes = {"noop": 0, "fp32": 4 * d, "fp16": 2 * d}.get(spec) if isinstance(spec, str) else None
        if state is not None:
            nbytes = state.wire_bytes_per_step()
        row = {"label": label, "ms": 1e3 * statistics.median(times[3:]), "bytes": nbytes, "passes": passes}
        if predict and spec == "noop":
            row["pred_ms"] = 1e3 * compute.total
        elif predict and spec == "fp32":
            row.update(prediction(algorithms.make("dsgd"), None, builtin=True))
        elif predict and state is not None:
            row.update(prediction(state.algorithm, state))
        out.append(row)
        del ddp, model, opt, state
        gc.collect()
    dist.barrier()
    if rank == 0:
        print("RESULT " + json.dumps({"d": d, "one_pass_ms": 1e3 * one_pass, "rows": out, **model_info}), flush=True)
    dist.destroy_process_group()


def _ms(x: float) -> str:
    """Milliseconds with the digits that matter (a small model's steps last a few)."""
    return f"{x:.0f}" if x >= 20 else f"{x:.2f}"


def bits_per_second(rate: str) -> float:
    m = re.fullmatch(r"([0-9.]+)\s*([kmg]?)bit", rate.lower())
    if not m:
        raise ValueError(f"--rate must look like 1gbit, 500mbit or 100kbit, got {rate!r}")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per hook (default 15, after 3 warm-up steps)")
    ap.add_argument("--rate", default="1gbit", help="the link's rate for tc tbf (default 1gbit)")
    ap.add_argument("--only", default="", help="comma-separated parts of row labels to run (default: all)")
    ap.add_argument("--predict", action="store_true", help="add the cost model's predicted step (measures the link first)")
    ap.add_argument("--width", type=int, default=WIDTH, help=f"the layers' width (default {WIDTH})")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    only = [o for o in args.only.split(",") if o]
    if args.child:
        child(args.steps, only, args.predict, args.width)
        return
    rate = bits_per_second(args.rate)
    why = netns.why_not()
    if why:
        print(f"cannot build the throttled link: {why}")
        return
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps), "--only", args.only,
           "--width", str(args.width)] + (["--predict"] if args.predict else [])
    try:
        with netns.link(args.rate):
            logs = netns.launch(cmd, 29650)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        print(f"cannot build the throttled link ({getattr(e, 'stderr', '') or e}); nothing measured")
        return
    res = json.loads(next(line for line in logs[0].splitlines() if line.startswith("RESULT "))[7:])
    rows = res["rows"]
    floor = next((r["ms"] for r in rows if r["label"].startswith("no communication")), None)
    one = res["one_pass_ms"]
    print(f"2 processes in 2 network namespaces, veth throttled to {args.rate} (tc tbf); MLP {LAYERS} × {args.width}² "
          f"(d = {res['d']:,} float32), batch {BATCH}, 1 thread per process; median of {args.steps} steps")
    print(f"one pass over the gradient (copy into a reused buffer): {one:.1f} ms; compute floor: "
          f"{'not run' if floor is None else f'{floor:.0f} ms'}\n")
    pred = "link" in res
    if pred:
        ln, cm = res["link"], res["compute_ms"]
        print(f"measured link (all-gathers and all-reduces of 4 KiB and of min(4 MiB, max(1 MiB, 4d B))): {ln['bandwidth_MBps']:.1f} MB/s ({8 * ln['bandwidth_MBps']:.0f} "
              f"Mbit/s), latency {ln['latency_us']:.0f} µs; compute: forward {cm['forward']:.1f} + backward "
              f"{cm['backward']:.1f} + SGD step {cm['optimizer']:.1f} ms; DDP buckets {res['buckets']}")
        print("collectives, measured vs the ring formulas at that link: " + "; ".join(
            f"{k} B {v['measured_ms']:.2f} vs {v['predicted_ms']:.2f} ms" for k, v in res["collective_checks"].items()))
        print()
    extra = " predicted ms | predicted / step |" if pred else ""
    print("| hook | step ms | MB / step | wire ms | step / (floor + wire) | goal ms | met |" + extra)
    print("|---|---:|---:|---:|---:|---:|:---:|" + ("---:|---:|" if pred else ""))
    for r in rows:
        wire = 1e3 * 8 * r["bytes"] / rate
        if floor is None:
            ratio, goal, met = "", "", ""
        else:
            g = 1.25 * (floor + wire) + r["passes"] * one
            ratio, goal, met = f"{r['ms'] / (floor + wire):.2f}", f"{g:.0f}", "yes" if r["ms"] <= g else "no"
        line = f"| {r['label']} | {_ms(r['ms'])} | {r['bytes'] / 1e6:.2f} | {_ms(wire)} | {ratio} | {goal} | {met} |"
        if pred:
            p = r.get("pred_ms")
            line += " — | — |" if p is None else f" {_ms(p)} | {p / r['ms']:.2f} |"
        print(line)
    if pred:
        print("\nparts of the predictions (ms): " + "; ".join(
            f"{r['label']}: cpu {r['pred_cpu_ms']:.1f} (hook overhead {r.get('overhead_ms', 0):.2f}/bucket), wire {r['pred_wire_ms']:.1f}, exposed {r['pred_exposed_ms']:.1f}"
            + ("" if r.get("hook_buckets") in (None, res["buckets"]) else f" (hook's buckets {r['hook_buckets']})")
            for r in rows if "pred_cpu_ms" in r))
        for r in rows:
            if "pred_bytes" in r and r["bytes"] is not None and r["pred_bytes"] != r["bytes"]:
                print(f"bytes differ for {r['label']}: the hook counted {r['bytes']}, the cost model {r['pred_bytes']}")


if __name__ == "__main__":
    main()
