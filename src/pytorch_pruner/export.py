"""Finishing a pruned model: bake the zeros in, and save/load it in a compressed sparse form.

* :func:`squash` (alias :func:`remove`) applies the masks once more and checks the model is plain:
  pytorch-pruner never adds hooks, parametrizations, parameters or buffers, so what is left is the
  same ``nn.Module`` with exact zeros where the masks say.
* :func:`save_sparse` writes a `safetensors <https://huggingface.co/docs/safetensors>`_ file in
  which every pruned weight is stored as a packed bitmask (8 mask bits per byte, most significant
  bit first, in the weight's own row-major layout) plus the values of the kept positions; every
  other tensor is stored dense. The file's metadata holds the config YAML, the sparsity ratios,
  the per-layer report (pattern, target, achieved sparsity) and a SHA-256 of all the rest (every
  tensor's name, dtype, shape and bytes, and the other metadata), checked at load, so that a
  changed byte is an error and not a changed weight. :func:`load_sparse` rebuilds dense tensors
  from it.
* :func:`save_pretrained_sparse` / :func:`load_pretrained_sparse` do the same for a transformers
  model folder: ``config.json`` next to ``model.sparse.safetensors``.

Every file is written atomically (:func:`~pytorch_pruner.fileio.atomic_write`): a failed or killed
save leaves the previous file whole. A missing, truncated, altered or damaged file raises
:class:`~pytorch_pruner.StateError` naming the file and what is wrong with it.

Pruned positions are restored as ``+0.0``; everything else round-trips bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checkpoint import check_model_state
from .errors import StateError, install_hint
from .fileio import atomic_write, atomic_write_text
from .targets import unwrap_model

if TYPE_CHECKING:
    from .pruning import Pruning
    from .report import SparsityReport

__all__ = [
    "SPARSE_FILE",
    "SPARSE_FORMAT",
    "SparseFile",
    "build_transformers_model",
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

#: Value of the ``format`` metadata entry of a sparse file (``/2``: with a ``sha256`` entry;
#: ``/1`` files, without it, are still read).
SPARSE_FORMAT = "pytorch-pruner-sparse/2"
_OLD_FORMAT = "pytorch-pruner-sparse/1"
#: File name of the weights inside a folder written by :func:`save_pretrained_sparse`.
SPARSE_FILE = "model.sparse.safetensors"
_MASK, _VALUES = ".__mask__", ".__values__"


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
    pruning.require_started("squash")
    pruning._follow_weights()  # a model moved since the last hook (e.g. model.cpu() to export): masks go with it
    from torch.nn.utils import parametrize

    for pruner in pruning.pruners:
        for layer in pruner.layers:
            module = layer.target.module
            if parametrize.is_parametrized(module, "weight"):
                # someone else's parametrization: keep what the model computes now, then drop it
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        pruner.refresh_masks()
        pruner.apply_masks()
        pruner.criterion.remove_hooks()
    model = pruning.model
    if model is None:  # unreachable once started; keeps the return type honest
        raise StateError("the Pruning has no model")
    return model


#: Same as :func:`squash` (the name ``torch.nn.utils.prune.remove`` users look for).
remove = squash


def _whole(t: torch.Tensor) -> torch.Tensor:
    """*t*, or the whole tensor gathered from every rank if it is a DTensor (a collective)."""
    from .distributed import is_dtensor

    return t.full_tensor() if is_dtensor(t) else t  # type: ignore[attr-defined]


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
        raise ImportError(
            f"saving sparse models needs the safetensors package; {install_hint('transformers', 'safetensors')}"
        ) from None
    return safetensors


def _content_sha256(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 of a sparse file's content: each tensor's name, dtype, shape and bytes (by name), and
    the metadata other than ``sha256``, so that it can be recomputed from what was read."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(json.dumps([key, str(tensor.dtype), list(tensor.shape)]).encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
    digest.update(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class SparseFile:
    """What a sparse file holds, besides the tensors.

    Attributes:
        path: where it was read from.
        config: the pruning config (YAML text, seed layout).
        report: the per-layer sparsity report at save time.
        masks: keep-masks (bool, weight shape) of the pruned weights, by state_dict key.
    """

    path: Path
    config: str
    report: SparsityReport
    masks: dict[str, torch.Tensor]


def save_sparse(path: str | os.PathLike[str], model: nn.Module, pruning: Pruning) -> Path:
    """Write *model* to a safetensors file with its pruned weights compressed.

    Each pruned weight is stored as a packed bitmask plus the values at kept positions; all other
    tensors of ``model.state_dict()`` are stored dense (tensors shared by several keys once).

    Args:
        path: the ``.safetensors`` file to write.
        model: the pruned model (normally ``pruning.model``).
        pruning: the :class:`~pytorch_pruner.Pruning` that pruned it (masks, config, report).

    Under FSDP2 it is a collective: call it on every rank; the sharded weights and masks are
    gathered (``full_tensor()``) and rank 0 alone writes the whole model (the file is the same as
    one process would write for the gathered weights).

    Returns:
        The path written.

    Raises:
        StateError: *pruning* was not started, or prunes layers *model* does not have.
        ImportError: safetensors is not installed.
    """
    from .config import dump_config
    from .distributed import is_dtensor

    st = _safetensors()
    masks = {name: _whole(mask) for name, mask in pruning.masks().items()}
    # Keys as in the plain model (no `_orig_mod.` / `module.`), so the file loads into an unwrapped
    # model; parameters themselves (keep_vars) so that a pruned weight is found by identity.
    state = unwrap_model(model).state_dict(keep_vars=True)
    keys_of: dict[int, list[str]] = {}
    for key, value in state.items():
        keys_of.setdefault(id(value), []).append(key)
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    aliases: dict[str, str] = {}
    # tensors shared by several keys (tied weights) are stored once: safetensors refuses shared memory
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}

    def ident(t: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        if is_dtensor(t):  # FSDP2: a rank's shard may be empty (no storage); tied weights share the parameter
            return (id(t), tuple(t.shape), tuple(t.stride()))
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))

    for pruner in pruning.pruners:
        for layer in pruner.layers:
            keys = keys_of.get(id(layer.target.param if layer.target.shard is not None else layer.target.weight))
            if not keys:
                raise StateError(
                    f"the pruning prunes {layer.name!r}, whose weight is not a tensor of the model given; "
                    "pass the model the Pruning was started on (pruning.model)"
                )
            key = keys[0]  # the first key; the others (a tie, e.g. to embeddings) become aliases below
            weight, mask = _whole(state[key].detach()).to("cpu"), masks[layer.name].to("cpu")
            tensors[key + _MASK] = pack_bits(mask)
            tensors[key + _VALUES] = weight[mask].contiguous()
            sparse[key] = {"shape": list(weight.shape)}
            seen[ident(state[key])] = key
    for key, value in state.items():
        if key in sparse:
            continue
        if value.numel() and ident(value) in seen:
            aliases[key] = seen[ident(value)]
            continue
        seen[ident(value)] = key
        tensors[key] = _whole(value.detach()).to("cpu").contiguous().clone()
    report = pruning.report()
    sharded = any(layer.target.shard is not None for p in pruning.pruners for layer in p.layers)
    path = Path(path)
    if sharded and torch.distributed.get_rank() != 0:  # FSDP2: rank 0 writes the gathered model
        return path
    metadata = {
        "format": SPARSE_FORMAT,
        "config": dump_config(pruning.config),
        "ratios": json.dumps(report.ratios._asdict()),
        "report": report.to_json(),
        "sparse": json.dumps(sparse),
        "aliases": json.dumps(aliases),
    }
    metadata["sha256"] = _content_sha256(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: st.torch.save_file(tensors, str(tmp), metadata=metadata))
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
        raise StateError(f"sparse model file {str(path)!r} not found; check the path (a file written by save_sparse)")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # safetensors raises its own error types for damaged headers/data
        raise StateError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt): {err}") from None
    name = repr(str(path))
    if meta.get("format") not in (SPARSE_FORMAT, _OLD_FORMAT):
        raise StateError(
            f"{name} is not a pytorch-pruner sparse file (format {meta.get('format')!r}, "
            f"expected {SPARSE_FORMAT!r}); write it with save_sparse"
        )
    if meta["format"] == SPARSE_FORMAT:
        if _content_sha256(raw, meta) != meta.get("sha256"):
            raise StateError(
                f"{name} is corrupt: its content does not match the SHA-256 stored when it was written (the file "
                "changed on disk or in transfer); save the model again or copy the file again"
            )
    else:
        warnings.warn(f"{name} is a {_OLD_FORMAT} file, written without a checksum: it cannot be checked", stacklevel=2)
    try:
        sparse = json.loads(meta["sparse"])
        aliases = json.loads(meta["aliases"])
        report = SparsityReport.from_dict(json.loads(meta["report"]))
        config = meta["config"]
        if not isinstance(sparse, dict) or not isinstance(aliases, dict) or not isinstance(config, str):
            raise TypeError("the 'sparse' and 'aliases' entries must be JSON objects and 'config' a string")
        state = {key: value for key, value in raw.items() if not key.endswith((_MASK, _VALUES))}
        masks: dict[str, torch.Tensor] = {}
        for key, info in sparse.items():
            shape = tuple(int(d) for d in info["shape"])
            mask = unpack_bits(raw[key + _MASK], shape)
            values = raw[key + _VALUES]
            if values.dim() != 1 or values.numel() != int(mask.sum()):
                raise ValueError(f"{key}: {values.numel()} kept values for a mask that keeps {int(mask.sum())}")
            dense = torch.zeros(shape, dtype=values.dtype)
            dense[mask] = values
            state[key], masks[key] = dense, mask
        for key, source in aliases.items():
            state[key] = state[source]
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError, OverflowError) as err:
        raise StateError(
            f"{name} is a damaged sparse file: {type(err).__name__}: {err}; save the model again"
        ) from None
    return state, SparseFile(path, config, report, masks)


def load_sparse(path: str | os.PathLike[str], model: nn.Module) -> SparseFile:
    """Load a file written by :func:`save_sparse` into *model* (same architecture).

    Nothing in *model* changes unless the whole file fits it. *model* may be wrapped
    (``torch.compile``, DDP): the file holds the plain model's keys.

    Returns:
        The :class:`SparseFile` description (masks, config, report).

    Raises:
        StateError: the file is missing, damaged, not a sparse file, or from another model.
    """
    state, info = read_sparse(path)
    plain = unwrap_model(model)
    check_model_state(plain, state, repr(str(path)))
    plain.load_state_dict(state, strict=True)
    return info


def save_pretrained_sparse(model: nn.Module, folder: str | os.PathLike[str], pruning: Pruning) -> Path:
    """Write a transformers model to *folder*: ``config.json`` and a sparse ``model.sparse.safetensors``.

    The weights are written first, so a failure leaves no ``config.json`` that would pass the
    folder off as complete. Both files are written atomically: a failed save leaves the old ones
    whole.

    Args:
        model: a transformers ``PreTrainedModel`` (anything with ``.config.save_pretrained``),
            wrapped or not.
        folder: created if missing.
        pruning: the :class:`~pytorch_pruner.Pruning` that pruned *model*.

    Returns:
        The folder.

    Raises:
        TypeError: *model* has no transformers config.
        StateError: *pruning* was not started, or prunes layers *model* does not have.
    """
    plain = unwrap_model(model)
    config = getattr(plain, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(
            f"{type(plain).__name__} has no transformers config to save; use save_sparse(path, model, pruning)"
        )
    folder = Path(folder)
    save_sparse(folder / SPARSE_FILE, plain, pruning)
    config = copy.deepcopy(config)  # never mutate the user's config
    config.architectures = [type(plain).__name__]
    # what config.save_pretrained writes, but atomically: a failed write keeps the old config.json
    atomic_write_text(folder / "config.json", config.to_json_string(use_diff=True))
    return folder


def build_transformers_model(folder: str | os.PathLike[str], model_class: Any = None) -> nn.Module:
    """A transformers model built, with random weights, from the ``config.json`` in *folder*.

    The class is *model_class* when given, else the config's first ``architectures`` entry, else
    ``AutoModel``. Nothing is downloaded.

    Raises:
        ImportError: transformers is not installed.
    """
    try:
        import transformers
    except ImportError:
        raise ImportError(
            f"building a transformers model needs transformers; {install_hint('transformers', 'transformers')}"
        ) from None
    config = transformers.AutoConfig.from_pretrained(str(folder))
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, archs[0], None) if archs else None
    return model_class(config) if model_class is not None else transformers.AutoModel.from_config(config)


def load_pretrained_sparse(folder: str | os.PathLike[str], model_class: Any = None) -> nn.Module:
    """Rebuild a transformers model saved by :func:`save_pretrained_sparse`.

    The architecture comes from ``config.json`` (see :func:`build_transformers_model`); the
    weights, sparsity included, from the sparse file.

    Raises:
        StateError: the folder lacks ``config.json`` or the sparse file, either is damaged, or they
            do not fit; the message names the file.
        ImportError: transformers is not installed.
    """
    folder = Path(folder)
    for needed in ("config.json", SPARSE_FILE):
        if not (folder / needed).is_file():
            raise StateError(f"{str(folder)!r} has no {needed}; expected a folder written by save_pretrained_sparse")
    state, _ = read_sparse(folder / SPARSE_FILE)  # checked (and refused) before any model is built
    config_file = repr(str(folder / "config.json"))
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise StateError(
            f"{config_file} is damaged (not readable JSON: {type(err).__name__}: {err}); save the model again"
        ) from None
    try:
        model = build_transformers_model(folder, model_class)
    except ImportError:
        raise
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, TypeError, ... on bad configs
        raise StateError(
            f"{config_file} does not describe a model transformers can build ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); save the model again with save_pretrained_sparse"
        ) from None
    plain = unwrap_model(model)
    check_model_state(plain, state, repr(str(folder / SPARSE_FILE)))
    plain.load_state_dict(state, strict=True)
    return model
