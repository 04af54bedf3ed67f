"""One rank of ``test_local_sgd_wrapper_in_a_real_group``: ``compsde.distributed.LocalSGD`` around AdamW in a
2-process gloo group started by ``compsde.distributed.launch.spawn``.

    python tests/local_sgd_ranks.py OUT.json     (RANK, WORLD_SIZE, COMPSDE_INIT_METHOD set by spawn)

Each rank trains its own replica of a small linear model on its own batches under a QSR schedule and a
decaying learning rate; rank 0 writes the steps that averaged, whether the replicas were equal right
after each averaging (and different in between), and a resume check: a run restored from the state
saved mid-period ends with the same parameters as the uninterrupted one.
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from compsde.algorithms.sync import SyncSchedule
from compsde.distributed.local_sgd import LocalSGD

STEPS = 40


def run(rank: int, world: int, stop_at: int | None = None, resume: dict | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k) ** 0.5)
    local = LocalSGD(opt, SyncSchedule("qsr", period=2, alpha=0.06), total_steps=STEPS, average_state=False)
    gen = torch.Generator().manual_seed(100 + rank)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        local.load_state_dict(resume["local"])
        sched.load_state_dict(resume["sched"])
        gen.set_state(resume["gen"])
        start = local.steps
    averaged, equal_after, differ_between = [], [], []
    for k in range(start, STEPS):
        if stop_at is not None and k == stop_at:
            return {"model": model.state_dict(), "local": local.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state()}
        x = torch.randn(16, 6, generator=gen)
        loss = (model(x).squeeze(-1) - x.sum(-1)).square().mean()
        opt.zero_grad()
        loss.backward()
        did = local.step()
        sched.step()
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        every = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(every, flat)
        same = all(torch.equal(every[0], e) for e in every)
        if did:
            averaged.append(k + 1)
            equal_after.append(same)
        else:
            differ_between.append(not same)
    return {"averaged": averaged, "equal_after": all(equal_after), "differ_between": all(differ_between),
            "rounds": local.rounds, "bytes": local.bytes, "final": [p.detach().tolist() for p in model.parameters()]}


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=os.environ["COMPSDE_INIT_METHOD"], rank=rank, world_size=world)
    full = run(rank, world)
    saved = run(rank, world, stop_at=13)  # mid-period under this schedule
    resumed = run(rank, world, resume=saved)
    refused = []
    for kw in ({"sync": SyncSchedule("constant", period=2 + rank)},  # every option that changes the rounds
               {"sync": SyncSchedule("constant", period=2), "average_state": rank == 0},
               {"sync": SyncSchedule("constant", period=2), "error_feedback": rank == 0, "compressor": "top-k", "k": 1}):
        try:
            LocalSGD(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), total_steps=10, **kw)
            refused.append(False)
        except ValueError as e:
            refused.append("disagree" in str(e))
    refused = all(refused)
    if rank == 0:
        out = {**full, "resume_equal": resumed["final"] == full["final"], "disagreement_refused": refused}
        with open(sys.argv[1], "w") as fh:
            json.dump(out, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    # leave as compsde's own ranks do (compsde.distributed.backend.child_main): gloo's destructors can abort at exit
    os._exit(0)
