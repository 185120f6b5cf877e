"""Pruning criteria: how important each weight block is (higher score = kept)."""

from .base import CRITERIA, Criterion, ScoreSlot
from .magnitude import Magnitude
from .snip import Snip, SnipMomentum

__all__ = ["CRITERIA", "Criterion", "Magnitude", "ScoreSlot", "Snip", "SnipMomentum"]
