"""NxM blocks: N consecutive output rows × M consecutive input columns share one mask value.

``1x1`` is unstructured pruning; ``4x1`` makes four neighbouring output neurons drop the same
input position, which sparse kernels turn into speed.
"""

from __future__ import annotations

import re

import torch

from ..errors import PatternError
from .base import PATTERNS, Pattern

__all__ = ["NxM"]


@PATTERNS.register("NxM")
class NxM(Pattern):
    examples = ("1x1", "4x1", "2x2", "8x1", "1x4")

    def __init__(self, n: int, m: int, name: str | None = None) -> None:
        if n < 1 or m < 1:
            raise PatternError(f"pattern '{n}x{m}': N and M must be at least 1 (e.g. 4x1)")
        self.n, self.m = n, m
        self.name = name or f"{n}x{m}"

    @classmethod
    def parse(cls, text: str) -> NxM | None:
        match = re.fullmatch(r"(\d+)x(\d+)", text)
        return cls(int(match[1]), int(match[2]), text) if match else None

    def check(self, rows: int, cols: int) -> str | None:
        if rows % self.n or cols % self.m:
            return (
                f"pattern {self.name} needs rows divisible by {self.n} and columns by {self.m}; "
                f"the 2-D weight is [{rows}, {cols}]"
            )
        return None

    def score_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        if self.n == 1 and self.m == 1:
            return (rows, cols)
        return (rows // self.n, 1, cols // self.m, 1)

    def view(self, t2d: torch.Tensor) -> torch.Tensor:
        if self.n == 1 and self.m == 1:
            return t2d
        rows, cols = t2d.shape
        return t2d.reshape(rows // self.n, self.n, cols // self.m, self.m)

    def reduce(self, t2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.n == 1 and self.m == 1:
            return t2d if out is None else out.copy_(t2d)
        return torch.mean(self.view(t2d), dim=(1, 3), keepdim=True, out=out)

    def unit_elements(self, rows: int, cols: int) -> int:
        return self.n * self.m
