"""The Criterion interface: a score per weight block, higher = more important = kept.

A criterion sees layers only through :class:`ScoreSlot`: the weight, its gradient, and how element
scores (in the weight's own layout) become block scores at the resolution its pruner keeps (one
per NxM block, one per element for N:M). It never sees sparsity, patterns or steps.

Writing a criterion (one file plus one ``@CRITERIA.register`` line):

* :meth:`Criterion.scores` returns the scores of each slot (float32, ``score_shape``) as of now.
  It runs on pruning steps only, so it may allocate and may be slow.
* A criterion that learns from training steps sets ``needs_grad`` (it reads gradients) and/or
  ``every_step``, and implements the two per-step phases, which run inside
  ``on_before_optimizer_step`` (pre-update weights, this step's gradients):

  1. :meth:`Criterion.stage_` computes this step's evidence into scratch memory and returns the
     tensors whose finiteness decides whether the step counts (its gradients, or its staged block
     scores: whatever is non-finite when a gradient is). It must not change the scores.
  2. :meth:`Criterion.commit_` folds the staged evidence into the scores where ``finite`` (a 0-d
     bool tensor on the device, never read on the host) is True, and leaves the scores bit for bit
     as they were where it is False (an AMP overflow step).

  All pruners stage first; the flag is one decision over everything staged (under torch.distributed
  it can be all-reduced between the phases); then all commit. :meth:`Criterion.accumulate_` runs
  the three for one criterion alone.
* The per-step phases are the hot path: elementwise, in place, into buffers allocated once, in
  float32 whatever the weight dtype (an fp16 sum overflows at 65504 and ``|W*G|`` underflows), with
  no host sync (no ``.item()``, ``bool(tensor)``, ``.tolist()``): they run every optimizer step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from ..patterns import Pattern

__all__ = ["CRITERIA", "Criterion", "ScoreSlot", "finite_flag", "flag_to"]


@dataclass(eq=False)
class ScoreSlot:
    """One layer as a criterion sees it.

    ``to_2d`` and ``reduce`` give scores the plain way (``reduce(to_2d(t))``, a copy for conv
    layers). The hot path uses :meth:`block_scores` and :meth:`aligned` instead, which read element
    scores in the weight's own layout without copying them where the pruner knows how.
    """

    weight: torch.Tensor  # the parameter, in its own layout
    to_2d: Callable[[torch.Tensor], torch.Tensor]  # weight layout -> [out, in]
    reduce: Callable[..., torch.Tensor]  # (t2d, out=None) -> score_shape
    score_shape: tuple[int, ...]
    #: True when to_2d is the identity and reduce keeps the shape: the hot path can skip copies.
    elementwise: bool = False
    #: the layer, for criteria that watch its inputs (wanda, sparsegpt)
    module: nn.Module | None = None
    #: (element scores in the weight's layout, out: a float32 buffer of the scores' size) -> block
    #: scores laid out like ``score_view(scores)``; an elementwise slot may return a view of its
    #: input and ignore ``out``. ``None``: ``reduce(to_2d(t), out)``.
    block_mean: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    #: scores (``score_shape``) -> a view aligned elementwise with ``block_mean``'s result.
    score_view: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    #: under FSDP2: the DTensor parameter whose local rows ``weight`` is (its ``.grad`` is a DTensor too)
    param: torch.Tensor | None = field(default=None, repr=False)

    @property
    def grad(self) -> torch.Tensor | None:
        """The gradient of ``weight``: under FSDP2 this rank's rows of the parameter's gradient."""
        if self.param is None:
            return self.weight.grad
        grad = self.param.grad
        return None if grad is None else grad.to_local()  # type: ignore[attr-defined]  # a DTensor

    @property
    def reduced(self) -> bool:
        """True when a block holds more than one weight (scores are smaller than the weight)."""
        return _numel(self.score_shape) < self.weight.numel()

    def block_scores(self, elem: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Block means of *elem* (element scores in the weight's layout), aligned with :meth:`aligned`.

        *out* is float32 scratch of ``score_shape``'s size that the result may live in.
        """
        if self.block_mean is not None:
            return self.block_mean(elem, out)
        if self.elementwise:
            return elem.view(self.score_shape)
        return self.reduce(self.to_2d(elem), out=out.view(self.score_shape))

    def aligned(self, scores: torch.Tensor) -> torch.Tensor:
        """*scores* viewed to match :meth:`block_scores` element for element."""
        return scores if self.score_view is None else self.score_view(scores)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def finite_flag(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor, True when every tensor is free of inf and NaN; no host sync.

    A float32 sum per tensor propagates both (inf - inf is NaN) and is the cheapest full
    reduction torch has on CPU (``isfinite().all()`` and the inf-norm are much slower); fp16 and
    bf16 tensors are summed in float32, so a finite fp16 gradient never "overflows" (a float32 sum
    that overflows from finite values would need values near 1e38: a broken step anyway). Tensors
    on several devices give one flag on the first accelerator among them (else the CPU).
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.sum(dtype=torch.float32))
    flags = [torch.isfinite(sums[0] if len(sums) == 1 else torch.stack(sums)).all() for sums in by_device.values()]
    if len(flags) == 1:
        return flags[0]
    # gathered on an accelerator where there is one: a copy from the host is stream-ordered there,
    # while a CPU tensor copied from an accelerator must be waited for (see flag_to)
    target = next((f.device for f in flags if f.device.type != "cpu"), flags[0].device)
    return torch.stack([flag_to(f, target) for f in flags]).all()


def flag_to(flag: torch.Tensor, device: torch.device) -> torch.Tensor:
    """*flag* on *device*, correct to read there at once.

    To an accelerator the copy is non-blocking (ordered on its stream, no host sync). To the CPU
    from an accelerator it blocks: a non-blocking device-to-host copy lands after the call returns,
    so CPU ops reading it at once could read memory not yet written. That sync happens only when
    one pruner's layers are on the CPU and on an accelerator (a model split across both).
    """
    if flag.device == device:
        return flag
    return flag.to(device, non_blocking=device.type != "cpu")


class Criterion(ABC):
    """Scores for the layers of one pruner.

    Subclasses set :attr:`needs_grad` / :attr:`every_step` and implement :meth:`scores`; criteria
    that learn per step implement :meth:`stage_` and :meth:`commit_` (see the module docstring).
    """

    needs_grad: ClassVar[bool] = False
    #: True when every optimizer step contributes (a running average), False when only the
    #: step just before a pruning step matters.
    every_step: ClassVar[bool] = False
    #: True when the scores need the layer's inputs (forward hooks), e.g. wanda
    needs_inputs: ClassVar[bool] = False
    #: True when the criterion can only prune one-shot (prune_oneshot_), never during training
    oneshot_only: ClassVar[bool] = False
    #: True when the mask is fixed once at on_train_begin (pattern_lock) and never recomputed
    fixed_mask: ClassVar[bool] = False
    #: the process group that input statistics are summed over: the sharded weights' mesh under
    #: FSDP2 (set by the pruner); None: the default group, when torch.distributed is initialised
    group: Any = None

    @classmethod
    def check_settings(cls, pattern: Pattern, prune_domain: str) -> str | None:
        """Why this criterion can't work with *pattern* / *prune_domain* (checked at config load)."""
        return None

    def __init__(self, slots: Sequence[ScoreSlot]) -> None:
        self.slots = list(slots)

    def stage_(self) -> list[torch.Tensor]:
        """Compute this step's evidence into scratch; return the tensors whose finiteness decides
        whether the step counts. Changes no score. Default: nothing staged, the gradients checked."""
        return [g for s in self.slots if (g := s.grad) is not None]

    def commit_(self, finite: torch.Tensor) -> None:  # noqa: B027 (optional: only per-step criteria override it)
        """Fold the staged evidence into the scores where *finite* (0-d bool tensor) is True."""

    def accumulate_(self) -> None:
        """Stage, decide finiteness, commit: one optimizer step of this criterion alone."""
        self.commit_(finite_flag(self.stage_()))

    @abstractmethod
    def scores(self) -> list[torch.Tensor]:
        """The scores of each slot, in ``score_shape``, as of now."""

    def lazy_scores(self) -> list[Callable[[], torch.Tensor]] | None:
        """The scores of :meth:`scores`, as one function per slot that makes them on each call, or
        ``None`` (the default) when they are state the criterion holds anyway.

        For criteria whose scores are cheap to make from the weights and small statistics (magnitude,
        wanda): a low-memory pruning step ranks one layer at a time, calling each function 2-3 times.
        Each call must give the same values until the masks are applied. Like :meth:`scores`, calling
        this takes the evidence (e.g. wanda starts its statistics again).
        """
        return None

    def remove_hooks(self) -> None:  # noqa: B027 (optional: only criteria with hooks override it)
        """Take off any hook the criterion put on the model."""

    def follow_(self, index: int, weight: torch.Tensor) -> None:
        """Point slot *index* at *weight* (moved to another device, or a new tensor: a model built
        on ``meta`` and materialized) and move the slot's state to its device.

        The default handles the usual layout: attributes that are lists of one tensor per slot
        (the slot's entry moves; one on ``meta`` holds no values and restarts at zero) and bare
        tensors (scratch buffers, moved whole). Override it for other layouts.
        """
        self.slots[index].weight = weight
        device = weight.device
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor) and value.device != device:
                setattr(self, name, torch.empty_like(value, device=device) if value.is_meta else value.to(device))
            elif (
                isinstance(value, list)
                and len(value) == len(self.slots)
                and all(isinstance(t, torch.Tensor) for t in value)
                and value[index].device != device
            ):
                old = value[index]
                value[index] = torch.zeros_like(old, device=device) if old.is_meta else old.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    def state_bytes(self) -> int:
        """Bytes of persistent state (for the memory report)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().get("scores", []))

    def scratch_bytes(self) -> int:
        """Bytes of scratch memory the per-step work reuses (allocated on first use)."""
        return 0


CRITERIA: Registry[type[Criterion]] = Registry("prune_type")
