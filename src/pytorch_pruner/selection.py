"""Choosing which units to prune: pure tensor math, no model, no schedule.

Every layer hands in a 1-D tensor of unit scores (lower = pruned first), how many weights a
pruned unit zeroes, its number of weights, and its per-layer cap and floor (as sparsities).

* ``local``: each layer prunes its own ``k = floor(s * units)`` lowest units.
* ``row``: each ranking row of a layer (its ``rows`` equal parts, e.g. the output rows of a 1x1
  or N:M layer) prunes its own ``floor(s * units of the row)`` lowest units (Wanda's per-output
  comparison); a row never straddles a dim-0 shard, so this needs no communication.
* ``global``: one ranking over every unit of every layer. The prunable budget is
  ``floor(s * total weights)``; walking the ranking from the lowest score, whole units are pruned
  while they fit in it. With equal-size units this is exactly ``k = floor(s * total units)``.
* Cap and floor: each layer prunes between ``lo`` (its floor, in units) and ``hi`` (its cap)
  units. The floor's units are taken first (each layer's ``lo`` lowest); the rest of the budget
  goes down one ranking of every unit that is above its layer's floor and below its cap. So the
  budget a capped layer cannot take flows to every layer below its cap, floor-held ones included,
  and the total reaches every reachable target (SPEC §5, §10). Floors are best effort: when they
  alone exceed the budget, the budget goes down the ranking of the floors' units.
* Ties are broken by position (earlier layer, lower index first): exactly k units, always.

A domain is one function ``(layers, sparsity, comm) -> masks`` in :data:`DOMAINS`.

Few equal-size units in one process (at most 2**22 in all, e.g. every layer of a BERT-base),
held as tensors (not :class:`LazyScores`, whose point is to hold one layer's at a time), are
joined and ranked by k-th value selections (``numpy.partition`` where numpy is installed, else
``torch.kthvalue``): the k-th smallest unit is the cut unless some layer reaches a bound there;
then those layers are held at it and the others' k'-th smallest is tried, a few times at most
(which layers end up held is first guessed from every 31st unit; each candidate is checked exactly).
Many equal-size units (every NxM and N:M case) never sort or concatenate the scores: a fixed-seed
sample brackets the cut, one chunked counting pass writes the mask of the scores below the bracket
and keeps only those inside it (with their positions), a few histograms over those find the exact
cut, and the masks are completed from the kept units; ties are split by position. That is linear
time with temporary memory of a few percent of the scores, and it runs the same over the shards
of several ranks (``comm``, see :mod:`pytorch_pruner.distributed`): the ranks exchange only
counts, histograms and the sample. On the CPU the passes over the scores (the counting pass, the
masks' comparisons) run on numpy views of the same memory where numpy is installed: the same
float32 comparisons, about twice as fast as torch's (torch ops without numpy, and on GPUs). Mixed
sizes (channel patterns across layers of different shapes) sort the ranking once; their unit
counts are small.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

try:
    import numpy as _numpy
except ImportError:  # optional: torch.kthvalue then
    _numpy = None  # type: ignore[assignment]

_T = TypeVar("_T")

__all__ = ["DOMAINS", "EPS", "Comm", "LayerUnits", "LazyScores", "kth_smallest", "lowest_k", "select", "select_rows"]

#: slack for float error when a fraction of a count is rounded
EPS = 1e-6  # absorbs float error in s * n (0.29 * 100 = 28.999999999999996)
_EPS = EPS  # the former name
_SAMPLE = 1 << 20  # sample size that brackets the cut on large inputs
_DIRECT = 1 << 18  # below this many units no sample: the histograms start from the full range
_CHUNK = 1 << 18  # elements per pass step: bounds the temporaries (bool masks) to a few MB
_BAND_SHARE = 1 / 32  # most scores kept between passes, as a share of all (else: rescan)
#: in one process, the cut found inside the bracket by one k-th value selection (:func:`_kth_value`)
#: where no bound is reached in it
_BAND_SELECT = True
#: ... for at most this many units inside: above it the histogram rounds are faster and need no copy
#: (at 1e9 scores the band holds ~8e6: torch.kthvalue made the selection 0.8 s slower, scratch 3% larger)
_BAND_SELECT_MAX = 1 << 20
#: one layer of at most this many units, in one process: ranked by a k-th value selection, not the histograms
_SELECT_ONE = _DIRECT
#: at most this many held units of all layers together, in one process: ranked by k-th value selections
#: over their concatenation (a copy of 4 bytes per unit, at most 16 MiB; see _lowest_selected_all), the
#: histograms only if those don't settle. A BERT-mini 4x1 update (786k units, 24 layers, 2 threads) took
#: 15.6-16.1 ms through the sample and histograms, 6.9-7.7 ms so (measured)
_SELECT_ALL = 1 << 22
_SELECT_ROUNDS = 6  # candidates tried by that selection before the histograms
_GUESS_MIN = 1 << 15  # from this many units, the layers held at a bound are first guessed from a sample
_GUESS_STRIDE = 31  # ... of every 31st unit of each layer


def _kth_value(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of 1-D float32 *x* without NaN, as a 0-dim tensor on its device.

    On the CPU with numpy installed (it is wherever transformers is), by ``numpy.partition`` on a
    view of the same memory: an introselect with SIMD partitioning, 10-15 times faster than
    ``torch.kthvalue`` (786k scores: 0.9 ms against 13.7 ms, one thread, measured); the value is the
    same (a k-th smallest is unique, up to the sign of a zero, which comparisons ignore)."""
    array = _as_numpy(x)
    if array is not None:
        return torch.tensor(float(_numpy.partition(array, k - 1)[k - 1]), dtype=torch.float32)
    return torch.kthvalue(x, k).values


class Comm:
    """The ranks that selection counts over: one process here; :mod:`pytorch_pruner.distributed`
    implements it over a ``torch.distributed`` group. Every rank must make the same calls in the
    same order (selection's decisions depend only on reduced values, so they do)."""

    rank = 0
    world = 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum *tensor* over the ranks in place and return it."""
        return tensor


_LOCAL = Comm()


class LazyScores:
    """A layer's unit scores made on demand: *make* returns them (1-D float32, *numel* long, on
    *device*) each time they are needed, and selection holds them only while it reads them.

    Global ranking reads every layer's scores several times (a sample, one counting pass, and the
    masks of layers held at a bound), one layer at a time: with lazy scores its memory is one
    layer's scores instead of every layer's, for the cost of making them again (e.g. ``|W|``). *make*
    must return the same values on every call (the masks would not be exact otherwise).
    """

    def __init__(self, make: Callable[[], torch.Tensor], numel: int, device: torch.device) -> None:
        self.make, self._numel, self.device = make, numel, device

    def numel(self) -> int:
        return self._numel

    def __call__(self) -> torch.Tensor:
        scores = self.make().detach().reshape(-1)
        if scores.numel() != self._numel:
            raise RuntimeError(f"lazy scores changed size: made {scores.numel()}, declared {self._numel}")
        return scores if scores.dtype == torch.float32 else scores.float()


Scores = torch.Tensor | LazyScores


def _get(part: Scores) -> torch.Tensor:
    """*part*'s scores as a tensor (lazy ones made now: hold the result only while reading it)."""
    return part() if isinstance(part, LazyScores) else part


@dataclass(frozen=True)
class LayerUnits:
    """What selection needs to know of one layer.

    Under sharding, ``scores`` are this rank's units only (a contiguous run; rank r's come before
    rank r+1's) and ``total_units`` is the layer's count over all ranks; ``numel`` is always the
    whole layer's.
    """

    scores: torch.Tensor | LazyScores  # 1-D, one per unit (lazy: made when read, see LazyScores)
    unit_elements: int  # weights zeroed by pruning one unit
    numel: int  # weights in the layer
    max_sparsity: float = 1.0
    min_sparsity: float = 0.0
    total_units: int | None = None  # over all ranks; None: scores.numel()
    #: ranking rows for ``prune_domain: row`` (this rank's): the units, in order, split into equal rows
    rows: int = 1

    @property
    def units(self) -> int:
        return self.scores.numel() if self.total_units is None else self.total_units

    def units_for(self, sparsity: float) -> int:
        """Most units whose pruning keeps the layer at or below *sparsity*."""
        return min(self.units, math.floor(sparsity * self.numel / self.unit_elements + EPS))

    def bounds(self, sparsity: float) -> tuple[int, int]:
        """(floor, cap) in units at a step whose sparsity is *sparsity*."""
        hi = self.units_for(self.max_sparsity)
        floor = min(self.min_sparsity, sparsity)
        lo = math.ceil(floor * self.numel / self.unit_elements - EPS)
        return min(max(lo, 0), hi), hi


# -- the exact cut over many scores, from counts only -------------------------------------------
def _key(x: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as the float32 values (-0.0 and 0.0 share one, as they compare equal)."""
    bits = (x + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _value(key: int) -> float:
    bits = key if key >= 0 else (-key - 1) | 0x80000000
    return struct.unpack("<f", struct.pack("<I", bits))[0]


_KEY_MIN, _KEY_MAX = -0x7F800000 - 1, 0x7F800000  # the keys of -inf and +inf


def _chunks(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[i : i + _CHUNK] for i in range(0, x.numel(), _CHUNK)]


def _flat(scores: Scores) -> Scores:
    return scores if isinstance(scores, LazyScores) else _flat_tensor(scores)  # lazy ones are made 1-D float32


def _flat_tensor(scores: torch.Tensor) -> torch.Tensor:
    scores = scores.detach().reshape(-1)
    return scores if scores.dtype == torch.float32 else scores.float()


def _has_nan(part: torch.Tensor, total: torch.Tensor | None = None) -> bool:
    # a sum (*total*, if the caller summed already) is NaN whenever a score is (or +inf meets -inf: look closer)
    if not part.numel():
        return False
    return bool(torch.isnan(part.sum() if total is None else total)) and bool(part.isnan().any())


def _clean(scores: Scores) -> Scores:
    # NaN would make the ranking meaningless; a NaN score is treated as "least important".
    if isinstance(scores, LazyScores):
        lazy = scores
        return LazyScores(lambda: _clean_tensor(lazy()), lazy.numel(), lazy.device)
    return _clean_tensor(scores)


def _clean_tensor(scores: torch.Tensor) -> torch.Tensor:
    scores = _flat_tensor(scores)
    return torch.nan_to_num(scores, nan=-1.0) if _has_nan(scores) else scores


class _NaNScores(Exception):
    """Some rank's scores hold NaN (found by the scan, agreed over the ranks): clean them, start again."""


def _cleaned_on_nan(run: Callable[[list[Scores]], list[torch.Tensor]], scores: list[Scores]) -> list[torch.Tensor]:
    """``run(scores)``; if the scan finds NaN (every rank learns it from the same all-reduce), again
    with NaN as -1 ("least important"). The scan checks for NaN on the chunks it reads anyway, so
    clean scores cost no pass of their own (a separate sum was 8% of a selection at 5e8 scores)."""
    try:
        return run(scores)
    except _NaNScores:
        return run([_clean(s) for s in scores])


@dataclass
class _Cut:
    """Where the walk of k units stops: every unit below ``value`` is in, and per layer ``take`` of
    its ``equal`` units at ``value`` (the first by position); ``counts`` per layer, within bounds."""

    value: float
    units: list[int]
    below: list[int]
    equal: list[int]
    counts: list[int]
    take: list[int]
    #: per layer, what the bracketing pass kept (the mask below the bracket, the units inside)
    scan: list[_Kept]


def _walk(below: list[int], equal: list[int], k: int, lo: list[int], hi: list[int]) -> tuple[list[int], list[int]]:
    """Counts per layer, and ties taken, when the walk stops at a value with *below*/*equal* units."""
    counts = [min(max(b, lo_i), hi_i) for b, lo_i, hi_i in zip(below, lo, hi, strict=True)]
    left = k - sum(counts)
    take = [0] * len(below)
    for i, (b, e) in enumerate(zip(below, equal, strict=True)):  # ties: earlier layers first
        extra = max(0, min(min(b + e, hi[i]) - counts[i], left))
        counts[i] += extra
        left -= extra
        take[i] = min(max(counts[i] - b, 0), e)
    return counts, take


def _clamped(counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(counts, lo), hi)


def _cut(parts: Sequence[Scores], k: int, lo: list[int], hi: list[int], comm: Comm, masks: bool = True) -> _Cut:
    """The exact cut for ``G(v) = sum_i clamp(#units of layer i <= v, lo_i, hi_i)`` to reach *k*,
    over every rank's *parts* (one 1-D float32 tensor per layer: this rank's units).

    Requires ``sum(lo) < k <= sum(hi)``. Finds the value v with ``G(v-) < k <= G(v)``: a sample
    brackets it, one chunked pass counts the units below the bracket and keeps those inside, and
    histograms of the keys inside narrow the bracket to one value (2-3 rounds). With *masks*, that
    pass also writes each layer's mask of the units below the bracket, which :func:`_masks` completes
    from the few units inside (no second pass over the scores).
    """
    n_layers = len(parts)
    lo_t, hi_t = torch.tensor(lo, dtype=torch.long), torch.tensor(hi, dtype=torch.long)
    local = torch.zeros(comm.world, n_layers, dtype=torch.long)
    local[comm.rank] = torch.tensor([p.numel() for p in parts], dtype=torch.long)
    sizes = comm.sum_(local)  # [rank, layer] unit counts
    total = int(sizes.sum())
    klo, khi = (_KEY_MIN, _KEY_MAX) if total <= _DIRECT else _bracket(parts, k, lo_t, hi_t, sizes, comm)
    while True:
        scanned, band = _scan(parts, klo, khi, limit=int(_BAND_SHARE * total / comm.world) + _CHUNK, masks=masks)
        below, inside, nan = comm.sum_(scanned)
        if bool(nan.any()):
            raise _NaNScores
        if int(_clamped(below, lo_t, hi_t).sum()) < k <= int(_clamped(below + inside, lo_t, hi_t).sum()):
            break
        if (klo, khi) == (_KEY_MIN, _KEY_MAX):
            raise RuntimeError(f"selection: no cut prunes {k} units within the bounds {lo}..{hi}")
        klo, khi = _KEY_MIN, _KEY_MAX  # the sample missed (probability far below 1e-6): full range
    scan = band
    # bins per round: enough to split the units inside in few rounds, never many more than units; the
    # per-round histogram holds layers x bins counts, kept <= 2**16 so that the cumulative sums and clamps
    # of a small update stay cheap (2**22 made a BERT-mini 4x1 update 105 ms instead of 15 ms)
    bins_log2 = max(8, min(16, 16 - n_layers.bit_length(), int(inside.sum()).bit_length() + 1))
    whole = [i for i, kept in enumerate(band) if kept.whole]
    pooled = _pooled(band)  # the units kept inside, of all layers at once: one histogram op per chunk, not per layer
    if comm.world == 1 and not whole and len(pooled) == 1 and _BAND_SELECT and int(inside.sum()) <= _BAND_SELECT_MAX:
        settled = _settled_in_band(pooled[0], k, below.tolist(), inside.tolist(), lo, hi)
        if settled is not None:
            value, below_l, equal_l = settled
            counts, take = _walk(below_l, equal_l, k, lo, hi)
            return _Cut(value, sizes.sum(0).tolist(), below_l, equal_l, counts, take, scan)
    while khi > klo:
        shift = max(0, (khi - klo).bit_length() - bins_log2)
        nbins = ((khi - klo) >> shift) + 1
        hist = torch.zeros(n_layers * nbins, dtype=torch.long)
        for values, layer in pooled:
            for start in range(0, values.numel(), _CHUNK):
                end = start + _CHUNK
                bins = ((_key(values[start:end]) - klo) >> shift) + layer[start:end].long() * nbins
                hist += torch.bincount(bins, minlength=n_layers * nbins).cpu()
        for i in whole:
            for key in _keys_in(band[i], klo, khi):
                hist += torch.bincount(((key - klo) >> shift) + i * nbins, minlength=n_layers * nbins).cpu()
        hist = comm.sum_(hist).view(n_layers, nbins)
        cum = below.unsqueeze(1) + hist.cumsum(1)
        reached = _clamped(cum, lo_t.unsqueeze(1), hi_t.unsqueeze(1)).sum(0)
        b = int(torch.searchsorted(reached, torch.tensor([k]))[0])  # first bin where G reaches k
        if b > 0:
            below = cum[:, b - 1]
        inside = hist[:, b]
        klo, khi = klo + (b << shift), min(khi, klo + (b << shift) + (1 << shift) - 1)
        vlo, vhi = _value(klo), _value(khi)
        narrowed = []
        for values, layer in pooled:
            keep = (values >= vlo) & (values <= vhi)
            narrowed.append((values[keep], layer[keep]))
        pooled = narrowed
    below_l, equal_l = below.tolist(), inside.tolist()
    counts, take = _walk(below_l, equal_l, k, lo, hi)
    return _Cut(_value(klo), sizes.sum(0).tolist(), below_l, equal_l, counts, take, scan)


def _settled_in_band(
    pooled: tuple[torch.Tensor, torch.Tensor], k: int, below: list[int], inside: list[int], lo: list[int], hi: list[int]
) -> tuple[float, list[int], list[int]] | None:
    """The cut from the units inside the bracket by one selection, when no layer's bound is reached
    inside it (each layer is at its cap or floor all through it, or within its bounds all through
    it): then G inside the bracket is a constant plus the count of the free layers' units at or
    below a value, and the cut is their ``k - constant``-th smallest value (:func:`_kth_value`, one
    pass, instead of the histogram rounds). Returns the cut's value and the units below it and equal
    to it per layer (as the rounds find them); None when some bound is reached inside."""
    base, free = 0, []
    for i, (b, n) in enumerate(zip(below, inside, strict=True)):
        if b >= hi[i]:  # at its cap before the bracket
            base += hi[i]
        elif b + n <= lo[i]:  # held at its floor through it
            base += lo[i]
        elif lo[i] <= b and b + n <= hi[i]:  # within its bounds through it: every unit counts
            base += b
            free.append(i)
        else:
            return None
    values, layer = pooled
    rank = k - base
    if not 1 <= rank <= sum(inside[i] for i in free):
        return None
    if len(free) < sum(1 for n in inside if n):  # leave out the units of layers held at a bound
        is_free = torch.zeros(len(below), dtype=torch.bool, device=values.device)
        is_free[free] = True
        chosen = values[is_free[layer.long()]]
    else:
        chosen = values
    value = float(_kth_value(chosen, rank)) + 0.0  # -0.0 as 0.0, as the rounds' keys give it
    layer = layer.long()
    less = torch.bincount(layer[values < value], minlength=len(below)).tolist()
    equal = torch.bincount(layer[values == value], minlength=len(below)).tolist()
    return value, [b + m for b, m in zip(below, less, strict=True)], equal


def _bracket(
    parts: Sequence[Scores], k: int, lo: torch.Tensor, hi: torch.Tensor, sizes: torch.Tensor, comm: Comm
) -> tuple[int, int]:
    """Keys that bracket the cut with near certainty, from a fixed-seed sample of every rank's units:
    the estimate of G from the sample is off by more than ``margin`` with probability below 1e-6."""
    total = int(sizes.sum())
    want = min(_SAMPLE, max(1 << 12, total // 64))
    takes = torch.where(sizes > 0, (sizes * want + total - 1) // total, 0).clamp_max(sizes)  # [rank, layer]
    starts = (takes.flatten().cumsum(0) - takes.flatten()).view_as(takes)
    sample = torch.zeros(int(takes.sum()))
    generator = torch.Generator().manual_seed(comm.rank)
    for part, start, n in zip(parts, starts[comm.rank].tolist(), takes[comm.rank].tolist(), strict=True):
        if n:
            index = torch.randint(part.numel(), (n,), generator=generator).to(part.device)
            sample[start : start + n] = _get(part)[index].cpu()
    sample = comm.sum_(sample)  # every rank's share, in [rank, layer] order
    n_layers = sizes.shape[1]
    # one sorted array of (layer, key): each layer's sampled units at or below a key by searchsorted
    layer_of = torch.arange(n_layers).repeat(comm.world).repeat_interleave(takes.flatten())
    shift = 1 << 33
    combined = torch.sort(layer_of * shift + (_key(sample) - _KEY_MIN)).values
    per_layer = takes.sum(0)
    first = per_layer.cumsum(0) - per_layer
    scale = sizes.sum(0).double() / per_layer.clamp_min(1).double()
    offsets = torch.arange(n_layers) * shift - _KEY_MIN
    lo_d, hi_d = lo.double(), hi.double()
    margin = 4.0 * total / math.sqrt(sample.numel()) + float(scale.sum())

    def estimate(key: int) -> float:
        seen = torch.searchsorted(combined, offsets + key, right=True) - first
        return float(_clamped(seen.double() * scale, lo_d, hi_d).sum())

    klo, khi = _bisect(estimate, k - margin, below=True), _bisect(estimate, k + margin, below=False)
    return klo, khi


def _bisect(estimate: Callable[[int], float], target: float, below: bool) -> int:
    """The largest key whose estimate is at most *target* (*below*), else the smallest whose estimate
    is at least *target*; the range's end if there is none."""
    a, b = _KEY_MIN, _KEY_MAX
    if below:
        if estimate(a) > target:
            return _KEY_MIN
        while b - a > 1:  # estimate(a) <= target < estimate(b), or b is the end
            m = (a + b) // 2
            a, b = (m, b) if estimate(m) <= target else (a, m)
        return b if estimate(b) <= target else a
    if estimate(b) < target:
        return _KEY_MAX
    while b - a > 1:  # estimate(a) < target <= estimate(b)
        m = (a + b) // 2
        a, b = (a, m) if estimate(m) >= target else (m, b)
    return a if estimate(a) >= target else b


@dataclass
class _Kept:
    """One layer's units inside the bracket on this rank: their scores (``values``), and from the
    bracketing pass their positions and the mask of the units below the bracket (``below``, the
    full-size start of the layer's mask). ``whole``: too many inside to keep, the part itself
    (a view, no copy, or the lazy scores, made again) is rescanned each round and its mask made by
    a pass of its own."""

    values: Scores
    positions: torch.Tensor | None = None
    below: torch.Tensor | None = None
    whole: bool = False


def _scan(
    parts: Sequence[Scores], klo: int, khi: int, limit: int, masks: bool = False
) -> tuple[torch.Tensor, list[_Kept]]:
    """This rank's counts per layer of the units below ``klo`` and inside ``[klo, khi]``, and whether
    the layer's scores hold NaN (a [3, layer] tensor), and the units inside: kept while they fit in
    *limit* units, else the whole part is rescanned each round. With *masks*, the comparison against
    ``klo`` is written into a full-size bool tensor per layer (it is the mask below the cut), and the
    positions of the units inside are kept with them."""
    counts = torch.zeros(3, len(parts), dtype=torch.long)
    if (klo, khi) == (_KEY_MIN, _KEY_MAX):
        counts[1] = torch.tensor([part.numel() for part in parts], dtype=torch.long)
        counts[2] = torch.tensor([_has_nan(_get(part)) for part in parts], dtype=torch.long)
        return counts, [_Kept(part, whole=True) for part in parts]
    vlo, vhi = _value(klo), _value(khi)
    band: list[_Kept] = []
    kept = 0
    stats: list[list[int]] = [[], [], []]  # per layer: below, inside, NaN (one tensor at the end: few small ops)
    for lazy in parts:
        part = _get(lazy)
        n = part.numel()
        lower = torch.empty(n if masks else min(n, _CHUNK), dtype=torch.bool, device=part.device)
        index = torch.int32 if n < 2**31 else torch.int64
        array = _as_numpy(part)
        if array is not None:
            below, values, positions, total = _scan_numpy(array, vlo, vhi, lower, masks, index)
        else:
            below, values, positions, total = _scan_torch(part, vlo, vhi, lower, masks, index)
        inside = _joined(values, part.new_empty(0))
        stats[0].append(below)
        stats[1].append(inside.numel())
        stats[2].append(math.isnan(total) and bool(part.isnan().any()))  # +inf meets -inf: look closer
        kept += inside.numel()
        if kept > limit:  # too many to keep: rescan this part each round instead
            kept -= inside.numel()
            band.append(_Kept(lazy, whole=True))
        elif masks:
            band.append(_Kept(inside, _joined(positions, torch.empty(0, dtype=index, device=part.device)), lower))
        else:
            band.append(_Kept(inside))
    return torch.tensor(stats, dtype=torch.long), band


_Pass = tuple[int, list[torch.Tensor], list[torch.Tensor], float]


def _scan_torch(
    part: torch.Tensor, vlo: float, vhi: float, lower: torch.Tensor, masks: bool, index: torch.dtype
) -> _Pass:
    """One layer's pass of :func:`_scan` by torch ops, chunk by chunk: the units below *vlo* (counted,
    and written into *lower*: the whole mask with *masks*, else one chunk's scratch), the values inside
    ``[vlo, vhi]`` with their positions (with *masks*), and the sum of the scores (NaN if one is)."""
    n = part.numel()
    upper = torch.empty(min(n, _CHUNK), dtype=torch.bool, device=part.device)
    values: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    belows: list[torch.Tensor] = []  # per chunk, summed on the device: no sync per chunk
    sums: list[torch.Tensor] = []  # NaN if a score is: checked while the chunk is in cache
    for start in range(0, n, _CHUNK):
        chunk = part[start : start + _CHUNK]
        lt = lower[start : start + chunk.numel()] if masks else lower[: chunk.numel()]
        le = upper[: chunk.numel()]
        torch.lt(chunk, vlo, out=lt)
        sums.append(chunk.sum())
        belows.append(torch.count_nonzero(lt))
        torch.le(chunk, vhi, out=le)
        where = torch.nonzero(le.logical_xor_(lt)).flatten()  # below vlo implies at most vhi: xor = inside
        values.append(chunk[where])
        if masks:
            positions.append((where + start if start else where).to(index))
    return int(_summed(belows)), values, positions, float(_summed(sums))


def _scan_numpy(scores: Any, vlo: float, vhi: float, lower: torch.Tensor, masks: bool, index: torch.dtype) -> _Pass:
    """:func:`_scan_torch` by numpy on the same memory (CPU; *scores*: the part as :func:`_as_numpy`
    gives it): the same comparisons of the same float32 numbers, so the same counts, values and
    masks. numpy's SIMD comparisons, counts and ``flatnonzero``
    make the pass 2-2.5 times faster than torch's on this kind of CPU (a chunked pass over 2^26 scores,
    one thread: 98-126 against 252-287 ms, measured; torch's float-to-bool comparison alone took 110 ms).
    numpy runs each call on one thread, so the chunks are spread over torch's intra-op thread count
    (numpy releases the GIL in these calls)."""
    np = _numpy
    low = lower.numpy() if masks else None
    lo32, hi32 = np.float32(vlo), np.float32(vhi)
    to = np.int32 if index == torch.int32 else np.int64

    def chunk_pass(start: int) -> tuple[int, float, torch.Tensor, torch.Tensor | None]:
        chunk = scores[start : start + _CHUNK]
        m = chunk.size
        lt = low[start : start + m] if low is not None else np.empty(m, dtype=np.bool_)
        le = np.empty(m, dtype=np.bool_)
        np.less(chunk, lo32, out=lt)
        total = float(np.add.reduce(chunk))
        below = int(np.count_nonzero(lt))
        np.less_equal(chunk, hi32, out=le)
        np.logical_xor(le, lt, out=le)
        where = np.flatnonzero(le)
        position = torch.from_numpy((where + start).astype(to, copy=False)) if masks else None
        return below, total, torch.from_numpy(chunk[where]), position

    done = _in_threads(chunk_pass, range(0, scores.size, _CHUNK))
    values = [v for _, _, v, _ in done]
    positions = [p for _, _, _, p in done if p is not None]
    return sum(b for b, _, _, _ in done), values, positions, sum(t for _, t, _, _ in done)  # NaN if one is


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, threads) -> pool; at most one


def _in_threads(run: Callable[[int], _T], starts: range) -> list[_T]:
    """``[run(s) for s in starts]``, spread over ``torch.get_num_threads()`` threads when there are
    several chunks (a pool made once per process and thread count; a forked child makes its own)."""
    threads = torch.get_num_threads()
    if threads <= 1 or len(starts) < 4:
        return [run(s) for s in starts]
    key = (os.getpid(), threads)
    pool = _POOLS.get(key)
    if pool is None:
        for (pid, _), old in _POOLS.items():
            if pid == key[0]:
                old.shutdown(wait=False)
        _POOLS.clear()
        pool = _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="pytorch-pruner-select")
    return list(pool.map(run, starts))


def _as_numpy(part: torch.Tensor) -> Any:  # numpy.ndarray | None
    """*part* as a numpy array sharing its memory, for the numpy paths (:func:`_kth_value`,
    :func:`_scan_numpy`, :func:`_mask_below`): numpy installed, a CPU float32 tensor, and a torch
    that hands tensors to numpy; else None."""
    if _numpy is None or part.device.type != "cpu" or part.dtype != torch.float32 or part.requires_grad:
        return None
    try:
        return part.numpy()
    except RuntimeError:  # a torch built without numpy support ("Numpy is not available")
        return None


def _summed(pieces: list[torch.Tensor]) -> torch.Tensor | int:
    return 0 if not pieces else pieces[0] if len(pieces) == 1 else torch.stack(pieces).sum()


def _joined(pieces: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    return empty if not pieces else pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _pooled(band: list[_Kept]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The values kept inside the bracket of every layer not rescanned whole, joined per device,
    with each value's layer index (int32)."""
    by_device: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for i, kept in enumerate(band):
        if kept.whole or not kept.values.numel():
            continue
        values, layers = by_device.setdefault(kept.values.device, ([], []))
        values.append(_get(kept.values))  # a tensor: only whole parts are lazy
        layers.append(torch.full((kept.values.numel(),), i, dtype=torch.int32, device=kept.values.device))
    return [(_joined(v, v[0]), _joined(n, n[0])) for v, n in by_device.values()]


def _keys_in(kept: _Kept, klo: int, khi: int) -> Iterator[torch.Tensor]:
    vlo, vhi = _value(klo), _value(khi)
    for chunk in _chunks(_get(kept.values)):
        yield _key(chunk[(chunk >= vlo) & (chunk <= vhi)])


# -- masks from a cut --------------------------------------------------------------------------
def _mask_below(part: Scores, value: float, ties: int, all_ties: bool) -> torch.Tensor:
    """Units below *value*, and the first *ties* of those equal to it (*all_ties*: every one)."""
    part = _get(part)
    n = part.numel()
    mask = torch.empty(n, dtype=torch.bool, device=part.device)
    scores = _as_numpy(part)
    if scores is not None:  # numpy's comparison: the same result, 2-4 times faster (see _scan_numpy)
        compare_np, bound, out = (_numpy.less_equal if all_ties else _numpy.less), _numpy.float32(value), mask.numpy()
        _in_threads(lambda s: compare_np(scores[s : s + _CHUNK], bound, out=out[s : s + _CHUNK]), range(0, n, _CHUNK))
    else:
        compare = torch.le if all_ties else torch.lt
        for start in range(0, n, _CHUNK):
            compare(part[start : start + _CHUNK], value, out=mask[start : start + _CHUNK])
    if all_ties:
        return mask
    for start in range(0, part.numel(), _CHUNK):
        if ties <= 0:
            break
        found = torch.nonzero(part[start : start + _CHUNK] == value).flatten()[:ties]
        mask[found + start] = True
        ties -= found.numel()
    return mask


def _mask_from_scan(kept: _Kept, value: float, ties: int, all_ties: bool) -> torch.Tensor:
    """:func:`_mask_below` from the bracketing pass: its mask of the units below the bracket, plus
    the units inside it that are below *value*, and the first *ties* (by position) equal to it."""
    assert kept.below is not None and kept.positions is not None
    mask, values, positions = kept.below, _get(kept.values), kept.positions
    kept.below = None  # handed over: the mask is the caller's now
    take = values <= value if all_ties else values < value
    mask[positions[take].long()] = True
    if not all_ties and ties > 0:  # positions ascend (chunks in order, nonzero sorted): first = lowest
        mask[positions[values == value][:ties].long()] = True
    return mask


def _local_ties(parts: Sequence[Scores], cut: _Cut, comm: Comm) -> list[int]:
    """Ties at the cut's value this rank takes per layer: the first ``cut.take`` by global position,
    rank by rank. Only layers whose ties are split need the other ranks' counts."""
    ties = list(cut.take)
    split = [i for i in range(len(parts)) if 0 < cut.take[i] < cut.equal[i]]
    if comm.world == 1 or not split:
        return ties
    local = torch.zeros(comm.world, len(split), dtype=torch.long)
    for j, i in enumerate(split):
        kept = cut.scan[i]  # every unit equal to the cut's value is inside the bracket
        source = _chunks(_get(parts[i])) if kept.whole else [_get(kept.values)]
        local[comm.rank, j] = sum(int(torch.count_nonzero(c == cut.value)) for c in source)
    per_rank = comm.sum_(local)
    before = per_rank[: comm.rank].sum(0)
    for j, i in enumerate(split):
        ties[i] = min(max(cut.take[i] - int(before[j]), 0), int(per_rank[comm.rank, j]))
    return ties


def _masks(parts: Sequence[Scores], cut: _Cut, comm: Comm) -> list[torch.Tensor]:
    """The masks of the walk that stopped at *cut*; a layer held at a bound away from the cut's
    value (a cap below it, a floor above it) gets its own lowest units."""
    ties = _local_ties(parts, cut, comm)
    masks = []
    for i, part in enumerate(parts):
        kept = cut.scan[i]
        if cut.below[i] <= cut.counts[i] <= cut.below[i] + cut.equal[i]:
            all_ties = cut.take[i] == cut.equal[i]
            if kept.below is not None:
                masks.append(_mask_from_scan(kept, cut.value, ties[i], all_ties))
            else:
                masks.append(_mask_below(part, cut.value, ties[i], all_ties))
        else:
            kept.below = None  # held at a bound away from the cut: its own ranking (free this first)
            masks.append(_lowest_one(part, cut.counts[i], cut.units[i], comm))
    return masks


def _lowest_one(part: Scores, k: int, units: int, comm: Comm) -> torch.Tensor:
    """The *k* lowest of one layer's *units* (over all ranks; *part* is this rank's)."""
    if k <= 0 or k >= units:
        return torch.full((part.numel(),), k > 0, dtype=torch.bool, device=part.device)
    if comm.world == 1 and units <= _SELECT_ONE:
        return _lowest_selected(_get(part), k)
    return _masks([part], _cut([part], k, [0], [units], comm), comm)[0]


def _lowest_selected(part: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`_lowest_one` of one process's small *part* (0 < k < its size): the k-th value by one
    selection (:func:`_kth_value`), the units below it and its first copies by position. The same
    mask as the histograms' (ties to the lower index; -0.0 and 0.0 compare equal in both)."""
    if _has_nan(part):
        raise _NaNScores
    value = _kth_value(part, k)
    mask = part < value
    return _with_first_ties(mask, part, value, k - int(torch.count_nonzero(mask)))


def _with_first_ties(mask: torch.Tensor, part: torch.Tensor, value: torch.Tensor | float, ties: int) -> torch.Tensor:
    """*mask* (the units of *part* below *value*) with the first *ties* units equal to it set too."""
    if ties > 0:
        mask[torch.nonzero(part == value).flatten()[:ties]] = True
    return mask


def _held_bounds(held: list[int], k: int, lo: list[int], hi: list[int]) -> tuple[list[int], int]:
    """The free layers (``held`` 0; 1: at its cap, -1: at its floor) and the rank of the cut among
    their units: *k* less the held layers' bounds."""
    free = [i for i, h in enumerate(held) if not h]
    return free, k - sum(hi[i] if h > 0 else lo[i] for i, h in enumerate(held) if h)


def _lowest_within(parts: Sequence[Scores], k: int, lo: list[int], hi: list[int], comm: Comm) -> list[torch.Tensor]:
    """Masks of the *k* lowest units over all layers, each layer between its lo and hi units: the
    floors' units first, then one ranking of the rest; floors alone over *k*: a ranking of theirs."""
    if k <= 0:
        return [torch.zeros(p.numel(), dtype=torch.bool, device=p.device) for p in parts]
    if k <= sum(lo):  # best effort: the budget goes down the ranking of the floors' units
        lo, hi = [0] * len(parts), lo
    if k >= sum(hi):
        units = comm.sum_(torch.tensor([p.numel() for p in parts], dtype=torch.long)).tolist()
        return [_lowest_one(p, h, n, comm) for p, h, n in zip(parts, hi, units, strict=True)]
    if (
        comm.world == 1
        and sum(p.numel() for p in parts) <= _SELECT_ALL
        and len({p.device for p in parts}) == 1
        and not any(isinstance(p, LazyScores) for p in parts)  # lazy: one layer's scores at a time, as asked
    ):
        masks = _lowest_selected_all(parts, k, lo, hi)
        if masks is not None:
            return masks
    return _masks(parts, _cut(parts, k, lo, hi, comm), comm)


def _lowest_selected_all(parts: Sequence[Scores], k: int, lo: list[int], hi: list[int]) -> list[torch.Tensor] | None:
    """:func:`_lowest_within` in one process for few units in all, by k-th value selections
    (:func:`_kth_value`) instead of the sample and the histograms; the same masks.

    A candidate value v is the cut when ``G(v-) < k <= G(v)`` (G as in :func:`_cut`, from each
    layer's counts below and at v). The first candidate is the k-th smallest of all units; then,
    holding each layer that the last one put at its cap (at least its cap below v) or its floor (at
    most its floor up to v) there, the k'-th smallest of the other layers' units, k' being k less
    the held layers' bounds (with caps alone, the candidates rise and a capped layer stays capped).
    None when no candidate is the cut within a few rounds: the histograms then find it."""
    scores = [_get(p) for p in parts]
    joined = torch.cat(scores)  # every unit, layer after layer: one op per comparison, not one per layer
    if _has_nan(joined):
        raise _NaNScores
    sizes = [t.numel() for t in scores]
    n = len(scores)
    held = _held_guess(scores, k, lo, hi) if n > 1 and joined.numel() >= _GUESS_MIN else [0] * n
    for _ in range(_SELECT_ROUNDS):
        free, rank = _held_bounds(held, k, lo, hi)
        if not free or not 1 <= rank <= sum(sizes[i] for i in free):
            return None
        value = _kth_value(joined if len(free) == n else torch.cat([scores[i] for i in free]), rank)
        compared = torch.empty(2, joined.numel(), dtype=torch.bool, device=joined.device)
        torch.lt(joined, value, out=compared[0])
        torch.le(joined, value, out=compared[1])
        counts = torch.stack([c.count_nonzero() for row in compared for c in row.split(sizes)]).tolist()
        below, upto = counts[:n], counts[n:]
        if (
            sum(min(max(b, lo[i]), hi[i]) for i, b in enumerate(below))
            < k
            <= sum(min(max(u, lo[i]), hi[i]) for i, u in enumerate(upto))
        ):
            del joined
            equal = [u - b for b, u in zip(below, upto, strict=True)]
            chosen, take = _walk(below, equal, k, lo, hi)
            masks = []
            lowers, uppers = compared[0].split(sizes), compared[1].split(sizes)
            for i, (part, lower, upper) in enumerate(zip(scores, lowers, uppers, strict=True)):
                if below[i] <= chosen[i] <= upto[i]:  # at the cut: the units below it, and its first ties
                    mask = upper if take[i] == equal[i] else _with_first_ties(lower, part, value, take[i])
                else:  # held at a bound away from the cut: its own lowest units
                    mask = _lowest_one(part, chosen[i], part.numel(), _LOCAL)
                masks.append(mask)
            return masks
        held = [1 if b >= hi[i] else -1 if u <= lo[i] else 0 for i, (b, u) in enumerate(zip(below, upto, strict=True))]
    return None


def _held_guess(scores: list[torch.Tensor], k: int, lo: list[int], hi: list[int]) -> list[int]:
    """Which layers :func:`_lowest_selected_all` will find held at their cap (1) or floor (-1), guessed
    from every ``_GUESS_STRIDE``-th unit: the same rounds on the sample, with the counts scaled up
    (a few small ops instead of a selection over every unit). Only the first candidate: every
    candidate is checked on all units, so a wrong guess costs a round, never a wrong mask."""
    sample = [t[::_GUESS_STRIDE] for t in scores]
    scale = [t.numel() / max(1, p.numel()) for t, p in zip(scores, sample, strict=True)]
    everything = torch.cat(sample)
    held = [0] * len(scores)
    for _ in range(_SELECT_ROUNDS):
        free, rank = _held_bounds(held, k, lo, hi)
        units = sum(scores[i].numel() for i in free)
        if not free or not 1 <= rank <= units:
            break
        pool = everything if len(free) == len(scores) else torch.cat([sample[i] for i in free])
        value = _kth_value(pool, min(max(1, round(rank * pool.numel() / units)), pool.numel()))
        below = torch.stack([(p < value).count_nonzero() for p in sample]).tolist()
        guess = [1 if b * c >= h else -1 if b * c < f else 0 for b, c, f, h in zip(below, scale, lo, hi, strict=True)]
        if guess == held:
            break
        held = guess
    return held


# -- public ----------------------------------------------------------------------------------
def kth_smallest(x: torch.Tensor | Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The exact k-th smallest value (1-based) of 1-D *x*, or of several 1-D tensors taken
    together (without concatenating them), as a 0-dim tensor.

    Example:
        >>> float(kth_smallest([torch.tensor([5.0, 1.0]), torch.tensor([3.0])], 2))
        3.0
    """
    parts = [_clean(p) for p in ([x] if isinstance(x, torch.Tensor) else x)]
    n = sum(p.numel() for p in parts)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n} (the number of values), not {k}")
    return torch.tensor(_cut(parts, k, [0] * len(parts), [p.numel() for p in parts], _LOCAL, masks=False).value)


def lowest_k(scores: torch.Tensor, k: int, comm: Comm | None = None) -> torch.Tensor:
    """Bool mask of the *k* lowest entries of 1-D *scores*; ties go to the lower index.

    Linear time and memory of a few percent of *scores*, so it stays fast at 10^9 scores. With
    *comm*, *scores* is this rank's run of the units and *k* counts over all ranks.
    """
    comm = comm or _LOCAL
    units = int(comm.sum_(torch.tensor([scores.numel()], dtype=torch.long))[0])
    return _lowest_of(scores, k, units, comm)


def _lowest_of(scores: Scores, k: int, units: int, comm: Comm) -> torch.Tensor:
    """:func:`_lowest_one` of *scores* as float32, NaN ranked as -1 if the scan finds any."""
    return _cleaned_on_nan(lambda s: [_lowest_one(s[0], k, units, comm)], [_flat(scores)])[0]


Domain = Callable[[Sequence[LayerUnits], float, Comm], list[torch.Tensor]]


def _select_local(layers: Sequence[LayerUnits], sparsity: float, comm: Comm) -> list[torch.Tensor]:
    chosen = []
    for layer in layers:
        lo, hi = layer.bounds(sparsity)
        k = min(max(layer.units_for(sparsity), lo), hi)
        chosen.append(_lowest_of(layer.scores, k, layer.units, comm))
    return chosen


def _select_global(layers: Sequence[LayerUnits], sparsity: float, comm: Comm) -> list[torch.Tensor]:
    budget = math.floor(sparsity * sum(layer.numel for layer in layers) + EPS)  # in weights
    lo, hi = (list(b) for b in zip(*(layer.bounds(sparsity) for layer in layers), strict=True))
    sizes = {layer.unit_elements for layer in layers}
    if len(sizes) == 1:
        k = budget // sizes.pop()
        return _cleaned_on_nan(lambda s: _lowest_within(s, k, lo, hi, comm), [_flat(layer.scores) for layer in layers])
    scores = [_get(_clean(layer.scores)) for layer in layers]
    if comm.world > 1:
        raise NotImplementedError(
            "global ranking of units of different sizes (channel patterns over layers of different "
            "shapes) is not supported across ranks; use prune_domain: local, or an NxM pattern"
        )
    return _select_mixed(layers, scores, budget, lo, hi)


def _select_mixed(
    layers: Sequence[LayerUnits], scores: list[torch.Tensor], budget: int, lo: list[int], hi: list[int]
) -> list[torch.Tensor]:
    """Units of different sizes: the floors' units first, then one stable ranking of the units above
    their layer's floor and below its cap, pruned whole while they fit in the budget (in weights)."""
    unit = torch.tensor([layer.unit_elements for layer in layers], dtype=torch.long)
    layer_of = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(scores)])
    within = torch.cat([_ranks(s.cpu()) for s in scores])  # each unit's place in its own layer's ranking
    floor = within < torch.tensor(lo, dtype=torch.long)[layer_of]
    below_cap = within < torch.tensor(hi, dtype=torch.long)[layer_of]
    floors_cost = int((torch.tensor(lo, dtype=torch.long) * unit).sum())
    if floors_cost > budget:  # best effort: the budget goes down the ranking of the floors' units
        candidates, chosen, left = floor, torch.zeros_like(floor), budget
    else:
        candidates, chosen, left = below_cap & ~floor, floor, budget - floors_cost
    order = torch.sort(torch.cat([s.cpu() for s in scores]), stable=True).indices
    in_order = candidates[order]
    cost = torch.cumsum(unit[layer_of[order]] * in_order, 0)
    chosen[order[in_order & (cost <= left)]] = True
    return [part.to(s.device) for part, s in zip(chosen.split([s.numel() for s in scores]), scores, strict=True)]


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    order = torch.sort(scores, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks


def select_rows(layer: LayerUnits, sparsity: float) -> torch.Tensor:
    """Units to prune when each of the layer's ``rows`` prunes its lowest units (ties to the lower
    index) up to ``floor(s * its weights)`` weights, within the layer's floor and cap: ``floor(s *
    its units)`` units when units tile the row (NxM, channels), ``floor(s * M/N * its groups)`` N:M
    groups (a group zeroes N of its M weights, so 2:4 at 0.5 prunes every group). Returns a 1-D
    bool tensor.

    Example:
        >>> layer = LayerUnits(torch.tensor([4., 1., 3., 2., 9., 8.]), unit_elements=1, numel=6, rows=2)
        >>> select_rows(layer, 0.5).tolist()
        [False, True, False, True, False, False]
    """
    if layer.rows == 0:  # a shard without rows (FSDP2's last ranks may hold none)
        return torch.zeros(0, dtype=torch.bool, device=layer.scores.device)
    scores = _get(_clean(layer.scores)).reshape(layer.rows, -1)
    per_row = scores.shape[1]
    # a row's weights over the weights its units zero: per_row for patterns that tile, per_row * M/N for N:M
    capacity = per_row * layer.numel / (layer.units * layer.unit_elements)
    hi = min(math.floor(layer.max_sparsity * capacity + EPS), per_row)
    lo = min(math.ceil(min(layer.min_sparsity, sparsity) * capacity - EPS), hi)
    k = min(max(math.floor(sparsity * capacity + EPS), lo, 0), hi)
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        chosen.scatter_(1, order, True)
    return chosen.reshape(-1)


def _select_row(layers: Sequence[LayerUnits], sparsity: float, comm: Comm) -> list[torch.Tensor]:
    return [select_rows(layer, sparsity) for layer in layers]


#: prune domains by name: a new one is one function of (layers, sparsity, comm) to masks
DOMAINS: dict[str, Domain] = {"global": _select_global, "local": _select_local, "row": _select_row}


def select(
    layers: Sequence[LayerUnits], sparsity: float, domain: str = "global", comm: Comm | None = None
) -> list[torch.Tensor]:
    """Return, per layer, a 1-D bool tensor of the units to prune at *sparsity*.

    With *comm* (see :mod:`pytorch_pruner.distributed`) each layer's scores are this rank's run of
    its units, and the masks are exactly those of one process holding every rank's scores.

    Example:
        >>> a = LayerUnits(torch.tensor([1., 5., 3., 7.]), unit_elements=1, numel=4)
        >>> b = LayerUnits(torch.tensor([2., 8.]), unit_elements=1, numel=2)
        >>> [m.tolist() for m in select([a, b], 0.5)]
        [[True, False, True, False], [True, False]]
    """
    if domain not in DOMAINS:
        names = sorted(DOMAINS)
        allowed = ", ".join(map(repr, names[:-1])) + f" or {names[-1]!r}"
        raise ValueError(f"domain must be {allowed}, not {domain!r}")
    if not layers:
        return []
    return DOMAINS[domain](layers, sparsity, comm or _LOCAL)
