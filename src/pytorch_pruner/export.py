"""Finishing a pruned model: bake the zeros in, and save/load it in a compressed sparse form.

* :func:`squash` (alias :func:`remove`) applies the masks once more and checks the model is plain:
  pytorch-pruner never adds hooks, parametrizations, parameters or buffers, so what is left is the
  same ``nn.Module`` with exact zeros where the masks say.
* :func:`save_sparse` writes a `safetensors <https://huggingface.co/docs/safetensors>`_ file in
  which every pruned weight is stored as a packed bitmask (8 mask bits per byte, most significant
  bit first, in the weight's own row-major layout) plus the values of the kept positions; every
  other tensor is stored dense. The file's metadata holds the config YAML, the sparsity ratios and
  the per-layer report (pattern, target, achieved sparsity). :func:`load_sparse` rebuilds dense
  tensors from it.
* :func:`save_pretrained_sparse` / :func:`load_pretrained_sparse` do the same for a transformers
  model folder: ``config.json`` next to ``model.sparse.safetensors``.

Pruned positions are restored as ``+0.0``; everything else round-trips bit for bit.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import StateError

if TYPE_CHECKING:
    from .pruning import Pruning
    from .report import SparsityReport

__all__ = [
    "SPARSE_FILE",
    "SPARSE_FORMAT",
    "SparseFile",
    "load_pretrained_sparse",
    "load_sparse",
    "pack_bits",
    "read_sparse",
    "remove",
    "save_pretrained_sparse",
    "save_sparse",
    "squash",
    "unpack_bits",
]

#: Value of the ``format`` metadata entry of a sparse file.
SPARSE_FORMAT = "pytorch-pruner-sparse/1"
#: File name of the weights inside a folder written by :func:`save_pretrained_sparse`.
SPARSE_FILE = "model.sparse.safetensors"
_MASK, _VALUES = ".__mask__", ".__values__"
_INSTALL = "install it with: pip install 'pytorch-pruner[transformers]'"


# -- squash ------------------------------------------------------------------------------------
def squash(pruning: Pruning) -> nn.Module:
    """Bake the zeros into ``pruning.model`` and return it as a plain model.

    The masks are applied once more, so weights that an optimizer moved without
    ``on_after_optimizer_step`` are zero again. The engine adds no hooks, parametrizations,
    parameters or buffers, so the model's ``state_dict`` keys are those it had before pruning;
    this is checked, and any ``torch.nn.utils.parametrize`` parametrization found on a pruned layer
    is removed with its current (masked) value kept.

    Args:
        pruning: a :class:`~pytorch_pruner.Pruning` after ``on_train_begin``.

    Returns:
        The model, with exact zeros at every pruned position.

    Raises:
        StateError: ``on_train_begin`` was not called yet.

    Example:
        >>> from pytorch_pruner import prune_
        >>> model = nn.Sequential(nn.Linear(8, 8))
        >>> plain = squash(prune_(model, pattern="1x1", target_sparsity=0.5))
        >>> plain is model, int((model[0].weight == 0).sum())
        (True, 32)
    """
    pruning._require_started("squash")
    from torch.nn.utils import parametrize

    for pruner in pruning.pruners:
        for layer in pruner.layers:
            module = layer.target.module
            if parametrize.is_parametrized(module, "weight"):
                # someone else's parametrization: keep what the model computes now, then drop it
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        pruner._set_masks()
        pruner.apply_masks()
    model = pruning.model
    if model is None:  # unreachable once started; keeps the return type honest
        raise StateError("the Pruning has no model")
    return model


#: Same as :func:`squash` (the name ``torch.nn.utils.prune.remove`` users look for).
remove = squash


# -- bit packing -------------------------------------------------------------------------------
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (flattened row-major) into uint8, 8 bits per byte, first bit = MSB.

    Example:
        >>> pack_bits(torch.tensor([True, False, True, True, False, False, False, False, True]))
        tensor([176, 128], dtype=torch.uint8)
    """
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = _SHIFTS.to(flat.device)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: uint8 bytes → bool tensor of *shape*.

    Raises:
        ValueError: *packed* holds too few bytes for *shape*.
    """
    numel = 1
    for d in shape:
        numel *= int(d)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (numel + 7) // 8:
        raise ValueError(f"a packed mask for shape {tuple(shape)} needs {(numel + 7) // 8} uint8 bytes")
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:numel].bool().reshape(shape)


# -- sparse safetensors ------------------------------------------------------------------------
def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(f"saving sparse models needs the safetensors package; {_INSTALL}") from None
    return safetensors


def _weight_key(layer_name: str) -> str:
    return f"{layer_name}.weight" if layer_name else "weight"


@dataclass(frozen=True)
class SparseFile:
    """What a sparse file holds, besides the tensors.

    Attributes:
        path: where it was read from.
        config: the pruning config (YAML text, seed layout).
        report: the per-layer sparsity report at save time.
        masks: keep-masks (bool, weight shape) of the pruned weights, by state_dict key.
        dense_bytes: bytes the tensors would take stored dense.
    """

    path: Path
    config: str
    report: SparsityReport
    masks: dict[str, torch.Tensor]
    dense_bytes: int


def save_sparse(path: str | os.PathLike[str], model: nn.Module, pruning: Pruning) -> Path:
    """Write *model* to a safetensors file with its pruned weights compressed.

    Each pruned weight is stored as a packed bitmask plus the values at kept positions; all other
    tensors of ``model.state_dict()`` are stored dense (tensors shared by several keys once).

    Args:
        path: the ``.safetensors`` file to write.
        model: the pruned model (normally ``pruning.model``).
        pruning: the :class:`~pytorch_pruner.Pruning` that pruned it (masks, config, report).

    Returns:
        The path written.

    Raises:
        StateError: *pruning* was not started, or prunes layers *model* does not have.
        ImportError: safetensors is not installed.
    """
    from .config import dump_config

    st = _safetensors()
    masks = pruning.masks()
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for name, mask in masks.items():
        key = _weight_key(name)
        if key not in state:
            raise StateError(f"the pruning prunes {name!r}, which the model has no weight for; pass pruning.model")
        weight = state[key].detach()
        mask_cpu = mask.to("cpu")
        tensors[key + _MASK] = pack_bits(mask_cpu)
        tensors[key + _VALUES] = weight.to("cpu")[mask_cpu].contiguous()
        sparse[key] = {"shape": list(weight.shape)}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for key, value in state.items():
        if key in sparse:
            continue
        ident = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if value.numel() and ident in seen:  # tied weights: safetensors refuses shared memory
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    report = pruning.report()
    metadata = {
        "format": SPARSE_FORMAT,
        "config": dump_config(pruning.config),
        "ratios": json.dumps(report.ratios._asdict()),
        "report": report.to_json(),
        "sparse": json.dumps(sparse),
        "aliases": json.dumps(aliases),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    st.torch.save_file(tensors, str(path), metadata=metadata)
    return path


def read_sparse(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], SparseFile]:
    """Read a file written by :func:`save_sparse`: dense tensors by state_dict key, and the rest.

    Raises:
        StateError: the file is missing, unreadable (truncated or corrupt) or not a sparse file.
    """
    from .report import SparsityReport

    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise StateError(f"sparse model file {str(path)!r} not found")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # safetensors raises its own error types for damaged headers/data
        raise StateError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt): {err}") from None
    if meta.get("format") != SPARSE_FORMAT:
        raise StateError(
            f"{str(path)!r} is not a pytorch-pruner sparse file (format {meta.get('format')!r}, "
            f"expected {SPARSE_FORMAT!r}); write it with save_sparse"
        )
    try:
        sparse = json.loads(meta["sparse"])
        aliases = json.loads(meta["aliases"])
        report = SparsityReport.from_dict(json.loads(meta["report"]))
        state: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        dense_bytes = 0
        for key, value in raw.items():
            if not key.endswith((_MASK, _VALUES)):
                state[key] = value
                dense_bytes += value.numel() * value.element_size()
        for key, info in sparse.items():
            shape = tuple(info["shape"])
            mask = unpack_bits(raw[key + _MASK], shape)
            values = raw[key + _VALUES]
            dense = torch.zeros(shape, dtype=values.dtype)
            dense[mask] = values
            state[key], masks[key] = dense, mask
            dense_bytes += dense.numel() * dense.element_size()
        for key, source in aliases.items():
            state[key] = state[source]
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise StateError(f"{str(path)!r} is a damaged sparse file: {type(err).__name__}: {err}") from None
    return state, SparseFile(path, meta["config"], report, masks, dense_bytes)


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [
        f"{k}: saved {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:5]}{' ...' if len(wrong) > 5 else ''}")
        raise StateError(
            f"{source} was saved from another model ({'; '.join(parts)}); build the same architecture first"
        )


def load_sparse(path: str | os.PathLike[str], model: nn.Module) -> SparseFile:
    """Load a file written by :func:`save_sparse` into *model* (same architecture).

    Nothing in *model* changes unless the whole file fits it.

    Returns:
        The :class:`SparseFile` description (masks, config, report).

    Raises:
        StateError: the file is missing, damaged, not a sparse file, or from another model.
    """
    state, info = read_sparse(path)
    _check_fits(model, state, repr(str(path)))
    model.load_state_dict(state, strict=True)
    return info


def save_pretrained_sparse(model: nn.Module, folder: str | os.PathLike[str], pruning: Pruning) -> Path:
    """Write a transformers model to *folder*: ``config.json`` and a sparse ``model.sparse.safetensors``.

    Args:
        model: a transformers ``PreTrainedModel`` (anything with ``.config.save_pretrained``).
        folder: created if missing.
        pruning: the :class:`~pytorch_pruner.Pruning` that pruned *model*.

    Returns:
        The folder.

    Raises:
        TypeError: *model* has no transformers config.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(
            f"{type(model).__name__} has no transformers config to save; use save_sparse(path, model, pruning)"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)  # never mutate the user's config
    config.architectures = [type(model).__name__]
    config.save_pretrained(str(folder))
    save_sparse(folder / SPARSE_FILE, model, pruning)
    return folder


def load_pretrained_sparse(folder: str | os.PathLike[str], model_class: Any = None) -> nn.Module:
    """Rebuild a transformers model saved by :func:`save_pretrained_sparse`.

    The architecture comes from ``config.json`` (its ``architectures`` entry, else ``AutoModel``)
    unless *model_class* is given; the weights, sparsity included, from the sparse file.

    Raises:
        StateError: the folder lacks ``config.json`` or the sparse file, or they do not fit.
        ImportError: transformers is not installed.
    """
    try:
        import transformers
    except ImportError:
        raise ImportError(f"loading a transformers model needs transformers; {_INSTALL}") from None
    folder = Path(folder)
    for needed in ("config.json", SPARSE_FILE):
        if not (folder / needed).is_file():
            raise StateError(f"{str(folder)!r} has no {needed}; expected a folder written by save_pretrained_sparse")
    config = transformers.AutoConfig.from_pretrained(str(folder))
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, archs[0], None) if archs else None
    model = model_class(config) if model_class is not None else transformers.AutoModel.from_config(config)
    load_sparse(folder / SPARSE_FILE, model)
    return model
