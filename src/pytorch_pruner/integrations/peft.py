"""Fine-tune a pruned model with 🤗 PEFT LoRA adapters and keep its zeros when they are merged.

Why a helper: a LoRA adapter adds ``ΔW = s · B · A`` to a frozen weight ``W`` (``s`` =
``lora_alpha / r``). ``B · A`` is a dense product of two small matrices, so ``W + ΔW`` has no zero
left: ``merge_and_unload()`` of a pruned model returns a dense one. Two functions keep the zeros:

* :func:`mask_lora_deltas_` (call it before training): each LoRA ``Linear`` then computes
  ``W x + (M ⊙ ΔW) x`` with ``M`` = the nonzero pattern of ``W``, so the adapters train only
  what the sparse model can hold and the merged model computes exactly what was trained. It costs
  one ``ΔW`` (the size of ``W``) per adapted layer and forward, transient.
* :func:`merge_and_keep_sparsity`: merges (``merge_and_unload``) and multiplies each merged
  weight by its mask again. After :func:`mask_lora_deltas_` nothing is lost; after plain LoRA
  training the delta's entries at pruned positions are dropped, and the report says how much of
  each layer's delta that was (the merged model then differs from the adapter model by that much).

Example::

    from peft import LoraConfig, get_peft_model
    from pytorch_pruner import prune_oneshot_
    from pytorch_pruner.integrations.peft import mask_lora_deltas_, merge_and_keep_sparsity

    prune_oneshot_(model, "examples/llama_sparsegpt_2in4.yaml", calibration)
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=["q_proj", "v_proj"]))
    mask_lora_deltas_(peft_model)           # adapters learn only where weights are kept
    ...train peft_model...
    model, report = merge_and_keep_sparsity(peft_model)
    print(report)                            # zeros kept per layer; dropped delta share 0

Only vanilla LoRA on ``nn.Linear`` layers is handled (not DoRA or other variants, not
``fan_in_fan_out`` Conv1D layers, not adapters of embeddings): those raise a
:class:`~pytorch_pruner.PruningError` rather than merge silently wrong.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PruningError
from . import missing_extra

try:
    from peft.tuners.lora import LoraLayer
except ImportError as err:  # pragma: no cover - exercised without peft only
    raise missing_extra("peft", "peft", err) from err

__all__ = ["LoraMergeReport", "lora_masks", "mask_lora_deltas_", "merge_and_keep_sparsity"]


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """``(name of the adapted layer, LoRA layer)``, names as in the merged model (PEFT's
    ``base_model.model.`` prefix removed)."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            short = name.removeprefix("base_model.model.")
            yield short, module


def _check_layer(name: str, layer: Any) -> None:
    base = layer.get_base_layer()
    if not isinstance(base, nn.Linear):
        raise PruningError(
            f"{name}: a LoRA adapter on {type(base).__name__}; only nn.Linear layers are handled here "
            "(leave it out of target_modules)"
        )
    if getattr(layer, "fan_in_fan_out", False):
        raise PruningError(f"{name}: fan_in_fan_out LoRA layers (Conv1D) are not handled; use an nn.Linear model")
    variants = getattr(layer, "lora_variant", {})
    if variants:
        raise PruningError(
            f"{name}: LoRA variant {sorted(variants)} (e.g. DoRA) is not handled; use plain LoRA (use_dora=False)"
        )


def lora_masks(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The nonzero pattern of every LoRA-adapted weight (bool, ``True`` = kept), by layer name.

    Raises:
        PruningError: the model has no LoRA layer, an adapter is already merged, or one is of a
            kind not handled (see the module docstring).
    """
    masks = {}
    for name, layer in _lora_layers(peft_model):
        _check_layer(name, layer)
        if layer.merged:
            raise PruningError(
                f"{name}: its adapter is already merged, so its zeros are gone; take the masks before merging "
                "(or unmerge first)"
            )
        masks[name] = layer.get_base_layer().weight.detach() != 0
    if not masks:
        raise PruningError(
            "the model has no LoRA layer; wrap it with peft.get_peft_model(model, LoraConfig(...)) first"
        )
    return masks


def _checked_masks(peft_model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    found = lora_masks(peft_model)
    if masks is None:
        return found
    missing = sorted(set(found) - set(masks))
    if missing:
        raise PruningError(f"no mask for the LoRA layers {missing}; pass one per adapted layer (see lora_masks)")
    out = {}
    for name, ref in found.items():
        mask = masks[name]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != ref.shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise PruningError(f"mask of {name}: expected a bool tensor of shape {tuple(ref.shape)}, got {got}")
        out[name] = mask.to(ref.device)
    return out


def _masked_forward(layer: Any, mask: torch.Tensor, original: Callable[..., Any]) -> Callable[..., Any]:
    """A LoRA layer's forward whose delta is ``mask ⊙ ΔW``."""

    def forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            return original(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a, b = self.lora_A[name], self.lora_B[name]
            xa = self._cast_input_dtype(x, a.weight.dtype)
            delta = (b.weight @ a.weight) * self.scaling[name]
            delta = delta * mask.to(delta.device)
            bias = b.bias * self.scaling[name] if getattr(b, "bias", None) is not None else None
            result = result + F.linear(self.lora_dropout[name](xa), delta, bias).to(result.dtype)
        return result

    return types.MethodType(forward, layer)


class _Handle:
    """Undoes :func:`mask_lora_deltas_` (``remove()``)."""

    def __init__(self, layers: list[Any]) -> None:
        self._layers = layers

    def remove(self) -> None:
        for layer in self._layers:
            layer.__dict__.pop("forward", None)
            layer.__dict__.pop("_pytorch_pruner_mask", None)
        self._layers = []


def mask_lora_deltas_(peft_model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> _Handle:
    """Make each LoRA ``Linear`` of *peft_model* add ``mask ⊙ ΔW`` instead of ``ΔW`` (in place).

    Call it before training: the adapters then learn only the kept weights, and
    :func:`merge_and_keep_sparsity` gives a model that computes what the adapter model computed.

    Args:
        peft_model: a model wrapped by ``peft.get_peft_model`` (its base weights hold the zeros).
        masks: optional bool masks by layer name (``True`` = kept); default: :func:`lora_masks`.

    Returns:
        A handle whose ``remove()`` restores PEFT's own forward.

    Raises:
        PruningError: see :func:`lora_masks`; a mask is missing or of the wrong dtype/shape.
    """
    checked = _checked_masks(peft_model, masks)
    layers = []
    for name, layer in _lora_layers(peft_model):
        original = type(layer).forward.__get__(layer)
        layer.forward = _masked_forward(layer, checked[name], original)
        layer._pytorch_pruner_mask = checked[name]  # what the adapter model applies, for the merge report
        layers.append(layer)
    return _Handle(layers)


@dataclass
class LoraMergeReport:
    """What :func:`merge_and_keep_sparsity` did, per adapted layer."""

    #: layer name -> (zeros kept, share of the squared norm of the delta the adapter model added
    #: that fell on pruned positions and was dropped)
    layers: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def dropped(self) -> float:
        """The largest dropped share over the layers (0 after :func:`mask_lora_deltas_`)."""
        return max((d for _, d in self.layers.values()), default=0.0)

    def __str__(self) -> str:
        width = max((len(n) for n in self.layers), default=5)
        lines = [f"{'layer':<{width}}  zeros kept  delta dropped"]
        lines += [f"{n:<{width}}  {z:>10}  {d:>12.2%}" for n, (z, d) in self.layers.items()]
        return "\n".join(lines)


def merge_and_keep_sparsity(
    peft_model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
) -> tuple[nn.Module, LoraMergeReport]:
    """Merge the LoRA adapters into the weights (``merge_and_unload``), keeping every pruned weight 0.

    Args:
        peft_model: a model wrapped by ``peft.get_peft_model``, adapters not merged yet.
        masks: optional bool masks by layer name (``True`` = kept); default: each base weight's
            nonzero pattern, taken before merging.

    Returns:
        The merged plain model (PEFT's wrappers removed) and a :class:`LoraMergeReport`.

    Raises:
        PruningError: see :func:`lora_masks`; a mask is missing or of the wrong dtype/shape. The
            model is unchanged then.
    """
    checked = _checked_masks(peft_model, masks)
    dropped = {}
    with torch.no_grad():
        for name, layer in _lora_layers(peft_model):
            deltas = [layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A]
            if deltas:
                delta = torch.stack(deltas).sum(0)
                trained = layer.__dict__.get("_pytorch_pruner_mask")  # set by mask_lora_deltas_
                if trained is not None:
                    delta = delta * trained.to(delta.device)  # what the adapter model actually added
                total = float(delta.pow(2).sum())
                dropped[name] = float(delta[~checked[name]].pow(2).sum()) / total if total > 0 else 0.0
            else:
                dropped[name] = 0.0
    merged = peft_model.merge_and_unload()  # type: ignore[operator]
    report = LoraMergeReport()
    with torch.no_grad():
        modules = dict(merged.named_modules())
        for name, mask in checked.items():
            weight = modules[name].weight
            weight.mul_(mask.to(weight.dtype))
            report.layers[name] = (int((~mask).sum()), dropped[name])
    return merged, report
