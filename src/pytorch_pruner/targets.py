"""Which layers a pruner works on, and the 2-D view of their weights.

The 2-D view is ``[output channels, input features]``:

* ``Linear`` ``[out, in]`` as is;
* ``Conv1d/2d/3d`` ``[O, C, *k]`` → ``[O, *k, C]`` → ``[O, prod(k) * C]`` (input channel fastest,
  so an ``M``-wide block spans ``M`` input channels at one kernel position);
* transformers' ``Conv1D`` (GPT-2) stores ``[in, out]``: transposed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "LAYER_KINDS",
    "Target",
    "WeightChecker",
    "find_targets",
    "layer_kind",
    "prunable_layers",
    "unwrap_model",
    "weight_key",
]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t()


def _conv_to_2d(t: torch.Tensor) -> torch.Tensor:
    order = (0, *range(2, t.dim()), 1)
    return t.permute(order).reshape(t.shape[0], -1)


@dataclass(frozen=True)
class _Kind:
    to_2d: Callable[[torch.Tensor], torch.Tensor]
    #: whether ``to_2d`` is a contiguous view, so masks can be applied through it in place
    direct: bool


#: Supported layer class names → how their weight maps to 2-D.
LAYER_KINDS: dict[str, _Kind] = {
    "Linear": _Kind(_identity, True),
    "Conv1d": _Kind(_conv_to_2d, False),
    "Conv2d": _Kind(_conv_to_2d, False),
    "Conv3d": _Kind(_conv_to_2d, False),
    "Conv1D": _Kind(_transpose, False),  # transformers.pytorch_utils.Conv1D
}


def layer_kind(module: nn.Module, types: Iterable[str] = LAYER_KINDS) -> str | None:
    """The supported kind of *module* among *types*: its class name or that of a base class."""
    wanted = set(types)
    for cls in type(module).__mro__:
        if cls.__name__ in wanted and cls.__name__ in LAYER_KINDS:
            return cls.__name__
    return None


@dataclass(eq=False)
class Target:
    """One prunable layer: its qualified name, the module and how its weight maps to 2-D.

    Under FSDP2 (``shard`` set, see :class:`~pytorch_pruner.distributed.WeightShard`) ``weight``
    is this rank's rows of the sharded parameter, a plain tensor sharing its storage, and
    ``shape2d`` their 2-D shape; ``full_shape`` / ``full_shape2d`` / ``numel`` are the whole layer's.
    """

    name: str
    module: nn.Module
    kind: str
    #: this rank's shard of an FSDP2 (DTensor, dim-0 sharded) weight; None: the weight is whole here
    shard: Any = field(default=None, repr=False)

    @property
    def weight(self) -> torch.Tensor:
        weight = self.module.weight
        shard = self.shard
        if shard is not None:
            # two identity checks per call: FSDP2 swaps module.weight only inside forward/backward
            return shard.local if shard.current(weight) else self._reshard(weight)
        if not isinstance(weight, torch.Tensor):  # narrowed for type checkers; layers hold tensors
            raise TypeError(f"{self.name}.weight is not a tensor")
        return weight

    def _reshard(self, weight: Any) -> torch.Tensor:
        from .distributed import WeightShard, is_dtensor
        from .errors import PruningError

        if not is_dtensor(weight) or tuple(weight.shape) != tuple(self.shard.shape):
            raise PruningError(
                f"{self.name}.weight is a {type(weight).__name__} of shape {tuple(weight.shape)} now, not the "
                "sharded DTensor parameter FSDP2 holds between steps (it holds the whole weight only inside "
                "forward and backward): call the pruning hooks at step begin, before and after the optimizer "
                "step, not from inside forward or backward"
            )
        self.shard = WeightShard.of(weight)  # a new parameter or local tensor (to_empty, load_state_dict(assign))
        return self.shard.local

    @property
    def param(self) -> torch.Tensor | None:
        """The DTensor parameter of a sharded weight, whose ``.grad`` holds this rank's gradient rows."""
        if self.shard is None:
            return None
        self.weight  # noqa: B018 (refreshes the shard if the module holds a new parameter)
        return self.shard.param

    @property
    def full_shape(self) -> torch.Size:
        """The whole weight's shape (over every rank)."""
        return self.shard.shape if self.shard is not None else self.weight.shape

    def _shape2d(self, shape: Sequence[int]) -> tuple[int, int]:
        if self.kind == "Conv1D":
            return (shape[1], shape[0])
        return (shape[0], math.prod(shape[1:]))

    @property
    def shape2d(self) -> tuple[int, int]:
        """The 2-D shape of ``weight`` (this rank's rows under FSDP2)."""
        return self._shape2d(self.weight.shape)

    @property
    def full_shape2d(self) -> tuple[int, int]:
        """The 2-D shape of the whole weight (over every rank)."""
        return self._shape2d(self.full_shape)

    @property
    def numel(self) -> int:
        """Weights in the whole layer (over every rank)."""
        return math.prod(self.full_shape)

    @property
    def direct(self) -> bool:
        """True when the 2-D view shares memory with the weight (masks apply in place)."""
        return LAYER_KINDS[self.kind].direct and self.weight.is_contiguous()

    def to_2d(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the weight → its 2-D view (a copy for convolutions)."""
        return LAYER_KINDS[self.kind].to_2d(t)

    def from_2d(self, t2d: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_2d`: back to the weight's shape and layout."""
        shape = self.weight.shape
        if self.kind == "Linear":
            return t2d.reshape(shape)
        if self.kind == "Conv1D":
            return t2d.t().contiguous()
        permuted = (shape[0], *shape[2:], shape[1])
        order = (0, len(shape) - 1, *range(1, len(shape) - 1))
        return t2d.reshape(permuted).permute(order).contiguous()


#: Attribute under which ``torch.compile`` (``OptimizedModule``) keeps the module it wraps.
_COMPILE_ATTR = "_orig_mod"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under the wrappers that only hold it: ``torch.compile``'s ``OptimizedModule``
    (``_orig_mod``) and ``DistributedDataParallel`` / ``DataParallel`` (``module``).

    The wrappers share the inner module's parameters, so pruning the inner module prunes the
    model; layer names then read the same with and without the wrappers (``bert.encoder...``,
    not ``_orig_mod.module.bert.encoder...``), and one config fits every way of running.
    """
    while True:
        inner = getattr(model, _COMPILE_ATTR, None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _clean_name(name: str) -> str:
    # A submodule compiled on its own (model.encoder = torch.compile(model.encoder)) puts
    # `_orig_mod` in the middle of the name; drop it so regexes see the plain path.
    return ".".join(part for part in name.split(".") if part != _COMPILE_ATTR)


def prunable_layers(model: nn.Module, types: Iterable[str] = LAYER_KINDS) -> list[Target]:
    """All modules of *model* of a kind in *types* that carry a weight, in module order.

    Names are relative to :func:`unwrap_model` of *model*, without ``_orig_mod`` parts.
    """
    types = tuple(types)
    found = []
    for raw_name, module in unwrap_model(model).named_modules():
        name = _clean_name(raw_name)
        kind = layer_kind(module, types)
        weight = getattr(module, "weight", None)
        if kind is not None and isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            found.append(Target(name, module, kind))
    return found


def find_targets(
    model: nn.Module,
    types: Sequence[str],
    names: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[Target]:
    """Layers of *model* whose type is in *types*, whose name matches one of *names* (all when
    empty) and none of *exclude*. Patterns are regexes matched with ``re.search``."""
    include = [re.compile(p) for p in names]
    drop = [re.compile(p) for p in exclude]
    return [
        t
        for t in prunable_layers(model, types)
        if (not include or any(p.search(t.name) for p in include)) and not any(p.search(t.name) for p in drop)
    ]


# -- checks of each selected weight (SPEC §10) -------------------------------------------------
def _tied_weights(model: nn.Module) -> dict[int, str]:
    """``id(weight)`` → why it must stay dense unless named explicitly: weights of an
    ``nn.Embedding`` (a layer sharing one is a tied LM head) and the output embeddings."""
    tied: dict[int, str] = {}
    inner = unwrap_model(model)
    for name, module in inner.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding) and isinstance(weight, torch.Tensor):
            tied[id(weight)] = f"shares its weight with the embedding {_clean_name(name) or type(module).__name__}"
    get_output = getattr(inner, "get_output_embeddings", None)
    if callable(get_output):
        try:
            output = get_output()
        except (NotImplementedError, AttributeError):  # transformers' base raises for models without one
            output = None
        weight = getattr(output, "weight", None) if isinstance(output, nn.Module) else None
        if isinstance(weight, torch.Tensor):
            tied.setdefault(id(weight), "is the model's output embeddings (get_output_embeddings(), the LM head)")
    return tied


def _is_parametrized(module: nn.Module) -> bool:
    return torch.nn.utils.parametrize.is_parametrized(module, "weight")


def weight_key(target: Target) -> int:
    """An identity for the tensor behind *target*'s weight, the same under every name sharing it."""
    if _is_parametrized(target.module):
        return id(target.module.parametrizations["weight"].original)  # type: ignore[union-attr, index]
    return id(target.module.weight)


class WeightChecker:
    """Checks every selected weight in ``on_train_begin`` (SPEC §10); one per model.

    Each target either passes or is returned with the reason it is left dense. Weights seen by an
    earlier call (an earlier pruner) are remembered, so a shared weight is pruned once.
    """

    def __init__(self, model: nn.Module) -> None:
        self._tied = _tied_weights(model)
        self._seen: dict[int, str] = {}

    def split(
        self, targets: Sequence[Target], *, needs_grad: bool, criterion: str, names: Sequence[str] = ()
    ) -> tuple[list[Target], list[tuple[str, str]]]:
        """``(targets to prune, [(name, reason left dense)])``.

        Args:
            targets: the layers a pruner selected.
            needs_grad: whether the pruner's criterion scores from gradients.
            criterion: its name, for the reasons.
            names: the pruner's ``names`` regexes: a tied or output-embedding layer they match is
                pruned (it was asked for explicitly).
        """
        include = [re.compile(p) for p in names]
        keep: list[Target] = []
        skipped: list[tuple[str, str]] = []
        for target in targets:
            reason = self._reason(target, needs_grad, criterion, include)
            if reason:
                skipped.append((target.name, reason))
            else:
                self._seen[weight_key(target)] = target.name
                keep.append(target)
        return keep, skipped

    def _reason(self, target: Target, needs_grad: bool, criterion: str, include: list[re.Pattern[str]]) -> str | None:
        module = target.module
        if _is_parametrized(module):
            kinds = [type(p).__name__ for p in module.parametrizations["weight"]]  # type: ignore[union-attr, index]
            return (
                f"parametrized weight ({', '.join(kinds)}): forward computes it from the stored tensor, so a "
                "mask on that tensor would not zero what forward uses; remove the parametrization "
                "(torch.nn.utils.parametrize.remove_parametrizations) to prune it"
            )
        weight = target.weight
        reason = _tensor_reason(weight) or self._sharing_reason(target, include)
        if reason:
            return reason
        if needs_grad and not weight.requires_grad:
            return (
                f"frozen (requires_grad=False): {criterion} scores from gradients, which a frozen weight does "
                "not get; use prune_type 'magnitude' for it, or unfreeze it"
            )
        return None

    def _sharing_reason(self, target: Target, include: list[re.Pattern[str]]) -> str | None:
        key = id(target.weight)
        if key in self._seen:
            return f"shares its weight with {self._seen[key]}, pruned there"
        if key in self._tied and not any(p.search(target.name) for p in include):
            return f"{self._tied[key]}; left dense: name it in a pruner's `names` to prune it"
        return None


def _tensor_reason(weight: torch.Tensor) -> str | None:
    if weight.numel() == 0:
        return f"empty weight (shape {tuple(weight.shape)}): nothing to prune"
    if weight.is_quantized or not weight.is_floating_point():
        return f"weight dtype {weight.dtype} is not floating point: integer and quantized weights are not pruned"
    return None
