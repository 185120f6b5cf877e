"""The ``Pruning`` object: a config turned into pruners, driven by training-loop hooks.

The seed's coding template works as written::

    pruner = Pruning("config.yaml")
    pruner.update_items_for_all_pruners(start_step=..., end_step=...)
    pruner.model = model
    pruner.on_train_begin()
    for step, batch in enumerate(loader):
        pruner.on_step_begin(step)
        model(**batch).loss.backward()
        pruner.on_before_optimizer_step()
        optimizer.step()
        pruner.on_after_optimizer_step()
        optimizer.zero_grad()

Steps are *optimizer* steps: the count starts at 0 in ``on_train_begin`` and grows by one in each
``on_after_optimizer_step``. ``on_step_begin``'s argument is accepted for the seed's sake but not
used to schedule, so gradient accumulation (several micro-batches per optimizer step) is safe.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .config import PruningConfig, dump_config, load_config, loads_config
from .criteria import finite_flag
from .distributed import ProcessGroupComm, WeightShard, check_sharded, is_dtensor
from .errors import ConfigError, NoMatchingLayersError, PruningError, StateError, first_names
from .export import squash
from .pruner import Pruner, sync_counts
from .report import SparsityRatios, SparsityReport, build_report, sparsity_ratios
from .targets import LAYER_KINDS, WeightChecker, find_targets, prunable_layers

__all__ = ["STATE_FORMAT", "Pruning"]

#: Version of the layout written by :meth:`Pruning.state_dict`.
STATE_FORMAT = 1


def _attach_shards(path: str, targets: list[Any], pattern: Any) -> None:
    """Give each target whose weight is a DTensor (FSDP2 ``fully_shard``) its shard, or refuse
    the layers that cannot be pruned shard by shard, saying why and how to fix it."""
    sharded = [t for t in targets if is_dtensor(t.module.weight)]
    reasons = [r for t in sharded if (r := check_sharded(t.name, t.kind, t.module.weight, pattern))]
    if reasons:
        raise PruningError(f"{path}: sharded (DTensor) weights this pruner cannot prune:\n  " + "\n  ".join(reasons))
    for t in sharded:
        t.shard = WeightShard.of(t.module.weight)


def _refuse_zero3(model: nn.Module) -> None:
    """DeepSpeed ZeRO stage 3 leaves each rank an empty placeholder per parameter (``ds_id``
    marks one): there is no weight to score or mask, so refuse before anything is built."""
    partitioned = [name for name, p in model.named_parameters() if hasattr(p, "ds_id")]
    if partitioned:
        shown = first_names(partitioned)
        raise PruningError(
            f"the model's parameters are partitioned by DeepSpeed ZeRO stage 3 ({shown}); pytorch-pruner cannot "
            "prune them. Use ZeRO stage 1 or 2 or DistributedDataParallel (see docs/distributed.md)"
        )


def _refuse_fsdp1(model: nn.Module) -> None:
    """FSDP1 (``FullyShardedDataParallel``) keeps each rank's part of flattened parameters: the
    layers' weights are 1-D slices there, not rows, so refuse before anything is built."""
    wrapped = [n or "the model" for n, m in model.named_modules() if type(m).__name__ == "FullyShardedDataParallel"]
    if wrapped:
        raise PruningError(
            f"{', '.join(wrapped[:5])} {'is' if len(wrapped) == 1 else 'are'} wrapped in FSDP1 "
            "(FullyShardedDataParallel), whose flat parameters pytorch-pruner cannot prune; shard with FSDP2 "
            "(torch.distributed.fsdp.fully_shard; accelerate: fsdp_version: 2) or use DistributedDataParallel "
            "(see docs/distributed.md)"
        )


def _no_match_message(model: nn.Module, settings: list[Any]) -> str:
    """What each pruner searched, what the model holds, and how to fix the config."""
    searched = "; ".join(
        f"{s.path or 'pruner'}: types {list(s.prune_layer_type)}, names {list(s.names) or 'any'}, "
        f"excluded {list(s.excluded) or 'none'}"
        for s in settings
    )
    supported = [f"{t.name} ({t.kind})" for t in prunable_layers(model)]
    others = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2
        }
        - {t.kind for t in prunable_layers(model)}
    )
    fix = (
        f"set prune_layer_type to the kinds it holds ({sorted({t.kind for t in prunable_layers(model)})}) "
        "and check that names / excluded match those layer names"
        if supported
        else f"prunable kinds are {list(LAYER_KINDS)} (and their subclasses); this model has none"
    )
    return (
        f"no layer of the model matches any pruner. Searched: {searched}. Prunable layers of this model: "
        f"{supported[:20] or 'none'}{' ...' if len(supported) > 20 else ''}; other modules with a 2-D weight, "
        f"never pruned: {others or 'none'}. Fix: {fix}"
    )


class Pruning:
    """Prune a model while it trains, as a config says.

    Args:
        config: a YAML path (the seed format), a dict, or a :class:`PruningConfig`.
        model: the model; may also be set later with ``pruning.model = model`` or passed to
            :meth:`on_train_begin`.

    Raises:
        ConfigError: the config is invalid (raised here, at load time).

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5})
        >>> pruning.on_train_begin(model)
        >>> pruning.on_step_begin(0)
        >>> pruning.get_sparsity_ratio().blockwise_over_matmul_gemm_conv  # one ranking over both layers
        0.5
    """

    def __init__(
        self, config: str | os.PathLike[str] | Mapping[str, Any] | PruningConfig, model: nn.Module | None = None
    ) -> None:
        self.config = load_config(config)
        self._model = model
        self.pruners: list[Pruner] = []
        self.step = 0
        self._started = False
        self._pruned_at = -1  # optimizer step whose on_step_begin already ran
        self._scored_at = -1  # optimizer step whose gradients were already scored
        self._comm: ProcessGroupComm | None = None

    # -- set-up ----------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module | None:
        return self._model

    @model.setter
    def model(self, model: nn.Module) -> None:
        if self._started and model is not self._model:
            raise StateError("the model cannot be replaced after on_train_begin; create a new Pruning")
        self._model = model

    def update_items_for_all_pruners(self, **items: Any) -> None:
        """Write *items* into every pruner (e.g. ``start_step``, ``end_step``) and re-validate.

        Raises:
            StateError: called after :meth:`on_train_begin`.
            ConfigError: a key or value is invalid.
        """
        if self._started:
            raise StateError(
                "update_items_for_all_pruners must be called before on_train_begin; the pruners are already built"
            )
        self.config = self.config.with_pruner_items(**items)

    def on_train_begin(self, model: nn.Module | None = None) -> None:
        """Select the layers of each pruner and build their masks (all kept).

        Raises:
            StateError: no model was given.
            ConfigError: a gradient criterion is asked to prune one-shot at step 0.
            NoMatchingLayersError: no pruner matched any layer of the model.
        """
        if model is not None:
            self.model = model
        if self._model is None:
            raise StateError("no model: set `pruning.model = model` or call on_train_begin(model)")
        if self._started:
            return
        _refuse_zero3(self._model)
        _refuse_fsdp1(self._model)
        settings = self.config.resolved()
        for s in settings:
            if s.criterion.oneshot_only:
                raise ConfigError(
                    f"{s.path}.prune_type: {s.prune_type!r} is one-shot only (it rebuilds the kept weights from "
                    "calibration data); prune with pytorch_pruner.prune_oneshot_(model, config, calibration), then "
                    "fine-tune with prune_type 'pattern_lock' (or use 'wanda' during training)"
                )
            if s.owl:
                raise ConfigError(
                    f"{s.path}.owl: OWL is an option of one-shot pruning (prune_oneshot_), not of training; "
                    "set owl: false here"
                )
            if s.criterion.needs_inputs and s.start_step == 0:
                raise ConfigError(
                    f"{s.path}: prune_type {s.prune_type!r} needs the layers' inputs, but start_step 0 prunes "
                    "before any forward; set start_step >= 1, or prune one-shot with "
                    "prune_oneshot_(model, config, calibration)"
                )
            if s.criterion.needs_grad and s.start_step == s.end_step == 0:
                raise ConfigError(
                    f"{s.path}: prune_type {s.prune_type!r} needs gradients, but start_step == end_step "
                    "== 0 prunes one-shot before any gradient exists; set start_step >= 1 (e.g. with "
                    "update_items_for_all_pruners(start_step=..., end_step=...)) or use 'magnitude'"
                )
        claimed: set[str] = set()
        checker = WeightChecker(self._model)
        pruners = []
        try:
            for s in settings:
                targets = find_targets(self._model, s.prune_layer_type, s.names, s.excluded)
                mine = [t for t in targets if t.name not in claimed]
                taken = [t.name for t in targets if t.name in claimed]
                if taken:
                    warnings.warn(
                        f"{s.path}: layers already pruned by an earlier pruner are skipped here: {taken}",
                        stacklevel=2,
                    )
                claimed.update(t.name for t in mine)
                if not mine:
                    candidates = [t.name for t in prunable_layers(self._model, s.prune_layer_type)]
                    warnings.warn(
                        f"{s.path} selects no layer (types {list(s.prune_layer_type)}, names {list(s.names)}, "
                        f"excluded {list(s.excluded)}); layers it could match: {candidates}",
                        stacklevel=2,
                    )
                mine, left_dense = checker.split(
                    mine, needs_grad=s.criterion.needs_grad, criterion=s.prune_type, names=s.names
                )
                _attach_shards(s.path or "pruner", mine, s.pattern)  # FSDP2: after the checks, which see whole weights
                if left_dense:
                    reasons = "\n".join(f"  {name}: {reason}" for name, reason in left_dense)
                    warnings.warn(f"{s.path}: these layers stay dense (see report()):\n{reasons}", stacklevel=2)
                pruner = Pruner(s, mine, skipped=left_dense)
                coarse = pruner.too_coarse()
                if coarse:
                    units = ", ".join(f"{name} ({n})" for name, n in coarse)
                    warnings.warn(
                        f"{s.path}: target_sparsity {s.target_sparsity:g} prunes no unit of pattern {s.pattern.name!r} "
                        f"in these layers (units in brackets; {s.prune_domain} ranking prunes floor(target x units)): "
                        f"{units}; they will stay dense. Raise target_sparsity, use a finer pattern, or rank globally",
                        stacklevel=2,
                    )
                pruners.append(pruner)
        except BaseException:  # nothing half-built stays attached to the model
            for pruner in pruners:
                pruner.criterion.remove_hooks()
            raise
        if not claimed:
            raise NoMatchingLayersError(_no_match_message(self._model, settings))
        groups = {id(p.comm.group): p.comm for p in pruners if p.comm is not None}
        if len(groups) > 1:
            raise PruningError(
                "the pruned layers are sharded over different process groups (FSDP2 meshes); shard every pruned "
                "layer over one 1-D mesh"
            )
        #: under FSDP2: the ranks that must agree on each step's finiteness (one all-reduce per step)
        self._comm = next(iter(groups.values()), None)
        self.pruners = pruners
        self._started = True

    def require_started(self, hook: str) -> nn.Module:
        """The model, once on_train_begin has run; a StateError naming *hook* before that."""
        if not self._started or self._model is None:
            raise StateError(f"{hook} called before on_train_begin; call pruning.on_train_begin() first")
        return self._model

    _require_started = require_started  # the former name

    def _follow_weights(self) -> None:
        """Masks and scores follow the weights if the model moved (or was materialized from meta)."""
        for pruner in self.pruners:
            pruner.follow_weights_()

    # -- hooks -----------------------------------------------------------------------------
    def on_epoch_begin(self, epoch: int | None = None) -> None:
        """Does nothing; present for training loops that call it."""

    def on_step_begin(self, step: int | None = None) -> None:
        """On a pruning step, recompute the masks and zero the pruned weights.

        *step* is accepted for the seed's loops but not used: the schedule follows optimizer steps.
        Calling it again within the same optimizer step does nothing.
        """
        self.require_started("on_step_begin")
        self._follow_weights()
        if self._pruned_at == self.step:
            return
        self._pruned_at = self.step
        for pruner in self.pruners:
            if pruner.schedule.is_pruning_step(self.step):
                pruner.prune(self.step)

    def on_before_optimizer_step(self) -> None:
        """Fold this step's gradients into gradient criteria (skipped if any is inf/NaN).

        Every active criterion stages its step, one flag says whether all of it is finite (on the
        device: the host never waits), and each criterion keeps its new scores only where the flag
        is True: on an AMP overflow step the optimizer skips the update and the scores stay
        exactly as they were.
        """
        self.require_started("on_before_optimizer_step")
        if self._scored_at == self.step:
            return
        self._scored_at = self.step
        active = [p for p in self.pruners if p.wants_scores(self.step)]
        if not active:
            return
        staged = [t for p in active for t in p.criterion.stage_()]
        finite = finite_flag(staged)
        if self._comm is not None:  # FSDP2: each rank saw its own rows; all ranks keep the step or none
            finite = self._comm.all_true(finite)
        for pruner in active:
            pruner.criterion.commit_(finite)

    def on_after_optimizer_step(self) -> None:
        """Re-zero pruned weights (the optimizer may have moved them) and count the step."""
        self.require_started("on_after_optimizer_step")
        for pruner in self.pruners:
            pruner.apply_masks()
        self.step += 1

    def on_step_end(self) -> None:
        """Does nothing; present for training loops that call it."""

    def on_epoch_end(self) -> None:
        """Does nothing; present for training loops that call it."""

    def on_before_eval(self) -> None:
        """Does nothing; present for training loops that call it."""

    def on_after_eval(self) -> None:
        """Does nothing; present for training loops that call it."""

    def on_train_end(self) -> None:
        """Apply the masks once more, so the model leaves training exactly sparse."""
        if self._started:
            self._follow_weights()
            for pruner in self.pruners:
                pruner.apply_masks()
                pruner.criterion.remove_hooks()

    # -- results ---------------------------------------------------------------------------
    def get_sparsity_ratio(self) -> SparsityRatios:
        """The seed's three ratios: see :class:`SparsityRatios`."""
        model = self.require_started("get_sparsity_ratio")
        self._follow_weights()
        sync_counts(self.pruners)  # FSDP2: a collective, every rank calls it
        return sparsity_ratios(model, self.pruners)

    def report(self) -> SparsityReport:
        """Per-layer sparsity, skipped layers with the reason, and the three ratios."""
        model = self.require_started("report")
        self._follow_weights()
        sync_counts(self.pruners)  # FSDP2: a collective, every rank calls it
        return build_report(model, self.pruners, self.step)

    def masks(self) -> dict[str, torch.Tensor]:
        """Keep-masks (bool, True = keep) of every pruned layer, in each weight's shape.

        Under FSDP2 each mask is a DTensor sharded as its weight (``.full_tensor()`` gathers it)."""
        self.require_started("masks")
        self._follow_weights()
        masks = {}
        for p in self.pruners:
            for layer in p.layers:
                shard = layer.target.shard
                mask = p.full_mask(layer)
                masks[layer.name] = mask if shard is None else shard.dtensor(mask, shard.shape)
        return masks

    def squash(self) -> nn.Module:
        """Bake the zeros into the model and return it plain: see :func:`pytorch_pruner.export.squash`."""
        return squash(self)

    remove = squash

    # -- state -----------------------------------------------------------------------------
    def state_dict(self, *, local: bool = False) -> dict[str, Any]:
        """Everything needed to resume: step, hook counters, masks, scores, and the config.

        Under FSDP2 the tensors are DTensors sharded like the weights, for
        ``torch.distributed.checkpoint`` (see docs/distributed.md); with ``local=True`` they are this
        rank's parts as plain tensors instead (a file per rank, for ``torch.save``), which
        :meth:`load_state_dict` on the same rank of the same world size accepts as well."""
        self.require_started("state_dict")
        return {
            "format": STATE_FORMAT,
            "config": dump_config(self.config),
            "step": self.step,
            "pruned_at": self._pruned_at,
            "scored_at": self._scored_at,
            "pruners": [p.state_dict(local=local) for p in self.pruners],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; call after :meth:`on_train_begin`.

        Everything is checked first (:meth:`check_state_dict`), so a bad state leaves this object
        as it was.

        Raises:
            StateError: the state is of another format, config or model, or is damaged.
        """
        self.require_started("load_state_dict")
        self.check_state_dict(state)
        self._follow_weights()  # masks beside the weights (moved, or materialized from meta) before they are applied
        pruner_states = state["pruners"]
        for pruner, ps in zip(self.pruners, pruner_states, strict=True):
            pruner.load_state_dict(ps)
        self.step = int(state["step"])
        self._pruned_at = int(state["pruned_at"])
        self._scored_at = int(state["scored_at"])

    def check_state_dict(self, state: Mapping[str, Any]) -> None:
        """Raise :class:`StateError` unless :meth:`load_state_dict` would accept *state*; changes nothing.

        Raises:
            StateError: the state is of another format, config or model, or is damaged (the
                message says which part).
        """
        self.require_started("check_state_dict")
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise StateError(f"not a pytorch-pruner state of format {STATE_FORMAT} (found {found!r})")
        try:
            saved = loads_config(state["config"], "saved config")
        except (ConfigError, KeyError, TypeError, AttributeError) as err:
            raise StateError(f"the saved config is damaged: {err}") from None
        if saved != self.config:
            raise StateError(
                "the state was saved with another config; load it into a Pruning built from the same "
                f"config.\nsaved:\n{dump_config(saved)}\ncurrent:\n{dump_config(self.config)}"
            )
        pruner_states = state.get("pruners")
        if not isinstance(pruner_states, list) or len(pruner_states) != len(self.pruners):
            raise StateError("the state holds another number of pruners than this config")
        for i, (pruner, ps) in enumerate(zip(self.pruners, pruner_states, strict=True)):
            try:
                pruner.check_state(ps, f"pruners[{i}]")
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise StateError(f"the state does not fit this model: {err}") from None
        for key, lowest in (("step", 0), ("pruned_at", -1), ("scored_at", -1)):
            value = state.get(key)
            if type(value) is not int or value < lowest:  # bool and float are not step counts
                raise StateError(
                    f"the state is damaged: {key!r} is {value!r} ({type(value).__name__}), expected an int >= "
                    f"{lowest}; "
                    "use a state written by Pruning.state_dict"
                )
