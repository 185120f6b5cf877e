"""Magnitude: ``score = |W|`` (block mean), computed on pruning steps only.

INC v1 ranked by signed W, which prunes large negative weights first; we use the absolute value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .base import CRITERIA, Criterion, ScoreSlot

__all__ = ["Magnitude"]


@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    def scores(self) -> list[torch.Tensor]:
        return [make() for make in self.lazy_scores()]

    def lazy_scores(self) -> list[Callable[[], torch.Tensor]]:
        return [functools.partial(_magnitude, s) for s in self.slots]


@torch.no_grad()
def _magnitude(slot: ScoreSlot) -> torch.Tensor:
    return slot.reduce(slot.to_2d(slot.weight.detach().abs()).float())
