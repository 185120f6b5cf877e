"""Save and resume a pruning run: model, optimizer and :class:`~pytorch_pruner.Pruning` together.

A run resumed from a checkpoint continues bit for bit like the uninterrupted run: the pruning
state holds the optimizer-step count, the hook guards, the masks and the criterion's running
scores. Save between optimizer steps (after ``on_after_optimizer_step``)::

    save_checkpoint("ckpt.pt", model, optimizer, pruning, epoch=epoch)
    ...
    pruning = Pruning(config); pruning.on_train_begin(model)   # same config, same architecture
    extra = load_checkpoint("ckpt.pt", model, optimizer, pruning)

The file is written with plain :func:`torch.save`, atomically (:func:`~pytorch_pruner.fileio.atomic_write`:
a temporary in the same folder, flushed, then renamed, so an interrupted save never destroys the
previous checkpoint), and read with ``weights_only=True``. Its zip comment holds the SHA-256 of
the rest of the file, checked before anything is read, so a changed byte anywhere is caught; the
file stays an ordinary ``torch.load``-able zip.

:func:`load_checkpoint` checks everything against the live objects before it changes any of them:
the model's tensor names, shapes and dtypes, the optimizer's class, parameter groups,
hyperparameters and per-parameter state shapes, and the pruning state. A file that does not fit
raises :class:`~pytorch_pruner.StateError` and leaves model, optimizer and pruning as they were.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import StateError
from .fileio import atomic_write
from .targets import unwrap_model

if TYPE_CHECKING:
    from .pruning import Pruning

__all__ = [
    "CHECKPOINT_FORMAT",
    "check_model_state",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
]

#: Version of the checkpoint layout written by :func:`save_checkpoint` (2: with a SHA-256 and the
#: optimizer's class; format 1 files, without them, are still read).
CHECKPOINT_FORMAT = 2
_MARK = "pytorch_pruner_checkpoint"
#: Start of the zip comment that holds the file's SHA-256 (64 hex digits follow).
_SUM_TAG = b"pytorch-pruner-sha256:"
_SUM_LEN = len(_SUM_TAG) + 64
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes, the last 2 = comment length


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
        "optimizer_class": _class_name(optimizer) if optimizer is not None else None,
        "pruning": pruning.state_dict(),
        "report": pruning.report().to_dict(),
        "extra": dict(extra),
    }
    return write_checkpoint(path, payload)


def write_checkpoint(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write *data*, a checkpoint dict as :func:`read_checkpoint` returns it, to *path*.

    For a checkpoint edited by hand (e.g. its ``extra`` values); :func:`save_checkpoint` writes
    through it. The file is written atomically and sealed with its SHA-256. What it holds is
    checked when it is loaded, not here.

    Returns:
        The path written.
    """
    payload = dict(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        torch.save(payload, tmp)
        _seal(tmp)

    atomic_write(path, write)
    return path


def _class_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _hash_prefix(f: IO[bytes], size: int) -> Any:
    """SHA-256 of the first *size* bytes of *f*, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    f.seek(0)
    while size > 0:
        chunk = f.read(min(1 << 20, size))
        if not chunk:
            break
        digest.update(chunk)
        size -= len(chunk)
    return digest


def _seal(path: Path) -> None:
    """Append the file's SHA-256 to the zip that :func:`torch.save` wrote, as its comment.

    The hash covers every byte before the 64 hex digits, the new comment length included.
    """
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(max(size - 22, 0))
        eocd = f.read(22)
        if len(eocd) != 22 or eocd[:4] != _EOCD or eocd[20:] != b"\0\0":
            raise RuntimeError(f"torch.save wrote no zip archive to {str(path)!r}; cannot add the checksum")
        digest = _hash_prefix(f, size - 2)
        head = struct.pack("<H", _SUM_LEN) + _SUM_TAG
        digest.update(head)
        f.seek(size - 2)
        f.write(head + digest.hexdigest().encode("ascii"))


def _verify(path: Path) -> bool:
    """Check the SHA-256 written by :func:`_seal`; False if the file has none (format 1, or damaged there).

    Raises:
        StateError: the hash does not match: the file changed after it was written.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < _SUM_LEN + 22:
            return False
        f.seek(size - _SUM_LEN)
        trailer = f.read(_SUM_LEN)
        if not trailer.startswith(_SUM_TAG):
            return False
        found = _hash_prefix(f, size - 64).hexdigest().encode("ascii")
    if found != trailer[len(_SUM_TAG) :]:
        raise StateError(
            f"{str(path)!r} is corrupt: its SHA-256 does not match the one stored when it was written (the file "
            "changed on disk or in transfer); use an earlier checkpoint or copy it again"
        )
    return True


def _check_same_model(model: nn.Module, pruning: Pruning, caller: str) -> None:
    """Refuse a *model* other than the one *pruning* works on (its masks would miss the weights)."""
    pruning.require_started(caller)
    if any(p.comm is not None for p in pruning.pruners):
        raise StateError(
            f"{caller} writes one torch.save file, but this model is sharded by FSDP2 (each rank holds part of "
            "the weights, masks and scores); save and load with torch.distributed.checkpoint instead: "
            "dcp.save({'model': ..., 'optim': ..., 'pruning': pruning.state_dict()}) (see docs/distributed.md)"
        )
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
    sealed = _verify(path)
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
    version = data[_MARK]
    if type(version) is not int or not 1 <= version <= CHECKPOINT_FORMAT:
        raise StateError(
            f"{str(path)!r} has checkpoint format {version!r}; this version reads formats 1 to {CHECKPOINT_FORMAT}"
        )
    if version >= 2 and not sealed:
        raise StateError(
            f"{str(path)!r} is corrupt: its SHA-256 (the zip comment save_checkpoint writes) is missing or damaged; "
            "use an earlier checkpoint or copy it again"
        )
    if not sealed:
        warnings.warn(
            f"{str(path)!r} is a format-1 checkpoint, written without a checksum: it cannot be checked for damage",
            stacklevel=2,
        )
    missing = [k for k in ("model", "optimizer", "pruning", "extra") if k not in data]
    if missing:
        raise StateError(f"{str(path)!r} is a damaged checkpoint: entries {missing} are missing")
    return dict(data)


def _listing(items: list[str]) -> str:
    return f"{items[:5]}{f' (and {len(items) - 5} more)' if len(items) > 5 else ''}"


def check_model_state(model: nn.Module, saved: Any, source: str, dtypes: bool = False) -> None:
    """Raise unless *saved* (a state dict) has exactly the keys and shapes of *model*'s, all tensors.

    Shared by the checkpoint and sparse-file loaders, so that a mismatch is caught before anything
    is written into the model.

    Args:
        model: the model the state is meant for.
        saved: the state dict read from a file.
        source: the file, for the messages.
        dtypes: also require each tensor's dtype to be the model's (resuming a run); without it a
            saved dtype is cast to the model's on load.

    Raises:
        StateError: *saved* is no state dict, lists other keys, holds something that is not a
            tensor, or other shapes (or dtypes); the message names up to five of each.
    """
    if not isinstance(saved, Mapping):
        raise StateError(f"{source} holds no model state; it was not written by pytorch-pruner")
    own = model.state_dict()
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(str(k) for k in set(saved) - set(own))
    not_tensors = [f"{k}: a {type(v).__name__}" for k, v in saved.items() if not isinstance(v, torch.Tensor)]
    wrong = [
        f"{key}: saved shape {tuple(value.shape)}, model {tuple(own[key].shape)}"
        for key, value in saved.items()
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape
    ]
    problems = [
        f"{what} {_listing(names)}"
        for what, names in (("missing keys", missing), ("unexpected keys", unexpected))
        if names
    ]
    problems += wrong[:5]
    if problems:
        raise StateError(
            f"{source} was saved from another model ({'; '.join(problems)}); build the same architecture before loading"
        )
    if not_tensors:
        raise StateError(
            f"{source} is damaged: model entries that are not tensors: {_listing(not_tensors)}; use an earlier file"
        )
    if dtypes:
        other = [f"{k}: saved {v.dtype}, model {own[k].dtype}" for k, v in saved.items() if v.dtype != own[k].dtype]
        if other:
            raise StateError(
                f"{source} holds other dtypes than the model ({_listing(other)}); convert the model the way the "
                "saved run did (e.g. model.to(torch.bfloat16)) before loading"
            )


#: Optimizer flags that torch's optimizers fill in with a default when a saved state lacks them
#: (states from an older torch); any other hyperparameter (a key of ``optimizer.defaults``) must be
#: in the saved groups.
_DEFAULTED_FLAGS = frozenset({"foreach", "maximize", "capturable", "differentiable", "fused", "decoupled_weight_decay"})
#: Per-parameter state of torch's optimizers shaped like the parameter (checked for any optimizer).
_PARAM_SHAPED = frozenset(
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "sum", "square_avg", "acc_delta",
     "grad_avg", "exp_inf", "ax", "prev", "step_size"}
)  # fmt: skip
#: torch.optim classes whose per-parameter state is not all scalars and parameter-shaped tensors.
_FREE_FORM = frozenset({"Adafactor", "LBFGS", "SparseAdam"})


def _is_real(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_hyperparameter(key: str, own: Any, saved: Any) -> str | None:
    """Why the saved value of a group hyperparameter cannot stand in for *own*'s kind, or None."""
    if isinstance(own, bool):
        ok = isinstance(saved, bool)
    elif isinstance(own, torch.Tensor):
        ok = _is_real(saved) or (isinstance(saved, torch.Tensor) and saved.numel() == own.numel())
    elif isinstance(own, int | float):
        ok = _is_real(saved) or (isinstance(saved, torch.Tensor) and saved.numel() == 1)
    elif isinstance(own, tuple | list):
        ok = (
            isinstance(saved, tuple | list)
            and len(saved) == len(own)
            and all(_check_hyperparameter(key, a, b) is None for a, b in zip(own, saved, strict=True))
        )
    elif own is None:
        ok = saved is None or isinstance(saved, bool)
    else:
        return None  # a kind this check does not know: the optimizer's own load decides
    return None if ok else f"{key!r} is {saved!r}, expected a value like {own!r}"


def _check_optimizer(
    optimizer: torch.optim.Optimizer | None, saved: Any, saved_class: Any, source: str, where: str = "the saved"
) -> None:
    """Raise unless *saved* (an optimizer state dict) loads into *optimizer* and steps without error.

    Checks the class (when the file names it), the groups (sizes, hyperparameter names and kinds)
    and every parameter's state (scalars finite; tensors of the parameter's shape).
    """
    if optimizer is None:
        return
    if not isinstance(saved, Mapping) or "param_groups" not in saved:
        raise StateError(f"{source} holds no optimizer state; pass optimizer=None to skip it")
    own_class = _class_name(optimizer)
    if saved_class is not None and saved_class != own_class:
        raise StateError(
            f"{source}: the optimizer state is {saved_class}'s, this run uses {own_class}; build the same optimizer "
            "as the saved run, or pass optimizer=None to keep this one's state (it then starts fresh)"
        )
    groups, state = saved["param_groups"], saved.get("state")
    if (
        not isinstance(groups, list | tuple)
        or not all(isinstance(g, Mapping) and isinstance(g.get("params"), list | tuple) for g in groups)
        or not isinstance(state, Mapping)
    ):
        raise StateError(f"{source}: the optimizer state is damaged (no param_groups list or state); use another file")
    sizes = [len(g["params"]) for g in groups]
    own = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != own:
        raise StateError(
            f"{source}: the saved optimizer has parameter groups of sizes {sizes}, this one {own}; "
            "build the optimizer the same way before loading"
        )
    ids = [i for g in groups for i in g["params"]]
    if not all(type(i) is int for i in ids) or len(set(ids)) != len(ids):
        raise StateError(f"{source}: the optimizer state is damaged (parameter ids {_listing(ids)}); use another file")
    params = dict(zip(ids, [p for g in optimizer.param_groups for p in g["params"]], strict=True))
    for n, (mine, theirs) in enumerate(zip(optimizer.param_groups, groups, strict=True)):
        keys, saved_keys = set(mine) - {"params", "param_names"}, set(theirs) - {"params", "param_names"}
        # the optimizer's own hyperparameters must all be there; other keys (a scheduler's
        # ``initial_lr``, a user's ``name``) may come and go
        needed = keys & set(optimizer.defaults)
        unknown, absent = sorted(saved_keys - keys), sorted(needed - saved_keys - _DEFAULTED_FLAGS)
        if absent:
            what = [f"settings {unknown} this {type(optimizer).__name__} does not know"] if unknown else []
            what += [f"no {absent}, which it needs"] if absent else []
            raise StateError(
                f"{source}: parameter group {n} of the saved optimizer has {' and '.join(what)}; it was saved from "
                "another optimizer: build the same one, or pass optimizer=None"
            )
        bad = [r for k in sorted(keys & saved_keys) if (r := _check_hyperparameter(k, mine[k], theirs[k]))]
        if bad:
            raise StateError(f"{source}: parameter group {n} of the saved optimizer is damaged: {'; '.join(bad)}")
    generic = type(optimizer).__module__.startswith("torch.optim") and type(optimizer).__name__ not in _FREE_FORM
    problems = []
    for key, entry in state.items():
        if key not in params:
            problems.append(f"state of parameter {key!r}, which no group lists")
            continue
        param = params[key]
        if not isinstance(entry, Mapping):
            problems.append(f"parameter {key}: a {type(entry).__name__}, not a dict")
            continue
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                scalar = value.dim() == 0
                if not scalar and (generic or name in _PARAM_SHAPED) and value.shape != param.shape:
                    problems.append(
                        f"parameter {key} {name!r}: shape {tuple(value.shape)}, parameter {tuple(param.shape)}"
                    )
                elif name == "step" and not (value.numel() == 1 and bool(torch.isfinite(value).all()) and value >= 0):
                    problems.append(f"parameter {key} 'step': {value.tolist()!r}")
            elif name == "step" and not (_is_real(value) and value >= 0):
                problems.append(f"parameter {key} 'step': {value!r}")
            elif (generic or name in _PARAM_SHAPED) and value is not None and not _is_real(value):
                problems.append(f"parameter {key} {name!r}: a {type(value).__name__}")
    if problems:
        raise StateError(
            f"{source}: {where} optimizer state does not fit this model's parameters ({_listing(problems)}); it was "
            "saved from another model or is damaged: use another file, or pass optimizer=None"
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    pruning: Pruning,
) -> dict[str, Any]:
    """Restore a :func:`save_checkpoint` file into *model*, *optimizer* and *pruning*.

    Call after ``pruning.on_train_begin(model)`` with a Pruning built from the same config. All
    checks run before anything is written (the file's SHA-256; the model's tensor names, shapes and
    dtypes; the optimizer's class, groups and state shapes; the pruning state), so on error the
    model, optimizer and pruning are unchanged. *model* may be wrapped (``torch.compile``, DDP) or
    not, whatever the saved run was.

    Args:
        path: the checkpoint file.
        model: the model (same architecture and dtypes as when saved).
        optimizer: the optimizer (same class and parameter groups), or ``None`` to leave it alone.
        pruning: a started :class:`~pytorch_pruner.Pruning` of the same config.

    Returns:
        The *extra* values given to :func:`save_checkpoint`.

    Raises:
        StateError: unreadable or altered file, another config, another model, another optimizer
            or layout, or damaged contents; or *model* is not the model *pruning* was started on.
            The message says which and what to do.
    """
    _check_same_model(model, pruning, "load_checkpoint")
    data = read_checkpoint(path)
    source = repr(str(path))
    plain = unwrap_model(model)
    check_model_state(plain, data["model"], source, dtypes=True)
    _check_optimizer(optimizer, data["optimizer"], data.get("optimizer_class"), source)
    try:
        pruning.check_state_dict(data["pruning"])
    except StateError as err:
        raise StateError(f"{source}: {err}") from None
    extra = data["extra"]
    if not isinstance(extra, Mapping):
        raise StateError(f"{source} is damaged: its extra values are a {type(extra).__name__}, not a dict")
    # Everything fits: the loads below cannot fail on the file's content any more.
    pruning.load_state_dict(data["pruning"])
    plain.load_state_dict(data["model"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(data["optimizer"])
    return dict(extra)
