"""The FSDP2 code path on a GPU: one process, a 1-rank NCCL group and CUDA mesh (issue #12).

Skipped without CUDA (the ``gpu`` marker) or without NCCL: run ``pytest -m gpu`` where a GPU is
lent. With one rank every shard is the whole weight, so the sharded run must prune exactly what an
unsharded copy of the same model prunes, keep the pruned weights exactly zero through training, and
its ordinary steps must not make the host wait for the GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pytorch_pruner import Pruning

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (marked gpu)"),
    pytest.mark.skipif(not dist.is_available() or not dist.is_nccl_available(), reason="needs NCCL"),
]


@pytest.fixture
def cuda_mesh(tmp_path: Path) -> Iterator[Any]:
    from torch.distributed.device_mesh import init_device_mesh

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cuda", (1,))
    finally:
        dist.destroy_process_group()


def _config() -> dict[str, Any]:
    return {
        "start_step": 2,
        "end_step": 8,
        "pruning_frequency": 2,
        "target_sparsity": 0.75,
        "pruners": [{"prune_type": "magnitude", "pattern": "4x1", "prune_layer_type": ["Linear"]}],
    }


def _train(model: nn.Module, pruning: Pruning, steps: int, guard: bool) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for step in range(steps):
        pruning.on_step_begin(step)
        x = torch.randn(16, 64, device="cuda", generator=generator)
        model(x).square().mean().backward()
        ordinary = not any(p.schedule.is_pruning_step(step) for p in pruning.pruners)
        if guard and ordinary:  # the per-step hooks of an ordinary step must not wait for the GPU
            torch.cuda.set_sync_debug_mode("error")
        try:
            pruning.on_before_optimizer_step()
            optimizer.step()
            pruning.on_after_optimizer_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        optimizer.zero_grad()


def test_sharded_run_on_a_one_rank_nccl_mesh_prunes_as_the_unsharded_one(cuda_mesh: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)).cuda()
    sharded = copy.deepcopy(dense)
    fully_shard(sharded[0], mesh=cuda_mesh)
    fully_shard(sharded[2], mesh=cuda_mesh)
    fully_shard(sharded, mesh=cuda_mesh)

    plain, fsdp = Pruning(_config()), Pruning(_config())
    plain.on_train_begin(dense)
    fsdp.on_train_begin(sharded)
    _train(dense, plain, 10, guard=False)
    _train(sharded, fsdp, 10, guard=True)

    for i in (0, 2):
        whole = sharded[i].weight.full_tensor()
        assert whole.is_cuda
        assert torch.equal(whole == 0, dense[i].weight == 0)  # the same positions pruned
    report = fsdp.report()
    assert report.block_sparsity == pytest.approx(0.75, abs=0.01)
    assert report.block_sparsity == pytest.approx(plain.report().block_sparsity)


def test_input_statistics_held_on_the_cpu_are_summed_over_nccl(cuda_mesh: Any) -> None:
    """Statistics beside weights kept on the CPU (e.g. FSDP2's CPU offload) are all-reduced through
    the GPU: NCCL refused the CPU tensors ("No backend type associated with device type cpu")."""
    from pytorch_pruner.criteria.activation import ActivationStats, HessianStats

    x = torch.randn(16, 8)
    act, hess = ActivationStats(8, torch.device("cpu")), HessianStats(8, torch.device("cpu"))
    act.update_(x)
    hess.update_(x)
    group = cuda_mesh.get_group()
    mean, h = act.mean(group), hess.hessian(group)
    assert mean.device.type == h.device.type == "cpu"
    torch.testing.assert_close(mean, x.pow(2).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, 2 * x.t() @ x / 16, rtol=1e-5, atol=1e-6)
