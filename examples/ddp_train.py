"""Train a small MLP with DistributedDataParallel and a compsde compression hook.

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py --compressor sign --aggregation majority
    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py --compressor top-k --ratio 0.05 --error-feedback
    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py --compressor rand-k --ratio 0.1

Data: a synthetic regression task, no download. A fixed random "teacher" MLP labels Gaussian inputs
(plus noise); each rank draws its own training batches (seeded by its rank), all ranks evaluate on
the same held-out set. The hook replaces DDP's gradient all-reduce: every rank sends its compressed
gradient (bit-packed signs, top-k values and indices, ...) and receives the aggregate.

Prints the held-out loss every ``--log-every`` steps (rank 0) and, at the end, one JSON line:
``{"initial_loss", "final_loss", "wire_bytes_per_step", "fp32_bytes_per_step", "declared_bits_per_step", ...}``.
"""

import argparse
import gc
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from compsde.distributed import comm_hook


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compressor", default="sign", help="a compsde compressor name (default sign)")
    p.add_argument("--ratio", type=float, default=None, help="kept fraction for rand-k / top-k")
    p.add_argument("--levels", type=int, default=None, help="levels for qsgd / natural-dithering")
    p.add_argument("--aggregation", default="mean", choices=("mean", "majority"))
    p.add_argument("--error-feedback", action="store_true")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=None, help="default: 0.002 for sign-based messages, else 0.05")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args()


def mlp(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(1234)  # the teacher and the held-out set: the same on every rank
    teacher = mlp(args.dim, args.hidden)
    x_test = torch.randn(1024, args.dim)
    with torch.no_grad():
        y_test = teacher(x_test)

    torch.manual_seed(args.seed)  # the same initial student on every rank (DDP also broadcasts it)
    model = DDP(mlp(args.dim, args.hidden))
    params = {k: v for k, v in (("ratio", args.ratio), ("levels", args.levels)) if v is not None}
    state, hook = comm_hook(args.compressor, error_feedback=args.error_feedback, aggregation=args.aggregation,
                            seed=args.seed, **params)
    model.register_comm_hook(state, hook)
    sign_like = args.compressor in ("sign", "scaled-sign") or args.aggregation == "majority"
    lr = args.lr if args.lr is not None else (0.002 if sign_like else 0.05)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(10_000 + rank)  # each rank its own batches

    def test_loss() -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(model.module(x_test), y_test))

    first = test_loss()
    for step in range(args.steps):
        xb = torch.randn(args.batch, args.dim, generator=data)
        with torch.no_grad():
            yb = teacher(xb) + 0.05 * torch.randn(args.batch, 1, generator=data)
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(xb), yb).backward()  # the hook runs inside backward
        opt.step()
        if rank == 0 and (step + 1) % args.log_every == 0:
            print(f"step {step + 1:5d}  held-out loss {test_loss():.5f}", flush=True)

    last = test_loss()
    n_params = sum(p.numel() for p in model.parameters())
    # The ranks must hold the same model: they apply the same aggregated gradient (a replayed draw
    # that differed between ranks would show here).
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    same = all(torch.equal(every[0], t) for t in every)
    if rank == 0:
        print(json.dumps({
            "compressor": repr(state.compressor), "aggregation": args.aggregation,
            "error_feedback": args.error_feedback, "world": world, "steps": args.steps, "params": n_params,
            "initial_loss": first, "final_loss": last,
            "wire_bytes_per_step": state.wire_bytes_per_step(), "fp32_bytes_per_step": 4 * n_params,
            "declared_bits_per_step": state.declared_bits_per_step(), "buckets": len(state.bucket_bytes),
            "replicas_identical": same,
        }), flush=True)
    # DDP processes sometimes abort at exit without this (environment.md).
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
