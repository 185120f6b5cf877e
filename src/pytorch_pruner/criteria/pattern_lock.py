"""``pattern_lock``: keep the zeros a model arrives with, and nothing else.

The mask is the weight's nonzero pattern at ``on_train_begin`` and never changes: pruned weights
stay exactly 0 through any optimizer, and no new weight is pruned. This is the sparse fine-tuning
half of the LLM recipe (one-shot prune with :func:`~pytorch_pruner.prune_oneshot_`, then train with
``prune_type: pattern_lock``), or the way to fine-tune a checkpoint someone else pruned.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..patterns import NInM, NxM, Pattern
from .base import CRITERIA, Criterion

__all__ = ["PatternLock"]


@CRITERIA.register("pattern_lock", "pattern-lock")
class PatternLock(Criterion):
    """Score 1 where a weight is nonzero, 0 where it is zero; the pruner locks that mask once."""

    fixed_mask: ClassVar[bool] = True

    @classmethod
    def check_settings(cls, pattern: Pattern, prune_domain: str) -> str | None:
        if isinstance(pattern, NInM) or (isinstance(pattern, NxM) and pattern.n == pattern.m == 1):
            return None
        return (
            f"prune_type 'pattern_lock' keeps each weight's own zero and needs an elementwise pattern, "
            f"not {pattern.name!r}; set pattern: '1x1' (or the N:M pattern the model was pruned to)"
        )

    def scores(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [s.reduce(s.to_2d(s.weight.detach() != 0).float()) for s in self.slots]
