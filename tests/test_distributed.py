"""Real multi-process runs: gloo groups of 1–4 processes on loopback.

Local launches rendezvous through a FileStore in a fresh temporary directory (no TCP port is chosen;
gloo binds ephemeral ports), and torchrun runs use ``--standalone`` (it binds port 0), so parallel
test runs cannot collide. Every launch has a deadline (``subprocess`` timeouts, and ``signal.alarm``
around in-process launches), so no test can hang.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from compsde.core.tensors import DTYPES
from compsde.distributed import checkpoint as ckpt_mod
from compsde.experiments import build as config
from compsde.experiments.torch_backend import run as run_torch
from compsde.sim import simulate
from cases import CASES as SIM_CASES

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")

# Every method and every compressor family (the simulator's own list, so a case added there is checked
# here too), plus a composition with replayed rand-k indices, a summable composition and EF around an
# unbiased random compressor.
CASES = SIM_CASES + [
    ("dcsgd", {"compressor": "rand-k+qsgd", "k": 4, "levels": 3}),
    ("dcsgd", {"compressor": "rand-k+identity", "k": 3, "shared": True}),
    ("ef", {"compressor": "rand-k", "k": 2}),
]


@pytest.fixture(autouse=True)
def _deadline():
    """In-process launches (``compsde.distributed.run``) wait on child processes: fail, not hang."""
    def boom(*_):
        raise TimeoutError("distributed test exceeded its 240 s deadline")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(240)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                                            "LOCAL_RANK", "COMPSDE_INIT_METHOD", "COMPSDE_TEST_FAULT")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **extra)
    return env


def _cli(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compsde", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(**env), cwd=ROOT)


def _series(workers: int, *, steps_lr: float = 0.1) -> list[dict]:
    out = []
    for i, (m, p) in enumerate(CASES):
        out.append({"method": m, "lr": steps_lr, "schedule": "cosine", "workers": workers, "label": f"s{i} {m}",
                    **p})
    # Diverging series: the divergence rule must freeze the same repetitions at the same step.
    out.append({"method": "dsgd", "lr": 4.5, "workers": workers, "label": "diverging dsgd"})
    out.append({"method": "ef", "compressor": "top-k", "k": 2, "lr": 4.5, "workers": workers, "label": "diverging ef"})
    # Heavy-tailed noise with one scale per worker.
    out.append({"method": "dsignsgd", "lr": 0.05, "workers": workers, "label": "student-t per-worker",
                "noise": {"name": "student-t", "nu": 2.0, "scale": [0.3 + 0.2 * j for j in range(workers)]}})
    return out


def _config(series: list[dict], *, steps: int = 10, dtype: str = "float64", repeats: int = 3) -> dict:
    return {
        "run": {"steps": steps, "repeats": repeats, "seed": 3, "log_every": 4, "dtype": dtype},
        "problem": {"name": "quadratic", "dim": 6, "rotate": True, "heterogeneity": 1.0},
        "noise": {"name": "gaussian", "scale": 0.5},
        "series": series,
    }


def _assert_matches_simulator(exp, traces, tol: float) -> None:
    run = exp.run
    for spec, tr in zip(exp.series, traces):
        ref = simulate(spec.oracle.to(DTYPES[run["dtype"]]), spec.algorithm, spec.schedule, repeats=run["repeats"],
                       seed=run["seed"], log_every=run["log_every"])
        # Same streams, same arithmetic, same aggregation: equal in practice; the tolerance only
        # allows for the all-reduce summing the summable payloads in another order.
        torch.testing.assert_close(tr.x, ref.x, rtol=tol, atol=tol, msg=lambda m: f"{spec.label}: {m}")
        torch.testing.assert_close(tr.loss, ref.loss, rtol=tol, atol=tol, msg=lambda m: f"{spec.label}: {m}")
        torch.testing.assert_close(tr.compression_error, ref.compression_error, rtol=1e-9, atol=1e-12, equal_nan=True,
                                   msg=lambda m: f"{spec.label}: {m}")
        assert torch.equal(tr.diverged_step, ref.diverged_step), spec.label
        assert torch.equal(tr.steps, ref.steps) and torch.equal(tr.bits, ref.bits), spec.label


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_torch_backend_reproduces_the_simulator(tmp_path, workers):
    series = _series(workers)
    if workers == 4:
        # Fewer workers than processes: those series run on a subgroup while the other ranks wait.
        series += [{"method": "dcsgd", "compressor": "rand-k", "k": 2, "lr": 0.1, "workers": 2, "label": "sub 2"},
                   {"method": "dsignsgd-majority", "lr": 0.05, "workers": 3, "label": "sub 3"},
                   {"method": "dsgd", "lr": 0.1, "workers": 1, "label": "sub 1"}]
    exp = config.build(config.resolve(_config(series)), "equivalence")
    res = run_torch(exp, tmp_path / "out", workers=workers, timeout=30, progress=False, plots=False)
    _assert_matches_simulator(exp, res.traces, tol=1e-12)
    diverged = {s.label: int((t.diverged_step >= 0).sum()) for s, t in zip(exp.series, res.traces)}
    assert diverged["diverging dsgd"] == 3 and diverged["diverging ef"] == 3  # the rule was exercised


def test_float32_runs_match_the_float32_simulator(tmp_path):
    series = [{"method": "dcsgd", "compressor": c, "lr": 0.1, "workers": 2, **p}
              for c, p in [("natural", {}), ("qsgd", {"levels": 4}), ("top-k", {"k": 2}), ("rand-k", {"k": 3})]]
    series += [{"method": "dsignsgd", "lr": 0.05, "workers": 2}, {"method": "ef", "compressor": "scaled-sign", "lr": 0.1, "workers": 2}]
    exp = config.build(config.resolve(_config(series, dtype="float32")), "f32")
    res = run_torch(exp, tmp_path / "out", timeout=30, progress=False, plots=False)
    assert all(t.x.dtype == torch.float32 for t in res.traces)
    _assert_matches_simulator(exp, res.traces, tol=1e-6)


def test_cli_writes_the_simulator_files_plus_wire_bytes(tmp_path):
    cfg = _config([{"method": "dsignsgd", "lr": 0.05, "workers": 2},
                   {"method": "dcsgd", "compressor": "rand-k", "k": 3, "lr": 0.1, "workers": 2}], steps=8)
    path = tmp_path / "c.toml"
    path.write_text(config.dumps(config.resolve(cfg)))
    r = _cli(["run", str(path), "--backend", "torch", "--workers", "2", "--out", str(tmp_path / "t"), "--no-progress"])
    assert r.returncode == 0, r.stderr
    s = _cli(["run", str(path), "--out", str(tmp_path / "s"), "--no-progress"])
    assert s.returncode == 0, s.stderr
    t_files = {p.name for p in (tmp_path / "t").iterdir()}
    s_files = {p.name for p in (tmp_path / "s").iterdir()}
    assert s_files <= t_files and not [f for f in t_files if f.endswith(".tmp")]
    # Same iterates, so the same per-step numbers (the compression error up to summation order).
    t_rows = (tmp_path / "t" / "metrics.csv").read_text().splitlines()
    s_rows = (tmp_path / "s" / "metrics.csv").read_text().splitlines()
    assert t_rows[0] == s_rows[0] and len(t_rows) == len(s_rows)
    head = t_rows[0].split(",")
    for a, b in zip(t_rows[1:], s_rows[1:]):
        for col, u, v in zip(head, a.split(","), b.split(",")):
            if col == "compression_error" and u and v:
                assert math.isclose(float(u), float(v), rel_tol=1e-9), (col, u, v)
            else:
                assert u == v, (col, u, v)
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["backend"]["world_size"] == 2
    for s in summary["series"]:
        keys = list(s)
        assert keys.index("wire_bytes_per_worker_per_step") == keys.index("bits_per_worker_per_step") + 1
    sign, randk = summary["series"]
    assert sign["collective"] == "all_gather" and randk["collective"] == "all_gather"
    # 3 repetitions × 6 signs = 18 bits → 3 bytes, padded to 8: 8/3 bytes per repetition.
    assert sign["wire_bytes_per_worker_per_step_all_repeats"] == 8
    # rand-k: 3 float64 values per repetition, no indices (the receivers replay the sender's stream).
    assert randk["wire_bytes_per_worker_per_step"] == 3 * 8


def test_wire_bytes_are_measured_per_step_and_sign_costs_d_over_8(tmp_path):
    d = 4_001
    comps = [("sign", {}), ("scaled-sign", {}), ("identity", {}), ("rand-k", {"ratio": 0.01}),
             ("rand-k", {"ratio": 0.01, "shared": True}), ("top-k", {"ratio": 0.01}), ("natural", {}),
             ("qsgd", {"levels": 4}), ("top-k+natural", {"ratio": 0.01})]
    series = [{"method": "dcsgd", "compressor": c, "lr": 0.01, "workers": 2, **p} for c, p in comps]
    cfg = {"run": {"steps": 3, "repeats": 1, "seed": 0, "log_every": 3, "dtype": "float32"},
           "problem": {"name": "quadratic", "dim": d}, "noise": {"name": "gaussian", "scale": 0.1}, "series": series}
    exp = config.build(config.resolve(cfg), "bytes")
    res = run_torch(exp, tmp_path / "out", timeout=30, progress=False, plots=False)
    got = {repr(s.algorithm.compressor): o for s, o in zip(exp.series, res.outcomes)}
    sign = got["sign()"]
    assert sign.collective == "all_gather"
    assert sign.timings["calls"] == 3  # measured on every step
    assert math.ceil(d / 8) <= sign.wire_bytes_per_step <= d / 8 + 8  # d/8 + a constant (alignment)
    assert got["scaled-sign()"].wire_bytes_per_step <= d / 8 + 4 + 8
    assert got["identity()"].wire_bytes_per_step == 4 * d and got["identity()"].collective == "all_reduce"
    k = round(0.01 * d)
    assert got["rand-k(ratio=0.01)"].wire_bytes_per_step == 4 * k  # values only: indices are replayed
    shared = got["rand-k(ratio=0.01, shared=True)"]
    assert shared.collective == "all_reduce" and shared.wire_bytes_per_step == 4 * k
    for spec in exp.series:  # float32 runs send what the compressor declares, up to byte padding
        o = got[repr(spec.algorithm.compressor)]
        declared = spec.algorithm.compressor.bits(d) / 8
        assert declared <= o.wire_bytes_per_step <= declared + 40, (spec.label, declared, o.wire_bytes_per_step)


def _faulty_run(tmp_path, method: str, fault: str, timeout: str) -> tuple[subprocess.CompletedProcess, float]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": method, "lr": 0.05, "workers": 2}], steps=50))))
    t0 = time.monotonic()
    r = _cli(["run", str(cfg), "--backend", "torch", "--out", str(tmp_path / "o"), "--no-progress", "--no-plots",
              "--timeout", timeout], timeout=90, COMPSDE_TEST_FAULT=fault)
    return r, time.monotonic() - t0


def test_killed_worker_fails_the_run_fast_and_names_the_rank(tmp_path):
    r, took = _faulty_run(tmp_path, "dsignsgd", "kill:1@3", timeout="10")
    assert r.returncode not in (0, None)
    assert "rank 1 killed by signal SIGKILL" in r.stderr, r.stderr
    assert "rank 1 did not respond" in r.stderr  # rank 0's own report, from the store
    assert took < 60, took


def test_hung_worker_times_out_and_is_named(tmp_path):
    r, took = _faulty_run(tmp_path, "dsgd", "hang:1@2", timeout="2")
    assert r.returncode not in (0, None)
    assert "rank 1 hung" in r.stderr, r.stderr
    assert "Timed out" in r.stderr  # rank 0's collective hit the user's timeout
    assert took < 60, took


def test_mismatched_configuration_is_detected_at_start(tmp_path):
    """Two ranks joined by hand (as under torchrun: RANK/WORLD_SIZE set) with different configs."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsgd", "lr": 0.05, "workers": 2}], steps=5))))
    store = Path(tempfile.mkdtemp(prefix="compsde-test-")) / "store"
    try:
        procs = []
        for rank, extra in ((0, []), (1, ["--set", "run.seed=4"])):
            env = _env(RANK=str(rank), WORLD_SIZE="2", COMPSDE_INIT_METHOD=f"file://{store}")
            procs.append(subprocess.Popen([sys.executable, "-m", "compsde", "run", str(cfg), "--backend", "torch",
                                           "--out", str(tmp_path / "o"), "--no-progress", "--timeout", "20", *extra],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(store.parent, ignore_errors=True)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 2, err
        assert "configuration differs across ranks: rank 1 differs from rank 0" in err, err
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_resumed_run_ends_with_the_same_iterates(tmp_path):
    series = [{"method": "ef", "compressor": "top-k", "k": 2, "lr": 0.1, "workers": 2},
              {"method": "dcsgd", "compressor": "rand-k", "k": 3, "lr": 0.1, "workers": 2},
              {"method": "dsignsgd-majority", "lr": 0.05, "workers": 2}]
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config(series, steps=12))))
    base = ["run", str(cfg), "--backend", "torch", "--no-progress", "--no-plots", "--timeout", "10"]
    full = _cli([*base, "--out", str(tmp_path / "full"), "--checkpoint-every", "100"])
    assert full.returncode == 0, full.stderr
    # Killed in the middle of series 1 (EF memory of series 0 done, rand-k replay state mid-series).
    cut = _cli([*base, "--out", str(tmp_path / "cut"), "--checkpoint-every", "5"], COMPSDE_TEST_FAULT="kill:1@8/1")
    assert cut.returncode != 0 and "rank 1 killed" in cut.stderr, cut.stderr
    ck = ckpt_mod.load(tmp_path / "cut")
    assert ck["current"]["series"] == 1 and ck["current"]["step"] == 5
    # rank 1 holds every worker's compressor stream (it replays rank 0's rand-k indices): 2 noise +
    # compressor streams of its own and rank 0's + the shared one
    assert len(ck["current"]["ranks"][1]["loop"]["streams"]) == 4
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.endswith(".tmp")]  # atomic writes
    # Also a checkpoint taken mid-series with EF memory: resume from that one in another copy.
    res = _cli(["run", str(cfg), "--backend", "torch", "--no-progress", "--no-plots", "--resume", str(tmp_path / "cut"),
                "--checkpoint-every", "5"])
    assert res.returncode == 0, res.stderr
    a = ckpt_mod.load(tmp_path / "full")
    b = ckpt_mod.load(tmp_path / "cut")
    assert a["current"] is None and b["current"] is None
    for x, y in zip(a["completed"], b["completed"], strict=True):
        assert torch.equal(x["trace"]["x"], y["trace"]["x"])
        assert torch.equal(x["trace"]["loss"], y["trace"]["loss"])
    assert (tmp_path / "full" / "metrics.csv").read_text() == (tmp_path / "cut" / "metrics.csv").read_text()
    # A checkpoint only resumes the configuration that wrote it (checked before anything starts).
    other = _cli([*base, "--resume", str(tmp_path / "full"), "--set", "run.seed=9"])
    assert other.returncode == 2 and "written for another configuration" in other.stderr, other.stderr


def test_resume_mid_series_with_error_feedback_memory(tmp_path):
    series = [{"method": "ef", "compressor": "scaled-sign", "lr": 0.1, "workers": 2}]
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config(series, steps=12))))
    base = ["run", str(cfg), "--backend", "torch", "--no-progress", "--no-plots", "--timeout", "10", "--checkpoint-every", "4"]
    assert _cli([*base, "--out", str(tmp_path / "full")]).returncode == 0
    cut = _cli([*base, "--out", str(tmp_path / "cut")], COMPSDE_TEST_FAULT="kill:0@6")
    assert cut.returncode != 0
    ck = ckpt_mod.load(tmp_path / "cut")
    cur = ck["current"]
    assert cur["step"] == 4 and all(r["loop"]["state"]["ef"].abs().sum() > 0 for r in cur["ranks"])  # EF memory per rank
    assert _cli(["run", str(cfg), "--backend", "torch", "--no-progress", "--no-plots", "--checkpoint-every", "4",
                 "--resume", str(tmp_path / "cut" / "checkpoint.pt")]).returncode == 0
    a, b = ckpt_mod.load(tmp_path / "full"), ckpt_mod.load(tmp_path / "cut")
    assert torch.equal(a["completed"][0]["trace"]["x"], b["completed"][0]["trace"]["x"])


def test_bad_backend_options_are_refused_without_launching(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsgd", "lr": 0.05, "workers": 2}], steps=4))))
    r = _cli(["run", str(cfg), "--backend", "torch", "--workers", "3"])
    assert r.returncode == 2 and "--workers 3 does not match" in r.stderr and "largest series has workers (2" in r.stderr
    r = _cli(["run", str(cfg), "--checkpoint-every", "3"])
    assert r.returncode == 2 and "only apply to --backend torch" in r.stderr
    r = _cli(["run", str(cfg), "--backend", "torch", "--timeout", "0"])
    assert r.returncode == 2 and "--timeout must be" in r.stderr
    r = _cli(["run", str(cfg), "--backend", "torch", "--resume", str(tmp_path / "nowhere")])
    assert r.returncode == 2 and "no checkpoint file" in r.stderr


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_cli_joins_the_group_under_torchrun(tmp_path):
    """The same command under torchrun (RANK, WORLD_SIZE, MASTER_ADDR set by it) joins its group."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsignsgd-majority", "lr": 0.05, "workers": 2}],
                                                       steps=6))))
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "compsde", "run", str(cfg),
                        "--backend", "torch", "--out", str(tmp_path / "o"), "--no-progress", "--no-plots"],
                       capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote") == 1  # only rank 0 writes
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    exp = config.load(cfg)
    spec = exp.series[0]
    ref = simulate(spec.oracle, spec.algorithm, spec.schedule, repeats=exp.run["repeats"], seed=exp.run["seed"],
                   log_every=exp.run["log_every"])
    assert math.isclose(summary["series"][0]["final"]["loss_mean"], float(ref.loss[-1].mean()), rel_tol=1e-12)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
@pytest.mark.parametrize("args", [["--compressor", "sign", "--aggregation", "majority"],
                                  ["--compressor", "top-k", "--ratio", "0.05", "--error-feedback"]],
                         ids=["sign-majority", "topk-ef"])
def test_ddp_hook_trains_a_model_under_torchrun(args):
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(ROOT / "examples" / "ddp_train.py"),
                        *args, "--steps", "150", "--log-every", "1000"],
                       capture_output=True, text=True, timeout=150, env=_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["replicas_identical"]
    assert out["final_loss"] < 0.2 * out["initial_loss"], out
    p = out["params"]
    if "sign" in args:
        assert math.ceil(p / 8) <= out["wire_bytes_per_step"] <= p / 8 + 8  # bit-packed signs
    else:
        declared = out["declared_bits_per_step"] / 8
        assert declared <= out["wire_bytes_per_step"] <= declared + 16
    assert out["wire_bytes_per_step"] < out["fp32_bytes_per_step"] / 10
