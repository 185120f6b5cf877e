"""Slimming plain modules: ``nn.Sequential`` CNNs / MLPs, and any module torch.fx can trace.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from .parts import (
    SlimmedLayer,
    SlimmingError,
    SlimReport,
    keep_at_least_one,
    new_batch_norm,
    new_conv,
    new_linear,
    set_submodule,
    zero_rows,
)

__all__ = ["Chain", "slim_sequential_", "slim_traced_"]


@dataclass
class Chain:
    """A producer layer whose output channels reach exactly one consumer layer, through per-channel
    modules: ``between`` holds (submodule name, or None for a function, module doing the same)."""

    producer: str
    between: list[tuple[str | None, nn.Module]]
    consumer: str


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


def _slim_chain(root: nn.Module, chain: Chain, exact: bool, report: SlimReport) -> None:
    """Slim the channels between one producer and its one consumer (see the module doc)."""
    # the caller pairs only _PRODUCERS
    producer = cast("nn.Conv2d | nn.Linear", root.get_submodule(chain.producer))
    consumer = cast("nn.Conv2d | nn.Linear", root.get_submodule(chain.consumer))
    between = [module for _, module in chain.between]
    where = f"{chain.producer} -> {chain.consumer}"
    problem = _between_problem(producer, between, consumer)
    if problem:
        report.skipped.append((where, problem))
        return
    out = producer.weight.shape[0]
    if consumer.weight.shape[1] % out:
        report.skipped.append(
            (where, f"{chain.consumer} takes {consumer.weight.shape[1]} inputs, not a multiple of {out}")
        )
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
                            f"channels {idx} of {chain.producer} output a nonzero constant that the padded "
                            f"{chain.consumer} sees only inside the image; kept (prune the consumer's input channels "
                            "instead, or slim with exact=False to fold them into its bias)",
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
            set_submodule(root, chain.producer, new_conv(producer, producer.weight[keep], kept_bias))
        else:
            set_submodule(root, chain.producer, new_linear(producer, producer.weight[keep], kept_bias))
        for name, norm in chain.between:
            if name is not None and isinstance(norm, _BATCH_NORMS):
                set_submodule(root, name, new_batch_norm(norm, keep))
        w_kept = w_in[:, keep, :].reshape(consumer.weight.shape[0], -1)
        if isinstance(consumer, nn.Conv2d):
            shape = (consumer.weight.shape[0], int(keep.sum()), *consumer.weight.shape[2:])
            set_submodule(root, chain.consumer, new_conv(consumer, w_kept.reshape(shape), new_bias))
        else:
            set_submodule(root, chain.consumer, new_linear(consumer, w_kept, new_bias))
    unit = "channels" if isinstance(producer, nn.Conv2d) else "neurons"
    report.slimmed.append(SlimmedLayer(chain.producer, unit, out, int(keep.sum())))


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
    children = list(model.named_children())
    producers = [i for i, (_, m) in enumerate(children) if isinstance(m, _PRODUCERS)]
    report = SlimReport()
    for p, c in itertools.pairwise(producers):
        chain = Chain(children[p][0], [(name, m) for name, m in children[p + 1 : c]], children[c][0])
        _slim_chain(model, chain, exact, report)
    return report


# -- any module torch.fx can trace ------------------------------------------------------------------
_ELEMENTWISE_FUNCTIONS = {torch.relu: nn.ReLU, F.relu: nn.ReLU, torch.tanh: nn.Tanh, F.tanh: nn.Tanh,
                          torch.sigmoid: nn.Sigmoid, F.sigmoid: nn.Sigmoid, F.silu: nn.SiLU, F.mish: nn.Mish,
                          F.hardswish: nn.Hardswish}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _function_equivalent(node: Any, source: Any) -> nn.Module | None:
    """The module that computes what a call_function / call_method *node* does to *source*, when it
    keeps channels apart (an elementwise activation, dropout, flatten from dim 1); else None."""
    args, kwargs = list(node.args), dict(node.kwargs)
    if not args or args[0] is not source:
        return None
    rest = args[1:]
    found: nn.Module | None = None
    if node.op == "call_function":
        if node.target in _ELEMENTWISE_FUNCTIONS and not rest and set(kwargs) <= {"inplace"}:
            found = _ELEMENTWISE_FUNCTIONS[node.target]()
        elif node.target is F.gelu and not rest and set(kwargs) <= {"approximate"}:
            found = nn.GELU(approximate=kwargs.get("approximate", "none"))
        elif node.target is F.dropout:
            found = nn.Dropout()  # the identity in eval mode, where slimming is exact
        elif node.target is torch.flatten and [*rest, kwargs.get("start_dim", 0)][0] == 1:
            found = nn.Flatten() if len(rest) <= 1 and kwargs.get("end_dim", -1) == -1 else None
    elif node.op == "call_method":
        if node.target in _ELEMENTWISE_METHODS and not rest and not kwargs:
            found = _ELEMENTWISE_METHODS[node.target]()
        elif node.target == "flatten" and rest == [1] and not kwargs:
            found = nn.Flatten()
        elif node.target in ("view", "reshape") and len(rest) == 2 and rest[1] == -1 and not kwargs:
            found = nn.Flatten()  # x.view(x.size(0), -1): the batch dimension kept, the rest flattened
    return found


def _describe(node: Any) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return {"output": "the model's output", "call_module": f"module {target}"}.get(node.op, f"{node.op} {target}")


def _chains(root: nn.Module, graph: Any) -> tuple[list[Chain], dict[str, str]]:
    """The producer -> consumer chains of *graph*, and for each Linear/Conv2d that heads none the
    reason its channels are coupled to something else."""
    modules = dict(root.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    chains, coupled = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _PRODUCERS):
            continue
        if calls[node.target] > 1:
            coupled[node.target] = f"it is called {calls[node.target]} times"
            continue
        between: list[tuple[str | None, nn.Module]] = []
        current = node
        while True:
            users = list(current.users)
            if len(users) != 1:
                coupled[node.target] = (
                    f"its channels reach {len(users)} operations ({', '.join(map(_describe, users))})"
                )
                break
            user = users[0]
            plain_call = user.args[:1] == (current,) and len(user.args) == 1 and not user.kwargs
            if user.op == "call_module" and plain_call and calls[user.target] == 1:
                module = modules[user.target]
                if isinstance(module, _PRODUCERS):
                    chains.append(Chain(node.target, between, user.target))
                    break
                between.append((user.target, module))
                current = user
                continue
            equivalent = _function_equivalent(user, current) if user.op != "call_module" else None
            if equivalent is None:
                coupled[node.target] = f"its channels reach {_describe(user)}, which slimming does not follow"
                break
            between.append((None, equivalent))
            current = user
    return chains, coupled


def slim_traced_(model: nn.Module, *, exact: bool = True) -> SlimReport:
    """Slim any module whose forward torch.fx can trace (a user's own MLP or CNN class), in place.

    The traced graph shows which layers' channels are coupled: a Conv2d / Linear whose output goes
    to exactly one other Conv2d / Linear, through per-channel modules or functions (batch norm,
    elementwise activations, dropout, pooling, flatten), is slimmed as in :func:`slim_sequential_`.
    Channels that reach anything else (a residual sum, a concatenation, two layers, the output)
    stay, and a layer with zero rows or columns there is listed in the report. The pairs are cut
    one after another, each exact, after the trace found them all.

    Raises:
        SlimmingError: torch.fx cannot trace the model (data-dependent control flow, ...), or the
            trace holds no Conv2d / Linear; the model is unchanged.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
        ...     def forward(self, x):
        ...         return self.b(torch.relu(self.a(x)))
        >>> net = Net()
        >>> with torch.no_grad():
        ...     net.b.weight[:, 2:] = 0
        >>> print(slim_traced_(net))
        a: neurons 8 -> 2
    """
    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:  # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
        raise SlimmingError(
            f"cannot slim {type(model).__name__}: torch.fx cannot trace its forward ({type(err).__name__}: "
            f"{str(err)[:300]}); slimming a plain module needs a forward without data-dependent control flow. "
            "Slim its traceable parts (slim_ on an nn.Sequential or a traceable submodule), or keep it dense; "
            "the model was left unchanged"
        ) from None
    found = [n for n in graph.nodes if n.op == "call_module" and isinstance(model.get_submodule(n.target), _PRODUCERS)]
    if not found:
        kinds = sorted({type(model.get_submodule(n.target)).__name__ for n in graph.nodes if n.op == "call_module"})
        raise SlimmingError(
            f"cannot slim {type(model).__name__}: its traced forward calls no Linear or Conv2d (it calls "
            f"{', '.join(kinds) or 'no module'}); slimming knows transformers model types (see SLIMMERS), "
            "nn.Sequential models and traceable modules of Linear / Conv2d layers; the model was left unchanged"
        )
    chains, coupled = _chains(model, graph)
    report = SlimReport()
    for name, reason in coupled.items():
        if bool(zero_rows(cast("torch.Tensor", model.get_submodule(name).weight)).any()):
            report.skipped.append((name, f"pruned output channels kept: {reason}"))
    consumers = {chain.consumer for chain in chains}
    for node in found:
        weight = cast("torch.Tensor", model.get_submodule(node.target).weight)
        cols = weight.reshape(weight.shape[0], weight.shape[1], -1)
        if node.target not in consumers and bool(cols.eq(0).all(dim=2).all(dim=0).any()):
            report.skipped.append(
                (node.target, "pruned input channels kept: they do not come from one Linear / Conv2d alone")
            )
    for chain in chains:
        _slim_chain(model, chain, exact, report)
    return report
