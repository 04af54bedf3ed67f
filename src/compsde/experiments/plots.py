"""Plots of an experiment's results (matplotlib, Agg backend: no display needed).

``make_plots(results, title)`` returns ``{file name: PNG bytes}`` (the runner writes them atomically):

* ``loss.png``               f(x) − f* against the step: mean over non-diverged repetitions (line) and
                             the q10–q90 band over all repetitions; one panel per ``group``.
* ``loss_vs_bits.png``       the same against the cumulative bits each worker sent — the budget that
                             compression saves (log x when the series' bit rates differ ≥ 10×).
* ``final.png``              the final loss of every series, panels side by side on one axis (e.g.
                             the loss against ν in the noise-resilience preset), with q10–q90 bars.
* ``compression_error.png``  ‖C(v) − v‖²/‖v‖² along the run, when some series compresses lossily.
* ``diverged.png``           the diverged fraction against the step, when it is nonzero somewhere.

``tracking_figure`` (``tracking.png``, ``compsde track``) lays each optimizer over its SDE, and
``weak_order_figure`` (``weak_order.png``) plots the tracking error against η with its fitted slope.
Each figure is built by a function returning the ``matplotlib.figure.Figure`` (``loss_figure``,
``final_figure``, ``tracking_figure_obj``, ...); ``figure_png`` turns one into PNG bytes.

Conventions shared by every figure:

* One y scale per figure: the panels of a figure are compared, so they are all log (when the
  values span more than two decades and every plotted value is positive) or all linear; panels
  whose ranges are comparable also share their y limits.
* A method variant (method, compressor and its parameters, schedule, normalisation) keeps one
  colour in every panel and every figure; series of one panel that share a colour get different
  line styles (and, in final.png, markers and x offsets).
* Divergence is never drawn at a data y coordinate: a strip labelled "diverged" above a panel
  marks where series diverged (× = every repetition diverged), and the legend says so.
* x tick labels never overlap: large numbers are written compactly (20k, 1.5M, 2G), group names
  are wrapped, and crowded ticks are thinned.
* Text from users (title, labels, group names) is drawn literally (``plain_text``: no mathtext);
  ``check_text`` tells the experiment layer beforehand which strings cannot be shown at all.
"""

from __future__ import annotations

import io
import math
import textwrap
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import ticker, transforms  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from compsde.core.checks import MAX_TEXT_LENGTH, check_text  # noqa: E402,F401  (re-exported: plots' own rules)

__all__ = ["MAX_TEXT_LENGTH", "PLOT_FILES", "check_text", "compression_error_figure", "diverged_figure", "figure_png",
           "eval_metric", "final_figure", "loss_figure", "make_figures", "make_plots", "plain_text", "sync_figure", "test_figure",
           "tracking_figure", "tracking_figure_obj", "tracking_test_figure", "weak_order_figure", "weak_order_figure_obj"]

#: Every file name ``make_plots`` (and, for ``compsde track``, ``tracking_figure`` and
#: ``weak_order_figure``) may produce.
PLOT_FILES = ("loss.png", "loss_vs_bits.png", "final.png", "compression_error.png", "diverged.png", "test.png", "sync.png",
              "tracking.png", "tracking_test.png", "weak_order.png")

#: Held-out metrics of network problems, in the order a plot prefers them, with their axis labels.
_EVAL_LABELS = {"test_accuracy": "test accuracy", "test_perplexity": "test perplexity (per byte)"}

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#ad494a"]
_STYLES = ["-", "--", ":", "-."]
_MARKERS = {"-": "o", "--": "s", ":": "^", "-.": "D"}
_LOSS_LABEL = "f(x) − f*"


def _loss_label(results: Sequence[Any]) -> str:
    """The loss axis' label: f(x) − f*, or a game's squared distance to its equilibrium (docs/theory.md §9.6)."""
    from compsde.objectives.games import GAMES

    kinds = {getattr(r, "problem", "") in GAMES for r in results}
    return "‖z − z*‖²" if kinds == {True} else (_LOSS_LABEL + " or ‖z − z*‖²" if len(kinds) > 1 else _LOSS_LABEL)
_DPI = 110


# ---- user text -----------------------------------------------------------------------------------

def plain_text(s: str) -> str:
    """``s`` made to render literally in matplotlib.

    Every ``$`` is escaped as ``\\$``: with no unescaped dollar left, matplotlib never parses the
    string as mathtext (where "cost $5" or "$\\frac{" would raise at draw time) and shows each ``\\$``
    as ``$``. Control characters other than a newline, which the fonts cannot show, are written as
    ``\\xNN`` escapes, and lone surrogates (which the font layer cannot encode) as U+FFFD.
    """
    out = []
    for ch in str(s):
        if ch == "$":
            out.append(r"\$")
        elif ch == "\n":
            out.append(ch)
        else:
            cat = unicodedata.category(ch)
            if cat == "Cc":
                out.append(f"\\x{ord(ch):02x}")
            elif cat == "Cs":
                out.append("\ufffd")
            else:
                out.append(ch)
    return "".join(out)


def _wrap(s: str, width: int, max_lines: int = 2) -> str:
    """``s`` wrapped to lines of at most ``width`` characters (at most ``max_lines``, the last one
    ending with … when cut), then made literal. Wrapping comes first, so that no line break falls
    inside an escape."""
    s = str(s)
    lines = textwrap.wrap(s, width=max(1, width), break_long_words=True, break_on_hyphens=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 1)].rstrip() + "…"
    return "\n".join(plain_text(line) for line in lines)


def _legend_text(s: str, width: int = 42) -> str:
    """A legend label: wrapped, literal, and never starting with "_" (which a legend would skip)."""
    out = _wrap(s, width, max_lines=3)
    return " " + out if out.startswith("_") else out


# ---- series bookkeeping --------------------------------------------------------------------------


def _colors(results: Sequence[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in results:
        if r.color_key not in out:
            out[r.color_key] = _PALETTE[len(out) % len(_PALETTE)]
    return out


def _groups(results: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for r in results:
        if r.group not in out:
            out.append(r.group)
    return out


def _occurrence(results: Sequence[Any]) -> dict[int, int]:
    """Per series index: how many series of its panel with the same colour come before it."""
    out: dict[int, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for r in results:
        n = seen.get((r.group, r.color_key), 0)
        seen[(r.group, r.color_key)] = n + 1
        out[r.index] = n
    return out


def _styles(results: Sequence[Any]) -> dict[int, str]:
    """Line style per series index: distinct within a panel for series sharing a colour."""
    return {i: _STYLES[n % len(_STYLES)] for i, n in _occurrence(results).items()}


def _family_label(rs: Sequence[Any]) -> str:
    """A legend label for series sharing a colour across panels: their common label prefix."""
    labels = [r.label for r in rs]
    if len(labels) == 1:
        return labels[0]
    words = [lab.split() for lab in labels]
    common: list[str] = []
    for parts in zip(*words):
        if all(p == parts[0] for p in parts):
            common.append(parts[0])
        else:
            break
    while common and common[-1][-1] in "=:,;-–(":  # "DSGD ν =" from "DSGD ν = 1", "DSGD ν = 2"
        common.pop()
    return " ".join(common) if common else labels[0]


def _names(results: Sequence[Any]) -> dict[int, str]:
    """Legend name per series: the label shared by its colour family when the family spans several
    panels once each (e.g. "DSGD" for "DSGD ν=1", "DSGD ν=2", ...), else the series' own label."""
    out = {}
    for r in results:
        fam = [x for x in results if x.color_key == r.color_key]
        groups = [x.group for x in fam]
        if len(fam) > 1 and len(set(groups)) == len(groups):
            out[r.index] = _family_label(fam)
        else:
            out[r.index] = r.label
    return out


def _final_fraction(r: Any) -> float:
    d = np.asarray(r.diverged_fraction, dtype=np.float64)
    d = d[np.isfinite(d)]
    return float(d[-1]) if d.size else 0.0


def _legend_label(r: Any, names: dict[int, str]) -> str:
    frac = _final_fraction(r)
    if frac >= 1.0:
        return f"{names[r.index]} (all diverged)"
    if frac > 0:
        return f"{names[r.index]} (diverged {frac:.0%})"
    return names[r.index]


# ---- numbers and scales --------------------------------------------------------------------------


def _finite(values: Sequence[Any]) -> np.ndarray:
    arrs = [np.asarray(v, dtype=np.float64).ravel() for v in values]
    allv = np.concatenate(arrs) if arrs else np.array([])
    return allv[np.isfinite(allv)]


def _use_log(values: Sequence[Any], ratio: float = 100.0) -> bool:
    """The y scale of a figure whose panels are compared, decided once from all their plotted values:
    log if the positive finite values span more than ``ratio`` (default two decades) and every
    finite value is positive (a log axis would hide the others), else linear."""
    fin = _finite(values)
    if fin.size < 2 or (fin <= 0).any():
        return False
    return bool(fin.max() / fin.min() > ratio)


def _positive(v: np.ndarray) -> np.ndarray:
    """Copy with non-positive entries masked (NaN), for log axes."""
    v = np.array(v, dtype=np.float64)
    v[~(v > 0)] = np.nan
    return v


def _clip_band(lo: np.ndarray, hi: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Replace +inf in the band by ``top`` so the band reaches the top of the axis."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return np.where(np.isinf(lo), top, lo), np.where(np.isinf(hi), top, hi)


def _limits(rs: Sequence[Any], log: bool) -> tuple[float, float] | None:
    """y limits that show every mean and quantile of ``rs`` (inf quantiles go to the top)."""
    fin = _finite([np.r_[r.loss_mean, r.loss_q10, r.loss_q90] for r in rs])
    if log:
        fin = fin[fin > 0]
    if not fin.size:
        return None
    if log:
        return float(fin.min()) / 2.0, float(fin.max()) * 3.0
    lo, hi = min(0.0, float(fin.min())), float(fin.max())
    return lo, hi + 0.1 * (hi - lo if hi > lo else 1.0)


def _shared(lims: Sequence[tuple[float, float] | None], log: bool) -> bool:
    """Share one y range across panels unless one panel's range would flatten the others: share when
    the upper limits are within three decades (log) or a factor 10 (linear)."""
    tops = [lim[1] for lim in lims if lim is not None and lim[1] > 0]
    return not tops or max(tops) / min(tops) <= (1e3 if log else 10.0)


def _union(lims: Sequence[tuple[float, float] | None]) -> tuple[float, float] | None:
    ok = [lim for lim in lims if lim is not None]
    return (min(lo for lo, _ in ok), max(hi for _, hi in ok)) if ok else None


def _compact(v: float, digits: int = 3) -> str:
    """A tick value written compactly: 0, 250, 0.05, 20k, 1.5M, 2G, 3T."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else f"{v}"
    a = abs(v)
    for exp, suffix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if a >= 10.0 ** exp and (exp > 3 or a >= 1e4):
            return f"{v / 10.0 ** exp:.{digits}g}{suffix}"
    if a < 1e-3:
        return f"{v:.{digits}g}"
    return f"{v:.{max(digits, 4)}g}"


class _CompactFormatter(ticker.Formatter):
    """Tick labels by ``_compact``, with more digits where three would make two ticks read alike."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return _compact(x)

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        for digits in range(3, 12):
            labels = [_compact(v, digits) for v in values]
            if len(set(labels)) == len(labels):
                return labels
        return [f"{v:g}" for v in values]


def _number_axis(axis: Any, integer: bool = False) -> None:
    """A linear axis of (possibly large) numbers: nice ticks, compact labels."""
    axis.set_major_locator(ticker.MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=integer))
    axis.set_major_formatter(_CompactFormatter())


# ---- layout --------------------------------------------------------------------------------------

# Fixed layout in inches (tight_layout measured every tick label and cost half the rendering time).
_LEFT, _RIGHT, _BOTTOM, _HGAP, _VGAP, _PANEL_TITLE = 0.9, 0.25, 0.6, 0.95, 0.95, 0.4
_TITLE_LINE = 0.17          # inches per extra line of a panel title
# The "diverged" strip above a panel: a gap, then one row per diverged series.
_STRIP_GAP, _STRIP_ROW = 0.07, 0.17


def _strip_height(rows: int) -> float:
    return _STRIP_GAP + rows * _STRIP_ROW + 0.03 if rows else 0.0


def _grid(n: int, title: str, note: str = "", width: float = 4.6, height: float = 3.3, sharey: bool = True,
          panel_titles: bool = True, title_lines: int = 1, strip: float = 0.0) -> tuple[Figure, list[Any]]:
    """A figure with n panels (up to 3 per row), its title and note placed above them.

    ``title`` is user text (wrapped and made literal here); ``title_lines`` is the most lines a panel
    title has; ``strip`` the height in inches of the "diverged" strips above the panels.
    """
    cols = min(n, 3 if n != 4 else 2)
    rows = math.ceil(n / cols)
    if n == 1:
        width, height = max(width, 7.0), 4.2
    fig_w = _LEFT + _RIGHT + cols * width + (cols - 1) * _HGAP
    title = _wrap(title, max(40, int(fig_w * 10)), max_lines=4)
    note = _wrap(note, max(60, int(fig_w * 15)), max_lines=3) if note else ""
    t_lines, n_lines = title.count("\n") + 1, (note.count("\n") + 1 if note else 0)
    ptitle = (_PANEL_TITLE + _TITLE_LINE * (title_lines - 1)) if panel_titles else 0.15
    head = 0.2 + 0.24 * t_lines + 0.18 * n_lines + (0.1 if note else 0.0) + ptitle + strip
    vgap = _VGAP + (ptitle - _PANEL_TITLE) + strip
    fig_h = head + _BOTTOM + rows * height + (rows - 1) * vgap
    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    fig.subplots_adjust(left=_LEFT / fig_w, right=1 - _RIGHT / fig_w, bottom=_BOTTOM / fig_h, top=1 - head / fig_h,
                        wspace=_HGAP / width, hspace=vgap / height)
    fig.text(0.5, 1.0 - 0.12 / fig_h, title, ha="center", va="top", fontsize=12)
    if note:
        y = 0.16 + 0.24 * t_lines
        fig.text(0.5, 1.0 - y / fig_h, note, ha="center", va="top", fontsize=8.5, color="#555555")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _panel_title(ax: Any, text: str, strip: float, fontsize: float = 11) -> None:
    """A panel title above the panel's diverged strip (``strip`` inches)."""
    ax.set_title(text, fontsize=fontsize, pad=6 + 72 * strip)


def _title_lines(texts: Sequence[str]) -> int:
    return max([t.count("\n") + 1 for t in texts] or [1])


def _grow_bottom(fig: Figure, inches: float) -> None:
    """Add ``inches`` below everything in the figure (axes and texts keep their size in inches)."""
    w, h = fig.get_size_inches()
    nh = h + inches
    for ax in fig.axes:
        p = ax.get_position()
        ax.set_position([p.x0, (p.y0 * h + inches) / nh, p.width, p.height * h / nh])
    for t in fig.texts:
        x, y = t.get_position()
        t.set_position((x, (y * h + inches) / nh))
    fig.set_size_inches(w, nh)


def _xlabels(ax: Any) -> list[Any]:
    """The x tick labels of ``ax`` drawn at its current state (non-empty, visible, within the axis)."""
    lo, hi = sorted(ax.get_xlim())
    eps = 1e-9 * abs(hi - lo)
    out = []
    for minor in (False, True):
        ax.xaxis.get_ticklabels(minor=minor)  # brings the ticks' labels up to date
        ticks = ax.xaxis.get_minor_ticks() if minor else ax.xaxis.get_major_ticks()
        locs = ax.xaxis.get_minorticklocs() if minor else ax.xaxis.get_majorticklocs()
        for tick, loc in zip(ticks, locs):
            lab = tick.label1
            if lab.get_visible() and lab.get_text() and tick.get_visible() and lo - eps <= loc <= hi + eps:
                out.append(lab)
    return out


def _wide(text: str, fontsize: float, dpi: float) -> float:
    """An upper bound of the width in pixels of a horizontal label: digits and the punctuation of
    numbers ≤ 0.64 em, other letters below U+2000 (Latin, Greek, Cyrillic) ≤ 1.1 em; inf (measure
    it) for anything else (symbols, mathtext, other scripts)."""
    em = fontsize * dpi / 72.0

    def width(ch: str) -> float:
        return 0.64 if ch in "0123456789.,+-" else 1.1 if ord(ch) < 0x2000 and ch not in "$\\" else math.inf

    return max(sum(width(ch) for ch in line) for line in text.split("\n")) * em


def _overlap(labels: Sequence[Any], renderer: Any, pad: float = 2.0) -> bool:
    """Whether two of ``labels`` overlap (or come within ``pad`` pixels): a cheap bound first, and
    the labels' measured extents only when the bound cannot rule it out."""
    if len(labels) < 2:
        return False
    dpi = labels[0].get_figure(root=True).dpi
    if all(lab.get_rotation() == 0 and lab.get_horizontalalignment() == "center" for lab in labels):
        est = sorted((lab.get_transform().transform(lab.get_position())[0], _wide(lab.get_text(), lab.get_fontsize(), dpi))
                     for lab in labels)
        if all(b[0] - a[0] >= (a[1] + b[1]) / 2 + pad for a, b in zip(est, est[1:])):
            return False
    boxes = sorted((lab.get_window_extent(renderer) for lab in labels), key=lambda b: b.x0)
    return any(b.x0 < a.x1 + pad and b.y0 < a.y1 and a.y0 < b.y1 for a, b in zip(boxes, boxes[1:]))


def _thin(ax: Any, n_labels: int) -> bool:
    """Fewer x tick labels on ``ax``; False when nothing more can be done."""
    axis = ax.xaxis
    if ax.get_xscale() == "log":
        if not isinstance(axis.get_minor_formatter(), ticker.NullFormatter):
            axis.set_minor_formatter(ticker.NullFormatter())
            return True
        if isinstance(axis.get_major_locator(), ticker.FixedLocator):
            return _thin_fixed(axis)
        axis.set_major_locator(ticker.LogLocator(numticks=max(2, n_labels // 2)))
        return n_labels > 2
    loc = axis.get_major_locator()
    if isinstance(loc, ticker.FixedLocator):
        return _thin_fixed(axis)
    if n_labels <= 2:
        return False
    integer = bool(getattr(loc, "_integer", False))
    axis.set_major_locator(ticker.MaxNLocator(nbins=max(1, n_labels - 2), steps=[1, 2, 2.5, 5, 10], integer=integer))
    return True


def _thin_fixed(axis: Any) -> bool:
    """Blank every other shown label of a fixed-label axis (the ticks stay)."""
    texts = list(getattr(axis.get_major_formatter(), "seq", []))
    shown = [i for i, t in enumerate(texts) if t]
    if len(shown) <= 1:
        return False
    keep = set(shown[::2])
    axis.set_major_formatter(ticker.FixedFormatter([t if i in keep else "" for i, t in enumerate(texts)]))
    return True


def _settle_xticks(fig: Figure, axes: Sequence[Any], make_room: bool = False) -> None:
    """Thin the x tick labels of ``axes`` until no two overlap; with ``make_room``, also grow the
    figure at the bottom when the (e.g. wrapped) labels or the x label reach below it."""
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        for _ in range(12):
            labels = _xlabels(ax)
            if not _overlap(labels, renderer) or not _thin(ax, len(labels)):
                break
    if make_room:
        texts = [t for ax in axes for t in _xlabels(ax) + [ax.xaxis.label] if t.get_text()]
        low = min((t.get_window_extent(renderer).y0 for t in texts), default=0.0)
        need = (4.0 - low) / fig.dpi
        if need > 0.01:
            _grow_bottom(fig, need)


def figure_png(fig: Figure, dpi: int = _DPI) -> bytes:
    """PNG bytes of a figure built by this module."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# ---- the diverged strip --------------------------------------------------------------------------


def _strip_y(ax: Any, inches: float) -> float:
    """The axes-fraction y that lies ``inches`` above the top of ``ax``."""
    fig = ax.get_figure()
    h_in = ax.get_position().height * fig.get_size_inches()[1]
    return 1.0 + inches / h_in


def _strip_transform(ax: Any) -> Any:
    """x in data coordinates, y in axes fraction: artists at y > 1 lie above the data area."""
    return transforms.blended_transform_factory(ax.transData, ax.transAxes)


def _strip_frame(ax: Any, rows: int) -> None:
    """The light band above ``ax`` that holds ``rows`` diverged marks, labelled "diverged"."""
    y0, y1 = _strip_y(ax, _STRIP_GAP - 0.02), _strip_y(ax, _STRIP_GAP + rows * _STRIP_ROW + 0.02)
    ax.add_patch(Rectangle((0.0, y0), 1.0, y1 - y0, transform=ax.transAxes, facecolor="#f1f1f1",
                           edgecolor="#cccccc", linewidth=0.6, clip_on=False, zorder=0.5))
    ax.text(-0.012, (y0 + y1) / 2, "diverged", transform=ax.transAxes, ha="right", va="center",
            fontsize=7.5, color="#555555", style="italic", clip_on=False)


def _steps_text(a: int, b: int | None) -> str:
    return f"step {_compact(a)}" if b is None or b == a else f"steps {_compact(a)}–{_compact(b)}"


def _diverged_row(ax: Any, row: int, x0: float, x1: float, frac: float, color: str, ls: str, text: str) -> None:
    """One row of the strip: × where every repetition had diverged (or | marks for a partial
    divergence) at data x ``x0``..``x1``, a segment between, and ``text`` beside it."""
    y = _strip_y(ax, _STRIP_GAP + (row + 0.5) * _STRIP_ROW)
    tr = _strip_transform(ax)
    ok = [x for x in (x0, x1) if math.isfinite(x)]
    lo, hi = sorted(ax.get_xlim())
    if not ok:
        x0 = x1 = lo
    elif len(ok) == 1:
        x0 = x1 = ok[0]
    if x1 != x0:
        ax.plot([x0, x1], [y, y], transform=tr, color=color, linestyle=ls, linewidth=1.4, clip_on=False)
    if frac >= 1.0:
        ax.plot([x1], [y], transform=tr, marker="x", color=color, markersize=7, markeredgewidth=2.0,
                linestyle="none", clip_on=False)
    else:
        ax.plot([x0, x1] if x1 != x0 else [x0], [y] * (2 if x1 != x0 else 1), transform=tr, marker="|", color=color,
                markersize=7, markeredgewidth=1.6, linestyle="none", clip_on=False)
    # Text on the side with more room (axes fraction of the marks from the display position).
    fx = ax.transAxes.inverted().transform(ax.transData.transform((x1, 1.0)))[0]
    fx0 = ax.transAxes.inverted().transform(ax.transData.transform((x0, 1.0)))[0]
    if fx <= 0.55:
        ax.annotate(text, (fx, y), xycoords="axes fraction", xytext=(7, 0), textcoords="offset points", ha="left",
                    va="center", fontsize=7.5, color=color, annotation_clip=False)
    else:
        ax.annotate(text, (fx0, y), xycoords="axes fraction", xytext=(-7, 0), textcoords="offset points", ha="right",
                    va="center", fontsize=7.5, color=color, annotation_clip=False)


def _offset_into_label(ax: Any) -> None:
    """Move a linear y axis' multiplier (e.g. 1e−11, drawn by default just above the axis, where
    the diverged strip is) into the axis label."""
    fmt = ax.yaxis.get_major_formatter()
    if ax.get_yscale() != "linear" or not isinstance(fmt, ticker.ScalarFormatter):
        return
    fmt.set_useOffset(False)  # a multiplier only: "× 1e−11" reads plainly, "+1e3" would not
    ax.yaxis.get_ticklabels()  # formats the ticks, which sets the multiplier
    off = fmt.get_offset()
    if off:
        ax.yaxis.offsetText.set_visible(False)
        ax.set_ylabel(f"{ax.get_ylabel()} (× {off})")


def _diverged_entries(rs: Sequence[Any]) -> list[Any]:
    return [r for r in rs if r.first_diverged_step is not None and _final_fraction(r) > 0]


def _mark_diverged(ax: Any, entries: Sequence[tuple[Any, str, str, str]], x_of: Callable[[Any], np.ndarray]) -> None:
    """The strip above ``ax`` with one row per (series, colour, line style, prefix) that diverged."""
    if not entries:
        return
    _strip_frame(ax, len(entries))
    for row, (r, color, ls, prefix) in enumerate(entries):
        x = np.asarray(x_of(r), dtype=np.float64)
        steps = np.asarray(r.steps, dtype=np.float64)
        ok = np.isfinite(x)

        def at(step: int | None, steps: np.ndarray = steps, x: np.ndarray = x, ok: np.ndarray = ok) -> float:
            if step is None or not ok.any():
                return math.nan
            return float(np.interp(step, steps[ok], x[ok]))

        first, last = r.first_diverged_step, r.last_diverged_step
        frac = _final_fraction(r)
        what = "all diverged" if frac >= 1.0 else f"{frac:.0%} diverged"
        _diverged_row(ax, row, at(first), at(last if last is not None else first), frac, color, ls,
                      f"{prefix}{what}, {_steps_text(first, last)}")


# ---- loss against the step or the bits -----------------------------------------------------------


def _curve_panel(ax: Any, rs: Sequence[Any], x_of: Callable[[Any], np.ndarray], colors: dict[str, str],
                 styles: dict[int, str], names: dict[int, str], log: bool, ylim: tuple[float, float] | None) -> None:
    """Mean line and q10–q90 band of the series ``rs`` on ``ax``."""
    top = ylim[1] if ylim else 1.0
    for r in rs:
        x = x_of(r)
        c, ls = colors[r.color_key], styles[r.index]
        lo, hi = _clip_band(r.loss_q10, r.loss_q90, top)
        mean = np.asarray(r.loss_mean, dtype=np.float64)
        if log:
            lo, hi, mean = _positive(lo), _positive(hi), _positive(mean)
        ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
        ax.plot(x, mean, color=c, linestyle=ls, linewidth=1.8, label=_legend_text(_legend_label(r, names)))
    if log:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, which="major", alpha=0.3)


def loss_figure(results: Sequence[Any], title: str, by_bits: bool = False) -> Figure:
    """loss.png (``by_bits=False``) or loss_vs_bits.png: one panel per group, shared y scale."""
    groups = _groups(results)
    colors, styles = _colors(results), _styles(results)
    log = _use_log([np.r_[r.loss_mean, r.loss_q10, r.loss_q90] for r in results])
    names = _names(results)
    panel_lims = {g: _limits([r for r in results if r.group == g], log) for g in groups}
    share = _shared(list(panel_lims.values()), log)
    what = "loss vs bits per worker" if by_bits else "loss"
    note = "line: mean over non-diverged repetitions; band: q10–q90 over all repetitions (diverged = +∞)"
    diverged = {g: _diverged_entries([r for r in results if r.group == g]) for g in groups}
    rows = max(len(v) for v in diverged.values())
    if rows:
        note += "; strip above a panel: where its series diverged (× = all repetitions)"
    titles = {g: _wrap(g, 48) for g in groups}
    strip = _strip_height(rows)
    fig, axes = _grid(len(groups), f"{title}: {what}", note, sharey=share, panel_titles=any(groups),
                      title_lines=_title_lines(list(titles.values())), strip=strip)
    all_lim = _limits(results, log)

    logx = False
    if by_bits:
        rates = [r.bits_per_step for r in results if r.bits_per_step > 0]
        logx = bool(rates) and max(rates) / min(rates) >= 10

    def x_of(r: Any) -> np.ndarray:
        if not by_bits:
            return np.asarray(r.steps, dtype=np.float64)
        b = np.asarray(r.bits, dtype=np.float64)
        return np.where(b > 0, b, np.nan) if logx else b

    for ax, g in zip(axes, groups):
        rs = [r for r in results if r.group == g]
        _curve_panel(ax, rs, x_of, colors, styles, names, log, all_lim if share else panel_lims[g])
        if by_bits:
            ax.set_xlabel("bits sent per worker")
            if logx:
                ax.set_xscale("log")
            else:
                _number_axis(ax.xaxis)
        else:
            ax.set_xlabel("step")
            _number_axis(ax.xaxis, integer=True)
        if g:
            _panel_title(ax, titles[g], strip)
        ax.set_ylabel(_loss_label(results) + (" (log)" if log else ""))
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
        _mark_diverged(ax, [(r, colors[r.color_key], styles[r.index], "") for r in diverged[g]], x_of)
        if rows:
            _offset_into_label(ax)
    _settle_xticks(fig, axes)
    return fig


# ---- final loss per group ------------------------------------------------------------------------


def final_figure(results: Sequence[Any], title: str) -> Figure:
    """final.png: the final loss of every series, groups side by side on one axis.

    Every series of a group has its own x offset (ordered by colour, then by its rank among the
    group's series of that colour), so no marker hides another; a series whose repetitions all
    diverged is a × in the "diverged" strip above the axis, a partially diverged one gets its
    diverged fraction there.
    """
    groups = _groups(results)
    colors = _colors(results)
    keys = list(colors)
    names, styles, occ = _names(results), _styles(results), _occurrence(results)
    members = {g: sorted((r for r in results if r.group == g), key=lambda r: (keys.index(r.color_key), occ[r.index]))
               for g in groups}
    most = max(len(m) for m in members.values())
    slot = 0.72 / most
    xpos = {r.index: gi + (j - (len(members[g]) - 1) / 2) * slot
            for gi, g in enumerate(groups) for j, r in enumerate(members[g])}

    finals = {r.index: (float(r.loss_mean[-1]), float(r.loss_q10[-1]), float(r.loss_q90[-1])) for r in results}
    vals = np.array([v for f in finals.values() for v in f], dtype=np.float64)
    log = _use_log([vals])
    fin = vals[np.isfinite(vals) & ((vals > 0) if log else True)]
    if fin.size:
        ylo = float(fin.min()) / 2.0 if log else min(0.0, float(fin.min()))
        yhi = float(fin.max())
        top = yhi * 3.0 if log else yhi + 0.1 * ((yhi - ylo) or 1.0)
    else:
        ylo, top = (0.1, 10.0) if log else (0.0, 1.0)
    div = [r for r in results if _final_fraction(r) > 0]
    strip = _strip_height(1) if div else 0.0
    note = "dot: mean over non-diverged repetitions; bar: q10–q90 over all (diverged = +∞: the bar runs off the top)"
    if div:
        note += "; strip: diverged fraction (× = all repetitions)"
    # Width: room for every group's markers and its (wrapped) name.
    per_group = max(1.3, 0.28 * most)
    fig, (ax,) = _grid(1, f"{title}: final loss", note, width=min(18.0, max(4.5, per_group * len(groups) + 2.5)),
                       panel_titles=False, strip=strip)

    labelled: set[str] = set()
    legend: list[tuple[Any, str]] = []  # in series order, whichever artist shows the series
    lines: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for r in results:
        c = colors[r.color_key]
        x = xpos[r.index]
        y, q10, q90 = finals[r.index]
        name = names[r.index]
        label = _legend_text(name) if name not in labelled else None
        labelled.add(name)
        mk = _MARKERS[styles[r.index]]
        if math.isfinite(y) and (y > 0 or not log):
            lo, hi = _clip_band(np.array([q10]), np.array([q90]), top)
            lo0 = lo[0] if math.isfinite(lo[0]) else y
            hi0 = hi[0] if math.isfinite(hi[0]) else y
            err = [[max(y - lo0, 0)], [max(hi0 - y, 0)]]
            handle = ax.errorbar([x], [y], yerr=err if err[0][0] > 0 or err[1][0] > 0 else None, fmt=mk, color=c,
                                 capsize=3, markersize=6)
            if label is not None:
                legend.append((handle, label))
            xs, ys = lines.setdefault((r.color_key, styles[r.index]), ([], []))
            xs.append(x)
            ys.append(y)
        elif label is not None:  # no point for it here: a legend entry all the same
            legend.append((Line2D([], [], marker=mk, color=c, linestyle="none"), label))
    # Join a family's points across groups only when the groups are a sweep on one problem
    # (e.g. over ν), not when they hold different problems.
    for (key, ls), (xs, ys) in lines.items():
        fam = [r for r in results if r.color_key == key]
        if len(xs) > 1 and len({getattr(r, "problem", "") for r in fam}) == 1:
            ax.plot(xs, ys, color=colors[key], linestyle=ls, linewidth=1.0, alpha=0.6)

    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xticks(range(len(groups)))
    slot_in = (fig.get_size_inches()[0] - _LEFT - _RIGHT) / max(1, len(groups))
    chars = max(4, int(slot_in * 72 / (9 * 0.62)) - 1)
    ax.set_xticklabels([_wrap(g or "(all)", chars, max_lines=4) for g in groups], fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(ylo, top)
    ax.set_ylabel(f"final {_loss_label(results)}" + (" (log)" if log else ""))
    ax.grid(True, axis="y", alpha=0.3)

    if div:
        _offset_into_label(ax)
        _strip_frame(ax, 1)
        y = _strip_y(ax, _STRIP_GAP + 0.5 * _STRIP_ROW)
        tr = _strip_transform(ax)
        for r in div:
            frac, c = _final_fraction(r), colors[r.color_key]
            if frac >= 1.0:
                ax.plot([xpos[r.index]], [y], transform=tr, marker="x", color=c, markersize=8, markeredgewidth=2.2,
                        linestyle="none", clip_on=False)
            else:
                ax.text(xpos[r.index], y, f"{frac:.0%}", transform=tr, ha="center", va="center", fontsize=7,
                        color=c, clip_on=False)
        if any(_final_fraction(r) >= 1.0 for r in div):
            legend.append((Line2D([], [], marker="x", color="#444444", markersize=7, markeredgewidth=2.0,
                                  linestyle="none"), "all repetitions diverged"))
    ax.legend([h for h, _ in legend], [lab for _, lab in legend], fontsize=8, loc="best", framealpha=0.85)
    _settle_xticks(fig, [ax], make_room=True)
    return fig


# ---- one line per series -------------------------------------------------------------------------


def _simple_figure(results: Sequence[Any], title: str, field: str | Callable[[Any], Any], ylabel: str, what: str,
                   log_ok: bool = True, skip_zero: bool = False, log_ratio: float = 100.0) -> Figure:
    """One line per series (no band) of ``field`` (an attribute name, or a function of the result)
    against the step, panels per group.

    ``skip_zero`` leaves out series whose values are all 0 (e.g. the identity's compression error).
    """
    groups = _groups(results)
    colors, styles, names = _colors(results), _styles(results), _names(results)

    def values(r: Any) -> np.ndarray:
        v = field(r) if callable(field) else getattr(r, field)
        return np.asarray(np.nan if v is None else v, dtype=np.float64) * np.ones(len(r.steps))

    shown = [r for r in results if np.isfinite(values(r)).any()
             and not (skip_zero and (values(r)[np.isfinite(values(r))] == 0).all())]
    titles = {g: _wrap(g, 48) for g in groups}
    fig, axes = _grid(len(groups), f"{title}: {what}", panel_titles=any(groups),
                      title_lines=_title_lines(list(titles.values())))
    log = log_ok and _use_log([values(r) for r in shown], log_ratio)
    for ax, g in zip(axes, groups):
        for r in (r for r in shown if r.group == g):
            ax.plot(r.steps, values(r), color=colors[r.color_key], linestyle=styles[r.index], linewidth=1.6,
                    label=_legend_text(names[r.index]))
        if g:
            _panel_title(ax, titles[g], 0.0)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        _number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
    _settle_xticks(fig, axes)
    return fig


def compression_error_figure(results: Sequence[Any], title: str) -> Figure | None:
    """compression_error.png, or None when no series compresses lossily."""
    ce = [np.asarray(r.compression_error, dtype=np.float64) for r in results]
    if not any((c[np.isfinite(c)] > 0).any() for c in ce):
        return None
    return _simple_figure(results, title, "compression_error", "‖C(v) − v‖² / ‖v‖²",
                          "compression error of the vectors sent", skip_zero=True, log_ratio=10.0)


def eval_metric(results: Sequence[Any]) -> str | None:
    """The held-out metric the results report (test accuracy, else perplexity), or None."""
    have = {k for r in results for k in getattr(r, "evaluation", {})}
    return next((k for k in _EVAL_LABELS if k in have), None)


def test_figure(results: Sequence[Any], title: str) -> Figure | None:
    """test.png: the held-out metric of network problems along the run, or None without one."""
    metric = eval_metric(results)
    if metric is None:
        return None
    return _simple_figure(results, title, lambda r: r.evaluation.get(metric), _EVAL_LABELS[metric],
                          _EVAL_LABELS[metric], log_ok=metric == "test_perplexity")


def tracking_test_figure(results: Sequence[Any], sdes: Sequence[Any], title: str) -> bytes | None:
    """tracking_test.png: per series, the optimizer's held-out metric (solid) and its SDE's (dashed), as
    means over runs and paths; None when the problem reports none."""
    metric = eval_metric(results)
    if metric is None:
        return None
    colors = _colors(results)
    pairs = [(r, q) for r, q in zip(results, sdes) if r.evaluation.get(metric) is not None]  # series reporting it
    results, sdes = [r for r, _ in pairs], [q for _, q in pairs]
    fig, axes = _grid(len(results), f"{title}: {_EVAL_LABELS[metric]}, optimizer vs SDE",
                      "solid: optimizer (mean over runs); dashed: SDE (mean over paths)",
                      title_lines=_title_lines([_wrap(r.label, 55) for r in results]))
    for ax, r, q in zip(axes, results, sdes):
        c = colors[r.color_key]
        for res, style, who in ((r, "-", "optimizer"), (q, "--", "SDE")):
            v = res.evaluation.get(metric)
            if v is not None:
                ax.plot(res.steps, v, color=c if style == "-" else "#222222", linestyle=style, linewidth=1.6, label=who)
        _panel_title(ax, _wrap(r.label, 55), 0.0, fontsize=9.5)
        ax.set_xlabel("step")
        _number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(_EVAL_LABELS[metric])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    _settle_xticks(fig, axes)
    return figure_png(fig)


def sync_figure(results: Sequence[Any], title: str) -> Figure | None:
    """sync.png: for local methods, the synchronisation period H in force and the learning rate along
    the run (one line per series, step plots); None when no series is a local method."""
    shown = [r for r in results if getattr(r, "sync_period", None) is not None]
    if not shown:
        return None
    colors, styles, names = _colors(results), _styles(results), _names(results)
    fig, axes = _grid(2, f"{title}: synchronisation period and learning rate",
                      "H: local steps between two averagings, as decided after each averaging", sharey=False)
    for ax, field, ylabel in ((axes[0], "sync_period", "period H (log)"), (axes[1], "lr", "learning rate η")):
        for r in shown:
            ax.step(r.steps, np.asarray(getattr(r, field), dtype=np.float64), where="post", color=colors[r.color_key],
                    linestyle=styles[r.index], linewidth=1.6, label=_legend_text(names[r.index]))
        if field == "sync_period":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        _number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    _settle_xticks(fig, axes)
    return fig


def diverged_figure(results: Sequence[Any], title: str) -> Figure | None:
    """diverged.png, or None when no repetition of any series diverged."""
    if not any(np.nan_to_num(np.asarray(r.diverged_fraction, dtype=np.float64)).max(initial=0.0) > 0 for r in results):
        return None
    return _simple_figure(results, title, "diverged_fraction", "diverged fraction",
                          "fraction of diverged repetitions", log_ok=False)


def make_figures(results: Sequence[Any], title: str) -> dict[str, Figure]:
    """Every applicable figure of ``make_plots``, as Figures; ``results`` are ``SeriesResult``s."""
    if not results:
        return {}
    out: dict[str, Figure] = {
        "loss.png": loss_figure(results, title, by_bits=False),
        "loss_vs_bits.png": loss_figure(results, title, by_bits=True),
        "final.png": final_figure(results, title),
    }
    for name, make in (("compression_error.png", compression_error_figure), ("diverged.png", diverged_figure),
                       ("test.png", test_figure), ("sync.png", sync_figure)):
        fig = make(results, title)
        if fig is not None:
            out[name] = fig
    return out


def make_plots(results: Sequence[Any], title: str) -> dict[str, bytes]:
    """Render every applicable figure; ``results`` are ``compsde.experiments.runner.SeriesResult``s."""
    if not results:
        return {}
    builders: list[tuple[str, Callable[[], Figure | None]]] = [
        ("loss.png", lambda: loss_figure(results, title, by_bits=False)),
        ("loss_vs_bits.png", lambda: loss_figure(results, title, by_bits=True)),
        ("final.png", lambda: final_figure(results, title)),
        ("compression_error.png", lambda: compression_error_figure(results, title)),
        ("diverged.png", lambda: diverged_figure(results, title)),
        ("test.png", lambda: test_figure(results, title)),
        ("sync.png", lambda: sync_figure(results, title)),
    ]
    out = {}
    for name, build in builders:  # one figure alive at a time
        fig = build()
        if fig is not None:
            out[name] = figure_png(fig)
    return out


# ---- optimizer vs SDE ----------------------------------------------------------------------------


def tracking_figure_obj(results: Sequence[Any], sdes: Sequence[Any], errors: Sequence[Mapping[str, float]],
                        title: str) -> Figure:
    """tracking.png: one panel per series, the optimizer's mean loss and q10–q90 band against its
    SDE's (dashed); ``errors`` are ``compsde.sde.tracking.tracking_error`` results, one per series. The
    panels share one y scale (and their limits when comparable)."""
    colors = _colors(results)
    log = _use_log([np.r_[x.loss_mean, x.loss_q10, x.loss_q90] for x in list(results) + list(sdes)])
    lims = [_limits([r, q], log) for r, q in zip(results, sdes)]
    share = _shared(lims, log)
    all_lim = _union(lims)
    div = [[(x, colors[r.color_key], style, f"{who}: ") for x, style, who in ((r, "-", "optimizer"), (q, "--", "SDE"))
            if x.first_diverged_step is not None and _final_fraction(x) > 0] for r, q in zip(results, sdes)]
    rows = max([len(d) for d in div] or [0])
    strip = _strip_height(rows)
    note = "solid: optimizer (mean over runs, band q10–q90); dashed: SDE (mean over paths, hatched band q10–q90)"
    if rows:
        note += "; strip above a panel: where runs diverged"
    heads = []
    for r, e in zip(results, errors):
        mx, mn = (math.nan if v is None else float(v) for v in (e.get("max_rel_error"), e.get("mean_rel_error")))
        err = f"max rel. error {mx:.1%}, mean {mn:.1%}" if math.isfinite(mx) and math.isfinite(mn) else "no finite error"
        heads.append(f"{_wrap(r.label, 55)}\n{err}")
    fig, axes = _grid(len(results), f"{title}: optimizer vs SDE", note, sharey=share,
                      title_lines=max(1, _title_lines(heads) - 1), strip=strip)  # 2 lines of 9.5 pt fit in 1 of 11 pt
    for ax, r, q, head, d, lim in zip(axes, results, sdes, heads, div, lims):
        ylim = all_lim if share else lim
        top = ylim[1] if ylim else 1.0
        c = colors[r.color_key]
        for res, style, hatch in ((r, "-", None), (q, "--", "////")):
            lo, hi = _clip_band(res.loss_q10, res.loss_q90, top)
            mean = np.asarray(res.loss_mean, dtype=np.float64)
            if log:
                lo, hi, mean = _positive(lo), _positive(hi), _positive(mean)
            if hatch:
                ax.fill_between(res.steps, lo, hi, facecolor="none", edgecolor=c, hatch=hatch, alpha=0.35, linewidth=0)
            else:
                ax.fill_between(res.steps, lo, hi, color=c, alpha=0.15, linewidth=0)
            ax.plot(res.steps, mean, color="#222222" if hatch else c, linestyle=style, linewidth=1.8 if not hatch else 1.4,
                    label=("SDE" if hatch else "optimizer") + (
                        " (all diverged)" if _final_fraction(res) >= 1.0 else
                        f" (diverged {_final_fraction(res):.0%})" if _final_fraction(res) > 0 else ""))
        if log:
            ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(True, which="major", alpha=0.3)
        _panel_title(ax, head, strip, fontsize=9.5)
        ax.set_xlabel("step")
        _number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(_loss_label(results) + (" (log)" if log else ""))
        ax.legend(fontsize=8, loc="upper right")
        _mark_diverged(ax, d, lambda x: np.asarray(x.steps, dtype=np.float64))
        if rows:
            _offset_into_label(ax)
    _settle_xticks(fig, axes)
    return fig


def tracking_figure(results: Sequence[Any], sdes: Sequence[Any], errors: Sequence[Mapping[str, float]], title: str) -> bytes:
    """tracking.png as PNG bytes (see ``tracking_figure_obj``)."""
    return figure_png(tracking_figure_obj(results, sdes, errors, title))


# ---- weak order ----------------------------------------------------------------------------------


def _fit_points(fit: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The (η, error) pairs of a weak-order fit that a log–log plot can show."""
    lr = np.array([np.nan if v is None else float(v) for v in fit.get("lr", [])], dtype=np.float64)
    err = np.array([np.nan if v is None else float(v) for v in fit.get("mean_rel_error", [])], dtype=np.float64)
    n = min(lr.size, err.size)
    lr, err = lr[:n], err[:n]
    ok = np.isfinite(lr) & np.isfinite(err) & (lr > 0) & (err > 0)
    return lr[ok], err[ok]


def weak_order_figure_obj(fits: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """weak_order.png: per group of ``fits`` (the ``weak_order`` entry of summary.json, see
    ``compsde.experiments.runner.weak_order_fits``: {"group", "lr", "mean_rel_error", "slope"}), the mean
    relative tracking error against η on log–log axes, the least-squares line through the points
    (its slope in the legend) and a slope-1 reference line (an order-1 weak approximation)."""
    fits = list(fits)
    titles = [_wrap(f.get("group") or "", 48) for f in fits]
    note = ("points: mean relative tracking error |L_opt − L_SDE| / L_opt per learning rate; line: least-squares "
            "fit in log–log; dashed: slope 1 (an order-1 weak approximation)")
    pts = [_fit_points(f) for f in fits]
    lims = []
    for _lr, err in pts:
        lims.append((float(err.min()) / 2.0, float(err.max()) * 2.0) if err.size else None)
    share = _shared(lims, True)
    all_lim = _union(lims)
    fig, axes = _grid(max(1, len(fits)), f"{title}: weak order", note, sharey=share,
                      panel_titles=any(titles), title_lines=_title_lines(titles))
    if not fits:
        ax = axes[0]
        ax.text(0.5, 0.5, "no weak-order fit: no group has series differing only in η", transform=ax.transAxes,
                ha="center", va="center", fontsize=10, color="#555555")
        ax.set_xticks([])
        ax.set_yticks([])
        return fig
    for i, (ax, f, (lr, err), head, lim) in enumerate(zip(axes, fits, pts, titles, lims)):
        c = _PALETTE[i % len(_PALETTE)]
        slope = f.get("slope")
        slope = float(slope) if slope is not None and math.isfinite(float(slope)) else None
        ax.set_xscale("log")
        ax.set_yscale("log")
        if err.size:
            ax.plot(lr, err, marker="o", color=c, linestyle="none", markersize=7, label="mean rel. tracking error")
            span = np.array([lr.min() / 1.25, lr.max() * 1.25])
            lx, ly = np.log(lr), np.log(err)
            if slope is not None:
                b = float(ly.mean() - slope * lx.mean())  # the least-squares intercept for this slope
                ax.plot(span, np.exp(b) * span ** slope, color=c, linewidth=1.8, label=f"least-squares fit: slope {slope:.2f}")
            else:
                ax.plot([], [], color=c, linewidth=1.8, label="least-squares fit: slope not available")
            b1 = float(ly.mean() - lx.mean())
            ax.plot(span, np.exp(b1) * span, color="#555555", linestyle="--", linewidth=1.2, label="slope 1 (reference)")
            ax.set_xlim(span[0] / 1.1, span[1] * 1.1)
            # Ticks at the learning rates themselves (thinned below if they crowd).
            ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(set(lr.tolist()))))
            ax.xaxis.set_major_formatter(ticker.FixedFormatter([_compact(v) for v in sorted(set(lr.tolist()))]))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            ax.text(0.5, 0.5, "no finite positive error to plot", transform=ax.transAxes, ha="center", va="center",
                    fontsize=9, color="#555555")
        ylim = all_lim if share else lim
        if ylim:
            ax.set_ylim(*ylim)
        if head:
            _panel_title(ax, head, 0.0)
        ax.set_xlabel("learning rate η (log)")
        ax.set_ylabel("mean relative tracking error (log)")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
    _settle_xticks(fig, axes)
    return fig


def weak_order_figure(fits: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """weak_order.png as PNG bytes (see ``weak_order_figure_obj``)."""
    return figure_png(weak_order_figure_obj(fits, title))
