"""Criteria pinned to values computed by hand, through the real hooks of a training loop.

The gradient criteria are computed here from the weights and gradients each
``on_before_optimizer_step`` sees, and compared with what the engine holds and with the masks it
chooses. A criterion (or a hook) whose accumulation is stubbed out, skipped, done after the
optimizer update or on the wrong steps fails these tests.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning

DECAY = {"snip": 0.0, "snip_momentum": 0.9}


def make_model() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(2, 4, 3),  # weight [4, 2, 3, 3] -> 2-D [4, 18], input channel fastest
            act=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(4 * 3 * 3, 8),  # [8, 36]
            act2=nn.ReLU(),
            head=nn.Linear(8, 4),  # [4, 8]
        )
    )


def to_2d(name: str, t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1) if name == "conv" else t


def block_means(t2d: torch.Tensor, n: int) -> torch.Tensor:
    """Mean over n consecutive rows at each column (an ``nx1`` block), flattened row-block-major."""
    rows, cols = t2d.shape
    return t2d.reshape(rows // n, n, cols).mean(dim=1).reshape(-1)


def run(criterion: str, n: int, steps: int, start: int) -> tuple[Pruning, nn.Module, dict[str, torch.Tensor]]:
    """Train with the seed's loop; return the hand-computed element scores before step *start*."""
    model = make_model()
    layers = {"conv": model.conv, "fc": model.fc, "head": model.head}
    pruning = Pruning(
        {
            "prune_type": criterion,
            "pattern": f"{n}x1",
            "target_sparsity": 0.5,
            "prune_domain": "local",
            "start_step": start,
            "end_step": start,
        }
    )
    pruning.on_train_begin(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # large steps: the weights move a lot
    expected = {name: torch.zeros_like(to_2d(name, m.weight)) for name, m in layers.items()}
    for step in range(steps):
        pruning.on_step_begin(step)
        if step == start:
            break
        model(torch.randn(8, 2, 5, 5)).pow(2).mean().backward()
        for name, m in layers.items():
            term = to_2d(name, (m.weight.detach() * m.weight.grad).abs())
            if criterion == "snip" and step != start - 1:
                continue  # snip scores only the step just before the pruning step
            expected[name] = DECAY[criterion] * expected[name] + term
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    return pruning, model, expected


@pytest.mark.parametrize("criterion", ["snip", "snip_momentum"])
@pytest.mark.parametrize("n", [1, 4])
def test_gradient_scores_equal_the_hand_computed_ones(criterion: str, n: int) -> None:
    start = 5
    pruning, _, expected = run(criterion, n, steps=start, start=start)
    (pruner,) = pruning.pruners
    assert [layer.name for layer in pruner.layers] == ["conv", "fc", "head"]
    for layer, score in zip(pruner.layers, pruner.criterion.scores(), strict=True):
        want = block_means(expected[layer.name], n)
        assert want.abs().sum() > 0
        torch.testing.assert_close(score.reshape(-1).float(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("criterion", ["snip", "snip_momentum"])
def test_the_pruning_step_keeps_the_blocks_of_highest_hand_computed_score(criterion: str) -> None:
    n, start = 4, 4
    pruning, model, expected = run(criterion, n, steps=start + 1, start=start)
    masks = pruning.masks()
    for name in ("conv", "fc", "head"):
        scores = block_means(expected[name], n)
        pruned = scores.argsort()[: scores.numel() // 2]  # local ranking: the lower half goes
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep[pruned] = False
        rows, cols = expected[name].shape
        keep2d = keep.reshape(rows // n, 1, cols).expand(rows // n, n, cols).reshape(rows, cols)
        assert torch.equal(to_2d(name, masks[name]), keep2d), name
        weight = to_2d(name, getattr(model, name).weight.detach())
        assert (weight[~keep2d] == 0).all()
