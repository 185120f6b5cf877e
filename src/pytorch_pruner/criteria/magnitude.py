"""Magnitude: ``score = |W|`` (block mean), computed on pruning steps only.

INC v1 ranked by signed W, which prunes large negative weights first; we use the absolute value.
"""

from __future__ import annotations

import torch

from .base import CRITERIA, Criterion

__all__ = ["Magnitude"]


@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    def scores(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [s.reduce(s.to_2d(s.weight.detach().abs()).float()) for s in self.slots]
