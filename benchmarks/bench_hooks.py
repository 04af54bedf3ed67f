"""DDP communication hooks on a real bandwidth limit: what each compressor buys per training step.

Two processes in two network namespaces joined by a veth pair throttled to ``--rate`` (1 Gbit/s) with
``tc tbf`` (``compsde.distributed.netns``), an MLP of three 2048 × 2048 layers (12.6M parameters, float32), batch 4, one
torch thread per process, ``DistributedDataParallel`` with each hook (a DDP copy of the model per hook, the
same weights and batch; ``compsde.advise.cost.measure_steps``). Per hook, the median over ``--steps`` timed
steps of one training step: forward, backward (the hook runs inside it, overlapped with the rest of backward
as DDP allows), SGD step; after 3 warm-up steps each, the hooks take turns in rounds of 5 steps, so that a slow
spell of the machine falls on all of them alike.

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

With ``--predict`` the ranks first measure what the cost model needs, as ``compsde advise --ranks`` does
(``compsde.advise.cost.measure_group``): the link inside the namespaces (``Link.measure``: all-gathers and
all-reduces of 4 KiB and of the fp32 gradient's size, within 1 to 4 MiB), the model's compute
(``measure_compute``: forward + backward + SGD step of DDP with a hook that does nothing) and each hook's
overhead per bucket; then, as a check of the ring formulas, all-gathers and all-reduces of d/8 and 4d bytes
against their prediction. The table then has the cost model's prediction
(``compsde.advise.cost.predict_step_seconds``, with each codec's CPU seconds measured at each gradient
bucket's size) and predicted / measured (the floor's prediction is that compute).
``--width`` sets the layers' width (2048: 12.6M parameters; 256: 197k).

Usage: python benchmarks/bench_hooks.py [--steps 25] [--rate 1gbit] [--only sign,top-k ...] [--predict] [--width 2048]
                                      [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from timing import median_seconds  # a sibling module: run as python benchmarks/bench_hooks.py

from compsde.distributed.launch import spawn
from compsde.distributed.netns import bits_per_second, throttled_link, why_not

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


def child(steps: int, only: list[str], result: str, predict: bool = False, width: int = WIDTH) -> None:
    """One rank: every hook in turn (``measure_steps``: round-robin rounds); rank 0 writes the results to ``result``."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from compsde import algorithms
    from compsde.advise import cost
    from compsde.distributed import comm_hook
    from compsde.distributed.launch import init_from_env

    torch.set_num_threads(1)
    init_from_env(600)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    base = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)])
    d = sum(p.numel() for p in base.parameters())
    batch = torch.randn(BATCH, width, generator=torch.Generator().manual_seed(100 + rank))
    grad = torch.randn(d)
    buf = torch.empty(d)
    one_pass = median_seconds(lambda: buf.copy_(grad), 15, warmup=3)
    loss_fn = lambda m, b: m(b).square().mean()  # noqa: E731
    sgd = torch.optim.SGD(base.parameters(), lr=1e-4)

    def noop(state, bucket):  # no annotations: DDP checks them as objects, and this module's are strings
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    rows = [(label, spec, passes) for label, spec, passes in HOOKS if not only or any(o in label for o in only)]
    hooks: dict = {}
    for label, spec, _ in rows:
        if spec == "noop":
            hooks[label] = (None, noop)
        elif spec == "fp16":
            hooks[label] = (None, default_hooks.fp16_compress_hook)
        elif spec == "fp32":
            hooks[label] = None
        else:
            hooks[label] = comm_hook(**spec)
    # the hooks' algorithms (DDP's all-reduce: DSGD) for the cost model
    algos = {label: algorithms.make("dsgd") if spec == "fp32" else hooks[label][0].algorithm
             for label, spec, _ in rows if spec == "fp32" or isinstance(spec, dict)}
    info: dict = {}
    group = None
    if predict:
        group = cost.measure_group(base, loss_fn, batch, list(algos.values()), optimizer=sgd)
        checks = {}
        for kind in cost.COLLECTIVES:
            sizes = (max(1024, d // 8), 4 * d)  # the sizes of a sign and of an fp32 gradient
            for size, t in zip(sizes, cost.time_collective(kind, sizes, repeats=5)):
                checks[f"{kind} {size}"] = {"measured_ms": 1e3 * t,
                                            "predicted_ms": 1e3 * cost.collective_seconds(kind, size, world, group.link)}
        info = {"link": {"bandwidth_MBps": group.link.bandwidth / 1e6, "latency_us": 1e6 * group.link.latency},
                "collective_checks": checks, "compute_ms": {k: 1e3 * v for k, v in vars(group.compute).items()},
                "buckets": list(group.buckets)}
    measured = cost.measure_steps(base, loss_fn, batch, hooks, optimizer=sgd, steps=5, rounds=max(1, steps // 5))
    out = []
    for label, spec, passes in rows:
        h = hooks[label]
        state = h[0] if isinstance(spec, dict) else None
        nbytes = state.wire_bytes_per_step() if state is not None else {"noop": 0, "fp32": 4 * d, "fp16": 2 * d}[spec]
        row = {"label": label, "ms": 1e3 * measured[label], "bytes": nbytes, "passes": passes}
        if group is not None and spec == "noop":
            row["pred_ms"] = 1e3 * group.compute.total
        elif group is not None and label in algos:
            p = cost.predict_step_seconds(algos[label], compute=group.compute, link=group.link, workers=world,
                                          buckets=group.buckets, hook_overhead=group.overhead[cost.method_label(algos[label])])
            real = None if state is None else [state.bucket_numel[i] for i in sorted(state.bucket_numel)]
            row.update({"pred_ms": 1e3 * p.seconds, "pred_bytes": p.bytes, "pred_cpu_ms": 1e3 * p.cpu,
                        "pred_wire_ms": 1e3 * p.wire, "pred_exposed_ms": 1e3 * p.exposed, "hook_buckets": real,
                        "overhead_ms": 1e3 * group.overhead[cost.method_label(algos[label])]})
        out.append(row)
    if rank == 0:
        with open(result, "w", encoding="utf-8") as fh:
            json.dump({"d": d, "one_pass_ms": 1e3 * one_pass, "rows": out, **info}, fh)
    dist.destroy_process_group()


def _ms(x: float) -> str:
    """Milliseconds with the digits that matter (a small model's steps last a few)."""
    return f"{x:.0f}" if x >= 20 else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25,
                    help="timed steps per hook (default 25: rounds of 5 steps, the hooks taking turns; after 3 warm-up steps)")
    ap.add_argument("--rate", default="1gbit", help="the link's rate for tc tbf (default 1gbit)")
    ap.add_argument("--only", default="", help="comma-separated parts of row labels to run (default: all)")
    ap.add_argument("--predict", action="store_true", help="add the cost model's predicted step (measures the link first)")
    ap.add_argument("--width", type=int, default=WIDTH, help=f"the layers' width (default {WIDTH})")
    ap.add_argument("--runs", type=int, default=1,
                    help="independent runs, each measuring everything again (default 1); the table shows per hook the "
                         "median over the runs, and with --predict each run's predicted / measured")
    ap.add_argument("--child", metavar="RESULT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs must be ≥ 1, got {args.runs}")
    only = [o for o in args.only.split(",") if o]
    if args.child:
        child(args.steps, only, args.child, args.predict, args.width)
        return
    rate = bits_per_second(args.rate, "--rate")
    why = why_not()
    if why:
        print(f"cannot build the throttled link: {why}")
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp, throttled_link(args.rate) as wrap:
        for k in range(args.runs):
            result = os.path.join(tmp, f"result{k}.json")
            argv = [os.path.abspath(__file__), "--child", result, "--steps", str(args.steps), "--only", args.only,
                    "--width", str(args.width)] + (["--predict"] if args.predict else [])
            spawn(2, argv, timeout=1800, wrap=wrap, jobdir=os.path.join(tmp, f"job{k}"))
            with open(result, encoding="utf-8") as fh:
                runs.append(json.load(fh))
    res = runs[0]
    per_run = [[f"{run['rows'][i]['pred_ms'] / run['rows'][i]['ms']:.2f}" for run in runs if "pred_ms" in run["rows"][i]]
               for i in range(len(res["rows"]))]
    rows = [{**r, **{key: statistics.median(run["rows"][i][key] for run in runs)  # the median over the runs
                     for key in ("ms", "pred_ms", "pred_cpu_ms", "pred_wire_ms", "pred_exposed_ms", "overhead_ms")
                     if key in r}}
            for i, r in enumerate(res["rows"])]
    floor = next((r["ms"] for r in rows if r["label"].startswith("no communication")), None)
    one = res["one_pass_ms"]
    print(f"2 processes in 2 network namespaces, veth throttled to {args.rate} (tc tbf); MLP {LAYERS} × {args.width}² "
          f"(d = {res['d']:,} float32), batch {BATCH}, 1 thread per process; median of {args.steps} steps"
          + (f"; the median of {args.runs} runs (the link and compute below: the first run's)" if args.runs > 1 else ""))
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
    many = pred and args.runs > 1
    extra = (" predicted ms | predicted / step |" if pred else "") + (" per run |" if many else "")
    print("| hook | step ms | MB / step | wire ms | step / (floor + wire) | goal ms | met |" + extra)
    print("|---|---:|---:|---:|---:|---:|:---:|" + ("---:|---:|" if pred else "") + ("---|" if many else ""))
    for r, ratios in zip(rows, per_run):
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
        if many:
            line += f" {' '.join(ratios) or '—'} |"
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
