"""Prune while Lightning trains: a ``lightning.pytorch.Callback``.

Example::

    from pytorch_pruner.integrations.lightning import PruningCallback

    pruning_cb = PruningCallback("pruning.yaml")
    trainer = lightning.Trainer(max_steps=1000, accumulate_grad_batches=4, callbacks=[pruning_cb])
    trainer.fit(module, loader)
    print(pruning_cb.pruning.report())

How Lightning's events map to the hooks (one ``step`` = one optimizer step, as Lightning's
``trainer.global_step``; with ``accumulate_grad_batches=k`` that is one step per ``k`` batches):

============================  ===================================================================
Lightning event               Pruning hook
============================  ===================================================================
``on_train_start``            ``on_train_begin(pl_module)``; restore a state read from a checkpoint
``on_train_batch_start``      ``on_step_begin`` (acts once per optimizer step)
``on_before_optimizer_step``  ``on_before_optimizer_step``: gradients accumulated over the batches
                              of the step, unscaled by the precision plugin, weights not updated
``on_train_batch_end``        ``on_after_optimizer_step`` once for each optimizer step taken in the
                              batch, so ``pruning.step == trainer.global_step``
``on_save_checkpoint``        ``checkpoint["pytorch_pruner"] = pruning.state_dict()`` (FSDP2: every
                              rank's ``state_dict(local=True)``, gathered)
``on_load_checkpoint``        keeps that state; it is loaded once the masks exist
``on_train_end``              ``on_train_end``
============================  ===================================================================

Works with ``lightning`` (2.x) and the older ``pytorch_lightning`` package name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..distributed import gathered_state_dict, own_state
from ..errors import StateError
from . import ConfigOrPruning, as_pruning, missing_extra, reused_error

try:
    import lightning.pytorch as pl
except ImportError as err:  # the optional extra is not installed; try the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise missing_extra("lightning", "lightning", err) from err

__all__ = ["CHECKPOINT_KEY", "PruningCallback"]

#: Key of the pruning state in a Lightning checkpoint dict.
CHECKPOINT_KEY = "pytorch_pruner"


class PruningCallback(pl.Callback):
    """A Lightning ``Callback`` that prunes the ``LightningModule`` as a config says.

    Args:
        config_or_pruning: a YAML path, a dict, a :class:`~pytorch_pruner.PruningConfig`, or a
            :class:`~pytorch_pruner.Pruning`. Steps in the config are optimizer steps
            (``trainer.global_step``), not batches.

    Attributes:
        pruning: the :class:`~pytorch_pruner.Pruning` driven by the trainer.

    Raises:
        ConfigError: the config is invalid (here, at construction).

    Notes:
        One optimizer is assumed: with manual optimization stepping several optimizers per batch,
        ``global_step`` counts each of them and so does the pruning schedule.
    """

    def __init__(self, config_or_pruning: ConfigOrPruning) -> None:
        super().__init__()
        self.pruning = as_pruning(config_or_pruning)
        self._pending: Mapping[str, Any] | None = None  # state read from a checkpoint before the masks exist

    # -- training ---------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the masks; load a state read from the checkpoint; check the step counts agree.

        Raises:
            StateError: training resumes at a step the pruning state does not know (a checkpoint
                saved without this callback), the saved state does not fit, or the callback is
                reused for a new run.
        """
        self.pruning.on_train_begin(pl_module)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.pruning.load_state_dict(pending)
        if self.pruning.step == trainer.global_step:
            return
        if trainer.global_step == 0:
            raise reused_error(self.pruning)
        raise StateError(
            f"training resumes at optimizer step {trainer.global_step}, but the pruning state is at step "
            f"{self.pruning.step}: the checkpoint holds no '{CHECKPOINT_KEY}' state; resume from a "
            "checkpoint saved with PruningCallback in the callbacks"
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Prune if the coming optimizer step is a pruning step (repeat calls in one step do nothing)."""
        self.pruning.on_step_begin(batch_idx)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Fold the step's gradients into gradient criteria, before the optimizer moves the weights."""
        self.pruning.on_before_optimizer_step()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Re-zero pruned weights and count the optimizer step(s) this batch took, if any."""
        # Batches that only accumulate gradients leave global_step as it was: nothing to do then.
        while self.pruning.step < trainer.global_step:
            self.pruning.on_after_optimizer_step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the masks once more so the model leaves training exactly sparse."""
        self.pruning.on_train_end()

    # -- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store the pruning state (step, masks, scores, config) in the checkpoint.

        Under FSDP2 each rank holds its own rows of the masks and scores, and Lightning writes this
        dict from rank 0 alone: every rank's ``state_dict(local=True)`` is gathered into it (a
        collective, as Lightning calls this hook on every rank), under ``{"ranks": [...]}``.
        """
        if self.pruning.pruners:  # nothing to save before training began
            checkpoint[CHECKPOINT_KEY] = gathered_state_dict(self.pruning)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Restore the pruning state, now if the masks exist, else at ``on_train_start``.

        Raises:
            StateError: the saved state does not fit this config or model.
        """
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return  # on_train_start reports a resume without state, once it knows the step
        state = own_state(state)
        if self.pruning.pruners:
            self.pruning.load_state_dict(state)
        else:
            self._pending = state
