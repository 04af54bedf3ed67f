"""`compsde track` and `compsde scale`: the optimizer against its SDE, end to end, and the scaling CLI."""

import csv
import json
import math

import pytest
import torch

from compsde import algorithms
from compsde.algorithms.schedules import Schedule
from compsde.experiments.cli import main
from compsde.objectives import Noise, Oracle, problems
from compsde.sde.integrators import EulerMaruyama
from compsde.sde.tracking import fit_order, simulate_sde, tracking_error
from compsde.sim import simulate


def test_sde_trace_is_logged_like_the_optimizer_and_tracks_it():
    prob = problems.make("quadratic", dim=10)
    m = algorithms.make("dcsgd", compressor="rand-k", k=3)
    sched = Schedule("cosine", 0.05, 120)  # a decaying schedule: the SDE follows t_k = Σ η_j
    opt = simulate(Oracle(prob, Noise("gaussian", 1.0), workers=4), m, sched, repeats=512, log_every=20)
    sde, model = simulate_sde(Oracle(prob, Noise("gaussian", 1.0), workers=4), m, sched, paths=512, log_every=20)
    assert torch.equal(opt.steps, sde.steps) and sde.loss.shape == (7, 512)
    assert model.noise_type == "diagonal-lowrank"
    err = tracking_error(opt, sde)
    # 512 runs and paths: the mean loss has a relative SE of ~2 % per point; bias O(η) is smaller.
    assert err["mean_rel_error"] < 0.05 and err["max_rel_error"] < 0.12


def test_fit_order_and_its_errors():
    assert fit_order([0.2, 0.1, 0.05], [0.4, 0.2, 0.1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="distinct learning rates"):
        fit_order([0.1, 0.1], [0.2, 0.3])


def _read(out):
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((out / "summary.json").read_text())


def test_track_sde_tracking_preset_end_to_end(tmp_path, capsys, monkeypatch):
    from compsde.experiments import plots

    figures = []

    def capture(results, sdes, errors, title):  # the runner's tracking.png, kept as a Figure to inspect
        fig = plots.tracking_figure_obj(results, sdes, errors, title)
        figures.append(fig)
        return plots.figure_png(fig)

    monkeypatch.setattr(plots, "tracking_figure", capture)
    out = tmp_path / "tr"
    rc = main(["track", "sde-tracking", "--set", "run.steps=80", "run.repeats=128", "--out", str(out), "--no-progress"])
    assert rc == 0
    rows, summary = _read(out)
    assert {r["source"] for r in rows} == {"optimizer", "sde"}
    assert len([r for r in rows if r["source"] == "sde"]) == len([r for r in rows if r["source"] == "optimizer"])
    for s in summary["series"]:
        assert set(s["tracking"]) == {"max_rel_error", "mean_rel_error"}
        assert "closed form" in s["sde"]["description"]
        # 128 runs vs 128 paths over 80 steps: the mean loss has a relative SE of ~3-4 % per point, so the
        # mean over the 81 logged points of |relative error| is ~3 % for an SDE that tracks (it would be
        # that large from Monte Carlo error alone); 12 % is 3-4 SE above it, while an SDE with the
        # wrong drift or diffusion is off by tens of percent.
        assert s["tracking"]["mean_rel_error"] < 0.12
    assert "SDE tracking error" in capsys.readouterr().out

    # tracking.png shows, per series, its optimizer and its SDE: the mean-loss curves of metrics.csv
    # and a panel title with the label and the tracking errors of summary.json.
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(panels) == len(summary["series"])
    for ax, s in zip(panels, summary["series"]):
        t = s["tracking"]
        assert ax.get_title().startswith(s["label"])
        assert f"max rel. error {t['max_rel_error']:.1%}, mean {t['mean_rel_error']:.1%}" in ax.get_title()
        lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines()}
        for source, name in (("optimizer", "optimizer"), ("sde", "SDE")):
            mine = [r for r in rows if r["series"] == s["label"] and r["source"] == source]
            x, y = lines[name].get_data()
            assert list(x) == [int(r["step"]) for r in mine]
            assert list(y) == [float(r["loss_mean"]) for r in mine]
        assert lines["SDE"].get_linestyle() == "--" and lines["optimizer"].get_linestyle() == "-"
    assert (out / "tracking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weak_order_preset_fits_a_slope_near_one(tmp_path):
    out = tmp_path / "wo"
    assert main(["track", "weak-order", "--set", "run.repeats=1024", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    _, summary = _read(out)
    (fit,) = summary["weak_order"]
    # The optimizer is Euler–Maruyama of its SDE at dt = η (Gaussian noise) against a finely integrated
    # SDE, so its bias is the solver's weak error, ∝ η^weak_order (exactly: slope 1.0); with 1024
    # runs/paths the MC error moves the fit by < 0.2.
    assert fit["slope"] == pytest.approx(EulerMaruyama.weak_order, abs=0.25)
    assert fit["lr"] == [0.2, 0.1, 0.05]


def test_heavy_tails_track_for_dsignsgd_and_refuse_dsgd(tmp_path, capsys):
    out = tmp_path / "ht"
    assert main(["track", "sde-heavy-tails", "--set", "run.steps=60", "run.repeats=64", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    rows, summary = _read(out)
    for s in summary["series"]:
        # Each mean loss averages 64 independent runs (or paths); the relative standard error of the
        # difference of two such means is √2 σ/(√64 · mean), with σ ≈ (q90 − q10)/2.563 (normal quantiles)
        # read from the runs' spread: ~0.5 % per point here. 4 SE bounds the Monte Carlo error of a
        # tracking SDE (its O(η) bias at η = 0.02 over 60 steps is far smaller), while a wrong drift
        # or diffusion moves the mean loss by several percent.
        mine = [r for r in rows if r["series"] == s["label"] and r["source"] == "optimizer" and r["step"] != "0"]
        se = sum(math.sqrt(2) * (float(r["loss_q90"]) - float(r["loss_q10"])) / 2.563 / float(r["loss_mean"]) / 8
                 for r in mine) / len(mine)
        assert math.isfinite(s["tracking"]["mean_rel_error"]) and s["tracking"]["mean_rel_error"] < 4 * se, (s, se)
    rc = main(["track", "sde-heavy-tails", "--set", "run.steps=5", "series.method=dsgd", "series.noise.nu=1.5", "--out",
               str(tmp_path / "x"), "--no-progress"])
    assert rc == 2  # no series has an SDE: refused, naming the reasons
    err = capsys.readouterr().err
    assert "no series has an SDE to track" in err and "infinite variance" in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_track_skips_a_series_without_an_sde_and_says_why(tmp_path, capsys):
    """SGD under ν = 1 beside SignSGD: SignSGD is tracked, SGD runs as the optimizer only, and the output,
    summary.json and metrics.csv say so."""
    out = tmp_path / "mix"
    rc = main(["track", "signsgd-vs-sgd-heavy-tails", "--set", "run.steps=20", "run.repeats=8", "--out", str(out),
               "--no-progress", "--no-plots"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "SGD ν=1: no SDE, run as the optimizer only (this SDE needs finite gradient-noise variance" in text
    rows, summary = _read(out)
    by = {s["label"]: s for s in summary["series"]}
    assert "infinite variance" in by["SGD ν=1"]["sde"]["none"] and by["SGD ν=1"]["tracking"]["mean_rel_error"] is None
    assert math.isfinite(by["SignSGD ν=1"]["tracking"]["mean_rel_error"]) and "none" not in by["SignSGD ν=1"]["sde"]
    sources = {(r["series"], r["source"]) for r in rows}
    assert ("SGD ν=1", "sde") not in sources and ("SignSGD ν=1", "sde") in sources


def test_scale_cli_text_json_validate_and_errors(capsys):
    assert main(["scale", "dsignsgd", "--from", "lr=0.1,batch=8,workers=2", "--to", "lr=0.2,workers=same"]) == 0
    text = capsys.readouterr().out
    assert "batch" in text and "32" in text and "← solved" in text
    assert main(["scale", "dcsgd", "--from", "lr=0.05,batch=1,workers=2,omega=0", "--to", "omega=3,lr=same,workers=same",
                 "--json", "--validate", "--repeats", "16"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["to"] == {"lr": 0.05, "batch": 4, "workers": 2, "omega": 3.0}
    assert obj["invariant"]["from"] == pytest.approx(obj["invariant"]["to"])
    assert set(obj["validation"]["ratio_to_over_from"]) == {"optimizer", "sde", "theory"}
    assert main(["scale", "dsgd", "--from", "lr=0.1,batch=8,workers=1", "--to", "lr=0.2"]) == 2
    assert "under-determined" in capsys.readouterr().err
    assert main(["scale", "dsgd", "--from", "lr=0.1,batch=8,workers=1", "--to", "lr=0.2,batch=16,workers=1"]) == 2
    assert "over-determined" in capsys.readouterr().err
    assert main(["scale", "dsgd", "--from", "lr=same,batch=8,workers=1", "--to", "lr=0.2,workers=1"]) == 2
    assert "--from takes numbers only" in capsys.readouterr().err


def test_sde_trace_counts_communication_through_the_methods_events():
    """The SDE's bits, bytes and rounds are recorded on a CommLog, one record per communication: for a method
    that communicates every step they equal the simulator's at every logged step (exact: the same sums); a model
    whose method communicates at events only (here every 3rd boundary, as a periodic averaging would) records
    there, and its rounds are the number of events so far."""
    from compsde.sde.events import Communication, Event
    from compsde.sde.models import from_algorithm
    from compsde.sim.exchange import CommLog

    prob = problems.make("quadratic", dim=10)
    oracle = Oracle(prob, Noise("gaussian", 1.0), workers=4)
    sched = Schedule("constant", 0.05, 10)
    for algo in (algorithms.make("dcsgd", compressor="rand-k", k=3), algorithms.make("dsignsgd")):
        opt = simulate(oracle, algo, sched, repeats=4, log_every=3)
        sde, _ = simulate_sde(oracle, algo, sched, paths=4, log_every=3)
        assert torch.equal(sde.steps, torch.tensor([0, 3, 6, 9, 10]))
        assert torch.equal(sde.bits, opt.bits) and torch.equal(sde.bytes, opt.bytes) and torch.equal(sde.rounds, opt.rounds)
        assert torch.equal(sde.rounds, sde.steps) and sde.bits[-1] == 10 * algo.bits(10) > 0

    class Every3(Event):
        def __init__(self, log):
            self.log, self.ks = log, []

        def __call__(self, k, z, args):
            if k % 3 == 0:
                self.log.record(8.0 * 10, 80.0)
                self.ks.append(k)
            return z

    algo = algorithms.make("dsgd")
    base = from_algorithm(oracle, algo, 0.05)
    made = []

    class Periodic(type(base)):
        def events(self, log, rows, dtype, schedule=None):
            made.append(Every3(log))
            return made

    model = Periodic(oracle, algo, 0.05)
    sde, _ = simulate_sde(oracle, algo, sched, paths=4, log_every=3, model=model)
    assert made[0].ks == [3, 6, 9]
    assert sde.rounds.tolist() == [0, 1, 2, 3, 3] and sde.bits.tolist() == [0.0, 80.0, 160.0, 240.0, 240.0]
    assert sde.bytes.tolist() == [0.0, 80.0, 160.0, 240.0, 240.0]
    # the default: one Communication per step with the algorithm's declared bits and wire bytes per path
    (ev,) = base.events(CommLog(), 4, torch.float64)
    assert isinstance(ev, Communication) and (ev.bits, ev.nbytes) == (float(algo.bits(10)), 80.0)
