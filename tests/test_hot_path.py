"""The per-step hooks: bit-identical to the unfused reference, no host sync, float32 scores for
fp16/bf16 weights, exact zeros at pruned positions even for NaN/inf weights."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning
from pytorch_pruner.criteria import SnipMomentum

from .conftest import make_convnet, make_mlp

# -- the unfused per-step math as it was before the fused path (the reference) ----------------


def _reference_all_finite(tensors: list[torch.Tensor]) -> bool:
    return not tensors or bool(torch.isfinite(torch.stack([t.sum() for t in tensors])).all())


def _reference_accumulate(criterion) -> None:
    slots, scores = criterion.slots, criterion._scores
    scratch = torch.empty(max(s.weight.numel() for s in slots))
    reduced = torch.empty(max(t.numel() for t in scores))
    for slot, score in zip(slots, scores, strict=True):
        grad = slot.weight.grad
        if grad is None:
            score.mul_(criterion.decay)
            continue
        weight = slot.weight.detach()
        elem = scratch[: weight.numel()].view(weight.shape)
        torch.mul(weight, grad, out=elem)
        elem.abs_()
        if slot.elementwise:
            step = elem
        else:
            step = slot.reduce(slot.to_2d(elem), out=reduced[: score.numel()].view(score.shape))
        torch.add(step, score, alpha=criterion.decay, out=score)


def _reference_before_optimizer_step(self) -> None:
    if self._scored_at == self.step:
        return
    self._scored_at = self.step
    active = [p for p in self.pruners if p.wants_scores(self.step)]
    if not active or not _reference_all_finite([g for p in active for g in p.gradients()]):
        return
    for pruner in active:
        _reference_accumulate(pruner.criterion)


@torch.no_grad()
def _reference_apply_masks(self) -> None:
    if not self._masked:
        return
    for layer in self.layers:
        weight = layer.target.weight
        if layer._full is not None:
            weight.mul_(layer._full.view(torch.uint8))
        else:
            self.pattern.view(weight.view(layer.target.shape2d)).mul_(layer.keep.view(torch.uint8))


def _as_reference(pruning: Pruning) -> Pruning:
    pruning.on_before_optimizer_step = types.MethodType(_reference_before_optimizer_step, pruning)
    for pruner in pruning.pruners:
        pruner.apply_masks = types.MethodType(_reference_apply_masks, pruner)
    return pruning


def _config(prune_type: str, pattern: str) -> dict:
    return {
        "prune_type": prune_type,
        "pattern": pattern,
        "target_sparsity": 0.5 if ":" in pattern else 0.7,
        "start_step": 1,
        "end_step": 7,
        "update_frequency_on_step": 2,
    }


def _step(model, pruning, optimizer, x, poison: bool = False, unused: bool = False) -> None:
    pruning.on_step_begin()
    model(x).pow(2).mean().backward()
    if poison:  # an AMP overflow step
        next(p for p in model.parameters() if p.dim() > 1).grad.view(-1)[3] = float("inf")
    if unused:  # a layer that took no part in this step's forward (no gradient)
        [p for p in model.parameters() if p.dim() > 1][1].grad = None
    pruning.on_before_optimizer_step()
    if not poison:  # GradScaler skips the update of an overflow step
        optimizer.step()
    pruning.on_after_optimizer_step()
    optimizer.zero_grad()


_CASES = [(c, n, p) for n in ("mlp", "conv") for p in ("1x1", "4x1", "2:4") for c in ("snip_momentum",)]
_CASES += [("snip", "mlp", "1x1"), ("snip", "conv", "4x1"), ("magnitude", "mlp", "4x1"), ("magnitude", "conv", "2:4")]


@pytest.mark.parametrize(("prune_type", "net", "pattern"), _CASES)
def test_fused_hooks_are_bit_identical_to_the_unfused_reference(prune_type: str, net: str, pattern: str) -> None:
    model = make_mlp() if net == "mlp" else make_convnet()
    reference = copy.deepcopy(model)
    fused = Pruning(_config(prune_type, pattern))
    fused.on_train_begin(model)
    unfused = _as_reference(Pruning(_config(prune_type, pattern)))
    unfused.on_train_begin(reference)
    opt_a = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    opt_b = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1)
    for step in range(9):  # pruning steps 1, 3, 5, 7; an overflow step at 4, a layer unused at 6
        x = torch.randn(8, 32) if net == "mlp" else torch.randn(2, 4, 6, 6)
        _step(model, fused, opt_a, x, poison=step == 4, unused=step == 6)
        _step(reference, unfused, opt_b, x, poison=step == 4, unused=step == 6)
        for a, b in zip(fused.pruners, unfused.pruners, strict=True):
            assert all(torch.equal(x.keep, y.keep) for x, y in zip(a.layers, b.layers, strict=True))
            for x, y in zip(a.criterion.scores(), b.criterion.scores(), strict=True):
                assert torch.equal(x, y), (step, (x - y).abs().max())
        # equal values; a pruned weight is +0.0 where the float multiply left -0.0
        for (name, x), y in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert torch.equal(x, y), (step, name)
    sparsity = fused.get_sparsity_ratio().blockwise_over_matmul_gemm_conv
    assert sparsity > 0.4
    if prune_type == "snip_momentum" and net == "mlp" and pattern == "4x1":  # all layers' scores as one tensor
        assert fused.pruners[0].criterion._flat is not None


class _HostSync(AssertionError):
    pass


def _fail(self, *args, **kwargs):
    raise _HostSync("a per-step hook read a tensor on the host")


_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero")


@pytest.mark.parametrize("pattern", ["4x1", "1x1", "2:4"])
def test_per_step_hooks_never_read_a_tensor_on_the_host(monkeypatch, pattern: str) -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Conv1d(32, 8, 1))
    config = {**_config("snip_momentum", pattern), "start_step": 1, "end_step": 9, "update_frequency_on_step": 4}
    pruning = Pruning(config)
    pruning.on_train_begin(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)

    def hook(fn, guarded: bool) -> None:
        if not guarded:
            return fn()
        with monkeypatch.context() as guard:
            for name in _SYNCS:
                guard.setattr(torch.Tensor, name, _fail)
            fn()

    def run(steps: int, guarded: bool = False) -> None:
        for _ in range(steps):
            hook(pruning.on_step_begin, guarded)
            y = model[2](model[1](model[0](torch.randn(4, 16))).unsqueeze(-1))
            y.pow(2).mean().backward()
            hook(pruning.on_before_optimizer_step, guarded)
            optimizer.step()
            hook(pruning.on_after_optimizer_step, guarded)
            optimizer.zero_grad()

    run(6)  # step 5 prunes: from here on scores accumulate and masks apply every step
    assert pruning.pruners[0]._masked
    before = [s.clone() for s in pruning.pruners[0].criterion.scores()]
    weights = [p.detach().clone() for p in model.parameters()]
    with monkeypatch.context() as guard:  # the guard works
        for name in _SYNCS:
            guard.setattr(torch.Tensor, name, _fail)
        with pytest.raises(_HostSync):
            bool(torch.ones(()))
    run(1, guarded=True)  # step 6: not a pruning step
    assert not any(torch.equal(a, b) for a, b in zip(before, pruning.pruners[0].criterion.scores(), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    for layer in pruning.pruners[0].layers:
        assert (layer.target.weight[~pruning.pruners[0].full_mask(layer)] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_scores_are_the_float32_scores_of_the_same_numbers(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    low = make_mlp().to(dtype)
    high = copy.deepcopy(low).float()  # the very same values, in float32
    config = {**_config("snip_momentum", "4x1"), "update_frequency_on_step": 1, "end_step": 4}
    pa, pb = Pruning(config), Pruning(config)
    pa.on_train_begin(low)
    pb.on_train_begin(high)
    for _ in range(6):
        for p in (pa, pb):
            p.on_step_begin()
        for a, b in zip(low.parameters(), high.parameters(), strict=True):
            a.grad = (torch.randn_like(b) * 1e-3).to(dtype)
            b.grad = a.grad.float()
        for p in (pa, pb):
            p.on_before_optimizer_step()
            p.on_after_optimizer_step()
        scores_a, scores_b = pa.pruners[0].criterion.scores(), pb.pruners[0].criterion.scores()
        assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(scores_a, scores_b, strict=True))
        assert all(torch.equal(x.keep, y.keep) for x, y in zip(pa.pruners[0].layers, pb.pruners[0].layers, strict=True))
    assert pa.get_sparsity_ratio().blockwise_over_matmul_gemm_conv > 0.5


def test_a_finite_fp16_gradient_counts_and_tiny_products_do_not_underflow() -> None:
    w = nn.Parameter(torch.full((1024, 1024), 1e-4, dtype=torch.float16))
    slot_model = nn.Linear(1024, 1024, bias=False).half()
    slot_model.weight = w
    pruning = Pruning({"prune_type": "snip_momentum", "pattern": "1x1", "start_step": 1, "end_step": 5})
    pruning.on_train_begin(slot_model)
    w.grad = torch.full_like(w, 0.1)  # sums to ~1e5: inf in fp16, finite in float32
    pruning.on_step_begin()
    pruning.on_before_optimizer_step()
    (scores,) = pruning.pruners[0].criterion.scores()
    assert torch.equal(scores, torch.full_like(scores, float(w[0, 0].detach()) * float(w.grad[0, 0])))
    w.grad = torch.full_like(w, 1e-4)  # 1e-8 is 0 in fp16
    pruning.on_after_optimizer_step()
    pruning.on_step_begin()
    pruning.on_before_optimizer_step()
    assert float(pruning.pruners[0].criterion.scores()[0][0, 0]) > float(scores[0, 0]) * 0.9


@pytest.mark.parametrize("pattern", ["4x1", "1x1"])
def test_pruned_positions_are_exactly_zero_even_when_the_weight_is_nan_or_inf(pattern: str) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Conv2d(4, 8, 1))
    pruning = Pruning({"prune_type": "magnitude", "pattern": pattern, "target_sparsity": 0.5})
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    for layer in pruning.pruners[0].layers:
        weight, keep = layer.target.weight, pruning.pruners[0].full_mask(layer)
        with torch.no_grad():  # what a diverged optimizer step writes
            weight[~keep] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(64)[: int((~keep).sum())]
            weight[keep.nonzero()[0].unbind()] = float("nan")
    pruning.on_after_optimizer_step()
    for layer in pruning.pruners[0].layers:
        weight, keep = layer.target.weight, pruning.pruners[0].full_mask(layer)
        assert (weight[~keep] == 0).all() and not torch.signbit(weight[~keep]).any()  # +0.0, not NaN
        assert torch.isnan(weight[keep]).sum() == 1  # a kept NaN is left for the user to see


def test_staged_criterion_leaves_scores_bit_for_bit_on_a_non_finite_step() -> None:
    model = make_mlp()
    pruning = Pruning(_config("snip_momentum", "4x1"))
    pruning.on_train_begin(model)
    crit = pruning.pruners[0].criterion
    assert isinstance(crit, SnipMomentum) and crit._stage_steps
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    crit.accumulate_()
    before = [s.clone() for s in crit.scores()]
    model.fc1.weight.grad[0, 0] = float("nan")
    crit.accumulate_()
    assert all(torch.equal(a, b) for a, b in zip(before, crit.scores(), strict=True))
    model.fc1.weight.grad[0, 0] = 1.0
    crit.accumulate_()
    assert not any(torch.equal(a, b) for a, b in zip(before, crit.scores(), strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", ["4x1", "1x1", "2:4"])
def test_per_step_hooks_never_sync_on_cuda(pattern: str) -> None:
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().to(torch.bfloat16)
    config = {**_config("snip_momentum", pattern), "start_step": 1, "end_step": 9, "update_frequency_on_step": 4}
    pruning = Pruning(config)
    pruning.on_train_begin(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for step in range(8):  # step 5 prunes; steps 6 and 7 are ordinary steps inside the window
        guarded = step >= 6
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if guarded else "default")
        try:
            pruning.on_step_begin()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        model(torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)).float().pow(2).mean().backward()
        torch.cuda.set_sync_debug_mode("error" if guarded else "default")
        try:
            pruning.on_before_optimizer_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        optimizer.step()
        torch.cuda.set_sync_debug_mode("error" if guarded else "default")
        try:
            pruning.on_after_optimizer_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        optimizer.zero_grad()
    for layer in pruning.pruners[0].layers:
        assert (layer.target.weight[~pruning.pruners[0].full_mask(layer)] == 0).all()


def test_scores_laid_out_flat_again_after_the_weights_are_replaced() -> None:
    """``load_state_dict(assign=True)`` gives every layer a new weight tensor mid-training: the
    criterion follows it and lays its scores out as one tensor again, and training goes on exactly
    as if the same values had stayed in the old tensors."""
    runs = []
    for replace in (False, True):
        torch.manual_seed(0)
        model = make_mlp()
        pruning = Pruning(_config("snip_momentum", "4x1"))
        pruning.on_train_begin(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(8):
            if replace and step == 3:
                model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # plain SGD: no state to carry
            _step(model, pruning, optimizer, torch.randn(8, 32))
        crit = pruning.pruners[0].criterion
        flat, _ = crit._flat  # each layer's scores a slice of it
        parts = flat.split([s.numel() for s in crit.scores()])
        assert [s.data_ptr() for s in crit.scores()] == [p.data_ptr() for p in parts]
        runs.append((model, pruning))
    (a, pa), (b, pb) = runs
    assert pb.pruners[0].criterion.slots[0].weight is b[0].weight
    assert all(
        torch.equal(x, y)
        for x, y in zip(pa.pruners[0].criterion.scores(), pb.pruners[0].criterion.scores(), strict=True)
    )
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert pa.report().block_sparsity == pb.report().block_sparsity > 0.4


def test_a_pattern_whose_reduce_ignores_the_buffer_still_updates_the_flat_scores() -> None:
    """A pattern (registered by a user) may return its block scores as a new tensor instead of
    writing them into ``out``: the staged step is then copied into the flat buffer, and the scores
    equal the unfused reference's."""
    model = make_mlp()
    reference = copy.deepcopy(model)
    fused = Pruning(_config("snip_momentum", "4x1"))
    fused.on_train_begin(model)
    unfused = _as_reference(Pruning(_config("snip_momentum", "4x1")))
    unfused.on_train_begin(reference)
    for pruning in (fused, unfused):
        for slot in pruning.pruners[0].criterion.slots:
            own = slot.reduce
            slot.reduce = lambda t2d, out=None, own=own: own(t2d)  # a new tensor, out ignored
    opt_a = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_b = torch.optim.SGD(reference.parameters(), lr=0.05)
    for _ in range(6):
        x = torch.randn(8, 32)
        _step(model, fused, opt_a, x)
        _step(reference, unfused, opt_b, x)
    crit = fused.pruners[0].criterion
    assert crit._flat is not None
    for a, b in zip(crit.scores(), unfused.pruners[0].criterion.scores(), strict=True):
        assert torch.equal(a, b) and a.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters(), strict=True))


def test_flags_copied_to_the_cpu_from_another_device_are_waited_for() -> None:
    """A non-blocking device-to-host copy may land after CPU ops have read it: the flag a model
    split over the CPU and an accelerator gives its CPU layers must be a blocking copy, and the
    flags of both are gathered on the accelerator (host-to-device copies are stream-ordered).
    ``meta`` stands in for the accelerator here; tests/test_gpu.py runs it on CUDA."""
    from unittest import mock

    from pytorch_pruner.criteria import finite_flag, flag_to

    calls: list[tuple[str, str, bool]] = []
    real_to = torch.Tensor.to

    def spy(self, *args, non_blocking=False, **kwargs):  # type: ignore[no-untyped-def]
        if not args or not isinstance(args[0], torch.device | str):  # e.g. .to(dtype): not a copy
            return real_to(self, *args, non_blocking=non_blocking, **kwargs)
        device = torch.device(args[0])
        calls.append((self.device.type, device.type, non_blocking))
        if self.is_meta and device.type == "cpu":
            return torch.ones((), dtype=torch.bool)  # a meta tensor has no value to copy
        return real_to(self, *args, non_blocking=non_blocking, **kwargs)

    on_cpu = torch.ones((), dtype=torch.bool)
    on_other = torch.ones((), dtype=torch.bool, device="meta")
    with mock.patch.object(torch.Tensor, "to", spy):
        assert flag_to(on_cpu, on_cpu.device) is on_cpu  # nothing to copy
        flag_to(on_other, torch.device("cpu"))
        flag_to(on_cpu, torch.device("meta"))
        assert calls == [("meta", "cpu", False), ("cpu", "meta", True)]
        calls.clear()
        gathered = finite_flag([torch.zeros(3), torch.zeros(3, device="meta")])
    assert gathered.device.type == "meta"  # not a device-to-host copy on the way
    assert calls == [("cpu", "meta", True)]


def test_wanda_statistics_held_on_another_device_receive_per_feature_sums_not_activations() -> None:
    """Inputs on one device, statistics on another (weights kept on the CPU while the layer runs on a
    GPU, as with FSDP2's CPU offload): the sums of squares are reduced where the inputs are and only
    one value per feature moves. ``meta`` holds the statistics here; tests/test_gpu.py runs CUDA."""
    from unittest import mock

    from pytorch_pruner.criteria import ActivationStats

    moved: list[int] = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if args and isinstance(args[0], torch.device | str) and torch.device(args[0]) != self.device:
            moved.append(self.numel())
        return real_to(self, *args, **kwargs)

    stats = ActivationStats(16, torch.device("meta"))
    with mock.patch.object(torch.Tensor, "to", spy):
        stats.update_(torch.randn(512, 16))
    assert moved == [16]
    assert stats.mean_sq.is_meta and stats.mean_sq.shape == (16,)
