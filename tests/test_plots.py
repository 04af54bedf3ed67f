"""compsde.experiments.plots on small fake results: scales, tick labels, markers, divergence marks, weak order, user text.

The figures are inspected as matplotlib objects (axes scales and limits, artists' display positions,
tick label extents after a draw), not as PNG bytes.
"""

from __future__ import annotations

import itertools
import math
import types

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text

from compsde.experiments import plots


def fake(index, label, group, color_key, loss, *, steps=None, q=0.3, diverged=None, bits_per_step=1000,
         problem="quadratic", source="optimizer", workers=4):
    """A SeriesResult-like object; ``diverged=(k, fraction)``: that fraction of the repetitions
    diverged at logged step k (all of them: the mean is NaN from there, the quantiles +inf)."""
    loss = np.asarray(loss, dtype=np.float64)
    t = loss.size
    steps = np.arange(t) if steps is None else np.asarray(steps)
    q10, q90 = loss * (1 - q), loss * (1 + q)
    frac = np.zeros(t)
    first = last = None
    if diverged is not None:
        k, f = diverged
        frac[k:] = f
        first, last = int(steps[k]), int(steps[min(k + 2, t - 1)])
        q90 = q90.copy()
        q90[k:] = np.inf
        if f >= 1.0:
            loss, q10 = loss.copy(), q10.copy()
            loss[k:] = np.nan
            q10[k:] = np.inf
    return types.SimpleNamespace(
        index=index, label=label, group=group, color_key=color_key, steps=steps, loss_mean=loss, loss_median=loss,
        loss_q10=q10, loss_q90=q90, bits=steps * float(bits_per_step), bits_per_step=bits_per_step,
        compression_error=np.full(t, 0.5), diverged_fraction=frac, first_diverged_step=first,
        last_diverged_step=last, problem=problem, source=source, workers=workers)


def decay(start, end, n=21):
    return start * (end / start) ** (np.arange(n) / (n - 1))


def panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def legend_texts(fig):
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def shown_text(t: Text) -> str:
    """What a Text object displays (after matplotlib's mathtext/escape processing); only the log axes'
    own tick labels ($\\mathdefault{10^{-2}}$) may be mathtext."""
    s, math_mode = t._preprocess_math(t.get_text())
    if math_mode:
        assert s.startswith("$\\mathdefault{") and s.count("$") == 2, s
    return s


def assert_xticklabels_apart(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    fig_box = fig.bbox
    for ax in panels(fig):
        x0, x1 = ax.bbox.x0 - 1, ax.bbox.x1 + 1
        boxes = []
        for lab in ax.get_xticklabels() + ax.get_xticklabels(minor=True):
            if not (lab.get_visible() and lab.get_text()):
                continue
            b = lab.get_window_extent(r)
            if x0 <= (b.x0 + b.x1) / 2 <= x1:  # drawn (ticks outside the view are not)
                boxes.append(b)
                assert b.y0 >= fig_box.y0 - 0.5, "tick label cut off at the bottom of the figure"
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (ax.get_title(), a, b)
    return fig


def marker_positions(ax):
    """Display positions of every marker drawn on ``ax`` (error bar caps excepted)."""
    caps = {id(c) for cont in ax.containers if isinstance(cont, ErrorbarContainer) for c in cont.lines[1]}
    out = []
    for line in ax.get_lines():
        if id(line) in caps or line.get_marker() in (None, "None", "", " "):
            continue
        xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
        xy = xy[np.isfinite(xy).all(1)]
        out.extend(map(tuple, line.get_transform().transform(xy)))
    return out


# ---- 1. one y scale per figure ---------------------------------------------------------------------


def test_loss_panels_share_one_log_scale_and_limits():
    res = [fake(0, "A wide", "wide", "a", decay(10, 0.01)), fake(1, "A narrow", "narrow", "a", decay(10, 5)),
           fake(2, "B narrow", "narrow", "b", decay(8, 4))]
    for by_bits in (False, True):
        fig = plots.loss_figure(res, "t", by_bits=by_bits)
        axes = panels(fig)
        assert len(axes) == 2
        assert [ax.get_yscale() for ax in axes] == ["log", "log"]  # the narrow panel alone would be linear
        assert axes[0].get_ylim() == axes[1].get_ylim()  # comparable ranges: shared limits


def test_tracking_panels_share_one_scale():
    # The DCSGD-like series alone spans less than two decades; the others more: all panels log.
    opt = [fake(0, "DSGD", "", "a", decay(13, 0.1)), fake(1, "DCSGD Rand-5", "", "b", decay(13, 0.3)),
           fake(2, "DSignSGD", "", "c", decay(13, 2.0))]
    sde = [fake(i, r.label, "", r.color_key, r.loss_mean * 1.01, source="sde") for i, r in enumerate(opt)]
    err = [{"max_rel_error": 0.05, "mean_rel_error": 0.01}] * 3
    fig = plots.tracking_figure_obj(opt, sde, err, "t")
    assert [ax.get_yscale() for ax in panels(fig)] == ["log"] * 3
    assert len({ax.get_ylim() for ax in panels(fig)}) == 1  # comparable ranges: one y range
    # A non-positive value anywhere: a log axis would hide it, so every panel is linear.
    opt[2].loss_q10 = opt[2].loss_q10.copy()
    opt[2].loss_q10[-1] = 0.0
    fig = plots.tracking_figure_obj(opt, sde, err, "t")
    assert [ax.get_yscale() for ax in panels(fig)] == ["linear"] * 3


def test_linear_everywhere_when_some_value_is_not_positive():
    res = [fake(0, "A", "g1", "a", decay(10, 0.01)), fake(1, "B", "g2", "b", np.linspace(5, 0, 21))]
    fig = plots.loss_figure(res, "t")
    assert {ax.get_yscale() for ax in panels(fig)} == {"linear"}
    res[1].compression_error = np.linspace(1, 1e-4, 21)  # spans four decades, every value positive
    fig = plots.compression_error_figure(res, "t")
    assert {ax.get_yscale() for ax in panels(fig)} == {"log"}


def test_a_panel_escaping_to_minus_infinity_does_not_flatten_one_settling_near_zero():
    # A saddle (sam-saddle): f(x) − f(0) runs to −10¹² in one panel (SGD escapes) and settles near 0 from
    # −0.5 in the other (SAM is attracted): each panel keeps its own linear range.
    esc = np.r_[0.0, -decay(1.0, 1e12, 20)]
    near = -decay(0.5, 1e-4, 21)
    res = [fake(0, "SGD", "escape", "a", esc), fake(1, "SAM", "attracted", "b", near, q=0.2)]
    axes = panels(plots.loss_figure(res, "t"))
    assert {ax.get_yscale() for ax in axes} == {"linear"}
    lo, hi = axes[1].get_ylim()
    assert lo == pytest.approx(-0.6) and 0 < hi < 0.1  # down to q10 = −0.5 × 1.2, a margin above 0
    assert axes[0].get_ylim()[0] < -1e12
    sde = [fake(i, r.label, r.group, r.color_key, r.loss_mean, q=0.2, source="sde") for i, r in enumerate(res)]
    fig = plots.tracking_figure_obj(res, sde, [{"max_rel_error": 0.1, "mean_rel_error": 0.01}] * 2, "t")
    assert panels(fig)[1].get_ylim()[0] == pytest.approx(-0.6)


# ---- 2. x tick labels never overlap ---------------------------------------------------------------


def test_final_group_labels_do_not_overlap():
    names = [f"ν = {n}" for n in (1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)]
    names += ["a long group name: DCSGD with Rand-k at k = 5 and heavy tails", "x" * 120]
    res = [fake(i * 2 + j, f"{m} {g}", g, m, decay(10, 1 + j + i / 10)) for i, g in enumerate(names)
           for j, m in enumerate(["DSGD", "DSignSGD"])]
    fig = assert_xticklabels_apart(plots.final_figure(res, "many groups"))
    (ax,) = panels(fig)
    shown = [shown_text(t) for t in ax.get_xticklabels() if t.get_text()]
    assert "ν = 1" in shown and len(shown) >= 8  # wrapped or thinned, not dropped wholesale


def test_large_steps_and_bits_are_compact_and_apart():
    steps = np.linspace(0, 3_000_000, 11).astype(np.int64)
    res = [fake(0, "A", "g1", "a", decay(10, 0.1, 11), steps=steps, bits_per_step=640),
           fake(1, "B", "g2", "b", decay(10, 0.2, 11), steps=steps, bits_per_step=320)]
    for by_bits in (False, True):
        fig = assert_xticklabels_apart(plots.loss_figure(res, "t", by_bits=by_bits))
        labels = [t.get_text() for ax in panels(fig) for t in ax.get_xticklabels() if t.get_text()]
        assert any(s.endswith(("M", "G")) for s in labels), labels
        assert max(len(s) for s in labels) <= 5, labels
    # Bit rates 10× apart: log x.
    res[1].bits_per_step, res[1].bits = 64, steps * 64.0
    assert_xticklabels_apart(plots.loss_figure(res, "t", by_bits=True))


# ---- 3. markers of one group never hide each other -------------------------------------------------


def test_final_markers_are_dodged():
    same = decay(10, 1.0)
    res = [fake(0, "DSGD η=0.1", "g1", "dsgd", same), fake(1, "DSGD η=0.2", "g1", "dsgd", same),  # one colour
           fake(2, "DSGD η=0.4", "g1", "dsgd", same, diverged=(5, 1.0)),
           fake(3, "Sign", "g1", "sign", same, diverged=(5, 1.0)),
           fake(4, "DSGD η=0.1 b", "g2", "dsgd", same), fake(5, "Sign b", "g2", "sign", same, diverged=(5, 1.0))]
    fig = plots.final_figure(res, "t")
    fig.canvas.draw()
    (ax,) = panels(fig)
    pos = marker_positions(ax)
    assert len(pos) >= 6
    for a, b in itertools.combinations(pos, 2):
        assert math.dist(a, b) >= 4.0, (a, b)


# ---- 4. divergence is not drawn as a value ----------------------------------------------------------


def _above_data(ax, line) -> bool:
    xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    disp = line.get_transform().transform(xy)
    return bool((disp[:, 1] > ax.bbox.y1).all())


def test_all_diverged_final_is_a_cross_above_the_axis():
    res = [fake(0, "ok", "g1", "a", decay(10, 1)), fake(1, "gone", "g1", "b", decay(10, 1), diverged=(5, 1.0)),
           fake(2, "half", "g1", "c", decay(10, 1), diverged=(5, 0.5))]
    fig = plots.final_figure(res, "t")
    fig.canvas.draw()
    (ax,) = panels(fig)
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert len(crosses) == 1
    assert crosses[0].get_transform() != ax.transData and _above_data(ax, crosses[0])
    assert any("diverged" in t for t in legend_texts(fig))
    assert any(shown_text(t) == "50%" for t in ax.texts)  # the partial fraction, also in the strip


def test_loss_divergence_marks_live_in_a_strip_above_the_panel():
    res = [fake(0, "ok", "g1", "a", decay(10, 0.1)), fake(1, "gone", "g1", "b", decay(10, 0.1), diverged=(8, 1.0)),
           fake(2, "half", "g1", "c", decay(10, 0.1), diverged=(12, 0.4)), fake(3, "other", "g2", "a", decay(9, 0.1))]
    fig = plots.loss_figure(res, "t")
    fig.canvas.draw()
    ax = panels(fig)[0]
    marks = [ln for ln in ax.get_lines() if ln.get_marker() in ("x", "|")]
    assert {ln.get_marker() for ln in marks} == {"x", "|"}
    for ln in marks:
        assert ln.get_transform() != ax.transData and _above_data(ax, ln)
    texts = [shown_text(t) for t in ax.texts]
    assert "diverged" in texts and any(t.startswith("all diverged, step") for t in texts)
    assert any(t.startswith("40% diverged, steps 12–14") for t in texts)
    legend = legend_texts(fig)
    assert "gone (all diverged)" in legend and "half (diverged 40%)" in legend
    # Every data-coordinate line stays within the data range (nothing parked at the top of the axis).
    lo, hi = ax.get_ylim()
    for ln in ax.get_lines():
        if ln.get_transform() == ax.transData:
            y = np.asarray(ln.get_ydata(), dtype=float)
            assert (y[np.isfinite(y)] <= hi).all()


# ---- 5. weak order ---------------------------------------------------------------------------------


def test_weak_order_figure():
    fits = [{"group": "weak order", "lr": [0.2, 0.1, 0.05], "mean_rel_error": [0.4, 0.21, 0.1], "slope": 0.9966},
            {"group": "other", "lr": [0.2, 0.1], "mean_rel_error": [None, 0.1], "slope": None}]
    fig = plots.weak_order_figure_obj(fits, "t")
    a, b = panels(fig)
    assert (a.get_xscale(), a.get_yscale()) == ("log", "log") == (b.get_xscale(), b.get_yscale())
    pts = next(ln for ln in a.get_lines() if ln.get_marker() == "o")
    assert list(pts.get_xdata()) == [0.2, 0.1, 0.05]
    fit = next(ln for ln in a.get_lines() if ln.get_label().startswith("least-squares fit"))
    x, y = np.log(fit.get_xdata()), np.log(fit.get_ydata())
    assert (y[1] - y[0]) / (x[1] - x[0]) == pytest.approx(0.9966)
    ref = next(ln for ln in a.get_lines() if ln.get_label() == "slope 1 (reference)")
    x, y = np.log(ref.get_xdata()), np.log(ref.get_ydata())
    assert (y[1] - y[0]) / (x[1] - x[0]) == pytest.approx(1.0)
    assert "least-squares fit: slope 1.00" in legend_texts(fig)
    assert "least-squares fit: slope not available" in legend_texts(fig)
    assert_xticklabels_apart(fig)
    assert plots.weak_order_figure(fits, "t")[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.weak_order_figure([], "t")[:8] == b"\x89PNG\r\n\x1a\n"
    assert "weak_order.png" in plots.PLOT_FILES


# ---- 6. user text ----------------------------------------------------------------------------------

NASTY = ["a $b", "$\\frac{", "50% ^_^ {x}", "cost $5 and $6", "$x$", "back\\slash \\$", "_under"]


def test_plain_text():
    assert plots.plain_text("a $b") == "a \\$b"
    assert plots.plain_text("nul\x00") == "nul\\x00"
    assert plots.plain_text("\ud800") == "\ufffd"
    assert plots.plain_text("ν = 1\n‖v‖²") == "ν = 1\n‖v‖²"


def test_user_text_renders_literally():
    def shown(fig):
        fig.canvas.draw()  # mathtext raised ValueError here before
        return [shown_text(t).strip() for t in fig.findobj(Text) if t.get_text()]

    title = " | ".join(NASTY[:3])
    res = [fake(i, s, s, f"k{i}", decay(10, 0.1 * (i + 1), 6)) for i, s in enumerate(NASTY)]
    texts = shown(plots.final_figure(res, title))
    assert f"{title}: final loss" in texts
    assert all(texts.count(s) >= 2 for s in NASTY), texts  # legend entry and group tick label

    texts = shown(plots.loss_figure(res[:2], NASTY[3]))
    assert f"{NASTY[3]}: loss" in texts and {NASTY[0], NASTY[1]} <= set(texts)
    err = [{"max_rel_error": 0.1, "mean_rel_error": 0.1}]
    texts = shown(plots.tracking_figure_obj(res[4:5], res[4:5], err, NASTY[5]))
    assert f"{NASTY[5]}: optimizer vs SDE" in texts and any(t.startswith(NASTY[4] + "\n") for t in texts)
    fit = {"group": NASTY[6], "lr": [0.1, 0.2], "mean_rel_error": [0.1, 0.2], "slope": 1.0}
    texts = shown(plots.weak_order_figure_obj([fit], NASTY[2]))
    assert f"{NASTY[2]}: weak order" in texts and NASTY[6] in texts


def test_check_text():
    for ok in ["", "ν = 1", "cost $5", "$\\frac{", "x" * plots.MAX_TEXT_LENGTH]:
        plots.check_text(ok, "title")
    for bad, why in [("a\x00b", "U\\+0000"), ("tab\there", "U\\+0009"), ("two\nlines", "U\\+000A"),
                     ("\ud800", "surrogate"), ("x" * 201, "201 characters"), (5, "must be a string")]:
        with pytest.raises(ValueError, match=f"^series.3.label .*{why}"):
            plots.check_text(bad, "series.3.label")


# ---- the PNG wrappers --------------------------------------------------------------------------------


def test_make_plots_writes_pngs():
    res = [fake(0, "A", "", "a", decay(10, 0.1, 6)), fake(1, "B", "", "b", decay(10, 0.2, 6), diverged=(3, 0.5))]
    out = plots.make_plots(res, "t")
    assert set(out) == {"loss.png", "loss_vs_bits.png", "final.png", "compression_error.png", "diverged.png"}
    assert set(out) <= set(plots.PLOT_FILES)
    assert all(v[:8] == b"\x89PNG\r\n\x1a\n" for v in out.values())
    assert plots.make_plots([], "t") == {}



def test_track_writes_weak_order_png(tmp_path, monkeypatch):
    """`compsde track weak-order` writes weak_order.png from summary.json's fits (the other figures are
    stubbed out to keep the test fast)."""
    import json

    from compsde.experiments.cli import main

    fits = []
    real = plots.weak_order_figure
    monkeypatch.setattr(plots, "make_plots", lambda results, title: {})
    monkeypatch.setattr(plots, "tracking_figure", lambda *args: b"stub")
    monkeypatch.setattr(plots, "weak_order_figure", lambda f, title: fits.append(f) or real(f, title))
    out = tmp_path / "wo"
    assert main(["track", "weak-order", "--set", "run.steps=10", "run.repeats=16", "run.paths=16", "run.substeps=1",
                 "--out", str(out), "--no-progress"]) == 0
    assert (out / "weak_order.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fits == [json.loads((out / "summary.json").read_text())["weak_order"]]


def test_loss_axis_names_what_the_loss_is():
    objective = fake(0, "A", "", "a", decay(10, 0.1))
    game = fake(1, "B", "", "b", decay(10, 0.1), problem="bilinear-game")
    network = fake(2, "C", "", "c", decay(2.3, 0.4), problem="mlp")
    for res, label in (([objective], "f(x) − f*"), ([game], "‖z − z*‖²"), ([network], "training cross-entropy"),
                       ([objective, game], "f(x) − f* or ‖z − z*‖²")):
        (ax,) = panels(plots.loss_figure(res, "t"))
        assert ax.get_ylabel().removesuffix(" (log)") == label
        (ax,) = panels(plots.final_figure(res, "t"))
        assert ax.get_ylabel().removesuffix(" (log)") == f"final {label}"


def test_loss_vs_bits_only_when_some_series_communicates():
    single = [fake(0, "SGD", "", "a", decay(10, 0.1), workers=1), fake(1, "SignSGD", "", "b", decay(10, 0.2), workers=1)]
    assert "loss_vs_bits.png" not in plots.make_plots(single, "t")  # one worker sends nothing
    single[1].workers = 2
    assert "loss_vs_bits.png" in plots.make_plots(single, "t")


def _local(index, label, color_key, lr, period):
    r = fake(index, label, "", color_key, decay(2.3, 0.4, len(lr)))
    r.lr, r.sync_period = np.asarray(lr, dtype=np.float64), np.asarray(period)
    return r


def test_sync_figure_draws_a_shared_schedule_once():
    cosine = 0.1 * (1 + np.cos(np.pi * np.arange(21) / 20)) / 2
    res = [_local(i, f"H = {h}", f"k{i}", cosine, np.full(21, h)) for i, h in enumerate((1, 4, 8))]
    period, lr = panels(plots.sync_figure(res, "t"))
    assert len(period.get_lines()) == 3
    (line,) = lr.get_lines()
    assert line.get_label() == "the same schedule for all 3 series"
    np.testing.assert_array_equal(line.get_ydata(), cosine)
    res[2].lr = cosine / 2  # schedules that differ: one line each, in the series' colours
    period, lr = panels(plots.sync_figure(res, "t"))
    assert [ln.get_label() for ln in lr.get_lines()] == ["H = 1", "H = 4", "H = 8"]


def test_test_figure_shows_the_tail_its_claim_is_about():
    steps = np.arange(0, 301, 10)
    rise = 0.9 - 0.75 * np.exp(-steps / 30)  # from 0.15 to ~0.9, as a test accuracy climbs from chance
    res = []
    for i, end in enumerate((0.0, 0.004, 0.008)):  # they differ by under 1 % at the end
        r = fake(i, f"M{i}", "", f"k{i}", decay(2.3, 0.4, steps.size), steps=steps)
        r.evaluation = {"test_accuracy": rise + end * steps / 300}
        res.append(r)
    fig = plots.test_figure(res, "t")
    (ax,) = panels(fig)
    assert ax.get_xlim() == (150.0, 300.0)
    lo, hi = ax.get_ylim()
    tail = np.concatenate([r.evaluation["test_accuracy"][steps >= 150] for r in res])
    assert lo < tail.min() and tail.max() < hi and hi - lo < 1.5 * np.ptp(tail)  # the tail fills the axis
    assert "the last half of the run (steps 150–300)" in [t.get_text() for t in fig.texts]
    for r in res:  # a run that stays in one range is shown whole
        r.evaluation = {"test_accuracy": 0.9 + 0.01 * np.sin(steps / 20.0)}
    (ax,) = panels(plots.test_figure(res, "t"))
    assert ax.get_xlim()[0] < 0 < 300 < ax.get_xlim()[1]


def _covered_points(ax):
    """Points along every line of ``ax`` (display coordinates) that its legend covers."""
    from compsde.experiments import plot_layout

    fig = ax.get_figure()
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    pts, marks, _ = plot_layout._data_in_display(ax)
    inside = lambda p: ((p[:, 0] >= box.x0) & (p[:, 0] <= box.x1) & (p[:, 1] >= box.y0) & (p[:, 1] <= box.y1)).sum()  # noqa: E731
    return int(inside(pts) + inside(marks))


def test_legends_do_not_cover_the_curves():
    # Losses rising to the upper right corner (as SGDA's, spiralling out), where a fixed legend sat on them.
    t = np.linspace(0, 1, 41)
    rising = [fake(i, f"S{i}", "", f"k{i}", 1 + 0.2 * i + 9 * t, q=0.02) for i in range(3)]
    (ax,) = panels(plots.loss_figure(rising, "t"))
    assert _covered_points(ax) == 0
    ax.get_legend().set_loc("upper right")
    assert _covered_points(ax) > 0  # where it used to be
    err = [{"max_rel_error": 0.1, "mean_rel_error": 0.05}]
    (ax,) = panels(plots.tracking_figure_obj(rising[:1], rising[:1], err, "t"))
    assert _covered_points(ax) == 0
    # Curves through every corner and the middle: the range grows so the legend sits above them.
    crossing = [fake(i, f"S{i}", "g", f"k{i}", v, q=0.02) for i, v in
                enumerate((1 + 9 * t, 10 - 9 * t, 5.5 + 4.4 * np.sin(6 * np.pi * t), np.full(41, 5.5)))]
    (ax,) = panels(plots.loss_figure(crossing, "t"))
    assert _covered_points(ax) == 0 and ax.get_ylim()[1] > 10.0 * 1.1


def test_legends_of_panels_sharing_y_avoid_the_curves_drawn_later():
    # compression_error.png of the compression-variance preset: the second panel's curves widen the shared
    # y range after the first panel is drawn, and its only free place is the gap between two curves.
    levels = {"Top-k vs Rand-k": (0.45, 4.0), "biased vs unbiased": (0.8, 4.0, 0.08)}
    res, i = [], 0
    for group, values in levels.items():
        for v in values:
            r = fake(i, f"C{i}", group, f"k{i}", decay(1, 1, 41))
            r.compression_error = v * (1 + 0.05 * np.sin(np.arange(41.0)))
            res.append(r)
            i += 1
    fig = plots.compression_error_figure(res, "t")
    for ax in panels(fig):
        assert _covered_points(ax) == 0, ax.get_title()
