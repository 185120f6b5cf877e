"""The Pattern interface: how a 2-D weight view is cut into blocks that are pruned together.

Vocabulary used by every pattern:

* the *2-D view* of a weight is ``[rows, cols]`` = ``[output channels, input features]``;
* *scores* are kept at the resolution the pattern needs (``score_shape``): one per NxM block, one
  per element for N:M (it must know which weights of a group are lowest);
* a *unit* is what selection ranks: an NxM block, a channel, or an N:M group of M weights;
* a pruned unit zeroes ``unit_elements`` weights (N for an N:M group, all of a block otherwise);
* masks are bool, ``True`` = keep, stored in ``score_shape``; :meth:`Pattern.expand` gives the
  full ``[rows, cols]`` mask.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..registry import Registry

__all__ = ["PATTERNS", "Pattern"]


class Pattern(ABC):
    """A sparsity pattern. Subclasses are registered in :data:`PATTERNS` by a name regex.

    Two parts, kept apart:

    * **block geometry** (abstract, every pattern writes it): :meth:`parse`, :meth:`check`,
      :meth:`score_shape`, :meth:`view`, :meth:`reduce`; :meth:`expand` follows from :meth:`view`;
    * **ranking units** (one unit = one block unless a pattern says otherwise, as N:M does):
      :meth:`unit_scores`, :meth:`unit_elements`, :meth:`num_units`, :meth:`keep_mask`,
      :meth:`max_sparsity` and the :attr:`nm` flag.

    A new pattern is one file with one class (the geometry) and one ``@PATTERNS.register`` line.
    """

    #: Text the pattern was written as in the config (e.g. ``"4x1"``).
    name: str
    #: Pattern strings this class parses, used in docs and registry-wide tests.
    examples: ClassVar[tuple[str, ...]] = ()
    #: Whether units are N:M groups (a pruned unit zeroes N of its M weights, and sparsity ratios
    #: count weights, not groups); ``False`` for patterns whose unit is a whole block.
    nm: ClassVar[bool] = False

    # -- block geometry --------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def parse(cls, text: str) -> Pattern | None:
        """Build the pattern written as *text*, ``None`` if *text* is not of this family.

        Raises:
            PatternError: *text* is of this family but malformed (e.g. ``"0x1"``, ``"3:2"``).
        """

    @abstractmethod
    def check(self, rows: int, cols: int) -> str | None:
        """Return why a ``[rows, cols]`` view can't take this pattern, or ``None`` if it can."""

    @abstractmethod
    def score_shape(self, rows: int, cols: int) -> tuple[int, ...]:
        """Shape of the scores and of the stored keep-mask: one entry per block."""

    @abstractmethod
    def view(self, t2d: torch.Tensor) -> torch.Tensor:
        """Reshape a 2-D tensor so that a ``score_shape`` tensor broadcasts onto it."""

    @abstractmethod
    def reduce(self, t2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Element scores ``[rows, cols]`` → scores in ``score_shape`` (a mean over each block)."""

    def expand(self, keep: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Keep-mask in ``score_shape`` → bool ``[rows, cols]``."""
        full = torch.ones(rows, cols, dtype=torch.bool, device=keep.device)
        self.view(full).logical_and_(keep)
        return full

    # -- ranking units (default: a unit is a block) ----------------------------------------
    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores in ``score_shape`` → 1-D score per unit (lower = pruned first)."""
        return scores.reshape(-1)

    def unit_elements(self, rows: int, cols: int) -> int:
        """How many weights one pruned unit zeroes."""
        return rows * cols // math.prod(self.score_shape(rows, cols))

    def num_units(self, rows: int, cols: int) -> int:
        """Number of units in a ``[rows, cols]`` view."""
        return rows * cols // self.unit_elements(rows, cols)

    def keep_mask(self, pruned_units: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """1-D bool of pruned units (+ the scores) → keep-mask in ``score_shape``."""
        return (~pruned_units).reshape(scores.shape)

    def rank_units(self, scores: torch.Tensor) -> tuple[torch.Tensor, object]:
        """:meth:`unit_scores`, plus what :meth:`keep_mask_from` can reuse on the same pruning step
        (so work shared by both, like N:M's candidates, is done once)."""
        return self.unit_scores(scores), None

    def keep_mask_from(self, pruned_units: torch.Tensor, scores: torch.Tensor, memo: object) -> torch.Tensor:
        """:meth:`keep_mask`, given the *memo* :meth:`rank_units` returned for these scores."""
        return self.keep_mask(pruned_units, scores)

    def max_sparsity(self) -> float:
        """The highest sparsity this pattern can reach (N/M for N:M, else 1)."""
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


PATTERNS: Registry[type[Pattern]] = Registry("pattern")
