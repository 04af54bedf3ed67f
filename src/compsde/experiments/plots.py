"""Plots of an experiment's results (matplotlib, Agg backend: no display needed).

``make_plots(results, title)`` returns ``{file name: PNG bytes}`` (the runner writes them atomically):

* ``loss.png``               f(x) − f* against the step: mean over non-diverged repetitions (line) and
                             the q10–q90 band over all repetitions; one panel per ``group``; log scale
                             when the values span more than two decades; a diverged series is marked
                             with × where it diverged and its diverged fraction in the legend.
* ``loss_vs_bits.png``       the same against the cumulative bits each worker sent — the budget that
                             compression saves (log x when the series' bit rates differ ≥ 10×).
* ``final.png``              the final loss of every series, panels side by side on one axis (e.g.
                             the loss against ν in the noise-resilience preset), with q10–q90 bars.
* ``compression_error.png``  ‖C(v) − v‖²/‖v‖² along the run, when some series compresses lossily.
* ``diverged.png``           the diverged fraction against the step, when it is nonzero somewhere.

A method variant (method, compressor and its parameters, schedule, normalisation) keeps one colour in
every panel and every figure; series of one panel that share a colour get different line styles.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["PLOT_FILES", "make_plots", "tracking_figure"]

#: Every file name ``make_plots`` (and, for ``compsde track``, ``tracking_figure``) may produce.
PLOT_FILES = ("loss.png", "loss_vs_bits.png", "final.png", "compression_error.png", "diverged.png", "tracking.png")

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#ad494a"]
_STYLES = ["-", "--", ":", "-."]
_LOSS_LABEL = "f(x) − f*"


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


def _styles(results: Sequence[Any]) -> dict[int, str]:
    """Line style per series index: distinct within a panel for series sharing a colour."""
    out: dict[int, str] = {}
    for g in _groups(results):
        seen: dict[str, int] = {}
        for r in results:
            if r.group == g:
                n = seen.get(r.color_key, 0)
                seen[r.color_key] = n + 1
                out[r.index] = _STYLES[n % len(_STYLES)]
    return out


# Fixed layout in inches (tight_layout measured every tick label and cost half the rendering time).
_LEFT, _RIGHT, _BOTTOM, _HGAP, _VGAP, _PANEL_TITLE = 0.9, 0.25, 0.6, 0.95, 0.95, 0.4


def _grid(n: int, title: str, note: str = "", width: float = 4.6, height: float = 3.3,
          sharey: bool = True, panel_titles: bool = True) -> tuple[Any, list[Any]]:
    """A figure with n panels (up to 3 per row), its title and note placed above them."""
    cols = min(n, 3 if n != 4 else 2)
    rows = math.ceil(n / cols)
    if n == 1:
        width, height = max(width, 7.0), 4.2
    fig_w = _LEFT + _RIGHT + cols * width + (cols - 1) * _HGAP
    title = textwrap.fill(title, width=max(40, int(fig_w * 10)))
    head = 0.2 + 0.24 * (title.count("\n") + 1) + (0.28 if note else 0.0) + (_PANEL_TITLE if panel_titles else 0.15)
    fig_h = head + _BOTTOM + rows * height + (rows - 1) * _VGAP
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False, sharey=sharey)
    fig.subplots_adjust(left=_LEFT / fig_w, right=1 - _RIGHT / fig_w, bottom=_BOTTOM / fig_h, top=1 - head / fig_h,
                        wspace=_HGAP / width, hspace=_VGAP / height)
    fig.text(0.5, 1.0 - 0.12 / fig_h, title, ha="center", va="top", fontsize=12)
    if note:
        y = 0.16 + 0.24 * (title.count("\n") + 1)
        fig.text(0.5, 1.0 - y / fig_h, note, ha="center", va="top", fontsize=8.5, color="#555555")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _use_log(values: Sequence[np.ndarray], ratio: float = 100.0) -> bool:
    """Log scale if the positive finite values span more than ``ratio`` (default two decades)."""
    allv = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values]) if values else np.array([])
    fin = allv[np.isfinite(allv)]
    pos = fin[fin > 0]
    if pos.size < 2:
        return False
    return bool(pos.max() / pos.min() > ratio)


def _positive(v: np.ndarray) -> np.ndarray:
    """Copy with non-positive entries masked (NaN), for log axes."""
    v = np.array(v, dtype=np.float64)
    v[~(v > 0)] = np.nan
    return v


def _finish(fig: Any) -> bytes:
    """PNG bytes of the figure (which is then closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


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


def _legend_label(r: Any, names: dict[int, str]) -> str:
    frac = float(r.diverged_fraction[-1])
    if frac > 0:
        return f"{names[r.index]} (diverged {frac:.0%})"
    return names[r.index]


def _clip_band(lo: np.ndarray, hi: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Replace +inf in the band by ``top`` so the band reaches the top of the axis."""
    return np.where(np.isinf(lo), top, lo), np.where(np.isinf(hi), top, hi)


def _limits(rs: Sequence[Any], log: bool) -> tuple[float, float] | None:
    """y limits that show every mean and quantile of ``rs`` (inf quantiles go to the top)."""
    fin = np.concatenate([np.r_[r.loss_mean, r.loss_q10, r.loss_q90] for r in rs])
    fin = fin[np.isfinite(fin)]
    if log:
        fin = fin[fin > 0]
    if not fin.size:
        return None
    if log:
        return float(fin.min()) / 2.0, float(fin.max()) * 3.0
    lo, hi = min(0.0, float(fin.min())), float(fin.max())
    return lo, hi + 0.1 * (hi - lo if hi > lo else 1.0)


def _curve_panel(ax: Any, rs: Sequence[Any], x_of: Any, colors: dict[str, str], styles: dict[int, str],
                 names: dict[int, str], log: bool, ylim: tuple[float, float] | None) -> None:
    """Mean line, q10–q90 band and divergence markers of the series ``rs`` on ``ax``."""
    top = ylim[1] if ylim else 1.0
    for r in rs:
        x = x_of(r)
        c, ls = colors[r.color_key], styles[r.index]
        lo, hi = _clip_band(r.loss_q10, r.loss_q90, top)
        mean = r.loss_mean
        if log:
            lo, hi, mean = _positive(lo), _positive(hi), _positive(mean)
        ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
        ax.plot(x, mean, color=c, linestyle=ls, linewidth=1.8, label=_legend_label(r, names))
        if r.first_diverged_step is not None and float(r.diverged_fraction[-1]) >= 1.0:
            # every repetition diverged: the mean line ends here; mark it (partial divergence is in
            # the legend and in diverged.png)
            k = int(np.searchsorted(r.steps, r.first_diverged_step))
            k = min(max(k - 1, 0), len(x) - 1)
            ok = np.isfinite(mean[: k + 1])
            if ok.any():
                j = int(np.nonzero(ok)[0][-1])
                ax.plot([x[j]], [mean[j]], marker="x", color=c, markersize=9, markeredgewidth=2.2)
                last = r.last_diverged_step
                when = f"step {last}" if last == r.first_diverged_step else f"steps {r.first_diverged_step}–{last}"
                ax.annotate(f"all diverged ({when})", (x[j], mean[j]), textcoords="offset points",
                            xytext=(-12, 0), ha="right", va="center", fontsize=8, color=c)
    if log:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, which="major", alpha=0.3)


def _loss_figure(results: Sequence[Any], title: str, by_bits: bool) -> bytes:
    groups = _groups(results)
    colors, styles = _colors(results), _styles(results)
    log = _use_log([np.r_[r.loss_mean, r.loss_q10, r.loss_q90] for r in results])
    names = _names(results)
    # One y axis for all panels (easy to compare) unless a panel's range would flatten the others:
    # share when the panels' upper limits are within three decades (log) or a factor 10 (linear).
    panel_lims = {g: _limits([r for r in results if r.group == g], log) for g in groups}
    tops = [lim[1] for lim in panel_lims.values() if lim is not None and lim[1] > 0]
    share = not tops or max(tops) / min(tops) <= (1e3 if log else 10.0)
    what = "loss vs bits per worker" if by_bits else "loss"
    note = "line: mean over non-diverged repetitions; band: q10–q90 over all repetitions (diverged = +∞)"
    if any(float(r.diverged_fraction[-1]) >= 1.0 for r in results):
        note += "; × = all diverged"
    fig, axes = _grid(len(groups), f"{title}: {what}", note, sharey=share, panel_titles=any(groups))
    all_lim = _limits(results, log)

    def ylim(g: str) -> tuple[float, float] | None:
        return all_lim if share else panel_lims[g]

    logx = False
    if by_bits:
        rates = [r.bits_per_step for r in results if r.bits_per_step > 0]
        logx = bool(rates) and max(rates) / min(rates) >= 10
    for ax, g in zip(axes, groups):
        rs = [r for r in results if r.group == g]
        if by_bits:
            def x_of(r: Any) -> np.ndarray:
                b = np.asarray(r.bits, dtype=np.float64)
                return np.where(b > 0, b, np.nan) if logx else b
            _curve_panel(ax, rs, x_of, colors, styles, names, log, ylim(g))
            ax.set_xlabel("bits sent per worker")
            if logx:
                ax.set_xscale("log")
        else:
            _curve_panel(ax, rs, lambda r: r.steps, colors, styles, names, log, ylim(g))
            ax.set_xlabel("step")
        if g:
            ax.set_title(g, fontsize=11)
        ax.set_ylabel(_LOSS_LABEL + (" (log)" if log else ""))
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return _finish(fig)


def _final_figure(results: Sequence[Any], title: str) -> bytes:
    groups = _groups(results)
    colors = _colors(results)
    keys = list(colors)
    fig, (ax,) = _grid(1, f"{title}: final loss",
                       "dot: mean over non-diverged repetitions; bar: q10–q90 over all (diverged = +∞)",
                       width=max(4.5, 1.3 * len(groups) + 2.5), panel_titles=False)
    vals = np.array([r.loss_mean[-1] for r in results] + [r.loss_q10[-1] for r in results]
                    + [r.loss_q90[-1] for r in results], dtype=np.float64)
    log = _use_log([vals])
    fin = vals[np.isfinite(vals) & ((vals > 0) if log else True)]
    top = float(fin.max()) * (10.0 if log else 1.2) if fin.size else 1.0
    names, styles = _names(results), _styles(results)
    markers = {"-": "o", "--": "s", ":": "^", "-.": "D"}
    width = 0.7 / max(1, len(keys))
    labelled: set[str] = set()
    for key in keys:
        rs = [r for r in results if r.color_key == key]
        lines: dict[str, tuple[list[float], list[float]]] = {}
        for r in rs:
            off = (keys.index(key) - (len(keys) - 1) / 2) * width
            x = groups.index(r.group) + off
            lo, hi = _clip_band(np.array([r.loss_q10[-1]]), np.array([r.loss_q90[-1]]), top)
            y = float(r.loss_mean[-1])
            label = names[r.index] if names[r.index] not in labelled else None
            labelled.add(names[r.index])
            mk = markers[styles[r.index]]
            if math.isfinite(y) and (y > 0 or not log):
                ax.errorbar([x], [y], yerr=[[max(y - lo[0], 0)], [max(hi[0] - y, 0)]], fmt=mk,
                            color=colors[key], capsize=3, markersize=6, label=label)
                xs, ys = lines.setdefault(styles[r.index], ([], []))
                xs.append(x)
                ys.append(y)
            else:
                # no surviving repetition: all diverged
                ytop = top / (2.0 if log else 1.05)
                ax.plot([x], [ytop], marker="x", color=colors[key], markersize=10, markeredgewidth=2.5,
                        linestyle="none", label=label)
                ax.annotate("all diverged", (x, ytop), textcoords="offset points", xytext=(0, -14),
                            ha="center", fontsize=7, color=colors[key])
        # Join a family's points across panels only when the panels are a sweep on one problem
        # (e.g. over ν), not when they hold different problems.
        same_problem = len({getattr(r, "problem", "") for r in rs}) == 1
        for ls, (xs, ys) in lines.items():
            if len(xs) > 1 and same_problem:
                ax.plot(xs, ys, color=colors[key], linestyle=ls, linewidth=1.0, alpha=0.6)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g or "(all)" for g in groups], fontsize=9)
    if log:
        ax.set_yscale("log")
    if fin.size:
        ax.set_ylim(float(fin.min()) / 2.0 if log else min(0.0, float(fin.min())), top)
    ax.set_ylabel(f"final {_LOSS_LABEL}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return _finish(fig)


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
    return " ".join(common) if common else labels[0]


def _simple_figure(results: Sequence[Any], title: str, field: str, ylabel: str, what: str,
                   log_ok: bool = True, skip_zero: bool = False, log_ratio: float = 100.0) -> bytes:
    """One line per series (no band) of ``field`` against the step, panels per group.

    ``skip_zero`` leaves out series whose values are all 0 (e.g. the identity's compression error).
    """
    groups = _groups(results)
    colors, styles, names = _colors(results), _styles(results), _names(results)

    def values(r: Any) -> np.ndarray:
        return np.asarray(getattr(r, field), dtype=np.float64)

    shown = [r for r in results if np.isfinite(values(r)).any()
             and not (skip_zero and (values(r)[np.isfinite(values(r))] == 0).all())]
    fig, axes = _grid(len(groups), f"{title}: {what}", panel_titles=any(groups))
    data = [values(r) for r in shown]
    log = log_ok and _use_log(data, log_ratio) and all((d[np.isfinite(d)] > 0).all() for d in data)
    for ax, g in zip(axes, groups):
        for r in (r for r in shown if r.group == g):
            ax.plot(r.steps, values(r), color=colors[r.color_key], linestyle=styles[r.index], linewidth=1.6,
                    label=names[r.index])
        if g:
            ax.set_title(g, fontsize=11)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return _finish(fig)


def make_plots(results: Sequence[Any], title: str) -> dict[str, bytes]:
    """Render every applicable figure; ``results`` are ``compsde.runner.SeriesResult``s."""
    if not results:
        return {}
    out = {
        "loss.png": _loss_figure(results, title, by_bits=False),
        "loss_vs_bits.png": _loss_figure(results, title, by_bits=True),
        "final.png": _final_figure(results, title),
    }
    ce = [np.asarray(r.compression_error, dtype=np.float64) for r in results]
    if any((c[np.isfinite(c)] > 0).any() for c in ce):
        out["compression_error.png"] = _simple_figure(
            results, title, "compression_error", "‖C(v) − v‖² / ‖v‖²",
            "compression error of the vectors sent", skip_zero=True, log_ratio=10.0)
    if any(float(np.nanmax(r.diverged_fraction)) > 0 for r in results):
        out["diverged.png"] = _simple_figure(results, title, "diverged_fraction", "diverged fraction",
                                             "fraction of diverged repetitions", log_ok=False)
    return out


def tracking_figure(results: Sequence[Any], sdes: Sequence[Any], errors: Sequence[dict[str, float]], title: str) -> bytes:
    """One panel per series: the optimizer's mean loss and q10–q90 band against its SDE's (dashed);
    ``errors`` are ``compsde.tracking.tracking_error`` results, one per series."""
    colors = _colors(results)
    fig, axes = _grid(len(results), f"{title}: optimizer vs SDE",
                      "solid: optimizer (mean over runs, band q10–q90); dashed: SDE (mean over paths, hatched band q10–q90)",
                      sharey=False)
    for ax, r, q, e in zip(axes, results, sdes, errors):
        log = _use_log([r.loss_mean, q.loss_mean, r.loss_q10, r.loss_q90])
        ylim = _limits([r, q], log)
        top = ylim[1] if ylim else 1.0
        c = colors[r.color_key]
        for res, style, hatch in ((r, "-", None), (q, "--", "////")):
            lo, hi = _clip_band(res.loss_q10, res.loss_q90, top)
            mean = res.loss_mean
            if log:
                lo, hi, mean = _positive(lo), _positive(hi), _positive(mean)
            if hatch:
                ax.fill_between(res.steps, lo, hi, facecolor="none", edgecolor=c, hatch=hatch, alpha=0.35, linewidth=0)
            else:
                ax.fill_between(res.steps, lo, hi, color=c, alpha=0.15, linewidth=0)
            ax.plot(res.steps, mean, color="#222222" if hatch else c, linestyle=style, linewidth=1.8 if not hatch else 1.4,
                    label="SDE" if hatch else "optimizer")
        if log:
            ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(True, which="major", alpha=0.3)
        mx, mn = e["max_rel_error"], e["mean_rel_error"]
        err = f"max rel. error {mx:.1%}, mean {mn:.1%}" if math.isfinite(mx) else "no finite error"
        ax.set_title(f"{r.label}\n{err}", fontsize=9.5)
        ax.set_xlabel("step")
        ax.set_ylabel(_LOSS_LABEL + (" (log)" if log else ""))
        ax.legend(fontsize=8, loc="upper right")
    return _finish(fig)
