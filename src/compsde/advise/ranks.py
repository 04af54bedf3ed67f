"""The cost model measured on real ranks: ``compsde advise --ranks N [--throttle RATE]``.

``measure_series`` starts N local processes as a gloo group (``compsde.distributed.launch``), or 2 in
network namespaces joined by a link throttled to RATE (``compsde.distributed.netns``: needs root), and
each rank builds the series' network and runs ``compsde.advise.cost.measure_group`` on it: the link
between the ranks, the compute of a DDP step at the series' batch, the gradient buckets, each method's
hook overhead, and for the methods to check, their real seconds per step with their DDP hooks. The
launching process gets the ``GroupCosts`` back; ``compsde.advise.default_cost`` turns them into the
cost model's predictions at any B and N.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from compsde.advise.cost import GroupCosts, hookable, measure_group
from compsde.core.checks import check_int, check_number, describe

__all__ = ["CHILD_MODULE", "MAX_RANKS", "check_series", "measure_series"]

CHILD_MODULE = "compsde.advise._ranks_child"
#: More local ranks than this on one machine measure contention, not a link.
MAX_RANKS = 64


def measure_series(exp: Any, series: int, methods: Sequence[str], *, ranks: int, throttle: str | None = None,
                   timed: Sequence[str] = (), steps: int = 5, rounds: int = 5, timeout: float = 300.0) -> GroupCosts:
    """``GroupCosts`` of series ``series`` of the built experiment ``exp`` (a network series), measured on
    ``ranks`` local processes — over loopback, or over a link throttled to ``throttle`` (tc's rate syntax,
    e.g. "1gbit"; 2 ranks, root). ``methods`` and ``timed`` are method specs (``compsde.advise.parse_method``):
    every method's overhead is measured and the ``timed`` ones take ``rounds`` × ``steps`` real DDP steps each;
    methods no DDP hook runs (``hookable``: local methods, SAM, decoupled weight decay) are left out.
    ValueError for bad arguments and for a series without a network; ``compsde.distributed.launch.LaunchError``
    when a rank fails or the throttled link cannot be built."""
    from compsde.advise import parse_method
    from compsde.distributed.backend import launch_job
    from compsde.distributed.netns import throttled_link

    check_series(exp, series, ranks, throttle)
    check_int("steps", steps, min=1, max=10**5)
    check_int("rounds", rounds, min=1, max=10**4)
    check_number("timeout", timeout, min=1.0)
    for m in [*methods, *timed]:
        if not isinstance(m, str):
            raise ValueError(f"methods measured on ranks are given as specs name[:compressor[:k=v,...]], got {describe(m)}")
        parse_method(m)  # refused here, before any process starts
    # the ranks measure what a DDP hook can run; the others (local methods, SAM, AdamW's decay) get no time
    methods = [m for m in methods if hookable(m)]
    timed = [m for m in timed if hookable(m)]
    job = {"config": exp.config, "name": exp.name, "series": series, "methods": list(methods), "timed": list(timed),
           "steps": steps, "rounds": rounds, "timeout": timeout}
    # the link's set-up, the ranks' start and their measurements: generous, a hung rank still ends
    limit = timeout + 60.0 * (1 + len(methods)) + 2.0 * steps * rounds * max(1, len(timed))
    if throttle is None:
        res = launch_job(ranks, CHILD_MODULE, job, timeout=limit)
    else:
        with throttled_link(throttle) as wrap:
            res = launch_job(ranks, CHILD_MODULE, job, timeout=limit, wrap=wrap)
    return GroupCosts.from_dict(res)


def check_series(exp: Any, series: int, ranks: int, throttle: str | None) -> None:
    """Whether series ``series`` of ``exp`` can be measured on ``ranks`` ranks (over a link throttled to
    ``throttle``, which is built and removed once to see that it can be): so a caller can check before the
    probe runs."""
    from compsde.distributed.launch import LaunchError
    from compsde.distributed.netns import RANKS, bits_per_second, throttled_link, why_not
    from compsde.objectives.network import NetworkOracle

    check_int("--ranks", ranks, min=2, max=MAX_RANKS)
    if throttle is not None:
        bits_per_second(throttle, "--throttle")
        if ranks != RANKS:
            raise ValueError(f"--throttle joins {RANKS} ranks by one link: --ranks must be {RANKS}, got {ranks}")
        why = why_not()
        if why:
            raise ValueError(f"--throttle {throttle}: cannot build a throttled link here ({why})")
        try:  # built and removed once, so that a kernel without tbf or a root without CAP_NET_ADMIN is told now
            with throttled_link(throttle):
                pass
        except LaunchError as e:
            raise ValueError(f"--throttle {throttle}: {e}") from None
    spec = exp.series[series]
    if not isinstance(spec.oracle, NetworkOracle):
        raise ValueError(f"--ranks times DDP steps of a network, and series {series} of {exp.name!r} is a "
                         f"{type(spec.problem).__name__} problem: give the link as --bandwidth and --latency instead")


def rank_main(job: dict[str, Any], result_path: Path) -> int:
    """One rank of ``measure_series``: rank 0 saves the ``GroupCosts`` as a dict to ``result_path``."""
    from compsde.distributed.backend import rank_entry, rank_session
    from compsde.distributed.worker import inject_fault

    def main() -> None:
        from compsde.advise import parse_method
        from compsde.experiments import build as config_mod
        from compsde.objectives.network import NetworkOracle

        exp = config_mod.build(job["config"], job["name"])
        oracle = exp.series[int(job["series"])].oracle
        if not isinstance(oracle, NetworkOracle):
            raise ValueError(f"series {job['series']} of {exp.name!r} has no network to time")
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        n = int(oracle.x_train.shape[0])
        b = int(oracle.batch)
        start = (rank * b) % max(1, n - b + 1)  # each rank its own samples
        batch = (oracle.x_train[start:start + b], oracle.y_train[start:start + b])
        model = oracle.base_model

        def loss(m: torch.nn.Module, xy: Any) -> torch.Tensor:
            return oracle.loss_fn(m(xy[0]), xy[1])

        methods = [parse_method(m)[1] for m in job["methods"]]
        timed = [parse_method(m)[1] for m in job["timed"]]
        settings = {"config": job["config"], "series": job["series"], "methods": job["methods"], "timed": job["timed"]}

        def body(ctx: Any, set_where: Any) -> Any:
            set_where("measuring the link, the compute and the hooks")
            inject_fault(rank, 0, 0)  # tests only: compsde.distributed.worker.FAULT_ENV
            return measure_group(model, loss, batch, methods, timed=timed, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                 steps=int(job["steps"]), rounds=int(job["rounds"]))

        _, costs = rank_session(world, "cpu", float(job["timeout"]), settings, body)
        if rank == 0:
            torch.save(_plain(costs.as_dict()), result_path)

    return rank_entry(main)


def _plain(v: Any) -> Any:
    """Floats, ints, strings, lists and dicts only (what ``torch.load(weights_only=True)`` reads back)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"a measured cost is not finite: {v}")
    return v
