"""Exception hierarchy.

Every error raised on purpose by pytorch-pruner is a :class:`PruningError`. Errors that refine a
builtin also subclass it, so ``except ValueError`` keeps working for callers that don't know us.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "NoMatchingLayersError",
    "PatternError",
    "PruningError",
    "StateError",
    "first_names",
    "install_hint",
]


class PruningError(Exception):
    """Base class of all pytorch-pruner errors."""


class ConfigError(PruningError, ValueError):
    """A configuration value is wrong: the message names its path, the value and what is allowed."""


class PatternError(PruningError, ValueError):
    """A sparsity pattern cannot be applied (malformed, or it does not fit a tensor)."""


class NoMatchingLayersError(PruningError, LookupError):
    """No layer of the model matches any pruner of the config."""


class StateError(PruningError, RuntimeError):
    """A hook or method was called at the wrong point of the lifecycle, or a saved state does
    not fit (another config, another model, a corrupt file)."""


def install_hint(extra: str, packages: str) -> str:
    """How to install what an optional feature needs, for an error message: the *packages*
    themselves, or pytorch-pruner's *extra* from its checkout (the package is installed from a
    checkout, with the constraints file that pins torch, not from PyPI)."""
    return (
        f"install it with: pip install {packages} (or, in a checkout of pytorch-pruner: "
        f"pip install -c constraints.txt -e '.[{extra}]')"
    )


def first_names(names: list[str], most: int = 5) -> str:
    """*names* for an error message: the first *most*, then how many more."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more
