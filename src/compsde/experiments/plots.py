"""The figures of an experiment's results (matplotlib, Agg backend: no display needed).

``make_plots(results, title)`` returns ``{file name: PNG bytes}`` (the runner writes them atomically)
for every figure of the registry ``FIGURES`` that applies to the results. Each entry (``FigureSpec``)
has the file name, when it applies, and how it draws:

* ``loss.png``               the loss against the step: mean over non-diverged repetitions (line) and the
                             q10–q90 band over all repetitions; one panel per ``group``.
* ``loss_vs_bits.png``       the same against the cumulative bits each worker sent — the budget that
                             compression saves (log x when the series' bit rates differ ≥ 10×); only
                             when some series has more than one worker (a single worker sends nothing).
* ``final.png``              the final loss of every series, panels side by side on one axis (e.g.
                             the loss against ν in the noise-resilience preset), with q10–q90 bars.
* ``compression_error.png``  ‖C(v) − v‖²/‖v‖² along the run, when some series compresses lossily.
* ``diverged.png``           the diverged fraction against the step, when it is nonzero somewhere.
* ``test.png``               the held-out metric (test accuracy or perplexity), for network problems; it
                             shows the last half of the run when the start would flatten it.
* ``sync.png``               the synchronisation period H and the learning rate (drawn once when the
                             series share one schedule), for local methods.
* ``sharpness.png``          the sharpness h(y) of ``sharpness-valley`` along the run (mean over live
                             repetitions) with the slow SDE's prediction laid over (``compsde.sde.slow``),
                             and the communication rounds.

The loss is f(x) − f* for objectives, ‖z − z*‖² for games and the training cross-entropy for networks
(``plot_layout.loss_label``). ``compsde track`` adds ``tracking.png`` (``tracking_figure``: each
optimizer over its SDE), ``tracking_test.png`` (``tracking_test_figure``: their held-out metrics) and
``weak_order.png`` (``weak_order_figure``: the tracking error against η with its fitted slope).
Each figure is built by a function returning the ``matplotlib.figure.Figure`` (``loss_figure``,
``final_figure``, ``tracking_figure_obj``, ...); ``figure_png`` turns one into PNG bytes. Panels,
colours, legends, ranges and tick labels come from ``compsde.experiments.plot_layout``, whose
docstring states the conventions every figure follows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from compsde.core.checks import MAX_TEXT_LENGTH, check_text  # noqa: E402,F401  (re-exported: plots' own rules)
from compsde.experiments import plot_layout as lay  # noqa: E402
from compsde.experiments.plot_layout import figure_png, plain_text  # noqa: E402,F401  (re-exported)

__all__ = ["CAPTIONS", "FIGURES", "MAX_TEXT_LENGTH", "PLOT_FILES", "FigureSpec", "check_text", "compression_error_figure",
           "diverged_figure", "eval_metric", "figure_png", "final_figure", "loss_figure", "make_plots", "plain_text",
           "sync_figure", "test_figure", "tracking_figure", "tracking_figure_obj", "tracking_test_figure",
           "weak_order_figure", "weak_order_figure_obj"]

#: Held-out metrics of network problems, in the order a plot prefers them, with their axis labels.
_EVAL_LABELS = {"test_accuracy": "test accuracy", "test_perplexity": "test perplexity (per byte)"}

# ---- loss against the step or the bits -----------------------------------------------------------


def _curve_panel(ax: Any, rs: Sequence[Any], x_of: Callable[[Any], np.ndarray], colors: dict[str, str],
                 styles: dict[int, str], names: dict[int, str], log: bool, ylim: tuple[float, float] | None) -> None:
    """Mean line and q10–q90 band of the series ``rs`` on ``ax``."""
    top = ylim[1] if ylim else 1.0
    for r in rs:
        x = x_of(r)
        c, ls = colors[r.color_key], styles[r.index]
        lo, hi = lay.clip_band(r.loss_q10, r.loss_q90, top)
        mean = np.asarray(r.loss_mean, dtype=np.float64)
        if log:
            lo, hi, mean = lay.positive(lo), lay.positive(hi), lay.positive(mean)
        ax.fill_between(x, lo, hi, color=c, alpha=0.15, linewidth=0)
        ax.plot(x, mean, color=c, linestyle=ls, linewidth=1.8, label=lay.legend_text(lay.legend_label(r, names)))
    if log:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, which="major", alpha=0.3)


def loss_figure(results: Sequence[Any], title: str, by_bits: bool = False) -> Figure:
    """loss.png (``by_bits=False``) or loss_vs_bits.png: one panel per group, shared y scale."""
    groups = lay.groups(results)
    colors, styles = lay.colors(results), lay.styles(results)
    log = lay.use_log([np.r_[r.loss_mean, r.loss_q10, r.loss_q90] for r in results])
    names = lay.names(results)
    panel_lims = {g: lay.limits([r for r in results if r.group == g], log) for g in groups}
    share = lay.shared(list(panel_lims.values()), log)
    what = "loss vs bits per worker" if by_bits else "loss"
    note = "line: mean over non-diverged repetitions; band: q10–q90 over all repetitions (diverged = +∞)"
    diverged = {g: lay.diverged_entries([r for r in results if r.group == g]) for g in groups}
    rows = max(len(v) for v in diverged.values())
    if rows:
        note += "; strip above a panel: where its series diverged (× = all repetitions)"
    titles = {g: lay.wrap(g, 48) for g in groups}
    strip = lay.strip_height(rows)
    fig, axes = lay.grid(len(groups), f"{title}: {what}", note, sharey=share, panel_titles=any(groups),
                      title_lines=lay.title_lines(list(titles.values())), strip=strip)
    all_lim = lay.limits(results, log)

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
                lay.number_axis(ax.xaxis)
        else:
            ax.set_xlabel("step")
            lay.number_axis(ax.xaxis, integer=True)
        if g:
            lay.panel_title(ax, titles[g], strip)
        ax.set_ylabel(lay.loss_label(results) + (" (log)" if log else ""))
        lay.mark_diverged(ax, [(r, colors[r.color_key], styles[r.index], "") for r in diverged[g]], x_of)
        if rows:
            lay.offset_into_label(ax)
    lay.legends(axes)  # once every panel's data and limits are final (panels may share y)
    lay.settle_xticks(fig, axes)
    return fig


# ---- final loss per group ------------------------------------------------------------------------


def _final_positions(results: Sequence[Any], groups: Sequence[str], colors: dict[str, str]) -> tuple[dict[int, float], int]:
    """Each series' x in final.png: group ``gi`` at x = gi, its series spread over 0.72 around it, ordered
    by colour and then by rank among the group's series of that colour. Also the most series in a group."""
    keys, occ = list(colors), lay.occurrence(results)
    members = {g: sorted((r for r in results if r.group == g), key=lambda r: (keys.index(r.color_key), occ[r.index]))
               for g in groups}
    most = max(len(m) for m in members.values())
    slot = 0.72 / most
    xpos = {r.index: gi + (j - (len(members[g]) - 1) / 2) * slot
            for gi, g in enumerate(groups) for j, r in enumerate(members[g])}
    return xpos, most


def _final_range(finals: Mapping[int, tuple[float, float, float]]) -> tuple[bool, float, float]:
    """The y scale and range of final.png from every series' final (mean, q10, q90): log or not, bottom, top."""
    vals = np.array([v for f in finals.values() for v in f], dtype=np.float64)
    log = lay.use_log([vals])
    fin = vals[np.isfinite(vals) & ((vals > 0) if log else True)]
    if not fin.size:
        return (log, 0.1, 10.0) if log else (log, 0.0, 1.0)
    ylo = float(fin.min()) / 2.0 if log else min(0.0, float(fin.min()))
    yhi = float(fin.max())
    return log, ylo, yhi * 3.0 if log else yhi + 0.1 * ((yhi - ylo) or 1.0)


def _final_points(ax: Any, results: Sequence[Any], xpos: Mapping[int, float],
                  finals: Mapping[int, tuple[float, float, float]], log: bool, top: float) -> list[tuple[Any, str]]:
    """Every series' final mean (marker) and q10–q90 bar, and a family's points joined across groups
    that sweep one problem (e.g. over ν, not over different problems). Returns the legend entries
    (handle, label) in series order, one per legend name."""
    colors, names, styles = lay.colors(results), lay.names(results), lay.styles(results)
    labelled: set[str] = set()
    legend: list[tuple[Any, str]] = []  # in series order, whichever artist shows the series
    lines: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for r in results:
        c = colors[r.color_key]
        x = xpos[r.index]
        y, q10, q90 = finals[r.index]
        name = names[r.index]
        label = lay.legend_text(name) if name not in labelled else None
        labelled.add(name)
        mk = lay.MARKERS[styles[r.index]]
        if math.isfinite(y) and (y > 0 or not log):
            lo, hi = lay.clip_band(np.array([q10]), np.array([q90]), top)
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
    for (key, ls), (xs, ys) in lines.items():
        fam = [r for r in results if r.color_key == key]
        if len(xs) > 1 and len({getattr(r, "problem", "") for r in fam}) == 1:
            ax.plot(xs, ys, color=colors[key], linestyle=ls, linewidth=1.0, alpha=0.6)
    return legend


def _final_axes(fig: Figure, ax: Any, results: Sequence[Any], groups: Sequence[str], log: bool, ylo: float,
                top: float) -> None:
    """final.png's axes: the group names as x tick labels (wrapped to their slot), the y scale and range."""
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xticks(range(len(groups)))
    slot_in = (fig.get_size_inches()[0] - lay.LEFT - lay.RIGHT) / max(1, len(groups))
    chars = max(4, int(slot_in * 72 / (9 * 0.62)) - 1)
    ax.set_xticklabels([lay.wrap(g or "(all)", chars, max_lines=4) for g in groups], fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(ylo, top)
    ax.set_ylabel(f"final {lay.loss_label(results)}" + (" (log)" if log else ""))
    ax.grid(True, axis="y", alpha=0.3)


def _final_diverged(ax: Any, div: Sequence[Any], xpos: Mapping[int, float], colors: dict[str, str]) -> list[tuple[Any, str]]:
    """The strip above final.png: × at a series whose repetitions all diverged, its diverged fraction at a
    partially diverged one. Returns the legend entry for × when there is one."""
    lay.offset_into_label(ax)
    lay.strip_frame(ax, 1)
    y = lay.strip_y(ax, lay.STRIP_GAP + 0.5 * lay.STRIP_ROW)
    tr = lay.strip_transform(ax)
    for r in div:
        frac, c = lay.final_fraction(r), colors[r.color_key]
        if frac >= 1.0:
            ax.plot([xpos[r.index]], [y], transform=tr, marker="x", color=c, markersize=8, markeredgewidth=2.2,
                    linestyle="none", clip_on=False)
        else:
            ax.text(xpos[r.index], y, f"{frac:.0%}", transform=tr, ha="center", va="center", fontsize=7,
                    color=c, clip_on=False)
    if any(lay.final_fraction(r) >= 1.0 for r in div):
        return [(Line2D([], [], marker="x", color="#444444", markersize=7, markeredgewidth=2.0, linestyle="none"),
                 "all repetitions diverged")]
    return []


def final_figure(results: Sequence[Any], title: str) -> Figure:
    """final.png: the final loss of every series, groups side by side on one axis.

    Every series of a group has its own x offset (ordered by colour, then by its rank among the
    group's series of that colour), so no marker hides another; a series whose repetitions all
    diverged is a × in the "diverged" strip above the axis, a partially diverged one gets its
    diverged fraction there.
    """
    groups, colors = lay.groups(results), lay.colors(results)
    xpos, most = _final_positions(results, groups, colors)
    finals = {r.index: (float(r.loss_mean[-1]), float(r.loss_q10[-1]), float(r.loss_q90[-1])) for r in results}
    log, ylo, top = _final_range(finals)
    div = [r for r in results if lay.final_fraction(r) > 0]
    note = "dot: mean over non-diverged repetitions; bar: q10–q90 over all (diverged = +∞: the bar runs off the top)"
    if div:
        note += "; strip: diverged fraction (× = all repetitions)"
    per_group = max(1.3, 0.28 * most)  # room for every group's markers and its (wrapped) name
    fig, (ax,) = lay.grid(1, f"{title}: final loss", note, width=min(18.0, max(4.5, per_group * len(groups) + 2.5)),
                          panel_titles=False, strip=lay.strip_height(1) if div else 0.0)
    legend = _final_points(ax, results, xpos, finals, log, top)
    _final_axes(fig, ax, results, groups, log, ylo, top)
    if div:
        legend += _final_diverged(ax, div, xpos, colors)
    lay.legend(ax, [h for h, _ in legend], [lab for _, lab in legend])
    lay.settle_xticks(fig, [ax], make_room=True)
    return fig


# ---- one line per series -------------------------------------------------------------------------


def _simple_figure(results: Sequence[Any], title: str, field: str | Callable[[Any], Any], ylabel: str, what: str,
                   log_ok: bool = True, skip_zero: bool = False, log_ratio: float = 100.0,
                   zoom_tail: bool = False) -> Figure:
    """One line per series (no band) of ``field`` (an attribute name, or a function of the result)
    against the step, panels per group.

    ``skip_zero`` leaves out series whose values are all 0 (e.g. the identity's compression error).
    ``zoom_tail`` shows the last half of the run, with a linear y range fitted to it, when the start
    would flatten it (``plot_layout.tail_range``; the note says so): where a claim is about the end of
    the run, e.g. the final test accuracy of methods that all climb from chance.
    """
    groups = lay.groups(results)
    colors, styles, names = lay.colors(results), lay.styles(results), lay.names(results)

    def values(r: Any) -> np.ndarray:
        v = field(r) if callable(field) else getattr(r, field)
        return np.asarray(np.nan if v is None else v, dtype=np.float64) * np.ones(len(r.steps))

    shown = [r for r in results if np.isfinite(values(r)).any()
             and not (skip_zero and (values(r)[np.isfinite(values(r))] == 0).all())]
    titles = {g: lay.wrap(g, 48) for g in groups}
    log = log_ok and lay.use_log([values(r) for r in shown], log_ratio)
    tail = lay.tail_range([(r.steps, values(r)) for r in shown]) if zoom_tail and not log else None
    note = f"the last half of the run (steps {lay.compact(tail[2])}–{lay.compact(tail[3])})" if tail else ""
    fig, axes = lay.grid(len(groups), f"{title}: {what}", note, panel_titles=any(groups),
                         title_lines=lay.title_lines(list(titles.values())))
    for ax, g in zip(axes, groups):
        for r in (r for r in shown if r.group == g):
            ax.plot(r.steps, values(r), color=colors[r.color_key], linestyle=styles[r.index], linewidth=1.6,
                    label=lay.legend_text(names[r.index]))
        if g:
            lay.panel_title(ax, titles[g], 0.0)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        lay.number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if tail:
            ax.set_xlim(tail[2], tail[3])
            ax.set_ylim(tail[0], tail[1])
    lay.legends(axes)  # once every panel's data and limits are final (panels may share y)
    lay.settle_xticks(fig, axes)
    return fig


def eval_metric(results: Sequence[Any]) -> str | None:
    """The held-out metric the results report (test accuracy, else perplexity), or None."""
    have = {k for r in results for k in getattr(r, "evaluation", {})}
    return next((k for k in _EVAL_LABELS if k in have), None)


def _compression_error(results: Sequence[Any], title: str) -> Figure:
    return _simple_figure(results, title, "compression_error", "‖C(v) − v‖² / ‖v‖²",
                          "compression error of the vectors sent", skip_zero=True, log_ratio=10.0)


def _test(results: Sequence[Any], title: str) -> Figure:
    metric = eval_metric(results)
    assert metric is not None  # the registry draws test.png only then
    return _simple_figure(results, title, lambda r: r.evaluation.get(metric), _EVAL_LABELS[metric],
                          _EVAL_LABELS[metric], log_ok=metric == "test_perplexity", zoom_tail=True)


def _same_curve(rs: Sequence[Any], field: str) -> bool:
    """Whether the series ``rs`` have one curve of ``field``: the same logged steps and values."""
    first = rs[0]
    return all(np.array_equal(r.steps, first.steps)
               and np.array_equal(np.asarray(getattr(r, field), dtype=np.float64),
                                  np.asarray(getattr(first, field), dtype=np.float64), equal_nan=True) for r in rs[1:])


def _sync(results: Sequence[Any], title: str) -> Figure:
    shown = [r for r in results if getattr(r, "sync_period", None) is not None]
    colors, styles, names = lay.colors(results), lay.styles(results), lay.names(results)
    fig, axes = lay.grid(2, f"{title}: synchronisation period and learning rate",
                         "H: local steps between two averagings, as decided after each averaging", sharey=False)
    for ax, field, ylabel in ((axes[0], "sync_period", "period H (log)"), (axes[1], "lr", "learning rate η")):
        if field == "lr" and len(shown) > 1 and _same_curve(shown, "lr"):  # one schedule: drawn once
            r = shown[0]
            ax.step(r.steps, np.asarray(r.lr, dtype=np.float64), where="post", color="#444444", linewidth=1.6,
                    label=f"the same schedule for all {len(shown)} series")
        else:
            for r in shown:
                ax.step(r.steps, np.asarray(getattr(r, field), dtype=np.float64), where="post",
                        color=colors[r.color_key], linestyle=styles[r.index], linewidth=1.6,
                        label=lay.legend_text(names[r.index]))
        if field == "sync_period":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        lay.number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    lay.legends(axes)  # once every panel's data and limits are final (panels may share y)
    lay.settle_xticks(fig, axes)
    return fig


def _sharpness(results: Sequence[Any], title: str) -> Figure:
    shown = [r for r in results if r.evaluation.get("sharpness") is not None]
    colors, styles, names = lay.colors(results), lay.styles(results), lay.names(results)
    fig, axes = lay.grid(2, f"{title}: sharpness and communication rounds",
                         "solid: measured (mean over live repetitions); dashed: the slow SDE's prediction along the "
                         "same schedule and periods", sharey=False)
    for r in shown:
        c, ls, name = colors[r.color_key], styles[r.index], lay.legend_text(names[r.index])
        axes[0].plot(r.steps, np.asarray(r.evaluation["sharpness"], dtype=np.float64), color=c, linestyle=ls,
                     linewidth=1.8, label=name)
        pred = r.evaluation.get("sharpness_slow_sde")
        if pred is not None:
            axes[0].plot(r.steps, np.asarray(pred, dtype=np.float64), color=c, linestyle="--", linewidth=1.2, alpha=0.9)
        if r.comm_rounds is not None:
            axes[1].plot(r.steps, np.maximum(np.asarray(r.comm_rounds, dtype=np.float64), 1.0), color=c, linestyle=ls,
                         linewidth=1.8, label=name)
    axes[1].set_yscale("log")
    for ax, ylabel in ((axes[0], "sharpness h(y)"), (axes[1], "communication rounds (log; 0 drawn at 1)")):
        ax.set_xlabel("step")
        lay.number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    lay.legends(axes)  # once every panel's data and limits are final
    lay.settle_xticks(fig, axes)
    return fig


def _diverged(results: Sequence[Any], title: str) -> Figure:
    return _simple_figure(results, title, "diverged_fraction", "diverged fraction",
                          "fraction of diverged repetitions", log_ok=False)


# ---- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """One figure of ``make_plots``: the file it is written to, whether it applies to a run's results,
    and how it is drawn (``draw(results, title)``, called only when it applies)."""

    name: str
    applies: Callable[[Sequence[Any]], bool]
    draw: Callable[[Sequence[Any], str], Figure]

    def figure(self, results: Sequence[Any], title: str) -> Figure | None:
        """The figure, or None when it does not apply to ``results``."""
        return self.draw(results, title) if self.applies(results) else None


def _always(results: Sequence[Any]) -> bool:
    return True


def _communicates(results: Sequence[Any]) -> bool:
    """Some series has more than one worker, so it sends something (one worker alone sends nothing)."""
    return any(r.workers > 1 for r in results)


def _lossy(results: Sequence[Any]) -> bool:
    """Some series compresses lossily (a positive compression error somewhere)."""
    ce = [np.asarray(r.compression_error, dtype=np.float64) for r in results]
    return any((c[np.isfinite(c)] > 0).any() for c in ce)


def _any_diverged(results: Sequence[Any]) -> bool:
    """Some repetition of some series diverged."""
    return any(np.nan_to_num(np.asarray(r.diverged_fraction, dtype=np.float64)).max(initial=0.0) > 0 for r in results)


def _has_eval(results: Sequence[Any]) -> bool:
    """The problem reports a held-out metric (network problems)."""
    return eval_metric(results) is not None


def _has_sharpness(results: Sequence[Any]) -> bool:
    """The problem reports a sharpness (``sharpness-valley``)."""
    return any(getattr(r, "evaluation", {}).get("sharpness") is not None for r in results)


def _local(results: Sequence[Any]) -> bool:
    """Some series is a local method (it records its synchronisation period)."""
    return any(getattr(r, "sync_period", None) is not None for r in results)


#: The figures of ``make_plots``, in the order they are drawn.
FIGURES = (
    FigureSpec("loss.png", _always, lambda results, title: loss_figure(results, title, by_bits=False)),
    FigureSpec("loss_vs_bits.png", _communicates, lambda results, title: loss_figure(results, title, by_bits=True)),
    FigureSpec("final.png", _always, final_figure),
    FigureSpec("compression_error.png", _lossy, _compression_error),
    FigureSpec("diverged.png", _any_diverged, _diverged),
    FigureSpec("test.png", _has_eval, _test),
    FigureSpec("sync.png", _local, _sync),
    FigureSpec("sharpness.png", _has_sharpness, _sharpness),
)
_BY_NAME = {f.name: f for f in FIGURES}

#: Every file name ``make_plots`` (and, for ``compsde track``, ``tracking_figure``,
#: ``tracking_test_figure`` and ``weak_order_figure``) may produce.
PLOT_FILES = (*_BY_NAME, "tracking.png", "tracking_test.png", "weak_order.png")

#: One sentence per file of ``PLOT_FILES``: what the figure shows (the run report's captions and alt text).
CAPTIONS = {
    "loss.png": "The loss against the step: the mean over the repetitions that have not diverged (line) and the "
                "q10–q90 band over all repetitions; one panel per group.",
    "loss_vs_bits.png": "The loss against the cumulative bits each worker sent: the budget that compression saves.",
    "final.png": "The final loss of every series, panels side by side on one axis, with q10–q90 bars.",
    "compression_error.png": "The relative compression error ‖C(v) − v‖²/‖v‖² along the run.",
    "diverged.png": "The fraction of repetitions that have diverged, against the step.",
    "test.png": "The held-out metric (test accuracy or perplexity) along the run.",
    "sync.png": "A local method's synchronisation period H in force, and the learning rate, against the step.",
    "sharpness.png": "The sharpness h(y) along the run with the slow SDE's prediction laid over, and the "
                     "communication rounds.",
    "tracking.png": "Each optimizer's mean loss and q10–q90 band with its SDE's (dashed), from the same start.",
    "tracking_test.png": "The held-out metric of each optimizer (solid) and of its SDE (dashed).",
    "weak_order.png": "The SDE's tracking error against the learning rate η, with its fitted slope (≈ 1 for an "
                      "order-1 weak approximation).",
}


def compression_error_figure(results: Sequence[Any], title: str) -> Figure | None:
    """compression_error.png: ‖C(v) − v‖²/‖v‖² along the run; None when no series compresses lossily."""
    return _BY_NAME["compression_error.png"].figure(results, title)


def diverged_figure(results: Sequence[Any], title: str) -> Figure | None:
    """diverged.png: the diverged fraction along the run; None when no repetition of any series diverged."""
    return _BY_NAME["diverged.png"].figure(results, title)


def test_figure(results: Sequence[Any], title: str) -> Figure | None:
    """test.png: the held-out metric of network problems along the run; None without one."""
    return _BY_NAME["test.png"].figure(results, title)


def sync_figure(results: Sequence[Any], title: str) -> Figure | None:
    """sync.png: for local methods, the synchronisation period H in force and the learning rate along
    the run (step plots); None when no series is a local method."""
    return _BY_NAME["sync.png"].figure(results, title)


def make_plots(results: Sequence[Any], title: str) -> dict[str, bytes]:
    """Every figure of ``FIGURES`` that applies to ``results`` (``compsde.experiments.runner.SeriesResult``s),
    as PNG bytes by file name; drawn one at a time, so one figure is alive at a time."""
    if not results:
        return {}
    out = {}
    for spec in FIGURES:
        fig = spec.figure(results, title)
        if fig is not None:
            out[spec.name] = figure_png(fig)
    return out


# ---- optimizer vs SDE ----------------------------------------------------------------------------


def tracking_test_figure(results: Sequence[Any], sdes: Sequence[Any], title: str) -> bytes | None:
    """tracking_test.png: per series, the optimizer's held-out metric (solid) and its SDE's (dashed), as
    means over runs and paths; None when the problem reports none."""
    metric = eval_metric(results)
    if metric is None:
        return None
    colors = lay.colors(results)
    pairs = [(r, q) for r, q in zip(results, sdes) if r.evaluation.get(metric) is not None]  # series reporting it
    results, sdes = [r for r, _ in pairs], [q for _, q in pairs]
    fig, axes = lay.grid(len(results), f"{title}: {_EVAL_LABELS[metric]}, optimizer vs SDE",
                      "solid: optimizer (mean over runs); dashed: SDE (mean over paths)",
                      title_lines=lay.title_lines([lay.wrap(r.label, 55) for r in results]))
    for ax, r, q in zip(axes, results, sdes):
        c = colors[r.color_key]
        for res, style, who in ((r, "-", "optimizer"), (q, "--", "SDE")):
            v = res.evaluation.get(metric)
            if v is not None:
                ax.plot(res.steps, v, color=c if style == "-" else "#222222", linestyle=style, linewidth=1.6, label=who)
        lay.panel_title(ax, lay.wrap(r.label, 55), 0.0, fontsize=9.5)
        ax.set_xlabel("step")
        lay.number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(_EVAL_LABELS[metric])
        ax.grid(True, alpha=0.3)
    lay.legends(axes)  # once every panel's data and limits are final (panels may share y)
    lay.settle_xticks(fig, axes)
    return figure_png(fig)


def tracking_figure_obj(results: Sequence[Any], sdes: Sequence[Any], errors: Sequence[Mapping[str, float]],
                        title: str) -> Figure:
    """tracking.png: one panel per series, the optimizer's mean loss and q10–q90 band against its
    SDE's (dashed); ``errors`` are ``compsde.sde.tracking.tracking_error`` results, one per series. The
    panels share one y scale (and their limits when comparable)."""
    colors = lay.colors(results)
    log = lay.use_log([np.r_[x.loss_mean, x.loss_q10, x.loss_q90] for x in list(results) + list(sdes)])
    lims = [lay.limits([r, q], log) for r, q in zip(results, sdes)]
    share = lay.shared(lims, log)
    all_lim = lay.union(lims)
    div = [[(x, colors[r.color_key], style, f"{who}: ") for x, style, who in ((r, "-", "optimizer"), (q, "--", "SDE"))
            if x.first_diverged_step is not None and lay.final_fraction(x) > 0] for r, q in zip(results, sdes)]
    rows = max([len(d) for d in div] or [0])
    strip = lay.strip_height(rows)
    note = "solid: optimizer (mean over runs, band q10–q90); dashed: SDE (mean over paths, hatched band q10–q90)"
    if rows:
        note += "; strip above a panel: where runs diverged"
    heads = []
    for r, e in zip(results, errors):
        mx, mn = (math.nan if v is None else float(v) for v in (e.get("max_rel_error"), e.get("mean_rel_error")))
        err = f"max rel. error {mx:.1%}, mean {mn:.1%}" if math.isfinite(mx) and math.isfinite(mn) else "no finite error"
        heads.append(f"{lay.wrap(r.label, 55)}\n{err}")
    fig, axes = lay.grid(len(results), f"{title}: optimizer vs SDE", note, sharey=share,
                      title_lines=max(1, lay.title_lines(heads) - 1), strip=strip)  # 2 lines of 9.5 pt fit in 1 of 11 pt
    for ax, r, q, head, d, lim in zip(axes, results, sdes, heads, div, lims):
        ylim = all_lim if share else lim
        top = ylim[1] if ylim else 1.0
        c = colors[r.color_key]
        for res, style, hatch in ((r, "-", None), (q, "--", "////")):
            lo, hi = lay.clip_band(res.loss_q10, res.loss_q90, top)
            mean = np.asarray(res.loss_mean, dtype=np.float64)
            if log:
                lo, hi, mean = lay.positive(lo), lay.positive(hi), lay.positive(mean)
            if hatch:
                ax.fill_between(res.steps, lo, hi, facecolor="none", edgecolor=c, hatch=hatch, alpha=0.35, linewidth=0)
            else:
                ax.fill_between(res.steps, lo, hi, color=c, alpha=0.15, linewidth=0)
            ax.plot(res.steps, mean, color="#222222" if hatch else c, linestyle=style, linewidth=1.8 if not hatch else 1.4,
                    label=("SDE" if hatch else "optimizer") + (
                        " (all diverged)" if lay.final_fraction(res) >= 1.0 else
                        f" (diverged {lay.final_fraction(res):.0%})" if lay.final_fraction(res) > 0 else ""))
        if log:
            ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(True, which="major", alpha=0.3)
        lay.panel_title(ax, head, strip, fontsize=9.5)
        ax.set_xlabel("step")
        lay.number_axis(ax.xaxis, integer=True)
        ax.set_ylabel(lay.loss_label(results) + (" (log)" if log else ""))
        lay.mark_diverged(ax, d, lambda x: np.asarray(x.steps, dtype=np.float64))
        if rows:
            lay.offset_into_label(ax)
    lay.legends(axes)  # once every panel's data and limits are final (panels may share y)
    lay.settle_xticks(fig, axes)
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
    titles = [lay.wrap(f.get("group") or "", 48) for f in fits]
    note = ("points: mean relative tracking error |L_opt − L_SDE| / L_opt per learning rate; line: least-squares "
            "fit in log–log; dashed: slope 1 (an order-1 weak approximation)")
    pts = [_fit_points(f) for f in fits]
    lims = [(float(err.min()) / 2.0, float(err.max()) * 2.0) if err.size else None for _, err in pts]
    share = lay.shared(lims, True)
    all_lim = lay.union(lims)
    fig, axes = lay.grid(max(1, len(fits)), f"{title}: weak order", note, sharey=share,
                      panel_titles=any(titles), title_lines=lay.title_lines(titles))
    if not fits:
        ax = axes[0]
        ax.text(0.5, 0.5, "no weak-order fit: no group has series differing only in η", transform=ax.transAxes,
                ha="center", va="center", fontsize=10, color="#555555")
        ax.set_xticks([])
        ax.set_yticks([])
        return fig
    for i, (ax, f, (lr, err), head, lim) in enumerate(zip(axes, fits, pts, titles, lims)):
        c = lay.PALETTE[i % len(lay.PALETTE)]
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
            ax.xaxis.set_major_formatter(ticker.FixedFormatter([lay.compact(v) for v in sorted(set(lr.tolist()))]))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            ax.text(0.5, 0.5, "no finite positive error to plot", transform=ax.transAxes, ha="center", va="center",
                    fontsize=9, color="#555555")
        ylim = all_lim if share else lim
        if ylim:
            ax.set_ylim(*ylim)
        if head:
            lay.panel_title(ax, head, 0.0)
        ax.set_xlabel("learning rate η (log)")
        ax.set_ylabel("mean relative tracking error (log)")
        ax.grid(True, which="major", alpha=0.3)
    lay.legends(axes)  # once every panel's data and limits are final (panels may share y)
    lay.settle_xticks(fig, axes)
    return fig


def weak_order_figure(fits: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """weak_order.png as PNG bytes (see ``weak_order_figure_obj``)."""
    return figure_png(weak_order_figure_obj(fits, title))
