"""N:M semi-structured sparsity: N of every M consecutive input weights are zero.

This is the seed's meaning: ``2:4`` zeroes 2 of each 4 (50%), ``1:4`` zeroes 1 (25%), ``4:8``
zeroes 4 (50%). In each group the N lowest-score weights are the candidates, and the group's score
is the sum of their scores divided by M. Pruning a group zeroes its candidates, so below N/M only
the weakest groups are pruned, and at N/M every group has exactly N zeros (the 2:4 layout that
sparse tensor cores accelerate).
"""

from __future__ import annotations

import re

import torch

from ..errors import PatternError
from .base import PATTERNS, Pattern

__all__ = ["NInM"]


@PATTERNS.register("N:M")
class NInM(Pattern):
    examples = ("2:4", "1:4", "4:8", "1:2")

    def __init__(self, n: int, m: int, name: str | None = None) -> None:
        if not 1 <= n < m:
            raise PatternError(f"pattern '{n}:{m}': N:M zeroes N of every M weights and needs 1 <= N < M (e.g. 2:4)")
        self.n, self.m = n, m
        self.name = name or f"{n}:{m}"

    @classmethod
    def parse(cls, text: str) -> NInM | None:
        match = re.fullmatch(r"(\d+):(\d+)", text)
        return cls(int(match[1]), int(match[2]), text) if match else None

    def check(self, rows: int, cols: int) -> str | None:
        if cols % self.m:
            return (
                f"pattern {self.name} needs the input dimension divisible by {self.m}; "
                f"the 2-D weight is [{rows}, {cols}]"
            )
        return None

    def score_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        return (rows, cols)

    def view(self, t2d: torch.Tensor) -> torch.Tensor:
        return t2d

    def reduce(self, t2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return t2d if out is None else out.copy_(t2d)

    def _candidates(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        groups = scores.reshape(-1, self.m)
        # A stable sort makes the choice among equal scores deterministic (lowest index first).
        values, order = torch.sort(groups, dim=1, stable=True)
        return values[:, : self.n], order[:, : self.n]

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        values, _ = self._candidates(scores)
        return values.sum(dim=1) / self.m

    def unit_elements(self, rows: int, cols: int) -> int:
        return self.n

    def num_units(self, rows: int, cols: int) -> int:
        return rows * cols // self.m

    def keep_mask(self, pruned_units: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _, order = self._candidates(scores)
        keep = torch.ones(scores.numel() // self.m, self.m, dtype=torch.bool, device=scores.device)
        drop = pruned_units.reshape(-1, 1).expand(-1, self.n)
        keep.scatter_(1, order, ~drop)
        return keep.reshape(scores.shape)

    def max_sparsity(self) -> float:
        return self.n / self.m
