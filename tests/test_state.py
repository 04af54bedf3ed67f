"""State is data, whatever the batching: the simulator processes workers in chunks (cache-sized slices of the
worker axis), and every stateful recipe must give bit-identical runs whether a chunk holds one worker, some
or all of them — and the same as the torch backend, where each process holds one worker and nothing is
sliced."""

from __future__ import annotations

import pytest
import torch

from compsde import algorithms
from compsde.algorithms.schedules import Schedule
from compsde.algorithms.sync import SyncSchedule
from compsde.core.trees import put, take
from compsde.objectives import Noise, Oracle, problems
from compsde.optim import adam, chain, momentum
from compsde.sim import loop as loop_mod
from compsde.sim import simulate

WORKERS, REPEATS, DIM = 5, 2, 6

#: Every recipe whose state carries something from step to step, on the workers' or the server's side.
STATEFUL = {
    "worker momentum": ("dcsgd", {"compressor": "rand-k", "k": 3, "worker": {"momentum": 0.9}}),
    "error feedback": ("ef", {"compressor": "top-k", "k": 2}),
    "worker-side Adam": ("dcsgd", {"compressor": "natural", "worker": chain(adam(0.8, 0.99), momentum(0.5))}),
    "server Adam": ("adam", {"beta1": 0.8}),
    "local-sgd": ("local-sgd", {"sync": SyncSchedule("constant", period=3), "worker": {"momentum": 0.5}}),
    "local-adamw": ("local-adamw", {"sync": SyncSchedule("qsr", period=2, alpha=0.3), "average_state": True}),
    "DiLoCo": ("local-adamw", {"sync": SyncSchedule("constant", period=4), "compressor": "top-k", "k": 3,
                               "error_feedback": True, "server": {"momentum": 0.9, "nesterov": True},
                               "outer_lr": 0.7}),
}


def _run(name, kw, monkeypatch, chunk_workers, steps=13):
    monkeypatch.setattr(loop_mod, "CHUNK_ELEMENTS", chunk_workers * REPEATS * DIM)
    oracle = Oracle(problems.make("quadratic", dim=DIM, heterogeneity=1.0, rotate=True), Noise("gaussian", scale=0.5),
                    workers=WORKERS)
    algo = algorithms.make(name, **kw)
    lr = 0.01 if "adam" in name else 0.1
    return simulate(oracle, algo, Schedule("cosine", lr, steps), repeats=REPEATS, seed=4, log_every=3)


@pytest.mark.parametrize("case", sorted(STATEFUL))
def test_stateful_recipes_do_not_depend_on_the_chunking_of_workers(case, monkeypatch):
    name, kw = STATEFUL[case]
    runs = [_run(name, kw, monkeypatch, c) for c in (1, 2, WORKERS)]  # one worker, some (2, 2, 1), all
    for other in runs[1:]:
        assert torch.equal(runs[0].x, other.x), case
        assert torch.equal(runs[0].loss, other.loss), case
    assert float(runs[0].loss[-1].mean()) < 0.9 * float(runs[0].loss[0].mean()), case  # the run moved


def test_put_refuses_a_counter_without_the_worker_axis():
    state = {"m": torch.zeros(4, 2), "count": 0}
    chunk = take(state, 0, 2)
    new = {"m": chunk["m"] + 1, "count": 1}  # a plain counter advanced by one chunk: its value would depend
    with pytest.raises(ValueError, match="without a worker axis changed from 0 to 1"):  # on the chunking
        put(state, 0, 2, new)
    assert torch.equal(put({"m": torch.zeros(4, 2), "count": 0}, 0, 2, {"m": torch.ones(2, 2), "count": 0})["m"][:2],
                       torch.ones(2, 2))


def test_sliced_simulator_equals_the_torch_backend(tmp_path, monkeypatch):
    """Local AdamW with 4 workers × 16 repetitions sliced one worker per chunk in the simulator, one worker
    per process in the torch backend: the same iterates (their step counts were once advanced per chunk)."""
    from compsde.experiments import build as config
    from compsde.experiments.torch_backend import run as run_torch

    series = [{"method": "local-adamw", "sync": "constant", "period": 3, "lr": 0.01, "workers": 4},
              {"method": "dcsgd", "compressor": "rand-k", "k": 3, "worker": {"momentum": 0.9}, "lr": 0.1, "workers": 4}]
    cfg = {"run": {"steps": 9, "repeats": 16, "seed": 5, "log_every": 3, "dtype": "float64"},
           "problem": {"name": "quadratic", "dim": 6, "heterogeneity": 1.0}, "noise": {"name": "gaussian", "scale": 0.5},
           "series": series}
    exp = config.build(config.resolve(cfg), "sliced")
    res = run_torch(exp, tmp_path / "out", workers=4, timeout=60, progress=False, plots=False)
    monkeypatch.setattr(loop_mod, "CHUNK_ELEMENTS", 16 * 6)  # one worker per chunk
    for spec, tr in zip(exp.series, res.traces):
        ref = simulate(spec.oracle, spec.algorithm, spec.schedule, repeats=16, seed=5, log_every=3)
        torch.testing.assert_close(tr.x, ref.x, rtol=1e-12, atol=1e-14)  # the all-reduce of averaging may round
        torch.testing.assert_close(tr.loss, ref.loss, rtol=1e-12, atol=1e-14)
