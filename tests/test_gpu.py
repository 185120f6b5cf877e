"""The engine on a CUDA device: masks, scores and scratch live beside the weights.

Skipped without CUDA (the ``gpu`` marker); run them where a GPU is lent.
"""

import pytest
import torch

from pytorch_pruner import Pruning

from .conftest import make_bert

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("pattern", "target"), [("4x1", 0.8), ("2:4", 0.5), ("1x1", 0.7)])
def test_training_on_cuda_reaches_the_target_with_exact_zeros(pattern: str, target: float) -> None:
    model = make_bert().cuda()
    pruning = Pruning(
        {
            "prune_type": "snip_momentum",
            "pattern": pattern,
            "target_sparsity": target,
            "names": ["encoder"],
            "prune_layer_type": ["Linear"],
            "start_step": 1,
            "end_step": 6,
            "update_frequency_on_step": 2,
        }
    )
    pruning.on_train_begin(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(8):
        pruning.on_step_begin(step)
        batch = {
            "input_ids": torch.randint(0, 100, (4, 16), device="cuda"),
            "labels": torch.randint(0, 2, (4,), device="cuda"),
        }
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    for p in pruning.pruners:
        for layer in p.layers:
            assert layer.keep.device.type == "cuda"
            assert (layer.target.weight[~p.full_mask(layer)] == 0).all()
    assert pruning.report().block_sparsity == pytest.approx(target, abs=1e-3)


def test_cuda_state_loads_on_cpu() -> None:
    model = make_bert().cuda()
    pruning = Pruning(
        {"prune_type": "magnitude", "pattern": "4x1", "target_sparsity": 0.5, "prune_layer_type": ["Linear"]}
    )
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    state = pruning.state_dict()
    cpu_model = make_bert()
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    restored = Pruning(
        {"prune_type": "magnitude", "pattern": "4x1", "target_sparsity": 0.5, "prune_layer_type": ["Linear"]}
    )
    restored.on_train_begin(cpu_model)
    restored.load_state_dict(state)
    assert all(torch.equal(m.cpu(), restored.masks()[k]) for k, m in pruning.masks().items())


def test_model_split_over_cpu_and_cuda_keeps_scores_exact_on_a_non_finite_step() -> None:
    """One pruner's layers on the CPU and on CUDA: the finiteness flag reaches the CPU layers by a
    blocking copy, so an inf gradient on the CUDA layer leaves both layers' scores as they were,
    and a finite step updates both."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64).cuda())
    pruning = Pruning(
        {
            "prune_type": "snip_momentum",
            "pattern": "1x1",
            "target_sparsity": 0.5,
            "prune_layer_type": ["Linear"],
            "start_step": 5,
            "end_step": 9,
            "update_frequency_on_step": 2,
        }
    )
    pruning.on_train_begin(model)
    criterion = pruning.pruners[0].criterion
    for step in range(3):
        pruning.on_step_begin(step)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        if step == 1:
            model[1].weight.grad[3, 5] = float("inf")
        before = [s.detach().cpu().clone() for s in criterion.scores()]
        pruning.on_before_optimizer_step()
        pruning.on_after_optimizer_step()
        after = [s.detach().cpu() for s in criterion.scores()]
        same = [torch.equal(a, b) for a, b in zip(before, after, strict=True)]
        assert same == ([True, True] if step == 1 else [False, False])


def test_wanda_statistics_follow_a_model_moved_to_cuda_after_on_train_begin() -> None:
    """on_train_begin on the CPU, then model.cuda(): the input statistics move with the weights, so
    the forward hooks copy nothing to the host (they did, every forward: a sync, caught here by
    set_sync_debug_mode) and the masks come from the inputs seen on the GPU."""
    from torch import nn

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    pruning = Pruning(
        {
            "prune_type": "wanda",
            "pattern": "1x1",
            "target_sparsity": 0.5,
            "prune_layer_type": ["Linear"],
            "start_step": 1,
            "end_step": 3,
            "update_frequency_on_step": 1,
        }
    )
    pruning.on_train_begin(model)
    model.cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(4):
        pruning.on_step_begin(step)
        x = torch.randn(8, 64, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = model(x).pow(2).mean()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    assert all(s.mean_sq.device.type == "cuda" for s in pruning.pruners[0].criterion.stats)
    assert pruning.report().block_sparsity == pytest.approx(0.5, abs=1e-3)


_MAGNITUDE_4X1 = {"prune_type": "magnitude", "pattern": "4x1", "target_sparsity": 0.5, "prune_layer_type": ["Linear"]}


def test_a_state_loads_into_a_model_moved_to_cuda_after_on_train_begin() -> None:
    """The CPU masks follow the weights to the GPU before they are applied (apply_masks met CPU
    masks and CUDA weights: a device-mismatch error half-way through the load)."""
    source = make_bert()
    saved = Pruning(_MAGNITUDE_4X1)
    saved.on_train_begin(source)
    saved.on_step_begin(0)
    state, masks = saved.state_dict(), saved.masks()
    model = make_bert()
    pruning = Pruning(_MAGNITUDE_4X1)
    pruning.on_train_begin(model)
    model.cuda()
    pruning.load_state_dict(state)
    for name, keep in masks.items():
        weight = model.get_submodule(name).weight
        assert weight.device.type == "cuda" and torch.equal((weight != 0).cpu(), keep)
    assert all(m.device.type == "cuda" for m in pruning.masks().values())


def test_squash_after_model_cpu() -> None:
    """Pruned on the GPU, moved to the CPU for export, squashed: the masks follow and zero the
    moved weights (CUDA masks met CPU weights)."""
    model = make_bert().cuda()
    pruning = Pruning(_MAGNITUDE_4X1)
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    masks = {name: m.cpu() for name, m in pruning.masks().items()}
    model.cpu()
    with torch.no_grad():
        for name in masks:
            model.get_submodule(name).weight.add_(1.0)  # as an update without on_after_optimizer_step
    assert pruning.squash() is model
    for name, keep in masks.items():
        weight = model.get_submodule(name).weight
        assert (weight[~keep] == 0).all() and (weight[keep] != 0).all()


def test_wanda_statistics_on_the_cpu_from_cuda_inputs_equal_those_of_cpu_inputs() -> None:
    from pytorch_pruner.criteria import ActivationStats

    torch.manual_seed(0)
    x = torch.randn(4096, 64)
    on_cpu, from_cuda = ActivationStats(64, torch.device("cpu")), ActivationStats(64, torch.device("cpu"))
    on_cpu.update_(x)
    from_cuda.update_(x.cuda())
    assert from_cuda.mean_sq.device.type == "cpu"
    torch.testing.assert_close(from_cuda.mean_sq, on_cpu.mean_sq, rtol=1e-5, atol=0)
    assert int(from_cuda.count) == 4096
