"""Data-aware criteria: scores that need the layer's inputs, not only its weight.

* ``wanda`` (Sun et al., *A Simple and Effective Pruning Approach for Large Language Models*,
  arXiv:2306.11695): ``score_ij = |W_ij| · sqrt(mean x_j²)``, the mean over every token seen by
  the layer (input feature j of the 2-D view). Usable one-shot (:func:`~pytorch_pruner.prune_oneshot_`)
  and during training: there the statistics come from the training forwards since the last
  pruning step (they are refreshed each pruning step).
* ``sparsegpt`` (Frantar & Alistarh, *SparseGPT*, arXiv:2301.00774): one-shot only; it keeps the
  Hessian ``H = (2/n) Σ x xᵀ`` of each layer's inputs, and
  :mod:`pytorch_pruner.oneshot.sparsegpt` chooses the mask and rebuilds the kept weights from it.

Statistics are float32 whatever the activation dtype, and are all-reduced over
``torch.distributed`` ranks (a count-weighted mean) when a process group is initialised.
The forward hooks that feed them are the criterion's own; :meth:`remove_hooks` takes them off.
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref
from collections.abc import Callable, Collection
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._numerics import full_fp32_matmul
from ..distributed import ProcessGroupComm
from ..errors import PruningError, StateError
from ..patterns import NInM, NxM, Pattern
from ..targets import layer_kind
from .base import CRITERIA, Criterion, ScoreSlot

__all__ = ["ActivationStats", "HessianStats", "SparseGPT", "Wanda"]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _features(module: nn.Module, x: torch.Tensor, columns: int) -> tuple[torch.Tensor, int]:
    """The layer input as ``[tokens, features]`` (float32) and how often each feature repeats in
    the 2-D view's columns (kernel positions of a convolution; 1 for Linear and Conv1D)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        channels = x.shape[1] if x.dim() > 1 else x.shape[0]
        flat = x.detach().transpose(0, 1).reshape(channels, -1).t()
        return flat.float(), columns // channels
    return x.detach().reshape(-1, x.shape[-1]).float(), 1


class ActivationStats:
    """Running mean of ``x_j²`` over all tokens, per input feature j of one layer (float32)."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.mean_sq = torch.zeros(features, dtype=torch.float32, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def update_(self, flat: torch.Tensor) -> None:
        tokens = flat.shape[0]
        if tokens == 0:
            return
        total = self.count + tokens
        # Σx² per feature as a squared 2-norm: a reduction with no copy of the inputs (pow(2) would
        # make one: a sub-batch's worth of activations); equal to the sum of squares up to rounding.
        # Reduced where the inputs are: statistics held elsewhere (beside weights kept on the CPU,
        # e.g. FSDP2's CPU offload) receive one value per feature, not every token's activations
        square_sums = torch.linalg.vector_norm(flat, 2, dim=0).square_().to(self.mean_sq.device)
        self.mean_sq.mul_((self.count / total).float()).add_(square_sums.div_(total.float()))
        self.count.copy_(total)

    def mean(self, group: Any = None) -> torch.Tensor:
        """The mean of x² per feature, over the ranks of *group* (None: the default group) when
        torch.distributed is initialised."""
        if not _distributed():
            return self.mean_sq.clone()
        both = torch.cat([self.mean_sq.double() * self.count, self.count.reshape(1)])
        ProcessGroupComm(group).sum_(both)  # (through the GPU for CPU statistics under NCCL)
        return (both[:-1] / both[-1].clamp_min(1)).float()

    def reset_(self) -> None:
        self.mean_sq.zero_()
        self.count.zero_()

    def to_(self, device: torch.device) -> None:
        """Move to *device* (the layer's weight moved there); statistics on ``meta`` hold no values
        and start again at zero."""
        if self.mean_sq.device == device:
            return
        if self.mean_sq.is_meta:
            self.mean_sq = torch.zeros_like(self.mean_sq, device=device)
            self.count = torch.zeros_like(self.count, device=device)
        else:
            self.mean_sq, self.count = self.mean_sq.to(device), self.count.to(device)


class HessianStats:
    """``H = (2/n) Σ x xᵀ`` over the n input tokens of one layer (float32), kept as a running mean."""

    def __init__(self, features: int, device: torch.device) -> None:
        self.features = features
        self._h: torch.Tensor | None = None  # allocated at the first input (shared layers never need it)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self._seen = 0  # = count, on the host

    @property
    def h(self) -> torch.Tensor:
        if self._h is None:
            self._h = torch.zeros(self.features, self.features, dtype=torch.float32, device=self.count.device)
        return self._h

    def update_(self, flat: torch.Tensor) -> None:
        tokens = flat.shape[0]
        if tokens == 0:
            return
        seen, total = self._seen, self._seen + tokens  # host ints: no device sync for the scalars below
        flat = flat.to(self.count.device)  # one-shot runs each block beside its statistics: a no-op there
        # H <- (seen/total) H + (2/total) xᵀx, in one call: no scaled copy of the inputs; at full
        # float32 precision even where the process lets matmuls use TF32 or bf16
        with full_fp32_matmul():
            self.h.addmm_(flat.t(), flat, beta=seen / total, alpha=2.0 / total)
        self._seen = total
        self.count.add_(tokens)

    def release_(self) -> None:
        """Free H (e.g. once a one-shot prune has used it); the next input starts it again."""
        self._h = None
        self.count.zero_()
        self._seen = 0

    def hessian(self, group: Any = None) -> torch.Tensor:
        """H over the ranks of *group* (None: the default group) when torch.distributed is initialised."""
        if not _distributed():
            return self.h.clone()
        h = self.h.double() * self.count
        count = self.count.clone()
        comm = ProcessGroupComm(group)  # (through the GPU for CPU statistics under NCCL)
        comm.sum_(h)
        comm.sum_(count)
        return (h / count.clamp_min(1)).float()

    def to_(self, device: torch.device) -> None:
        """Move to *device* (the layer's weight moved there); statistics on ``meta`` start again."""
        if self.count.device == device:
            return
        if self.count.is_meta:
            self._h, self._seen = None, 0
            self.count = torch.zeros((), dtype=torch.float64, device=device)
        else:
            self.count = self.count.to(device)
            self._h = None if self._h is None else self._h.to(device)

    def take_(self, group: Any = None) -> torch.Tensor:
        """:meth:`hessian`, handing over the running H (no copy on one process) and releasing it."""
        h = self.hessian(group) if _distributed() else self.h
        self.release_()
        return h


class _InputCriterion(Criterion):
    """A criterion fed by forward pre-hooks on the layers of its slots."""

    needs_inputs: ClassVar[bool] = True
    _stats_type: ClassVar[type[ActivationStats] | type[HessianStats]] = ActivationStats

    def __init__(self, slots: list[ScoreSlot]) -> None:
        super().__init__(slots)
        #: count forwards in eval mode too (one-shot calibration runs the model in eval mode)
        self.count_eval = False
        self.stats: list[Any] = []
        self.repeats: list[int] = []
        for slot in slots:
            if slot.module is None:
                raise StateError(f"{type(self).__name__} needs the layer module of every slot to see its inputs")
            # transformers' Conv1D (GPT-2) stores [in, out]; a shard may hold no row
            conv1d = layer_kind(slot.module) == "Conv1D"
            cols = slot.weight.shape[0] if conv1d else math.prod(slot.weight.shape[1:])
            features = _in_features(slot.module, cols)
            self.stats.append(self._stats_type(features, slot.weight.device))
            self.repeats.append(cols // features)
        self._handles: list[RemovableHandle] = []
        self.attach_hooks()

    def follow_(self, index: int, weight: torch.Tensor) -> None:
        # the statistics are objects, not tensors: the default moves nothing of them. Left behind, a
        # layer moved to a GPU after on_train_begin would copy its inputs to the host in every forward
        # (and all-reduce CPU tensors over NCCL); one built on meta would never count an input
        super().follow_(index, weight)
        self.stats[index].to_(weight.device)

    def attach_hooks(self, only: Collection[int] | None = None) -> None:
        """Start collecting input statistics (a forward pre-hook per layer; *only*: just for the
        slots of these indices, e.g. one-shot passes that fill one Hessian at a time)."""
        if self._handles:
            return
        for index, slot in enumerate(self.slots):
            if only is not None and index not in only:
                continue
            assert slot.module is not None  # checked in __init__
            self._handles.append(slot.module.register_forward_pre_hook(self._hook(index)))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._last = None

    #: whether layers fed the very same input tensor (q/k/v, gate/up) share one statistics object
    share_inputs: ClassVar[bool] = False
    #: the input last seen and its layer: a weak reference, which keeps no activation alive
    _last: tuple[weakref.ref[torch.Tensor], int] | None = None

    def _hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor) or not (module.training or self.count_eval):
                return
            self.observe_(index, args[0])

        return hook

    def observe_(self, index: int, x: torch.Tensor) -> None:
        """Add *x*, an input of the layer of slot *index*, to that layer's statistics: what the
        forward pre-hook does with each input (one-shot passes also call it with inputs they gathered).
        With :attr:`share_inputs`, the very tensor given to the layers before it (q/k/v, gate/up)
        is counted once, in the statistics those layers then share."""
        if self.share_inputs:
            last = self._last
            if last is not None and last[0]() is x and last[1] != index:
                owner = self.stats[last[1]]
                if self.stats[index] is owner:
                    return  # already counted through the layer that shares it
                if int(self.stats[index].count) == 0 and self.repeats[index] == self.repeats[last[1]]:
                    self.stats[index] = owner  # same input tensor: one Hessian for both
                    return
            self._last = (weakref.ref(x), index)
        module = self.slots[index].module
        assert module is not None  # checked in __init__
        stats = self.stats[index]
        cols = int(module.weight.numel() // module.weight.shape[0])
        flat, _ = _features(module, x, cols)
        with torch.no_grad():
            stats.update_(flat)  # on the inputs' device; each kind of statistics moves what it needs

    def tokens(self) -> list[int]:
        return [int(s.count) for s in self.stats]

    def nonfinite_layers(self, only: Collection[int] | None = None) -> list[int]:
        """Indices of the slots (*only*: of these) whose statistics hold inf or NaN."""
        # a Hessian's diagonal holds every input's x² (NaN and inf show there), and |H_ij| <= sqrt(H_ii H_jj):
        # checking it is enough, without a full-size temporary
        indices = range(len(self.stats)) if only is None else sorted(only)
        bad = []
        for i in indices:
            s = self.stats[i]
            own = s.mean_sq if isinstance(s, ActivationStats) else s.h.diagonal()
            if not bool(torch.isfinite(own).all()):
                bad.append(i)
        return bad


def _in_features(module: nn.Module, cols: int) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups != 1:
            raise PruningError(
                f"data-aware criteria need ungrouped convolutions; this one has groups={module.groups}: "
                "exclude it (not_to_prune_names) or use magnitude"
            )
        return int(module.in_channels)
    return cols


@CRITERIA.register("wanda")
class Wanda(_InputCriterion):
    """``|W_ij| · sqrt(mean x_j²)`` (block mean), from the inputs seen since the last pruning step."""

    def element_scores(self) -> list[torch.Tensor]:
        """Element-level scores in each layer's 2-D view (float32)."""
        return [_wanda(slot, norm) for slot, norm in zip(self.slots, self._norms(), strict=True)]

    def _norms(self) -> list[torch.Tensor]:
        """Per slot, ``sqrt(mean x²)`` of each column of its 2-D view, on the weight's device."""
        out = []
        for slot, stats, repeat in zip(self.slots, self.stats, self.repeats, strict=True):
            if int(stats.count) == 0:
                raise StateError(
                    "wanda has seen no input of a layer it prunes: run forwards before the pruning step "
                    "(during training: start_step >= 1; one-shot: give calibration batches)"
                )
            norm = stats.mean(self.group).sqrt()
            if not bool(torch.isfinite(norm).all()):
                warnings.warn("wanda: inf/NaN in the input statistics of a layer; those inputs score 0", stacklevel=3)
                norm = torch.nan_to_num(norm, nan=0.0, posinf=0.0)
            out.append(norm.repeat(repeat).to(slot.weight.device))
        return out

    def scores(self) -> list[torch.Tensor]:
        return [make() for make in self.lazy_scores()]

    def lazy_scores(self) -> list[Callable[[], torch.Tensor]]:
        norms = self._norms()  # small (one per input feature): taken now
        for stats in self.stats:  # the next pruning step sees only the inputs that follow
            stats.reset_()
        return [functools.partial(_wanda_scores, slot, norm) for slot, norm in zip(self.slots, norms, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {"mean_sq": [s.mean_sq.clone() for s in self.stats], "count": [s.count.clone() for s in self.stats]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stats, mean_sq, count in zip(self.stats, state["mean_sq"], state["count"], strict=True):
            stats.mean_sq.copy_(mean_sq)
            stats.count.copy_(count)

    def state_bytes(self) -> int:
        return sum(s.mean_sq.numel() * 4 + 8 for s in self.stats)


@torch.no_grad()
def _wanda(slot: ScoreSlot, norm: torch.Tensor) -> torch.Tensor:
    """``|W| · norm`` in the slot's 2-D view (float32), *norm* broadcast over the rows."""
    return slot.to_2d(slot.weight.detach()).abs().float().mul_(norm)


def _wanda_scores(slot: ScoreSlot, norm: torch.Tensor) -> torch.Tensor:
    return slot.reduce(_wanda(slot, norm))


@CRITERIA.register("sparsegpt")
class SparseGPT(_InputCriterion):
    """SparseGPT's Hessians; the mask and the new weights come from
    :func:`pytorch_pruner.oneshot.sparsegpt.sparsegpt_`, in :func:`~pytorch_pruner.prune_oneshot_`."""

    oneshot_only: ClassVar[bool] = True
    share_inputs = True
    _stats_type = HessianStats

    @classmethod
    def check_settings(cls, pattern: Pattern, prune_domain: str) -> str | None:
        if isinstance(pattern, NInM | NxM):
            if 128 % pattern.m:
                return (
                    f"prune_type 'sparsegpt' chooses the mask per block of 128 input columns; pattern "
                    f"{pattern.name!r} needs M dividing 128 (e.g. '4x1', '1x4', '2:4', '4:8')"
                )
            return None
        return (
            f"prune_type 'sparsegpt' chooses the mask per block of 128 input columns, which pattern "
            f"{pattern.name!r} (whole channels or heads) does not fit; allowed: '1x1', NxM (e.g. '4x1') or N:M "
            "(e.g. '2:4'); use wanda for channel patterns"
        )

    def scores(self) -> list[torch.Tensor]:
        raise PruningError("sparsegpt is one-shot only: it prunes in prune_oneshot_, not through scores")
