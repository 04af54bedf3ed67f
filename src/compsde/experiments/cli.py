"""Command line: ``compsde run``, ``track``, ``report``, ``scale``, ``advise``, ``presets``, ``compressors``.

    compsde run PRESET_OR_CONFIG [--set KEY=VALUE ...] [--out DIR] [--no-progress] [--no-plots] [--no-report]
                [--tensorboard DIR] [--backend {sim,torch}] [--workers N] [--timeout S] [--checkpoint-every K]
                [--resume DIR_OR_FILE]
    compsde track PRESET_OR_CONFIG [same options]   (each series also as its SDE, overlaid)
    compsde report RUN_DIR                          (RUN_DIR/report.html: one self-contained page of the run)

PRESET_OR_CONFIG is a preset name, a TOML file or a run folder (a directory holding the config.toml
a run wrote). It may come before or after the ``--set`` items: ``compsde run --set run.steps=5 PRESET``
is ``compsde run PRESET --set run.steps=5`` (the one ``--set`` word without ``=`` is the preset or config).
    compsde scale METHOD --from lr=…,batch=…,workers=…[,omega=…] --to KEY=VALUE,… [--json] [--validate]
                  [--model {discrete,sde,first-order}] [--spectrum EIG_MIN:EIG_MAX:DIM] [--noise T --grad-norm G]
    compsde advise PRESET_OR_CONFIG [--set KEY=VALUE ...] [--series I] [--method NAME[:COMPRESSOR[:K=V,...]] ...]
                   [--sign-lr LR] [--spectrum EIG_MIN:EIG_MAX:DIM] [--bandwidth B --latency S] [--compute S]
                   [--ranks N [--throttle RATE]] [--out DIR_OR_FILE.json] [--json] [--no-report]
                   [--validate STEPS [--repeats R]]
    compsde presets
    compsde compressors --dim D [--samples S] [--seed S] [--names a,b,...]
    compsde --version

Bad input (unknown key, wrong type, unknown preset, impossible method/compressor pair) prints
``error: ...`` on stderr and exits with status 2, without a traceback. A simulator run stopped by Ctrl-C
exits with 130, one stopped by SIGTERM with 143, each after recording it in run.json. ``run`` and
``track`` print the output folder and one line per series with its final numbers, and write the run's
report.html (``compsde.experiments.report``) when the run ends, however it ends, unless ``--no-report``.
``advise`` writes a run folder the same way (run.json, config.toml, advice.json, the probe's figures,
report.html), or only the file when ``--out`` names a FILE.json.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from compsde.core.checks import check_seed

__all__ = ["main"]


def _version() -> str:
    try:
        return metadata.version("compsde")
    except metadata.PackageNotFoundError:  # running from a source tree without installation
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compsde",
        description="Distributed training with communication compression, and the SDEs that model it.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run an experiment from a preset or a TOML config",
                       description="Run every [[series]] of a preset, config file or run folder and write run.json, "
                                   "config.toml, metrics.csv (as the run goes), summary.json and PNG plots into the "
                                   "output directory. Runs that would not fit in memory or take over a day are "
                                   "refused before anything is written.")
    _experiment_args(r)
    _backend_args(r)
    t = sub.add_parser("track", help="run each series as the optimizer and as its SDE, side by side",
                       description="Like `run`, and each series is also integrated as its SDE ([run] paths paths "
                                   "from the same start, [run] substeps Euler-Maruyama steps per optimizer step): "
                                   "metrics.csv gains the SDE's curves (source = sde), summary.json a `tracking` "
                                   "entry per series, and tracking.png overlays both.")
    _experiment_args(t)

    rp = sub.add_parser("report", help="write a run folder's report.html: one self-contained page of the run",
                        description="Write RUN_DIR/report.html: the claim, the results table, every figure (embedded), "
                                    "the advice when RUN_DIR holds advice.json, the config and the provenance (versions, "
                                    "command, times, how the run ended), in one HTML file that needs nothing else. "
                                    "`run` and `track` write it at the end of each run unless --no-report.")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run folder: the --out directory of `compsde run` or `track`")

    sc = sub.add_parser("scale", help="solve a scaling rule for the hyperparameter you leave free",
                        description="Keep the invariant of METHOD's scaling rule (dsgd: η/(BN); dcsgd: η(1+ω)/(BN); "
                                    "dsignsgd: η/(N√B); adam/adamw/rmsprop/rmspropw: the square-root rule η/√B with "
                                    "β, ε and weight decay carried along) while changing some hyperparameters; the one "
                                    "--to leaves out is solved. For dsgd and dcsgd the default keeps the exact stationary "
                                    "loss of the linearised optimizer on a quadratic (docs/theory.md §3.3), which needs the "
                                    "Hessian's spectrum (--spectrum).")
    sc.add_argument("method", help="dsgd, dcsgd, dsignsgd, adam, adamw, rmsprop or rmspropw")
    sc.add_argument("--from", dest="frm", required=True, metavar="K=V,...",
                    help="the current setting, e.g. lr=0.1,batch=32,workers=4,omega=3")
    sc.add_argument("--to", required=True, metavar="K=V,...",
                    help="the changed values and the fixed ones (KEY=same keeps the --from value); leave out exactly one")
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.add_argument("--validate", action="store_true",
                    help="run both settings in the simulator and through their SDEs on a quadratic, compare their "
                         "stationary losses with the closed form, and say whether the rule holds")
    sc.add_argument("--repeats", type=int, default=64, help="runs (and SDE paths) per setting for --validate (default 64)")
    sc.add_argument("--seed", type=int, default=0, help="seed for --validate (default 0)")
    sc.add_argument("--model", choices=("discrete", "sde", "first-order"), default=None,
                    help="the stationary loss to keep (dsgd, dcsgd): discrete (the default: the linearised optimizer, "
                         "exact on a quadratic), sde (the SDE, dt → 0) or first-order (the invariant, spectrum-free)")
    sc.add_argument("--spectrum", default=None, metavar="EIG_MIN:EIG_MAX:DIM",
                    help="the Hessian's eigenvalues, DIM evenly spaced in [EIG_MIN, EIG_MAX], for the discrete and sde "
                         "models and --validate (default 0.5:2:20, the validation quadratic's)")
    sc.add_argument("--noise", type=float, default=None, metavar="TRACE_SIGMA",
                    help="measured per-sample gradient noise tr Σ = E‖∇f_ξ − ∇f‖² (a minibatch of b measures tr Σ/b); "
                         "with --grad-norm, says whether the rule's assumption (minibatch noise ≫ compression noise) holds")
    sc.add_argument("--grad-norm", type=float, default=None, metavar="G",
                    help="measured gradient norm ‖∇f‖ where the loss plateaus (with --noise)")

    ad = sub.add_parser("advise", help="which compression method to train with, from the measured gradient noise",
                        description="Probe the gradient noise of a series of a preset or config (tr Σ, ‖G‖², tail index, "
                                    "SNR), predict each method's seconds per step (cost model) and stationary-loss gap to "
                                    "DSGD (quality model: docs/theory.md §2–3, §4.6), the η, B, N that close the gap "
                                    "(compsde.sde.scaling), and recommend one with its reasons. Prints the table and "
                                    "writes a run folder: run.json, config.toml, advice.json, the probe's figures and "
                                    "report.html (or only advice.json with --out FILE.json).")
    ad.add_argument("source", metavar="PRESET_OR_CONFIG", nargs="?", default=None,
                    help="a preset name, a TOML file or a run folder; its series --series gives the model, data, η, B, N")
    ad.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", nargs="+", default=[],
                    help="override a config value with a dotted key, as for `run`")
    ad.add_argument("--series", type=int, default=0, help="the series (0-based) whose setting to advise on (default 0)")
    ad.add_argument("--method", dest="methods", action="append", default=None, metavar="NAME[:COMPRESSOR[:K=V,...]]",
                    help="a candidate method, repeatable, e.g. dcsgd:rand-k:ratio=0.1, ef:top-k:ratio=0.01, dsignsgd "
                         "(default: dsgd, dcsgd rand-k and natural, dsignsgd, its majority vote, ef top-k and scaled-sign)")
    ad.add_argument("--sign-lr", type=float, default=None, metavar="LR",
                    help="the sign methods' learning rate (default: the one matching DSGD's drift at the measured noise)")
    ad.add_argument("--spectrum", default=None, metavar="EIG_MIN:EIG_MAX:DIM",
                    help="the Hessian's eigenvalues, if known: DSGD's and DCSGD's losses then use the discrete model")
    ad.add_argument("--bandwidth", type=float, default=None, metavar="BYTES_PER_S", help="the link's bandwidth (cost model)")
    ad.add_argument("--latency", type=float, default=None, metavar="S",
                    help="the link's latency in seconds per message (cost model; with --bandwidth)")
    ad.add_argument("--compute", type=float, default=None, metavar="S",
                    help="seconds of one step's compute at the series' batch (default: measured on the model)")
    ad.add_argument("--ranks", type=int, default=None, metavar="N",
                    help="measure the link, the compute and the hooks on N local processes running the series' network "
                         "in DDP (instead of --bandwidth, --latency, --compute); with --validate, also time the "
                         "validated methods' real steps there")
    ad.add_argument("--throttle", default=None, metavar="RATE",
                    help="with --ranks 2: join the two ranks by a link throttled to RATE (tc's syntax, e.g. 1gbit), "
                         "between two network namespaces (needs root; removed afterwards)")
    ad.add_argument("--out", default=None, metavar="DIR_OR_FILE.json",
                    help="the run folder (default: runs/<name>-<timestamp>, as for `run`; an earlier run's outputs there "
                         "are replaced), or a path ending in .json: write only that advice file")
    ad.add_argument("--no-report", action="store_true",
                    help="skip report.html in the run folder (`compsde report DIR` writes it later)")
    ad.add_argument("--json", action="store_true", help="print advice.json's object instead of the table")
    ad.add_argument("--validate", type=int, default=None, metavar="STEPS",
                    help="then run DSGD and the 3 best-ranked other methods for STEPS steps in the simulator and print "
                         "their predicted loss ratios beside their measured final losses (with --ranks, also their "
                         "predicted and measured seconds per step on the ranks)")
    ad.add_argument("--repeats", type=int, default=2, help="repetitions per method for --validate (default 2)")

    sub.add_parser("presets", help="list the built-in presets")

    c = sub.add_parser("compressors", help="declared vs measured constants of the compressors")
    c.add_argument("--dim", type=int, required=True, help="vector length d")
    c.add_argument("--samples", type=int, default=2000, help="Monte Carlo samples per estimate (default 2000)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--names", default=None, help="comma-separated compressor names (default: all)")
    return p


def _experiment_args(r: argparse.ArgumentParser) -> None:
    """The options shared by ``run`` and ``track``."""
    r.add_argument("source", metavar="PRESET_OR_CONFIG", nargs="?", default=None,
                   help="a preset name (see `compsde presets`), a TOML file, or a run folder (holding config.toml); "
                        "it may also follow the --set items")
    r.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", nargs="+", default=[],
                   help="override a config value with a dotted key: run.steps=50, noise.nu=2, problem.dim=5, "
                        "series.lr=0.1 (every series), series.2.lr=0.1 (series 2, 0-based); "
                        "values are TOML (a bare word is a string)")
    r.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (default: runs/<name>-<timestamp>, name = [run] name, by default the "
                        "preset's or file's name); the outputs of an earlier run there are replaced")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    r.add_argument("--no-report", action="store_true",
                   help="skip report.html (the page of the run; `compsde report DIR` writes it later)")
    r.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also stream the metrics rows to DIR as TensorBoard scalars, one TensorBoard run per series "
                        "(needs the tensorboard package: pip install 'compsde[tensorboard]')")


def _backend_args(r: argparse.ArgumentParser) -> None:
    """``run`` only: the torch.distributed backend (``compsde.distributed``)."""
    r.add_argument("--backend", choices=("sim", "torch"), default="sim",
                   help="sim: all workers simulated in this process (default); torch: one process per worker on "
                        "torch.distributed (gloo), started here, or joining the group when run under torchrun")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="torch backend: number of processes (default and required value: the largest series workers)")
    r.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="torch backend: seconds a collective may wait before a dead or hung rank fails the run (default 60)")
    r.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                   help="torch backend: write OUT/checkpoint.pt (atomically) every K steps")
    r.add_argument("--resume", default=None, metavar="DIR_OR_FILE",
                   help="torch backend: continue from a checkpoint (its directory is the default --out)")


def _cmd_run_torch(args: argparse.Namespace, exp: object) -> int:
    from compsde.experiments import torch_backend

    return torch_backend.cli_run(exp, args)  # type: ignore[arg-type]


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _source_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The preset or config and the --set items. ``--set`` takes one or more words, so a preset named
    after them lands among them: with no PRESET_OR_CONFIG before ``--set``, the one word without ``=``
    is it."""
    items = [item for group in args.overrides for item in group]
    if args.source is not None:
        return args.source, items
    bare = [item for item in items if "=" not in item]
    if len(bare) == 1:
        return bare[0], [item for item in items if item is not bare[0]]
    if not bare:
        raise ValueError("missing PRESET_OR_CONFIG: give a preset name (see `compsde presets`), a TOML file or a run folder")
    raise ValueError(f"--set expects KEY=VALUE items; more than one word without '=' among them: "
                     f"{', '.join(map(repr, bare))} (only one can be the preset or config)")


def _cmd_run(args: argparse.Namespace, argv: Sequence[str], track: bool = False) -> int:
    import shlex

    from compsde.experiments import build, runner

    try:
        source, overrides = _source_and_overrides(args)
        if args.out is not None and not args.out.strip():
            raise ValueError(f"--out must name a directory, got {args.out!r}")
        exp = build.load(source, overrides)
    except (ValueError, OSError) as e:
        return _error(str(e))
    if getattr(args, "backend", "sim") == "torch":
        return _cmd_run_torch(args, exp)
    given = [f for f, v in (("--workers", getattr(args, "workers", None)), ("--timeout", getattr(args, "timeout", None)),
                            ("--checkpoint-every", getattr(args, "checkpoint_every", None)),
                            ("--resume", getattr(args, "resume", None))) if v is not None]
    if given:
        return _error(f"{', '.join(given)} only apply to --backend torch")
    try:
        out = runner.run_experiment(exp, args.out, progress=not args.no_progress, plots=not args.no_plots, track=track,
                                    command=shlex.join(["compsde", *argv]), report=not args.no_report,
                                    tensorboard=args.tensorboard)
    except (ValueError, OSError) as e:  # e.g. --out names a file, the run is too large, or the disk is full
        return _error(str(e))
    except (KeyboardInterrupt, runner.Terminated) as e:
        return _stopped(e, "metrics.csv keeps the rows computed")
    report_written(out)
    return 0


def report_written(out: Path) -> None:
    """What ``run`` / ``track`` print when a run has ended (either backend): the folder, then each series'
    final numbers from its summary.json."""
    import json

    print(f"wrote {out}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    for line in _series_report(summary):
        print(line)


def _series_report(summary: Mapping[str, Any]) -> list[str]:
    """One line per series of a run's summary.json: its final numbers (mean and median loss, the held-out
    metric of a network problem, the diverged fraction when nonzero) and, after ``compsde track``, first
    its SDE's tracking error (or why it has no SDE); then the weak-order fits of ``track``."""

    def num(v: float | None, spec: str = ".4g") -> str:
        return "n/a" if v is None else format(v, spec)

    lines = []
    for s in summary["series"]:
        f = s["final"]
        parts = [f"final loss mean {num(f['loss_mean'])} (median {num(f['loss_median'])})"]
        if "test_accuracy" in f:
            parts.append(f"test accuracy {num(f['test_accuracy'], '.2%')}")
        if "test_perplexity" in f:
            parts.append(f"test perplexity {num(f['test_perplexity'])}")
        if "sharpness" in f:
            pred = f" (slow SDE {num(f['sharpness_slow_sde'])})" if "sharpness_slow_sde" in f else ""
            parts.append(f"sharpness {num(f['sharpness'])}{pred}")
        frac = f["diverged_fraction"] or 0.0
        if frac:
            parts.append("all repetitions diverged" if frac >= 1.0 else f"diverged {frac:.0%}")
        final = ", ".join(parts)
        if "sde" not in s:  # `compsde run`
            lines.append(f"  {s['label']}: {final}")
        elif "none" in s["sde"]:
            lines.append(f"  {s['label']}: no SDE, run as the optimizer only ({s['sde']['none'].split(': ', 1)[1]}); "
                         f"{final}")
        else:
            t = s["tracking"]
            lines.append(f"  {s['label']}: SDE tracking error max {num(t['max_rel_error'], '.2%')}, mean "
                         f"{num(t['mean_rel_error'], '.2%')}; {final}  [{s['sde']['description']}]")
    for fit in summary.get("weak_order", []):
        lines.append(f"  weak order ({fit['group'] or 'all series'}): fitted slope {num(fit['slope'], '.2f')} "
                     f"over η = {fit['lr']}")
    return lines


def _cmd_report(args: argparse.Namespace) -> int:
    from compsde.experiments import report

    try:
        report.check_run_dir(args.run_dir, "RUN_DIR")
        path = report.write_report(args.run_dir)
    except (ValueError, OSError) as e:
        return _error(str(e))
    print(f"wrote {path}")
    return 0


def _cmd_scale(args: argparse.Namespace) -> int:
    import json

    from compsde.sde import scaling

    try:
        check_seed("--seed", args.seed)
        frm = scaling.parse_assignments(args.frm, "--from")
        if any(v == scaling.KEEP for v in frm.values()):
            return _error(f"--from takes numbers only ('{scaling.KEEP}' belongs in --to)")
        if (args.noise is None) != (args.grad_norm is None):
            return _error("--noise and --grad-norm go together: give both (tr Σ per sample and ‖∇f‖) or neither")
        spectrum = scaling.Spectrum.parse(args.spectrum) if args.spectrum is not None else None
        sol = scaling.solve(args.method, frm, scaling.parse_assignments(args.to, "--to"),  # type: ignore[arg-type]
                            model=args.model, spectrum=spectrum)
        check = scaling.noise_check(sol, args.noise, args.grad_norm) if args.noise is not None else None
        val = scaling.validate(sol, repeats=args.repeats, seed=args.seed) if args.validate else None
    except ValueError as e:
        return _error(str(e))
    if args.json:
        out = sol.as_dict()
        if check is not None:
            out["noise_check"] = check.as_dict()
        if val is not None:
            out["validation"] = val.as_dict()
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(sol.format())
        if check is not None:
            print(check.format())
        if val is not None:
            print(val.format())
    return 0


def _advice_file(out: str | None) -> bool:
    """Whether ``--out`` names advice.json itself (a path ending in .json that is not a directory) rather than
    the run folder."""
    from pathlib import Path

    return out is not None and out.lower().endswith(".json") and not Path(out).is_dir()


def _cmd_advise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import json
    import math
    import shlex

    from compsde.advise import Advice, _jsonable, advise_config, config_experiment
    from compsde.distributed.launch import LaunchError
    from compsde.experiments import runner
    from compsde.sde import scaling

    folder: Path | None = None
    try:
        source, overrides = _source_and_overrides(args)
        if (args.bandwidth is None) != (args.latency is None):
            raise ValueError("--bandwidth and --latency go together: give both (the link between the workers) or neither")
        for flag, v in (("--sign-lr", args.sign_lr), ("--bandwidth", args.bandwidth), ("--latency", args.latency),
                        ("--compute", args.compute)):
            zero_ok = flag in ("--latency", "--compute")
            if v is not None and not (math.isfinite(v) and (v > 0 or (zero_ok and v >= 0))):
                raise ValueError(f"{flag} must be a finite number {'≥ 0' if zero_ok else '> 0'}, got {v!r}")
        if args.out is not None and not args.out.strip():
            raise ValueError(f"--out must name a directory or a .json file, got {args.out!r}")
        spectrum = scaling.Spectrum.parse(args.spectrum) if args.spectrum is not None else None
        link = (args.bandwidth, args.latency) if args.bandwidth is not None else None
        exp = config_experiment(source, overrides, series=args.series, validate_steps=args.validate,
                                validate_repeats=args.repeats, ranks=args.ranks, throttle=args.throttle,
                                methods=args.methods, link=link, compute=args.compute)
        folder = None if _advice_file(args.out) else runner.output_dir(args.out, exp.name)

        def compute() -> Advice:
            return advise_config(exp, series=args.series, methods=args.methods, sign_lr=args.sign_lr, spectrum=spectrum,
                                 link=link, compute=args.compute, validate_steps=args.validate,
                                 validate_repeats=args.repeats, ranks=args.ranks, throttle=args.throttle)

        if folder is None:
            adv = compute()
            path = adv.write(args.out)
        else:
            adv, path = _advise_run(folder, exp, compute, command=shlex.join(["compsde", *argv]), series=args.series,
                                    report=not args.no_report)
    except (ValueError, OSError) as e:
        return _error(str(e))
    except LaunchError as e:  # a rank of --ranks failed, or the throttled link could not be built
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except (KeyboardInterrupt, runner.Terminated) as e:
        return _stopped(e, recorded=folder is not None)
    if args.json:
        print(json.dumps(_jsonable(adv.as_dict()), indent=2, ensure_ascii=False))
    else:
        print(adv.format())
        print(f"wrote {path}")
    return 0


def _stopped(e: BaseException, kept: str = "", recorded: bool = True) -> int:
    """The exit of a run stopped by Ctrl-C (130) or SIGTERM (143; a signal caught by ``launch.interruptible``:
    128 + its number), said on stderr; run.json has recorded it (when ``recorded``) and ``kept`` says what else
    survives."""
    from compsde.distributed.launch import Interrupted

    if isinstance(e, Interrupted) and e.signum != signal.SIGINT:
        how, code = f"terminated by {signal.Signals(e.signum).name}", e.status
    else:
        how, code = ("interrupted", 130) if isinstance(e, KeyboardInterrupt) else ("terminated by SIGTERM", 128 + 15)
    notes = (["run.json records it"] if recorded else []) + ([kept] if kept else [])
    print(f"error: {how}" + (f" ({'; '.join(notes)})" if notes else ""), file=sys.stderr)
    return code


def _advise_run(out: Path, exp: Any, compute: Callable[[], Any], *, command: str, series: int,
                report: bool) -> tuple[Any, Path]:
    """``compsde advise`` into the run folder ``out``, set up and ended as ``run`` does (``runner.start_run`` /
    ``end_run``: run.json with its status, config.toml, report.html): the advice (``compute()``), advice.json and
    the probe's figures (``plot_probe``). run.json's claim becomes the recommendation. Returns the advice and
    the folder."""
    from compsde.advise.probe import plot_probe
    from compsde.experiments import runner

    with runner.sigterm_raises():
        record = runner.start_run(out, exp, command=command, backend="sim", track=False, estimate=None,
                                  rerun=f"compsde advise {runner.CONFIG_FILE} --series {series}")
        try:
            adv = compute()
            adv.write(out)
            if adv.noise_probe is not None:
                plot_probe(adv.noise_probe, out, title=f"gradient-noise probe: {exp.name}, series {series}")
            record.data["claim"] = f"Advice for series {series} of {exp.name}: {adv.recommendation}"
            record.write()
        except BaseException as e:
            runner.end_run(record, e, report=report)
            raise
        runner.end_run(record, None, report=report)
    return adv, out



def _cmd_presets() -> int:
    from compsde.experiments import presets

    items = presets.presets()
    width = max((len(n) for n in items), default=0)
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def _cmd_compressors(args: argparse.Namespace) -> int:
    from compsde.compressors import measure

    if args.dim < 1:
        return _error(f"--dim must be an integer ≥ 1, got {args.dim}")
    if args.samples < 2:
        return _error(f"--samples must be an integer ≥ 2 (a variance needs two draws), got {args.samples}")
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    try:
        check_seed("--seed", args.seed)
        rows = measure.compressor_table(args.dim, samples=args.samples, seed=args.seed, names=names)
    except ValueError as e:
        return _error(str(e))
    print(measure.format_table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``compsde`` console script; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args, argv)
    if args.command == "track":
        return _cmd_run(args, argv, track=True)
    if args.command == "report":
        return _cmd_report(args)
    if args.command == "scale":
        return _cmd_scale(args)
    if args.command == "advise":
        return _cmd_advise(args, argv)
    if args.command == "presets":
        return _cmd_presets()
    if args.command == "compressors":
        return _cmd_compressors(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
