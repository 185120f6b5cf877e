"""Block-by-block calibration: find a model's blocks, capture the inputs of the first, run one.

A *block* is one transformer layer, found from the model's layer list (``model.layers`` of
Llama-style decoders, ``transformer.h`` of GPT-2, ``encoder.layer`` of BERT, ...). The inputs of
block 0 are captured by a forward pre-hook that records them and stops the forward; after that,
each block runs on its own from the cached inputs, so memory holds one block's activations.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PruningError
from ..targets import unwrap_model

__all__ = [
    "BlockInputs",
    "Blocks",
    "capture_inputs",
    "find_blocks",
    "hidden_of",
    "rows_of",
    "run_batch",
    "run_block",
    "sub_batch_rows",
    "sub_batches",
    "with_hidden",
]

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


class _Stop(BaseException):
    """Raised by the capture hook to end the forward at block 0 (a BaseException, so that a model's
    own ``except Exception`` around its blocks does not swallow it and run them all)."""


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
    for key in ("past_key_value", "past_key_values", "layer_past", "cache"):
        if out.get(key) is not None:
            out[key] = None
    if out.get("use_cache"):
        out["use_cache"] = False
    return out


def _share_repeats(call: BlockInputs, previous: list[torch.Tensor]) -> BlockInputs:
    """*call* with each tensor argument other than the hidden states that equals the one at the
    same place in the previous call replaced by that one (e.g. the rotary position embeddings,
    the same for every batch of one length: held once, not once per batch); *previous* becomes
    this call's."""
    seen: list[torch.Tensor] = []

    def share(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            i = len(seen)
            if i < len(previous):
                old = previous[i]
                same = old.shape == value.shape and old.dtype == value.dtype and old.device == value.device
                if same and old.stride() == value.stride() and torch.equal(old, value):
                    value = old
            seen.append(value)
            return value
        if isinstance(value, tuple | list):
            return type(value)(share(v) for v in value)
        if isinstance(value, dict):
            return {k: share(v) for k, v in value.items()}
        return value

    args, kwargs = call
    if args:
        out: BlockInputs = ((args[0], *share(args[1:])), share(kwargs))
    else:
        out = ((), {k: v if k == "hidden_states" else share(v) for k, v in kwargs.items()})
    previous[:] = seen
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
    previous: list[torch.Tensor] = []  # the last call's other tensor arguments, in order

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = (_to(tuple(args), device), _to(_clean_kwargs(kwargs), device))
        hidden = hidden_of(call)
        # an own, contiguous copy: the block outputs overwrite it in place later (see run_batch), and
        # it may be the caller's tensor (e.g. inputs_embeds) or a view
        call = with_hidden(call, hidden.to(device=hidden.device, memory_format=torch.contiguous_format, copy=True))
        cache.append(_share_repeats(call, previous))
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


def hidden_of(inputs: BlockInputs) -> torch.Tensor:
    """The hidden states of a block call: its first positional argument, or ``hidden_states=``."""
    args, kwargs = inputs
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise PruningError(
            "could not find the hidden states among a block's inputs (a tensor as the first positional argument "
            "or hidden_states=)"
        )
    return hidden


def sub_batch_rows(block: nn.Module, inputs: BlockInputs, tokens: int | None) -> int | None:
    """How many rows (sequences) of *inputs* to run through *block* at a time for at most *tokens*
    tokens per call (at least one row); None: the whole batch at once.

    Only transformers' layers are split: their hidden states are ``[batch, sequence, hidden]`` by
    convention, while other modules may put the sequence first (``nn.TransformerEncoderLayer``
    without ``batch_first``), where splitting dim 0 would cut sequences. The batch is also kept
    whole when a tensor argument of 2+ dims has a first dimension that is neither the batch size
    nor 1 (e.g. Bloom's ALiBi bias ``[batch * heads, 1, sequence]``): it can't be split by rows.
    """
    if tokens is None or not type(block).__module__.startswith("transformers."):
        return None
    hidden = hidden_of(inputs)
    if hidden.dim() < 2:
        return None
    batch = hidden.shape[0]
    rows = max(1, tokens // max(1, math.prod(hidden.shape[1:-1])))
    if rows >= batch:
        return None
    args, kwargs = inputs
    for value in _tensors((args[1:] if args else args, {k: v for k, v in kwargs.items() if k != "hidden_states"})):
        if value.dim() >= 2 and value.shape[0] not in (batch, 1):
            return None
    return rows


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _rows(value: Any, batch: int, start: int, stop: int) -> Any:
    """*value* with every tensor of 2+ dims whose first dimension is the batch cut to rows start:stop
    (tensors of one row broadcast, 1-D ones such as cache_position are per token: both kept)."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() >= 2 and value.shape[0] == batch else value
    if isinstance(value, tuple | list):
        return type(value)(_rows(v, batch, start, stop) for v in value)
    if isinstance(value, dict):
        return {k: _rows(v, batch, start, stop) for k, v in value.items()}
    return value


def rows_of(inputs: BlockInputs, start: int, stop: int) -> BlockInputs:
    """The block call of rows ``start:stop`` of *inputs* (a batch :func:`sub_batch_rows` splits)."""
    return _rows(inputs, hidden_of(inputs).shape[0], start, stop)


def _sub_batches(inputs: BlockInputs, rows: int | None) -> Iterator[tuple[int, int, BlockInputs]]:
    """``(start, stop, call)`` for each sub-batch of *rows* sequences of one block call (None: one, whole)."""
    batch = hidden_of(inputs).shape[0]
    step = rows or batch
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        yield start, stop, inputs if step == batch else _rows(inputs, batch, start, stop)


def sub_batches(inputs: BlockInputs, rows: int | None) -> Iterator[BlockInputs]:
    """The block calls of :func:`run_batch`: *inputs* cut into sub-batches of *rows* sequences
    (:func:`sub_batch_rows`; None: *inputs* whole)."""
    if rows is None:
        yield inputs
        return
    for _, _, call in _sub_batches(inputs, rows):
        yield call


def run_batch(block: nn.Module, inputs: BlockInputs, rows: int | None, *, into: torch.Tensor | None) -> BlockInputs:
    """Run *block* on one calibration batch, *rows* sequences at a time (None: all at once).

    With *into* (shaped like the hidden states: the hidden states themselves, or a new buffer) the
    block's output is written there sub-batch by sub-batch, and the call with it as the hidden
    states is returned. Rows already run are not read again, so writing over the inputs is safe and
    holds one sub-batch's output extra. A block whose output differs in shape or dtype from its
    input gets a new tensor instead. Without *into*: the block only runs (for its hooks).
    """
    if rows is None and into is None:
        block(*inputs[0], **inputs[1])
        return inputs
    outs: list[torch.Tensor] = []
    for start, stop, (args, kwargs) in _sub_batches(inputs, rows):
        out = block(*args, **kwargs)
        if into is None:
            continue
        out = block_output(out)
        if not outs and out.shape == into[start:stop].shape and out.dtype == into.dtype:
            into[start:stop].copy_(out)
        elif start == 0 or outs:
            outs.append(out)  # a block that changes the shape: collect (nothing was written over)
        else:  # only the first sub-batches kept the shape: no way to tell which rows are whose
            raise PruningError(
                f"a block returned hidden states of shape {tuple(out.shape)} for inputs of shape "
                f"{tuple(into[start:stop].shape)} after keeping the shape for earlier rows; pass "
                "sub_batch_tokens=None to run whole calibration batches"
            )
        del out
    if into is None:
        return inputs
    return with_hidden(inputs, torch.cat(outs) if len(outs) > 1 else outs[0] if outs else into)


def with_hidden(inputs: BlockInputs, hidden: torch.Tensor) -> BlockInputs:
    """The same call with new hidden states (the previous block's output)."""
    args, kwargs = inputs
    if args:
        return (hidden, *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    raise PruningError("could not find the hidden states among a block's inputs (no positional argument)")
