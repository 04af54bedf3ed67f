"""The claims of the optimizer presets (SignSGD/Adam, SAM, minimax), each from one run of its preset.

Cheap ones run by default (a few seconds each, at the preset's size or with fewer repetitions); the
long presets' claims are marked slow (``pytest -m slow``). Every preset also runs end to end at a small
size in test_runner.py.
"""

from __future__ import annotations

import json

import pytest

from compsde.experiments import cli


def _run(tmp_path, command, name, *sets):
    out = tmp_path / name
    assert cli.main([command, name, "--no-progress", "--no-plots", "--out", str(out), *(("--set", *sets) if sets else ())]) == 0
    return {s["label"]: s for s in json.loads((out / "summary.json").read_text(encoding="utf-8"))["series"]}


def test_sam_saddle_attracts_sam_and_usam_above_the_threshold_and_lets_sgd_escape(tmp_path):
    s = _run(tmp_path, "run", "sam-saddle")
    for label in ("SGD", "USAM ρ=0.25", "SAM ρ=0.5"):  # escaped: past the divergence ball
        assert s[label]["final"]["diverged_fraction"] == 1.0, label
    for label, radius in (("USAM ρ=1", 0.05), ("SAM ρ=2", 0.3)):  # at the saddle x = 0
        assert s[label]["final"]["diverged_fraction"] == 0.0 and s[label]["final"]["dist_mean"] < radius, label


def test_signsgd_stays_bounded_where_sgd_degrades(tmp_path):
    s = _run(tmp_path, "run", "signsgd-vs-sgd-heavy-tails", "run.repeats=32", "run.steps=500")
    # medians over the runs of the last tenth of the run (Cauchy noise makes a mean of 32 runs erratic)
    sgd = [s[f"SGD ν={nu}"]["tail"]["loss_median"] for nu in (1, 2, 3, 8)]
    sign = [s[f"SignSGD ν={nu}"]["tail"]["loss_median"] for nu in (1, 2, 3, 8)]
    assert sgd[0] > 50 * sgd[1] and sgd[1] > 1.5 * sgd[2] and sgd[2] > 1.5 * sgd[3]  # worse as ν falls
    assert max(sign) < 1.4 * min(sign) and max(sign) < 0.25  # SignSGD barely moves
    assert sgd[3] == pytest.approx(sign[3], rel=0.25)  # the same loss at ν = 8


def test_minimax_sgda_spirals_out_seg_and_shgd_converge_and_the_sdes_track(tmp_path):
    s = _run(tmp_path, "track", "minimax-bilinear", "run.repeats=64", "run.paths=64")
    start = 10.0  # ‖z⁰‖² = 2n with n = 5
    assert s["SGDA"]["final"]["loss_mean"] > 10 * start
    assert s["SEG"]["final"]["loss_mean"] < 0.2 * start and s["SHGD"]["final"]["loss_mean"] < 0.01 * start
    for label in ("SGDA", "SEG", "SHGD"):
        assert s[label]["tracking"]["mean_rel_error"] < 0.15, (label, s[label]["tracking"])
        assert s[label]["sde"]["final"]["loss_mean"] == pytest.approx(s[label]["final"]["loss_mean"], rel=0.3)


@pytest.mark.slow
def test_sam_and_usam_leave_the_sharp_minimum_sgd_stays(tmp_path):
    s = _run(tmp_path, "run", "sam-flat-minima", "run.repeats=32")
    gap, dim = 0.1, 10
    assert s["SGD"]["final"]["loss_mean"] > gap * dim  # every coordinate still in its sharp minimum
    for label in ("USAM ρ=0.2", "SAM ρ=1.5"):  # every coordinate in its flat minimum: the stationary noise only
        assert s[label]["final"]["loss_mean"] < 0.4 and s[label]["final"]["dist_mean"] < 1.0, label
    for label in ("SGD (control)", "USAM ρ=0.2 (control)", "SAM ρ=1.5 (control)"):  # both minima flat: all stay
        assert s[label]["final"]["loss_mean"] > gap * dim and s[label]["final"]["dist_mean"] > 11.0, label


@pytest.mark.slow
def test_adam_square_root_rule_keeps_the_loss_and_the_other_rules_do_not(tmp_path):
    s = _run(tmp_path, "run", "adam-scaling-rule", "run.repeats=64")
    base, rule, same, linear = (v["tail"]["loss_mean"] for v in s.values())
    assert rule == pytest.approx(base, rel=0.1)
    # eta / sqrt(B) halved / doubled: about half / twice the loss (0.46x and 1.84x at the preset's size)
    assert 0.35 * rule < same < 0.6 * rule and 1.6 * rule < linear < 2.3 * rule


@pytest.mark.slow
def test_adaptive_sdes_track_on_the_quadratic_and_the_mlp(tmp_path):
    s = _run(tmp_path, "track", "adaptive-sde-tracking")
    for label, entry in s.items():
        bound = (0.08, 0.03) if "quadratic" in label else (0.15, 0.07)
        assert entry["tracking"]["max_rel_error"] < bound[0] and entry["tracking"]["mean_rel_error"] < bound[1], (label, entry["tracking"])


@pytest.mark.slow
def test_signum_sde_tracks_signum_with_majority_vote(tmp_path):
    """At the preset's size (256 runs and paths, 21 s) the mean relative errors were 1.5–2.5 % and the
    maxima 4.9–8.6 %; the bounds leave room for the Monte Carlo noise of another machine's arithmetic."""
    s = _run(tmp_path, "track", "signum-majority")
    for label, entry in s.items():
        assert entry["tracking"]["max_rel_error"] < 0.12 and entry["tracking"]["mean_rel_error"] < 0.04, (label, entry["tracking"])
    final = {label: entry["final"]["loss_mean"] for label, entry in s.items()}
    assert final["Signum, 4 workers (ties)"] < final["Signum, 3 workers"] < final["Signum, 1 worker"]  # more votes
