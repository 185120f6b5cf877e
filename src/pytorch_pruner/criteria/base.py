"""The Criterion interface: a score per weight block, higher = more important = kept.

A criterion sees layers only through :class:`ScoreSlot`: the weight (as a 2-D view), its
gradient, and an opaque ``reduce`` that averages element scores into the resolution its pruner
keeps (one per NxM block, one per element for N:M). It never sees sparsity, patterns or steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from ..patterns import Pattern

__all__ = ["CRITERIA", "Criterion", "ScoreSlot"]


@dataclass(eq=False)
class ScoreSlot:
    """One layer as a criterion sees it."""

    weight: torch.Tensor  # the parameter, in its own layout
    to_2d: Callable[[torch.Tensor], torch.Tensor]  # weight layout -> [out, in]
    reduce: Callable[..., torch.Tensor]  # (t2d, out=None) -> score_shape
    score_shape: tuple[int, ...]
    #: True when to_2d is the identity and reduce keeps the shape: the hot path can skip copies.
    elementwise: bool = False
    #: the layer, for criteria that watch its inputs (wanda, sparsegpt)
    module: nn.Module | None = None


class Criterion(ABC):
    """Scores for the layers of one pruner.

    Subclasses set :attr:`needs_grad` and implement :meth:`scores`; gradient criteria also
    implement :meth:`accumulate_`, which runs once per optimizer step, before the update.
    """

    needs_grad: ClassVar[bool] = False
    #: True when every optimizer step contributes (a running average), False when only the
    #: step just before a pruning step matters.
    every_step: ClassVar[bool] = False
    #: True when the scores need the layer's inputs (forward hooks), e.g. wanda
    needs_inputs: ClassVar[bool] = False
    #: True when the criterion can only prune one-shot (prune_oneshot_), never during training
    oneshot_only: ClassVar[bool] = False
    #: True when the mask is fixed once at on_train_begin (pattern_lock) and never recomputed
    fixed_mask: ClassVar[bool] = False

    @classmethod
    def check_settings(cls, pattern: Pattern, prune_domain: str) -> str | None:
        """Why this criterion can't work with *pattern* / *prune_domain* (checked at config load)."""
        return None

    def __init__(self, slots: Sequence[ScoreSlot]) -> None:
        self.slots = list(slots)

    def accumulate_(self) -> None:  # noqa: B027 (optional: only gradient criteria override it)
        """Fold the current gradients into the running scores (in place, no ranking)."""

    @abstractmethod
    def scores(self) -> list[torch.Tensor]:
        """The scores of each slot, in ``score_shape``, as of now."""

    def remove_hooks(self) -> None:  # noqa: B027 (optional: only criteria with hooks override it)
        """Take off any hook the criterion put on the model."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    def state_bytes(self) -> int:
        """Bytes of persistent state (for the memory report)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().get("scores", []))


CRITERIA: Registry[type[Criterion]] = Registry("prune_type")
