"""Local SGD's synchronisation schedules on a real bandwidth limit: the ``qsr`` preset's three series
(data parallel, constant H = 4, QSR) as two torch.distributed processes in two network namespaces
joined by a veth pair throttled to 1 Gbit/s (``compsde.distributed.netns``).

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
import tempfile
import tomllib
from pathlib import Path

import tomli_w

from compsde.distributed.launch import LaunchError, spawn
from compsde.distributed.netns import Wrap, bits_per_second, throttled_link, why_not
from compsde.experiments import presets


def run_series(cfg: dict, out: Path, wrap: Wrap) -> dict:
    """One series as 2 ranks of ``compsde run --backend torch`` joined by the throttled link."""
    path = out.with_suffix(".toml")
    path.write_text(tomli_w.dumps(cfg))
    spawn(2, ["-m", "compsde", "run", str(path), "--backend", "torch", "--no-plots", "--no-progress", "--out", str(out)],
          timeout=1800, wrap=wrap, jobdir=out.with_name(out.name + "-job"))
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
    bits_per_second(args.rate, "--rate")
    why = why_not()
    if why:
        print(f"cannot build the throttled link: {why}")
        return
    base = tomllib.loads(presets.preset_text("qsr"))
    base["run"].update({"steps": args.steps, "repeats": 1, "log_every": args.steps})
    results = []
    try:
        with throttled_link(args.rate) as wrap, tempfile.TemporaryDirectory() as tmp:
            for i, series in enumerate(base["series"]):
                cfg = {**base, "series": [{**series, "workers": 2}]}
                results.append(run_series(cfg, Path(tmp) / f"s{i}", wrap))
    except LaunchError as e:
        print(f"{e}; nothing measured")
        return
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
