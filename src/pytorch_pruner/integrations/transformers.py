"""Prune while 🤗 ``transformers.Trainer`` trains: a ``TrainerCallback``.

Example::

    from pytorch_pruner.integrations.transformers import PruningCallback

    pruning_cb = PruningCallback("pruning.yaml")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[pruning_cb])
    trainer.train()
    print(pruning_cb.pruning.report())

How the Trainer's events map to the hooks (one ``step`` = one optimizer step, so
``gradient_accumulation_steps`` is respected; ``pruning.step == state.global_step``):

=========================  =====================================================================
Trainer event              Pruning hook
=========================  =====================================================================
``on_train_begin``         ``on_train_begin(model)``; on resume, load ``pruning_state.pt``
``on_step_begin``          ``on_step_begin`` (once per optimizer step, before its first forward)
``on_pre_optimizer_step``  ``on_before_optimizer_step``: scores see this step's summed,
                           clipped gradients and the weights before the update
``on_optimizer_step``      ``on_after_optimizer_step``: pruned weights re-zeroed after the update
``on_save``                writes ``pruning_state.pt`` into the checkpoint folder
``on_train_end``           ``on_train_end``
=========================  =====================================================================
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import StateError
from ..fileio import atomic_write
from . import ConfigOrPruning, as_pruning, missing_extra, reused_error

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as err:  # the optional extra is not installed
    raise missing_extra("transformers", "transformers", err) from err

_EVENTS = ("on_pre_optimizer_step", "on_optimizer_step")
if not all(hasattr(TrainerCallback, event) for event in _EVENTS):
    # Older Trainers never call these events: the callback would silently count no steps and score
    # no gradients, so refuse to load rather than prune wrong.
    import transformers as _transformers

    raise ImportError(
        f"pytorch_pruner.integrations.transformers needs a Trainer that calls {' and '.join(_EVENTS)} "
        f"around each optimizer step; transformers {_transformers.__version__} does not; upgrade it with: "
        "pip install -U transformers"
    )

__all__ = ["STATE_FILE", "PruningCallback"]

#: File written into every Trainer checkpoint folder: :meth:`Pruning.state_dict` saved with torch.save.
STATE_FILE = "pruning_state.pt"


def _checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """``<output_dir>/checkpoint-<global_step>``: where the Trainer saves (and resumes) this step."""
    return Path(str(args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


class PruningCallback(TrainerCallback):
    """A ``TrainerCallback`` that prunes the Trainer's model as a config says.

    Args:
        config_or_pruning: a YAML path, a dict, a :class:`~pytorch_pruner.PruningConfig`, or a
            :class:`~pytorch_pruner.Pruning` (e.g. one whose ``start_step``/``end_step`` were set
            with ``update_items_for_all_pruners``). Steps in the config are optimizer steps, the
            Trainer's ``global_step``.
        resume_from: where to read the pruning state when the Trainer resumes: a checkpoint folder
            or a ``pruning_state.pt`` file. By default the callback looks in
            ``args.resume_from_checkpoint`` (when it is a path) and then in
            ``<output_dir>/checkpoint-<global_step>``, the folder ``Trainer.train(resume_from_checkpoint=...)``
            restores from when it is one of this run's checkpoints.

    Attributes:
        pruning: the :class:`~pytorch_pruner.Pruning` driven by the Trainer; ask it for
            ``report()``, ``get_sparsity_ratio()`` or ``masks()`` after training.

    Raises:
        ConfigError: the config is invalid (here, at construction).

    Notes:
        With fp16 mixed precision the gradients are unscaled only by gradient clipping: keep
        ``max_grad_norm > 0`` (the default, 1.0) so that gradient criteria score true gradients.
        Overflow steps (inf/NaN gradients) leave the scores unchanged.
    """

    def __init__(
        self, config_or_pruning: ConfigOrPruning, *, resume_from: str | os.PathLike[str] | None = None
    ) -> None:
        self.pruning = as_pruning(config_or_pruning)
        self.resume_from = resume_from

    # -- training ---------------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Build the masks for the Trainer's model; when resuming, restore the saved pruning state.

        Raises:
            StateError: no model was passed; the Trainer resumes from a checkpoint without a
                readable pruning state or with one of another step; or the callback is reused for
                a new run.
        """
        if model is None:
            raise StateError("the Trainer passed no model to on_train_begin; PruningCallback needs Trainer(model=...)")
        self.pruning.on_train_begin(model)
        if self.pruning.step == state.global_step:
            return
        if state.global_step == 0:
            raise reused_error(self.pruning)
        self._resume(args, state)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Prune if this optimizer step is a pruning step (the Trainer calls this once per optimizer step)."""
        self.pruning.on_step_begin(state.global_step)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Fold the accumulated, clipped gradients into gradient criteria, before the update."""
        self.pruning.on_before_optimizer_step()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Re-zero pruned weights that the optimizer moved, and count the optimizer step."""
        self.pruning.on_after_optimizer_step()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Apply the masks once more so the model leaves training exactly sparse."""
        self.pruning.on_train_end()

    # -- checkpoints ------------------------------------------------------------------------
    def _sharded(self) -> bool:
        return any(p.comm is not None for p in self.pruning.pruners)

    def _state_file(self) -> str:
        """``pruning_state.pt``; under FSDP2, where each rank holds its own rows of the masks and
        scores, ``pruning_state.rank<r>.pt`` per rank."""
        if self._sharded():
            return f"pruning_state.rank{torch.distributed.get_rank()}.pt"
        return STATE_FILE

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Write ``pruning_state.pt`` into the checkpoint folder the Trainer has just written.

        Only the process that saves the Trainer's files writes it (every rank holds the same state);
        under FSDP2 every rank writes its own part, ``pruning_state.rank<r>.pt``.
        """
        if not self.pruning.pruners or not (args.should_save or self._sharded()):  # pruners exist once training began
            return
        folder = _checkpoint_folder(args, state)
        if not folder.is_dir():
            # e.g. a hyper-parameter search writes under a run folder the callback is not told about;
            # training can go on, only resuming needs the file
            warnings.warn(
                f"the Trainer saved a checkpoint, but {folder} does not exist, so {STATE_FILE} was not written "
                "next to it; save the pruning state yourself with torch.save(callback.pruning.state_dict(), ...)",
                stacklevel=2,
            )
            return
        state = self.pruning.state_dict(local=True)
        atomic_write(folder / self._state_file(), lambda tmp: torch.save(state, tmp))

    def _state_file_candidates(self, args: TrainingArguments, state: TrainerState) -> list[Path]:
        places: list[str | os.PathLike[str]] = []
        if self.resume_from is not None:
            places.append(self.resume_from)
        elif isinstance(args.resume_from_checkpoint, str):
            places.append(args.resume_from_checkpoint)
        places.append(_checkpoint_folder(args, state))
        name = self._state_file()
        if name != STATE_FILE:  # FSDP2: this rank's file in the folder given
            return [(Path(p).parent if Path(p).suffix == ".pt" else Path(p)) / name for p in places]
        return [Path(p) if Path(p).suffix == ".pt" else Path(p) / STATE_FILE for p in places]

    def _resume(self, args: TrainingArguments, state: TrainerState) -> None:
        candidates = self._state_file_candidates(args, state)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise StateError(
                f"the Trainer resumes at step {state.global_step} but no pruning state was found "
                f"(looked for {[str(p) for p in candidates]}); resume from a checkpoint saved with "
                f"PruningCallback, or pass PruningCallback(..., resume_from='<checkpoint folder or {STATE_FILE}>')"
            )
        try:
            saved = torch.load(found, map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ... on damage
            raise StateError(
                f"{found} is not a readable pruning state (truncated or corrupt: {type(err).__name__}); resume "
                "from another checkpoint, or pass PruningCallback(..., resume_from=...) a good one"
            ) from None
        saved_step = saved.get("step") if isinstance(saved, dict) else None
        if saved_step != state.global_step:
            raise StateError(
                f"{found} holds the pruning state of step {saved_step}, but the Trainer resumes at step "
                f"{state.global_step}; pass the {STATE_FILE} of the checkpoint you resume from as resume_from"
            )
        self.pruning.load_state_dict(saved)  # checks config and layers, then restores masks and scores
