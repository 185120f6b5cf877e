"""Block-by-block calibration: find a model's blocks, capture the inputs of the first, run one.

A *block* is one transformer layer, found from the model's layer list (``model.layers`` of
Llama-style decoders, ``transformer.h`` of GPT-2, ``encoder.layer`` of BERT, ...). The inputs of
block 0 are captured by a forward pre-hook that records them and stops the forward; after that,
each block runs on its own from the cached inputs, so memory holds one block's activations.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PruningError
from ..targets import unwrap_model

__all__ = ["BlockInputs", "Blocks", "capture_inputs", "find_blocks", "run_block"]

#: Where known model families keep their list of transformer blocks (relative to the model).
BLOCK_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "transformer.h",
    "transformer.layers",
    "transformer.blocks",
    "gpt_neox.layers",
    "model.transformer.h",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "encoder.layer",
    "layers",
    "h",
    "blocks",
)


@dataclass
class Blocks:
    """The blocks of a model, by qualified name; ``whole`` when the model is one block."""

    names: list[str]
    modules: list[nn.Module]
    whole: bool = False


def find_blocks(model: nn.Module) -> Blocks:
    """The model's transformer blocks (a known layer list, else the largest list of same-class
    modules); the whole model as one block, with a warning, when there is none."""
    root = unwrap_model(model)
    for path in BLOCK_PATHS:
        try:
            found = root.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList | nn.Sequential) and len(found) > 0:
            return Blocks([f"{path}.{i}" for i in range(len(found))], list(found))
    best: tuple[int, str, nn.Module] | None = None
    for name, module in root.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size and (best is None or size > best[0]):
            best = (size, name, module)
    if best is not None:
        _, name, found = best
        return Blocks([f"{name}.{i}" for i in range(len(found))], list(found))
    warnings.warn(
        f"prune_oneshot_: found no list of transformer blocks in {type(root).__name__} (looked for "
        f"{', '.join(BLOCK_PATHS[:6])}, ... and any nn.ModuleList of same-class modules); calibrating the "
        "whole model as one block, which holds every layer's activations at once",
        stacklevel=3,
    )
    return Blocks([""], [root], whole=True)


class _Stop(Exception):
    """Raised by the capture hook to end the forward at block 0."""


#: One block call: (positional args, keyword args); the hidden states are args[0] or
#: kwargs["hidden_states"].
BlockInputs = tuple[tuple[Any, ...], dict[str, Any]]


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def check_batch(batch: Any, index: int) -> dict[str, torch.Tensor] | torch.Tensor:
    """A calibration batch as the model takes it; a clear error for anything else."""
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point() or batch.is_complex() or batch.dim() not in (1, 2):
            raise PruningError(
                f"calibration batch {index}: a tensor batch must hold token ids, integer of shape [batch, "
                f"sequence] or [sequence]; got {batch.dtype} of shape {tuple(batch.shape)}. Pass other inputs "
                "as a dict, e.g. {'input_ids': ..., 'attention_mask': ...}"
            )
        if batch.numel() == 0:
            raise PruningError(f"calibration batch {index} is empty (shape {tuple(batch.shape)})")
        return batch.unsqueeze(0) if batch.dim() == 1 else batch
    if isinstance(batch, Mapping):
        bad = [k for k, v in batch.items() if not isinstance(k, str)]
        if bad or not batch:
            raise PruningError(
                f"calibration batch {index}: a dict batch needs string keys (the model's argument names) "
                f"and at least one entry; got keys {list(batch)!r}"
            )
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.numel() == 0:
                raise PruningError(f"calibration batch {index}: {key!r} is empty (shape {tuple(value.shape)})")
        return dict(batch)
    raise PruningError(
        f"calibration batch {index} is a {type(batch).__name__}; allowed: a dict of tensors passed as "
        "model(**batch), or an integer tensor of input ids [batch, sequence]"
    )


def _call(model: nn.Module, batch: dict[str, torch.Tensor] | torch.Tensor) -> Any:
    return model(**batch) if isinstance(batch, dict) else model(batch)


def _clean_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # A KV cache would grow with every block run; calibration wants none.
    out = dict(kwargs)
    for key in ("past_key_value", "past_key_values", "layer_past"):
        if out.get(key) is not None:
            out[key] = None
    if out.get("use_cache"):
        out["use_cache"] = False
    return out


def capture_inputs(
    model: nn.Module,
    first: nn.Module,
    calibration: Iterable[Any],
    device: torch.device | None,
) -> list[BlockInputs]:
    """Run each calibration batch until block *first* and record its inputs (on *device*).

    Nothing of the model changes. Raises:
        PruningError: a batch is malformed, the iterable is empty, or the forward never reaches
        the block.
    """
    cache: list[BlockInputs] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache.append((_to(tuple(args), device), _to(_clean_kwargs(kwargs), device)))
        raise _Stop

    if isinstance(calibration, torch.Tensor | Mapping):
        raise PruningError(
            f"calibration is one {type(calibration).__name__}; pass an iterable of batches, e.g. [batch] or a "
            "DataLoader"
        )
    try:
        iterator = iter(calibration)
    except TypeError:
        raise PruningError(
            f"calibration must be an iterable of batches (dicts of tensors or input-id tensors), not "
            f"{type(calibration).__name__}"
        ) from None
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for index, raw in enumerate(iterator):
            batch = _to(check_batch(raw, index), device)
            before = len(cache)
            with contextlib.suppress(_Stop):
                _call(model, batch)
            if len(cache) == before:
                raise PruningError(
                    f"calibration batch {index}: the model's forward never reached its first block; the blocks "
                    "found are not on the forward path"
                )
    finally:
        handle.remove()
    if not cache:
        raise PruningError("calibration is empty: give at least one batch (e.g. 128 sequences of 2048 tokens)")
    return cache


def block_output(output: Any) -> torch.Tensor:
    """The hidden states out of a block call (a tensor, or the first item of a tuple)."""
    hidden = output[0] if isinstance(output, tuple | list) else output
    if not isinstance(hidden, torch.Tensor):
        raise PruningError(f"a block returned {type(hidden).__name__}, not a tensor of hidden states")
    return hidden


def run_block(block: nn.Module, inputs: BlockInputs) -> torch.Tensor:
    args, kwargs = inputs
    return block_output(block(*args, **kwargs))


def with_hidden(inputs: BlockInputs, hidden: torch.Tensor) -> BlockInputs:
    """The same call with new hidden states (the previous block's output)."""
    args, kwargs = inputs
    if args:
        return (hidden, *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    raise PruningError("could not find the hidden states among a block's inputs (no positional argument)")
