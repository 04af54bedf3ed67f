"""Local SGD's synchronisation schedules on a real bandwidth limit: the ``qsr`` preset's three series
(data parallel, constant H = 4, QSR) as two torch.distributed processes in two network namespaces
joined by a veth pair throttled to 1 Gbit/s.

Reports, per series: communication rounds and bytes relative to data parallel (from the runs' own
counters), and wall time per epoch (the series' training seconds from summary.json, scaled to one pass
over the training set: 4,000 MNIST digits / (2 workers × 32)). Needs root for ``ip netns`` and ``tc``;
without it the script says so and stops. The namespaces and the link are created and removed here
(also on failure).

Usage: python benchmarks/bench_local_sync.py [--steps 300] [--rate 1gbit]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import tomli_w

from compsde.experiments import presets

NS = ("cs_bench_a", "cs_bench_b")
VETH = ("cs_bva", "cs_bvb")
ADDR = ("10.77.0.1", "10.77.0.2")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def setup(rate: str) -> None:
    teardown()
    for ns in NS:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1])
    for ns, dev, addr in zip(NS, VETH, ADDR):
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb",
           "latency", "50ms")


def teardown() -> None:
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_series(cfg: dict, out: Path, port: int) -> dict:
    path = out.with_suffix(".toml")
    path.write_text(tomli_w.dumps(cfg))
    procs = []
    for rank, (ns, dev) in enumerate(zip(NS, VETH)):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": ADDR[0],
               "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": dev, "OMP_NUM_THREADS": "1"}
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "compsde", "run", str(path), "--backend", "torch",
               "--no-plots", "--no-progress", "--out", str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank failed:\n{logs[0][-2000:]}\n{logs[1][-2000:]}")
    summary = json.loads((out / "summary.json").read_text())["series"][0]
    with open(out / "metrics.csv", newline="", encoding="utf-8") as fh:
        col = list(csv.DictReader(fh))[-1]
    return {"label": summary["label"], "seconds": summary["seconds"], "rounds": int(col["comm_rounds"]),
            "bytes": float(col["bytes"]), "test_accuracy": summary["final"].get("test_accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="steps per series (default 300)")
    ap.add_argument("--rate", default="1gbit", help="the link's rate for tc tbf (default 1gbit)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("cannot build the throttled link: network namespaces and tc need root (run as root)")
        return
    base = tomllib.loads(presets.preset_text("qsr"))
    base["run"].update({"steps": args.steps, "repeats": 1, "log_every": args.steps})
    try:
        setup(args.rate)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        teardown()
        print(f"cannot build the throttled link ({getattr(e, 'stderr', '') or e}); nothing measured")
        return
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, series in enumerate(base["series"]):
                cfg = {**base, "series": [{**series, "workers": 2}]}
                results.append(run_series(cfg, Path(tmp) / f"s{i}", 29600 + i))
    finally:
        teardown()
    steps_per_epoch = 4000 / (2 * 32)
    dp = results[0]
    print(f"two processes in two network namespaces, veth throttled to {args.rate} (tc tbf); {args.steps} steps per "
          f"series, MLP d = 101,770, 2 workers × batch 32; one epoch = {steps_per_epoch:.1f} steps")
    print(f"{'series':<30}{'rounds':>8}{'× DP':>7}{'MB sent':>9}{'× DP':>7}{'s/epoch':>9}{'× DP':>7}{'test acc':>10}")
    for r in results:
        epoch = r["seconds"] / args.steps * steps_per_epoch
        dp_epoch = dp["seconds"] / args.steps * steps_per_epoch
        acc = "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        print(f"{r['label']:<30}{r['rounds']:>8}{r['rounds'] / dp['rounds']:>7.3f}{r['bytes'] / 1e6:>9.2f}"
              f"{r['bytes'] / dp['bytes']:>7.3f}{epoch:>9.2f}{epoch / dp_epoch:>7.2f}{acc:>10}")


if __name__ == "__main__":
    main()
