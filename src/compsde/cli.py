"""Command line: ``compsde run``, ``compsde presets``, ``compsde compressors``.

    compsde run PRESET_OR_CONFIG [--set KEY=VALUE ...] [--out DIR] [--no-progress] [--no-plots]
    compsde presets
    compsde compressors --dim D [--samples S] [--seed S] [--names a,b,...]
    compsde --version

Bad input (unknown key, wrong type, unknown preset, impossible method/compressor pair) prints
``error: ...`` on stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Sequence

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
                       description="Run every [[series]] of a preset or config file and write config.toml, "
                                   "metrics.csv, summary.json and PNG plots into the output directory.")
    r.add_argument("source", metavar="PRESET_OR_CONFIG", help="a preset name (see `compsde presets`) or a TOML file")
    r.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", nargs="+", default=[],
                   help="override a config value with a dotted key: run.steps=50, noise.nu=2, problem.dim=5, "
                        "series.lr=0.1 (every series), series.2.lr=0.1 (series 2, 0-based); "
                        "values are TOML (a bare word is a string)")
    r.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (default: runs/<preset-or-config-stem>-<timestamp>)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    sub.add_parser("presets", help="list the built-in presets")

    c = sub.add_parser("compressors", help="declared vs measured constants of the compressors")
    c.add_argument("--dim", type=int, required=True, help="vector length d")
    c.add_argument("--samples", type=int, default=2000, help="Monte Carlo samples per estimate (default 2000)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--names", default=None, help="comma-separated compressor names (default: all)")
    return p


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from compsde import config, runner

    overrides = [item for group in args.overrides for item in group]
    try:
        exp = config.load(args.source, overrides)
    except (ValueError, OSError) as e:
        return _error(str(e))
    try:
        out = runner.run_experiment(exp, args.out, progress=not args.no_progress, plots=not args.no_plots)
    except (ValueError, OSError) as e:  # e.g. --out names a file, or the disk is full
        return _error(str(e))
    print(f"wrote {out}")
    return 0


def _cmd_presets() -> int:
    from compsde import config

    items = config.presets()
    width = max((len(n) for n in items), default=0)
    for name, desc in items.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def _cmd_compressors(args: argparse.Namespace) -> int:
    from compsde.compressors import measure

    if args.dim < 1:
        return _error(f"--dim must be an integer ≥ 1, got {args.dim}")
    if args.samples < 1:
        return _error(f"--samples must be an integer ≥ 1, got {args.samples}")
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    try:
        rows = measure.compressor_table(args.dim, samples=args.samples, seed=args.seed, names=names)
    except ValueError as e:
        return _error(str(e))
    print(measure.format_table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``compsde`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "presets":
        return _cmd_presets()
    if args.command == "compressors":
        return _cmd_compressors(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
