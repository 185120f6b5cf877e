"""Gradient criteria: SNIP and SNIP with momentum.

* ``snip``: ``score = |W ⊙ ∇W|`` of the latest optimizer step — the first-order estimate of how
  much the loss changes when a weight is removed (Lee et al., *SNIP: Single-shot Network Pruning
  based on Connection Sensitivity*, ICLR 2019, arXiv:1810.02340).
* ``snip_momentum``: ``S ← 0.9 · S + |W ⊙ ∇W|`` every optimizer step, ``S₀ = 0``: the same
  sensitivity averaged over many batches, far less noisy than one step.

Scores are kept in float32 at the pruner's resolution (one per NxM block), so a 4x1 pruner keeps
one float per four weights. The per-step work is three elementwise passes into scratch memory
allocated once; nothing is ranked or sorted here.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import CRITERIA, Criterion, ScoreSlot

__all__ = ["Snip", "SnipMomentum"]


class _GradientCriterion(Criterion):
    needs_grad = True
    decay: float = 0.0  # weight of the old score in the update

    def __init__(self, slots: list[ScoreSlot]) -> None:
        super().__init__(slots)
        self._scores = [torch.zeros(s.score_shape, dtype=torch.float32, device=s.weight.device) for s in slots]
        self._scratch: torch.Tensor | None = None  # |W ⊙ G|, element level, reused by all slots
        self._reduced: torch.Tensor | None = None  # its block means, reused by all slots

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._scratch is None or self._reduced is None:
            w = self.slots[0].weight
            self._scratch = torch.empty(max(s.weight.numel() for s in self.slots), dtype=w.dtype, device=w.device)
            self._reduced = torch.empty(max(t.numel() for t in self._scores), device=w.device)
        return self._scratch, self._reduced

    @torch.no_grad()
    def accumulate_(self) -> None:
        scratch, reduced = self._buffers()
        for slot, score in zip(self.slots, self._scores, strict=True):
            grad = slot.weight.grad
            if grad is None:  # frozen or unused this step: no new evidence, old scores decay
                if self.decay != 1.0:
                    score.mul_(self.decay)
                continue
            weight = slot.weight.detach()
            if scratch.dtype != weight.dtype:
                scratch = scratch.to(weight.dtype)
                self._scratch = scratch
            elem = scratch[: weight.numel()].view(weight.shape)
            torch.mul(weight, grad, out=elem)
            elem.abs_()
            if slot.elementwise:
                step = elem
            else:
                step = slot.reduce(slot.to_2d(elem), out=reduced[: score.numel()].view(score.shape))
            # score = step + decay * score, one fused pass
            torch.add(step, score, alpha=self.decay, out=score)

    def scores(self) -> list[torch.Tensor]:
        return list(self._scores)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": [t.clone() for t in self._scores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = state["scores"]
        if len(scores) != len(self._scores) or any(
            a.shape != b.shape for a, b in zip(scores, self._scores, strict=True)
        ):
            raise ValueError("saved scores do not match this pruner's layers")
        for own, saved in zip(self._scores, scores, strict=True):
            own.copy_(saved)


@CRITERIA.register("snip")
class Snip(_GradientCriterion):
    """``|W ⊙ ∇W|`` of the last optimizer step before the pruning step."""

    every_step = False
    decay = 0.0


@CRITERIA.register("snip_momentum", "snip-momentum")
class SnipMomentum(_GradientCriterion):
    """``S ← 0.9 · S + |W ⊙ ∇W|`` every optimizer step."""

    every_step = True
    decay = 0.9
