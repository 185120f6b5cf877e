"""One pruner: a group of layers pruned with one criterion, pattern and schedule.

:class:`Pruner` composes the pieces — it asks the criterion for scores, the pattern for units,
selection for which units go, and the schedule for when and how far — and owns the masks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import PrunerSettings
from .criteria import ScoreSlot
from .distributed import ProcessGroupComm, is_dtensor
from .errors import PruningError, StateError
from .patterns import NInM, NxM, Pattern
from .selection import EPS, LayerUnits, LazyScores, select
from .targets import Target

__all__ = ["MaskedLayer", "Pruner", "sync_counts"]


@dataclass(eq=False)
class MaskedLayer:
    """A layer under pruning and its mask of record (bool, True = keep, in ``score_shape``)."""

    target: Target
    keep: torch.Tensor
    #: the mask in the weight's own layout, for layers whose 2-D view is a copy (conv, Conv1D)
    _full: torch.Tensor | None = field(default=None, repr=False)
    #: weights per mask entry (set for sharded layers, whose local mask may be empty)
    entry_elements: int | None = None
    #: under FSDP2: (pruned weights, pruned weights that are nonzero) over every rank, as of the
    #: last :func:`sync_counts`; None once the mask changed since
    synced: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def numel(self) -> int:
        """Weights in the whole layer (over every rank under FSDP2)."""
        return self.target.numel

    @property
    def local_pruned_elements(self) -> int:
        """Pruned weights in this rank's mask (all of them when the weight is not sharded)."""
        if self.keep.is_meta:  # a model built on `meta`, not materialized yet: nothing pruned
            return 0
        per_entry = self.entry_elements or self.numel // self.keep.numel()
        return int((~self.keep).sum()) * per_entry

    @property
    def pruned_elements(self) -> int:
        """Pruned weights of the whole layer. Under FSDP2 the count of the last :func:`sync_counts`
        (``Pruning.report()`` and ``get_sparsity_ratio()`` run it, on every rank)."""
        if self.target.shard is None:
            return self.local_pruned_elements
        if self.synced is None:
            raise StateError(
                f"{self.name} is sharded (FSDP2): its pruned count is a sum over the ranks; call "
                "pruning.report() or pruning.get_sparsity_ratio() on every rank (they all-reduce the counts)"
            )
        return self.synced[0]

    @property
    def sparsity(self) -> float:
        return self.pruned_elements / self.numel


class Pruner:
    """Prunes *targets* as *settings* say. Built by :class:`~pytorch_pruner.Pruning`."""

    def __init__(
        self, settings: PrunerSettings, targets: list[Target], skipped: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.settings = settings
        self.pattern = settings.pattern
        self.layers: list[MaskedLayer] = []
        #: (layer name, reason) for matched layers left dense: the weight checks' (*skipped*) and
        #: those the pattern does not fit
        self.skipped: list[tuple[str, str]] = list(skipped)
        for target in targets:
            reason = self.pattern.check(*target.full_shape2d)
            if reason:
                self.skipped.append((target.name, reason))
                continue
            shape = self.pattern.score_shape(*target.shape2d)
            keep = torch.ones(shape, dtype=torch.bool, device=target.weight.device)
            layer = MaskedLayer(target, keep)
            if target.shard is not None:
                layer.entry_elements = target.numel // math.prod(self.pattern.score_shape(*target.full_shape2d))
            self.layers.append(layer)
        self.schedule = settings.schedule()
        #: under FSDP2: the ranks selection counts over (every sharded layer's mesh); None in one process
        self.comm: ProcessGroupComm | None = None
        sharded = [layer for layer in self.layers if layer.target.shard is not None]
        if sharded:
            if len(sharded) != len(self.layers):
                whole = [layer.name for layer in self.layers if layer.target.shard is None]
                raise PruningError(
                    f"{settings.path}: layers {whole} are whole on every rank while the others are sharded "
                    "(FSDP2); one ranking cannot mix them. Apply fully_shard to every module holding a "
                    "pruned layer (and to the root), or leave those layers out (`excluded_names`)"
                )
            self.comm = ProcessGroupComm(sharded[0].target.shard.group)
        slots = [_slot(layer, self.pattern) for layer in self.layers]
        self.criterion = settings.criterion(slots)
        if self.comm is not None:  # input statistics are summed over the weights' mesh, not the world
            self.criterion.group = self.comm.group
        #: the sparsity the masks were last computed for
        self.current_sparsity = 0.0
        self._masked = False  # whether any mask has a False: until then applying is a no-op
        #: per layer, what apply_masks multiplies (a :class:`_MaskViews`); made again when anything moved
        self._views: list[_MaskViews | None] = [None] * len(self.layers)
        if self.criterion.fixed_mask:
            self._lock()

    @torch.no_grad()
    def _lock(self) -> None:
        """Fix each mask to the weight's nonzero pattern now (pattern_lock); it never changes."""
        for layer, score in zip(self.layers, self.criterion.scores(), strict=True):
            layer.keep.copy_(score > 0)
        self.refresh_masks()
        sync_counts([self])
        self.current_sparsity = sum(layer.pruned_elements for layer in self.layers) / max(
            sum(layer.numel for layer in self.layers), 1
        )

    def too_coarse(self) -> list[tuple[str, int]]:
        """``(layer name, units)`` of the layers whose target prunes no unit at all: with local
        ranking each layer prunes ``floor(target * units)`` units, which is 0 for a layer of few
        large units (e.g. 2 heads at target 0.25). With global ranking, all layers when their
        units together round down to 0."""
        target = min(self.settings.target_sparsity, self.pattern.max_sparsity())
        if target <= 0 or not self.layers:
            return []
        counts = [(layer.name, self.pattern.num_units(*layer.target.full_shape2d)) for layer in self.layers]
        if self.settings.prune_domain == "local":
            return [(name, n) for name, n in counts if math.floor(target * n + EPS) == 0]
        return counts if math.floor(target * sum(n for _, n in counts) + EPS) == 0 else []

    # -- per step --------------------------------------------------------------------------
    def follow_weights_(self) -> None:
        """Keep masks and scores with the weights: on each weight's device, and pointing at the
        weight the module holds now (a model built on ``meta`` and materialized with
        ``to_empty`` or ``load_state_dict(assign=True)`` holds new tensors).

        A check per layer (identity and device, no tensor work) unless something moved; masks
        still on ``meta`` hold no decision yet and start again all-kept.
        """
        moved = False
        for i, layer in enumerate(self.layers):
            weight = layer.target.weight
            if weight is self.criterion.slots[i].weight and layer.keep.device == weight.device:
                continue
            moved = True
            if layer.target.shard is None and is_dtensor(weight):
                raise PruningError(
                    f"{layer.name}.weight became a DTensor (sharded, e.g. by fully_shard) after on_train_begin; "
                    "shard the model first, then call on_train_begin on the sharded model (docs/distributed.md)"
                )
            if layer.keep.is_meta:
                layer.keep = torch.ones(layer.keep.shape, dtype=torch.bool, device=weight.device)
            else:
                layer.keep = layer.keep.to(weight.device)
            self.criterion.follow_(i, weight)
            self.criterion.slots[i].param = layer.target.param
        if moved:
            self.refresh_masks()

    def defer_masks_(self) -> None:
        """Free the masks until :meth:`follow_weights_` gives them back, all kept: for a caller
        that runs a statistics pass before the first pruning step (``prune_oneshot_``), so that the
        pass does not hold them. Only before anything was pruned."""
        if self._masked:
            raise StateError("defer_masks_ frees the masks: call it before the first pruning step")
        for layer in self.layers:
            layer.keep = torch.ones(layer.keep.shape, dtype=torch.bool, device="meta")

    def wants_scores(self, step: int) -> bool:
        """Whether the criterion must see this optimizer step's gradients."""
        if not self.criterion.needs_grad or not self.layers:
            return False
        if self.criterion.every_step:
            return step < self.schedule.last_step
        return self.schedule.is_pruning_step(step + 1)

    def gradients(self) -> list[torch.Tensor]:
        slots = self.criterion.slots
        return [g for slot in slots if (g := slot.grad) is not None]

    def accumulate_scores(self) -> None:
        self.criterion.accumulate_()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights in place (elementwise; nothing to do before the first prune).

        The weight's bits, read as integers, are multiplied by the bool mask viewed as uint8 (no
        copy): a kept weight keeps its exact bits, a pruned one becomes +0.0 even if it held NaN
        or inf (a float multiply leaves NaN * 0 = NaN), at the speed of the float multiply (2-3x
        faster than ``torch.where`` or ``masked_fill_`` on CPU, measured). The views are made once
        and used while the layer holds the same weight, storage and mask (a few identity checks
        per layer, against five view calls).
        """
        if not self._masked:
            return
        views = self._views
        for i, layer in enumerate(self.layers):
            weight = layer.target.weight
            v = views[i]
            if v is None or not v.current(weight, layer):
                v = views[i] = _MaskViews.of(weight, layer, self.pattern)
            v.target.mul_(v.mask)

    # -- pruning steps ---------------------------------------------------------------------
    @torch.no_grad()
    def prune(self, step: int, low_memory: bool = True, apply: bool = True) -> None:
        """Recompute the masks for the schedule's sparsity at *step* and zero the pruned weights
        (not with ``apply=False``: then :meth:`apply_masks` does it, e.g. once the caller has kept
        what the masks will zero).

        With *low_memory* (the default), a criterion whose scores are cheap to make again
        (magnitude, wanda: see :meth:`~pytorch_pruner.criteria.Criterion.lazy_scores`) has them
        made one layer at a time, each time selection reads them: the step then holds one layer's
        scores instead of every layer's (float32: 4 bytes per pruned weight, a model-sized copy for
        global magnitude pruning of an LLM), for 2-3 times the score work of a pruning step; the
        masks are the same. ``False`` makes every layer's scores once and holds them all.
        """
        if self.criterion.fixed_mask:  # pattern_lock: the mask was fixed at on_train_begin
            self.apply_masks()
            return
        sparsity = self.schedule.sparsity_at(step)
        self.current_sparsity = sparsity
        if not self.layers:
            return
        if sparsity <= 0.0:
            for layer in self.layers:
                layer.keep.fill_(True)
            self.refresh_masks()
            return
        meta = [layer.name for layer in self.layers if layer.keep.is_meta]
        if meta:
            raise PruningError(
                f"the weights of {meta} are on the meta device (the model was built under "
                "torch.device('meta') and not materialized): materialize it first, e.g. "
                "model.to_empty(device=...) and load or initialize the weights, then train"
            )
        s = self.settings
        makers = self.criterion.lazy_scores() if low_memory else None
        if makers is None:
            held = self.criterion.scores()
            ranked = [self.pattern.rank_units(score) for score in held]  # N:M candidates: once per step
            scores: list[torch.Tensor] | None = held
            unit_scores: list[torch.Tensor | LazyScores] = [u for u, _ in ranked]
        else:
            scores, ranked = None, []
            unit_scores = [
                LazyScores(
                    functools.partial(_units_of, self.pattern, make),
                    self.pattern.num_units(*layer.target.shape2d),
                    layer.keep.device,
                )
                for layer, make in zip(self.layers, makers, strict=True)
            ]
        units = [
            LayerUnits(
                scores=layer_scores,
                unit_elements=self.pattern.unit_elements(*layer.target.full_shape2d),
                numel=layer.numel,
                max_sparsity=s.max_sparsity_ratio_per_layer,
                min_sparsity=s.min_sparsity_ratio_per_layer,
                # under FSDP2 the scores are this rank's rows (a contiguous run of the layer's units)
                total_units=None if self.comm is None else self.pattern.num_units(*layer.target.full_shape2d),
                rows=int(layer.keep.shape[0]),
            )
            for layer, layer_scores in zip(self.layers, unit_scores, strict=True)
        ]
        del unit_scores
        if step >= self.schedule.last_step:  # masks are final: input statistics are no longer needed
            self.criterion.remove_hooks()
        chosen: list[torch.Tensor | None] = list(select(units, sparsity, s.prune_domain, comm=self.comm))
        del units
        for i, layer in enumerate(self.layers):
            pruned, chosen[i] = chosen[i], None  # freed layer by layer
            assert pruned is not None
            if scores is not None:
                score, memo = scores[i], ranked[i][1]
            else:
                assert makers is not None
                score, memo = _made_again(self.pattern, makers[i], tuple(layer.keep.shape))
            layer.keep.copy_(self.pattern.keep_mask_from(pruned.to(layer.keep.device), score, memo))
            del pruned, score, memo
        self.refresh_masks()
        if apply:
            self.apply_masks()

    def refresh_masks(self) -> None:
        """Rebuild what the hot path uses from the masks of record (after they changed)."""
        self._masked = any(not bool(layer.keep.all()) for layer in self.layers)
        self._views = [None] * len(self.layers)
        for layer in self.layers:
            layer.synced = None
            if layer.target.direct:
                layer._full = None
            else:
                rows, cols = layer.target.shape2d
                layer._full = layer.target.from_2d(self.pattern.expand(layer.keep, rows, cols))

    _set_masks = refresh_masks  # the former name

    # -- inspection and state --------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes this pruner keeps besides the model: masks (and their expanded copies for conv
        layers) and the criterion's scores."""
        masks = sum(layer.keep.numel() + (0 if layer._full is None else layer._full.numel()) for layer in self.layers)
        return masks + self.criterion.state_bytes()

    def scratch_bytes(self) -> int:
        """Bytes of scratch the per-step work reuses."""
        return self.criterion.scratch_bytes()

    def full_mask(self, layer: MaskedLayer) -> torch.Tensor:
        """The keep-mask of *layer* in the weight's shape (bool)."""
        rows, cols = layer.target.shape2d
        return layer.target.from_2d(self.pattern.expand(layer.keep, rows, cols))

    def state_dict(self, local: bool = False) -> dict[str, Any]:
        """Masks, criterion state and sparsity. Under FSDP2 every tensor is a DTensor that
        ``torch.distributed.checkpoint`` saves and loads: masks and scores sharded as the weights
        (``Shard(0)`` of their whole shape), other criterion state (wanda's statistics of this rank's
        inputs) one row per rank (``[world, ...]``, ``Shard(0)``); with *local*, this rank's parts
        as plain tensors instead."""
        criterion = self.criterion.state_dict()
        if local:
            return {
                "layers": [layer.name for layer in self.layers],
                "masks": [layer.keep.clone() for layer in self.layers],
                "criterion": criterion,
                "current_sparsity": self.current_sparsity,
            }
        if self.comm is not None:
            criterion = {key: [self._shared(i, t, key) for i, t in enumerate(ts)] for key, ts in criterion.items()}
        return {
            "layers": [layer.name for layer in self.layers],
            "masks": [self._shared(i, layer.keep.clone(), "masks") for i, layer in enumerate(self.layers)],
            "criterion": criterion,
            "current_sparsity": self.current_sparsity,
        }

    # -- FSDP2: state as DTensors ------------------------------------------------------------
    #: state keys laid out as the masks (one entry per mask entry): sharded as the weights
    _SHARDED_KEYS = ("masks", "scores")

    def _whole_shape(self, i: int, local: torch.Tensor, key: str) -> tuple[int, ...]:
        if key in self._SHARDED_KEYS:
            return tuple(self.pattern.score_shape(*self.layers[i].target.full_shape2d))
        return (self.comm.world, *local.shape)  # type: ignore[union-attr]

    def _shared(self, i: int, local: torch.Tensor, key: str) -> torch.Tensor:
        """Layer *i*'s state tensor *local* under *key* as a DTensor: masks and scores sharded as
        the weight, anything else one row per rank. Unchanged without FSDP2."""
        shard = self.layers[i].target.shard
        if shard is None:
            return local
        if key in self._SHARDED_KEYS:
            return shard.dtensor(local, self._whole_shape(i, local, key))
        return shard.dtensor(local.unsqueeze(0), self._whole_shape(i, local, key))

    def _local_state(self, state: dict[str, Any], where: str) -> dict[str, Any]:
        """*state* with this rank's part of each DTensor (a saved FSDP2 state); ``ValueError`` if a
        DTensor is not laid out as :meth:`state_dict` writes it for this model and world size."""
        from .distributed import is_dtensor

        def local(i: int, t: Any, key: str) -> Any:
            if not is_dtensor(t):
                return t
            shard = self.layers[i].target.shard if i < len(self.layers) else None
            if shard is None:
                raise ValueError(f"{where}: the saved {key} of layer {i} is sharded (DTensor), but its weight is not")
            part = t.to_local()
            if key not in self._SHARDED_KEYS:
                part = part.squeeze(0) if part.dim() and part.shape[0] == 1 else part
            want = self._whole_shape(i, part, key)
            if tuple(t.placements) != tuple(shard.param.placements) or tuple(t.shape) != want:
                raise ValueError(
                    f"{where}: the saved {key} of {self.layers[i].name} is a DTensor of shape {tuple(t.shape)} placed "
                    f"{tuple(t.placements)}; this run holds it as {want} placed {tuple(shard.param.placements)}"
                )
            return part

        if not isinstance(state, dict) or self.comm is None:
            return state
        out = dict(state)
        if isinstance(state.get("masks"), list):
            out["masks"] = [local(i, m, "masks") for i, m in enumerate(state["masks"])]
        if isinstance(state.get("criterion"), dict):
            out["criterion"] = {
                key: [local(i, t, key) for i, t in enumerate(ts)] if isinstance(ts, list) else ts
                for key, ts in state["criterion"].items()
            }
        return out

    def check_state(self, state: dict[str, Any], where: str) -> None:
        """Raise ``ValueError`` if *state* was not saved from a pruner of the same layers."""
        if not isinstance(state, dict):
            raise ValueError(f"{where}: the saved pruner state is a {type(state).__name__}, not a dict")
        state = self._local_state(state, where)
        names = [layer.name for layer in self.layers]
        if state.get("layers") != names:
            raise ValueError(f"{where}: saved layers {state.get('layers')} differ from this model's {names}")
        if not isinstance(state.get("masks"), list) or len(state["masks"]) != len(self.layers):
            raise ValueError(f"{where}: the saved masks are not a list of {len(self.layers)} masks")
        sparsity = state.get("current_sparsity")
        if type(sparsity) not in (int, float) or not 0.0 <= sparsity <= 1.0:  # NaN fails the range too
            raise ValueError(f"{where}: the saved current_sparsity {sparsity!r} is not a number in [0, 1]")
        for layer, mask in zip(self.layers, state["masks"], strict=True):
            if not isinstance(mask, torch.Tensor) or mask.shape != layer.keep.shape or mask.dtype != torch.bool:
                raise ValueError(f"{where}: the saved mask of {layer.name} does not fit the layer")
        own, saved = self.criterion.state_dict(), state.get("criterion")
        if not isinstance(saved, dict) or sorted(own) != sorted(saved):
            raise ValueError(f"{where}: the saved criterion state is not {self.settings.prune_type}'s")
        for key, tensors in own.items():
            theirs = saved[key]
            if (
                not isinstance(theirs, list | tuple)
                or len(tensors) != len(theirs)
                or any(
                    not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype
                    for a, b in zip(tensors, theirs, strict=False)
                )
            ):
                raise ValueError(f"{where}: the saved criterion {key} do not fit the layers")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = self._local_state(state, "pruner")
        for layer, mask in zip(self.layers, state["masks"], strict=True):
            layer.keep.copy_(mask)
        self.criterion.load_state_dict(state["criterion"])
        self.current_sparsity = float(state["current_sparsity"])
        self.refresh_masks()
        self.apply_masks()


@dataclass(eq=False)
class _MaskViews:
    """What :meth:`Pruner.apply_masks` multiplies for one layer, and what it was made from."""

    weight: torch.Tensor
    ptr: int
    shape: torch.Size
    dtype: torch.dtype
    keep: torch.Tensor
    full: torch.Tensor | None
    target: torch.Tensor  # the weight's bits as integers, in the pattern's view
    mask: torch.Tensor  # the bool mask as uint8, broadcasting over ``target``

    @classmethod
    def of(cls, weight: torch.Tensor, layer: MaskedLayer, pattern: Pattern) -> _MaskViews:
        bits = _as_int(weight.detach())
        if layer._full is not None:
            target, mask = bits, layer._full.view(torch.uint8)
        else:
            target, mask = pattern.view(bits.view(layer.target.shape2d)), layer.keep.view(torch.uint8)
        return cls(weight, weight.data_ptr(), weight.shape, weight.dtype, layer.keep, layer._full, target, mask)

    def current(self, weight: torch.Tensor, layer: MaskedLayer) -> bool:
        """Whether the views still alias *weight* (the same tensor, storage, shape and dtype: ``.data``
        can be reassigned in place) and *layer*'s masks."""
        return (
            weight is self.weight
            and layer.keep is self.keep
            and layer._full is self.full
            and weight.data_ptr() == self.ptr
            and weight.dtype == self.dtype
            and weight.shape == self.shape
        )


def _units_of(pattern: Pattern, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Unit scores from scores made now (a :class:`LazyScores` of a low-memory pruning step)."""
    return pattern.rank_units(make())[0]


def _made_again(
    pattern: Pattern, make: Callable[[], torch.Tensor], shape: tuple[int, ...]
) -> tuple[torch.Tensor, object]:
    """Scores and ``rank_units`` memo for :meth:`Pattern.keep_mask_from` on a low-memory step: made
    again if the pattern reads them (N:M's candidates, GQA's order), else a placeholder of their shape
    (the base class's masks need only the shape)."""
    kind = type(pattern)
    if kind.keep_mask is Pattern.keep_mask and kind.keep_mask_from is Pattern.keep_mask_from:
        return torch.empty(shape, device="meta"), None
    score = make()
    return score, pattern.rank_units(score)[1]


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_int(t: torch.Tensor) -> torch.Tensor:
    """*t*'s memory read as integers of the same width (a view)."""
    return t if not t.is_floating_point() else t.view(_INT_OF_SIZE[t.element_size()])


def _slot(layer: MaskedLayer, pattern: Pattern) -> ScoreSlot:
    """The criterion's view of *layer*; conv layers get block means read in their own layout."""
    target = layer.target
    shape = tuple(layer.keep.shape)
    elementwise = target.direct and shape == target.shape2d
    block_mean = score_view = None
    weight = target.weight
    if target.kind.startswith("Conv") and target.kind != "Conv1D" and weight.is_contiguous():
        # The 2-D view of [O, C, *k] is [O, K*C] with the input channel fastest (K = prod k): a
        # permute copy. An element-level score (1x1, N:M) is read as a strided [O, K, C] view of the
        # element scores instead, and NxM blocks with M dividing C are averaged in place: the same
        # numbers, summed in the same order, without the copy.
        out_ch, in_ch = weight.shape[0], weight.shape[1]
        k = weight.numel() // (out_ch * in_ch)
        per_element = isinstance(pattern, NInM) or (isinstance(pattern, NxM) and pattern.n == pattern.m == 1)
        if per_element and shape == target.shape2d:

            def block_mean(elem: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
                return elem.view(out_ch, in_ch, k).permute(0, 2, 1)

            def score_view(scores: torch.Tensor) -> torch.Tensor:
                return scores.view(out_ch, k, in_ch)

        elif isinstance(pattern, NxM) and in_ch % pattern.m == 0:
            n, m = pattern.n, pattern.m

            def block_mean(elem: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
                means = out.view(out_ch // n, 1, in_ch // m, 1, k)
                torch.mean(elem.view(out_ch // n, n, in_ch // m, m, k), dim=(1, 3), keepdim=True, out=means)
                return means.permute(0, 1, 4, 2, 3)

            def score_view(scores: torch.Tensor) -> torch.Tensor:
                return scores.view(out_ch // n, 1, k, in_ch // m, 1)

    return ScoreSlot(
        weight=weight,
        to_2d=target.to_2d,
        reduce=pattern.reduce,
        score_shape=shape,
        elementwise=elementwise,
        module=target.module,
        block_mean=block_mean,
        score_view=score_view,
        param=target.param,
    )


@torch.no_grad()
def sync_counts(pruners: Sequence[Pruner]) -> None:
    """Sum the pruned weights of every sharded layer of *pruners* (and how many of those are not
    zero) over the ranks, into each layer's ``synced``: one all-reduce of two counts per layer.
    A collective under FSDP2: every rank must call it with the same pruners; without sharded
    layers it does nothing."""
    pairs = [(p, layer) for p in pruners if p.comm is not None for layer in p.layers]
    if not pairs:
        return
    comm = next(p.comm for p in pruners if p.comm is not None)
    local = torch.zeros(2 * len(pairs), dtype=torch.long)
    for i, (p, layer) in enumerate(pairs):
        local[2 * i] = layer.local_pruned_elements
        local[2 * i + 1] = int(torch.count_nonzero(layer.target.weight.detach()[~p.full_mask(layer)]))
    totals = comm.sum_(local).tolist()
    for i, (_, layer) in enumerate(pairs):
        layer.synced = (totals[2 * i], totals[2 * i + 1])
