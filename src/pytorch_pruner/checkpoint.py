"""Save and resume a pruning run: model, optimizer and :class:`~pytorch_pruner.Pruning` together.

A run resumed from a checkpoint continues bit for bit like the uninterrupted run: the pruning
state holds the optimizer-step count, the hook guards, the masks and the criterion's running
scores. Save between optimizer steps (after ``on_after_optimizer_step``)::

    save_checkpoint("ckpt.pt", model, optimizer, pruning, epoch=epoch)
    ...
    pruning = Pruning(config); pruning.on_train_begin(model)   # same config, same architecture
    extra = load_checkpoint("ckpt.pt", model, optimizer, pruning)

The file is written with plain :func:`torch.save` (to a temporary name, then renamed, so an
interrupted save never destroys the previous checkpoint) and read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import StateError
from .targets import unwrap_model

if TYPE_CHECKING:
    from .pruning import Pruning

__all__ = [
    "CHECKPOINT_FORMAT",
    "check_model_state",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "write_atomically",
]

#: Version of the checkpoint layout written by :func:`save_checkpoint`.
CHECKPOINT_FORMAT = 1
_MARK = "pytorch_pruner_checkpoint"


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    pruning: Pruning,
    **extra: Any,
) -> Path:
    """Write model, optimizer and pruning state (and *extra* values, e.g. ``epoch=3``) to *path*.

    The pruning report at this point is stored too, for ``pytorch-pruner report``.

    The model's state is that of the module under ``torch.compile`` / DDP wrappers (the keys read
    as in the plain model), so a checkpoint of a wrapped run loads into a plain model and back.

    Args:
        path: the file to write (parent folders are created).
        model: the model being pruned (wrapped or not).
        optimizer: its optimizer, or ``None``.
        pruning: the started :class:`~pytorch_pruner.Pruning`.
        **extra: anything else to keep (plain Python values and tensors, so the file stays
            loadable with ``weights_only=True``).

    Returns:
        The path written.

    Raises:
        StateError: ``pruning.on_train_begin`` was not called, or *model* is not the model it prunes.
    """
    _check_same_model(model, pruning, "save_checkpoint")
    payload = {
        _MARK: CHECKPOINT_FORMAT,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "pruning": pruning.state_dict(),
        "report": pruning.report().to_dict(),
        "extra": dict(extra),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: torch.save(payload, tmp))
    return path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary name next to *path*, then rename it to *path*.

    A crash or an error mid-write leaves an earlier file at *path* intact and no temporary behind;
    the temporary name holds the process id, so ranks of a distributed run that all save the same
    path never write into one another's temporary (the last rename wins, whole).
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)  # atomic on one file system
    finally:
        tmp.unlink(missing_ok=True)


def _check_same_model(model: nn.Module, pruning: Pruning, caller: str) -> None:
    """Refuse a *model* other than the one *pruning* works on (its masks would miss the weights)."""
    pruning.require_started(caller)
    pruned = pruning.model
    if pruned is not None and unwrap_model(pruned) is not unwrap_model(model):
        raise StateError(
            f"the model given ({type(model).__name__}) is not the one the Pruning was started on "
            f"({type(pruned).__name__}), so its masks would not apply to it; pass pruning.model, or call "
            "on_train_begin(model) on a new Pruning for this model"
        )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU) without applying it.

    Raises:
        StateError: the file is missing, unreadable (truncated or corrupt), or not a checkpoint
            of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise StateError(f"checkpoint {str(path)!r} not found; check the path (a file written by save_checkpoint)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ... on damage
        if "weights_only" in str(err).lower() and "unsupported global" in str(err).lower():
            raise StateError(
                f"{str(path)!r} holds Python objects that safe loading (weights_only=True) refuses; keep "
                "save_checkpoint extras to plain values and tensors"
            ) from None
        raise StateError(
            f"{str(path)!r} is not a readable checkpoint (truncated or corrupt): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}; use an earlier checkpoint"
        ) from None
    if not isinstance(data, Mapping) or _MARK not in data:
        raise StateError(
            f"{str(path)!r} is not a pytorch-pruner checkpoint (no {_MARK!r} entry); write it with save_checkpoint"
        )
    if data[_MARK] != CHECKPOINT_FORMAT:
        raise StateError(
            f"{str(path)!r} has checkpoint format {data[_MARK]!r}; this version reads format {CHECKPOINT_FORMAT}"
        )
    missing = [k for k in ("model", "optimizer", "pruning", "extra") if k not in data]
    if missing:
        raise StateError(f"{str(path)!r} is a damaged checkpoint: entries {missing} are missing")
    return dict(data)


def check_model_state(model: nn.Module, saved: Any, source: str) -> None:
    """Raise unless *saved* (a state dict) has exactly the keys and shapes of *model*'s.

    Shared by the checkpoint and sparse-file loaders, so that a mismatch is caught before anything
    is written into the model.

    Raises:
        StateError: *saved* is no state dict, or lists other keys or shapes; the message names up
            to five of each.
    """
    if not isinstance(saved, Mapping):
        raise StateError(f"{source} holds no model state; it was not written by pytorch-pruner")
    own = model.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    wrong = [
        f"{key}: saved shape {tuple(value.shape)}, model {tuple(own[key].shape)}"
        for key, value in saved.items()
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape
    ]
    problems = [
        f"{what} {names[:5]}{' ...' if len(names) > 5 else ''}"
        for what, names in (("missing keys", missing), ("unexpected keys", unexpected))
        if names
    ]
    problems += wrong[:5]
    if problems:
        raise StateError(
            f"{source} was saved from another model ({'; '.join(problems)}); build the same architecture before loading"
        )


def _check_optimizer(optimizer: torch.optim.Optimizer | None, saved: Any, source: str) -> None:
    if optimizer is None:
        return
    if not isinstance(saved, Mapping) or "param_groups" not in saved:
        raise StateError(f"{source} holds no optimizer state; pass optimizer=None to skip it")
    sizes = [len(g["params"]) for g in saved["param_groups"]]
    own = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != own:
        raise StateError(
            f"{source}: the saved optimizer has parameter groups of sizes {sizes}, this one {own}; "
            "build the optimizer the same way before loading"
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    pruning: Pruning,
) -> dict[str, Any]:
    """Restore a :func:`save_checkpoint` file into *model*, *optimizer* and *pruning*.

    Call after ``pruning.on_train_begin(model)`` with a Pruning built from the same config. All
    checks run before anything is written, so on error the model, optimizer and pruning are
    unchanged. *model* may be wrapped (``torch.compile``, DDP) or not, whatever the saved run was.

    Args:
        path: the checkpoint file.
        model: the model (same architecture as when saved).
        optimizer: the optimizer (same parameter groups), or ``None`` to leave it alone.
        pruning: a started :class:`~pytorch_pruner.Pruning` of the same config.

    Returns:
        The *extra* values given to :func:`save_checkpoint`.

    Raises:
        StateError: unreadable file, another config, another model, or another optimizer layout;
            or *model* is not the model *pruning* was started on.
    """
    _check_same_model(model, pruning, "load_checkpoint")
    data = read_checkpoint(path)
    source = repr(str(path))
    plain = unwrap_model(model)
    check_model_state(plain, data["model"], source)
    _check_optimizer(optimizer, data["optimizer"], source)
    # Pruning.load_state_dict validates everything before changing anything, so a mismatch
    # raised here leaves all three objects untouched; the loads after it cannot fail any more.
    try:
        pruning.load_state_dict(data["pruning"])
    except StateError as err:
        raise StateError(f"{source}: {err}") from None
    plain.load_state_dict(data["model"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(data["optimizer"])
    extra = data["extra"]
    return dict(extra) if isinstance(extra, Mapping) else {}
