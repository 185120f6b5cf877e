"""Sparsity patterns and the parser that turns a config string into one."""

from __future__ import annotations

from ..errors import ConfigError, PatternError
from .base import PATTERNS, Pattern
from .gqa import GroupedHeads
from .head import Channel, ChannelGroup
from .nm import NInM
from .nxm import NxM

__all__ = ["PATTERNS", "Channel", "ChannelGroup", "GroupedHeads", "NInM", "NxM", "Pattern", "parse_pattern"]


def parse_pattern(text: object, path: str = "pattern") -> Pattern:
    """Parse ``"4x1"``, ``"2:4"``, ``"channelx1"``, ``"1xchannel"`` (prefixes such as
    ``tile_pattern_`` are ignored) into a :class:`Pattern`.

    Raises:
        ConfigError: the text is no known pattern or is malformed; the message says which.

    Example:
        >>> parse_pattern("tile_pattern_2:4")
        NInM('2:4')
    """
    allowed = (
        "NxM (e.g. '4x1', '1x1'), N:M with 1 <= N < M (e.g. '2:4'), 'channelx1', '1xchannel', "
        "groups of K columns or rows 'channelxK' / 'Kxchannel', attention heads 'head:<head_dim>', "
        "query heads evenly in GQA groups 'gqa_head:<head_dim>:<group>'"
    )
    if not isinstance(text, str):
        raise ConfigError(f"{path}: {text!r} is not a pattern string; allowed: {allowed}")
    core = text.strip()
    if "_" in core:
        core = core.rsplit("_", 1)[1]
    for family in PATTERNS.names():
        try:
            pattern = PATTERNS.get(family).parse(core)
        except PatternError as err:
            raise ConfigError(f"{path}: {text!r} is malformed: {err}") from None
        if pattern is not None:
            return pattern
    raise ConfigError(f"{path}: {text!r} is not NxM or N:M; allowed: {allowed}")
