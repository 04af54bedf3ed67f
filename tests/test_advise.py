"""``compsde advise``: the table, the recommendation, advice.json, the CLI's errors, and the quality model's
ranking against measured final losses on the digits MLP with injected Student-t noise."""

import json
import math

import pytest
import torch

import compsde.advise as advise_mod
from compsde import algorithms
from compsde.advise import Advice, advise_from_probe, parse_method, quality
from compsde.advise.quality import Setting

PROBE = {"trace_sigma": 40.0, "grad_norm_sq": 0.5, "tail_index": 1.95, "tail_index_se": 0.02, "snr": {"0.5": 0.05}}


def _fake_cost(algo, s):
    """Seconds per step: compute ∝ B plus bytes over a 1 GB/s link (a stand-in for compsde.advise.cost)."""
    return 1e-4 * s.batch + algo.bits(1000) / 8 / 1e9 * 2


def test_table_and_recommendation(tmp_path):
    adv = advise_from_probe(PROBE, dim=1000, lr=0.1, batch=8, workers=4, cost=_fake_cost)
    labels = [r["method"] for r in adv.rows]
    assert labels[0] == "dsgd"  # the best quality at finite variance: DSGD's own loss
    assert set(labels) == {parse_method(m)[0] for m in advise_mod.DEFAULT_METHODS}
    for r in adv.rows:
        assert {"method", "seconds_per_step", "loss_ratio", "loss_gap", "retuned", "notes", "status"} <= set(r)
        assert all(n.startswith(("[derived]", "[heuristic]", "[recalled]", "not modelled")) for n in r["notes"])
    dc = next(r for r in adv.rows if r["method"] == "dcsgd rand-k(ratio=0.1)")
    assert dc["loss_ratio"] == pytest.approx(1 + 9 * (1 + 8 * 0.5 / 40), rel=1e-6)
    assert dc["retuned"]["batch"] > 8 * 10  # more than the first-order B × (1 + ω): ‖G‖² adds noise
    assert adv.recommendation in labels and adv.reasons
    path = adv.write(tmp_path)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == "advice.json" and set(d) >= {"table", "recommendation", "reasons", "probe", "cost"}
    assert d["details"][0]["notes"] and set(d["table"][0]) == {"method", "status", "lr", "bits_per_step", "seconds_per_step",
                                                           "loss_ratio", "loss_gap", "retuned_lr", "retuned_batch",
                                                           "retuned_workers", "lever", "seconds_to_dsgd_loss"}
    assert d["probe"]["tail_index"] == 1.95
    text = adv.format()
    assert "recommendation:" in text and "dcsgd rand-k(ratio=0.1)" in text


def test_heavy_tails_recommend_a_sign_method():
    probe = {**PROBE, "tail_index": 1.1, "tail_index_se": 0.2, "noise_scale": 0.1}
    adv = advise_from_probe(probe, dim=1000, lr=0.1, batch=8, workers=4, cost=_fake_cost)
    assert adv.recommendation.startswith("dsignsgd")
    assert "infinite variance" in adv.reasons[0]
    assert {r["status"] for r in adv.rows if r["method"] in ("dsgd", "dcsgd rand-k(ratio=0.1)")} == {"refused"}
    assert all(r["seconds_to_dsgd_loss"] is None for r in adv.rows if r["status"] == "refused")
    # the mean of signs beats the vote on quality (N Var V/c_N² = 1.11 at N = 4) and wins within the time tolerance
    assert adv.recommendation == "dsignsgd"
    # the JSON has no Infinity tokens
    json.loads(json.dumps(advise_mod._jsonable(adv.as_dict()), allow_nan=False))


def test_without_a_cost_model_the_fewest_bits_within_tolerance():
    probe = {"trace_sigma": 40.0, "grad_norm_sq": 0.0}
    adv = advise_from_probe(probe, dim=1000, lr=0.1, batch=8, workers=4,
                            methods=["dsgd", "dcsgd:rand-k:ratio=0.5", "ef:top-k:ratio=0.1"])
    assert adv.recommendation == "ef top-k(ratio=0.1)"  # first-order loss = DSGD's, 10 % of the values
    assert "no cost model" in adv.reasons[0]
    assert all(r["seconds_per_step"] is None for r in adv.rows)


def test_parse_method_and_errors():
    label, algo = parse_method("dcsgd:rand-k:ratio=0.25")
    assert label == "dcsgd rand-k(ratio=0.25)" and algo.compressor.omega(100) == pytest.approx(3.0)
    assert parse_method("ef:top-k:k=5")[1].compressor.params() == {"k": 5}
    for bad, msg in (("dcsgd", "needs a compressor"), ("nope", "unknown algorithm"), ("dcsgd:rand-k:ratio", "key=value"),
                     ("dcsgd:rand-k:ratio=x", "must be a number"), ("a:b:c:d", "more than")):
        with pytest.raises(ValueError, match=msg):
            parse_method(bad)


def test_advise_runs_the_probe_on_a_module(monkeypatch):
    calls = []

    class FakeProbe:
        @staticmethod
        def probe_model(model, loss_fn, loader):
            calls.append((model, loader))
            return PROBE

    monkeypatch.setattr(advise_mod, "probe_model", FakeProbe.probe_model)
    model = torch.nn.Linear(10, 3)
    adv = advise_mod.advise(model, torch.nn.functional.cross_entropy, [1, 2], lr=0.1, batch=8, workers=2,
                            cost=_fake_cost, methods=["dsgd", "dsignsgd"])
    assert calls and isinstance(adv, Advice)
    assert adv.rows[0]["bits_per_step"] == 32 * 33  # d = 10·3 + 3
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        advise_mod.advise("model", None, None, lr=0.1, batch=8, workers=2)


# ---- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def fake_parts(monkeypatch):
    class FakeProbe:
        @staticmethod
        def probe_oracle(oracle, x):
            assert x.shape == (oracle.dim,)
            return PROBE

    monkeypatch.setattr(advise_mod, "probe_oracle", FakeProbe.probe_oracle)
    monkeypatch.setattr(advise_mod, "default_cost", lambda dim, **kw: (_fake_cost, {"available": True, "fake": True}))


def test_cli_advise_prints_the_table_and_writes_advice_json(capsys, tmp_path, fake_parts):
    from compsde.experiments.cli import main

    out = tmp_path / "a"
    out.mkdir()
    assert main(["advise", "mlp-sde-tracking", "--series", "1", "--method", "dsgd", "--method", "dcsgd:rand-k:ratio=0.25",
                 "--method", "dsignsgd", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recommendation:" in text and f"wrote {out}" in text
    d = json.loads((out / "advice.json").read_text(encoding="utf-8"))
    assert d["setting"] == {"lr": 0.2, "batch": 16, "workers": 4}
    assert [r["method"] for r in d["table"]][0] == "dsgd"
    assert main(["advise", "mlp-sde-tracking", "--json", "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads(capsys.readouterr().out)["cost"]["fake"] is True
    # a path that does not exist and does not end in .json is a directory, made for advice.json
    assert main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--out", str(tmp_path / "new" / "dir")]) == 0
    assert (tmp_path / "new" / "dir" / "advice.json").is_file()


def test_cli_advise_writes_a_run_folder_with_its_report(capsys, tmp_path, monkeypatch, fake_parts):
    """A directory --out (or none: runs/<name>-<time>) is a run folder, set up and ended as `run`'s: run.json,
    config.toml, advice.json, the real probe's figures, and report.html showing the recommendation and the
    figures as data URIs; --no-report skips the page; --out FILE.json still writes only the file."""
    from compsde.advise.probe import probe_oracle as real_probe
    from compsde.experiments.cli import main

    monkeypatch.setattr(advise_mod, "probe_oracle",
                        lambda oracle, x: real_probe(oracle, x, warmup_steps=0, points=1, repetitions=4))
    out = tmp_path / "run"
    argv = ["advise", "mlp-sde-tracking", "--method", "dsgd", "--method", "dsignsgd", "--out", str(out)]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"run.json", "config.toml", "advice.json", "report.html", "probe_noise_scale.png", "probe_snr.png",
            "probe_tail_index.png"} <= names
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    advice = json.loads((out / "advice.json").read_text(encoding="utf-8"))
    assert record["status"] == "completed" and advice["recommendation"] in record["claim"]
    assert record["command"].startswith("compsde advise mlp-sde-tracking")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert advice["recommendation"] in html and "Recommendation" in html
    assert html.count("data:image/png;base64,") >= 3 and "probe_snr.png" in html
    # --no-report: the folder without its page
    assert main([*argv[:-1], str(tmp_path / "quiet"), "--no-report"]) == 0
    assert (tmp_path / "quiet" / "advice.json").is_file() and not (tmp_path / "quiet" / "report.html").exists()
    # no --out: runs/<name>-<timestamp> under the working directory, as for `run`
    monkeypatch.chdir(tmp_path)
    assert main(argv[:-2]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("mlp-sde-tracking-") and (folder / "report.html").is_file()
    # --out FILE.json: that file only
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "only" / "a.json")]) == 0
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["a.json"]


@pytest.mark.parametrize("argv, msg", [
    (["advise", "no-such-preset"], "no-such-preset"),
    (["advise", "mlp-sde-tracking", "--series", "7"], "--series must be a series index in 0..2"),
    (["advise", "mlp-sde-tracking", "--method", "dcsgd"], "--methods: 'dcsgd'"),
    (["advise", "mlp-sde-tracking", "--sign-lr", "-1"], "--sign-lr must be a finite number > 0"),
    (["advise", "mlp-sde-tracking", "--bandwidth", "1e9", "--latency", "nan"], "--latency must be a finite number ≥ 0"),
    (["advise", "mlp-sde-tracking", "--latency", "1e-5"], "--bandwidth and --latency go together"),
    (["advise", "mlp-sde-tracking", "--compute", "-1"], "--compute must be a finite number ≥ 0"),
    (["advise", "mlp-sde-tracking", "--spectrum", "1:2"], "--spectrum: expected EIG_MIN:EIG_MAX:DIM"),
    (["advise", "mlp-sde-tracking", "--set", "series.lr=-1"], "lr"),
    (["advise"], "missing PRESET_OR_CONFIG"),
])
def test_cli_advise_errors(capsys, argv, msg, fake_parts, tmp_path):
    from compsde.experiments.cli import main

    assert main([*argv, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err


# ---- the ranking against measured losses -----------------------------------------------------------


#: The α-stable index ± se that ``compsde.advise.probe`` reports for Student-t noise of ν degrees of freedom at its
#: default group size m = 8 (measured with its estimator on Student-t draws: the table in quality.py).
PROBE_ALPHA = {1.0: (1.00, 0.01), 8.0: (1.93, 0.01)}


def _probe_values(oracle, noise, sigma):
    """The probe's numbers for the digits MLP at its initial point, computed from the oracle's exact noise law:
    tr Σ of one sample's minibatch gradient (B ‖F_i‖² of ``noise_factors``, mean over workers) plus the injected
    noise's d σ² Var T (the §2.4 convention), ‖G‖², the relative heterogeneity, and the tail index a probe of
    this noise reports (``PROBE_ALPHA``) and, at infinite variance only, the injected scale σ (the sign methods'
    scale: at finite variance they take it from tr Σ)."""
    x = oracle.x0().unsqueeze(0).double()
    o = oracle.to(torch.float64)
    f = o.noise_factors(x)
    tr_minibatch = float(o.batch * f.square().sum((2, 3)).mean())
    g = o.mean_grads(x)[:, 0]
    mean = g.mean(0)
    alpha, se = PROBE_ALPHA[noise.nu]
    return {"trace_sigma": tr_minibatch + oracle.dim * sigma**2 * noise.variance(),
            "grad_norm_sq": float(mean.square().sum()),
            "heterogeneity": float((g - mean).square().sum(1).mean() / mean.square().sum()),
            "tail_index": alpha, "tail_index_se": se,
            **({"noise_scale": sigma} if not math.isfinite(noise.variance()) else {})}


def _measured(oracle, algo, lr, steps, repeats):
    """The median over repetitions of the mean training loss over the last quarter of the run (+∞ if diverged)."""
    from compsde.algorithms.schedules import Schedule
    from compsde.sim.simulator import simulate

    tr = simulate(oracle, algo, Schedule("constant", lr, steps), repeats=repeats, seed=0, log_every=10)
    keep = tr.steps >= (3 * steps) // 4
    return float(tr.loss[keep].mean(0).median())


@pytest.mark.slow  # about 30 s per ν on 2 loaded cores
@pytest.mark.parametrize("nu", [1.0, 8.0])
def test_predicted_order_matches_measured_on_the_digits_mlp(nu):
    """The quality model's ranking of DSGD, DCSGD (Rand-k, ω = 3) and DSignSGD (at its drift-matched learning rate)
    on the digits MLP (64-32-10, 4 workers, B = 16, η = 0.2) with injected Student-t noise of scale 1, against their
    measured final training losses after 1,000 steps. Every pair the model orders decisively (different status, or
    rank ratios more than 10 % apart) must come out in that order; at ν = 1 DSGD and DCSGD tie (equal tail constants
    at α = 1) and are not compared."""
    from compsde.objectives import problems
    from compsde.objectives.noise import Noise

    sigma, lr, steps, repeats = 1.0, 0.2, 1000, 3
    noise = Noise("student-t", sigma, nu)
    net = problems.make("mlp", dataset="digits", hidden=[32])
    oracle = net.oracle(noise, workers=4, batch=16)
    probe = _probe_values(oracle, noise, sigma)
    methods = {"DSGD": algorithms.make("dsgd"), "DCSGD": algorithms.make("dcsgd", "rand-k", ratio=0.25),
               "DSignSGD": algorithms.make("dsignsgd")}
    preds = quality.rank(quality.predict_all(methods, probe, Setting(lr, 16, 4), oracle.dim))
    measured = {p.label: _measured(oracle, methods[p.label], p.setting.lr, steps, repeats) for p in preds}
    print(f"\nν = {nu:g}: predicted order {[p.label for p in preds]} (loss ratios "
          f"{ {p.label: p.loss_ratio for p in preds} }, rank ratios { {p.label: round(p.rank_ratio, 3) for p in preds} }); "
          f"measured {measured}; sign lr {next(p.setting.lr for p in preds if p.label == 'DSignSGD'):.4g}")
    decisive = 0
    for i, a in enumerate(preds):
        for b in preds[i + 1:]:
            if a.status == b.status and b.rank_ratio <= 1.1 * a.rank_ratio:
                continue  # a predicted tie
            decisive += 1
            assert measured[a.label] < measured[b.label], (a.label, b.label)
    assert decisive >= 2
    if nu <= 2:
        assert preds[0].label == "DSignSGD" and all(p.status == "refused" for p in preds[1:])


def test_cli_advise_validate(capsys, tmp_path, fake_parts):
    from compsde.experiments.cli import main

    out = tmp_path / "v.json"
    assert main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--method", "dsignsgd", "--validate", "20",
                 "--repeats", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "validation (simulator" in text and "predicted order:" in text and "orders decisively" in text
    rows = json.loads(out.read_text(encoding="utf-8"))["validation"]
    assert [r["method"] for r in rows] == ["dsgd", "dsignsgd"]
    assert all(math.isfinite(r["measured_final_loss"]) for r in rows)
    assert main(["advise", "mlp-sde-tracking", "--validate", "0", "--out", str(out)]) == 2
    assert "--validate steps must be" in capsys.readouterr().err


def test_the_cost_model_fills_the_time_column(capsys, tmp_path, monkeypatch):
    """``compsde.advise.cost`` behind the table: the link given, the compute measured on the series' model."""
    from compsde.experiments.cli import main

    class FakeProbe:
        @staticmethod
        def probe_oracle(oracle, x):
            return PROBE

    monkeypatch.setattr(advise_mod, "probe_oracle", FakeProbe.probe_oracle)
    out = tmp_path / "c.json"
    assert main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--method", "dcsgd:rand-k:ratio=0.25", "--method",
                 "dsignsgd", "--bandwidth", "1.25e8", "--latency", "5e-5", "--out", str(out)]) == 0
    d = json.loads(out.read_text(encoding="utf-8"))
    assert d["cost"]["available"] and d["cost"]["compute_seconds"] > 0
    assert all(r["seconds_per_step"] > 0 for r in d["table"])
    rows = {r["method"]: r for r in d["details"]}
    # DCSGD's retuned batch costs more compute per step (compute ∝ B)
    dc = rows["dcsgd rand-k(ratio=0.25)"]
    assert dc["retuned"]["batch"] > 16 and dc["seconds_per_step_retuned"] > dc["seconds_per_step"]
    assert "s per DSGD step of progress" in " ".join(d["reasons"])
    fn, info = advise_mod.default_cost(100, batch=8, link=None)
    assert fn is None and "no link given" in info["reason"]
    with pytest.raises(ValueError, match="link must be"):
        advise_mod.default_cost(100, batch=8, link=3.0)


def test_the_real_probe_feeds_the_quality_model():
    """``compsde.advise.probe.probe_oracle`` on the digits MLP with injected Student-t noise: its α̂ is what the tail
    thresholds were calibrated on (ν = 8 finite, ν = 1 infinite), and its tr Σ matches the oracle's exact one."""
    from compsde.advise import probe_oracle
    from compsde.objectives import problems
    from compsde.objectives.noise import Noise

    net = problems.make("mlp", dataset="digits", hidden=[32])
    methods = {"DSGD": algorithms.make("dsgd"), "DCSGD": algorithms.make("dcsgd", "rand-k", ratio=0.25),
               "DSignSGD": algorithms.make("dsignsgd")}
    for nu, tails in ((8.0, "finite"), (1.0, "infinite")):
        noise = Noise("student-t", 1.0, nu)
        oracle = net.oracle(noise, workers=4, batch=16)
        probe = probe_oracle(oracle, warmup_steps=0, points=1, repetitions=4)
        st = quality.NoiseStats.from_probe(probe)
        assert st.tails == tails, (nu, probe.tail_index, probe.tail_index_se)
        preds = {p.label: p for p in quality.predict_all(methods, probe, Setting(0.2, 16, 4), oracle.dim)}
        if tails == "finite":
            exact = _probe_values(oracle, noise, 1.0)["trace_sigma"]
            assert st.trace_sigma == pytest.approx(exact, rel=0.1)
            assert [p.label for p in quality.rank(preds.values())] == ["DSGD", "DSignSGD", "DCSGD"]
        else:
            assert preds["DSGD"].status == preds["DCSGD"].status == "refused" and preds["DSignSGD"].status == "ok"


def test_decisive_agreement_skips_predicted_ties():
    rows = [{"method": m, "status": s, "predicted_loss_ratio": r, "predicted_rank": i, "measured_final_loss": loss}
            for i, (m, s, r, loss) in enumerate([("a", "ok", 1.0, 0.2), ("b", "ok", 1.05, 0.1), ("c", "ok", 4.0, 0.5),
                                                  ("d", "refused", None, 9.0)])]
    # a–b is a tie (5 % apart); a–c, b–c, and each against the refused d are decisive and agree
    assert advise_mod.decisive_agreement(rows) == (5, 5)
    rows[2]["measured_final_loss"] = 0.15  # now c beats a
    assert advise_mod.decisive_agreement(rows) == (4, 5)


# ---- measured on real ranks -------------------------------------------------------------------------


def _real_probe_quick(monkeypatch):
    from compsde.advise.probe import probe_oracle as real_probe

    monkeypatch.setattr(advise_mod, "probe_oracle",
                        lambda oracle, x: real_probe(oracle, x, warmup_steps=0, points=1, repetitions=4))


@pytest.mark.xdist_group("link-timing")
def test_cli_advise_measures_the_cost_on_ranks_and_times_the_validated_methods(capsys, tmp_path, monkeypatch):
    """--ranks 2: two local gloo processes run the series' MLP in DDP; the link, compute, buckets and hook overheads
    they measured drive the time column, and --validate puts each validated method's measured seconds per step
    beside its prediction for those ranks."""
    from compsde.experiments.cli import main

    _real_probe_quick(monkeypatch)
    out = tmp_path / "r.json"
    assert main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--method", "dsignsgd", "--method",
                 "ef:top-k:ratio=0.1", "--method", "adamw", "--ranks", "2", "--validate", "12", "--repeats", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "measured ms/step" in text and "pred./meas." in text
    d = json.loads(out.read_text(encoding="utf-8"))
    ranks = d["cost"]["measured_on_ranks"]
    assert ranks["workers"] == 2 and ranks["throttle"] is None and ranks["threads"] == 1
    assert sum(ranks["buckets"]) == 2410 and ranks["link"]["bandwidth"] > 1e6
    assert set(ranks["overhead"]) == {"dsgd identity()", "dsignsgd sign()", "ef top-k(ratio=0.1)"}
    assert any("measured on 2 ranks are used at every N" in n for n in d["cost"]["notes"])
    # AdamW's decoupled weight decay needs the parameters, which no DDP hook sees: no time, and not sent to the ranks
    assert all((r["seconds_per_step"] is None) == (r["method"] == "adamw") for r in d["table"]), d["table"]
    for r in d["validation"]:
        if r["method"] == "adamw":
            assert r["measured_seconds_per_step"] is None and r["predicted_seconds_per_step_on_ranks"] is None
            continue
        measured, predicted = r["measured_seconds_per_step"], r["predicted_seconds_per_step_on_ranks"]
        # a 2,410-parameter MLP on two loaded cores: steps of about a millisecond, the right order of magnitude
        assert 0 < measured < 1 and 0.2 < predicted / measured < 5, r


@pytest.mark.xdist_group("link-timing")
@pytest.mark.skipif(bool(__import__("compsde.distributed.netns", fromlist=["why_not"]).why_not()),
                    reason="a throttled link needs root and iproute2 (ip, tc)")
def test_cli_advise_on_a_throttled_link_measures_its_rate(capsys, tmp_path, monkeypatch):
    """--ranks 2 --throttle 100mbit: the two ranks in network namespaces joined by a veth throttled with tc; the link
    the ranks measure has the throttle's rate, and the namespaces are gone afterwards."""
    import subprocess

    from compsde.experiments.cli import main

    _real_probe_quick(monkeypatch)
    out = tmp_path / "t.json"
    assert main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--method", "dsignsgd", "--ranks", "2",
                 "--throttle", "100mbit", "--out", str(out)]) == 0
    ranks = json.loads(out.read_text(encoding="utf-8"))["cost"]["measured_on_ranks"]
    assert ranks["throttle"] == "100mbit"
    # measured 98–105 Mbit/s in four runs; tbf lets a 256 kB burst through at the veth's own speed, and the largest
    # message is 1 MiB, so the fitted rate may exceed the throttle's by up to 256k/(1M − 256k) ≈ 1/3
    assert 0.75 < ranks["link"]["bandwidth"] * 8 / 100e6 < 1.35, ranks["link"]
    assert f"compsde-{__import__('os').getpid()}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                                         text=True).stdout


def test_a_failed_rank_is_a_clear_error(capsys, tmp_path, monkeypatch):
    """A rank that fails while measuring stops the others and `compsde advise` says which, without a traceback."""
    from compsde.experiments.cli import main

    monkeypatch.setattr(advise_mod, "probe_oracle", lambda oracle, x: PROBE)
    monkeypatch.setenv("COMPSDE_TEST_FAULT", "kill:1@0")
    code = main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--ranks", "2", "--out", str(tmp_path / "f.json")])
    err = capsys.readouterr().err
    assert code != 0 and "rank 1" in err and "Traceback" not in err.split("distributed run failed")[-1], err
    assert not (tmp_path / "f.json").exists()


USER_GROUP_SCRIPT = r"""
import json, os, sys
import torch, torch.distributed as dist
from compsde.advise import advise, measure_group
from compsde.distributed.launch import init_from_env

torch.set_num_threads(1)
init_from_env(120)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 256, 16)]
loss_fn = torch.nn.functional.cross_entropy
methods = ["dsgd", "dsignsgd", "ef:top-k:ratio=0.1"]
costs = measure_group(model, lambda m, b: loss_fn(m(b[0]), b[1]), loader[dist.get_rank()], methods, timed=["dsignsgd"])
if dist.get_rank() == 0:
    adv = advise(model, loss_fn, loader, lr=0.1, batch=16, workers=2, methods=methods, link=costs, out=sys.argv[1])
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # as compsde's own ranks leave: gloo's destructors can abort at exit
"""


@pytest.mark.xdist_group("link-timing")
def test_advise_for_a_users_model_with_costs_measured_on_its_group(tmp_path):
    """The documented way on a real group: every rank runs ``measure_group`` on its model and batch, one rank passes
    the ``GroupCosts`` to ``advise`` as its link; the table's times come from them."""
    from compsde.distributed.launch import spawn

    spawn(2, ["-c", USER_GROUP_SCRIPT, str(tmp_path / "a.json")], timeout=120, jobdir=tmp_path / "job")
    d = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    ranks = d["cost"]["measured_on_ranks"]
    assert ranks["workers"] == 2 and sum(ranks["buckets"]) == 10 * 32 + 32 + 32 * 3 + 3
    assert ranks["measured_seconds_per_step"]["dsignsgd sign()"] > 0
    assert d["cost"]["compute_seconds"] == pytest.approx(sum(ranks["compute"].values()))
    assert all(r["seconds_per_step"] > 0 for r in d["table"])
    assert {r["method"] for r in d["table"]} == {"dsgd", "dsignsgd", "ef top-k(ratio=0.1)"}


def test_group_costs_missing_a_method_are_refused_loudly():
    """A method the GroupCosts hold no overhead for would silently lose its time column: refused by name instead."""
    from compsde.advise.cost import Compute, GroupCosts, Link, method_label
    from compsde.experiments import build

    g = GroupCosts(2, Link(1e8, 1e-4), Compute(1e-3, 2e-3), (2410,), {method_label(algorithms.make("dsgd")): 0.0}, {}, 1)

    oracle = build.load("mlp-sde-tracking", []).series[0].oracle
    with pytest.raises(ValueError, match="no hook overhead for dsignsgd"):
        advise_mod.advise_oracle(oracle, lr=0.1, methods=["dsgd", "dsignsgd"], probe=PROBE, link=g)
    adv = advise_mod.advise_oracle(oracle, lr=0.1, methods=["dsgd", "adamw"], probe=PROBE, link=g)  # adamw: no hook
    assert {r["method"]: r["seconds_per_step"] is None for r in adv.rows} == {"dsgd": False, "adamw": True}


def test_throttle_rates_and_the_links_clean_up(tmp_path):
    """--throttle's rates are tc's syntax from 10mbit to 100gbit; a link is removed when its block raises, and a link
    whose builder died is removed by the next one."""
    import os
    import subprocess

    from compsde.distributed import netns

    assert netns.bits_per_second("1gbit") == 1e9 and netns.bits_per_second("500MBIT") == 5e8
    for bad in ("1 gbit", "1gbps", "5mbit", "200gbit", "", "gbit", 3, None):
        with pytest.raises(ValueError, match="from 10mbit to 100gbit"):
            netns.bits_per_second(bad, "--throttle")
    if netns.why_not():
        pytest.skip(f"no throttled link here: {netns.why_not()}")
    listed = lambda: subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout  # noqa: E731
    with pytest.raises(RuntimeError, match="inside"), netns.throttled_link("100mbit"):
        assert f"{netns.PREFIX}{os.getpid()}-a" in listed()
        raise RuntimeError("inside")
    assert f"{netns.PREFIX}{os.getpid()}-" not in listed()
    dead = subprocess.Popen(["true"])
    dead.wait()
    subprocess.run(["ip", "netns", "add", f"{netns.PREFIX}{dead.pid}-a"], check=True)
    assert dead.pid in netns.remove_stale_links() and f"{netns.PREFIX}{dead.pid}-a" not in listed()


def test_cli_advise_stopped_by_a_signal(capsys, tmp_path, monkeypatch):
    """A signal caught while advising (e.g. inside the throttled link's block) exits 128 + its number, says so, and
    mentions run.json only where there is one."""
    import signal

    from compsde.distributed.launch import Interrupted
    from compsde.experiments.cli import main

    def stop(oracle, x):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(advise_mod, "probe_oracle", stop)
    assert main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--out", str(tmp_path / "a.json")]) == 143
    assert capsys.readouterr().err.strip() == "error: terminated by SIGTERM"
    assert main(["advise", "mlp-sde-tracking", "--method", "dsgd", "--out", str(tmp_path / "run")]) == 143
    assert capsys.readouterr().err.strip() == "error: terminated by SIGTERM (run.json records it)"
    assert json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))["status"] != "completed"
