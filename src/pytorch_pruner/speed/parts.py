"""Building blocks every slimmer shares: the report, the error, the plan, and new smaller layers.

A slimmer never changes a tensor while it decides: it returns a :class:`SlimPlan` (what each layer
keeps, and the changes that cut it), checked whole; only :meth:`SlimPlan.apply` changes the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import PruningError

__all__ = [
    "SlimPlan",
    "SlimReport",
    "SlimmedLayer",
    "SlimmingError",
    "filled",
    "keep_at_least_one",
    "new_batch_norm",
    "new_conv",
    "new_conv1d",
    "new_linear",
    "set_submodule",
    "zero_rows",
]


class SlimmingError(PruningError, ValueError):
    """The model (or a part of it) cannot be slimmed; the message says what and why."""


@dataclass(frozen=True)
class SlimmedLayer:
    """One group of units that was made smaller: ``before`` → ``after`` units of kind ``unit``."""

    name: str
    unit: str
    before: int
    after: int


@dataclass
class SlimReport:
    """What :func:`~pytorch_pruner.speed.slim_` removed, and what it could not slim with the reason."""

    slimmed: list[SlimmedLayer] = field(default_factory=list)
    #: (module name, reason) for units left in place
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        """How many units were removed in all."""
        return sum(s.before - s.after for s in self.slimmed)

    def __str__(self) -> str:
        lines = [f"{s.name}: {s.unit} {s.before} -> {s.after}" for s in self.slimmed]
        lines += [f"{name}: not slimmed: {reason}" for name, reason in self.skipped]
        return "\n".join(lines) or "nothing to slim"


@dataclass
class SlimPlan:
    """A whole slimming, decided and checked, not yet done.

    ``cuts`` only swap in smaller modules built from slices of the current weights, and ``config``
    holds the attributes to set on the model's config: every check happened while planning, so
    applying cannot stop half-way for a reason the plan could have seen.
    """

    report: SlimReport = field(default_factory=SlimReport)
    cuts: list[Callable[[], None]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> SlimReport:
        """Make the planned changes to *model*; returns the plan's report."""
        for cut in self.cuts:
            cut()
        config = getattr(model, "config", None)
        if config is not None:
            for key, value in self.config.items():
                setattr(config, key, value)
        return self.report


def zero_rows(weight: torch.Tensor) -> torch.Tensor:
    """Bool per output unit (dim 0): all its weights are zero."""
    return weight.reshape(weight.shape[0], -1).eq(0).all(dim=1)


def keep_at_least_one(keep: torch.Tensor) -> torch.Tensor:
    """*keep* with unit 0 kept when nothing would be: a layer of width 0 breaks most kernels."""
    if not bool(keep.any()):
        keep = keep.clone()
        keep[0] = True
    return keep


_Module = TypeVar("_Module", bound=nn.Module)


@torch.no_grad()
def filled(new: _Module, old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> _Module:
    """*new* holding *weight* and *bias*, with the train/eval mode and frozen parameters of *old*."""
    new.weight.copy_(weight)  # type: ignore[operator]
    if bias is not None and getattr(new, "bias", None) is not None:
        new.bias.copy_(bias)  # type: ignore[operator]
    for name, param in new.named_parameters(recurse=False):
        before = getattr(old, name, None)
        if isinstance(before, torch.Tensor):
            param.requires_grad_(before.requires_grad)
    new.train(old.training)
    return new


def new_linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear like *old* (device, dtype, requires_grad) holding *weight* and *bias*."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    return filled(layer, old, weight, bias)


def new_conv(old: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A Conv2d like *old* (stride, padding, ...) holding *weight* and *bias*."""
    conv = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        bias=bias is not None,
        padding_mode=old.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    return filled(conv, old, weight, bias)


def new_conv1d(old: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A transformers ``Conv1D`` (GPT-2; weight ``[in, out]``) like *old* holding *weight* and *bias*."""
    layer = type(old)(weight.shape[1], weight.shape[0]).to(device=weight.device, dtype=weight.dtype)
    return filled(layer, old, weight, bias)


def new_batch_norm(old: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> nn.Module:
    """A batch norm like *old* for the channels in *keep* (bool), statistics included."""
    bn = type(old)(int(keep.sum()), eps=old.eps, momentum=old.momentum, affine=old.affine,
                   track_running_stats=old.track_running_stats)  # fmt: skip
    bn.to(device=keep.device)
    with torch.no_grad():
        if old.affine:
            bn.weight = nn.Parameter(old.weight[keep].clone(), requires_grad=old.weight.requires_grad)
            bn.bias = nn.Parameter(old.bias[keep].clone(), requires_grad=old.bias.requires_grad)
        if old.running_mean is not None and old.running_var is not None:  # track_running_stats
            bn.running_mean = old.running_mean[keep].clone()
            bn.running_var = old.running_var[keep].clone()
            if old.num_batches_tracked is not None:
                bn.num_batches_tracked = old.num_batches_tracked.clone()
    bn.train(old.training)
    return bn


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule of *root* called *name* (``"layers.0.mlp.down_proj"``) by *module*."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)
