"""The README's examples are code that runs: its Python section, and its scaling-rule console output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _block(after: str, lang: str) -> str:
    start = README.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert m is not None, f"no ```{lang} block after {after!r}"
    return m.group(1)


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


def test_the_scaling_example_prints_what_the_readme_shows(capsys):
    from compsde.experiments.cli import main

    text = _block("### Scaling rules", "console")
    command, *expected = text.strip().splitlines()
    argv = command.removeprefix("$ compsde ").split()
    assert main(argv) == 0
    got = [line.rstrip() for line in capsys.readouterr().out.strip().splitlines()]
    assert got == [line.rstrip() for line in expected]


@pytest.mark.parametrize("name", ["noise-resilience", "top1-divergence", "vit-heavy-tails", "gpt-scaling-rules",
                                  "mlp-sde-tracking", "resnet-compression-variance"])
def test_presets_named_in_the_readme_exist(name):
    from compsde.experiments import presets

    assert name in presets.preset_names() and f"`{name}`" in README
