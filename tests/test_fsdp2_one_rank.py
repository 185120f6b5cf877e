"""FSDP2 in one process (a 1-rank gloo mesh): what needs whole weights refuses sharded ones, and
input statistics are summed over the weights' mesh, not over the default group."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pytorch_pruner import Pruning, PruningError, prune_oneshot_
from pytorch_pruner.criteria import activation
from pytorch_pruner.speed import slim_

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[Any]:
    """A 1-rank gloo group and CPU mesh, torn down after the test."""
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _sharded_mlp(mesh: Any) -> nn.Sequential:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def test_one_shot_pruning_refuses_sharded_weights_and_changes_nothing(one_rank: Any) -> None:
    model = _sharded_mlp(one_rank)
    before = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    config = {"target_sparsity": 0.5, "pruners": [{"prune_type": "wanda", "pattern": "1x1"}]}
    with pytest.raises(PruningError, match=r"prune_oneshot_ needs whole weights.*0\.weight.*Gather the model"):
        prune_oneshot_(model, config, [torch.randn(4, 16)], progress=False)
    after = {k: v.full_tensor() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_slimming_refuses_sharded_weights(one_rank: Any) -> None:
    model = _sharded_mlp(one_rank)
    with pytest.raises(PruningError, match=r"slim_ needs whole weights.*fully_shard"):
        slim_(model)


def test_wanda_sums_its_statistics_over_the_weights_mesh(one_rank: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _sharded_mlp(one_rank)
    config = {
        "start_step": 1,
        "end_step": 1,
        "target_sparsity": 0.5,
        "pruners": [{"names": ["^0$"], "prune_type": "wanda", "pattern": "1x1"}],
    }
    pruning = Pruning(config)
    pruning.on_train_begin(model)
    mesh_group = one_rank.get_group()
    groups: list[Any] = []
    real = activation.ProcessGroupComm.sum_

    def spy(self: Any, tensor: torch.Tensor) -> torch.Tensor:
        groups.append(self.group)  # one rank: the sum itself is a no-op; which group it is over is the point
        return real(self, tensor)

    monkeypatch.setattr(activation.ProcessGroupComm, "sum_", spy)
    pruning.on_step_begin(0)
    model(torch.randn(8, 16)).sum().backward()
    pruning.on_before_optimizer_step()
    pruning.on_after_optimizer_step()
    pruning.on_step_begin(1)  # the pruning step: wanda reads its all-reduced input statistics
    assert groups, "wanda's statistics were not all-reduced on the pruning step"
    assert groups.count(mesh_group) >= 1 and None not in groups
    sparsity = float((model[0].weight.full_tensor() == 0).float().mean())
    assert sparsity == pytest.approx(0.5)
