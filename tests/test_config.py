"""Config layer: sources (presets, files, run folders), validation with helpful errors, --set overrides,
labels that follow them, TOML reading and writing, and building objects."""

from __future__ import annotations

import math
import re
import time
import tomllib

import pytest
import torch

from compsde.experiments import presets, schema
from compsde.experiments.build import build, dumps, load, resolve
from compsde.experiments.overrides import apply_overrides, parse_value
from compsde.experiments.presets import load_source

PRESETS = ["adam-scaling-rule", "adaptive-sde-comparison", "adaptive-sde-tracking", "cgd-quadratic", "compression-variance", "gpt-scaling-rules",
           "l0l1-schedules", "local-sgd-sde", "minimax-bilinear", "mlp-sde-tracking", "noise-resilience", "qsr", "qsr-sharpness",
           "resnet-compression-variance", "sam-flat-minima", "sam-saddle", "scaling-rules", "sde-heavy-tails",
           "sde-tracking", "signsgd-vs-sgd-heavy-tails", "signum-majority", "top1-divergence", "vit-heavy-tails", "weak-order"]


def minimal(**series):
    s = {"method": "dsgd", "lr": 0.1, **series}
    return {"run": {"steps": 10, "repeats": 2}, "problem": {"name": "quadratic", "dim": 4}, "series": [s]}


def labels(cfg):
    return [s["label"] for s in cfg["series"]]


# ---- presets -------------------------------------------------------------------------------------


def test_presets_listed():
    assert sorted(presets.presets()) == PRESETS == presets.preset_names()


@pytest.mark.parametrize("name", PRESETS)
def test_preset_description_is_its_claim(name):
    """The description `compsde presets` shows is the file's first comment line: one sentence stating
    the preset's claim, followed in the header by the paper it comes from."""
    text = presets.preset_text(name)
    header = text[: text.index("[run]")]
    first = header.splitlines()[0]
    desc = presets.presets()[name]
    assert first == f"# {desc}"
    assert desc.endswith(".") and "\n" not in desc
    assert re.search(r"(Compagnoni|Beznosikov|Gu|Bernstein).*\b20\d\d\b", header, re.S)  # every preset names the paper it demonstrates


def test_description_parser():
    assert presets.description("\n  # \n#  claim here.\n# more\n[run]\n") == "claim here."
    assert presets.description("[run]\n# not a header\n") == ""
    assert presets.description("") == ""


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_with_unique_labels(name):
    raw, stem = load_source(name)
    assert stem == name
    exp = load(name)
    assert exp.series and exp.name == name == exp.run["name"]
    assert len({s.label for s in exp.series}) == len(exp.series)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown preset or config file 'nope'.*noise-resilience"):
        load_source("nope")
    with pytest.raises(ValueError, match="the preset or config is empty"):
        load_source("")


def test_file_wins_and_stem_names_run(tmp_path):
    p = tmp_path / "my-exp.toml"
    p.write_text('[problem]\nname = "quadratic"\n[[series]]\nmethod = "dsgd"\nlr = 0.1\n')
    raw, stem = load_source(p)
    assert stem == "my-exp" and raw["series"][0]["lr"] == 0.1
    assert load(p).name == "my-exp"


def test_invalid_toml_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[run\nsteps = 1\n")
    with pytest.raises(ValueError, match="bad.toml: invalid TOML"):
        load_source(p)


# ---- run folders and file hygiene ------------------------------------------------------------------


def test_run_folder_is_a_source_and_keeps_the_name(tmp_path):
    cfg = resolve(minimal(), "my-experiment")
    d = tmp_path / "runs" / "some-folder"
    d.mkdir(parents=True)
    (d / "config.toml").write_text(dumps(cfg), encoding="utf-8")
    exp = load(d)
    assert exp.config == cfg and exp.name == "my-experiment"  # not "config", not the folder's name
    assert load(d / "config.toml").name == "my-experiment"
    del cfg["run"]["name"]  # a config.toml without a name: the folder names the experiment
    (d / "config.toml").write_text(dumps(cfg), encoding="utf-8")
    assert load(d).name == "some-folder"


def test_folder_without_config_toml_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is a directory without config.toml"):
        load_source(tmp_path / "empty")
    # config.toml that is a directory is never read as a file
    (tmp_path / "odd" / "config.toml").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"config.toml is a directory, not a config file"):
        load_source(tmp_path / "odd")


@pytest.mark.parametrize("data,match", [
    (b"\xef\xbb\xbf[run]\nsteps = 3\n", "starts with a UTF-8 byte-order mark"),
    (b"[run]\ntitle = \"caf\xe9\"\n", r"is not valid UTF-8: byte 0xe9 at offset 18 \(line 2\)"),
])
def test_encoding_errors_name_the_file(tmp_path, data, match):
    p = tmp_path / "enc.toml"
    p.write_bytes(data)
    with pytest.raises(ValueError, match=f"{p}.*{match}|{match}") as e:
        load_source(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("text,match", [
    ("[run]\nseed = 99999999999999999999\n", r"run.seed = 99999999999999999999 is outside TOML's 64-bit integer range"),
    ("[problem]\nname = \"quadratic\"\ndim = -99999999999999999999\n", r"problem.dim = .* outside TOML's 64-bit"),
    ("[noise]\nname = \"student-t\"\nnu = nan\n", r"noise.nu = nan: numbers in a config must be finite"),
    ("[noise]\nscale = [1.0, inf]\n", r"noise.scale\[1\] = inf: numbers in a config must be finite"),
])
def test_big_integers_and_non_finite_numbers_refused_anywhere(tmp_path, text, match):
    p = tmp_path / "c.toml"
    p.write_text(text + '[problem]\nname = "quadratic"\n' * ("[problem]" not in text)
                 + '[[series]]\nmethod = "dsgd"\nlr = 0.1\n', encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load(p)


def test_non_finite_and_big_values_refused_from_overrides():
    with pytest.raises(ValueError, match=r"series.0.lr = inf: numbers in a config must be finite"):
        resolve(apply_overrides(minimal(), ["series.lr=inf"]))
    with pytest.raises(ValueError, match=r"series.0.problem.dim = .* outside TOML's 64-bit integer range"):
        resolve(apply_overrides(minimal(), [f"series.problem.dim={2**63}"]))


@pytest.mark.parametrize("seed,ok", [(0, True), (2**63 - 1, True), (-1, False), (2**64, False)])
def test_seed_range(seed, ok):
    raw = minimal()
    raw["run"]["seed"] = seed
    if ok:
        assert resolve(raw)["run"]["seed"] == seed
    else:
        with pytest.raises(ValueError, match="run.seed"):
            resolve(raw)


# ---- defaults and round trip -----------------------------------------------------------------------


def test_defaults_filled():
    cfg = resolve(minimal())
    assert cfg["run"] == {"steps": 10, "repeats": 2, "seed": 0, "dtype": "float64", "device": "cpu", "log_every": 1,
                          "title": "", "name": "config", "paths": 2, "substeps": 1, "increments": "gaussian",
                          "mc_samples": 32}
    assert cfg["problem"] == {"name": "quadratic", "dim": 4, "eig_min": 0.5, "eig_max": 2.0, "rotate": False,
                              "heterogeneity": 0.0, "seed": 0, "x0_scale": 1.0}
    assert cfg["noise"] == {"name": "gaussian", "scale": 1.0}  # no ν: Gaussian noise has none
    s = cfg["series"][0]
    assert s["compressor"] == "identity" and s["schedule"] == "constant" and s["normalize"] is False
    assert s["workers"] == 1 and s["batch"] == 1 and s["label"] == "DSGD" and s["group"] == ""


def test_log_every_default_gives_about_200_points():
    raw = minimal()
    raw["run"]["steps"] = 5000
    assert resolve(raw)["run"]["log_every"] == 25


@pytest.mark.parametrize("name", PRESETS)
def test_resolved_round_trip(name):
    raw, stem = load_source(name)
    cfg = resolve(raw, stem)
    text = dumps(cfg, header="a header\nline two")
    assert text.startswith("# a header\n# line two\n")
    back = tomllib.loads(text)
    assert back == cfg
    assert resolve(back) == cfg  # resolving a resolved config changes nothing (its name included)


def test_schedule_defaults_and_compressor_defaults_filled():
    cfg = resolve(minimal(method="dcsgd", compressor="rand-k", k=2, schedule="step"))
    s = cfg["series"][0]
    assert s["shared"] is False and s["gamma"] == 0.1 and s["every"] == 3
    assert "ratio" not in s  # None defaults stay out (TOML has no null)


def test_step_every_default_after_a_warm_up_is_the_one_the_schedule_runs():
    """With a warm-up W and no ``every``, the resolved config, the derived label and the schedule the run
    builds agree with ``Schedule``'s own default: a third of the K − W steps after the warm-up."""
    from compsde.algorithms.schedules import Schedule

    raw = {**minimal(schedule="step", warmup_steps=12), "run": {"steps": 30, "repeats": 2}}
    s = resolve(raw)["series"][0]
    assert s["every"] == (30 - 12) // 3 and s["label"] == "DSGD step(warmup_steps=12)"
    own = Schedule("step", 0.1, 30, {"warmup_steps": 12})
    run = build(resolve(raw)).series[0].schedule
    assert [run(k) for k in range(30)] == [own(k) for k in range(30)]  # the same formula: equal bit for bit
    assert own(12 + 6) == pytest.approx(0.01, rel=1e-12)  # the first decay after (K − W)/3 = 6 steps
    # every given: the label shows it exactly when it differs from that default
    raw["series"][0]["every"] = 6
    assert resolve(raw)["series"][0]["label"] == "DSGD step(warmup_steps=12)"
    raw["series"][0]["every"] = 10
    assert resolve(raw)["series"][0]["label"] == "DSGD step(warmup_steps=12,every=10)"
    # a warm-up beyond the series' steps is refused when the config is resolved, naming the key
    raw["series"][0]["warmup_steps"] = 31
    with pytest.raises(ValueError, match=r"series.0.warmup_steps must be an integer in \[0, 30\], got 31"):
        resolve(raw)


def test_toml_writer_escapes_strings():
    cfg = resolve(minimal(label='odd "label" \\ with $unbalanced and ν', group="g'\"#[x]"))
    back = tomllib.loads(dumps(cfg))
    assert back["series"][0]["label"] == 'odd "label" \\ with $unbalanced and ν'
    assert back["series"][0]["group"] == "g'\"#[x]"


def test_float_values_round_trip_exactly():
    cfg = resolve(minimal(lr=1e-7))
    cfg["noise"]["scale"] = [0.1, 1e20, 3.0, 5e-324, 1 / 3]
    cfg["series"][0]["lr"] = math.nextafter(0.1, 1.0)
    back = tomllib.loads(dumps(cfg))
    assert back["noise"]["scale"] == [0.1, 1e20, 3.0, 5e-324, 1 / 3]
    assert back["series"][0]["lr"] == math.nextafter(0.1, 1.0)


# ---- name, device, text ------------------------------------------------------------------------------


def test_name_default_explicit_and_override():
    assert resolve(minimal())["run"]["name"] == "config"
    assert resolve(minimal(), "from-file")["run"]["name"] == "from-file"
    raw = minimal()
    raw["run"]["name"] = "mine"
    assert resolve(raw, "from-file")["run"]["name"] == "mine"  # the config's own name wins
    assert load(raw, ["run.name=other"]).name == "other"
    for bad in ("a/b", "..", "", "x\ny"):
        with pytest.raises(ValueError, match=r"run.name = "):
            load(raw, [f"run.name={bad!r}".replace("'", '"')])


def test_device():
    raw = minimal()
    raw["run"]["device"] = "cpu"
    assert resolve(raw)["run"]["device"] == "cpu"
    raw["run"]["device"] = "tpu"
    with pytest.raises(ValueError, match="run.device must be a device such as 'cpu' or 'cuda', got 'tpu'"):
        resolve(raw)
    if not torch.cuda.is_available():
        raw["run"]["device"] = "cuda"
        with pytest.raises(ValueError, match=r"run.device = 'cuda', but this machine has no CUDA device"):
            resolve(raw)


@pytest.mark.parametrize("where,value,match", [
    ("title", "line\nbreak", r"run.title = 'line\\nbreak' contains the control character U\+000A"),
    ("label", "tab\there", r"series.0.label = 'tab\\there' contains the control character U\+0009"),
    ("group", "x" * 201, r"series.0.group = 'x+\.\.\. is 201 characters long; plots show at most 200"),
    ("label", "bad \ud800 surrogate", r"series.0.label = .* contains the lone surrogate U\+D800"),
])
def test_text_that_plots_cannot_show_is_refused_at_resolve(where, value, match):
    raw = minimal()
    if where == "title":
        raw["run"]["title"] = value
    else:
        raw["series"][0][where] = value
    with pytest.raises(ValueError, match=match):
        resolve(raw)


def test_mathtext_is_fine_in_labels():
    assert labels(resolve(minimal(label="cost $5 and $\\frac{")))[0] == "cost $5 and $\\frac{"


# ---- sizes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value,match", [
    ("steps", 2 * 10**9, r"run.steps must be an integer in \[1, 1000000000\], got 2000000000"),
    ("repeats", 0, r"run.repeats must be an integer in \[1, 1000000000\], got 0"),
    ("substeps", 10**7, r"run.substeps must be an integer in \[1, 1000000\]"),
    ("mc_samples", 1, r"run.mc_samples must be an integer in \[2, 1000000\]"),
    ("log_every", 0, r"run.log_every must be an integer in \[1, 1000000000\]"),
])
def test_run_counts_have_sane_ranges(key, value, match):
    raw = minimal()
    raw["run"][key] = value
    with pytest.raises(ValueError, match=match):
        resolve(raw)


def test_memory_refused_before_the_problem_is_built():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"^series.0 \('DSGD'\): 1 worker\(s\) × 2 repetition\(s\) × d = 1000000000 "
                                         r"in float64 needs about .* of memory, but only .* is available"):
        load(minimal(), ["problem.dim=1000000000"])
    with pytest.raises(ValueError, match=r"× 1000000000 repetition\(s\) × d = 4 .* needs about .* available"):
        load(minimal(), ["run.repeats=1000000000"])
    assert time.perf_counter() - t0 < 5  # refused from the estimate, nothing of that size allocated


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
    with pytest.raises(ValueError, match=r"series.0.lr must be a number, got 'fast'"):
        resolve(minimal(lr="fast"))
    with pytest.raises(ValueError, match="series.0.normalize must be a boolean"):
        resolve(minimal(normalize=1))


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
    with pytest.raises(ValueError, match="unknown method 'lion'; valid methods: dsgd, dcsgd"):
        resolve(minimal(method="lion"))
    with pytest.raises(ValueError, match="method 'dcsgd' needs a compressor; valid compressors: identity"):
        resolve(minimal(method="dcsgd"))
    with pytest.raises(ValueError, match="unknown compressor 'top-kk'"):
        resolve(minimal(method="dcsgd", compressor="top-kk"))
    with pytest.raises(ValueError, match="compressor 'top-k' does not take 'levels'.*it takes: k, ratio"):
        resolve(minimal(method="dcsgd", compressor="top-k", k=1, levels=3))
    with pytest.raises(ValueError, match="'power'.*belongs to another schedule; schedule 'constant' takes: warmup_steps"):
        resolve(minimal(power=0.5))
    with pytest.raises(ValueError, match="unknown key 'lrr'.*valid keys: label, group, method"):
        resolve(minimal(lrr=0.1))
    with pytest.raises(ValueError, match="missing required key 'lr'"):
        resolve({"problem": {"name": "quadratic"}, "series": [{"method": "dsgd"}]})
    with pytest.raises(ValueError, match="needs one or more"):
        resolve({"problem": {"name": "quadratic"}})


@pytest.mark.parametrize("noise,series_noise,match", [
    ({"name": "gaussian", "nu": 3}, None, r"noise.nu = 3 does not apply to noise 'gaussian': only 'student-t' noise "
                                          r"has degrees of freedom ν; noise 'gaussian' takes: name, scale"),
    ({"name": "none", "nu": 2.0}, None, r"noise.nu = 2.0 does not apply to noise 'none'"),
    ({"name": "none", "scale": 0.5}, None, r"noise.scale = 0.5 does not apply to noise 'none': noise 'none' adds no "
                                           r"noise, so it has no scale"),
    ({"name": "gaussian"}, {"nu": 2}, r"series.0.noise.nu = 2 does not apply to noise 'gaussian'"),
    ({"name": "student-t"}, {"name": "none", "scale": 2.0}, r"series.0.noise.scale = 2.0 does not apply to noise 'none'"),
])
def test_noise_keys_that_do_not_apply_are_refused(noise, series_noise, match):
    raw = minimal(**({"noise": series_noise} if series_noise else {}))
    raw["noise"] = noise
    with pytest.raises(ValueError, match=match):
        resolve(raw)


def test_inherited_noise_keys_that_do_not_apply_are_dropped():
    raw = minimal(noise={"name": "gaussian"})
    raw["noise"] = {"name": "student-t", "scale": 0.5, "nu": 2.0}
    cfg = resolve(raw)
    assert cfg["series"][0]["noise"] == {"name": "gaussian"}
    n = build(cfg).series[0].noise
    assert (n.name, n.scale) == ("gaussian", 0.5)
    assert resolve(cfg) == cfg


def test_sde_keys_are_accepted_in_any_config():
    raw = minimal()
    raw["run"].update(paths=3, substeps=2, increments="rademacher", mc_samples=4)
    assert resolve(raw)["run"]["substeps"] == 2


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
    assert labels(cfg) == ["DSGD", "DSGD #1"]
    raw["series"][0]["label"] = raw["series"][1]["label"] = "same"
    with pytest.raises(ValueError, match="'same' is already the label of series 0; labels must be unique"):
        resolve(raw)


def test_derived_label_names_what_distinguishes_the_series():
    cfg = resolve(minimal(method="dcsgd", compressor="rand-k", k=2, shared=False, schedule="poly", power=1.0,
                          normalize=True, worker={"momentum": 0.9}, noise={"scale": 2.0}))
    assert labels(cfg) == ["DCSGD rand-k(k=2) normalized poly(power=1) worker(momentum=0.9) scale=2"]


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
    raw = minimal(noise={"nu": 3.0, "name": "student-t"})
    raw["noise"] = {"name": "student-t"}
    assert resolve(raw)["series"][0].get("noise") is None  # same as top level


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


def test_switching_a_name_drops_the_keys_only_the_old_one_took():
    raw = load_source("noise-resilience")[0]
    cfg = resolve(apply_overrides(raw, ["noise.name=gaussian", "series.noise.name=gaussian"]))
    assert cfg["noise"] == {"name": "gaussian", "scale": 1.0}
    assert all("noise" not in s for s in cfg["series"])
    # ... from a resolved config too (it holds every default: shared, power, ...)
    resolved = resolve(load_source("l0l1-schedules")[0])
    cfg = resolve(apply_overrides(resolved, ["series.2.compressor=natural", "series.2.schedule=step",
                                             "series.2.gamma=0.5"]))
    s = cfg["series"][2]
    assert s["compressor"] == "natural" and "ratio" not in s and "shared" not in s
    assert s["schedule"] == "step" and s["gamma"] == 0.5 and "power" not in s
    # a key the same overrides set is never dropped: it is refused if it does not apply
    with pytest.raises(ValueError, match="compressor 'natural' does not take 'ratio'"):
        resolve(apply_overrides(raw, ["series.1.compressor=natural", "series.1.ratio=0.5"]))
    cfg = resolve(apply_overrides(resolve(minimal()), ["problem.name=l0l1-cosh"]))
    assert set(cfg["problem"]) == set(schema.problem_keys("l0l1-cosh"))


def test_labels_follow_overrides():
    raw = load_source("noise-resilience")[0]
    before = labels(resolve(raw))
    assert before[1] == "DCSGD Rand-k ν=1"
    cfg = resolve(apply_overrides(raw, ["series.1.compressor=top-k"]))
    assert labels(cfg)[1] == "DCSGD top-k(ratio=0.25) ν=1"  # re-derived from the resolved series
    assert labels(cfg)[:1] + labels(cfg)[2:] == before[:1] + before[2:]  # the other series keep theirs
    # the same overrides set the label: it is kept
    cfg = resolve(apply_overrides(raw, ["series.1.compressor=top-k", "series.1.label=mine"]))
    assert labels(cfg)[1] == "mine"
    # lr, steps, workers, batch, group and the top-level sections keep the labels
    cfg = resolve(apply_overrides(raw, ["series.lr=0.01", "series.workers=2", "series.batch=4", "series.steps=7",
                                        "series.group=g", "noise.nu=5", "problem.dim=5", "run.steps=9"]))
    assert labels(cfg) == before
    # an inline noise override re-derives every label it touches (duplicates numbered)
    cfg = resolve(apply_overrides(raw, ["series.noise.nu=2"]))
    assert labels(cfg)[:3] == ["DSGD ν=2", "DCSGD rand-k(ratio=0.25) ν=2", "DSignSGD ν=2"]
    assert labels(cfg)[3] == "DSGD ν=2 #3"


@pytest.mark.parametrize("key", ["method=dsignsgd", "normalize=true", "schedule=cosine", "final_ratio=0.5",
                                 "worker={momentum = 0.9}", "server.momentum=0.5", "problem.dim=3",
                                 "noise={nu = 2}"])
def test_every_label_key_re_derives_the_label(key):
    raw = minimal(label="explicit")
    if key.startswith("final_ratio"):
        raw["series"][0]["schedule"] = "cosine"
    cfg = resolve(apply_overrides(raw, [f"series.0.{key}"]) | ({"noise": {"name": "student-t"}} if "nu" in key else {}))
    assert labels(cfg)[0] != "explicit"


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
    raw["noise"] = {"name": "student-t"}
    raw["series"].append({"method": "dsgd", "lr": 0.5, "noise": {"nu": 2.0}})
    exp = build(resolve(raw))
    assert exp.series[0].color_key == exp.series[1].color_key


def test_header_comment_cannot_break_out_of_the_comment():
    cfg = resolve(minimal())
    text = dumps(cfg, header="line one\rsteps = 5\x00\nline two")
    assert tomllib.loads(text) == cfg
    assert text.splitlines()[:2] == ["# line one steps = 5 ", "# line two"]
