"""Prune while training with FSDP2 (``fully_shard``): one process per device, launched by torchrun.

    torchrun --nproc_per_node 2 examples/train_fsdp2.py [--steps 40] [--checkpoint DIR] [--export FILE]

Runs on CPU with the gloo backend (NCCL on GPUs when there is one per process). Each rank holds
only its rows of every weight, and of every mask and score; a pruning step ranks all ranks'
scores together, so the masks are those one process would compute. ``--checkpoint`` saves the
model, optimizer and pruning state with torch.distributed.checkpoint at the end; ``--export``
writes the gathered sparse model (safetensors) from rank 0.
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from pytorch_pruner import Pruning

CONFIG = {
    "prune_type": "snip_momentum",
    "pattern": "4x1",  # 4 rows per block: each rank's rows (256 / 2) must hold whole blocks
    "target_sparsity": 0.8,
    "start_step": 5,
    "end_step": 30,
    "update_frequency_on_step": 5,
    # the 10-row head splits into 5 + 5 rows, which 4-row blocks would straddle: on_train_begin would
    # refuse it (naming the layer and the fix), so it stays dense
    "excluded_names": ["^head$"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint", help="folder for a torch.distributed.checkpoint of the final state")
    parser.add_argument("--export", help="sparse safetensors file of the gathered model, written by rank 0")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ.get("WORLD_SIZE", "1"))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    torch.manual_seed(0)
    layers = [("fc1", nn.Linear(64, 256)), ("act1", nn.ReLU()), ("fc2", nn.Linear(256, 256)), ("act2", nn.ReLU())]
    model = nn.Sequential(OrderedDict([*layers, ("head", nn.Linear(256, 10))])).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    pruning = Pruning(CONFIG)
    pruning.on_train_begin(model)  # shard first, then start pruning
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(rank)  # each rank its own batches, as a DistributedSampler gives
    for step in range(args.steps):
        pruning.on_step_begin(step)
        x = torch.randn(32, 64, generator=data).to(device)
        loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
        loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    report = pruning.report()  # a collective: every rank calls it (the counts are summed over ranks)
    if rank == 0:
        print(report)
    if args.checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state, "pruning": pruning.state_dict()}
        dcp.save(state, checkpoint_id=args.checkpoint)
    if args.export:
        from pytorch_pruner.export import save_sparse

        save_sparse(args.export, model, pruning)  # every rank gathers; rank 0 writes
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
