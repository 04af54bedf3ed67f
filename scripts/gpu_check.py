"""The checks that need a GPU, in one short script: run it whenever a CUDA machine is available.

    python scripts/gpu_check.py              # on a CUDA machine (exit status 0 when every check passed)
    python scripts/gpu_check.py --device cpu # a dry run of the same code paths on the CPU

Checks (each prints one line, then a JSON summary is printed and written to --out if given):

1. simulator: the same run on the CPU and on the device (float64 and float32) for every algorithm
   family — the random numbers are drawn on CPU generators in both (``compsde.core.streams``), so the
   iterates agree up to floating-point round-off (different reduction orders and fused multiply-adds
   on the GPU): relative difference ≤ 1e-9 in float64, ≤ 1e-3 in float32;
2. compressors: apply on device tensors equals apply on CPU tensors for the same draw, and the Monte
   Carlo constants measured on the device stay inside the declared ones (unbiasedness within 5
   standard errors, ω, δ);
3. the SDE integration on the device matches the CPU one (same Brownian increments);
4. networks (an MLP and a small ViT on digits): simulated training with rand-k and top-k with error
   feedback, and the DSGD/DSignSGD SDE drifts from per-sample gradients, on the device against the CPU
   (float64, relative difference ≤ 1e-6: the device's matrix products add in another order);
5. the DDP communication hook over NCCL (world size 1) trains a small MLP with sign/majority, top-k
   with error feedback and rand-k, and stays equal to the same steps computed without DDP;
6. with two or more GPUs, a two-process NCCL run of ``compsde run --backend torch`` reproduces the
   CUDA simulator (skipped, and said so, with one GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS: list[dict[str, Any]] = []


def check(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kw: Any) -> None:
            t = time.perf_counter()
            try:
                detail = fn(*args, **kw)
                status = "skipped" if isinstance(detail, str) and detail.startswith("skipped") else "passed"
            except Exception as e:  # report and go on: one failing check must not hide the others
                status, detail = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            RESULTS.append({"check": name, "status": status, "seconds": round(time.perf_counter() - t, 2),
                            "detail": detail})
            first = str(detail).splitlines()[0] if detail else ""
            print(f"[{status:>7}] {name} ({time.perf_counter() - t:.1f} s) {first}", flush=True)
        return run
    return wrap


CASES = [
    ("dsgd", {}),
    ("dcsgd", {"compressor": "rand-k", "k": 3}),
    ("dcsgd", {"compressor": "rand-k", "k": 3, "shared": True}),
    ("dcsgd", {"compressor": "top-k", "k": 2}),
    ("dcsgd", {"compressor": "natural"}),
    ("dcsgd", {"compressor": "qsgd", "levels": 4}),
    ("dcsgd", {"compressor": "natural-dithering", "levels": 3}),
    ("dcsgd", {"compressor": "top-k+natural", "k": 3}),
    ("dsignsgd", {}),
    ("dsignsgd-majority", {}),
    ("ef", {"compressor": "scaled-sign"}),
    ("dcsgd", {"compressor": "rand-k", "k": 2, "worker": {"momentum": 0.9}}),
    ("signsgd", {}), ("signum", {"beta": 0.8}), ("rmspropw", {}), ("adam", {"weight_decay": 0.01}), ("sam", {}),
    ("seg", {}), ("shgd", {}),
    ("dsgd", {"server": {"momentum": 0.9, "nesterov": True}, "normalize": True}),
]


@check("simulator on the device equals the CPU run")
def check_simulator(device: str) -> str:
    from compsde import algorithms
    from compsde.algorithms.schedules import Schedule
    from compsde.objectives import Noise, Oracle, problems
    from compsde.sim import simulate

    prob = problems.make("quadratic", dim=8, rotate=True, heterogeneity=0.5)
    worst = {}
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        for name, params in CASES:
            algo = algorithms.make(name, **params)
            o = Oracle(prob, Noise("student-t", [0.5, 1.0, 1.5], 4.0), workers=3, batch=2, dtype=dtype)
            kw = dict(repeats=16, seed=5, log_every=20)
            a = simulate(o, algo, Schedule("cosine", 0.05, 60), **kw)
            b = simulate(o.to(dtype, device), algo, Schedule("cosine", 0.05, 60), **kw)
            rel = float((a.x - b.x).abs().max() / a.x.abs().max().clamp_min(1e-30))
            worst[f"{algo.label()} {str(dtype)[6:]}"] = rel
            if not rel <= tol or not torch.equal(a.diverged_step, b.diverged_step):
                raise AssertionError(f"{algo.label()} in {dtype}: relative difference {rel:.3g} > {tol}")
    return f"max relative difference {max(worst.values()):.2e} over {len(worst)} runs"


@check("compressors on the device: same output, declared constants hold")
def check_compressors(device: str) -> str:
    from compsde import compressors
    from compsde.core.streams import Streams

    d, rows, n = 200, 4, 20_000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=g, dtype=torch.float64) * torch.logspace(-2, 2, d, dtype=torch.float64)
    names = [("identity", {}), ("rand-k", {"k": 20}), ("rand-k-unscaled", {"k": 20}), ("top-k", {"k": 20}),
             ("sign", {}), ("scaled-sign", {}), ("natural", {}), ("qsgd", {"levels": 4}),
             ("natural-dithering", {"levels": 4}), ("top-k+natural", {"k": 20})]
    notes = []
    for name, params in names:
        c = compressors.make(name, **params)
        rnd = c.draw((rows,), d, Streams(1, 1).gens["compressor"][0], torch.float64)
        cpu = c.apply(x, rnd)
        dev = c.apply(x.to(device), None if rnd is None else rnd.to(device))
        if not torch.equal(cpu, dev.cpu()):
            raise AssertionError(f"{name}: apply differs between cpu and {device}")
        p = c.encode(x.to(device), None if rnd is None else rnd.to(device))
        if not torch.equal(c.decode(p, None if rnd is None else rnd.to(device)).cpu(), cpu):
            raise AssertionError(f"{name}: decode(encode(x)) differs from apply on {device}")
        if c.randomized:  # Monte Carlo on the device: n draws of one vector
            v = x[0].to(device)
            r = c.draw((n,), d, Streams(2, 1).gens["compressor"][0], torch.float64)
            y = c.apply(v.expand(n, d), r.to(device))
            err = ((y - v) ** 2).sum(-1) / (v * v).sum()
            if c.unbiased:
                bias = (y.mean(0) - v).norm() / v.norm()
                se = (y.var(0).sum() / n).sqrt() / v.norm()
                if float(bias) > 5 * float(se) + 1e-12:
                    raise AssertionError(f"{name}: bias {float(bias):.3g} > 5 SE ({float(se):.3g})")
                w = c.omega(d)
                if float(err.mean()) > w * (1 + 5 / math.sqrt(n)) + 1e-12:
                    raise AssertionError(f"{name}: E‖C(x) − x‖²/‖x‖² = {float(err.mean()):.4g} > ω = {w:.4g}")
            notes.append(f"{name} err {float(err.mean()):.3g}")
    return "; ".join(notes)


@check("SDE integration on the device equals the CPU one")
def check_sde(device: str) -> str:
    from compsde import algorithms
    from compsde.algorithms.schedules import Schedule
    from compsde.objectives import Noise, Oracle, problems
    from compsde.sde.tracking import simulate_sde

    quad, game = problems.make("quadratic", dim=10), problems.make("bilinear-game", player_dim=5)
    out = []
    for name, params in [("dsgd", {}), ("dcsgd", {"compressor": "rand-k", "k": 3}), ("dsignsgd", {}),
                         ("dsignsgd-majority", {}), ("signsgd", {}), ("rmsprop", {}), ("adamw", {}), ("signum", {}), ("usam", {}),
                         ("sam", {}), ("sgda", {}), ("seg", {}), ("shgd", {})]:
        algo = algorithms.make(name, **params)
        prob = game if name in ("sgda", "seg", "shgd") else quad
        o = Oracle(prob, Noise("gaussian", 1.0), workers=4)
        kw = dict(paths=64, seed=1, log_every=25, mc_samples=8)
        a, _ = simulate_sde(o, algo, Schedule("constant", 0.05, 50), **kw)
        b, _ = simulate_sde(o.to(torch.float64, device), algo, Schedule("constant", 0.05, 50), **kw)
        rel = float((a.x - b.x).abs().max() / a.x.abs().max())
        if not rel <= 1e-9:
            raise AssertionError(f"{name}: SDE paths differ by {rel:.3g} (relative)")
        out.append(f"{name} {rel:.1e}")
    return "; ".join(out)


DDP_SCRIPT = r'''
import os, sys, json, gc, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from compsde.distributed import comm_hook
backend, device = sys.argv[1], sys.argv[2]
dist.init_process_group(backend)
out = {}
for name, kw in [("sign", {"aggregation": "majority"}), ("top-k", {"ratio": 0.1, "error_feedback": True}),
                 ("rand-k", {"ratio": 0.2})]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).to(device).double()
    teacher = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)).to(device).double()
    ddp = DDP(model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)
    state, hook = comm_hook(name, **kw)
    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.002 if name == "sign" else 0.05)
    x = torch.randn(512, 8, dtype=torch.float64, device=device)
    with torch.no_grad():
        y = teacher(x)
    first = float(((ddp(x) - y) ** 2).mean())
    for _ in range(200):
        opt.zero_grad(); ((ddp(x) - y) ** 2).mean().backward(); opt.step()
    last = float(((ddp(x) - y) ** 2).mean())
    out[name] = {"initial": first, "final": last, "wire_bytes_per_step": state.wire_bytes_per_step()}
gc.collect(); dist.barrier(); dist.destroy_process_group()
print(json.dumps(out))
'''


@check("DDP hook over NCCL trains a small model")
def check_ddp_hook(device: str) -> str:
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dev = "cuda:0" if device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "ddp.py"
        script.write_text(DDP_SCRIPT)
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0",
                   WORLD_SIZE="1", LOCAL_RANK="0")
        r = subprocess.run([sys.executable, str(script), backend, dev], capture_output=True, text=True, timeout=300, env=env)
    if r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for name, v in res.items():
        if not v["final"] < 0.5 * v["initial"]:
            raise AssertionError(f"{name}: loss {v['initial']:.4g} → {v['final']:.4g} did not halve")
    return "; ".join(f"{k} {v['initial']:.3g}→{v['final']:.3g}" for k, v in res.items())


@check("two-process NCCL run reproduces the CUDA simulator")
def check_two_process(device: str) -> str:
    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        return f"skipped: needs two CUDA devices, this machine has {torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    import tomllib

    from compsde.core.tensors import DTYPES
    from compsde.experiments import build, tomlio  # type: ignore[attr-defined]
    from compsde.sim import simulate

    cfg = {"run": {"steps": 30, "repeats": 8, "seed": 3, "log_every": 10, "device": "cuda"},
           "problem": {"name": "quadratic", "dim": 6, "rotate": True}, "noise": {"name": "gaussian", "scale": 0.5},
           "series": [{"method": "dcsgd", "compressor": "rand-k", "k": 2, "lr": 0.1, "workers": 2},
                      {"method": "dsignsgd", "lr": 0.05, "workers": 2}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(tomlio.dumps(cfg))
        r = subprocess.run([sys.executable, "-m", "compsde", "run", str(path), "--backend", "torch", "--workers", "2",
                            "--out", str(Path(tmp) / "o"), "--no-progress", "--no-plots"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise AssertionError(r.stderr[-2000:])
        summary = json.loads((Path(tmp) / "o" / "summary.json").read_text())
        exp = build.load(tomllib.loads(path.read_text()))
        for s, spec in zip(summary["series"], exp.series):
            ref = simulate(spec.oracle.to(DTYPES[exp.run["dtype"]], "cuda"), spec.algorithm, spec.schedule,
                           repeats=exp.run["repeats"], seed=exp.run["seed"], log_every=exp.run["log_every"])
            want = float(ref.loss[-1].mean())
            if not math.isclose(s["final"]["loss_mean"], want, rel_tol=1e-9):
                raise AssertionError(f"{s['label']}: {s['final']['loss_mean']} vs simulator {want}")
    return "NCCL world 2 equals the CUDA simulator"


@check("networks on the device: the same training and SDE drift as on the CPU")
def check_networks(device: str) -> str:
    from compsde import algorithms
    from compsde.algorithms.schedules import Schedule
    from compsde.objectives import Noise, problems
    from compsde.sde.models import from_algorithm
    from compsde.sim import simulate

    worst = {}
    for name, kw in (("mlp", {"hidden": [16]}), ("vit", {"patch": 4, "width": 16, "depth": 1})):
        net = problems.make(name, dataset="digits", **kw)
        for method, params in (("dcsgd", {"compressor": "rand-k", "ratio": 0.25}), ("ef", {"compressor": "top-k", "ratio": 0.1})):
            algo = algorithms.make(method, **params)
            o = net.oracle(Noise("gaussian", 0.01), workers=4, batch=8, dtype=torch.float64)
            a = simulate(o, algo, Schedule("constant", 0.05, 20), repeats=2, seed=3, log_every=10)
            b = simulate(o.to(torch.float64, device), algo, Schedule("constant", 0.05, 20), repeats=2, seed=3, log_every=10)
            rel = float((a.x - b.x).abs().max() / a.x.abs().max())
            worst[f"{name} {algo.label()}"] = rel
            if not rel <= 1e-6:  # float64, matrix products in another order on the device
                raise AssertionError(f"{name} {algo.label()}: relative difference {rel:.3g} > 1e-6")
        x = o.x0().unsqueeze(0)
        for method in ("dsgd", "dsignsgd"):
            m_cpu = from_algorithm(o, algorithms.make(method), 0.05).drift(x)
            m_dev = from_algorithm(o.to(torch.float64, device), algorithms.make(method), 0.05).drift(x.to(device))
            rel = float((m_cpu - m_dev.cpu()).abs().max() / m_cpu.abs().max())
            worst[f"{name} {method} SDE drift"] = rel
            if not rel <= 1e-6:
                raise AssertionError(f"{name} {method} SDE drift: relative difference {rel:.3g} > 1e-6")
    return f"max relative difference {max(worst.values()):.2e} over {len(worst)} comparisons"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="the device to check (default cuda; cpu for a dry run)")
    ap.add_argument("--out", default=None, help="also write the JSON summary to this file")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device on this machine: nothing to check (use --device cpu for a dry run)")
        return 0
    info = {"torch": torch.__version__, "device": args.device,
            "name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    print(json.dumps(info))
    for fn in (check_simulator, check_compressors, check_sde, check_networks, check_ddp_hook, check_two_process):
        fn(args.device)
    summary = {"info": info, "results": RESULTS}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if any(r["status"] == "failed" for r in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
