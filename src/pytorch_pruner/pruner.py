"""One pruner: a group of layers pruned with one criterion, pattern and schedule.

:class:`Pruner` composes the pieces — it asks the criterion for scores, the pattern for units,
selection for which units go, and the schedule for when and how far — and owns the masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import PrunerSettings
from .criteria import ScoreSlot
from .errors import PruningError
from .patterns import NInM, NxM, Pattern
from .selection import EPS, LayerUnits, select
from .targets import Target

__all__ = ["MaskedLayer", "Pruner"]


@dataclass(eq=False)
class MaskedLayer:
    """A layer under pruning and its mask of record (bool, True = keep, in ``score_shape``)."""

    target: Target
    keep: torch.Tensor
    #: the mask in the weight's own layout, for layers whose 2-D view is a copy (conv, Conv1D)
    _full: torch.Tensor | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def numel(self) -> int:
        return self.target.weight.numel()

    @property
    def pruned_elements(self) -> int:
        if self.keep.is_meta:  # a model built on `meta`, not materialized yet: nothing pruned
            return 0
        return int((~self.keep).sum()) * (self.numel // self.keep.numel())

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
            reason = self.pattern.check(*target.shape2d)
            if reason:
                self.skipped.append((target.name, reason))
                continue
            shape = self.pattern.score_shape(*target.shape2d)
            keep = torch.ones(shape, dtype=torch.bool, device=target.weight.device)
            self.layers.append(MaskedLayer(target, keep))
        self.schedule = settings.schedule()
        slots = [_slot(layer, self.pattern) for layer in self.layers]
        self.criterion = settings.criterion(slots)
        #: the sparsity the masks were last computed for
        self.current_sparsity = 0.0
        self._masked = False  # whether any mask has a False: until then applying is a no-op
        if self.criterion.fixed_mask:
            self._lock()

    @torch.no_grad()
    def _lock(self) -> None:
        """Fix each mask to the weight's nonzero pattern now (pattern_lock); it never changes."""
        for layer, score in zip(self.layers, self.criterion.scores(), strict=True):
            layer.keep.copy_(score > 0)
        self.current_sparsity = sum(layer.pruned_elements for layer in self.layers) / max(
            sum(layer.numel for layer in self.layers), 1
        )
        self.refresh_masks()

    def too_coarse(self) -> list[tuple[str, int]]:
        """``(layer name, units)`` of the layers whose target prunes no unit at all: with local
        ranking each layer prunes ``floor(target * units)`` units, which is 0 for a layer of few
        large units (e.g. 2 heads at target 0.25). With global ranking, all layers when their
        units together round down to 0."""
        target = min(self.settings.target_sparsity, self.pattern.max_sparsity())
        if target <= 0 or not self.layers:
            return []
        counts = [(layer.name, self.pattern.num_units(*layer.target.shape2d)) for layer in self.layers]
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
            if layer.keep.is_meta:
                layer.keep = torch.ones(layer.keep.shape, dtype=torch.bool, device=weight.device)
            else:
                layer.keep = layer.keep.to(weight.device)
            self.criterion.follow_(i, weight)
        if moved:
            self.refresh_masks()

    def wants_scores(self, step: int) -> bool:
        """Whether the criterion must see this optimizer step's gradients."""
        if not self.criterion.needs_grad or not self.layers:
            return False
        if self.criterion.every_step:
            return step < self.schedule.last_step
        return self.schedule.is_pruning_step(step + 1)

    def gradients(self) -> list[torch.Tensor]:
        return [g for layer in self.layers if (g := layer.target.weight.grad) is not None]

    def accumulate_scores(self) -> None:
        self.criterion.accumulate_()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights in place (elementwise; nothing to do before the first prune).

        The weight's bits, read as integers, are multiplied by the bool mask viewed as uint8 (no
        copy): a kept weight keeps its exact bits, a pruned one becomes +0.0 even if it held NaN
        or inf (a float multiply leaves NaN * 0 = NaN), at the speed of the float multiply (2-3x
        faster than ``torch.where`` or ``masked_fill_`` on CPU, measured).
        """
        if not self._masked:
            return
        for layer in self.layers:
            weight = _as_int(layer.target.weight.detach())
            if layer._full is not None:
                weight.mul_(layer._full.view(torch.uint8))
            else:
                self.pattern.view(weight.view(layer.target.shape2d)).mul_(layer.keep.view(torch.uint8))

    # -- pruning steps ---------------------------------------------------------------------
    @torch.no_grad()
    def prune(self, step: int) -> None:
        """Recompute the masks for the schedule's sparsity at *step* and zero the pruned weights."""
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
        scores = self.criterion.scores()
        s = self.settings
        ranked = [self.pattern.rank_units(score) for score in scores]  # N:M candidates: once per step
        units = [
            LayerUnits(
                scores=unit_scores,
                unit_elements=self.pattern.unit_elements(*layer.target.shape2d),
                numel=layer.numel,
                max_sparsity=s.max_sparsity_ratio_per_layer,
                min_sparsity=s.min_sparsity_ratio_per_layer,
                rows=int(layer.keep.shape[0]),
            )
            for layer, (unit_scores, _) in zip(self.layers, ranked, strict=True)
        ]
        if step >= self.schedule.last_step:  # masks are final: input statistics are no longer needed
            self.criterion.remove_hooks()
        chosen = select(units, sparsity, s.prune_domain)
        for layer, pruned, score, (_, memo) in zip(self.layers, chosen, scores, ranked, strict=True):
            layer.keep.copy_(self.pattern.keep_mask_from(pruned.to(layer.keep.device), score, memo))
        self.refresh_masks()
        self.apply_masks()

    def refresh_masks(self) -> None:
        """Rebuild what the hot path uses from the masks of record (after they changed)."""
        self._masked = any(not bool(layer.keep.all()) for layer in self.layers)
        for layer in self.layers:
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.name for layer in self.layers],
            "masks": [layer.keep.clone() for layer in self.layers],
            "criterion": self.criterion.state_dict(),
            "current_sparsity": self.current_sparsity,
        }

    def check_state(self, state: dict[str, Any], where: str) -> None:
        """Raise ``ValueError`` if *state* was not saved from a pruner of the same layers."""
        if not isinstance(state, dict):
            raise ValueError(f"{where}: the saved pruner state is a {type(state).__name__}, not a dict")
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
        for layer, mask in zip(self.layers, state["masks"], strict=True):
            layer.keep.copy_(mask)
        self.criterion.load_state_dict(state["criterion"])
        self.current_sparsity = float(state["current_sparsity"])
        self.refresh_masks()
        self.apply_masks()


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
    )
