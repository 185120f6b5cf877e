"""Run by tests/test_integrations_fsdp2.py: Lightning's ModelParallelStrategy (FSDP2 on a 1-D mesh)
on 2 CPU processes with PruningCallback. Lightning re-runs this script for rank 1. Each rank writes
what the test checks to ``<out>/rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from pytorch_pruner.distributed import is_dtensor
from pytorch_pruner.integrations.lightning import PruningCallback


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def main(out: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 16, generator=g), torch.randn(256, 1, generator=g))
    config = {
        "start_step": 1,
        "end_step": 6,
        "update_frequency_on_step": 2,
        "target_sparsity": 0.5,
        "pruners": [{"names": [r"net\.[02]$"], "prune_type": "snip_momentum", "pattern": "4x1"}],
    }
    callback = PruningCallback(config)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        callbacks=[callback],
        max_steps=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Net()
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=16))
    pruning = callback.pruning
    report = pruning.report()  # a collective under FSDP2: every rank calls it
    masks = pruning.masks()
    zero_outside_masks = []
    for name in ("net.0", "net.2"):
        weight = model.get_submodule(name).weight
        full = weight.full_tensor()
        mask = masks[name]
        mask = mask.full_tensor() if is_dtensor(mask) else mask
        zero_outside_masks.append(bool((full[~mask.bool()] == 0).all()) and int((~mask.bool()).sum()) > 0)
    result = {
        "rank": trainer.global_rank,
        "sharded": [layer.target.shard is not None for layer in pruning.pruners[0].layers],
        "dtensor": [is_dtensor(model.get_submodule(n).weight) for n in ("net.0", "net.2")],
        "block_sparsity": report.block_sparsity,
        "pruned_are_zero": zero_outside_masks,
        "step": pruning.step,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
