"""Channel groups: ``K`` consecutive output rows or input columns pruned together (attention heads).

``Kxchannel`` prunes ``K`` consecutive rows of the 2-D view at once (all their columns), and
``channelxK`` prunes ``K`` consecutive columns (all their rows); ``K = 1`` is the plain
:class:`Channel` pattern (``channelx1``, ``1xchannel``). ``head:<head_dim>`` is ``channelx<head_dim>``
under the name that says what it is for: put on an attention block's *output projection*
(``attention.output.dense`` in BERT), each block is the input columns that one head writes, so a
pruned block is a whole head that :func:`pytorch_pruner.speed.slim_` can remove. Pruning the output
projection alone is enough: a head whose output columns are zero contributes nothing, whatever its
query, key and value weights are, so one layer per attention block decides its heads.
"""

from __future__ import annotations

import re

import torch

from ..errors import PatternError
from .base import PATTERNS, Pattern

__all__ = ["Channel", "ChannelGroup"]


@PATTERNS.register("channel group", "channel")
class ChannelGroup(Pattern):
    """Groups of ``size`` whole rows (``axis=0``) or whole columns (``axis=1``) of the 2-D view.

    ``size = 1`` is the plain channel pattern (``1xchannel``, ``channelx1``); its scores and masks
    are 2-D (``[rows, 1]`` or ``[1, cols]``), larger groups' are 3-D.

    Example:
        >>> pattern = ChannelGroup.parse("head:64")
        >>> pattern.score_shape(256, 256), pattern.unit_elements(256, 256)
        ((1, 4, 1), 16384)
        >>> ChannelGroup.parse("channelx1").score_shape(8, 12)
        (1, 12)
    """

    examples = ("head:64", "channelx4", "8xchannel", "channelx1", "1xchannel")

    def __init__(self, axis: int, size: int = 1, name: str | None = None) -> None:
        if axis not in (0, 1):
            raise ValueError("axis must be 0 (groups of rows) or 1 (groups of columns)")
        if size < 1:
            raise PatternError(f"pattern {name!r}: the group size must be at least 1 (e.g. 'head:64')")
        self.axis, self.size = axis, size
        self.name = name or (f"{size}xchannel" if axis == 0 else f"channelx{size}")

    @classmethod
    def parse(cls, text: str) -> ChannelGroup | None:
        for regex, axis in ((r"head:(\d+)", 1), (r"channelx(\d+)", 1), (r"(\d+)xchannel", 0)):
            match = re.fullmatch(regex, text)
            if match:
                return cls(axis, int(match[1]), text)
        return None

    def check(self, rows: int, cols: int) -> str | None:
        dim, what = (rows, "rows (output channels)") if self.axis == 0 else (cols, "columns (input features)")
        if dim % self.size:
            return (
                f"pattern {self.name} needs the {what} divisible by {self.size}; the 2-D weight is [{rows}, {cols}]"
                + (" (is the head size right?)" if self.name.startswith("head") else "")
            )
        return None

    def score_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        if self.size == 1:
            return (rows, 1) if self.axis == 0 else (1, cols)
        return (rows // self.size, 1, 1) if self.axis == 0 else (1, cols // self.size, 1)

    def view(self, t2d: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return t2d
        rows, cols = t2d.shape
        if self.axis == 0:
            return t2d.reshape(rows // self.size, self.size, cols)
        return t2d.reshape(rows, cols // self.size, self.size)

    def reduce(self, t2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.size == 1:
            return torch.mean(t2d, dim=1 - self.axis, keepdim=True, out=out)
        dims = (1, 2) if self.axis == 0 else (0, 2)
        return torch.mean(self.view(t2d), dim=dims, keepdim=True, out=out)

    def unit_elements(self, rows: int, cols: int) -> int:
        return self.size * (cols if self.axis == 0 else rows)


class Channel(ChannelGroup):
    """``ChannelGroup(axis, size=1)`` under its former name: whole rows (``1xchannel``, axis 0) or
    whole columns (``channelx1``, axis 1)."""

    def __init__(self, axis: int, name: str | None = None) -> None:
        super().__init__(axis, 1, name)
