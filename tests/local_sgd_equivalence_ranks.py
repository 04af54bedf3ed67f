"""One rank of ``test_local_sgd_driver_equals_the_simulator``: ``compsde.distributed.LocalSGD`` around
``torch.optim.SGD`` with momentum, fed the gradients the simulator's workers draw (the same oracle, the same
per-worker noise streams), in a gloo group started by ``compsde.distributed.launch.spawn``.

    python tests/local_sgd_equivalence_ranks.py OUT.json CASE     (RANK, WORLD_SIZE, COMPSDE_INIT_METHOD set)

Rank 0 writes the final parameters and the communication counters.
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from compsde.algorithms.sync import SyncSchedule
from compsde.core.streams import Streams
from compsde.distributed.local_sgd import LocalSGD
from compsde.objectives import Noise, Oracle, problems

STEPS, LR, MOMENTUM, SEED = 12, 0.05, 0.5, 3

#: the driver's options per case; tests/test_local.py builds the same method for the simulator
CASES = {
    "diloco-top-k-ef": {"sync": SyncSchedule("constant", period=3), "compressor": "top-k", "k": 2,
                        "error_feedback": True, "outer": {"momentum": 0.9, "nesterov": True}, "outer_lr": 0.7},
    "rand-k-state-averaged": {"sync": SyncSchedule("post-local", period=4, switch_step=3), "compressor": "rand-k",
                              "k": 3, "average_state": True},
}


def oracle(workers: int) -> Oracle:
    return Oracle(problems.make("quadratic", dim=6, rotate=True, heterogeneity=1.0), Noise("gaussian", 0.5),
                  workers=workers)


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=os.environ["COMPSDE_INIT_METHOD"], rank=rank, world_size=world)
    o = oracle(world)
    x = torch.nn.Parameter(o.x0().clone())
    opt = torch.optim.SGD([x], lr=LR, momentum=MOMENTUM)
    local = LocalSGD(opt, total_steps=STEPS, seed=SEED, **CASES[sys.argv[2]])
    streams = Streams(SEED, world, noise=[rank])  # the simulator's noise stream of worker `rank`
    for _ in range(STEPS):
        z = o.sample(streams, [rank], 1)
        x.grad = o.grads(x.detach().view(1, 1, -1), rank, rank + 1, z)[0, 0]
        local.step()
    if rank == 0:
        with open(sys.argv[1], "w") as fh:
            json.dump({"x": x.detach().tolist(), "rounds": local.rounds, "bytes": local.bytes}, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    # leave as compsde's own ranks do (compsde.distributed.backend.child_main): gloo's destructors can abort at exit
    os._exit(0)
