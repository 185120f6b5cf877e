"""Slimmers by model family, registered by transformers ``model_type``.

A model is recognized by what it is: its ``config.model_type`` names the family, and the slimmer
registered for that type then checks every layer's module structure while it plans. A model type
with no slimmer is refused before anything changes, even when its modules look like a known
family's (ESM and Nystromformer have BERT's attribute names but not BERT's computation).

A new family is one :class:`Slimmer` subclass and one ``@SLIMMERS.register("model_type", ...)`` line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn

from ..registry import Registry
from .parts import SlimmingError, SlimPlan

__all__ = ["SLIMMERS", "Slimmer", "model_type", "slimmer_for"]


class Slimmer(ABC):
    """Plans the slimming of one model family, and rebuilds its slimmed shapes when loading."""

    @abstractmethod
    def plan(self, model: nn.Module, *, uniform: bool = False, uniform_ffn: bool = False) -> SlimPlan:
        """Decide what every layer keeps and check it all; change nothing.

        Args:
            model: the pruned model (pruned weights zero).
            uniform: give every layer the same sizes (the widest needed), keeping some zero units
                where a layer could lose more, so that the result has a plain config.
            uniform_ffn: the same for the FFN / MLP width only.

        Raises:
            SlimmingError: the model's modules are not what this family's slimmer knows.
        """

    @abstractmethod
    def resize(self, model: nn.Module, config: Any) -> None:
        """Give a freshly built *model* the per-layer shapes that *config* records (its values are
        overwritten by the loaded weights); nothing when the config records none."""


SLIMMERS: Registry[type[Slimmer]] = Registry("slimmer")


def model_type(model: nn.Module) -> str | None:
    """The transformers ``model_type`` of *model*'s config, or None for a model without one."""
    value = getattr(getattr(model, "config", None), "model_type", None)
    return value if isinstance(value, str) else None


def slimmer_for(model: nn.Module) -> Slimmer:
    """The slimmer registered for *model*'s ``config.model_type``.

    Raises:
        SlimmingError: no slimmer is registered for that model type (the message lists those that are).
    """
    kind = model_type(model)
    if kind is None or kind not in SLIMMERS:
        raise SlimmingError(
            f"cannot slim {type(model).__name__} (model_type {kind!r}): slimming knows the transformers model "
            f"types {', '.join(SLIMMERS.names())}, whose module structure it was checked on; the model was "
            "left unchanged (keep it dense, or export its sparsity with to_sparse_csr_ / to_semi_structured_)"
        )
    return SLIMMERS.get(kind)()
