"""The layout of the figures of ``compsde.experiments.plots``: figures and their panels, colours, line
styles and legends, y scales and ranges, tick labels, the "diverged" strip, and user text.

Every figure is built from these helpers, so the conventions below hold across the figures.

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import ticker, transforms  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

__all__ = ["LEFT", "MARKERS", "PALETTE", "RIGHT", "STRIP_GAP", "STRIP_ROW", "clip_band", "colors", "compact",
           "diverged_entries", "figure_png", "final_fraction", "grid", "groups", "legend", "legend_label", "legends",
           "legend_text", "limits", "loss_label", "mark_diverged", "names", "number_axis", "occurrence",
           "offset_into_label", "panel_title", "plain_text", "positive", "settle_xticks", "shared", "strip_frame",
           "strip_height", "strip_transform", "strip_y", "styles", "tail_range", "title_lines", "union", "use_log",
           "wrap"]

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#ad494a"]
_STYLES = ["-", "--", ":", "-."]
MARKERS = {"-": "o", "--": "s", ":": "^", "-.": "D"}
#: What the loss of each kind of problem is, as an axis label.
_LOSS_LABELS = {"objective": "f(x) − f*", "game": "‖z − z*‖²", "network": "training cross-entropy"}


def loss_label(results: Sequence[Any]) -> str:
    """The loss axis' label, from the problems of ``results``: f(x) − f* for objectives, a game's squared
    distance to its equilibrium ‖z − z*‖² (docs/theory.md §9.6), the training cross-entropy for networks
    (their f* is unknown: the loss itself, on a fixed subset of the training set); the kinds a run mixes
    are joined by "or"."""
    from compsde.objectives.games import GAMES
    from compsde.objectives.network import NETWORKS

    networks = {cls.name for cls in NETWORKS}

    def kind(problem: str) -> str:
        return "game" if problem in GAMES else "network" if problem in networks else "objective"

    kinds = {kind(getattr(r, "problem", "")) for r in results}
    return " or ".join(label for k, label in _LOSS_LABELS.items() if k in kinds)


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


def wrap(s: str, width: int, max_lines: int = 2) -> str:
    """``s`` wrapped to lines of at most ``width`` characters (at most ``max_lines``, the last one
    ending with … when cut), then made literal. Wrapping comes first, so that no line break falls
    inside an escape."""
    s = str(s)
    lines = textwrap.wrap(s, width=max(1, width), break_long_words=True, break_on_hyphens=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 1)].rstrip() + "…"
    return "\n".join(plain_text(line) for line in lines)


def legend_text(s: str, width: int = 42) -> str:
    """A legend label: wrapped, literal, and never starting with "_" (which a legend would skip)."""
    out = wrap(s, width, max_lines=3)
    return " " + out if out.startswith("_") else out


# ---- series bookkeeping --------------------------------------------------------------------------


def colors(results: Sequence[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in results:
        if r.color_key not in out:
            out[r.color_key] = PALETTE[len(out) % len(PALETTE)]
    return out


def groups(results: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for r in results:
        if r.group not in out:
            out.append(r.group)
    return out


def occurrence(results: Sequence[Any]) -> dict[int, int]:
    """Per series index: how many series of its panel with the same colour come before it."""
    out: dict[int, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for r in results:
        n = seen.get((r.group, r.color_key), 0)
        seen[(r.group, r.color_key)] = n + 1
        out[r.index] = n
    return out


def styles(results: Sequence[Any]) -> dict[int, str]:
    """Line style per series index: distinct within a panel for series sharing a colour."""
    return {i: _STYLES[n % len(_STYLES)] for i, n in occurrence(results).items()}


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


def names(results: Sequence[Any]) -> dict[int, str]:
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


def final_fraction(r: Any) -> float:
    d = np.asarray(r.diverged_fraction, dtype=np.float64)
    d = d[np.isfinite(d)]
    return float(d[-1]) if d.size else 0.0


def legend_label(r: Any, names: dict[int, str]) -> str:
    frac = final_fraction(r)
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


def use_log(values: Sequence[Any], ratio: float = 100.0) -> bool:
    """The y scale of a figure whose panels are compared, decided once from all their plotted values:
    log if the positive finite values span more than ``ratio`` (default two decades) and every
    finite value is positive (a log axis would hide the others), else linear."""
    fin = _finite(values)
    if fin.size < 2 or (fin <= 0).any():
        return False
    return bool(fin.max() / fin.min() > ratio)


def positive(v: np.ndarray) -> np.ndarray:
    """Copy with non-positive entries masked (NaN), for log axes."""
    v = np.array(v, dtype=np.float64)
    v[~(v > 0)] = np.nan
    return v


def clip_band(lo: np.ndarray, hi: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Replace +inf in the band by ``top`` so the band reaches the top of the axis."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return np.where(np.isinf(lo), top, lo), np.where(np.isinf(hi), top, hi)


def limits(rs: Sequence[Any], log: bool) -> tuple[float, float] | None:
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


def shared(lims: Sequence[tuple[float, float] | None], log: bool) -> bool:
    """Share one y range across panels unless one panel's range would flatten the others: share when
    the upper limits are within three decades (log) or a factor 10 (linear)."""
    tops = [lim[1] for lim in lims if lim is not None and lim[1] > 0]
    return not tops or max(tops) / min(tops) <= (1e3 if log else 10.0)


def union(lims: Sequence[tuple[float, float] | None]) -> tuple[float, float] | None:
    ok = [lim for lim in lims if lim is not None]
    return (min(lo for lo, _ in ok), max(hi for _, hi in ok)) if ok else None


def tail_range(curves: Sequence[tuple[Any, Any]], fraction: float = 0.5,
               ratio: float = 3.0) -> tuple[float, float, float, float] | None:
    """The ranges that show the end of a run: x from step (1 − ``fraction``) × the last step to the last
    step, y (linear) the span of the curves' (steps, values) there with 15 % of it added on each side;
    when the whole run's y span is more than ``ratio`` times wider (else None: the whole run reads at its
    own scale). Returns (bottom, top, first step, last step)."""
    last = max((float(np.nanmax(np.asarray(s, dtype=np.float64))) for s, _ in curves), default=math.nan)
    if not math.isfinite(last):
        return None
    start = (1.0 - fraction) * last
    tail = _finite([np.asarray(v, dtype=np.float64)[np.asarray(s, dtype=np.float64) >= start] for s, v in curves])
    whole = _finite([v for _, v in curves])
    if tail.size < 2 or not whole.size:
        return None
    lo, hi = float(tail.min()), float(tail.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 1e-3
    if float(whole.max() - whole.min()) <= ratio * span:
        return None
    return lo - 0.15 * span, hi + 0.15 * span, start, last


def compact(v: float, digits: int = 3) -> str:
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
    """Tick labels by ``compact``, with more digits where three would make two ticks read alike."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return compact(x)

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        for digits in range(3, 12):
            labels = [compact(v, digits) for v in values]
            if len(set(labels)) == len(labels):
                return labels
        return [f"{v:g}" for v in values]


def number_axis(axis: Any, integer: bool = False) -> None:
    """A linear axis of (possibly large) numbers: nice ticks, compact labels."""
    axis.set_major_locator(ticker.MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=integer))
    axis.set_major_formatter(_CompactFormatter())


# ---- layout --------------------------------------------------------------------------------------

# Fixed layout in inches (tight_layout measured every tick label and cost half the rendering time).
LEFT, RIGHT, BOTTOM, HGAP, VGAP, PANEL_TITLE = 0.9, 0.25, 0.6, 0.95, 0.95, 0.4
TITLE_LINE = 0.17          # inches per extra line of a panel title
# The "diverged" strip above a panel: a gap, then one row per diverged series.
STRIP_GAP, STRIP_ROW = 0.07, 0.17


def strip_height(rows: int) -> float:
    return STRIP_GAP + rows * STRIP_ROW + 0.03 if rows else 0.0


def grid(n: int, title: str, note: str = "", width: float = 4.6, height: float = 3.3, sharey: bool = True,
          panel_titles: bool = True, title_lines: int = 1, strip: float = 0.0) -> tuple[Figure, list[Any]]:
    """A figure with n panels (up to 3 per row), its title and note placed above them.

    ``title`` is user text (wrapped and made literal here); ``title_lines`` is the most lines a panel
    title has; ``strip`` the height in inches of the "diverged" strips above the panels.
    """
    cols = min(n, 3 if n != 4 else 2)
    rows = math.ceil(n / cols)
    if n == 1:
        width, height = max(width, 7.0), 4.2
    fig_w = LEFT + RIGHT + cols * width + (cols - 1) * HGAP
    title = wrap(title, max(40, int(fig_w * 10)), max_lines=4)
    note = wrap(note, max(60, int(fig_w * 15)), max_lines=3) if note else ""
    t_lines, n_lines = title.count("\n") + 1, (note.count("\n") + 1 if note else 0)
    ptitle = (PANEL_TITLE + TITLE_LINE * (title_lines - 1)) if panel_titles else 0.15
    head = 0.2 + 0.24 * t_lines + 0.18 * n_lines + (0.1 if note else 0.0) + ptitle + strip
    vgap = VGAP + (ptitle - PANEL_TITLE) + strip
    fig_h = head + BOTTOM + rows * height + (rows - 1) * vgap
    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    fig.subplots_adjust(left=LEFT / fig_w, right=1 - RIGHT / fig_w, bottom=BOTTOM / fig_h, top=1 - head / fig_h,
                        wspace=HGAP / width, hspace=vgap / height)
    fig.text(0.5, 1.0 - 0.12 / fig_h, title, ha="center", va="top", fontsize=12)
    if note:
        y = 0.16 + 0.24 * t_lines
        fig.text(0.5, 1.0 - y / fig_h, note, ha="center", va="top", fontsize=8.5, color="#555555")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def panel_title(ax: Any, text: str, strip: float, fontsize: float = 11) -> None:
    """A panel title above the panel's diverged strip (``strip`` inches)."""
    ax.set_title(text, fontsize=fontsize, pad=6 + 72 * strip)


def title_lines(texts: Sequence[str]) -> int:
    return max([t.count("\n") + 1 for t in texts] or [1])


def _grow_bottom(fig: Figure, inches: float) -> None:
    """Add ``inches`` below everything in the figure (axes and texts keep their size in inches)."""
    w, h = fig.get_size_inches()
    nh = h + inches
    for ax in fig.axes:
        p = ax.get_position()
        ax.set_position((p.x0, (p.y0 * h + inches) / nh, p.width, p.height * h / nh))
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


def settle_xticks(fig: Figure, axes: Sequence[Any], make_room: bool = False) -> None:
    """Thin the x tick labels of ``axes`` until no two overlap; with ``make_room``, also grow the
    figure at the bottom when the (e.g. wrapped) labels or the x label reach below it."""
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # every figure comes from ``grid``
    renderer = canvas.get_renderer()
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


# ---- legends -------------------------------------------------------------------------------------

#: Where a legend may go inside its panel, in order of preference.
_LEGEND_LOCS = ("upper right", "upper left", "lower left", "lower right", "center right", "center left",
                "upper center", "lower center", "center")
_LEGEND_PAD = 3.0   # pixels around a legend that data should not enter either
_MARK_WEIGHT = 20   # a marker inside a legend counts as this many points of a line
_BAND_GRID = (8, 4)  # points per legend (x, y) tested against the bands


def _dense(xy: np.ndarray, spacing: float = 2.0) -> np.ndarray:
    """Points every ``spacing`` pixels along the polyline ``xy`` (n, 2) in display coordinates, for its
    finite segments (a non-finite vertex breaks the line, as matplotlib draws it)."""
    a, b = xy[:-1], xy[1:]
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = a[ok], b[ok]
    if not a.size:
        return xy[np.isfinite(xy).all(1)]
    n = np.maximum(1, np.ceil(np.hypot(*(b - a).T) / spacing)).astype(int)
    t = np.concatenate([np.arange(k) / k for k in n])
    start = np.repeat(a, n, axis=0)
    return np.vstack([start + t[:, None] * (np.repeat(b, n, axis=0) - start), b[-1:]])


def _data_in_display(ax: Any) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """What a legend on ``ax`` should not cover, in display coordinates: points along every line drawn
    (steps included), the markers of marker-only lines, and the bands (filled paths)."""
    from matplotlib import cbook
    from matplotlib.collections import LineCollection

    line_pts, marks, bands = [np.empty((0, 2))], [np.empty((0, 2))], []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        x, y = (np.asarray(v, dtype=np.float64) for v in line.get_data())
        if line.get_linestyle() in ("None", "none", "", " "):
            marks.append(line.get_transform().transform(np.column_stack([x, y])))
            continue
        style = line.get_drawstyle()
        if style in cbook.STEP_LOOKUP_MAP and style != "default":
            x, y = cbook.STEP_LOOKUP_MAP[style](x, y)
        line_pts.append(_dense(line.get_transform().transform(np.column_stack([x, y]))))
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        tr = coll.get_transform()
        if isinstance(coll, LineCollection):  # e.g. error bars
            line_pts += [_dense(tr.transform(np.asarray(seg, dtype=np.float64))) for seg in coll.get_segments() if len(seg)]
        else:
            bands += [tr.transform_path(p) for p in coll.get_paths()]
    inside = ax.bbox
    pts, mk = np.vstack(line_pts), np.vstack(marks)
    keep = lambda p: p[np.isfinite(p).all(1) & (p[:, 0] >= inside.x0) & (p[:, 0] <= inside.x1)  # noqa: E731
                       & (p[:, 1] >= inside.y0) & (p[:, 1] <= inside.y1)]
    return keep(pts), keep(mk), bands


def _covered(box: Any, pts: np.ndarray, marks: np.ndarray, bands: Sequence[Any]) -> float:
    """How much data a legend at display box ``box`` covers: line points inside it, markers (weighted
    ``_MARK_WEIGHT``), and the share of a grid over it that falls in a band."""
    def within(p: np.ndarray, pad: float) -> int:
        return int(((p[:, 0] >= box.x0 - pad) & (p[:, 0] <= box.x1 + pad)
                    & (p[:, 1] >= box.y0 - pad) & (p[:, 1] <= box.y1 + pad)).sum())

    score = float(within(pts, _LEGEND_PAD) + _MARK_WEIGHT * within(marks, _LEGEND_PAD + 4.0))
    if bands:
        gx, gy = np.meshgrid(np.linspace(box.x0, box.x1, _BAND_GRID[0]), np.linspace(box.y0, box.y1, _BAND_GRID[1]))
        grid_pts = np.column_stack([gx.ravel(), gy.ravel()])
        hit = np.zeros(len(grid_pts), dtype=bool)
        for path in bands:
            hit |= path.contains_points(grid_pts)
        score += float(hit.sum())
    return score


def _places(ax: Any, leg: Any, renderer: Any) -> Iterator[Any]:
    """Where ``legend`` tries the legend: the places of ``_LEGEND_LOCS``, then its lower left corner
    (axes fraction) at the left, the middle and the right of the panel, at 15 heights from bottom to top
    (a gap between curves that no corner or centre reaches)."""
    yield from _LEGEND_LOCS
    box = leg.get_window_extent(renderer)
    w, h = box.width / ax.bbox.width, box.height / ax.bbox.height
    pad = 0.02
    for y in np.linspace(pad, max(pad, 1.0 - pad - h), 15):
        for x in (pad, (1.0 - w) / 2, max(pad, 1.0 - pad - w)):
            yield (float(x), float(y))


def legend(ax: Any, handles: Sequence[Any] | None = None, labels: Sequence[str] | None = None, **kw: Any) -> Any:
    """The legend of ``ax`` (of ``handles`` and ``labels`` when given), placed where it covers no data.

    Every place of ``_places`` (the usual corners and centres first) is scored by the data it would
    cover (lines, markers, bands: see ``_covered``), and the first with the least is taken. When each of them covers data and the panel
    does not share its y axis, the top of the y range grows by the legend's height, so that the legend
    sits in an upper corner above the data. Call it once the panel's data and limits are final.
    """
    kw = {"fontsize": 8, "framealpha": 0.85, **kw}
    leg = ax.legend(*(() if handles is None else (handles, labels)), loc=_LEGEND_LOCS[0], **kw)
    fig = ax.get_figure(root=True)
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # every figure comes from ``grid``
    renderer = canvas.get_renderer()
    ax.get_xlim(), ax.get_ylim()  # the view limits as they will be drawn

    def best() -> tuple[float, Any]:
        pts, marks, bands = _data_in_display(ax)
        scores: list[tuple[float, Any]] = []
        for loc in _places(ax, leg, renderer):
            leg.set_loc(loc)
            scores.append((_covered(leg.get_window_extent(renderer), pts, marks, bands), loc))
            if scores[-1][0] == 0:
                break
        return min(scores, key=lambda s: s[0])  # the first of the least covered

    score, loc = best()
    if score > 0 and len(ax.get_shared_y_axes().get_siblings(ax)) == 1:
        _room_above(ax, leg.get_window_extent(renderer).height + 2 * _LEGEND_PAD)
        score, loc = best()
    leg.set_loc(loc)
    return leg


def legends(axes: Sequence[Any]) -> None:
    """``legend`` on every panel of ``axes`` that has labelled artists, after all of them are drawn: a
    panel drawn later can still move the y limits of the panels that share them."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            legend(ax)


def _room_above(ax: Any, pixels: float) -> None:
    """Grow the top of ``ax``'s y range so that the data leave ``pixels`` free at the top of the panel."""
    frac = min(0.6, pixels / ax.bbox.height)
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        llo, lhi = math.log10(lo), math.log10(hi)
        ax.set_ylim(lo, 10.0 ** (llo + (lhi - llo) / (1.0 - frac)))
    else:
        ax.set_ylim(lo, lo + (hi - lo) / (1.0 - frac))


# ---- the diverged strip --------------------------------------------------------------------------


def strip_y(ax: Any, inches: float) -> float:
    """The axes-fraction y that lies ``inches`` above the top of ``ax``."""
    fig = ax.get_figure()
    h_in = ax.get_position().height * fig.get_size_inches()[1]
    return 1.0 + inches / h_in


def strip_transform(ax: Any) -> Any:
    """x in data coordinates, y in axes fraction: artists at y > 1 lie above the data area."""
    return transforms.blended_transform_factory(ax.transData, ax.transAxes)


def strip_frame(ax: Any, rows: int) -> None:
    """The light band above ``ax`` that holds ``rows`` diverged marks, labelled "diverged"."""
    y0, y1 = strip_y(ax, STRIP_GAP - 0.02), strip_y(ax, STRIP_GAP + rows * STRIP_ROW + 0.02)
    ax.add_patch(Rectangle((0.0, y0), 1.0, y1 - y0, transform=ax.transAxes, facecolor="#f1f1f1",
                           edgecolor="#cccccc", linewidth=0.6, clip_on=False, zorder=0.5))
    ax.text(-0.012, (y0 + y1) / 2, "diverged", transform=ax.transAxes, ha="right", va="center",
            fontsize=7.5, color="#555555", style="italic", clip_on=False)


def _steps_text(a: int, b: int | None) -> str:
    return f"step {compact(a)}" if b is None or b == a else f"steps {compact(a)}–{compact(b)}"


def _diverged_row(ax: Any, row: int, x0: float, x1: float, frac: float, color: str, ls: str, text: str) -> None:
    """One row of the strip: × where every repetition had diverged (or | marks for a partial
    divergence) at data x ``x0``..``x1``, a segment between, and ``text`` beside it."""
    y = strip_y(ax, STRIP_GAP + (row + 0.5) * STRIP_ROW)
    tr = strip_transform(ax)
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


def offset_into_label(ax: Any) -> None:
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


def diverged_entries(rs: Sequence[Any]) -> list[Any]:
    return [r for r in rs if r.first_diverged_step is not None and final_fraction(r) > 0]


def mark_diverged(ax: Any, entries: Sequence[tuple[Any, str, str, str]], x_of: Callable[[Any], np.ndarray]) -> None:
    """The strip above ``ax`` with one row per (series, colour, line style, prefix) that diverged."""
    if not entries:
        return
    strip_frame(ax, len(entries))
    for row, (r, color, ls, prefix) in enumerate(entries):
        first, last = r.first_diverged_step, r.last_diverged_step
        frac = final_fraction(r)
        what = "all diverged" if frac >= 1.0 else f"{frac:.0%} diverged"
        _diverged_row(ax, row, _x_at(r, x_of, first), _x_at(r, x_of, last if last is not None else first), frac, color,
                      ls, f"{prefix}{what}, {_steps_text(first, last)}")


def _x_at(r: Any, x_of: Callable[[Any], np.ndarray], step: int | None) -> float:
    """The data x of series ``r`` at ``step`` (interpolated between its logged steps where x is finite);
    NaN for no step or no finite x."""
    x = np.asarray(x_of(r), dtype=np.float64)
    ok = np.isfinite(x)
    if step is None or not ok.any():
        return math.nan
    return float(np.interp(step, np.asarray(r.steps, dtype=np.float64)[ok], x[ok]))
