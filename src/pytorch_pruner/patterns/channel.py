"""Channel patterns: whole input channels (``channelx1``) or whole output channels (``1xchannel``).

``channelx1`` prunes a column of the 2-D view: one input feature (one input channel at one kernel
position for convolutions). ``1xchannel`` prunes a row: one output neuron, or a whole conv filter.
Whole rows and columns can be removed from the model afterwards, which makes it smaller for real.
"""

from __future__ import annotations

import torch

from .base import PATTERNS, Pattern

__all__ = ["Channel"]


@PATTERNS.register("channel")
class Channel(Pattern):
    examples = ("channelx1", "1xchannel")

    @classmethod
    def parse(cls, text: str) -> Channel | None:
        return {"1xchannel": cls(0), "channelx1": cls(1)}.get(text)

    def __init__(self, axis: int, name: str | None = None) -> None:
        if axis not in (0, 1):
            raise ValueError("axis must be 0 (rows: 1xchannel) or 1 (columns: channelx1)")
        self.axis = axis
        self.name = name or ("1xchannel" if axis == 0 else "channelx1")

    def check(self, rows: int, cols: int) -> str | None:
        return None

    def score_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        return (rows, 1) if self.axis == 0 else (1, cols)

    def view(self, t2d: torch.Tensor) -> torch.Tensor:
        return t2d

    def reduce(self, t2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.mean(t2d, dim=1 - self.axis, keepdim=True, out=out)

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.reshape(-1)

    def unit_elements(self, rows: int, cols: int) -> int:
        return cols if self.axis == 0 else rows

    def keep_mask(self, pruned_units: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return (~pruned_units).reshape(scores.shape)
