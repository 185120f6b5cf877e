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
    nm = True

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
        """(columns [M, G], bool [M, G] marking the N lowest-score weights of each group), with
        the M positions of the G groups laid out as M contiguous rows.

        The rank of a weight in its group is the number of weights before it in a stable sort
        (lower score, or an equal score at a lower index: ties are deterministic). M·(M−1)
        comparisons of contiguous vectors are many times faster than sorting millions of rows of
        length M, or than broadcasting over a last dimension of 4.
        """
        columns = scores.reshape(-1, self.m).t().contiguous()
        # uint8 counts (M <= 256) and bool comparisons viewed as uint8: no casts in the loop
        rank = torch.zeros(columns.shape, dtype=torch.uint8 if self.m <= 256 else torch.int32, device=scores.device)
        for i in range(self.m):
            for j in range(self.m):
                if j == i:
                    continue
                before = columns[j] <= columns[i] if j < i else columns[j] < columns[i]
                rank[i] += before.view(torch.uint8) if rank.dtype == torch.uint8 else before
        return columns, rank < self.n

    # -- ranking units: an N:M group of M weights, of which a pruned one zeroes its N weakest --
    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return self.rank_units(scores)[0]

    def rank_units(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        columns, candidates = self._candidates(scores)
        return (columns * candidates).sum(dim=0) / self.m, candidates

    def unit_elements(self, rows: int, cols: int) -> int:
        return self.n

    def num_units(self, rows: int, cols: int) -> int:
        return rows * cols // self.m

    def keep_mask(self, pruned_units: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.keep_mask_from(pruned_units, scores, self._candidates(scores)[1])

    def keep_mask_from(self, pruned_units: torch.Tensor, scores: torch.Tensor, memo: object) -> torch.Tensor:
        if not isinstance(memo, torch.Tensor):
            raise TypeError("keep_mask_from needs the candidates rank_units returned")
        drop = memo & pruned_units.reshape(1, -1)
        return ~drop.t().reshape(scores.shape)

    def max_sparsity(self) -> float:
        return self.n / self.m
