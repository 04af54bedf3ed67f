"""One self-contained HTML page per run folder: ``write_report(run_dir)`` writes ``run_dir/report.html``.

The page holds, from the files the run wrote (``compsde.experiments.runner``):

* the title, how the run ended (finished; finished with diverged series, each with the step its first
  repetition diverged at; interrupted; terminated; failed) and the claim the config demonstrates (a
  preset's description, recorded in run.json);
* the results: one row per series from summary.json (final loss, its q10–q90 range, the held-out metric,
  the diverged fraction, bits per step, the SDE's tracking error after ``compsde track``) and the
  weak-order fits; a run that did not finish has no summary.json, and the table then shows the last
  logged row of each series in metrics.csv — what was computed before it stopped;
* ``advice.json`` when the folder holds one (``compsde advise``: ``{"table": [rows], "recommendation":
  str, "reasons": [str]}``): the table and the recommendation with its reasons;
* every PNG figure of the folder, embedded as a base64 ``data:`` URI with the caption of
  ``plots.CAPTIONS`` as caption and alt text;
* the resolved config (config.toml, as TOML) and the provenance from run.json: library, torch, numpy
  and Python versions, platform, the command, start and end times and the duration.

The page needs nothing else: no external URL (no script, font or stylesheet from elsewhere), no
JavaScript, CSS inline; every string taken from the run's files is HTML-escaped, so a series label
such as ``<script>`` is shown as text. It is written atomically (``core.files.atomic_write``).
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from compsde.core.checks import check_path
from compsde.core.files import atomic_write
from compsde.experiments.presets import CONFIG_FILE

__all__ = ["ADVICE_FILE", "REPORT_FILE", "check_run_dir", "render_report", "write_report"]

#: The page ``write_report`` writes into the run folder.
REPORT_FILE = "report.html"
#: The result of ``compsde advise`` the page shows when the run folder holds it.
ADVICE_FILE = "advice.json"
_RECORD = "run.json"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXPECTED = ("the folder a `compsde run` or `compsde track` wrote (its --out directory), holding run.json, "
             "config.toml and metrics.csv")


def check_run_dir(run_dir: Any, name: str = "run_dir") -> Path:
    """``run_dir`` as a Path after checking it is a run folder (it holds run.json, the first file a run
    writes); ValueError naming ``name``, the value and what is expected otherwise."""
    path = Path(check_path(name, run_dir, "a path to a run folder (a string or pathlib.Path)"))
    if not path.exists():
        raise ValueError(f"{name} {str(path)!r} does not exist; expected {_EXPECTED}")
    if not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is not a directory; expected {_EXPECTED}")
    if not (path / _RECORD).is_file():
        raise ValueError(f"{name} {str(path)!r} is not a run folder: it holds no {_RECORD}; expected {_EXPECTED}")
    return path


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (``render_report``) atomically; returns its path."""
    path = check_run_dir(run_dir)
    out = path / REPORT_FILE
    atomic_write(out, render_report(path))
    return out


def render_report(run_dir: str | Path) -> str:
    """The report page of a run folder as HTML text (see the module docstring). ValueError when the
    folder is not a run folder, or when one of its JSON files is not valid JSON of the expected shape."""
    path = check_run_dir(run_dir)
    record = _json_object(path / _RECORD)
    summary = _json_object(path / "summary.json") if (path / "summary.json").is_file() else None
    advice = _advice(path / ADVICE_FILE) if (path / ADVICE_FILE).is_file() else None
    config_text = _read_text(path / CONFIG_FILE)
    config = _toml(config_text)
    rows = _metrics_rows(path / "metrics.csv") if summary is None else []
    run_cfg = config.get("run", {}) if isinstance(config.get("run"), dict) else {}
    title = str((summary or {}).get("title") or run_cfg.get("title") or record.get("name") or path.name)
    # run.json records the claim ("" for a config without one); one written before it did: the preset's, if any.
    claim = str(record["claim"] or "") if "claim" in record else _preset_claim(record.get("name"))
    kind, status = _status(record, summary, rows)

    body = [f'<header><h1>{_e(title)}</h1>',
            f'<p><span class="status {kind}">{_e(kind)}</span> {_e(status)}</p>']
    if claim:
        body.append(f'<p class="claim"><strong>Claim:</strong> {_e(claim)}</p>')
    body.append("</header>")
    sections = [("results", "Results", _results(summary, rows, run_cfg))]
    if advice is not None:
        sections.append(("advice", "Advice", _advice_html(advice)))
    sections += [("figures", "Figures", _figures(path)),
                 ("config", "Config", _config_html(config_text)),
                 ("provenance", "Provenance", _provenance(record))]
    body.append('<nav aria-label="sections">' + " ".join(f'<a href="#{key}">{_e(head)}</a>' for key, head, _ in sections)
                + "</nav>")
    for key, head, content in sections:
        body.append(f'<section id="{key}">\n<h2>{_e(head)}</h2>\n{content}\n</section>')
    import compsde

    version = compsde.__version__
    body.append(f'<footer>Written by compsde {_e(version)} from the files of the run folder '
                f'{_e(path.resolve().name)}.</footer>')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="compsde {_e(version)}">\n<title>{_e(title)}</title>\n'
            f'<link rel="icon" href="data:,">\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n'
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


# ---- reading the folder --------------------------------------------------------------------------


def _e(value: Any) -> str:
    """HTML-escaped text of ``value`` (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None


def _json_object(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    try:
        data = json.loads(text or "")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); a run writes it as one JSON object") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _toml(text: str | None) -> dict[str, Any]:
    """The config's values, for the title and the run's size; {} when absent or unreadable (the page
    still shows the text)."""
    if text is None:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _preset_claim(name: Any) -> str:
    """A run.json written before runs recorded their claim: the preset's description when the run is
    named after a preset."""
    from compsde.experiments import presets

    return presets.claim(name) if isinstance(name, str) and name in presets.preset_names() else ""


def _advice(path: Path) -> dict[str, Any]:
    """advice.json, checked against its shape: {"table": [objects], "recommendation": str, "reasons": [str]}."""
    data = _json_object(path)
    table, rec, reasons = data.get("table"), data.get("recommendation"), data.get("reasons")
    if not (isinstance(table, list) and all(isinstance(r, dict) for r in table) and isinstance(rec, str)
            and isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)):
        raise ValueError(f'{path} must hold {{"table": [rows as objects], "recommendation": string, "reasons": '
                         f'[strings]}}, got keys {sorted(data)}')
    return data


def _metrics_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not the CSV a run writes: {e}") from None


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# ---- how the run ended ---------------------------------------------------------------------------


def _diverged(summary: Mapping[str, Any] | None, rows: Sequence[Mapping[str, str]]) -> list[str]:
    """One phrase per series of the optimizer whose repetitions diverged: its label, the fraction diverged at
    the end and the step of the first divergence."""
    out = []
    if summary is not None:
        for s in summary.get("series", []):
            frac = _float((s.get("final") or {}).get("diverged_fraction")) or 0.0
            first = s.get("first_diverged_step")
            if frac > 0 or first is not None:
                out.append(f"{s.get('label')} ({_share(frac)} at the end, the first at step {first})")
        return out
    first_step: dict[str, str] = {}
    last_frac: dict[str, float] = {}
    for r in rows:
        if r.get("source", "optimizer") != "optimizer":
            continue
        frac = _float(r.get("diverged_fraction")) or 0.0
        label = r.get("series", "")
        last_frac[label] = frac
        if frac > 0 and label not in first_step:
            first_step[label] = r.get("step", "?")
    return [f"{label} ({_share(last_frac[label])} by the last logged step, the first by step {step})"
            for label, step in first_step.items()]


def _fraction(frac: float) -> str:
    return "all" if frac >= 1.0 else f"{frac:.0%}"


def _share(frac: float) -> str:
    return "all repetitions" if frac >= 1.0 else f"{frac:.0%} of the repetitions"


def _status(record: Mapping[str, Any], summary: Mapping[str, Any] | None,
            rows: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """(kind, sentence): kind is finished, diverged, interrupted, terminated, failed or running."""
    raw = str(record.get("status", ""))
    diverged = _diverged(summary, rows)
    div = f" Diverged: {'; '.join(diverged)}." if diverged else ""
    partial = "" if summary is not None else " It wrote no summary.json: the results are the last logged rows of metrics.csv."
    if raw == "completed":
        if diverged:
            return "diverged", f"The run finished; {len(diverged)} of {len(summary['series']) if summary else '?'} " \
                               f"series diverged: {'; '.join(diverged)}."
        return "finished", "The run finished."
    if raw == "failed: interrupted":
        return "interrupted", "The run was interrupted (Ctrl-C)." + partial + div
    if raw == "failed: terminated":
        return "terminated", "The run was stopped by SIGTERM." + partial + div
    if raw.startswith("failed"):
        return "failed", f"The run {raw}." + partial + div
    return "running", ("The run had not recorded its end when this page was written: it is still running, or its "
                       "process was killed." + partial + div)


# ---- sections ------------------------------------------------------------------------------------


def _num(v: Any, spec: str = ".4g") -> str:
    if v is None or v == "":
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    f = _float(v)
    if f is None:
        return str(v)
    if math.isinf(f):
        return "∞" if f > 0 else "−∞"
    return format(f, spec)


def _range(lo: Any, hi: Any) -> str:
    return "n/a" if _float(lo) is None and _float(hi) is None else f"{_num(lo)} – {_num(hi)}"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None) -> str:
    """A table of escaped cells; ``numeric`` right-aligns columns."""
    numeric = list(numeric) if numeric is not None else [False] * len(head)
    out = ['<div class="scroll"><table>', "<thead><tr>" + "".join(f'<th scope="col">{_e(h)}</th>' for h in head)
           + "</tr></thead>", "<tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if n else f"<td>{_e(c)}</td>"
                                    for c, n in zip(row, numeric)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _results(summary: Mapping[str, Any] | None, rows: Sequence[Mapping[str, str]], run_cfg: Mapping[str, Any]) -> str:
    size = summary if summary is not None else run_cfg
    facts = ", ".join(f"{k} {_num(size.get(k))}" for k in ("steps", "repeats", "seed") if size.get(k) is not None)
    intro = f"<p>{_e(facts)}.</p>" if facts else ""
    if summary is not None:
        return intro + _summary_table(summary) + _weak_order(summary.get("weak_order") or [])
    if not rows:
        return intro + '<p class="note">No results: the run wrote neither summary.json nor any row of metrics.csv.</p>'
    last: dict[tuple[str, str], Mapping[str, str]] = {}
    for r in rows:
        last[(r.get("series", ""), r.get("source", ""))] = r
    head = ["series", "source", "last logged step", "loss mean", "loss median", "loss q10–q90", "diverged"]
    body = [[label, source, r.get("step", ""), _num(r.get("loss_mean")), _num(r.get("loss_median")),
             _range(r.get("loss_q10"), r.get("loss_q90")),
             _fraction(f) if (f := _float(r.get("diverged_fraction")) or 0.0) > 0 else "—"]
            for (label, source), r in last.items()]
    note = ('<p class="note">The run did not finish (no summary.json): each series\' last logged row of metrics.csv, '
            "i.e. what was computed before it stopped.</p>")
    return intro + note + _table(head, body, [False, False, True, True, True, True, True])


def _summary_table(summary: Mapping[str, Any]) -> str:
    series = list(summary.get("series", []))
    finals = [s.get("final") or {} for s in series]
    cols: list[tuple[str, Any, bool]] = [("series", lambda s, f: s.get("label"), False)]
    if any(s.get("group") for s in series):
        cols.append(("group", lambda s, f: s.get("group"), False))
    cols += [
        ("method", lambda s, f: s.get("method"), False),
        ("compressor", lambda s, f: s.get("compressor"), False),
        ("η", lambda s, f: _num(s.get("lr")), True),
        ("workers", lambda s, f: _num(s.get("workers")), True),
        ("batch", lambda s, f: _num(s.get("batch")), True),
        ("final loss mean", lambda s, f: _num(f.get("loss_mean")), True),
        ("median", lambda s, f: _num(f.get("loss_median")), True),
        ("q10–q90", lambda s, f: _range(f.get("loss_q10"), f.get("loss_q90")), True),
    ]
    for key, head, spec in (("test_accuracy", "test accuracy", ".2%"), ("test_perplexity", "test perplexity", ".4g"),
                            ("sharpness", "sharpness", ".4g"), ("sharpness_slow_sde", "slow SDE's sharpness", ".4g")):
        if any(f.get(key) is not None for f in finals):
            cols.append((head, lambda s, f, key=key, spec=spec: _num(f.get(key), spec), True))
    cols += [
        ("diverged", lambda s, f: "—" if not (_float(f.get("diverged_fraction")) or s.get("first_diverged_step") is not None)
         else f"{_fraction(_float(f.get('diverged_fraction')) or 0.0)} (from step {s.get('first_diverged_step')})", True),
        ("bits / worker / step", lambda s, f: _num(s.get("bits_per_worker_per_step")), True),
    ]
    if any("tracking" in s for s in series):
        cols.append(("SDE tracking error mean / max", lambda s, f: _tracking(s), True))
    cols.append(("seconds", lambda s, f: _num(s.get("seconds"), ".3g"), True))
    body = [[get(s, f) for _, get, _ in cols] for s, f in zip(series, finals)]
    return _table([h for h, _, _ in cols], body, [n for _, _, n in cols])


def _tracking(s: Mapping[str, Any]) -> str:
    sde = s.get("sde") or {}
    if "none" in sde:
        return "no SDE"
    t = s.get("tracking") or {}
    return f"{_num(t.get('mean_rel_error'), '.2%')} / {_num(t.get('max_rel_error'), '.2%')}"


def _weak_order(fits: Sequence[Mapping[str, Any]]) -> str:
    if not fits:
        return ""
    body = [[fit.get("group") or "all series", ", ".join(_num(v) for v in fit.get("lr", [])),
             ", ".join(_num(v, ".2%") for v in fit.get("mean_rel_error", [])), _num(fit.get("slope"), ".2f")]
            for fit in fits]
    return ("<h3>Weak order</h3>\n<p>The slope of log(mean tracking error) against log(η): ≈ 1 for an order-1 weak "
            "approximation.</p>\n" + _table(["group", "η", "mean tracking error", "fitted slope"], body,
                                              [False, True, True, True]))


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (bool, int, float)):
        return _num(v)
    return str(v)


def _advice_html(advice: Mapping[str, Any]) -> str:
    table = advice["table"]
    head = list(dict.fromkeys(k for row in table for k in row))
    numeric = [all(isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                   for row in table if row.get(k) is not None) for k in head]
    out = [f'<p class="recommendation"><strong>Recommendation:</strong> {_e(advice["recommendation"])}</p>']
    if advice["reasons"]:
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in advice["reasons"]) + "</ul>")
    if table:
        out.append(_table(head, ([_cell(row.get(k)) for k in head] for row in table), numeric))
    return "\n".join(out)


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, None when ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def _figures(path: Path) -> str:
    """Every PNG of the folder: the run's plots in ``plots.PLOT_FILES`` order, then any other, by name."""
    from compsde.experiments.plots import CAPTIONS, PLOT_FILES

    pngs = {p.name: p for p in path.glob("*.png") if p.is_file() and not p.name.startswith(".")}
    names = [n for n in PLOT_FILES if n in pngs] + sorted(set(pngs) - set(PLOT_FILES))
    if not names:
        return '<p class="note">No figures: the run was made without plots (--no-plots) or stopped before them.</p>'
    out, skipped = [], []
    for name in names:
        data = pngs[name].read_bytes()
        size = _png_size(data)
        if size is None:
            skipped.append(name)
            continue
        caption = CAPTIONS.get(name, f"The figure {name} of this run folder.")
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        anchor = "fig-" + "".join(c if c.isalnum() else "-" for c in name)
        out.append(f'<figure id="{_e(anchor)}">\n<img src="{uri}" alt="{_e(caption)}" width="{size[0]}" '
                   f'height="{size[1]}">\n<figcaption><code>{_e(name)}</code> — {_e(caption)}</figcaption>\n</figure>')
    if skipped:
        out.append(f'<p class="note">Not shown (not PNG images): {_e(", ".join(skipped))}.</p>')
    return "\n".join(out)


def _config_html(text: str | None) -> str:
    if text is None:
        return '<p class="note">The folder holds no config.toml.</p>'
    return (f"<p>The resolved config (<code>{CONFIG_FILE}</code>): <code>compsde run {CONFIG_FILE}</code> repeats the "
            f"run.</p>\n<pre><code>{_e(text)}</code></pre>")


def _duration(started: Any, ended: Any) -> str | None:
    try:
        seconds = (datetime.datetime.fromisoformat(str(ended)) - datetime.datetime.fromisoformat(str(started))).total_seconds()
    except (TypeError, ValueError):
        return None
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _provenance(record: Mapping[str, Any]) -> str:
    versions = record.get("versions") or {}
    facts: list[tuple[str, Any]] = [
        ("status", record.get("status")),
        ("command", record.get("command")),
        ("started", record.get("started") or "not recorded"),
        ("ended", record.get("ended") or "not recorded"),
        ("duration", _duration(record.get("started"), record.get("ended")) or "n/a"),
        ("estimated", None if record.get("estimated_seconds") is None else f"{_num(record['estimated_seconds'])} s"),
        ("backend", record.get("backend")),
        ("device", record.get("device")),
        ("threads", record.get("threads")),
        *((f"{k} version", v) for k, v in versions.items()),
        ("platform", record.get("platform")),
    ]
    items = [f"<dt>{_e(k)}</dt><dd>{'<code>' + _e(v) + '</code>' if k == 'command' else _e(v)}</dd>"
             for k, v in facts if v is not None]
    return '<dl class="facts">\n' + "\n".join(items) + "\n</dl>"


_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #1f2328; line-height: 1.5;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.7rem; margin: 0 0 .4rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
nav { margin: 1rem 0; padding: .5rem 0; border-top: 1px solid #d0d7de; border-bottom: 1px solid #d0d7de; }
nav a { margin-right: 1rem; color: #0969da; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.status { display: inline-block; padding: .1rem .65rem; border-radius: 1rem; font-weight: 600; font-size: .9rem; }
.status.finished { background: #dafbe1; color: #116329; }
.status.diverged { background: #fff8c5; color: #7d4e00; }
.status.interrupted, .status.terminated, .status.failed, .status.running { background: #ffebe9; color: #a40e26; }
.claim { font-size: 1.05rem; }
.recommendation { font-size: 1.05rem; }
.note { color: #57606a; font-style: italic; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .88rem; margin: .5rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; text-align: left; vertical-align: top; }
thead th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #f9fafb; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
figure { margin: 1.5rem 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { margin-top: .35rem; font-size: .9rem; color: #57606a; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: .88em; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .75rem 1rem; overflow: auto;
      max-height: 40rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1.2rem; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
footer { margin-top: 2.5rem; font-size: .85rem; color: #57606a; }
@media print { pre { max-height: none; } nav { display: none; } }
"""
