"""Low-memory pruning steps (``Pruner.prune(step, low_memory=True)``, used by prune_oneshot_): the
scores are made layer by layer each time selection reads them, the masks are exactly those of the
step that holds every layer's scores, and no two layers' scores are alive at once."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable

import pytest
import torch
from torch import nn

from pytorch_pruner import PruningConfig
from pytorch_pruner.errors import StateError
from pytorch_pruner.pruner import Pruner
from pytorch_pruner.selection import LayerUnits, LazyScores, select
from pytorch_pruner.targets import find_targets


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # small layers: selection's sampled bracket (over 2**18 units) runs in the NaN test below
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 64))


def _target(pattern: str) -> float:
    return 0.5 if ":" in pattern else 0.6  # N:M patterns reach N/M at most


def _pruner(model: nn.Module, prune_type: str, pattern: str, domain: str, **extra: float) -> Pruner:
    settings = PruningConfig(
        prune_type=prune_type, pattern=pattern, prune_domain=domain, target_sparsity=_target(pattern), start_step=1,
        end_step=1, **extra,
    ).resolved()[0]  # fmt: skip
    pruner = Pruner(settings, find_targets(model, ["Linear"]))
    if pruner.criterion.needs_inputs:
        pruner.criterion.count_eval = True  # type: ignore[attr-defined]
        with torch.no_grad():
            model(torch.randn(32, 64, generator=torch.Generator().manual_seed(1)))
    return pruner


def _ties(model: nn.Module) -> None:
    """Many equal weights (so ties at the cut are split by position) and a NaN-free zero run."""
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_((layer.weight * 8).round() / 8)


CASES = [
    ("magnitude", "1x1", "global", {}),
    ("magnitude", "1x1", "global", {"max_sparsity_ratio_per_layer": 0.7, "min_sparsity_ratio_per_layer": 0.5}),
    ("magnitude", "4x1", "global", {}),
    ("magnitude", "2:4", "global", {}),
    ("magnitude", "2:4", "local", {}),
    ("magnitude", "channelx1", "global", {}),
    ("wanda", "1x1", "global", {}),
    ("wanda", "1x1", "row", {}),
    ("wanda", "1x1", "local", {}),
    ("wanda", "4:8", "global", {}),
    ("wanda", "2x2", "global", {"max_sparsity_ratio_per_layer": 0.65}),
]


@pytest.mark.parametrize(("prune_type", "pattern", "domain", "extra"), CASES)
def test_low_memory_step_gives_the_same_masks_and_weights(
    prune_type: str, pattern: str, domain: str, extra: dict[str, float]
) -> None:
    model = _model()
    _ties(model)
    twin = copy.deepcopy(model)
    held = _pruner(model, prune_type, pattern, domain, **extra)
    lazy = _pruner(twin, prune_type, pattern, domain, **extra)
    held.prune(1, low_memory=False)
    lazy.prune(1, low_memory=True)
    assert held.current_sparsity == lazy.current_sparsity == _target(pattern)
    pruned = 0
    for a, b in zip(held.layers, lazy.layers, strict=True):
        assert a.keep.dtype == b.keep.dtype == torch.bool
        assert torch.equal(a.keep, b.keep), a.name
        pruned += int((~a.keep).sum())
    assert pruned > 0
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("prune_type", ["magnitude", "wanda"])
def test_low_memory_step_holds_one_layers_scores_at_a_time(prune_type: str) -> None:
    model = _model()
    pruner = _pruner(model, prune_type, "1x1", "global")
    makers = pruner.criterion.lazy_scores()
    assert makers is not None and len(makers) == 3
    if prune_type == "wanda":  # lazy_scores took the statistics: make them again for the step below
        with torch.no_grad():
            model(torch.randn(32, 64, generator=torch.Generator().manual_seed(1)))
    alive: list[weakref.ref[torch.Tensor]] = []
    calls = [0] * 3
    original = pruner.criterion.lazy_scores

    def watched() -> list:
        made = original()
        assert made is not None

        def watch(i: int) -> Callable[[], torch.Tensor]:
            def make() -> torch.Tensor:
                assert all(ref() is None for ref in alive), "another layer's scores are still alive"
                calls[i] += 1
                scores = made[i]()
                alive.append(weakref.ref(scores))
                return scores

            return make

        return [watch(i) for i in range(len(made))]

    pruner.criterion.lazy_scores = watched  # type: ignore[method-assign]
    pruner.prune(1, low_memory=True)
    assert all(c >= 2 for c in calls)  # read more than once: made again, not kept
    assert sum(int((~layer.keep).sum()) for layer in pruner.layers) == int(0.6 * sum(x.numel for x in pruner.layers))


def test_criteria_with_state_scores_ignore_low_memory() -> None:
    model = _model()
    pruner = _pruner(model, "snip_momentum", "1x1", "global")
    assert pruner.criterion.lazy_scores() is None


def test_lazy_scores_must_keep_their_size() -> None:
    lazy = LazyScores(lambda: torch.ones(5), 4, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="made 5, declared 4"):
        select([LayerUnits(lazy, unit_elements=1, numel=4)], 0.5)


def test_lazy_scores_with_nan_rank_like_held_ones() -> None:
    torch.manual_seed(3)
    parts = [torch.rand(300_000), torch.rand(1000)]
    parts[0][::7] = float("nan")
    held = [LayerUnits(p, unit_elements=1, numel=p.numel()) for p in parts]
    lazy = [
        LayerUnits(LazyScores(lambda p=p: p.clone(), p.numel(), p.device), unit_elements=1, numel=p.numel())
        for p in parts
    ]
    for domain in ("global", "local"):
        for a, b in zip(select(held, 0.4, domain), select(lazy, 0.4, domain), strict=True):
            assert torch.equal(a, b)


def test_deferred_masks_hold_no_memory_until_the_weights_are_followed() -> None:
    model = _model()
    pruner = _pruner(model, "magnitude", "4x1", "global")
    shapes = [tuple(layer.keep.shape) for layer in pruner.layers]
    pruner.defer_masks_()
    assert all(layer.keep.is_meta for layer in pruner.layers)  # no storage while a statistics pass runs
    pruner.follow_weights_()
    for layer, shape in zip(pruner.layers, shapes, strict=True):
        assert layer.keep.device.type == "cpu" and layer.keep.dtype == torch.bool
        assert tuple(layer.keep.shape) == shape and bool(layer.keep.all())
    pruner.prune(1, low_memory=True)
    assert sum(int((~layer.keep).sum()) for layer in pruner.layers) > 0
    with pytest.raises(StateError, match="before the first pruning step"):
        pruner.defer_masks_()
