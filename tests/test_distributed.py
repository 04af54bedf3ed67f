"""Real multi-process runs: gloo groups of 1–4 processes on loopback.

Local launches rendezvous through a FileStore in a fresh temporary directory (no TCP port is chosen;
gloo binds ephemeral ports), and torchrun runs use ``--standalone`` (it binds port 0), so parallel
test runs cannot collide. Every launch has a deadline (``subprocess`` timeouts, and ``signal.alarm``
around in-process launches), so no test can hang.

Each process start imports torch (1.5–3 s on 2 cores), so the tests launch as few as they can: the
command line runs in this process (``cli.main``) unless the test needs it in a process of its own
(signals, torchrun), options that are refused before any launch are checked without one, and checks
that can share a launch do. The example script under torchrun is marked slow (``pytest -m slow``);
the hook's configurations are checked in one local launch.
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
from cases import CASES as SIM_CASES

from compsde.core.tensors import DTYPES
from compsde.distributed import checkpoint as ckpt_mod
from compsde.experiments import build as config
from compsde.experiments.torch_backend import run as run_torch
from compsde.sim import simulate

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
        def msg(m: str, label: str = spec.label) -> str:
            return f"{label}: {m}"

        torch.testing.assert_close(tr.x, ref.x, rtol=tol, atol=tol, msg=msg)
        torch.testing.assert_close(tr.loss, ref.loss, rtol=tol, atol=tol, msg=msg)
        torch.testing.assert_close(tr.compression_error, ref.compression_error, rtol=1e-9, atol=1e-12, equal_nan=True, msg=msg)
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


def test_float32_runs_match_the_float32_simulator_and_send_the_declared_bytes(tmp_path):
    """One float32 launch: small series against the float32 simulator, and (d = 4001, 3 steps) the bytes
    handed to the collectives against what each compressor declares."""
    series = [{"method": "dcsgd", "compressor": c, "lr": 0.1, "workers": 2, **p}
              for c, p in [("natural", {}), ("qsgd", {"levels": 4}), ("top-k", {"k": 2}), ("rand-k", {"k": 3})]]
    series += [{"method": "dsignsgd", "lr": 0.05, "workers": 2}, {"method": "ef", "compressor": "scaled-sign", "lr": 0.1, "workers": 2}]
    d = 4_001
    comps = [("sign", {}), ("scaled-sign", {}), ("identity", {}), ("rand-k", {"ratio": 0.01}),
             ("rand-k", {"ratio": 0.01, "shared": True}), ("top-k", {"ratio": 0.01}), ("natural", {}),
             ("qsgd", {"levels": 4}), ("top-k+natural", {"ratio": 0.01})]
    first_wire = len(series)
    series += [{"method": "dcsgd", "compressor": c, "lr": 0.01, "workers": 2, "steps": 3, "label": f"wire {c} {p}",
                "problem": {"dim": d, "rotate": False, "heterogeneity": 0.0}, **p} for c, p in comps]
    exp = config.build(config.resolve(_config(series, dtype="float32")), "f32")
    res = run_torch(exp, tmp_path / "out", timeout=30, progress=False, plots=False)
    assert all(t.x.dtype == torch.float32 for t in res.traces)
    _assert_matches_simulator(exp, res.traces, tol=1e-6)

    repeats = exp.run["repeats"]
    got = {repr(s.algorithm.compressor): o for s, o in zip(exp.series[first_wire:], res.outcomes[first_wire:])}
    sign = got["sign()"]
    assert sign.collective == "all_gather"
    assert sign.timings["calls"] == 3  # measured on every step
    # per repetition: d/8 bytes + a constant (alignment of the repetitions' rows, shared between them)
    assert math.ceil(d / 8) <= sign.wire_bytes_per_step_per_repeat <= d / 8 + 8
    assert sign.wire_bytes_per_step == sign.wire_bytes_per_step_per_repeat * repeats
    assert got["scaled-sign()"].wire_bytes_per_step_per_repeat <= d / 8 + 4 + 8
    ident = got["identity()"]
    assert ident.wire_bytes_per_step_per_repeat == 4 * d and ident.collective == "all_reduce"
    k = round(0.01 * d)
    assert got["rand-k(ratio=0.01)"].wire_bytes_per_step_per_repeat == 4 * k  # values only: indices are replayed
    shared = got["rand-k(ratio=0.01, shared=True)"]
    assert shared.collective == "all_reduce" and shared.wire_bytes_per_step_per_repeat == 4 * k
    for spec in exp.series[first_wire:]:  # float32 runs send what the compressor declares, up to byte padding
        o = got[repr(spec.algorithm.compressor)]
        declared = spec.algorithm.compressor.bits(d) / 8
        assert declared <= o.wire_bytes_per_step_per_repeat <= declared + 40, (spec.label, declared, o)


def _main(args: list[str], capfd) -> tuple[int, str, str]:
    """``compsde ARGS`` in this process (its launched ranks write to the same file descriptors)."""
    from compsde.experiments import cli

    capfd.readouterr()
    code = cli.main(args)
    out, err = capfd.readouterr()
    return code, out, err


def _assert_same_metrics(torch_dir: Path, sim_dir: Path) -> None:
    """Same iterates, so the same per-step numbers in metrics.csv (the compression error up to summation order)."""
    t_rows = (torch_dir / "metrics.csv").read_text().splitlines()
    s_rows = (sim_dir / "metrics.csv").read_text().splitlines()
    assert t_rows[0] == s_rows[0] and len(t_rows) == len(s_rows)
    head = t_rows[0].split(",")
    for a, b in zip(t_rows[1:], s_rows[1:]):
        for col, u, v in zip(head, a.split(","), b.split(",")):
            if col == "compression_error" and u and v:
                assert math.isclose(float(u), float(v), rel_tol=1e-9), (col, u, v)
            else:
                assert u == v, (col, u, v)


def test_cli_writes_the_simulator_files_plus_wire_bytes(tmp_path, capfd):
    cfg = _config([{"method": "dsignsgd", "lr": 0.05, "workers": 2},
                   {"method": "dcsgd", "compressor": "rand-k", "k": 3, "lr": 0.1, "workers": 2}], steps=8)
    path = tmp_path / "c.toml"
    path.write_text(config.dumps(config.resolve(cfg)))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "summary.json").write_text("{}")  # an earlier run's output: replaced
    (tmp_path / "t" / "notes.txt").write_text("mine")  # the user's own file: kept
    # No --workers: the largest series' workers (2).
    code, out, err = _main(["run", str(path), "--backend", "torch", "--out", str(tmp_path / "t"), "--no-progress"], capfd)
    assert code == 0, err
    lines = out.strip().splitlines()  # the folder, then each series' final numbers, as the simulator's run prints
    assert lines[0] == f"wrote {tmp_path / 't'}" and len(lines) == 3 and all("final loss mean" in x for x in lines[1:])
    rec = json.loads((tmp_path / "t" / "run.json").read_text())
    assert rec["backend"] == "torch" and rec["status"] == "completed" and rec["started"] and rec["ended"]
    assert rec["versions"]["torch"] == torch.__version__ and (tmp_path / "t" / "notes.txt").read_text() == "mine"
    # the run folder set up as the simulator's (runner.start_run), with the command that re-runs it
    assert (tmp_path / "t" / "config.toml").read_text().startswith(
        "# compsde resolved config (config); re-run with: compsde run config.toml --backend torch --workers 2")
    (tmp_path / "t" / "notes.txt").unlink()
    code, _, err = _main(["run", str(path), "--out", str(tmp_path / "s"), "--no-progress", "--no-plots"], capfd)
    assert code == 0, err
    t_files = {p.name for p in (tmp_path / "t").iterdir()}
    s_files = {p.name for p in (tmp_path / "s").iterdir()}
    assert s_files <= t_files and not [f for f in t_files if f.endswith(".tmp")] and "report.html" in t_files
    assert any(f.endswith(".png") for f in t_files)  # the simulator's plots, from the torch backend's results
    _assert_same_metrics(tmp_path / "t", tmp_path / "s")
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["backend"] == {"name": "torch", "dist_backend": "gloo", "world_size": 2}  # CPU: gloo
    for s in summary["series"]:
        keys = list(s)
        assert keys.index("wire_bytes_per_worker_per_step") == keys.index("bits_per_worker_per_step") + 1
    sign, randk = summary["series"]
    assert sign["collective"] == "all_gather" and randk["collective"] == "all_gather"
    # 3 repetitions × 6 signs = 18 bits → 3 bytes, padded to 8: 8/3 bytes per repetition.
    assert sign["wire_bytes_per_worker_per_step_all_repeats"] == 8
    # rand-k: 3 float64 values per repetition, no indices (the receivers replay the sender's stream).
    assert randk["wire_bytes_per_worker_per_step"] == 3 * 8


def test_dist_backend_follows_the_device():
    from compsde.distributed.launch import LaunchError, dist_backend_for, rank_device

    assert dist_backend_for("cpu") == "gloo" and dist_backend_for(torch.device("cpu")) == "gloo"
    assert dist_backend_for("cuda") == "nccl" and dist_backend_for("cuda:1") == "nccl"
    assert dist_backend_for(torch.device("cuda", 0)) == "nccl"
    assert rank_device("cpu", 3) == torch.device("cpu")
    assert rank_device("cuda", 1, count=2) == torch.device("cuda", 1)  # one GPU per rank
    assert rank_device("cuda:0", 1, count=2) == torch.device("cuda", 0)  # an explicit GPU is kept
    with pytest.raises(LaunchError, match="local rank 2 has no GPU"):
        rank_device("cuda", 2, count=2)


def test_hung_rank_is_named_while_another_rank_sits_out_the_series(tmp_path, capfd, monkeypatch):
    """World 3; series 1 runs on ranks 0 and 1 (a subgroup) while rank 2 waits; rank 1 hangs there.
    Rank 0's collective on the subgroup must time out after --timeout (not the 30 minutes of
    new_group's default), and the idle rank must stop too."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsgd", "lr": 0.05, "workers": 3},
                                                        {"method": "dsignsgd", "lr": 0.05, "workers": 2}], steps=20))))
    monkeypatch.setenv("COMPSDE_TEST_FAULT", "hang:1@2/1")
    t0 = time.monotonic()
    code, _, err = _main(["run", str(cfg), "--backend", "torch", "--out", str(tmp_path / "o"), "--no-progress",
                          "--no-plots", "--timeout", "3"], capfd)
    took = time.monotonic() - t0
    assert code not in (0, None)
    assert "rank 1 hung" in err, err
    assert "Timed out" in err  # rank 0's collective hit the user's timeout
    assert "rank 1 did not respond" in err  # rank 0's own report, from the store
    assert "ranks 0, 2 stopped because of it" in err, err  # the idle rank left as well
    assert took < 30, took


def test_idle_ranks_stop_when_a_lone_worker_stalls():
    """A series of one worker has no collective to time out: the idle ranks watch rank 0's heartbeat
    and stop, naming it, when it has not moved for the timeout (here with an in-memory store)."""
    import threading

    import torch.distributed as dist

    from compsde.distributed.backend import Heartbeat, wait_idle
    from compsde.distributed.launch import Context, LaunchError

    def leader(store, seconds: float, then_done: bool) -> threading.Thread:
        """Rank 0 making steps for ``seconds``, then ending the series or hanging."""
        beat = Heartbeat(Context(0, 2, store, timeout=0.4), 5)

        def steps() -> None:
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                beat(1)
                time.sleep(0.02)
            if then_done:
                store.set("compsde/series/5/done", "1")

        t = threading.Thread(target=steps)
        t.start()
        return t

    store = dist.HashStore()
    idle = Context(1, 2, store, timeout=0.4)
    t0 = time.monotonic()
    worker = leader(store, 1.0, then_done=False)  # 1 s of steps (longer than the timeout), then it hangs
    with pytest.raises(LaunchError, match=r"rank 0 made no progress in series 5 \(one worker\) for 0.4 s"):
        wait_idle(idle, 5, stall=0.4, poll=0.01)
    worker.join()
    assert 1.0 < time.monotonic() - t0 < 5
    assert idle.failed_ranks() == [1]  # the other ranks learn it through the store

    store = dist.HashStore()
    worker = leader(store, 1.0, then_done=True)  # steps, then the series ends: no failure
    wait_idle(Context(1, 2, store, timeout=0.4), 5, stall=0.4, poll=0.01)
    worker.join()


def test_dead_idle_rank_is_named_and_finished_series_are_written(tmp_path, capfd, monkeypatch):
    """World 2: series 0 runs on both ranks, series 1 on rank 0 alone; rank 1 is killed while it waits.
    The healthy rank 0 (no collective tells it) is stopped by the launcher after the grace time: the
    message blames rank 1, not rank 0; and metrics.csv keeps series 0, which had finished."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([
        {"method": "dsgd", "lr": 0.05, "workers": 2, "label": "both", "steps": 5},
        {"method": "dsgd", "lr": 0.05, "workers": 1, "label": "alone", "steps": 10_000_000}]))))
    monkeypatch.setenv("COMPSDE_TEST_FAULT", "kill:1@0/1")  # rank 1, as it starts waiting for series 1
    t0 = time.monotonic()
    code, _, err = _main(["run", str(cfg), "--backend", "torch", "--out", str(tmp_path / "o"), "--no-progress",
                          "--no-plots", "--timeout", "1"], capfd)
    assert code not in (0, None)
    assert "rank 1 killed by signal SIGKILL" in err, err
    assert "rank 0 was still running (3 s after rank 1 failed; terminated)" in err and "hung" not in err, err
    assert time.monotonic() - t0 < 40
    rows = (tmp_path / "o" / "metrics.csv").read_text().splitlines()
    step = rows[0].split(",").index("step")
    # series 0's logged steps (log_every 4, and the last), nothing of series 1
    assert [(r.split(",")[0], r.split(",")[step]) for r in rows[1:]] == [("both", "0"), ("both", "4"), ("both", "5")]
    assert json.loads((tmp_path / "o" / "run.json").read_text())["status"].startswith("failed")
    report = (tmp_path / "o" / "report.html").read_text()  # the failed run's page: the rows it wrote
    assert "The run failed: LaunchError" in report and "last logged row" in report


@pytest.mark.slow
def test_hung_lone_worker_is_named(tmp_path, capfd, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsgd", "lr": 0.05, "workers": 2},
                                                        {"method": "dsgd", "lr": 0.05, "workers": 1}], steps=20))))
    monkeypatch.setenv("COMPSDE_TEST_FAULT", "hang:0@2/1")
    t0 = time.monotonic()
    code, _, err = _main(["run", str(cfg), "--backend", "torch", "--out", str(tmp_path / "o"), "--no-progress",
                          "--no-plots", "--timeout", "2"], capfd)
    assert code not in (0, None)
    assert "rank 0 made no progress in series 1" in err and "rank 0 hung" in err, err
    assert time.monotonic() - t0 < 30


def test_killed_rank_is_named_and_the_run_resumes_with_the_same_iterates(tmp_path, capfd, monkeypatch):
    """A rank killed mid-series fails the run fast, naming it; the run resumes from the checkpoint
    (EF memory and replayed rand-k streams mid-series) and ends with the simulator's iterates."""
    series = [{"method": "dsignsgd-majority", "lr": 0.05, "workers": 2, "label": "majority"},
              {"method": "ef", "compressor": "rand-k", "k": 2, "lr": 0.1, "workers": 2, "label": "ef rand-k"},
              {"method": "dcsgd", "compressor": "top-k", "k": 2, "lr": 0.1, "workers": 2, "label": "top-k"}]
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config(series, steps=12))))
    base = ["run", str(cfg), "--backend", "torch", "--no-progress", "--no-plots", "--timeout", "10",
            "--checkpoint-every", "5"]
    cut = tmp_path / "cut"
    monkeypatch.setenv("COMPSDE_TEST_FAULT", "kill:1@8/1")  # mid-series 1, after the checkpoint at step 5
    t0 = time.monotonic()
    code, _, err = _main([*base, "--out", str(cut), "--workers", "2"], capfd)
    assert code not in (0, None)
    assert "rank 1 killed by signal SIGKILL" in err, err
    assert "rank 1 did not respond" in err  # rank 0's own report, from the store
    assert time.monotonic() - t0 < 60
    monkeypatch.delenv("COMPSDE_TEST_FAULT")
    ck = ckpt_mod.load(cut)
    assert len(ck["completed"]) == 1
    cur = ck["current"]
    assert cur["series"] == 1 and cur["step"] == 5
    assert all(r["loop"]["state"]["ef"].abs().sum() > 0 for r in cur["ranks"])  # EF memory, per rank
    # rank 1 holds every worker's compressor stream (it replays rank 0's rand-k indices): its noise and
    # compressor streams, rank 0's compressor stream and the shared one
    assert len(cur["ranks"][1]["loop"]["streams"]) == 4
    assert not [p for p in cut.iterdir() if p.name.endswith(".tmp")]  # atomic writes

    # A checkpoint only resumes the configuration that wrote it (checked before anything starts).
    code, _, err = _main([*base, "--resume", str(cut), "--set", "run.seed=9"], capfd)
    assert code == 2 and "written for another configuration" in err, err

    code, out, err = _main([*base, "--resume", str(cut / "checkpoint.pt")], capfd)
    assert code == 0, err
    assert out.splitlines()[0] == f'resumed from {cut / "checkpoint.pt"} at series 1 ("ef rand-k") step 5 of 12'
    ck = ckpt_mod.load(cut)
    assert ck["current"] is None and len(ck["completed"]) == 3
    exp = config.load(cfg)
    traces = [ckpt_mod.trace_from_dict(c["trace"]) for c in ck["completed"]]
    # all-gather collectives sum in worker order, as the simulator: the same bits
    _assert_matches_simulator(exp, traces, tol=0.0)
    # and the files written after the resume are the simulator's
    code, _, err = _main(["run", str(cfg), "--out", str(tmp_path / "sim"), "--no-progress", "--no-plots"], capfd)
    assert code == 0, err
    _assert_same_metrics(cut, tmp_path / "sim")


def test_bad_backend_options_are_refused_without_launching(tmp_path, capfd, monkeypatch):
    from compsde.distributed import backend, launch

    def no_launch(*a, **k):
        raise AssertionError("a process was launched")

    monkeypatch.setattr(backend, "spawn", no_launch)
    monkeypatch.setattr(launch, "spawn", no_launch)
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsgd", "lr": 0.05, "workers": 2}], steps=4))))
    torch_run = ["run", str(cfg), "--backend", "torch"]
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("not a checkpoint\n")
    foreign = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    partial = tmp_path / "partial.pt"
    torch.save({"format": ckpt_mod.FORMAT, "world": 2}, partial)
    (tmp_path / "empty").mkdir()
    cases = [
        ([*torch_run, "--workers", "3"], ["--workers 3 does not match", "largest series has workers (2"]),
        ([*torch_run, "--workers", "0"], ["--workers must be an integer ≥ 1"]),
        (["run", str(cfg), "--checkpoint-every", "3"], ["only apply to --backend torch"]),
        (["run", str(cfg), "--workers", "2"], ["only apply to --backend torch"]),
        *[([*torch_run, f"--timeout={t}"], ["--timeout must be", "0.1 s to 86400 s"])
          for t in ("0", "1e-9", "1e300", "nan", "inf", "-inf")],
        ([*torch_run, "--checkpoint-every", "0"], ["--checkpoint-every must be an integer in [1, 2^63 - 1]"]),
        ([*torch_run, "--checkpoint-every", str(2**64)], ["--checkpoint-every must be an integer in [1, 2^63 - 1]"]),
        ([*torch_run, "--resume", str(tmp_path / "nowhere")], ["no checkpoint file"]),
        ([*torch_run, "--resume", str(tmp_path / "empty")], ["no checkpoint file", "empty/checkpoint.pt"]),
        ([*torch_run, "--resume", str(not_ckpt)], ["is not a compsde checkpoint", "torch.load cannot read it"]),
        ([*torch_run, "--resume", str(foreign)], ["is not a compsde checkpoint of format"]),
        ([*torch_run, "--resume", str(partial)], ["is an incomplete compsde checkpoint"]),
    ]
    for args, wanted in cases:
        code, out, err = _main(args, capfd)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        for w in wanted:
            assert w in err, (args, w, err)


def test_workers_default_to_the_largest_series_and_must_match_torchrun(tmp_path, capfd, monkeypatch):
    from compsde.experiments.torch_backend import world_size

    exp = config.build(config.resolve(_config([{"method": "dsgd", "lr": 0.05, "workers": 2},
                                               {"method": "dsgd", "lr": 0.05, "workers": 3}], steps=4)), "w")
    assert world_size(exp, None) == 3 and world_size(exp, 3) == 3
    with pytest.raises(ValueError, match="--workers 2 does not match"):
        world_size(exp, 2)
    # Under torchrun (RANK/WORLD_SIZE set) a group of the wrong size is refused before the rendezvous.
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(exp.config))
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "1")):
        monkeypatch.setenv(k, v)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:  # a joined rank installs its own signal handlers
        code, _, err = _main(["run", str(cfg), "--backend", "torch", "--out", str(tmp_path / "o")], capfd)
        assert code == 2, err
        assert "the process group has 2 ranks (WORLD_SIZE) but the config needs 3" in err, err
        code, _, err = _main(["run", str(cfg), "--backend", "torch", "--workers", "2"], capfd)
        assert code == 2 and "--workers 2 does not match" in err, err
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert not (tmp_path / "o").exists()


def test_comm_hook_refuses_bad_arguments_naming_them(tmp_path):
    import torch.distributed as dist

    from compsde import algorithms
    from compsde.distributed import comm_hook

    for kwargs, name in [({"compressor": 5}, "compressor"), ({"compressor": "sign", "aggregation": "avg"}, "aggregation"),
                         ({"compressor": "sign", "seed": -1}, "seed"), ({"compressor": "sign", "seed": 2**64}, "seed"),
                         ({"compressor": "sign", "seed": 1.5}, "seed"),
                         ({"compressor": "sign", "error_feedback": "yes"}, "error_feedback"),
                         ({"compressor": "nope"}, "compressor"), ({"compressor": "top-k", "ratio": 2.0}, "ratio"),
                         ({"compressor": "sign", "worker": 5}, "worker"),
                         ({"compressor": "sign", "process_group": "world"}, "process_group must be a torch.distributed "
                          "ProcessGroup .* or None for the default group, got 'world'")]:
        with pytest.raises(ValueError, match=name):
            comm_hook(**kwargs)

    from compsde.compressors import Compressor
    from compsde.distributed.collectives import CollectiveExchange

    class Halve(Compressor):  # apply and bits only: it cannot send payloads
        name = "halve"

        def apply(self, x, rnd):
            return x / 2

        def bits(self, d):
            return 32 * d

    # Refused at registration (not at the first backward, with a bare NotImplementedError), naming
    # what is missing; the distributed backend's exchange likewise.
    with pytest.raises(ValueError, match=r"halve\(\) \(.*Halve\) does not implement fields, encode, decode: "
                                         r"comm_hook sends payloads"):
        comm_hook(Halve())
    with pytest.raises(ValueError, match="does not implement fields, encode, decode: the distributed backend"):
        CollectiveExchange(algorithms.make("dcsgd", Halve()), 1, 4, torch.float64, workers=1, rank=0)
    from compsde.algorithms.sync import SyncSchedule

    with pytest.raises(ValueError, match="'sam' evaluates it again at a probe point"):
        comm_hook(algorithms.make("sam"))
    with pytest.raises(ValueError, match="local method 'local-sgd' averages parameters"):
        comm_hook(algorithms.make("local-sgd", sync=SyncSchedule("constant", period=4)))

    class Bucket:  # what the hook reads of a dist.GradBucket
        def __init__(self, t):
            self.t = t

        def buffer(self):
            return self.t

        def index(self):
            return 0

        def is_last(self):
            return True

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        state, hook = comm_hook("natural")
        with pytest.raises(ValueError, match=r"gradient bucket 0 has dtype torch.int32.*floating-point"):
            hook(state, Bucket(torch.arange(10, dtype=torch.int32)))
        g = torch.randn(10, dtype=torch.bfloat16)  # the IEEE floats are compressed
        assert hook(state, Bucket(g.clone())).wait().dtype == torch.bfloat16
    finally:
        dist.destroy_process_group()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 90) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < limit, f"{path} did not appear"
        time.sleep(0.1)


@pytest.mark.parametrize("sig,to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm"])
def test_signal_stops_every_rank_with_one_line(tmp_path, sig, to_group):
    """Ctrl-C in a terminal (SIGINT to the whole foreground process group) or SIGTERM to the command:
    every rank stops within seconds, the job folder goes, one line on stderr, status 128 + signal."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsgd", "lr": 0.01, "workers": 2}], steps=100_000))))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "compsde", "run", str(cfg), "--backend", "torch", "--out", str(out),
                             "--no-progress", "--no-plots", "--checkpoint-every", "50"], env=_env(TMPDIR=str(tmp)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(out / "checkpoint.pt", proc)  # rank 0 is in the loop
        kids = _children(proc.pid)
        jobs = [p for p in tmp.iterdir() if p.name.startswith("compsde-dist-")]
        assert len(kids) == 2 and len(jobs) == 1
        # the job folder names its owner, so that a later launch can tell it stale if this one is SIGKILLed
        assert (jobs[0] / "owner").read_text().split()[0] == str(proc.pid)
        t0 = time.monotonic()
        if to_group:
            os.killpg(proc.pid, sig)  # the command is its own process group's leader
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 128 + sig, err
    assert err.count("\n") == 1 and err.startswith("compsde: interrupted by ") and "every rank stopped" in err, err
    assert not [p for p in tmp.iterdir() if p.name.startswith("compsde-dist-")]  # the job folder is gone
    assert not [k for k in kids if _alive(k)]


def test_stale_job_folders_are_removed_at_the_next_launch(tmp_path, monkeypatch):
    """A launcher killed with SIGKILL cannot remove its job folder (the signal test above shows a live
    one naming its owner); the next launch removes the folders whose owner process is gone — and only
    those."""
    from compsde.distributed import launch

    def folder(name: str, owner: str | None) -> Path:
        p = tmp_path / f"compsde-dist-{name}"
        p.mkdir()
        (p / "store").write_text("")
        if owner is not None:
            (p / "owner").write_text(owner)
        return p

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    start = launch._start_time(os.getpid())
    assert start is not None
    stale = folder("dead", f"{gone.pid} 12345")  # its owner has exited
    reused = folder("reused", f"{os.getpid()} {int(start) - 1}")  # a live pid, but another process's start time
    live = folder("live", f"{os.getpid()} {start}")  # this process
    unknown = [folder("creating", None), folder("garbled", "not a pid")]  # being created, or not ours: kept
    other = tmp_path / "other-dir"
    other.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    job = launch.spawn(1, ["-c", "pass"], timeout=10)
    try:
        assert not stale.exists() and not reused.exists()
        assert live.is_dir() and all(p.is_dir() for p in unknown) and other.is_dir()
        assert job.parent == tmp_path and (job / "owner").read_text() == f"{os.getpid()} {start}"
    finally:
        shutil.rmtree(job)


def test_joined_ranks_exit_quietly_on_a_signal(tmp_path):
    """Ranks joined by hand (as torchrun starts them: RANK/WORLD_SIZE set), each sent SIGTERM as torchrun
    forwards it: each exits with one line and status 143, without a traceback."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.dumps(config.resolve(_config([{"method": "dsgd", "lr": 0.01, "workers": 2}], steps=100_000))))
    store = tmp_path / "store"
    procs = []
    try:
        for rank in (0, 1):
            env = _env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), COMPSDE_INIT_METHOD=f"file://{store}")
            procs.append(subprocess.Popen([sys.executable, "-m", "compsde", "run", str(cfg), "--backend", "torch",
                                           "--out", str(tmp_path / "o"), "--no-progress", "--no-plots",
                                           "--checkpoint-every", "50"],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
        _wait_for(tmp_path / "o" / "checkpoint.pt", procs[0])  # both ranks are in the loop
        time.sleep(0.3)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=10) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for rank, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 128 + signal.SIGTERM, err
        assert err == f"compsde rank {rank}: stopped by SIGTERM\n", err


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


def test_ddp_hook_trains_models_in_one_group(tmp_path):
    """The DDP hook on 2 ranks: mismatched configurations refused, then several compressors trained (one
    local launch; see tests/ddp_hook_ranks.py)."""
    from compsde.distributed.launch import spawn

    out = tmp_path / "hook.json"
    spawn(2, [str(ROOT / "tests" / "ddp_hook_ranks.py"), str(out)], timeout=60, jobdir=tmp_path / "job")
    got = json.loads(out.read_text())
    # Ranks that registered different configurations: a ValueError on every rank at its first backward,
    # naming the setting and both ranks' values (not gloo's "Received data size doesn't match", nor a
    # silent drift for different seeds).
    for rank, refused in enumerate(got["mismatch"]):
        assert sorted(refused) == ["compressor", "error_feedback", "k", "seed"], refused
        for name, message in refused.items():
            assert message.startswith(f"ConfigMismatch: rank {rank}: the comm_hook configuration differs across "
                                      "ranks: rank 1 differs from rank 0 in "), (rank, name, message)
        assert "compressor (rank 0: 'sign()', rank 1: 'top-k(k=2)')" in refused["compressor"], refused
        assert "compressor (rank 0: 'top-k(k=2)', rank 1: 'top-k(k=3)')" in refused["k"], refused
        assert "from rank 0 in seed (rank 0: 7, rank 1: 8) (" in refused["seed"], refused  # the seed only
        assert "rank 1 differs from rank 0 in algorithm (" in refused["error_feedback"], refused
    from compsde.distributed.launch import ConfigMismatch

    assert issubclass(ConfigMismatch, ValueError)
    results = got["train"]
    assert sorted(results) == ["qsgd", "rand-k", "sign-majority", "top-k-ef"]
    for name, r in results.items():
        assert r["replicas_identical"], name  # every rank applied the same aggregate (replayed draws agree)
        assert r["final_loss"] < (0.2 if name in ("sign-majority", "top-k-ef") else 0.5) * r["initial_loss"], (name, r)
        p, wire = r["params"], r["wire_bytes_per_step"]
        if name == "sign-majority":
            assert math.ceil(p / 8) <= wire <= p / 8 + 8, r  # bit-packed signs
        else:
            declared = r["declared_bits_per_step"] / 8
            assert declared <= wire <= declared + 16, (name, r)
        assert wire < r["fp32_bytes_per_step"] / (3 if name == "rand-k" else 6), (name, r)


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
@pytest.mark.parametrize("args", [["--compressor", "sign", "--aggregation", "majority"],
                                  ["--compressor", "top-k", "--ratio", "0.05", "--error-feedback"]],
                         ids=["sign-majority", "topk-ef"])
def test_ddp_hook_trains_a_model_under_torchrun(args):
    """The example script itself under torchrun, ~15 s a launch (DDP imports torch._dynamo); the hook's
    behaviour in every configuration is checked in the default run by the test above."""
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


def test_torch_backend_trains_a_network_as_the_simulator_does(tmp_path):
    """An MLP on real data (digits, label-skewed split), one worker per process: the same minibatches,
    injected noise and compressor draws as the simulator. In float64 each rank's vmapped gradient is
    bit for bit its row of the simulator's, so the sign path (all-gather, votes counted exactly) gives
    identical iterates; sums of floats (the all-reduce of dsgd, rand-k's scatter-add) may round
    differently (the synthetic problems' tolerance, 1e-12)."""
    series = [{"method": "dsignsgd", "lr": 0.005, "workers": 4, "batch": 8, "label": "sign",
               "noise": {"name": "student-t", "nu": 3.0, "scale": 0.1}},
              {"method": "dcsgd", "compressor": "rand-k", "ratio": 0.25, "lr": 0.1, "workers": 4, "batch": 8,
               "label": "rand-k"},
              {"method": "dsgd", "lr": 0.3, "workers": 2, "batch": 8, "label": "dsgd"},
              {"method": "ef", "compressor": "top-k", "ratio": 0.2, "per_layer": True, "lr": 0.1, "workers": 4,
               "batch": 8, "label": "per-layer top-k"}]
    cfg = {"run": {"steps": 6, "repeats": 2, "seed": 1, "log_every": 3, "dtype": "float64"},
           "problem": {"name": "mlp", "dataset": "digits", "hidden": [8], "split": "dirichlet", "alpha": 0.5},
           "noise": {"name": "none"}, "series": series}
    exp = config.build(config.resolve(cfg), "network")
    res = run_torch(exp, tmp_path / "out", workers=4, timeout=60, progress=False, plots=False)
    for spec, tr in zip(exp.series, res.traces):
        ref = simulate(spec.oracle.to(torch.float64), spec.algorithm, spec.schedule, repeats=2, seed=1, log_every=3)
        torch.testing.assert_close(tr.x, ref.x, rtol=1e-12, atol=1e-14)
        assert spec.label != "sign" or torch.equal(tr.x, ref.x)
        assert set(tr.metrics) == {"test_loss", "test_accuracy"}
        torch.testing.assert_close(tr.metrics["test_accuracy"], ref.metrics["test_accuracy"])
