"""A tiny name → object registry used for criteria, patterns and sparsity schedules.

Strings are resolved once, when a config is loaded; everything after that works with objects.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

__all__ = ["Registry", "closest"]

T = TypeVar("T")


def closest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice to *name*, or ``""``."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """Maps names to objects.

    Example:
        >>> shapes = Registry("shape")
        >>> @shapes.register("square")
        ... def square(x):
        ...     return x * x
        >>> shapes.get("square")(3)
        9
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator that registers an object under *name* (and *aliases*)."""

        def decorate(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items and self._items[key] is not obj:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
                self._items[key] = obj
            return obj

        return decorate

    def get(self, name: str, path: str = "") -> T:
        """Return the object registered as *name*; a :class:`ConfigError` lists the known names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            where = f"{path}: " if path else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}{closest(str(name), self.names())}; "
                f"known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
