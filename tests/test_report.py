"""report.html: one self-contained page per run folder (``compsde.experiments.report``), checked as HTML
(well-formed, every figure embedded, hostile strings escaped, nothing fetched from elsewhere), for
finished, diverged and interrupted runs, through the CLI, and loaded in a real headless browser; and the
optional TensorBoard stream of the metrics rows."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import sys
from html.parser import HTMLParser

import pytest

from compsde.experiments import build, cli, runner
from compsde.experiments.plots import CAPTIONS, PLOT_FILES
from compsde.experiments.report import REPORT_FILE, render_report, write_report
from compsde.experiments.runner import run_experiment

HOSTILE = '<script>alert("x")</script> & \'q\''
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Two series, one with a hostile label, two workers and a lossy compressor: loss, loss_vs_bits, final and
# compression_error figures.
RAW = {"run": {"steps": 20, "repeats": 4, "log_every": 5, "title": f"Report {HOSTILE}"},
       "problem": {"name": "quadratic", "dim": 6},
       "series": [{"method": "dsgd", "lr": 0.1, "workers": 2},
                  {"label": HOSTILE, "method": "dcsgd", "compressor": "rand-k", "k": 2, "lr": 0.05, "workers": 2}]}


class _Page(HTMLParser):
    """Parses a page, checking that every element is closed in order; collects text, tags and attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.errors.append(f"end tag of the void element {tag}")
        elif not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.doctype and not page.errors and not page.stack, (page.errors, page.stack)
    return page


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run with plots (its report written by the run)."""
    return run_experiment(RAW, tmp_path_factory.mktemp("report") / "run", progress=False)


def test_the_page_is_well_formed_and_escapes_every_string(run_dir):
    text = (run_dir / REPORT_FILE).read_text(encoding="utf-8")
    page = _parse(text)
    assert "script" not in {tag for tag, _ in page.tags}  # the label is text, not an element
    assert HOSTILE in "".join(page.text) and f"Report {HOSTILE}" in "".join(page.text)
    assert "<script>" not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert text == render_report(run_dir)  # what write_report wrote at the end of the run


def test_every_figure_is_embedded_with_alt_text_and_caption(run_dir):
    page = _parse((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    imgs = [attrs for tag, attrs in page.tags if tag == "img"]
    pngs = sorted(run_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"loss.png", "loss_vs_bits.png", "final.png", "compression_error.png"}
    embedded = []
    for attrs in imgs:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        embedded.append(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert attrs["alt"] and int(attrs["width"] or 0) > 0 and int(attrs["height"] or 0) > 0
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)  # every figure of the folder, once
    text = "".join(page.text)
    for p in pngs:
        assert CAPTIONS[p.name] in text


def test_every_plot_file_has_a_caption():
    assert set(CAPTIONS) == set(PLOT_FILES)


def test_nothing_is_fetched_from_elsewhere(run_dir):
    text = (run_dir / REPORT_FILE).read_text(encoding="utf-8")
    page = _parse(text)
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "data"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, key, value[:80])
    assert "url(" not in text and "@import" not in text
    assert [attrs for tag, attrs in page.tags if tag == "link"] == [{"rel": "icon", "href": "data:,"}]


def test_the_page_holds_the_results_config_and_provenance(run_dir):
    import compsde

    text = "".join(_parse((run_dir / REPORT_FILE).read_text(encoding="utf-8")).text)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    for s in summary["series"]:
        assert s["label"] in text and f"{s['final']['loss_mean']:.4g}" in text
    assert (run_dir / "config.toml").read_text(encoding="utf-8") in text  # the config as TOML, verbatim
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    for fact in (compsde.__version__, record["versions"]["torch"], record["versions"]["python"], record["command"],
                 record["started"], record["ended"], "The run finished."):
        assert fact in text
    assert "duration" in text and "Claim" not in text  # a config dict has no claim


def test_a_diverged_run_names_its_series_and_step(tmp_path):
    exp = build.load("top1-divergence", ["run.steps=200", "run.log_every=10"])
    out = run_experiment(exp, tmp_path / "div", progress=False, plots=False)
    text = "".join(_parse((out / REPORT_FILE).read_text(encoding="utf-8")).text)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    (top1,) = [s for s in summary["series"] if s["first_diverged_step"] is not None]
    assert f"{top1['label']} (all repetitions at the end, the first at step {top1['first_diverged_step']})" in text
    assert "1 of 3 series diverged" in text and "No figures" in text
    assert exp.claim and exp.claim in text  # the preset's claim, recorded in run.json
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["claim"] == exp.claim
    # re-running the folder (or its config.toml) keeps the claim; a TOML file's claim is its first comment line
    assert build.load(out).claim == build.load(out / "config.toml").claim == exp.claim
    (tmp_path / "mine.toml").write_text("# Top-k beats Rand-k here.\n" + (out / "config.toml").read_text(encoding="utf-8"),
                                        encoding="utf-8")
    assert build.load(tmp_path / "mine.toml").claim == "Top-k beats Rand-k here."


def test_an_interrupted_run_gets_a_report_of_what_it_wrote(tmp_path, monkeypatch):
    calls = [0]
    step = runner.Loop.step

    def failing(self):
        calls[0] += 1
        if calls[0] == 20 + 7:  # step 7 of the second series
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(runner.Loop, "step", failing)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(RAW, tmp_path, progress=False, plots=False)
    assert not (tmp_path / "summary.json").exists()
    text = "".join(_parse((tmp_path / REPORT_FILE).read_text(encoding="utf-8")).text)
    assert "The run was interrupted (Ctrl-C)." in text and "last logged row" in text
    with open(tmp_path / "metrics.csv", newline="", encoding="utf-8") as f:
        last = list(csv.DictReader(f))[-1]
    assert last["step"] == "20" and last["source"] == "optimizer"  # the first series, done before the interrupt
    assert f"{float(last['loss_mean']):.4g}" in text


def test_advice_is_shown_when_the_folder_holds_it(run_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    advice = {"table": [{"method": "dsgd", "seconds_per_step": 0.0125, "loss_gap": 0.0, "note": HOSTILE},
                        {"method": "dsignsgd", "seconds_per_step": 0.003, "loss_gap": None, "lr": 0.01}],
              "recommendation": f"dsignsgd {HOSTILE}", "reasons": ["4x fewer bytes", f"heavy tails {HOSTILE}"]}
    (d / "advice.json").write_text(json.dumps(advice), encoding="utf-8")
    text = write_report(d).read_text(encoding="utf-8")
    page = _parse(text)
    body = "".join(page.text)
    assert f"dsignsgd {HOSTILE}" in body and f"heavy tails {HOSTILE}" in body and "0.0125" in body
    section = text[text.index('<section id="advice">'):]
    section = section[: section.index("</section>")]
    headers = re.findall(r'<th scope="col">(.*?)</th>', section)
    assert headers == ["method", "seconds_per_step", "loss_gap", "note", "lr"]  # every key, first seen first
    assert section.index("Recommendation") < section.index("<table>")
    assert "script" not in {tag for tag, _ in page.tags}
    (d / "advice.json").write_text(json.dumps({"table": "no"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"advice\.json must hold .*recommendation"):
        write_report(d)


def _cli(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_report_and_its_errors(capsys, run_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    (d / REPORT_FILE).unlink()
    code, out, err = _cli(capsys, ["report", str(d)])
    assert code == 0 and out == f"wrote {d / REPORT_FILE}\n" and (d / REPORT_FILE).is_file()
    missing = tmp_path / "nope"
    code, _, err = _cli(capsys, ["report", str(missing)])
    assert code == 2 and err.startswith(f"error: RUN_DIR {str(missing)!r} does not exist; expected the folder")
    (tmp_path / "file").write_text("x")
    code, _, err = _cli(capsys, ["report", str(tmp_path / "file")])
    assert code == 2 and "is not a directory" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, ["report", str(tmp_path / "empty")])
    assert code == 2 and "is not a run folder: it holds no run.json" in err
    (d / "run.json").write_text("{not json", encoding="utf-8")
    code, _, err = _cli(capsys, ["report", str(d)])
    assert code == 2 and "run.json is not valid JSON" in err
    with pytest.raises(ValueError, match="run_dir .* does not exist"):
        write_report(missing)


def test_cli_run_writes_the_report_unless_no_report(capsys, tmp_path):
    base = ["run", "top1-divergence", "--set", "run.steps=4", "run.repeats=2", "--no-progress", "--no-plots"]
    code, _, err = _cli(capsys, [*base, "--out", str(tmp_path / "a")])
    assert code == 0, err
    assert "top1-divergence" in (tmp_path / "a" / REPORT_FILE).read_text(encoding="utf-8")
    code, _, err = _cli(capsys, [*base, "--out", str(tmp_path / "b"), "--no-report"])
    assert code == 0, err
    assert not (tmp_path / "b" / REPORT_FILE).exists() and (tmp_path / "b" / "summary.json").exists()


def test_a_tracked_run_shows_each_series_tracking_error(capsys, tmp_path):
    code, _, err = _cli(capsys, ["track", "sde-tracking", "--set", "run.steps=10", "run.repeats=2", "run.log_every=5",
                                 "--no-progress", "--no-plots", "--out", str(tmp_path / "o")])
    assert code == 0, err
    text = "".join(_parse((tmp_path / "o" / REPORT_FILE).read_text(encoding="utf-8")).text)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))
    assert "SDE tracking error mean / max" in text
    for s in summary["series"]:
        t = s["tracking"]
        assert f"{t['mean_rel_error']:.2%} / {t['max_rel_error']:.2%}" in text


# ---- TensorBoard ---------------------------------------------------------------------------------


def test_tensorboard_without_the_package_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    code, _, err = _cli(capsys, ["run", "top1-divergence", "--set", "run.steps=4", "--no-progress", "--no-plots",
                                 "--out", str(tmp_path / "o"), "--tensorboard", str(tmp_path / "tb")])
    assert code == 2 and err.startswith("error: --tensorboard needs the tensorboard package")
    assert "pip install 'compsde[tensorboard]'" in err and not (tmp_path / "o").exists()


def test_tensorboard_streams_every_metrics_row(capsys, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (the optional [tensorboard] extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _, err = _cli(capsys, ["track", "sde-tracking", "--set", "run.steps=10", "run.repeats=2", "run.log_every=5",
                                 "--no-progress", "--no-plots", "--out", str(tmp_path / "o"),
                                 "--tensorboard", str(tmp_path / "tb")])
    assert code == 0, err
    with open(tmp_path / "o" / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    runs = sorted(p for p in (tmp_path / "tb").iterdir())
    assert len(runs) == len({(r["series"], r["source"]) for r in rows})  # one TensorBoard run per series and source
    for folder in runs:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        sde = folder.name.endswith("(sde)")
        mine = [r for r in rows if (r["source"] == "sde") == sde and folder.name.split(" ", 1)[1].startswith(r["series"])]
        events = acc.Scalars("loss_mean")
        assert [e.step for e in events] == [int(r["step"]) for r in mine]
        assert [e.value for e in events] == pytest.approx([float(r["loss_mean"]) for r in mine], rel=1e-6)


# ---- in a browser --------------------------------------------------------------------------------


def _browser() -> tuple[str, str]:
    """Debian's chromium and its driver, or skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (the [test] extra installs it)")
    browser = next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does) to load "
                    "the report in a browser")
    return browser, driver


def test_the_page_renders_in_a_headless_browser(run_dir, tmp_path):
    """The page loaded from file:// in headless Chromium: no console error, every image decoded."""
    browser, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get((run_dir / REPORT_FILE).resolve().as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        logs = driver.get_log("browser")
        title = driver.title
    finally:
        driver.quit()
    assert [e for e in logs if e["level"] in ("SEVERE", "ERROR")] == [], logs
    assert len(images) == len(list(run_dir.glob("*.png")))
    for alt, complete, width, height in images:
        assert alt and complete and width > 0 and height > 0, (alt, complete, width, height)
    assert title == f"Report {HOSTILE}"  # the escaped title reads back as the text
