"""Config layer: loading, validation with helpful errors, --set overrides, presets, TOML round trip."""

from __future__ import annotations

import tomllib

import pytest

from compsde.experiments import config
from compsde.experiments.config import apply_overrides, build, dumps, load, load_source, parse_value, resolve

PRESETS = ["cgd-quadratic", "compression-variance", "l0l1-schedules", "noise-resilience", "scaling-rules",
           "sde-heavy-tails", "sde-tracking", "top1-divergence", "weak-order"]


def minimal(**series):
    s = {"method": "dsgd", "lr": 0.1, **series}
    return {"run": {"steps": 10, "repeats": 2}, "problem": {"name": "quadratic", "dim": 4}, "series": [s]}


# ---- presets -------------------------------------------------------------------------------------


def test_presets_listed_with_descriptions():
    items = config.presets()
    assert sorted(items) == PRESETS
    for name, desc in items.items():
        assert desc and len(desc) < 160, name


@pytest.mark.parametrize("name", PRESETS)
def test_preset_starts_with_claim_comment_and_builds(name):
    raw, stem = load_source(name)
    assert stem == name
    text = config._preset_text(name)
    assert text.startswith("# ")
    assert "Seed 00" in text[: text.index("[run]")]
    exp = load(name)
    assert exp.series and exp.name == name
    assert len({s.label for s in exp.series}) == len(exp.series)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown preset or config file 'nope'.*noise-resilience"):
        load_source("nope")


def test_file_wins_and_stem_names_run(tmp_path):
    p = tmp_path / "my-exp.toml"
    p.write_text('[problem]\nname = "quadratic"\n[[series]]\nmethod = "dsgd"\nlr = 0.1\n')
    raw, stem = load_source(p)
    assert stem == "my-exp" and raw["series"][0]["lr"] == 0.1


def test_invalid_toml_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[run\nsteps = 1\n")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        load_source(p)


# ---- defaults and round trip -----------------------------------------------------------------------


def test_defaults_filled():
    cfg = resolve(minimal())
    assert cfg["run"] == {"steps": 10, "repeats": 2, "seed": 0, "dtype": "float64", "log_every": 1, "title": "",
                          "paths": 2, "substeps": 1, "increments": "gaussian", "mc_samples": 32}
    assert cfg["problem"] == {"name": "quadratic", "dim": 4, "eig_min": 0.5, "eig_max": 2.0, "rotate": False,
                              "heterogeneity": 0.0, "seed": 0, "x0_scale": 1.0}
    assert cfg["noise"] == {"name": "gaussian", "scale": 1.0, "nu": 3.0}
    s = cfg["series"][0]
    assert s["compressor"] == "identity" and s["schedule"] == "constant" and s["normalize"] is False
    assert s["workers"] == 1 and s["batch"] == 1 and s["label"] == "DSGD" and s["group"] == ""


def test_log_every_default_gives_about_200_points():
    raw = minimal()
    raw["run"]["steps"] = 5000
    assert resolve(raw)["run"]["log_every"] == 25


@pytest.mark.parametrize("name", PRESETS)
def test_resolved_round_trip(name):
    cfg = resolve(load_source(name)[0])
    text = dumps(cfg, header="a header\nline two")
    back = tomllib.loads(text)
    assert back == cfg
    assert resolve(back) == cfg  # resolving a resolved config changes nothing


def test_schedule_defaults_and_compressor_defaults_filled():
    cfg = resolve(minimal(method="dcsgd", compressor="rand-k", k=2, schedule="step"))
    s = cfg["series"][0]
    assert s["shared"] is False and s["gamma"] == 0.1 and s["every"] == 3
    assert "ratio" not in s  # None defaults stay out (TOML has no null)


def test_toml_writer_escapes_strings():
    cfg = resolve(minimal(label='odd "label" \\ with\nnewline\ttab and ν', group="g\x01"))
    back = tomllib.loads(dumps(cfg))
    assert back["series"][0]["label"] == 'odd "label" \\ with\nnewline\ttab and ν'
    assert back["series"][0]["group"] == "g\x01"


def test_float_values_round_trip_exactly():
    cfg = resolve(minimal(lr=1e-7))
    cfg["noise"]["scale"] = [0.1, 1e20, 3.0]
    assert tomllib.loads(dumps(cfg))["noise"]["scale"] == [0.1, 1e20, 3.0]


# ---- validation errors -----------------------------------------------------------------------------


def test_unknown_run_key_lists_valid_keys():
    raw = minimal()
    raw["run"]["stesp"] = 5
    with pytest.raises(ValueError, match=r"\[run\]: unknown key 'stesp' \(value 5\); valid keys: steps, repeats"):
        resolve(raw)


def test_unknown_section():
    raw = minimal()
    raw["optimizer"] = {}
    with pytest.raises(ValueError, match="unknown key 'optimizer'.*valid keys: run, problem, noise, series"):
        resolve(raw)


def test_wrong_type_names_key_value_and_type():
    raw = minimal()
    raw["run"]["steps"] = "ten"
    with pytest.raises(ValueError, match=r"run.steps must be an integer, got 'ten' \(string\)"):
        resolve(raw)
    raw = minimal(lr="fast")
    with pytest.raises(ValueError, match=r"series.0.lr must be a number, got 'fast'"):
        resolve(raw)
    raw = minimal(normalize=1)
    with pytest.raises(ValueError, match="series.0.normalize must be a boolean"):
        resolve(raw)


def test_unknown_problem_key_lists_constructor_parameters():
    raw = minimal()
    raw["problem"]["eig_mx"] = 3.0
    with pytest.raises(ValueError, match="unknown key 'eig_mx'.*valid keys: name, dim, eig_min, eig_max, rotate"):
        resolve(raw)


def test_problem_param_type_from_annotation():
    raw = minimal()
    raw["problem"]["dim"] = 4.5
    with pytest.raises(ValueError, match="problem.dim must be an integer, got 4.5"):
        resolve(raw)


def test_unknown_problem_and_noise_names():
    raw = minimal()
    raw["problem"]["name"] = "rosenbrock"
    with pytest.raises(ValueError, match="unknown problem 'rosenbrock'; valid names: quadratic"):
        resolve(raw)
    raw = minimal()
    raw["noise"] = {"name": "levy"}
    with pytest.raises(ValueError, match="noise.name must be one of none, gaussian, student-t, got 'levy'"):
        resolve(raw)


def test_series_errors():
    with pytest.raises(ValueError, match="unknown method 'adam'; valid methods: dsgd, dcsgd"):
        resolve(minimal(method="adam"))
    with pytest.raises(ValueError, match="method 'dcsgd' needs a compressor; valid compressors: identity"):
        resolve(minimal(method="dcsgd"))
    with pytest.raises(ValueError, match="unknown compressor 'top-kk'"):
        resolve(minimal(method="dcsgd", compressor="top-kk"))
    with pytest.raises(ValueError, match="compressor 'top-k' does not take 'levels'.*it takes: k, ratio"):
        resolve(minimal(method="dcsgd", compressor="top-k", k=1, levels=3))
    with pytest.raises(ValueError, match="'power'.*belongs to another schedule; schedule 'constant' takes: nothing"):
        resolve(minimal(power=0.5))
    with pytest.raises(ValueError, match="unknown key 'lrr'.*valid keys: label, group, method"):
        resolve(minimal(lrr=0.1))
    with pytest.raises(ValueError, match="missing required key 'lr'"):
        resolve({"problem": {"name": "quadratic"}, "series": [{"method": "dsgd"}]})
    with pytest.raises(ValueError, match="needs one or more"):
        resolve({"problem": {"name": "quadratic"}})


def test_bad_method_compressor_combination_fails_at_build():
    cfg = resolve(minimal(method="dsignsgd", compressor="top-k", k=1))
    with pytest.raises(ValueError, match=r"series.0 .*implies compressor 'sign'; got compressor 'top-k'"):
        build(cfg)
    with pytest.raises(ValueError, match="series.0 .*give exactly one of k"):
        build(resolve(minimal(method="dcsgd", compressor="rand-k")))
    with pytest.raises(ValueError, match="k must be between 1 and d = 4"):
        build(resolve(minimal(method="dcsgd", compressor="top-k", k=9)))


def test_implied_compressor_may_be_named():
    cfg = resolve(minimal(method="dsignsgd", compressor="sign"))
    assert build(cfg).series[0].algorithm.compressor.name == "sign"


def test_fixed_workers_checked_at_build():
    raw = minimal(workers=2)
    raw["problem"] = {"name": "top1-counterexample"}
    with pytest.raises(ValueError, match="defined for workers = 3, got workers = 2"):
        build(resolve(raw))


def test_per_worker_noise_scale_length_checked():
    raw = minimal(workers=3)
    raw["noise"] = {"scale": [1.0, 2.0]}
    with pytest.raises(ValueError, match="noise scale has 2 per-worker values"):
        build(resolve(raw))


def test_labels_unique():
    raw = minimal()
    raw["series"].append(dict(raw["series"][0]))
    cfg = resolve(raw)
    assert [s["label"] for s in cfg["series"]] == ["DSGD", "DSGD #1"]
    raw["series"][0]["label"] = raw["series"][1]["label"] = "same"
    with pytest.raises(ValueError, match="'same' is already the label of series 0; labels must be unique"):
        resolve(raw)


# ---- per-series overrides --------------------------------------------------------------------------


def test_series_problem_override_changing_name_inherits_valid_keys_only():
    raw = minimal(problem={"name": "linear-regression", "samples": 30})
    raw["problem"]["eig_min"] = 0.1
    cfg = resolve(raw)
    assert cfg["series"][0]["problem"] == {"name": "linear-regression", "samples": 30, "dataset": "synthetic"}
    exp = build(cfg)
    p = exp.series[0].problem
    assert p.name == "linear-regression" and p.dim == 4 and p.a.shape == (30, 4)


def test_series_noise_override_only_differences_written():
    raw = minimal(noise={"nu": 2, "name": "student-t"})
    raw["noise"] = {"name": "student-t", "scale": 0.5}
    cfg = resolve(raw)
    assert cfg["series"][0]["noise"] == {"nu": 2.0}
    n = build(cfg).series[0].noise
    assert (n.name, n.scale, n.nu) == ("student-t", 0.5, 2.0)
    assert resolve(minimal(noise={"nu": 3.0}))["series"][0].get("noise") is None  # same as top level


def test_series_override_unknown_key():
    with pytest.raises(ValueError, match=r"series.0.problem: unknown key 'bogus'"):
        resolve(minimal(problem={"bogus": 1}))
    with pytest.raises(ValueError, match=r"series.0.noise: unknown key 'df'"):
        resolve(minimal(noise={"df": 1}))


def test_problems_shared_between_series_with_same_parameters():
    raw = minimal()
    raw["series"].append({"method": "dsignsgd", "lr": 0.01})
    exp = build(resolve(raw))
    assert exp.series[0].problem is exp.series[1].problem


# ---- --set -------------------------------------------------------------------------------------------


def test_parse_value():
    assert parse_value("50") == 50
    assert parse_value("0.5") == 0.5
    assert parse_value("true") is True
    assert parse_value('"x y"') == "x y"
    assert parse_value("student-t") == "student-t"
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("{nu = 2}") == {"nu": 2}
    assert parse_value("1e-3") == 1e-3


def test_overrides_apply():
    raw = load_source("noise-resilience")[0]
    out = apply_overrides(raw, ["run.steps=50", "noise.nu=2", "problem.dim=5", "series.lr=0.1",
                                "series.2.lr=0.2", "series.0.noise.nu=7", "run.title=quick"])
    assert raw["run"]["steps"] != 50  # the input is not modified
    assert out["run"]["steps"] == 50 and out["noise"]["nu"] == 2 and out["problem"]["dim"] == 5
    assert [s["lr"] for s in out["series"][:4]] == [0.1, 0.1, 0.2, 0.1]
    assert out["series"][0]["noise"]["nu"] == 7 and out["run"]["title"] == "quick"
    cfg = resolve(out)
    assert cfg["problem"]["dim"] == 5


def test_override_can_switch_compressor_and_schedule():
    cfg = resolve(apply_overrides(minimal(method="dcsgd", compressor="top-k", k=1),
                                  ["series.compressor=rand-k", "series.0.schedule=poly", "series.power=1.0"]))
    s = cfg["series"][0]
    assert (s["compressor"], s["schedule"], s["power"]) == ("rand-k", "poly", 1.0)


@pytest.mark.parametrize("item,match", [
    ("steps=5", "unknown section 'steps'; valid sections: run, problem, noise, series"),
    ("run.steps", "--set expects KEY=VALUE"),
    ("run=5", "give a key inside the section"),
    ("series.3.lr=0.1", "series index 3 out of range; the config has 1 series"),
    ("run..steps=3", "empty key"),
])
def test_bad_set_items(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(minimal(), [item])


def test_set_unknown_key_rejected_by_validation_with_value():
    raw = apply_overrides(minimal(), ["run.stpes=50"])
    with pytest.raises(ValueError, match=r"unknown key 'stpes' \(value 50\)"):
        resolve(raw)
    raw = apply_overrides(minimal(), ["series.lr=fast"])
    with pytest.raises(ValueError, match="series.0.lr must be a number, got 'fast'"):
        resolve(raw)


def test_color_key_ignores_overrides_and_lr():
    raw = minimal(noise={"nu": 1.0})
    raw["series"].append({"method": "dsgd", "lr": 0.5, "noise": {"nu": 2.0}})
    exp = build(resolve(raw))
    assert exp.series[0].color_key == exp.series[1].color_key
