"""The one place a config becomes objects: ``load`` and ``build``, ``SeriesSpec`` and ``Experiment``.

The pipeline::

    raw, name = presets.load_source("noise-resilience")  # a preset, a TOML file or a run folder
    raw = overrides.apply_overrides(raw, ["run.steps=50"])  # --set KEY=VALUE
    cfg = schema.resolve(raw, name)                        # validate, fill every default -> plain dict
    exp = build(cfg)                                       # the objects a run needs
    tomlio.dumps(cfg)                                      # TOML text that reproduces the run exactly

``load(source, overrides)`` does all four. ``resolve`` and ``dumps`` are re-exported here so that a
backend needs one import for the whole pipeline (text → objects → text).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from compsde import algorithms
from compsde.algorithms import Algorithm, schedules
from compsde.algorithms.schedules import Schedule
from compsde.algorithms.sync import SYNC_PARAMS, SyncSchedule
from compsde.compressors.blockwise import Blockwise
from compsde.core.checks import check_path
from compsde.core.tensors import DTYPES
from compsde.experiments import estimates, presets, schema
from compsde.experiments.overrides import apply_overrides
from compsde.experiments.schema import resolve
from compsde.experiments.tomlio import dumps
from compsde.objectives import Oracle, problems
from compsde.objectives.network import Network
from compsde.objectives.noise import Noise
from compsde.objectives.problems import Problem

__all__ = ["Experiment", "SeriesSpec", "build", "dumps", "load", "resolve"]


@dataclass
class SeriesSpec:
    """One curve: the oracle, the algorithm and the schedule a run needs, plus how to show it."""

    index: int
    label: str
    group: str
    oracle: Oracle  # float64 on the CPU; the runner casts it to the run's dtype and device
    algorithm: Algorithm
    schedule: Schedule
    config: dict[str, Any]  # the resolved [[series]] table

    @property
    def problem(self) -> Problem:
        return self.oracle.problem

    @property
    def noise(self) -> Noise:
        return self.oracle.noise

    @property
    def workers(self) -> int:
        return self.oracle.workers

    @property
    def batch(self) -> int:
        return self.oracle.batch

    @property
    def color_key(self) -> str:
        """What identifies a method variant across panels (the same key gets the same colour)."""
        c = self.config
        keys = [k for k in c if k not in ("label", "group", "problem", "noise", "lr", "workers", "batch")]
        return ";".join(f"{k}={c[k]}" for k in keys)


@dataclass
class Experiment:
    """A resolved config and the objects built from it. ``name`` is the config's ``[run] name``; ``claim``
    what it demonstrates (``presets.claim`` of its source: a preset's description), recorded in run.json."""

    config: dict[str, Any]
    name: str = "config"
    series: list[SeriesSpec] = field(default_factory=list)
    claim: str = ""

    @property
    def run(self) -> dict[str, Any]:
        return self.config["run"]


def _schedule_params(s: Mapping[str, Any]) -> dict[str, float]:
    return {k: s[k] for k in schedules.SCHEDULE_PARAMS[s["schedule"]]}


def build(config: Mapping[str, Any], name: str | None = None) -> Experiment:
    """Turn a resolved config (from ``resolve``) into problems, noises, methods and schedules.

    ``name`` (optional) renames the experiment: it replaces ``[run] name``. Each series' memory in
    the simulator is checked before its problem is built (``estimates``). Errors from the
    constructors are re-raised as ValueError prefixed with the series they concern.
    """
    cfg = copy.deepcopy(dict(config))
    run = cfg["run"]
    if name is not None and name != run.get("name"):
        cfg = resolve({**cfg, "run": {**run, "name": name}})
        run = cfg["run"]
    cache: dict[str, Problem] = {}
    out = Experiment(cfg, run["name"])
    for i, s in enumerate(cfg["series"]):
        where = f"series.{i} ({s['label']!r})"
        try:
            cspec = schema.compressor_params(s["compressor"])
            cparams = {k: s[k] for k in cspec if k in s}
            local = {}
            if s.get("sync"):
                keys = SYNC_PARAMS[s["sync"]]
                local = {"sync": SyncSchedule(s["sync"], **{k: s[k] for k in keys if k in s}),
                         **{k: s[k] for k in ("outer_lr", "error_feedback", "average_state") if k in s}}
            hyper = {k: s[k] for k in schema.OPTIMIZER_KEYS if k in s}
            algorithm = algorithms.make(s["method"], s["compressor"], normalize=s["normalize"],
                                        worker=s.get("worker"), server=s.get("server"), **local, **hyper, **cparams)
            schedule = Schedule(s["schedule"], s["lr"], s.get("steps", run["steps"]), _schedule_params(s))
            pdict = schema.merge_problem(cfg["problem"], s.get("problem", {}), f"series.{i}.problem")
            key = repr(sorted(pdict.items()))
            if isinstance(pdict.get("dim"), int):  # before allocating anything of size d
                estimates.check_series_memory(algorithm, run, s, pdict["dim"])
            if key not in cache:
                params = {k: v for k, v in pdict.items() if k != "name"}
                cache[key] = problems.make(pdict["name"], **params)
            problem = cache[key]
            if not isinstance(pdict.get("dim"), int):  # the dimension came from the data
                estimates.check_series_memory(algorithm, run, s, problem.dim)
            if s.get("per_layer") and not isinstance(problem, Network):
                raise ValueError(f"per_layer = true compresses each parameter tensor of a network on its own; "
                                 f"problem {pdict['name']!r} is one vector (use a network: mlp, resnet, vit, gpt)")
            ndict = schema.merge_noise(cfg["noise"], s.get("noise", {}))
            scale = ndict.get("scale", 1.0)
            noise = Noise(ndict["name"], tuple(scale) if isinstance(scale, list) else scale, ndict.get("nu"))
            if isinstance(problem, Network):
                oracle = problem.oracle(noise, workers=s["workers"], batch=s["batch"], dtype=DTYPES[run["dtype"]])
                oracle.check_memory(run["repeats"])  # the minibatches' activations, before anything runs
                if s.get("per_layer"):
                    algorithm = replace(algorithm, compressor=Blockwise(algorithm.compressor, oracle.flat.blocks()))
            else:
                oracle = Oracle(problem, noise, workers=s["workers"], batch=s["batch"])
            # Build the compressor's dimension-dependent parts now (k ≤ d etc.), not mid-run.
            algorithm.bits(problem.dim)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        out.series.append(SeriesSpec(i, s["label"], s["group"], oracle, algorithm, schedule, s))
    return out


def load(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> Experiment:
    """A preset name, a config file, a run folder or a raw dict, plus ``--set`` overrides → a built
    ``Experiment``. The experiment's name is ``[run] name`` if the config has one, else the preset's
    name, the file's stem or the run folder's name ("config" for a dict)."""
    if isinstance(source, Mapping):
        raw, name = dict(source), "config"
    else:
        raw, name = presets.load_source(check_path("source", source, "a preset name, a config file or run folder "
                                                   "(a string or pathlib.Path), or a config dict"))
    cfg = resolve(apply_overrides(raw, overrides), name)
    exp = build(cfg)
    if not isinstance(source, Mapping):
        exp.claim = presets.claim(source)
    return exp
