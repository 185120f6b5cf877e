"""Prune while training with DistributedDataParallel: one process per device, launched by torchrun.

    torchrun --nproc_per_node 2 examples/train_ddp.py [--steps 40]

Runs on CPU with the gloo backend (NCCL on GPUs when there is one per process). Every rank builds
the same pruning from the same config; ranks end with identical masks and weights.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pytorch_pruner import Pruning

CONFIG = {
    "prune_type": "snip_momentum",
    "pattern": "4x1",
    "target_sparsity": 0.8,
    "start_step": 5,
    "end_step": 30,
    "update_frequency_on_step": 5,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("WORLD_SIZE", "1"))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)
    ddp = DistributedDataParallel(model)
    pruning = Pruning(CONFIG)
    pruning.on_train_begin(ddp)  # wrap first, then start pruning; names are the plain model's
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(rank)  # each rank its own batches, as a DistributedSampler gives
    for step in range(args.steps):
        pruning.on_step_begin(step)
        x = torch.randn(32, 64, generator=data).to(device)
        loss = nn.functional.cross_entropy(ddp(x), (x[:, 0] > 0).long())
        loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    if rank == 0:
        print(pruning.report())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
