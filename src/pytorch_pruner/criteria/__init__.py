"""Pruning criteria: how important each weight block is (higher score = kept)."""

from .activation import ActivationStats, HessianStats, SparseGPT, Wanda
from .base import CRITERIA, Criterion, ScoreSlot, finite_flag, flag_to
from .magnitude import Magnitude
from .pattern_lock import PatternLock
from .snip import Snip, SnipMomentum

__all__ = [
    "CRITERIA",
    "ActivationStats",
    "Criterion",
    "HessianStats",
    "Magnitude",
    "PatternLock",
    "ScoreSlot",
    "Snip",
    "SnipMomentum",
    "SparseGPT",
    "Wanda",
    "finite_flag",
    "flag_to",
]
