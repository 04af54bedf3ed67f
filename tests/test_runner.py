"""Runner and CLI end to end: every preset at a small size, output files (as the run goes, run.json,
no files of two runs mixed), sources and --set placement, size and time checks, exit codes and messages."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from compsde.experiments import build as config
from compsde.experiments import cli, presets, runner
from compsde.experiments.runner import METRIC_COLUMNS, quantiles, run_experiment

PRESETS = sorted(presets.preset_names())  # the exact list is checked in test_config
# Small sizes; top1-divergence needs ~170 steps at its learning rate to pass the divergence limit.
SMALL = {name: ["run.steps=20", "run.repeats=3"] for name in PRESETS}
SMALL["top1-divergence"] = ["run.steps=200", "run.log_every=10"]
SMALL["adam-scaling-rule"] = ["run.steps=20", "run.repeats=3", "series.steps=20"]  # its series set their own steps
SMALL["adaptive-sde-tracking"] = ["run.steps=4", "run.repeats=1", "run.log_every=2", "series.steps=4"]  # and an MLP
SMALL["local-sgd-sde"] = ["run.steps=4", "run.repeats=1", "run.log_every=2"]  # an MLP too
NETWORK_PRESETS = ("gpt-scaling-rules", "mlp-sde-tracking", "qsr", "resnet-compression-variance", "vit-heavy-tails")
for _name in NETWORK_PRESETS:  # networks: a few steps end to end (their numbers: the README, measured)
    SMALL[_name] = ["run.steps=4", "run.repeats=1", "run.log_every=2"]
# Plots cost ~1-5 s per preset and have their own tests (test_plots.py): only these two presets draw
# theirs here, the ones whose optional figures (diverged.png, compression_error.png) are checked.
WITH_PLOTS = {"top1-divergence", "compression-variance"}
REQUIRED_COLUMNS = ["series", "step", "loss_mean", "loss_median", "loss_q10", "loss_q90", "grad_norm",
                    "dist_mean", "bits", "diverged_fraction", "compression_error", "lr"]


def _strict_json(path: Path):
    def reject(c):
        raise ValueError(f"non-finite JSON constant {c}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def preset_runs(tmp_path_factory):
    """Run every preset once through the CLI (small size); name -> output dir."""
    base = tmp_path_factory.mktemp("presets")
    out = {}
    for name in PRESETS:
        d = base / name
        args = ["run", name, "--no-progress", "--out", str(d), "--set", *SMALL[name]]
        args += [] if name in WITH_PLOTS else ["--no-plots"]
        assert cli.main(args) == 0
        out[name] = d
    return out


@pytest.mark.parametrize("name", PRESETS)
def test_preset_outputs(preset_runs, name):
    d = preset_runs[name]
    files = {p.name for p in d.iterdir()}
    assert {"config.toml", "metrics.csv", "summary.json", "run.json", "report.html"} <= files
    if name in WITH_PLOTS:
        assert {"loss.png", "loss_vs_bits.png", "final.png"} <= files
    assert not [f for f in files if f.startswith(".") or f.endswith(".tmp")], files  # no temp files left
    for png in d.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cfg = tomllib.loads((d / "config.toml").read_text(encoding="utf-8"))
    assert cfg == config.resolve(cfg)  # fully resolved
    assert cfg["run"]["name"] == name
    rec = _strict_json(d / "run.json")
    assert rec["status"] == "completed" and rec["name"] == name
    labels = [s["label"] for s in cfg["series"]]

    rows = _csv_rows(d / "metrics.csv")
    assert set(REQUIRED_COLUMNS) <= set(rows[0])
    assert list(rows[0]) == METRIC_COLUMNS
    assert [r["series"] for r in rows if r["step"] == "0"] == labels  # step 0 for every series, config order
    for lab, sc in zip(labels, cfg["series"]):
        mine = [r for r in rows if r["series"] == lab]
        assert int(mine[-1]["step"]) == sc.get("steps", cfg["run"]["steps"])  # a series may run longer
        assert mine[0]["compression_error"] == ""  # nothing sent yet at step 0
        assert float(mine[0]["bits"]) == 0.0 and float(mine[0]["bytes"]) == 0.0 and mine[0]["comm_rounds"] == "0"
        for r in mine:  # one exchange per step or per period: bytes grow by the same amount each round
            assert int(r["comm_rounds"]) == int(r["step"]) or sc.get("sync")
            per_round = float(mine[-1]["bytes"]) / int(mine[-1]["comm_rounds"])
            assert float(r["bytes"]) == pytest.approx(int(r["comm_rounds"]) * per_round)
        # a logged mean is blank exactly when every repetition has diverged
        assert all((r["loss_mean"] == "") == (float(r["diverged_fraction"]) == 1.0) for r in mine)
    summary = _strict_json(d / "summary.json")
    assert [s["label"] for s in summary["series"]] == labels
    for s, c in zip(summary["series"], cfg["series"]):
        assert {"label", "method", "compressor", "final", "bits_per_worker_per_step"} <= set(s)
        assert {"loss_mean", "loss_median", "dist_mean", "diverged_fraction"} <= set(s["final"])
        assert s["method"] == c["method"] and s["compressor"] == c["compressor"]
        assert isinstance(s["bits_per_worker_per_step"], int) and s["bits_per_worker_per_step"] > 0


@pytest.mark.parametrize("name", NETWORK_PRESETS)
def test_network_presets_report_held_out_metrics(preset_runs, name):
    rows = _csv_rows(preset_runs[name] / "metrics.csv")
    metric = "test_perplexity" if name.startswith("gpt") else "test_accuracy"
    assert all(r[metric] != "" for r in rows) and all(r["dist_mean"] == "" for r in rows)
    final = _strict_json(preset_runs[name] / "summary.json")["series"][0]["final"]
    assert {"test_loss", metric} <= set(final)


QSR_LABELS = ("data parallel (H = 1)", "constant H = 4", "QSR (H_base = 4, α = 0.12)")


def test_qsr_preset_small_run_records_its_periods(preset_runs):
    rows = _csv_rows(preset_runs["qsr"] / "metrics.csv")
    last = {r["series"]: r for r in rows}
    dp, const, qsr = (last[k] for k in QSR_LABELS)
    # 4 steps: H = 1 averages every step; H = 4 once; QSR keeps H_base = 4 while (α/η)² = 1.44 < 4
    assert int(dp["comm_rounds"]) == 4 and int(const["comm_rounds"]) == 1 and int(qsr["comm_rounds"]) == 1
    assert all(r["sync_period"] != "" for r in rows)
    assert {r["sync_period"] for r in rows if r["series"] == QSR_LABELS[2]} == {"4"}


def test_qsr_preset_averages_less_often_as_the_learning_rate_decays(tmp_path):
    """The preset's claim on a shorter cosine schedule (200 steps, ~10 s): QSR's period stays H_base = 4
    while η ≥ α/√5 ((α/η)² < 5) and grows past it as η decays, so it averages less often than constant H = 4,
    at the same held-out accuracy."""
    d = tmp_path / "qsr"
    assert cli.main(["run", "qsr", "--no-progress", "--no-plots", "--out", str(d), "--set", "run.steps=200",
                     "run.repeats=1", "run.log_every=10"]) == 0
    rows = _csv_rows(d / "metrics.csv")
    dp, const, qsr = ([r for r in rows if r["series"] == label] for label in QSR_LABELS)
    alpha = 0.12
    for r in qsr:
        if float(r["lr"]) >= alpha / math.sqrt(5):
            assert r["sync_period"] == "4", r
    assert all(int(r["sync_period"]) > 4 for r in qsr if int(r["step"]) >= 150)  # η ≤ 0.015 there: H ≥ 25
    rounds = [int(s[-1]["comm_rounds"]) for s in (dp, const, qsr)]
    assert rounds[0] == 200 and rounds[1] == 50 and rounds[2] < 0.8 * rounds[1]  # 31 here
    # Same accuracy: the three share one test set of 1,000 digits (one digit = 0.001); measured 0.863 / 0.861 /
    # 0.861. The bound allows 20 digits; a method that stopped learning after its first rounds would be ≥ 0.1 off.
    acc = [float(s[-1]["test_accuracy"]) for s in (dp, const, qsr)]
    assert abs(acc[2] - acc[1]) <= 0.02 and abs(acc[2] - acc[0]) <= 0.02, acc


def test_network_preset_tracks_its_sdes(tmp_path):
    d = tmp_path / "track"
    assert cli.main(["track", "mlp-sde-tracking", "--no-progress", "--out", str(d), "--set", "run.steps=3",
                     "run.repeats=2", "run.log_every=1"]) == 0
    summary = _strict_json(d / "summary.json")
    assert [s["sde"]["noise_type"] for s in summary["series"]] == ["diagonal-lowrank", "diagonal-lowrank", "diagonal"]
    rows = [r for r in _csv_rows(d / "metrics.csv") if r["source"] == "sde"]
    assert rows and all(r["test_accuracy"] != "" for r in rows)
    assert {"tracking.png", "tracking_test.png", "test.png"} <= {p.name for p in d.iterdir()}


def test_top1_divergence_recorded(preset_runs):
    d = preset_runs["top1-divergence"]
    summary = _strict_json(d / "summary.json")
    by = {s["method"]: s for s in summary["series"]}
    top1 = by["dcsgd"]
    assert top1["final"]["diverged_fraction"] == 1.0
    assert top1["final"]["loss_mean"] is None and top1["final"]["loss_median"] is None  # inf -> null
    assert 100 < top1["first_diverged_step"] <= 200
    for m in ("ef", "dsgd"):
        assert by[m]["final"]["diverged_fraction"] == 0.0
        assert by[m]["final"]["loss_mean"] < 1e-6
    rows = [r for r in _csv_rows(d / "metrics.csv") if r["series"] == top1["label"]]
    assert rows[-1]["loss_median"] == "inf" and rows[-1]["loss_mean"] == ""
    assert float(rows[-1]["diverged_fraction"]) == 1.0
    assert (d / "diverged.png").exists()


def test_compression_variance_orders_compressors(preset_runs):
    d = preset_runs["compression-variance"]
    summary = _strict_json(d / "summary.json")
    err = {s["compressor"]: s["compression_error_mean"] for s in summary["series"]}
    # Top-k's error is at most 1 - k/d = 0.8 for every vector (equality only for equal magnitudes); on
    # logistic regression's graded gradients it keeps far more of the norm (0.38 at the preset's size),
    # so a random choice of k would fail this bound.
    assert err["top-k"] < 0.65
    # Unscaled Rand-k's error is 1 - k/d = 0.8 and scaled Rand-k's d/k - 1 = 4 in expectation for *every*
    # vector, and the supports are drawn afresh each step, so the per-step means are independent with
    # exactly that mean: a correct compressor lands within 4 standard errors of it (a 1-in-15 000 miss),
    # while a wrong scaling (e.g. k/d instead of d/k) is off by hundreds of standard errors.
    rows = _csv_rows(d / "metrics.csv")
    for label, expected in (("Rand-k unscaled (biased)", 0.8), ("Rand-k (k = d/5)", 4.0)):
        per_step = np.array([float(r["compression_error"]) for r in rows if r["series"] == label and r["step"] != "0"])
        se = per_step.std(ddof=1) / math.sqrt(per_step.size)
        assert abs(per_step.mean() - expected) < 4 * se, (label, per_step.mean(), se)
    assert (d / "compression_error.png").exists()


def test_noise_resilience_groups_and_dist(preset_runs):
    d = preset_runs["noise-resilience"]
    rows = _csv_rows(d / "metrics.csv")
    assert {r["group"] for r in rows} == {"ν = 1", "ν = 2", "ν = 3", "ν = 8", "ν = 64"}
    assert all(r["dist_mean"] != "" for r in rows)  # the quadratic's optimum is known
    summary = _strict_json(d / "summary.json")
    assert {s["noise"]["nu"] for s in summary["series"]} == {1.0, 2.0, 3.0, 8.0, 64.0}


def test_rerun_of_written_config_reproduces_metrics(preset_runs, tmp_path):
    d = preset_runs["l0l1-schedules"]
    out = run_experiment(str(d / "config.toml"), tmp_path / "again", progress=False, plots=False)
    assert (out / "metrics.csv").read_text() == (d / "metrics.csv").read_text()
    # the run folder itself is a source too, and the experiment keeps its name (not "config")
    assert _strict_json(out / "summary.json")["name"] == "l0l1-schedules"
    out = run_experiment(str(d), tmp_path / "from-dir", progress=False, plots=False)
    assert (out / "metrics.csv").read_text() == (d / "metrics.csv").read_text()
    assert _strict_json(out / "run.json")["name"] == "l0l1-schedules"


# ---- metrics -------------------------------------------------------------------------------------------


def test_quantiles_handle_inf_and_match_numpy_when_finite():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 11))
    np.testing.assert_allclose(quantiles(x, (0.1, 0.5, 0.9)), np.quantile(x, [0.1, 0.5, 0.9], axis=1))
    v = np.array([[1.0, 2.0, np.inf, np.inf, np.inf], [np.inf] * 5, [1.0, 2.0, 3.0, 4.0, np.inf]])
    q10, q50, q90 = quantiles(v, (0.1, 0.5, 0.9))
    assert q10[0] == pytest.approx(1.4) and q50[0] == np.inf and q90[0] == np.inf  # numpy gives nan here
    assert (q10[1], q50[1], q90[1]) == (np.inf, np.inf, np.inf)
    assert q50[2] == 3.0 and q90[2] == np.inf


def test_means_exclude_diverged_repetitions():
    exp = config.build(config.resolve({"run": {"steps": 2, "repeats": 3}, "problem": {"name": "quadratic", "dim": 2},
                                       "series": [{"method": "dsgd", "lr": 0.1}]}))
    tr = runner.Trace(
        steps=torch.tensor([0, 1, 2]),
        loss=torch.tensor([[1.0, 2.0, 3.0], [1.0, math.inf, 3.0], [math.inf, math.inf, math.inf]], dtype=torch.float64),
        grad_norm=torch.tensor([[1.0, 1.0, 1.0], [2.0, math.nan, 4.0], [math.nan] * 3], dtype=torch.float64),
        dist=None, bits=torch.tensor([0.0, 64.0, 128.0], dtype=torch.float64),
        bytes=torch.tensor([0.0, 8.0, 16.0], dtype=torch.float64), rounds=torch.tensor([0, 1, 2]),
        compression_error=torch.tensor([math.nan, 0.0, 0.0], dtype=torch.float64),
        diverged_step=torch.tensor([2, 1, 2]), x=torch.zeros(3, 2, dtype=torch.float64),
    )
    r = runner.metrics_from_trace(exp.series[0], tr)
    assert r.loss_mean[1] == 2.0 and r.loss_median[1] == 3.0 and math.isnan(r.loss_mean[2])
    assert r.grad_norm[1] == 3.0
    np.testing.assert_allclose(r.diverged_fraction, [0.0, 1 / 3, 1.0])
    assert r.dist_mean is None and (r.first_diverged_step, r.last_diverged_step) == (1, 2)
    s = runner.summary_dict(exp, [r])
    json.dumps(s, allow_nan=False)  # must not raise
    assert s["series"][0]["final"]["loss_mean"] is None and s["series"][0]["final"]["dist_mean"] is None
    text = runner.metrics_csv([r])
    last = text.strip().splitlines()[-1].split(",")
    row = dict(zip(METRIC_COLUMNS, last))
    assert row["loss_mean"] == "" and row["loss_median"] == "inf" and row["dist_mean"] == ""


def test_default_out_dir_and_creation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {"run": {"steps": 3, "repeats": 2}, "problem": {"name": "quadratic", "dim": 3},
           "noise": {"name": "none"}, "series": [{"method": "dsgd", "lr": 0.1}]}
    out = run_experiment(raw, progress=False, plots=False)
    assert out.parent == Path("runs") and out.name.startswith("config-")
    assert (tmp_path / out / "summary.json").exists()
    nested = run_experiment(raw, tmp_path / "a" / "b", progress=False, plots=False)
    assert (nested / "metrics.csv").exists()


def test_written_files_get_normal_permissions(tmp_path):
    raw = {"run": {"steps": 2, "repeats": 1}, "problem": {"name": "quadratic", "dim": 2},
           "series": [{"method": "dsgd", "lr": 0.1}]}
    out = run_experiment(raw, tmp_path / "o", progress=False, plots=False)
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "summary.json").stat().st_mode & 0o777 == 0o666 & ~mask


# ---- CLI -----------------------------------------------------------------------------------------------


def _run_cli(capsys, args):
    code = cli.main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("args,message", [
    (["run", "noise-resilience", "--set", "run.stpes=5"], "unknown key 'stpes' (value 5); valid keys: steps"),
    (["run", "noise-resilience", "--set", "run.steps=many"], "run.steps must be an integer, got 'many'"),
    (["run", "noise-resilience", "--set", "series.lr=[1]"], "series.0.lr must be a number, got [1]"),
    (["run", "no-such-preset"], "unknown preset or config file 'no-such-preset'"),
    (["run", "noise-resilience", "--set", "series.2.compressor=top-k"], "implies compressor 'sign'"),
    (["run", "top1-divergence", "--set", "series.0.compressor=natural-ditherin"], "unknown compressor"),
    (["run", "top1-divergence", "--set", "series.9.lr=1"], "series index 9 out of range"),
    (["run", "top1-divergence", "--set", "series.0.method=dsgd"], "implies compressor 'identity'"),
])
def test_cli_bad_input_exits_2_with_message(capsys, tmp_path, args, message):
    code, out, err = _run_cli(capsys, [*args, "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written for a bad config


def test_cli_run_with_config_file_and_overrides(capsys, tmp_path):
    p = tmp_path / "exp.toml"
    p.write_text('[run]\nsteps = 5\nrepeats = 2\n[problem]\nname = "quadratic"\ndim = 3\n'
                 '[[series]]\nmethod = "dcsgd"\ncompressor = "top-k"\nk = 1\nlr = 0.1\n'
                 '[[series]]\nmethod = "dsignsgd"\nlr = 0.01\n', encoding="utf-8")
    code, out, err = _run_cli(capsys, ["run", str(p), "--out", str(tmp_path / "o"), "--no-progress", "--no-plots",
                                       "--set", "run.steps=7", "--set", "series.1.lr=0.02", "problem.dim=4"])
    assert code == 0, err
    cfg = tomllib.loads((tmp_path / "o" / "config.toml").read_text(encoding="utf-8"))
    assert cfg["run"]["steps"] == 7 and cfg["problem"]["dim"] == 4
    assert [s["lr"] for s in cfg["series"]] == [0.1, 0.02]
    assert str(tmp_path / "o") in out
    assert not list((tmp_path / "o").glob("*.png"))


def test_cli_presets(capsys):
    code, out, _ = _run_cli(capsys, ["presets"])
    assert code == 0
    width = max(map(len, PRESETS))
    assert out.splitlines() == [f"{n:<{width}}  {d}" for n, d in presets.presets().items()]


def test_cli_compressors(capsys):
    code, out, _ = _run_cli(capsys, ["compressors", "--dim", "8", "--samples", "20", "--names", "top-k,rand-k"])
    assert code == 0 and "top-k" in out and "rand-k" in out
    code, _, err = _run_cli(capsys, ["compressors", "--dim", "0"])
    assert code == 2 and err.startswith("error: --dim")


def test_cli_version_and_no_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and "compsde" in capsys.readouterr().out
    assert cli.main([]) == 2


def test_python_dash_m(tmp_path):
    # One interpreter start (~5 s on a loaded 2-core machine): `python -m compsde` reaches the CLI, whose
    # error path is what a user of a bad command line sees.
    proc = subprocess.run([sys.executable, "-m", "compsde", "run", "nope"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown preset") and "Traceback" not in proc.stderr


def test_outputs_of_an_earlier_run_are_replaced_and_other_files_kept(tmp_path):
    d = tmp_path / "o"
    d.mkdir()
    old = ["diverged.png", "tracking.png", "weak_order.png", "summary.json", "metrics.csv", "run.json", "report.html",
           ".metrics.csv.abc123.tmp", ".loss.png.x.tmp", "advice.json", "probe_snr.png"]  # the last two: an advice's
    for name in old:
        (d / name).write_bytes(b"old")
    mine = ["notes.txt", "checkpoint.pt", ".hidden.tmp", "loss.png.bak"]
    for name in mine:
        (d / name).write_bytes(b"mine")
    raw = {"run": {"steps": 3, "repeats": 2}, "problem": {"name": "quadratic", "dim": 3},
           "series": [{"method": "dsgd", "lr": 0.1}]}
    run_experiment(raw, d, progress=False, plots=False)
    files = {p.name for p in d.iterdir()}
    assert files == {"config.toml", "metrics.csv", "summary.json", "run.json", "report.html", *mine}
    assert (d / "report.html").read_bytes().startswith(b"<!DOCTYPE html>")  # this run's, not the old one
    assert all((d / name).read_bytes() == b"mine" for name in mine)
    run_experiment(raw, d, progress=False)  # with plots: the ones this run makes, nothing stale
    assert (d / "loss.png").read_bytes()[:4] == b"\x89PNG" and not (d / "diverged.png").exists()


def test_cli_out_is_a_file_or_empty(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = _run_cli(capsys, ["run", "top1-divergence", "--out", str(f), "--no-progress", "--set", "run.steps=2"])
    assert code == 2 and "exists and is not a directory" in err and f.read_text() == "x"
    for bad in ("", "  "):
        code, _, err = _run_cli(capsys, ["run", "top1-divergence", "--out", bad, "--no-progress", "--set", "run.steps=2"])
        assert code == 2 and err == f"error: --out must name a directory, got {bad!r}\n"
    with pytest.raises(ValueError, match="--out must name a directory, got ''"):
        run_experiment("top1-divergence", "", progress=False)
    assert list(tmp_path.iterdir()) == [f]  # nothing written into the working directory


# ---- sources and --set placement -------------------------------------------------------------------------

TINY = ["run.steps=4", "run.repeats=2"]


@pytest.mark.parametrize("command,preset", [("run", "top1-divergence"), ("track", "sde-tracking")])
def test_set_before_or_after_the_preset(capsys, tmp_path, command, preset):
    after = [command, preset, "--set", *TINY, "--out", str(tmp_path / "a"), "--no-progress", "--no-plots"]
    before = [command, "--set", *TINY, preset, "--out", str(tmp_path / "b"), "--no-progress", "--no-plots"]
    split = [command, "--set", TINY[0], "--no-plots", "--set", TINY[1], preset, "--out", str(tmp_path / "c"),
             "--no-progress"]
    for args in (after, before, split):
        code, _, err = _run_cli(capsys, args)
        assert code == 0, err
    texts = {(tmp_path / d / "config.toml").read_text(encoding="utf-8") for d in "abc"}
    assert len(texts) == 1 and tomllib.loads(texts.pop())["run"]["steps"] == 4


@pytest.mark.parametrize("args,message", [
    (["run", "--set", "run.steps=4"], "error: missing PRESET_OR_CONFIG"),
    (["run", "--set", "run.steps=4", "top1-divergence", "extra"],
     "more than one word without '=' among them: 'top1-divergence', 'extra'"),
    (["run", "top1-divergence", "--set", "run.steps=4", "extra"], "--set expects KEY=VALUE (e.g. run.steps=50), got 'extra'"),
])
def test_set_items_that_are_not_overrides(capsys, args, message):
    code, _, err = _run_cli(capsys, args)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_runs_a_run_folder_under_its_own_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first"
    code, _, err = _run_cli(capsys, ["run", "top1-divergence", "--set", *TINY, "--out", str(first), "--no-progress",
                                     "--no-plots"])
    assert code == 0, err
    code, out, err = _run_cli(capsys, ["run", str(first), "--no-progress", "--no-plots"])  # default --out
    assert code == 0, err
    (again,) = (tmp_path / "runs").iterdir()
    assert again.name.startswith("top1-divergence-") and out.startswith(f"wrote {again.relative_to(tmp_path)}\n")
    assert (again / "metrics.csv").read_text() == (first / "metrics.csv").read_text()
    assert (again / "config.toml").read_text() == (first / "config.toml").read_text()
    (tmp_path / "empty").mkdir()
    code, _, err = _run_cli(capsys, ["run", "empty", "--no-progress"])
    assert code == 2 and err.startswith("error: empty is a directory without config.toml")


# ---- what a run records ----------------------------------------------------------------------------------

SMALL_RAW = {"run": {"steps": 20, "repeats": 2, "log_every": 5}, "problem": {"name": "quadratic", "dim": 3},
             "series": [{"method": "dsgd", "lr": 0.1}, {"method": "dsignsgd", "lr": 0.05}]}


def test_run_json_records_versions_command_times_and_status(capsys, tmp_path):
    import compsde

    d = tmp_path / "o"
    code, _, err = _run_cli(capsys, ["run", "top1-divergence", "--set", *TINY, "--out", str(d), "--no-progress",
                                     "--no-plots"])
    assert code == 0, err
    rec = _strict_json(d / "run.json")
    assert rec["status"] == "completed" and rec["name"] == "top1-divergence" and rec["backend"] == "sim"
    assert rec["command"] == f"compsde run top1-divergence --set {' '.join(TINY)} --out {d} --no-progress --no-plots"
    assert rec["versions"] == {"compsde": compsde.__version__, "torch": torch.__version__, "numpy": np.__version__,
                               "python": sys.version.split()[0]}
    assert rec["started"] <= rec["ended"]  # ISO 8601 with the same offset: ordered as text
    out = run_experiment(SMALL_RAW, tmp_path / "api", progress=False, plots=False)
    assert _strict_json(out / "run.json")["command"].startswith("compsde.experiments.runner.run_experiment(<config dict>")


def _interrupt_at(monkeypatch, call: int, exc: BaseException) -> None:
    """Make the ``call``-th optimizer step of the run raise ``exc`` (a Ctrl-C, a crash)."""
    calls = [0]
    step = runner.Loop.step

    def failing(self):
        calls[0] += 1
        if calls[0] == call:
            raise exc
        step(self)

    monkeypatch.setattr(runner.Loop, "step", failing)


def test_killed_run_keeps_the_series_it_completed(tmp_path, monkeypatch):
    _interrupt_at(monkeypatch, 20 + 7, KeyboardInterrupt())  # step 7 of series 1
    with pytest.raises(KeyboardInterrupt):
        run_experiment(SMALL_RAW, tmp_path, progress=False, plots=False)
    rec = _strict_json(tmp_path / "run.json")
    assert rec["status"] == "failed: interrupted" and rec["ended"] is not None
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [(r["series"], r["step"]) for r in rows] == [("DSGD", str(k)) for k in (0, 5, 10, 15, 20)]
    assert not (tmp_path / "summary.json").exists()
    assert tomllib.loads((tmp_path / "config.toml").read_text(encoding="utf-8"))["run"]["steps"] == 20


def test_cli_run_prints_each_series_final_numbers(capsys, tmp_path):
    d = tmp_path / "o"
    code, out, err = _run_cli(capsys, ["run", "top1-divergence", "--set", *SMALL["top1-divergence"], "--out", str(d),
                                       "--no-progress", "--no-plots"])
    assert code == 0, err
    head, *lines = out.splitlines()
    summary = _strict_json(d / "summary.json")
    assert head == f"wrote {d}" and len(lines) == len(summary["series"])
    for line, s in zip(lines, summary["series"]):  # one line per series, config order, the numbers of summary.json
        f = s["final"]
        label, numbers = line.strip().split(": ", 1)
        assert label == s["label"]
        if f["diverged_fraction"] == 1.0:
            assert numbers == "final loss mean n/a (median n/a), all repetitions diverged"
        else:
            assert numbers == f"final loss mean {f['loss_mean']:.4g} (median {f['loss_median']:.4g})"
    assert "all repetitions diverged" in lines[0]  # Top-1 without error feedback, by step 200


def test_sigterm_to_a_cli_run_records_its_status(tmp_path):
    """`compsde run` stopped by SIGTERM (what `kill`, a job scheduler or a container stop sends) records
    "failed: terminated" in run.json, keeps the rows computed, and exits with 128 + 15 without a traceback."""
    import signal
    import time

    import compsde

    d = tmp_path / "t"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(compsde.__file__).parents[1]),
                                                          os.environ.get("PYTHONPATH", "")])}
    # Long enough (~10 min here) that the signal arrives during the simulation.
    proc = subprocess.Popen([sys.executable, "-m", "compsde", "run", "noise-resilience", "--out", str(d), "--no-progress",
                             "--no-plots", "--set", "run.steps=200000", "run.repeats=4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (d / "metrics.csv").exists():  # written by the first snapshot: the simulation is running
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        assert _strict_json(d / "run.json")["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().endswith("error: terminated by SIGTERM (run.json records it; metrics.csv keeps the rows computed)")
    assert "Traceback" not in err and "wrote" not in out
    rec = _strict_json(d / "run.json")
    assert rec["status"] == "failed: terminated" and rec["ended"] is not None
    assert _csv_rows(d / "metrics.csv")[0]["step"] == "0"


def test_sigterm_handler_is_restored_after_a_run(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    run_experiment(SMALL_RAW, tmp_path, progress=False, plots=False)
    assert signal.getsignal(signal.SIGTERM) is before


def test_metrics_are_written_within_a_series(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SNAPSHOT_SECONDS", 0.0)  # write whenever a logged step is done
    _interrupt_at(monkeypatch, 20 + 12, RuntimeError("boom"))  # series 1 has logged steps 0, 5 and 10
    with pytest.raises(RuntimeError):
        run_experiment(SMALL_RAW, tmp_path, progress=False, plots=False)
    assert _strict_json(tmp_path / "run.json")["status"] == "failed: RuntimeError: boom"
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows if r["series"] == "DSignSGD"] == ["0", "5", "10"]
    full = _csv_rows(run_experiment(SMALL_RAW, tmp_path / "full", progress=False, plots=False) / "metrics.csv")
    assert rows == full[: len(rows)]  # the partial rows are the finished run's rows


def test_diverged_series_never_shows_a_blank_mean_with_zero_diverged(tmp_path):
    # (L0, L1)-smooth cosh: a large step throws iterates into the region where cosh overflows at a finite
    # x; with Student-t kicks the repetitions diverge one by one (rows with 0 < fraction < 1), without
    # noise all at once.
    raw = {"run": {"steps": 40, "repeats": 16, "log_every": 1}, "problem": {"name": "l0l1-cosh", "dim": 10},
           "noise": {"name": "student-t", "nu": 1.5},
           "series": [{"method": "dsgd", "lr": 0.3, "workers": 2},
                      {"method": "dsgd", "lr": 1.0, "workers": 2, "noise": {"name": "none"}}]}
    out = run_experiment(raw, tmp_path, progress=False, plots=False)
    rows = _csv_rows(out / "metrics.csv")
    fractions = [float(r["diverged_fraction"]) for r in rows]
    assert any(0 < f < 1 for f in fractions) and fractions[-1] == 1.0
    for r, f in zip(rows, fractions):
        assert (r["loss_mean"] == "") == (f == 1.0), r
        assert r["loss_median"] != "" and (f < 0.5 or r["loss_median"] == "inf")
    summary = _strict_json(out / "summary.json")
    assert [s["final"]["diverged_fraction"] for s in summary["series"]] == [1.0, 1.0]


# ---- sizes and times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["run", "noise-resilience", "--set", "run.repeats=1000000000"], "needs about"),
    (["run", "noise-resilience", "--set", "problem.dim=1000000000"], "needs about"),
    (["track", "sde-tracking", "--set", "run.paths=1000000000"], "its SDE with 1000000000 path(s)"),
    (["track", "sde-tracking", "--set", "series.1.compressor=top-k", "run.paths=100000", "run.mc_samples=100000"],
     "× 100000 Monte Carlo samples × 4 worker(s) needs about"),
    (["run", "noise-resilience", "--set", "run.steps=1000000000", "run.repeats=10000"],
     "this run would take about"),
    (["run", "noise-resilience", "--set", "run.steps=1000000000000000000000000000000"], "outside TOML's 64-bit"),
    (["run", "noise-resilience", "--set", 'run.title="two\\nlines"'], "run.title = 'two\\nlines' contains the control"),
    (["run", "noise-resilience", "--set", "noise.name=gaussian"], "does not apply to noise 'gaussian'"),
])
def test_too_large_or_unshowable_runs_refused_before_anything_is_written(capsys, tmp_path, args, message):
    code, _, err = _run_cli(capsys, [*args, "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2 and message in err and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_time_estimate_is_explained_and_long_runs_announced(capsys, tmp_path, monkeypatch):
    from compsde.experiments import estimates

    exp = config.load(SMALL_RAW)
    est = estimates.estimate_run(exp)
    per_series = 20 * (1 * 2 * 3 * estimates.SECONDS_PER_ELEMENT + 1 * estimates.SECONDS_PER_WORKER
                       + estimates.SECONDS_PER_STEP)
    assert est.per_series == pytest.approx([per_series, per_series])
    assert "steps × workers × repeats × dim × 150 ns + 20 µs per worker and step + 1 ms per step" in est.describe()
    monkeypatch.setattr(estimates, "WARN_SECONDS", 0.0)
    run_experiment(exp, tmp_path, progress=False, plots=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compsde: warning: this run will take about 0 s (estimated as")
    assert _strict_json(tmp_path / "run.json")["estimated_seconds"] == round(est.seconds, 1)


def test_device_cpu_runs_and_a_missing_cuda_is_refused(capsys, tmp_path):
    code, _, err = _run_cli(capsys, ["run", "top1-divergence", "--set", *TINY, 'run.device="cpu"', "--out",
                                     str(tmp_path / "cpu"), "--no-progress", "--no-plots"])
    assert code == 0, err
    if not torch.cuda.is_available():
        code, _, err = _run_cli(capsys, ["run", "top1-divergence", "--set", "run.device=cuda", "--out",
                                         str(tmp_path / "cuda"), "--no-progress"])
        assert code == 2 and "run.device = 'cuda', but this machine has no CUDA device" in err
        assert not (tmp_path / "cuda").exists()


