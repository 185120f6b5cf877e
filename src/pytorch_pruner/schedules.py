"""When to prune and how far: pure functions of the optimizer step.

Pruning steps are ``start_step + c * f`` for ``c = 0 .. T`` with ``f = update_frequency_on_step``
and ``T = (end_step - start_step) // f`` (``T = 1`` and the last step is ``end_step`` when the
window is shorter than ``f``). At pruning step ``c`` the sparsity is ``curve(S, c / T)`` with
``S`` the final sparsity; ``c = 0`` prunes nothing and ``c = T`` reaches ``S`` exactly. When
``start_step == end_step`` the schedule is one-shot: ``S`` at that step.

The curves (``x = c / T``):

* ``linear``: ``S * x``
* ``cos``: ``S * (1 - cos(pi * x / 2))``
* ``exp``: ``1 - (1 - S) ** x`` — prunes fast early, the usual choice (Zhu & Gupta 2017 use cube)
* ``cube``: ``S * x ** 3``
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .registry import Registry

__all__ = ["DECAYS", "Schedule"]

Decay = Callable[[float, float], float]
DECAYS: Registry[Decay] = Registry("sparsity_decay_type")


@DECAYS.register("linear")
def linear(final: float, x: float) -> float:
    """``S * x``."""
    return final * x


@DECAYS.register("cos")
def cos(final: float, x: float) -> float:
    """``S * (1 - cos(pi * x / 2))``."""
    return final * (1.0 - math.cos(math.pi * x / 2.0))


@DECAYS.register("exp")
def exp(final: float, x: float) -> float:
    """``1 - (1 - S) ** x``."""
    return 1.0 - (1.0 - final) ** x


@DECAYS.register("cube")
def cube(final: float, x: float) -> float:
    """``S * x ** 3``."""
    return final * x**3


@dataclass(frozen=True)
class Schedule:
    """The pruning steps of one pruner and the sparsity at each.

    Example:
        >>> s = Schedule(start_step=0, end_step=100, frequency=10, final_sparsity=0.9, decay=exp)
        >>> s.is_pruning_step(50), round(s.sparsity_at(50), 4), s.sparsity_at(100)
        (True, 0.6838, 0.9)
    """

    start_step: int
    end_step: int
    frequency: int
    final_sparsity: float
    decay: Decay

    @property
    def one_shot(self) -> bool:
        return self.start_step == self.end_step

    @property
    def num_updates(self) -> int:
        """T: the index of the last pruning step (0 for one-shot)."""
        if self.one_shot:
            return 0
        return max(1, (self.end_step - self.start_step) // self.frequency)

    @property
    def last_step(self) -> int:
        """The last step at which masks change."""
        if self.one_shot:
            return self.start_step
        if self.end_step - self.start_step < self.frequency:
            return self.end_step
        return self.start_step + self.num_updates * self.frequency

    def _index(self, step: int) -> int | None:
        if self.one_shot:
            return 0 if step == self.start_step else None
        if step < self.start_step or step > self.last_step:
            return None
        if step == self.last_step:
            return self.num_updates
        offset = step - self.start_step
        return offset // self.frequency if offset % self.frequency == 0 else None

    def is_pruning_step(self, step: int) -> bool:
        """Whether masks are recomputed at optimizer step *step*."""
        return self._index(step) is not None

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at *step*: the value of the last pruning step at or before it."""
        if step < self.start_step:
            return 0.0
        if self.one_shot or step >= self.last_step:
            return self.final_sparsity
        c = (step - self.start_step) // self.frequency
        return self.decay(self.final_sparsity, c / self.num_updates)

    def pruning_steps(self) -> list[int]:
        """All pruning steps, in order."""
        if self.one_shot:
            return [self.start_step]
        steps = [self.start_step + c * self.frequency for c in range(self.num_updates)]
        return [*steps, self.last_step]

    def count_steps(self, before: int | None = None) -> int:
        """How many pruning steps there are (those before step *before* when given), without
        listing them: a window of 10^12 steps is counted in constant time."""
        return self._last_index(before) + 1

    def _last_index(self, before: int | None) -> int:
        if before is None:
            return self.num_updates
        if before <= self.start_step:
            return -1
        if self.last_step < before:
            return self.num_updates
        return min(self.num_updates - 1, (before - self.start_step - 1) // self.frequency)

    def sampled_steps(self, max_points: int, before: int | None = None) -> list[int]:
        """At most *max_points* (>= 2) pruning steps, in order, spread evenly over the schedule (the
        first and the last always in); all of them when there are few. Steps at or past *before*
        are left out."""
        last = self._last_index(before)
        if last < max_points:
            indexes: list[int] = list(range(last + 1))
        else:
            indexes = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
        return [self.last_step if c == self.num_updates else self.start_step + c * self.frequency for c in indexes]
