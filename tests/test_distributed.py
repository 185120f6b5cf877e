"""torch.distributed: DDP ranks end identical (FSDP2: tests/test_fsdp2.py).

Two processes on CPU with the gloo backend, rendezvous through a file in tmp_path (no port to
pick, so no clash with other runs). One spawn serves every test of this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pytorch_pruner import Pruning, PruningError

from .conftest import make_mlp

WORLD = 2
STEPS = 8
CONFIG = {
    "start_step": 2,
    "end_step": 6,
    "update_frequency_on_step": 2,
    "target_sparsity": 0.5,
    "pruners": [
        # names written without DDP's `module.` prefix: the wrapper is looked through
        {"names": ["^fc"], "prune_type": "snip_momentum", "pattern": "4x1"},
        {"names": ["^head$"], "prune_type": "magnitude", "pattern": "1x1"},
    ],
}

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def _train_ddp(rank: int) -> dict[str, Any]:
    torch.manual_seed(rank)  # ranks start different: DDP must broadcast rank 0's weights
    model = make_mlp()
    ddp = DistributedDataParallel(model)
    pruning = Pruning(CONFIG)
    pruning.on_train_begin(ddp)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches, as a sampler gives
    for step in range(STEPS):
        for micro in range(2):  # gradient accumulation: no all-reduce until the last micro-batch
            pruning.on_step_begin(step * 2 + micro)
            context = ddp.no_sync() if micro == 0 else torch.enable_grad()
            with context:
                ddp(torch.randn(16, 32, generator=data)).pow(2).mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    return {
        "step": pruning.step,
        "names": [[layer.name for layer in p.layers] for p in pruning.pruners],
        "masks": pruning.masks(),
        "scores": [s.clone() for s in pruning.pruners[0].criterion.scores()],
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "zero_where_pruned": all(
            bool((layer.target.weight.detach()[~p.full_mask(layer)] == 0).all())
            for p in pruning.pruners
            for layer in p.layers
        ),
        "sparsity": [
            sum(layer.pruned_elements for layer in p.layers) / sum(layer.numel for layer in p.layers)
            for p in pruning.pruners
        ],
    }


def _input_statistics(rank: int) -> dict[str, torch.Tensor]:
    """wanda's mean x^2 and sparsegpt's Hessian from this rank's share of the tokens (all-reduced)."""
    from pytorch_pruner.criteria import ActivationStats, HessianStats

    mean, hessian = ActivationStats(3, torch.device("cpu")), HessianStats(3, torch.device("cpu"))
    tokens = _STATS_TOKENS[rank]
    mean.update_(tokens)
    hessian.update_(tokens)
    return {"mean_sq": mean.mean(), "hessian": hessian.hessian()}


# ranks see different numbers of tokens: the all-reduce must weight by count
_STATS_TOKENS = [torch.arange(6.0).reshape(2, 3), torch.arange(12.0).reshape(4, 3) - 5.0]


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        result = _train_ddp(rank)
        result["statistics"] = _input_statistics(rank)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_ddp_ranks_end_with_identical_masks_and_weights(ranks: list[dict[str, Any]]) -> None:
    first, second = ranks
    assert first["step"] == second["step"] == STEPS  # optimizer steps, not the 16 micro-batches
    assert first["names"] == [["fc1", "fc2"], ["head"]]
    assert first["masks"].keys() == second["masks"].keys()
    for name in first["masks"]:
        assert torch.equal(first["masks"][name], second["masks"][name]), name
    for a, b in zip(first["scores"], second["scores"], strict=True):
        assert torch.equal(a, b)
    for name in first["weights"]:
        assert torch.equal(first["weights"][name], second["weights"][name]), name


def test_ddp_run_reaches_the_target_with_exact_zeros(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert result["zero_where_pruned"]
        assert result["sparsity"] == [pytest.approx(0.5, abs=1e-9)] * 2


def test_input_statistics_are_all_reduced_as_one_process_would_count_them(ranks: list[dict[str, Any]]) -> None:
    everything = torch.cat(_STATS_TOKENS)
    for result in ranks:
        torch.testing.assert_close(result["statistics"]["mean_sq"], everything.pow(2).mean(0))
        torch.testing.assert_close(result["statistics"]["hessian"], 2.0 / 6 * everything.t() @ everything)


def test_deepspeed_zero3_partitioned_parameters_are_refused_clearly() -> None:
    # ZeRO-3 leaves an empty placeholder per parameter, marked with ds_id (simulated: no deepspeed here)
    model = make_mlp()
    before = {name: p.shape for name, p in model.named_parameters()}
    for p in model.parameters():
        p.ds_id, p.ds_shape = 0, p.shape
        p.data = torch.empty(0)
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1"})
    message = r"partitioned by DeepSpeed ZeRO stage 3 \(fc1.weight, .*Use ZeRO stage 1 or 2"
    with pytest.raises(PruningError, match=message):
        pruning.on_train_begin(model)
    assert pruning.pruners == [] and {n: p.ds_shape for n, p in model.named_parameters()} == before


def test_fsdp1_wrapped_models_are_refused_clearly() -> None:
    # FSDP1 needs an accelerator to wrap; its wrapper class is recognised by name (simulated here)
    class FullyShardedDataParallel(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    model = make_mlp()
    model.fc2 = FullyShardedDataParallel(model.fc2)
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1"})
    with pytest.raises(PruningError, match=r"fc2 is wrapped in FSDP1 .*fully_shard"):
        pruning.on_train_begin(model)
    assert pruning.pruners == []


def test_a_state_gathered_from_fsdp2_ranks_needs_as_many_ranks() -> None:
    from pytorch_pruner import StateError
    from pytorch_pruner.distributed import own_state

    plain = {"format": 1}
    assert own_state(plain) is plain  # states of unsharded runs pass through
    with pytest.raises(StateError, match=r"saved by 2 FSDP2 ranks, this run has 1; resume on 2 ranks"):
        own_state({"ranks": [plain, plain]})


@pytest.mark.parametrize(
    ("backend", "cpu"),
    [
        ("gloo", True),
        ("nccl", False),
        ("cuda:nccl", False),  # NCCL registered for CUDA tensors only: counts must go through the GPU
        ("cpu:gloo,cuda:nccl", True),  # init_process_group(device_id=...)'s default: CPU tensors go to gloo
        ("cuda:nccl,cpu:gloo", True),
        ("mpi", True),
    ],
)
def test_which_backends_reduce_cpu_tensors(backend: str, cpu: bool) -> None:
    from pytorch_pruner.distributed import reduces_cpu_tensors

    assert reduces_cpu_tensors(backend) is cpu


def test_a_one_process_gloo_group_reduces_on_the_cpu(tmp_path: Path) -> None:
    from pytorch_pruner.distributed import ProcessGroupComm

    dist.init_process_group("cpu:gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        comm = ProcessGroupComm()
        assert comm.device == torch.device("cpu")
    finally:
        dist.destroy_process_group()
