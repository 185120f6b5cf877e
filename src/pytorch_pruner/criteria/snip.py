"""Gradient criteria: SNIP and SNIP with momentum.

* ``snip``: ``score = |W ⊙ ∇W|`` of the latest optimizer step — the first-order estimate of how
  much the loss changes when a weight is removed (Lee et al., *SNIP: Single-shot Network Pruning
  based on Connection Sensitivity*, ICLR 2019, arXiv:1810.02340).
* ``snip_momentum``: ``S ← 0.9 · S + |W ⊙ ∇W|`` every optimizer step, ``S₀ = 0``: the same
  sensitivity averaged over many batches, far less noisy than one step.

Scores are kept in float32 at the pruner's resolution (one per NxM block), so a 4x1 pruner keeps
one float per four weights, and computed in float32 whatever the weight dtype (``|W*G|`` of two
fp16 numbers is exact in float32 and often 0 in fp16).

The per-step work, per layer while its data is in cache: ``|W*G|`` into one float32 scratch
(two elementwise passes), its block means (read in the weight's own layout: no permute copy for
conv layers), then ``S <- step + decay * S`` fused in one add and kept only if the step's flag is
True (one select), so no host sync. Where blocks hold several weights the block means of all
layers are staged first and the finiteness flag is taken from them (a quarter of a gradient's
size for 4x1, already in cache); there the scores and the staged steps of all layers are slices
of two flat tensors, so the flag is one sum and the update one add and one select for all layers.
Where scores are per element (1x1, N:M) staging them all would double the memory, so the flag is
taken from the gradients instead and each layer is scored at commit. Nothing is ranked or sorted
here.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import CRITERIA, Criterion, ScoreSlot, flag_to

__all__ = ["Snip", "SnipMomentum"]


class _GradientCriterion(Criterion):
    needs_grad = True
    decay: float = 0.0  # weight of the old score in the update

    def __init__(self, slots: list[ScoreSlot]) -> None:
        super().__init__(slots)
        self._scores = [torch.zeros(s.score_shape, dtype=torch.float32, device=s.weight.device) for s in slots]
        #: stage the block scores of every layer (and take the flag from them) when all are reduced
        self._stage_steps = bool(slots) and all(s.reduced for s in slots)
        self._elem: dict[torch.device, torch.Tensor] = {}  # float32 |W*G|, one layer at a time
        self._buffers: list[torch.Tensor] | None = None  # float32 block-score scratch, one per slot
        self._steps: list[torch.Tensor] = []  # this step's staged block scores, one per slot
        self._staged: list[bool] = [False] * len(slots)  # which slots had a gradient this step
        #: (all scores, all staged steps) as two flat tensors whose slices are ``_scores`` and the
        #: step buffers: the score update of every layer is one add and one select (see _flatten)
        self._flat: tuple[torch.Tensor, torch.Tensor] | None = None
        self._elem_views: list[torch.Tensor | None] = [None] * len(slots)

    # -- scratch ---------------------------------------------------------------------------
    def _elem_buffer(self, device: torch.device) -> torch.Tensor:
        buf = self._elem.get(device)
        if buf is None:
            size = max(s.weight.numel() for s in self.slots if s.weight.device == device)
            buf = self._elem[device] = torch.empty(size, dtype=torch.float32, device=device)
        return buf

    def _flatten(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Lay the scores and the step buffers out as slices of one flat tensor each, when every
        layer's block scores are staged, all on one device and aligned with the scores as they are
        (no conv view); else None.

        Elementwise operations give each element the same result whether a layer is updated alone or
        within all layers, so the scores are bit-identical to the per-layer update; it saves two
        Python-level operations per layer and step, and the one large add and select run on every
        intra-op thread (a BERT-mini layer's 16k block scores are below torch's parallel grain).
        """
        if self._flat is not None or not self._stage_steps:
            return self._flat
        devices = {t.device for t in self._scores}
        if len(devices) != 1 or any(t.is_meta for t in self._scores) or any(s.score_view for s in self.slots):
            return None
        sizes = [t.numel() for t in self._scores]
        scores = torch.cat([t.reshape(-1) for t in self._scores])
        steps = torch.empty_like(scores)
        self._scores = [part.view(t.shape) for part, t in zip(scores.split(sizes), self._scores, strict=True)]
        self._buffers = list(steps.split(sizes))
        self._flat = (scores, steps)
        return self._flat

    def follow_(self, index: int, weight: torch.Tensor) -> None:
        self._flat = None  # the slot's state moves on its own; laid out flat again at the next step
        self._elem_views = [None] * len(self.slots)
        super().follow_(index, weight)
        self._buffers = None  # made again (flat or not) at the next step

    def _step_buffers(self) -> list[torch.Tensor]:
        if self._buffers is None:
            if self._stage_steps:
                self._buffers = [torch.empty(t.numel(), dtype=torch.float32, device=t.device) for t in self._scores]
            else:  # one shared buffer per device, for the layer being committed
                shared: dict[torch.device, torch.Tensor] = {}
                for t in self._scores:
                    if t.device not in shared or shared[t.device].numel() < t.numel():
                        shared[t.device] = torch.empty(t.numel(), dtype=torch.float32, device=t.device)
                self._buffers = [shared[t.device][: t.numel()] for t in self._scores]
        return self._buffers

    def scratch_bytes(self) -> int:
        devices = {s.weight.device for s in self.slots}
        elem = sum(max(s.weight.numel() for s in self.slots if s.weight.device == d) for d in devices)
        if self._stage_steps:
            steps = sum(t.numel() for t in self._scores)
        else:
            steps = max((t.numel() for t in self._scores), default=0)
        return 4 * (elem + steps)

    # -- per step --------------------------------------------------------------------------
    def _step(self, i: int, grad: torch.Tensor) -> torch.Tensor:
        """Block scores of ``|W*G|`` of slot *i*, aligned with ``slot.aligned(score)``."""
        slot = self.slots[i]
        weight = slot.weight.detach()
        elem = self._elem_views[i]  # made again after the weight moves (follow_)
        if elem is None:
            elem = self._elem_views[i] = self._elem_buffer(weight.device)[: weight.numel()].view(weight.shape)
        if weight.dtype == torch.float32:
            torch.mul(weight, grad, out=elem)
        else:  # both factors in float32: the product of two fp16/bf16 numbers is exact there
            elem.copy_(weight)
            elem.mul_(grad)
        elem.abs_()
        return slot.block_scores(elem, self._step_buffers()[i])

    @torch.no_grad()
    def stage_(self) -> list[torch.Tensor]:
        grads = [s.grad for s in self.slots]
        self._staged = [g is not None for g in grads]
        if not self._stage_steps:
            return [g for g in grads if g is not None]
        flat = self._flatten()
        buffers = self._step_buffers()
        steps: list[torch.Tensor | None] = []
        for i, grad in enumerate(grads):
            if grad is None:
                steps.append(None)
                continue
            step = self._step(i, grad)
            if flat is not None and step.data_ptr() != buffers[i].data_ptr():
                buffers[i].copy_(step.reshape(-1))  # a reduce that did not write into its buffer
                step = buffers[i].view(step.shape)
            steps.append(step)
        self._steps = steps  # type: ignore[assignment]
        if flat is not None and all(self._staged):
            return [flat[1]]  # one flag from one sum over all layers' block scores
        return [t for t in steps if t is not None]

    @torch.no_grad()
    def commit_(self, finite: torch.Tensor) -> None:
        flat = self._flat if self._stage_steps else None
        if flat is not None and all(self._staged):
            scores, steps = flat
            ok = flag_to(finite, scores.device)
            # step + decay * score for every layer in one fused pass, kept where finite
            torch.add(steps, scores, alpha=self.decay, out=steps)
            torch.where(ok, steps, scores, out=scores)
            return
        flags: dict[torch.device, torch.Tensor] = {}
        for i, (slot, score) in enumerate(zip(self.slots, self._scores, strict=True)):
            device = score.device
            if device not in flags:
                flags[device] = flag_to(finite, device)
            ok = flags[device]
            if not self._staged[i]:  # frozen or unused this step: no new evidence, old scores decay
                if self.decay != 1.0:
                    torch.where(ok, score * self.decay, score, out=score)
                continue
            if self._stage_steps:
                step = self._steps[i]
            else:
                grad = slot.grad
                if grad is None:  # removed between the phases: nothing to add
                    continue
                step = self._step(i, grad)
            target = slot.aligned(score)
            # step + decay * score, one fused pass (into the step's scratch), kept where finite
            torch.add(step, target, alpha=self.decay, out=step)
            torch.where(ok, step, target, out=target)

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
