"""The README against the code: its Python sections and TOML config run, its console output is what the
commands print, its command lines parse (flags, presets, --set keys), and the lists it gives (presets, the
files and columns a run writes) are the code's."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _block(after: str, lang: str) -> str:
    start = README.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert m is not None, f"no ```{lang} block after {after!r}"
    return m.group(1)


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of the same or a higher level."""
    start = README.index(heading + "\n")
    level = heading.split()[0]
    m = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(README, start + len(heading))
    return README[start: m.start() if m else len(README)]


def _subparsers() -> dict:
    from compsde.experiments.cli import _parser

    (sub,) = [a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(sub.choices)


def test_the_python_section_runs(capsys):
    code = _block("## Python", "python")
    code = code.replace("repeats=256", "repeats=16").replace("paths=256", "paths=16")  # same calls, smaller
    exec(compile(code, "README.md (Python section)", "exec"), {})
    assert "SDE" in capsys.readouterr().out


def test_the_network_example_runs(capsys):
    code = _block("## Networks on real data", "python")
    assert "NetworkOracle" in code
    exec(compile(code.replace("200), log_every=50", "20), log_every=10"), "README.md (networks)", "exec"), {})
    assert "tensor" in capsys.readouterr().out


def test_the_toml_example_is_a_valid_config():
    from compsde.experiments import build

    exp = build.build(build.resolve(tomllib.loads(_block("### Experiments are TOML files", "toml"))))
    assert [s.algorithm.name for s in exp.series] == ["dcsgd"] and exp.run["steps"] == 1000


_CONSOLE = [pytest.param(b, id=b.split("\n", 1)[0].removeprefix("$ ")[:40],
                         marks=[pytest.mark.slow] if "--validate" in b.split("\n", 1)[0] else [])
            for b in _blocks("console")]


@pytest.mark.parametrize("text", _CONSOLE)
def test_console_output_is_what_the_command_prints(capsys, text):
    """Every ```console block: its `$ compsde ...` line run now prints the lines shown (``--validate``
    simulates both settings: ~12 s, so marked slow)."""
    from compsde.experiments.cli import main

    command, *expected = text.strip().splitlines()
    assert command.startswith("$ compsde ")
    assert main(shlex.split(command.removeprefix("$ compsde "))) == 0
    got = [line.rstrip() for line in capsys.readouterr().out.strip().splitlines()]
    assert got == [line.rstrip() for line in expected]


def _command_lines() -> list[list[str]]:
    """The compsde command lines of the README's bash and console blocks (also after `&&` and as
    `torchrun ... -m compsde ...`), without comments, as argument lists after the program name."""
    out = []
    for block in _blocks("bash") + _blocks("console"):
        for line in block.splitlines():
            line = line.removeprefix("$ ").split(" #")[0].strip()
            if line.startswith("#"):  # a comment (with placeholders: CONFIG, HOST:PORT)
                continue
            for part in line.split("&&"):
                if re.search(r"(^|\s)compsde\s", part) and not part.lstrip().startswith("pip"):
                    words = shlex.split(part)
                    out.append(words[words.index("compsde") + 1:])
    return out


def test_the_readme_shows_compsde_commands():
    commands = [argv[0] for argv in _command_lines()]
    assert commands.count("run") >= 3 and "scale" in commands  # quick start, distributed runs, scaling rules


@pytest.mark.parametrize("argv", _command_lines(), ids=lambda argv: " ".join(argv)[:50])
def test_command_lines_parse_and_name_real_presets(argv):
    """Each command line is accepted by the parser (its flags exist), and a run's preset exists and takes
    its --set items (the config is built, nothing runs)."""
    from compsde.experiments import build
    from compsde.experiments.cli import _parser, _source_and_overrides

    args = _parser().parse_args(argv)  # SystemExit (status 2) on an unknown flag or choice
    if args.command in ("run", "track"):
        source, overrides = _source_and_overrides(args)
        build.load(source, overrides)  # ValueError for an unknown preset or key


def test_the_synopsis_flags_exist():
    subs = _subparsers()
    shown = set()
    for line in _block("## Command line", "text").splitlines():
        command = line.split()[1]
        known = set(subs[command]._option_string_actions)
        flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", line))
        assert flags <= known, (command, flags - known)
        shown |= flags
    assert {"--set", "--out", "--from", "--to", "--validate", "--dim"} <= shown


def test_the_presets_table_lists_every_preset():
    from compsde.experiments import presets

    table = re.findall(r"^\| `([\w-]+)` \|", _section("### Presets: the papers' claims, one command each"), re.M)
    assert len(table) == len(set(table)) and set(table) == set(presets.preset_names())


def test_what_a_run_writes_names_every_file_and_column():
    from compsde.experiments.plots import PLOT_FILES
    from compsde.experiments.runner import METRIC_COLUMNS, OUTPUT_FILES

    text = _section("### What a run writes")
    for name in (*OUTPUT_FILES, *PLOT_FILES):
        assert f"`{name}`" in text, name
    columns = re.search(r"`metrics.csv` — .*?`(series, .*?)`", text, re.S)
    assert columns is not None
    assert [c.strip() for c in columns.group(1).split(",")] == METRIC_COLUMNS


def test_ci_runs_the_readmes_test_commands():
    """.ci/run runs the README's test command and its browser install, verbatim."""
    quick = README[README.index("The second installs the test dependencies"): README.index("## Command line")]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", quick, re.S) for line in block.strip().splitlines()]
    assert len(lines) == 2 and lines[0].startswith("python3 -m venv") and "chromium-driver" in lines[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert all(line in ci for line in lines)
