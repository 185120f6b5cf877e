"""Choosing which units to prune: pure tensor math, no model, no schedule.

Every layer hands in a 1-D tensor of unit scores (lower = pruned first), how many weights a
pruned unit zeroes, its number of weights, and its per-layer cap and floor (as sparsities).

* ``local``: each layer prunes its own ``k = floor(s * units)`` lowest units.
* ``global``: one ranking over every unit of every layer. The prunable budget is
  ``floor(s * total weights)``; walking the ranking from the lowest score, whole units are pruned
  while they fit in it. With equal-size units this is exactly ``k = floor(s * total units)``.
* Cap: a layer that the global choice puts above its cap is fixed at the cap and the budget it
  could not take is re-ranked over the other layers, until nothing changes, so the total still
  reaches the target. Floors work the same way from below (best effort).
* Ties are broken by position (earlier layer, lower index first): exactly k units, always.

Equal-size units (every NxM and N:M case) use a k-th value threshold, which is linear time; mixed
sizes (channel patterns across layers of different shapes) sort the ranking once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["LayerUnits", "kth_smallest", "lowest_k", "select"]

_EPS = 1e-6  # absorbs float error in s * n (0.29 * 100 = 28.999999999999996)


@dataclass(frozen=True)
class LayerUnits:
    """What selection needs to know of one layer."""

    scores: torch.Tensor  # 1-D, one per unit
    unit_elements: int  # weights zeroed by pruning one unit
    numel: int  # weights in the layer
    max_sparsity: float = 1.0
    min_sparsity: float = 0.0

    def units_for(self, sparsity: float) -> int:
        """Most units whose pruning keeps the layer at or below *sparsity*."""
        units = self.scores.numel()
        return min(units, math.floor(sparsity * self.numel / self.unit_elements + _EPS))

    def bounds(self, sparsity: float) -> tuple[int, int]:
        """(floor, cap) in units at a step whose sparsity is *sparsity*."""
        hi = self.units_for(self.max_sparsity)
        floor = min(self.min_sparsity, sparsity)
        lo = math.ceil(floor * self.numel / self.unit_elements - _EPS)
        return min(max(lo, 0), hi), hi


_SAMPLE = 1 << 16  # sample size for the k-th value search on large inputs


def kth_smallest(x: torch.Tensor | Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The exact k-th smallest value (1-based) of 1-D *x*, or of several 1-D tensors taken
    together (without concatenating them), as a 0-dim tensor.

    ``torch.kthvalue`` is a single-threaded quickselect over a copy of its input. For large inputs
    the value is first bracketed from a fixed-seed sample, and only the few entries inside the
    bracket are searched: a handful of elementwise passes instead, several times faster at
    10^7-10^8 scores. If the bracket misses (a probability far below 1e-4), the full search runs.
    """
    parts = [x] if isinstance(x, torch.Tensor) else list(x)
    n = sum(p.numel() for p in parts)
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(torch.cat(parts) if len(parts) > 1 else parts[0], k).values
    generator = torch.Generator(device=parts[0].device).manual_seed(0)
    sample = torch.cat(
        [
            p[torch.randint(p.numel(), (max(1, round(_SAMPLE * p.numel() / n)),), generator=generator, device=p.device)]
            for p in parts
            if p.numel()
        ]
    )
    m, q = sample.numel(), k / n
    margin = 5.0 * math.sqrt(q * (1.0 - q) / m) + 2.0 / m
    lo = torch.kthvalue(sample, max(1, math.floor((q - margin) * m))).values
    hi = torch.kthvalue(sample, min(m, math.ceil((q + margin) * m))).values
    below = sum(int(torch.count_nonzero(p < lo)) for p in parts)
    band = torch.cat([p[(p >= lo) & (p <= hi)] for p in parts])
    rank = k - below
    if 1 <= rank <= band.numel():
        return torch.kthvalue(band, rank).values
    return torch.kthvalue(torch.cat(parts), k).values


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the *k* lowest entries of 1-D *scores*; ties go to the lower index.

    Linear time (k-th value, then one comparison), so it stays fast at 10^8 scores.
    """
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    kth = kth_smallest(scores, k)
    chosen = scores < kth
    missing = k - int(torch.count_nonzero(chosen))
    if missing:
        ties = torch.nonzero(scores == kth).flatten()[:missing]
        chosen[ties] = True
    return chosen


def _clean(scores: torch.Tensor) -> torch.Tensor:
    # NaN would make the ranking meaningless; a NaN score is treated as "least important".
    scores = scores.detach().float()
    return torch.nan_to_num(scores, nan=-1.0) if scores.isnan().any() else scores


def select(layers: Sequence[LayerUnits], sparsity: float, domain: str = "global") -> list[torch.Tensor]:
    """Return, per layer, a 1-D bool tensor of the units to prune at *sparsity*.

    Example:
        >>> a = LayerUnits(torch.tensor([1., 5., 3., 7.]), unit_elements=1, numel=4)
        >>> b = LayerUnits(torch.tensor([2., 8.]), unit_elements=1, numel=2)
        >>> [m.tolist() for m in select([a, b], 0.5)]
        [[True, False, True, False], [True, False]]
    """
    if not layers:
        return []
    if domain == "local":
        chosen = []
        for layer in layers:
            lo, hi = layer.bounds(sparsity)
            k = min(max(layer.units_for(sparsity), lo), hi)
            chosen.append(lowest_k(_clean(layer.scores), k))
        return chosen
    if domain != "global":
        raise ValueError(f"domain must be 'global' or 'local', not {domain!r}")
    return _select_global(layers, sparsity)


def _select_global(layers: Sequence[LayerUnits], sparsity: float) -> list[torch.Tensor]:
    total = sum(layer.numel for layer in layers)
    budget = math.floor(sparsity * total + _EPS)  # in weights
    bounds = [layer.bounds(sparsity) for layer in layers]
    fixed: dict[int, int] = {}  # layer index -> units, for layers held at their cap or floor
    scores = [_clean(layer.scores) for layer in layers]
    uniform = len({layer.unit_elements for layer in layers}) == 1
    ranking = _Ranking(layers, scores) if not uniform else None
    while True:
        free = [i for i in range(len(layers)) if i not in fixed]
        left = budget - sum(units * layers[i].unit_elements for i, units in fixed.items())
        if uniform:
            threshold = _Threshold(scores, free, left // layers[0].unit_elements)
            counts = threshold.counts
        elif ranking is not None:
            counts = ranking.counts(free, left)
        changed = False
        for i in free:
            lo, hi = bounds[i]
            if counts[i] > hi or counts[i] < lo:
                fixed[i] = hi if counts[i] > hi else lo
                changed = True
        if not changed or not free:
            break
    chosen = []
    for i, layer_scores in enumerate(scores):
        if i in fixed:
            chosen.append(lowest_k(layer_scores, fixed[i]))
        elif uniform:
            chosen.append(threshold.chosen(i))
        else:
            chosen.append(lowest_k(layer_scores, counts[i]))
    return chosen


class _Threshold:
    """The k lowest of the free layers' units, found with one k-th value over all of them."""

    def __init__(self, scores: list[torch.Tensor], free: list[int], k: int) -> None:
        self.scores = scores
        self.kth: torch.Tensor | None = None
        self.less: dict[int, int] = {}
        self.below: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {i: 0 for i in free}
        if not free or k <= 0:
            return
        sizes = sum(scores[i].numel() for i in free)
        if k >= sizes:
            self.counts = {i: scores[i].numel() for i in free}
            self.less = dict(self.counts)
            return
        self.kth = kth_smallest([scores[i] for i in free], k)
        self.below = {i: scores[i] < self.kth for i in free}
        self.less = {i: int(torch.count_nonzero(self.below[i])) for i in free}
        ties = k - sum(self.less.values())  # units equal to the k-th value: earlier layers first
        for i in free:
            take = min(int(torch.count_nonzero(scores[i] == self.kth)), ties) if ties else 0
            ties -= take
            self.counts[i] = self.less[i] + take

    def chosen(self, i: int) -> torch.Tensor:
        scores = self.scores[i]
        if self.kth is None:
            return torch.full_like(scores, self.counts.get(i, 0) > 0, dtype=torch.bool)
        mask = self.below[i]
        missing = self.counts[i] - self.less[i]
        if missing:
            mask[torch.nonzero(scores == self.kth).flatten()[:missing]] = True
        return mask


class _Ranking:
    """One stable sort of all units, for units of different sizes (channel patterns)."""

    def __init__(self, layers: Sequence[LayerUnits], scores: list[torch.Tensor]) -> None:
        self.layer_of = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(scores)])
        order = torch.sort(torch.cat([s.cpu() for s in scores]), stable=True).indices
        self.layer_of = self.layer_of[order]
        sizes = torch.tensor([layer.unit_elements for layer in layers], dtype=torch.long)
        self.size = sizes[self.layer_of]
        self.n_layers = len(layers)

    def counts(self, free: list[int], budget: int) -> dict[int, int]:
        is_free = torch.zeros(self.n_layers, dtype=torch.bool)
        is_free[free] = True
        free_units = is_free[self.layer_of]
        cost = torch.cumsum(self.size * free_units, 0)
        taken = free_units & (cost <= budget)
        per_layer = torch.bincount(self.layer_of[taken], minlength=self.n_layers)
        return {i: int(per_layer[i]) for i in free}
