"""One rank of ``test_ddp_hook_trains_models_in_one_group``: several comm-hook configurations, in turn, in one
gloo group started by ``compsde.distributed.launch.spawn`` (one launch instead of one torchrun per
configuration).

    python tests/ddp_hook_ranks.py OUT.json     (RANK, WORLD_SIZE, COMPSDE_INIT_METHOD set by spawn)

First, ranks registering different configurations (``MISMATCHES``: rank r passes its own entry) must
each get a ValueError from their first backward, naming what differs, and the group must stay usable.
Then each configuration of ``CONFIGS`` trains a fresh DistributedDataParallel MLP on the synthetic task
of ``examples/ddp_train.py`` (a fixed teacher; each rank its own batches) with the hook; rank 0 writes,
per configuration, the held-out losses, whether the replicas ended identical, and the bytes per step,
and every rank its mismatch messages: ``{"train": {...}, "mismatch": {rank: {name: message}}}``.
"""

import gc
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from compsde.distributed import comm_hook

#: name → (comm_hook arguments, learning rate)
CONFIGS = {
    "sign-majority": ({"compressor": "sign", "aggregation": "majority"}, 0.002),
    "top-k-ef": ({"compressor": "top-k", "ratio": 0.05, "error_feedback": True}, 0.05),
    "rand-k": ({"compressor": "rand-k", "ratio": 0.25}, 0.02),  # indices replayed by the receivers, not sent
    "qsgd": ({"compressor": "qsgd", "levels": 4}, 0.05),
}
#: name → comm_hook arguments of rank 0 and rank 1 (without the checks, the first two abort inside gloo
#: on buffers of different sizes, and the third runs on with replicas drifting apart)
MISMATCHES = {
    "compressor": ({"compressor": "sign"}, {"compressor": "top-k", "k": 2}),
    "k": ({"compressor": "top-k", "k": 2}, {"compressor": "top-k", "k": 3}),
    "seed": ({"compressor": "rand-k", "k": 3, "seed": 7}, {"compressor": "rand-k", "k": 3, "seed": 8}),
    "error_feedback": ({"compressor": "top-k", "k": 2, "error_feedback": True}, {"compressor": "top-k", "k": 2}),
}
STEPS, BATCH, DIM, HIDDEN = 150, 32, 16, 64


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))


def train(name: str, rank: int, world: int) -> dict:
    kwargs, lr = CONFIGS[name]
    torch.manual_seed(1234)
    teacher = mlp()
    x_test = torch.randn(512, DIM)
    with torch.no_grad():
        y_test = teacher(x_test)
    torch.manual_seed(0)
    model = DDP(mlp())
    state, hook = comm_hook(seed=7, **kwargs)
    model.register_comm_hook(state, hook)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(10_000 + rank)

    def test_loss() -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(model.module(x_test), y_test))

    first = test_loss()
    for _ in range(STEPS):
        xb = torch.randn(BATCH, DIM, generator=data)
        with torch.no_grad():
            yb = teacher(xb) + 0.05 * torch.randn(BATCH, 1, generator=data)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    return {"initial_loss": first, "final_loss": test_loss(), "replicas_identical": all(torch.equal(every[0], t) for t in every),
            "params": flat.numel(), "wire_bytes_per_step": state.wire_bytes_per_step(),
            "declared_bits_per_step": state.declared_bits_per_step(), "fp32_bytes_per_step": 4 * flat.numel()}


def mismatch(name: str, rank: int) -> str:
    """One backward with this rank's entry of ``MISMATCHES[name]``: the error's type and message."""
    torch.manual_seed(0)
    model = DDP(mlp())
    state, hook = comm_hook(**MISMATCHES[name][rank])
    model.register_comm_hook(state, hook)
    try:
        model(torch.randn(BATCH, DIM)).sum().backward()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=os.environ["COMPSDE_INIT_METHOD"], rank=rank, world_size=world)
    refused = {name: mismatch(name, rank) for name in MISMATCHES}
    every: list = [None] * world
    dist.all_gather_object(every, refused)
    results = {name: train(name, rank, world) for name in CONFIGS}  # the group still works
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"train": results, "mismatch": every}, f)
    gc.collect()  # DDP processes sometimes abort at exit without this (environment.md)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # leave as compsde's own ranks do (compsde.distributed.backend.child_main): gloo's destructors can abort at exit
    os._exit(0)
