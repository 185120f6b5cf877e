"""The Criterion interface: a score per weight block, higher = more important = kept.

A criterion sees layers only through :class:`ScoreSlot`: the weight (as a 2-D view), its
gradient, and an opaque ``reduce`` that averages element scores into the resolution its pruner
keeps (one per NxM block, one per element for N:M). It never sees sparsity, patterns or steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..registry import Registry

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


class Criterion(ABC):
    """Scores for the layers of one pruner.

    Subclasses set :attr:`needs_grad` and implement :meth:`scores`; gradient criteria also
    implement :meth:`accumulate_`, which runs once per optimizer step, before the update.
    """

    needs_grad: ClassVar[bool] = False
    #: True when every optimizer step contributes (a running average), False when only the
    #: step just before a pruning step matters.
    every_step: ClassVar[bool] = False

    def __init__(self, slots: Sequence[ScoreSlot]) -> None:
        self.slots = list(slots)

    def accumulate_(self) -> None:  # noqa: B027 (optional: only gradient criteria override it)
        """Fold the current gradients into the running scores (in place, no ranking)."""

    @abstractmethod
    def scores(self) -> list[torch.Tensor]:
        """The scores of each slot, in ``score_shape``, as of now."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    def state_bytes(self) -> int:
        """Bytes of persistent state (for the memory report)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().get("scores", []))


CRITERIA: Registry[type[Criterion]] = Registry("prune_type")
