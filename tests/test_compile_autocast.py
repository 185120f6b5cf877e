"""torch.compile'd models, bf16 autocast on CPU, and GradScaler overflow steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning

from .conftest import make_mlp

WINDOW = {"start_step": 1, "end_step": 5, "update_frequency_on_step": 2}


def _config(**keys: Any) -> dict[str, Any]:
    return {"prune_type": "snip_momentum", "pattern": "4x1", "target_sparsity": 0.5, **WINDOW, **keys}


def _train(model: nn.Module, pruning: Pruning, steps: int, dtype: torch.dtype | None = None) -> None:
    """The seed's loop; under ``torch.autocast("cpu", dtype)`` when *dtype* is given."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        pruning.on_step_begin(step)
        x = torch.randn(16, 32, generator=data)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model(x.to(next(model.parameters()).dtype)).float().pow(2).mean()
        loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()


def _assert_exactly_sparse(pruning: Pruning, target: float) -> None:
    for pruner in pruning.pruners:
        pruned = sum(layer.pruned_elements for layer in pruner.layers)
        assert pruned / sum(layer.numel for layer in pruner.layers) == pytest.approx(target, abs=1e-9)
        for layer in pruner.layers:
            weight = layer.target.weight.detach()
            assert bool((weight[~pruner.full_mask(layer)] == 0).all()), layer.name


# -- torch.compile ----------------------------------------------------------------------------


def test_compiled_model_prunes_under_its_plain_layer_names() -> None:
    model = make_mlp()
    # aot_eager traces forward and backward as inductor does, without minutes of C++ compiling on CPU
    compiled = torch.compile(model, backend="aot_eager")
    assert any(name.startswith("_orig_mod.") for name, _ in compiled.named_modules())
    # anchored regexes are written for the plain model and still match the compiled one
    pruning = Pruning(_config(names=["^fc"], not_to_prune_names=["^fc2$"]))
    pruning.on_train_begin(compiled)
    counters = torch._dynamo.utils.counters
    counters.clear()
    _train(compiled, pruning, steps=6)
    # masks change the parameters in place, between calls: nothing for dynamo to recompile
    assert counters["stats"]["unique_graphs"] == 1

    assert [layer.name for layer in pruning.pruners[0].layers] == ["fc1"]
    assert list(pruning.masks()) == ["fc1"]
    assert [row.name for row in pruning.report().layers] == ["fc1"]
    _assert_exactly_sparse(pruning, 0.5)
    # the compiled graph runs on the pruned parameters themselves
    x = torch.randn(4, 32)
    assert torch.allclose(compiled(x), model(x), atol=1e-6)

    # the state of a compiled run fits the plain model: the names are the same
    plain = Pruning(_config(names=["^fc"], not_to_prune_names=["^fc2$"]))
    plain.on_train_begin(make_mlp())
    plain.load_state_dict(pruning.state_dict())
    assert torch.equal(plain.masks()["fc1"], pruning.masks()["fc1"])


def test_submodule_compiled_in_place_keeps_its_name() -> None:
    model = make_mlp()
    model.fc2 = torch.compile(model.fc2, backend="aot_eager")  # the name inside is fc2._orig_mod
    # 8x1 does not fit head (4 rows): it is listed as skipped, looked up under its plain name
    pruning = Pruning({"prune_type": "magnitude", "pattern": "8x1", "target_sparsity": 0.5})
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)

    assert [layer.name for layer in pruning.pruners[0].layers] == ["fc1", "fc2"]
    rows = {row.name: row for row in pruning.report().layers}
    assert list(rows) == ["fc1", "fc2", "head"]
    assert rows["head"].skipped and rows["head"].shape == (4, 32)
    _assert_exactly_sparse(pruning, 0.5)


# -- autocast ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criterion", "pattern"),
    [("snip_momentum", "4x1"), ("snip_momentum", "2:4"), ("snip", "1x1"), ("magnitude", "2x2")],
)
def test_bf16_autocast_training_reaches_the_target(criterion: str, pattern: str) -> None:
    model = make_mlp()
    pruning = Pruning(_config(prune_type=criterion, pattern=pattern))
    pruning.on_train_begin(model)
    _train(model, pruning, steps=6, dtype=torch.bfloat16)

    assert pruning.step == 6
    _assert_exactly_sparse(pruning, 0.5)
    scores = pruning.pruners[0].criterion.scores()
    assert all(bool(torch.isfinite(s).all()) for s in scores)


def test_bf16_weights_under_autocast_reach_the_target() -> None:
    model = make_mlp().to(torch.bfloat16)  # bf16 parameters and gradients, float32 scores
    pruning = Pruning(_config())
    pruning.on_train_begin(model)
    _train(model, pruning, steps=6, dtype=torch.bfloat16)

    _assert_exactly_sparse(pruning, 0.5)
    assert all(s.dtype == torch.float32 for s in pruning.pruners[0].criterion.scores())


# -- GradScaler -------------------------------------------------------------------------------


def test_grad_scaler_overflow_step_leaves_scores_unchanged() -> None:
    """A GradScaler step whose gradients overflow: the optimizer skips it, the scores do too."""
    model = make_mlp()
    pruning = Pruning(_config(start_step=1, end_step=100))  # scored every step
    pruning.on_train_begin(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    overflow = 2
    snapshots = []
    for step in range(4):
        pruning.on_step_begin(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(torch.randn(16, 32)).float().pow(2).mean()
        # a huge loss on one step: scaled gradients overflow to inf, as fp16 ones do
        scaler.scale(loss * (1e38 if step == overflow else 1.0)).backward()
        scaler.unscale_(optimizer)  # scores must see true gradients, so unscale first
        pruning.on_before_optimizer_step()
        snapshots.append([s.clone() for s in pruning.pruners[0].criterion.scores()])
        scaler.step(optimizer)
        scaler.update()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert scaler.get_scale() < 2.0**16  # the scaler saw the overflow and backed off
    assert same(snapshots[overflow], snapshots[overflow - 1])
    assert not same(snapshots[overflow - 1], snapshots[overflow - 2])
    assert not same(snapshots[overflow + 1], snapshots[overflow])
    assert all(bool(torch.isfinite(s).all()) for s in snapshots[-1])
