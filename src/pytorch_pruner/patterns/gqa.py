"""Query heads under grouped-query attention, pruned evenly: ``gqa_head:<head_dim>:<group>``
(``head:<head_dim>:<group>`` is the same).

Put on the attention output projection (``o_proj``), whose input columns are the query heads in
order, ``group`` consecutive heads sharing one key/value head. Attention kernels need every
key/value group to hold the same number of query heads, so this pattern ranks *ranks within
groups*: unit ``r`` is the ``r``-th lowest-scoring query head of every group of the layer (its
score: their mean), and pruning it removes one head from each group. Every group then keeps the
same number of query heads, and :func:`pytorch_pruner.speed.slim_` removes them all; the key/value
heads stay. To remove whole key/value heads (with all their query heads), use
``head:<head_dim x group>`` instead.
"""

from __future__ import annotations

import re

import torch

from ..errors import PatternError
from .base import PATTERNS, Pattern

__all__ = ["GroupedHeads"]


@PATTERNS.register("grouped-query heads")
class GroupedHeads(Pattern):
    """Query heads of ``head_dim`` columns, ranked within key/value groups of ``group`` heads.

    Example:
        >>> pattern = GroupedHeads.parse("head:64:4")
        >>> pattern.score_shape(1024, 1024), pattern.num_units(1024, 1024), pattern.unit_elements(1024, 1024)
        ((1, 16, 1), 4, 262144)
    """

    examples = ("gqa_head:8:4", "gqa_head:16:2")

    def __init__(self, head_dim: int, group: int, name: str | None = None) -> None:
        self.name = f"gqa_{name}" if name and not name.startswith("gqa_") else name or f"gqa_head:{head_dim}:{group}"
        if head_dim < 1 or group < 1:
            raise PatternError(
                f"pattern {self.name!r}: head_dim and the group size (query heads per key/value head) must be at "
                "least 1 (e.g. 'gqa_head:128:4')"
            )
        self.head_dim, self.group = head_dim, group

    @classmethod
    def parse(cls, text: str) -> GroupedHeads | None:
        # the parser drops prefixes up to the last "_": "gqa_head:64:4" arrives as "head:64:4"
        match = re.fullmatch(r"head:(\d+):(\d+)", text)
        return cls(int(match[1]), int(match[2]), text) if match else None

    def check(self, rows: int, cols: int) -> str | None:
        if cols % (self.head_dim * self.group):
            return (
                f"pattern {self.name} needs the columns (input features) to be whole groups of {self.group} heads of "
                f"{self.head_dim}; the 2-D weight is [{rows}, {cols}] (are head_dim and the group size right?)"
            )
        return None

    def score_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        return (1, cols // self.head_dim, 1)

    def view(self, t2d: torch.Tensor) -> torch.Tensor:
        rows, cols = t2d.shape
        return t2d.reshape(rows, cols // self.head_dim, self.head_dim)

    def reduce(self, t2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.mean(self.view(t2d), dim=(0, 2), keepdim=True, out=out)

    def _sorted(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head scores [kv groups, group] sorted within each group (stable), and the sort order."""
        return torch.sort(scores.reshape(-1, self.group), dim=1, stable=True)

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        ranked, _ = self._sorted(scores)
        return ranked.mean(dim=0)  # unit r: the r-th lowest head of every group

    def num_units(self, rows: int, cols: int) -> int:
        return self.group

    def unit_elements(self, rows: int, cols: int) -> int:
        return rows * cols // self.group

    def keep_mask(self, pruned_units: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _, order = self._sorted(scores)
        drop = torch.zeros_like(order, dtype=torch.bool)
        drop.scatter_(1, order, pruned_units.reshape(1, -1).expand_as(order))
        return (~drop).reshape(scores.shape)
