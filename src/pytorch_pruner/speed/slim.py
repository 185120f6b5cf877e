"""Structured slimming: physically remove pruned neurons, channels and heads.

A pruned model still does every multiply, zeros included. After structured pruning (``1xchannel``,
``channelx1``, ``head:<head_dim>``) whole rows or columns are zero, and the layers can be rebuilt
smaller: a dense model with fewer neurons that computes *the same outputs* as the masked one, and is
faster on any hardware. A unit (a neuron, a conv channel, a head) is removed only where that is
exact:

* its *consumer* columns are zero (the next layer ignores it): it is dropped with its producer row;
* or its *producer* row is zero: the unit then outputs a constant (its bias through bias, batch
  norm and activation, computed in eval mode); a zero constant is dropped, a nonzero one is folded
  into the consumer's bias, which is exact for a Linear consumer and an unpadded conv. A padded
  conv sees the constant only inside the image (its border sees zeros), so there the unit is kept
  and reported, unless ``exact=False`` folds it anyway (exact in the interior, off at the border).

Every layer keeps at least one unit (a zero one when all could go), so shapes stay valid.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import PruningError
from ..targets import unwrap_model

__all__ = ["SlimReport", "SlimmedLayer", "SlimmingError", "slim_", "slim_sequential_"]


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
    """What :func:`slim_` removed, and what it could not slim with the reason."""

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


# -- building blocks shared with the BERT slimmer -------------------------------------------------
def zero_rows(weight: torch.Tensor) -> torch.Tensor:
    """Bool per output unit (dim 0): all its weights are zero."""
    return weight.reshape(weight.shape[0], -1).eq(0).all(dim=1)


def keep_at_least_one(keep: torch.Tensor) -> torch.Tensor:
    """*keep* with unit 0 kept when nothing would be: a layer of width 0 breaks most kernels."""
    if not bool(keep.any()):
        keep = keep.clone()
        keep[0] = True
    return keep


def new_linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear like *old* (device, dtype, requires_grad) holding *weight* and *bias*."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    return _filled(layer, old, weight, bias)


_Layer = TypeVar("_Layer", nn.Linear, nn.Conv2d)


@torch.no_grad()
def _filled(new: _Layer, old: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> _Layer:
    """*new* holding *weight* and *bias*, with the train/eval mode and frozen parameters of *old*."""
    new.weight.copy_(weight)
    if bias is not None and new.bias is not None:
        new.bias.copy_(bias)
    for name, param in new.named_parameters(recurse=False):
        before = getattr(old, name, None)
        if isinstance(before, torch.Tensor):
            param.requires_grad_(before.requires_grad)
    new.train(old.training)
    return new


def _new_conv(old: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
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
    return _filled(conv, old, weight, bias)


def _new_batch_norm(old: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> nn.Module:
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


# -- nn.Sequential CNNs and MLPs --------------------------------------------------------------------
_PRODUCERS = (nn.Conv2d, nn.Linear)
#: elementwise modules: a constant channel stays a constant (computed by running the module)
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardtanh,
    nn.ELU, nn.Mish, nn.Identity,
)  # fmt: skip
#: modules that map a spatially constant channel to the same constant (in eval mode)
_CONSTANT_PRESERVING = (nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _between_problem(producer: nn.Module, between: Sequence[nn.Module], consumer: nn.Module) -> str | None:
    """Why the channels between *producer* and *consumer* can't be slimmed, or None."""
    for layer in (producer, consumer):
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            return f"grouped convolution (groups={layer.groups}) ties channels together"
    for module in between:
        ok = (*_ELEMENTWISE, *_CONSTANT_PRESERVING, *_BATCH_NORMS, nn.AvgPool2d)
        if not isinstance(module, ok):
            return (
                f"{type(module).__name__} between them is not a per-channel module "
                "(supported: BatchNorm, elementwise activations, dropout, pooling, Flatten)"
            )
        if isinstance(module, nn.Flatten) and not (isinstance(producer, nn.Conv2d) and isinstance(consumer, nn.Linear)):
            return "Flatten is supported only between a Conv2d and a Linear"
    if isinstance(producer, nn.Linear) and isinstance(consumer, nn.Conv2d):
        return "a Linear feeding a Conv2d needs a reshape that slimming cannot follow"
    if (
        isinstance(producer, nn.Conv2d)
        and isinstance(consumer, nn.Linear)
        and not any(isinstance(m, nn.Flatten) for m in between)
    ):
        return "a Conv2d feeding a Linear needs a Flatten between them"
    return None


def _is_padded(conv: nn.Conv2d) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(int(x) != 0 for x in conv.padding)


def _channel_constant(producer: nn.Conv2d | nn.Linear, between: Sequence[nn.Module]) -> torch.Tensor | None:
    """What each output channel of *producer* would be after *between* if its weights were all
    zero (its bias through batch norm and activations, eval mode); None if some module between
    does not keep a constant channel constant (average pooling that counts padding)."""
    weight = producer.weight
    out = weight.shape[0]
    # in the weight's dtype and device: batch norm refuses a float32 input with bf16/fp16 statistics
    bias = producer.bias if producer.bias is not None else weight.new_zeros(out)
    value = bias.detach().reshape(1, out)
    for module in between:
        if isinstance(module, _BATCH_NORMS):
            mean = module.running_mean if module.track_running_stats else None
            var = module.running_var if module.track_running_stats else None
            if mean is None:
                return None  # batch statistics: the constant depends on the batch
            value = F.batch_norm(value, mean, var, module.weight, module.bias, False, 0.0, module.eps)
        elif isinstance(module, _ELEMENTWISE):
            value = module(value)
        elif isinstance(module, nn.AvgPool2d) and module.padding != 0 and module.count_include_pad:
            return None
    return value.reshape(out)


def _slim_pair(seq: nn.Sequential, p: int, c: int, names: list[str], exact: bool, report: SlimReport) -> None:
    # the caller pairs only _PRODUCERS
    producer, consumer = cast("nn.Conv2d | nn.Linear", seq[p]), cast("nn.Conv2d | nn.Linear", seq[c])
    between = [seq[i] for i in range(p + 1, c)]
    where = f"{names[p]} -> {names[c]}"
    problem = _between_problem(producer, between, consumer)
    if problem:
        report.skipped.append((where, problem))
        return
    out = producer.weight.shape[0]
    if consumer.weight.shape[1] % out:
        report.skipped.append((where, f"{names[c]} takes {consumer.weight.shape[1]} inputs, not a multiple of {out}"))
        return
    with torch.no_grad():
        # conv [O, C, kh*kw]; linear [O, C, S]: after Flatten each channel feeds S consecutive features
        w_in = consumer.weight.reshape(consumer.weight.shape[0], out, -1)
        ignored = w_in.eq(0).all(dim=2).all(dim=0)
        constant = zero_rows(producer.weight) & ~ignored
        folded = torch.zeros(out, dtype=torch.bool, device=ignored.device)
        value: torch.Tensor | None = None
        if bool(constant.any()):
            value = _channel_constant(producer, between)
            if value is None:
                report.skipped.append((where, "a module between them does not keep a constant channel constant"))
                constant.zero_()
            else:
                folded = constant & value.ne(0)
                padded = isinstance(consumer, nn.Conv2d) and _is_padded(consumer)
                if padded and bool(folded.any()) and exact:
                    idx = folded.nonzero().flatten().tolist()
                    report.skipped.append(
                        (
                            where,
                            f"channels {idx} of {names[p]} output a nonzero constant that the padded {names[c]} "
                            "sees only inside the image; kept (prune the consumer's input channels instead, "
                            "or slim with exact=False to fold them into its bias)",
                        )
                    )
                    constant &= ~folded
                    folded.zero_()
        keep = keep_at_least_one(~(ignored | constant))
        folded &= ~keep
        new_bias = consumer.bias
        if value is not None and bool(folded.any()):
            # the constant k_c times the weights it meets, summed over kernel positions / features
            shift = (w_in[:, folded, :].sum(dim=2) * value[folded]).sum(dim=1)
            new_bias = shift if new_bias is None else new_bias + shift
        if bool(keep.all()):
            return
        kept_bias = producer.bias[keep] if producer.bias is not None else None
        if isinstance(producer, nn.Conv2d):
            seq[p] = _new_conv(producer, producer.weight[keep], kept_bias)
        else:
            seq[p] = new_linear(producer, producer.weight[keep], kept_bias)
        for i in range(p + 1, c):
            norm = seq[i]
            if isinstance(norm, _BATCH_NORMS):
                seq[i] = _new_batch_norm(norm, keep)
        w_kept = w_in[:, keep, :].reshape(consumer.weight.shape[0], -1)
        if isinstance(consumer, nn.Conv2d):
            shape = (consumer.weight.shape[0], int(keep.sum()), *consumer.weight.shape[2:])
            seq[c] = _new_conv(consumer, w_kept.reshape(shape), new_bias)
        else:
            seq[c] = new_linear(consumer, w_kept, new_bias)
    report.slimmed.append(SlimmedLayer(names[p], "channels" if isinstance(producer, nn.Conv2d) else "neurons",
                                       out, int(keep.sum())))  # fmt: skip


def slim_sequential_(model: nn.Sequential, *, exact: bool = True) -> SlimReport:
    """Slim an ``nn.Sequential`` of Conv2d / Linear layers with BatchNorm, activations, dropout,
    pooling and Flatten between them, in place.

    Each output channel of a Conv2d or Linear that the next Conv2d / Linear ignores (zero input
    channel) or that is constant (zero filter) is removed, with its batch-norm entries; the last
    layer's outputs are the model's and stay. Outputs are equal in eval mode (batch norm uses its
    running statistics).

    Args:
        model: the sequential model, pruned (its pruned weights zero).
        exact: keep channels whose removal would change outputs at padded borders (see module doc).

    Returns:
        A :class:`SlimReport`; channels that could not be removed are listed with the reason.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():
        ...     net[2].weight[:, :6] = 0
        >>> print(slim_sequential_(net))
        0: neurons 8 -> 2
        >>> net[0]
        Linear(in_features=4, out_features=2, bias=True)
    """
    names = [name for name, _ in model.named_children()]
    producers = [i for i, m in enumerate(model) if isinstance(m, _PRODUCERS)]
    report = SlimReport()
    for p, c in itertools.pairwise(producers):
        _slim_pair(model, p, c, names, exact, report)
    return report


# -- entry point ----------------------------------------------------------------------------------
def slim_(model: nn.Module, *, exact: bool = True, uniform_ffn: bool = False) -> SlimReport:
    """Remove pruned units from *model* in place, keeping its outputs (see the module doc).

    Knows BERT-style encoders (any layer with ``attention.self.query/key/value``,
    ``attention.output.dense``, ``intermediate.dense``, ``output.dense``: BERT, RoBERTa, MiniLM, ...)
    and ``nn.Sequential`` CNNs / MLPs. Anything that could not be slimmed is listed in the report
    and in one warning.

    Args:
        model: the pruned model (pruned weights zero, e.g. after ``Pruning.on_train_end``); under a
            ``torch.compile`` or DDP wrapper, the module it holds is slimmed.
        exact: for CNNs, see :func:`slim_sequential_`.
        uniform_ffn: BERT only: keep the same FFN width in every layer (the widest), so that a
            plain ``from_pretrained`` can load the result when no head was removed.

    Returns:
        A :class:`SlimReport`.

    Raises:
        SlimmingError: the model is of no kind this function knows.

    Example:
        >>> slim_(nn.LSTM(4, 4))
        Traceback (most recent call last):
        ...
        pytorch_pruner.speed.slim.SlimmingError: cannot slim LSTM: ...
    """
    from .bert import find_bert_layers, slim_bert_

    # a torch.compile / DDP wrapper only holds the model: slim what it holds (the wrapper's compiled
    # graphs are for the old shapes; call the slimmed model, or compile it again)
    model = unwrap_model(model)
    if find_bert_layers(model):
        report = slim_bert_(model, uniform_ffn=uniform_ffn)
    elif isinstance(model, nn.Sequential):
        report = slim_sequential_(model, exact=exact)
    else:
        raise SlimmingError(
            f"cannot slim {type(model).__name__}: slimming knows BERT-style encoders (layers with "
            "attention.self.query/key/value, attention.output.dense, intermediate.dense, output.dense) and "
            "nn.Sequential models of Conv2d/Linear with BatchNorm, activations, pooling and Flatten between; "
            "call slim_sequential_ on an nn.Sequential part of your model, or keep it dense"
        )
    if report.skipped:
        details = "; ".join(f"{name}: {reason}" for name, reason in report.skipped)
        warnings.warn(f"slim_: some units were kept: {details}", stacklevel=2)
    return report
