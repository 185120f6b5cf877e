"""``prune_oneshot_``: data-aware one-shot pruning, one transformer block at a time (SPEC §11)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from ..config import PrunerSettings, PruningConfig, load_config
from ..criteria import Wanda
from ..criteria.activation import HessianStats
from ..distributed import refuse_sharded
from ..errors import ConfigError, NoMatchingLayersError, PruningError
from ..pruner import Pruner
from ..targets import Target, WeightChecker, find_targets, prunable_layers, unwrap_model
from .blocks import (
    BlockInputs,
    Blocks,
    capture_inputs,
    check_batch,
    find_blocks,
    hidden_of,
    rows_of,
    run_batch,
    sub_batch_rows,
    sub_batches,
)
from .owl import outlier_ratio, owl_sparsities
from .report import OneShotBlock, OneShotLayer, OneShotReport
from .sparsegpt import prepare_hessian_, sparsegpt_

__all__ = ["prune_oneshot_"]

_ONESHOT_TYPES = ("magnitude", "wanda", "sparsegpt")


def _settings(config: PruningConfig) -> list[PrunerSettings]:
    settings = []
    for s in config.resolved():
        if s.criterion.needs_grad or s.criterion.fixed_mask:
            why = "needs gradients" if s.criterion.needs_grad else "keeps the pattern a model has while it trains"
            raise ConfigError(
                f"{s.path}.prune_type: {s.prune_type!r} {why}, it does not prune one-shot; allowed in "
                f"prune_oneshot_: {', '.join(_ONESHOT_TYPES)} (use {s.prune_type!r} with Pruning during training)"
            )
        settings.append(dataclasses.replace(s, start_step=0, end_step=0))
    return settings


def _targets(
    model: nn.Module, settings: list[PrunerSettings]
) -> tuple[list[list[Target]], list[tuple[int, Target, str]]]:
    """Per pruner its layers to prune, and ``(pruner, layer, reason)`` for those the weight checks keep dense.

    The checks are training's (:class:`~pytorch_pruner.targets.WeightChecker`, SPEC §10): weights
    shared with the embeddings or the output embeddings (unless named in ``names``), parametrized,
    integer/quantized or empty weights, weights shared with a layer pruned already. Frozen weights
    are pruned: no one-shot criterion needs gradients.
    """
    claimed: set[str] = set()
    checker = WeightChecker(model)
    out = []
    left_dense: list[tuple[int, Target, str]] = []
    for i, s in enumerate(settings):
        mine = [t for t in find_targets(model, s.prune_layer_type, s.names, s.excluded) if t.name not in claimed]
        claimed.update(t.name for t in mine)
        kept, dense = checker.split(mine, needs_grad=s.criterion.needs_grad, criterion=s.prune_type, names=s.names)
        reasons = dict(dense)
        left_dense.extend((i, t, reasons[t.name]) for t in mine if t.name in reasons)
        mine = kept
        if s.criterion.oneshot_only:
            bad = [t.name for t in mine if t.kind not in ("Linear", "Conv1D")]
            if bad:
                raise ConfigError(
                    f"{s.path}.prune_type: sparsegpt prunes Linear and Conv1D layers, not the convolutions {bad}; "
                    "exclude them (not_to_prune_names) or prune them with another pruner using wanda"
                )
        out.append(mine)
    if not claimed:
        layers = [f"{t.name} ({t.kind})" for t in prunable_layers(model)]
        raise NoMatchingLayersError(
            "no layer of the model matches any pruner; check prune_layer_type, names and the exclusions. "
            f"Prunable layers of this model: {layers or 'none'}"
        )
    return out, left_dense


def _block_of(name: str, blocks: Blocks) -> int | None:
    if blocks.whole:
        return 0
    for i, prefix in enumerate(blocks.names):
        if name == prefix or name.startswith(prefix + "."):
            return i
    return None


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar when tqdm is installed (optional dependency), else plain lines on stderr."""
    if not enabled:
        return _Plain(total, desc, quiet=True)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(total, desc, quiet=False)
    return tqdm(total=total, desc=desc, unit="block")


class _Plain:
    def __init__(self, total: int, desc: str, quiet: bool) -> None:
        self.total, self.desc, self.quiet, self.n = total, desc, quiet, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.quiet:
            print(f"{self.desc}: block {self.n}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _move(module: nn.Module, device: torch.device | None) -> dict[str, torch.device]:
    """Move *module* to *device*; return where each of its tensors was (for :func:`_restore`)."""
    if device is None:
        return {}
    where = {name: t.device for name, t in [*module.named_parameters(), *module.named_buffers()]}
    module.to(device)
    return where


def _restore(module: nn.Module, where: dict[str, torch.device]) -> None:
    if not where:
        return
    devices = set(where.values())
    if len(devices) == 1:
        module.to(next(iter(devices)))
        return
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if name in where:
            t.data = t.data.to(where[name])


@contextmanager
def _outside_blocks_on(model: nn.Module, blocks: Blocks, device: torch.device | None) -> Iterator[None]:
    """The model's tensors outside the blocks (embeddings, rotary tables, ...) on *device* for the capture."""
    if device is None or blocks.whole:
        yield
        return
    inside = {id(t) for block in blocks.modules for t in [*block.parameters(), *block.buffers()]}
    moved: list[tuple[torch.Tensor, torch.device]] = []
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in inside and t.device != device:
            moved.append((t, t.device))
            t.data = t.data.to(device)
    # non-persistent buffers held as plain attributes (e.g. rotary inv_freq) move with the module above
    try:
        yield
    finally:
        for t, where in moved:
            t.data = t.data.to(where)


def _first_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def _calibration_mode(model: nn.Module) -> Iterator[None]:
    """eval(), no KV cache, no grad; the model's own settings back afterwards."""
    training = model.training
    config = getattr(unwrap_model(model), "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    if use_cache:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)
        if use_cache:
            config.use_cache = use_cache  # type: ignore[union-attr]


def _checked_calls(calibration: Iterable[Any]) -> list[BlockInputs]:
    """Every calibration batch checked (:func:`check_batch`) as a model call ``(args, kwargs)``,
    still on its own device; a clear error for a non-iterable or an empty one."""
    if isinstance(calibration, torch.Tensor | Mapping) or not isinstance(calibration, Iterable):
        raise PruningError(
            f"calibration must be an iterable of batches (dicts of tensors or input-id tensors), not one "
            f"{type(calibration).__name__}; e.g. pass [batch]"
        )
    out: list[BlockInputs] = []
    for index, raw in enumerate(calibration):
        batch = check_batch(raw, index)
        out.append(((), batch) if isinstance(batch, dict) else ((batch,), {}))
    if not out:
        raise PruningError("calibration is empty: give at least one batch (e.g. 128 sequences of 2048 tokens)")
    return out


def _whole_inputs(calibration: Iterable[Any], device: torch.device) -> list[BlockInputs]:
    return [
        (
            tuple(a.to(device) for a in args),
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()},
        )
        for args, kw in _checked_calls(calibration)
    ]


def _tokens(inputs: list[BlockInputs]) -> int:
    total = 0
    for args, kwargs in inputs:
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("input_ids", kwargs.get("inputs_embeds")))
        if isinstance(hidden, torch.Tensor):
            total += hidden.numel() // (hidden.shape[-1] if hidden.is_floating_point() else 1)
    return total


def _check_statistics(pruners: list[Pruner], block: str, only: list[int] | None = None) -> None:
    """A clear error for a layer that saw no input, or NaN/inf in its statistics (*only*: the
    layers of these indices, of each of *pruners*)."""
    for p in pruners:
        crit = p.criterion
        if not crit.needs_inputs:
            continue
        indices = range(len(p.layers)) if only is None else only
        tokens = crit.tokens()  # type: ignore[attr-defined]
        for index in indices:
            if tokens[index] == 0:
                raise PruningError(
                    f"{p.layers[index].name} saw no input while {block or 'the model'} ran on the calibration data: "
                    "it is not on the forward path; exclude it (not_to_prune_names) or prune it with magnitude"
                )
        bad = crit.nonfinite_layers(only)  # type: ignore[attr-defined]
        if bad:
            names = [p.layers[i].name for i in bad]
            raise PruningError(
                f"NaN/inf activations reach {names} in {block or 'the model'}: check the calibration batches "
                "(token ids in range, attention masks) and the model's dtype (fp16 overflow: use bf16 or float32)"
            )


@torch.no_grad()
def _sparsegpt_prune(pruner: Pruner) -> None:
    """Prune each layer of *pruner* with SparseGPT from the Hessians of one statistics pass, then
    apply the masks (see :func:`_sparsegpt_layers`)."""
    _sparsegpt_layers(pruner, range(len(pruner.layers)))
    _sparsegpt_done(pruner)


def _sparsegpt_done(pruner: Pruner) -> None:
    pruner.follow_weights_()  # masks still deferred (a layer left at sparsity 0) come back all kept
    pruner.current_sparsity = pruner.settings.final_sparsity
    pruner.refresh_masks()
    pruner.apply_masks()


@torch.no_grad()
def _sparsegpt_layers(pruner: Pruner, layers: Iterable[int]) -> None:
    """Prune the layers *indices* of *pruner* with SparseGPT (their Hessians filled), one Hessian
    at a time: the layers reading one input (q/k/v, gate/up) share it; it is prepared (consumed)
    when first needed and freed after its last layer. Their weights are rewritten; their masks are
    set (a deferred mask becomes the layer's own), :func:`_sparsegpt_done` applies them.
    *layers*: indices into ``pruner.layers``."""
    sparsity = pruner.settings.final_sparsity
    pattern = pruner.pattern
    stats_list = pruner.criterion.stats  # type: ignore[attr-defined]
    groups: dict[int, list[int]] = {}
    for index in layers:
        stats = stats_list[index]
        if not isinstance(stats, HessianStats):  # unreachable: sparsegpt keeps Hessians
            raise PruningError(f"sparsegpt has no Hessian for {pruner.layers[index].name}")
        groups.setdefault(id(stats), []).append(index)
    for indices in groups.values():
        stats = stats_list[indices[0]]
        if sparsity <= 0.0:
            stats.release_()
            continue
        ready = prepare_hessian_(stats.take_(), name=pruner.layers[indices[0]].name)
        for index in indices:
            layer = pruner.layers[index]
            target = layer.target
            weight = target.weight
            new, keep = sparsegpt_(
                target.to_2d(weight.detach()), None, sparsity, pattern, name=layer.name, prepared=ready
            )
            weight.copy_(target.from_2d(new.to(weight.dtype)))
            del new
            mask = keep if keep.shape == layer.keep.shape else pattern.reduce(keep.float()) > 0
            del keep
            if layer.keep.is_meta:  # deferred (Pruner.defer_masks_): this is its first decision
                layer.keep = mask
            else:
                layer.keep.copy_(mask)
            del mask
        del ready


def _run(block: nn.Module, inputs: list[BlockInputs], tokens: int | None, outputs: bool, fresh: bool = False) -> None:
    """Run *block* on every calibration batch, sub-batches of at most *tokens* tokens at a time.

    With *outputs*, each batch's hidden states are replaced by the block's output, batch by batch:
    written over them in place, or (*fresh*) into new tensors, leaving the tensors of the calls in
    *inputs* as they were (the list itself gets the new calls).
    """
    for j, call in enumerate(inputs):
        rows = sub_batch_rows(block, call, tokens)
        into = None
        if outputs:
            hidden = hidden_of(call)
            into = torch.empty_like(hidden, memory_format=torch.contiguous_format) if fresh else hidden
        inputs[j] = run_batch(block, call, rows, into=into)


def _owl_allocation(
    settings: list[PrunerSettings],
    in_block: list[list[list[Target]]],
    blocks: Blocks,
    inputs: list[BlockInputs],
    device: torch.device | None,
    progress: bool,
    tokens: int | None,
) -> tuple[list[list[float]], list[list[float | None]]]:
    """Per pruner and block: the OWL sparsity and outlier ratio (a dense block-by-block pass)."""
    n = len(blocks.modules)
    sparsity = [[s.final_sparsity] * n for s in settings]
    ratios: list[list[float | None]] = [[None] * n for _ in settings]
    owl = [i for i, s in enumerate(settings) if s.owl]
    current = list(inputs)
    bar = _progress(n, "OWL outlier ratios", progress)
    try:
        for b, block in enumerate(blocks.modules):
            where = _move(block, device)
            try:
                criteria: list[tuple[int, Pruner]] = []
                for i in owl:
                    s = dataclasses.replace(settings[i], prune_type="wanda", criterion=Wanda)
                    p = Pruner(s, in_block[i][b])
                    if p.layers:
                        p.criterion.count_eval = True  # type: ignore[attr-defined]
                        criteria.append((i, p))
                try:
                    # the prune pass needs *inputs* as they are: the first block writes new tensors
                    # (then later blocks overwrite those)
                    _run(block, current, None if blocks.whole else tokens, b + 1 < n and not blocks.whole, b == 0)
                    _check_statistics([p for _, p in criteria], blocks.names[b])
                    for i, p in criteria:
                        ratios[i][b] = outlier_ratio(p.criterion.element_scores(), settings[i].owl_m)  # type: ignore[attr-defined]
                finally:
                    for _, p in criteria:
                        p.criterion.remove_hooks()
            finally:
                _restore(block, where)
            bar.update(1)
    finally:
        bar.close()
    for i in owl:
        s = settings[i]
        present = [b for b in range(n) if ratios[i][b] is not None]
        weights = [sum(t.weight.numel() for t in in_block[i][b]) for b in present]
        values = owl_sparsities(
            [float(ratios[i][b]) for b in present],  # type: ignore[arg-type]
            weights,
            s.final_sparsity,
            s.owl_lambda,
            cap=s.max_sparsity_ratio_per_layer,
        )
        for b, v in zip(present, values, strict=True):
            sparsity[i][b] = v
    return sparsity, ratios


def prune_oneshot_(
    model: nn.Module,
    config: str | os.PathLike[str] | Mapping[str, Any] | PruningConfig,
    calibration: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    restore_on_error: bool = True,
    sub_batch_tokens: int | None = 512,
) -> OneShotReport:
    """Prune *model* in place, now, from calibration data, one transformer block at a time.

    The inputs of block b are the outputs of the already pruned blocks < b, so memory holds one
    block's activations at a time (SPEC §11): the hidden states of the calibration set at one block
    boundary (each batch's block output is written over its input), plus one sub-batch's
    activations inside the block (see *sub_batch_tokens*) and the block's statistics. For each
    block: the criterion's hooks collect the input statistics of its layers while the cached
    inputs run through it (``wanda``: mean x²; ``sparsegpt``: the Hessian), the block is pruned,
    and it runs again to give the next block's inputs. ``sparsegpt`` fills one Hessian at a time:
    its layers are grouped by the input they read (q/k/v, o, gate/up, down), and the groups are
    pruned in the reverse order of the block's forward, each from its own pass over the data that
    stops the forward once the group has seen its input; the masks and weights are those of one
    pass over the unpruned block (a layer's input depends only on the layers before it), with
    one group's Hessian alive instead of all of them; the largest one's pass runs each sub-batch
    as two halves and gathers its layer input of the whole sub-batch before each update (the same
    update), so that Hessian sits next to half a sub-batch's activations. ``magnitude`` needs no
    data: when no pruner needs it (and no OWL), the batches are only checked and counted, never run. With
    ``owl: true`` a dense pass first gives each block its own sparsity (OWL), with the target as
    the weighted mean (that pass holds a second copy of the block-boundary hidden states).

    Args:
        model: any ``nn.Module``; transformers decoders (Llama-style ``model.layers``, GPT-2's
            ``transformer.h``, BERT's ``encoder.layer``) are split into blocks; a model with no
            layer list is one block (with a warning). Layers outside the blocks (e.g. ``lm_head``)
            stay dense and are listed as skipped. The weight checks of training (SPEC §10) apply:
            a weight tied to the embeddings or the output embeddings (unless named in ``names``),
            parametrized, integer or empty stays dense, with the reason in the report and a
            warning; frozen weights are pruned (one-shot criteria need no gradients).
        config: anything :class:`~pytorch_pruner.Pruning` takes, with ``prune_type`` ``wanda``,
            ``sparsegpt`` or ``magnitude``; ``start_step``/``end_step`` are ignored. ``prune_domain``:
            ``global`` ranks over the layers of one block, ``local`` per layer, ``row`` per output row
            (sparsegpt chooses per 128-column block itself and ignores it).
        calibration: an iterable of batches: dicts of tensors passed as ``model(**batch)``, or
            integer tensors of input ids ``[batch, sequence]``.
        device: run each block on this device (moved there one at a time and back after), e.g.
            ``"cuda"`` for a model kept on the CPU; default: where the model is.
        progress: a progress bar per block (tqdm when installed, else a line per block on stderr).
        restore_on_error: keep a CPU copy of each block's original weights while the run lasts, so an
            error at any block leaves the whole model as it was (costs host memory: sparsegpt the size
            of the pruned weights, magnitude and wanda only the original values where they wrote
            zeros; ``False`` saves it, and an error then leaves the earlier blocks pruned, and with
            sparsegpt the layers of the failing block that were pruned before it showed).
        sub_batch_tokens: run each block on sub-batches of at most this many tokens (whole
            sequences, at least one), which bounds the activations inside a block (attention scores,
            MLP intermediates, the criteria's copies of layer inputs) whatever the calibration batch
            size; the statistics are sums over tokens, so the result is the same up to float
            rounding. Only transformers' layers are split (batch-first by convention), and only
            batches whose tensor arguments of 2+ dims all have the batch size or 1 first (not e.g.
            Bloom's ALiBi bias). ``None``: whole calibration batches.

    Returns:
        A :class:`~pytorch_pruner.oneshot.OneShotReport` (``print`` it for per-layer and per-block
        tables). Pruned weights are exactly 0.

    Raises:
        ConfigError: the config is invalid, or asks for a criterion that can't prune one-shot.
        NoMatchingLayersError: no layer matches the config.
        PruningError: bad calibration data (wrong type, empty, NaN activations); the model is unchanged.

    Example:
        >>> import warnings
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> config = {"prune_type": "wanda", "pattern": "1x1", "target_sparsity": 0.5, "prune_domain": "row"}
        >>> with warnings.catch_warnings():  # no transformer blocks here: one block, with a warning
        ...     warnings.simplefilter("ignore")
        ...     report = prune_oneshot_(model, config, [{"input": torch.randn(4, 8)}], progress=False)
        >>> report.sparsity, int((model[2].weight == 0).sum())
        (0.5, 8)
    """
    started = time.perf_counter()
    if sub_batch_tokens is not None and (
        isinstance(sub_batch_tokens, bool) or not isinstance(sub_batch_tokens, int) or sub_batch_tokens < 1
    ):
        raise PruningError(
            f"sub_batch_tokens must be a positive int (tokens per block call) or None (whole calibration batches), "
            f"got {sub_batch_tokens!r}"
        )
    tokens = sub_batch_tokens
    refuse_sharded(model, "prune_oneshot_")
    settings = _settings(load_config(config))
    targets, checked_out = _targets(model, settings)
    if checked_out:
        reasons = "\n".join(f"  {t.name}: {reason}" for _, t, reason in checked_out)
        warnings.warn(f"prune_oneshot_: these layers stay dense (see the report):\n{reasons}", stacklevel=2)
    blocks = find_blocks(model)
    n = len(blocks.modules)
    in_block: list[list[list[Target]]] = [[[] for _ in range(n)] for _ in settings]
    outside: list[tuple[int, Target]] = []
    for i, mine in enumerate(targets):
        for t in mine:
            b = _block_of(t.name, blocks)
            if b is None:
                outside.append((i, t))
            else:
                in_block[i][b].append(t)
    if outside:
        warnings.warn(
            f"prune_oneshot_: layers outside the transformer blocks stay dense (no calibration inputs reach them "
            f"block by block): {[t.name for _, t in outside]}; exclude them (not_to_prune_names) to silence this",
            stacklevel=2,
        )
    dev = torch.device(device) if device is not None else None
    backups: list[_Backup] = []
    report = OneShotReport()
    # magnitude needs no data: when no pruner reads inputs (and no OWL pass), the batches are
    # checked and counted but never run, and no hidden states are held
    needs_data = any(s.criterion.needs_inputs or s.owl for s in settings)
    with _calibration_mode(model):
        run_device = dev or _first_device(model)
        if not needs_data:
            inputs = []
            report.tokens = _tokens(_checked_calls(calibration))  # checked, never run
        elif blocks.whole:
            inputs = _whole_inputs(calibration, run_device)
        else:
            with _outside_blocks_on(model, blocks, dev):
                inputs = capture_inputs(model, blocks.modules[0], calibration, run_device)
        if needs_data:
            report.tokens = _tokens(inputs)
        if any(s.owl for s in settings):
            sparsity, ratios = _owl_allocation(settings, in_block, blocks, inputs, dev, progress, tokens)
            report.owl = True
        else:
            sparsity = [[s.final_sparsity] * n for s in settings]
            ratios = [[None] * n for _ in settings]
        bar = _progress(n, "prune_oneshot_", progress)
        try:
            for b, block in enumerate(blocks.modules):
                where = _move(block, dev)
                try:
                    pruners = _prune_block(
                        settings, in_block, sparsity, b, block, inputs, blocks, backups, restore_on_error, tokens
                    )
                    if needs_data and b + 1 < n and not blocks.whole:
                        _run(block, inputs, tokens, True)  # the outputs replace the inputs, batch by batch
                finally:
                    _restore(block, where)
                _record(report, pruners, b, blocks, ratios)
                del pruners  # their statistics (sparsegpt: the block's Hessians) are not needed by the next block
                bar.update(1)
        except BaseException:
            for backup in reversed(backups):
                backup.restore_()
            raise
        finally:
            bar.close()

    def dense(i: int, t: Target, block: int, reason: str) -> OneShotLayer:
        """The report row of a layer left dense, with *reason*."""
        weight = t.weight
        zeros = float((weight == 0).float().mean())
        shape = tuple(weight.shape)
        return OneShotLayer(
            block, t.name, shape, settings[i].prune_type, settings[i].pattern.name, 0.0, zeros, weight.numel(),
            skipped=reason,
        )  # fmt: skip

    for i, t, reason in checked_out:
        b = _block_of(t.name, blocks)
        report.layers.append(dense(i, t, -1 if b is None else b, reason))
    for i, t in outside:
        outside_reason = "outside the transformer blocks (no calibration inputs); exclude it to silence this"
        report.layers.append(dense(i, t, -1, outside_reason))
    report.seconds = time.perf_counter() - started
    return report


class _Backup:
    """A CPU copy of one weight as it was before the one-shot run (``restore_on_error``).

    Whole (sparsegpt rewrites the kept weights too), or compact (:meth:`before_masking`:
    magnitude, wanda write only zeros): just the original values at the positions that will be
    zero once the mask is applied (in row-major order), about half the copy at 50% sparsity.
    :meth:`restore_` puts the original back either way.
    """

    def __init__(self, weight: torch.Tensor, saved: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.compact = saved is not None
        self.saved = saved if saved is not None else weight.detach().to("cpu", copy=True)

    @classmethod
    @torch.no_grad()
    def before_masking(cls, weight: torch.Tensor, keep: torch.Tensor) -> _Backup:
        """The compact backup of *weight* before *keep* (bool, the weight's shape) is applied: the
        values at every position that will then be zero, the pruned ones and those zero already."""
        zero = ~keep
        zero |= weight.detach() == 0
        return cls(weight, torch.masked_select(weight.detach(), zero).to("cpu"))

    @torch.no_grad()
    def restore_(self) -> None:
        if self.compact:
            self.weight.masked_scatter_(self.weight == 0, self.saved.to(self.weight.device))
        else:
            self.weight.copy_(self.saved.to(self.weight.device))


def _prune_block(
    settings: list[PrunerSettings],
    in_block: list[list[list[Target]]],
    sparsity: list[list[float]],
    b: int,
    block: nn.Module,
    inputs: list[BlockInputs],
    blocks: Blocks,
    backups: list[_Backup],
    keep_backup: bool,
    tokens: int | None,
) -> list[tuple[int, Pruner]]:
    pruners: list[tuple[int, Pruner]] = []
    try:
        for i, s in enumerate(settings):
            if not in_block[i][b]:
                continue
            p = Pruner(dataclasses.replace(s, target_sparsity=sparsity[i][b]), in_block[i][b])
            if p.criterion.needs_inputs:
                p.criterion.count_eval = True  # type: ignore[attr-defined]
            p.defer_masks_()  # not held through the statistics pass
            pruners.append((i, p))
        readers = [p for _, p in pruners if p.criterion.needs_inputs and p.layers]
        run_tokens = None if blocks.whole else tokens
        plan = None
        if readers and all(p.criterion.oneshot_only for p in readers) and _ONE_GROUP_AT_A_TIME:
            groups = _hessian_groups(block, readers, inputs, None if blocks.whole else 1)
            plan = None if groups is None else _passes(groups)
        if plan is not None:
            sizes = [sum(_hessian_bytes(g) for g in groups) for groups in plan]
            for groups, size in zip(plan, sizes, strict=True):
                halves = size == max(sizes)  # the passes at the peak: see _sparsegpt_pass
                _sparsegpt_pass(block, groups, inputs, run_tokens, blocks.names[b], backups, keep_backup, halves)
            for p in readers:
                _sparsegpt_done(p)
        elif readers:
            _run(block, inputs, run_tokens, False)
            _check_statistics([p for _, p in pruners], blocks.names[b])
        for _, p in pruners:
            if plan is not None and p in readers:
                continue  # pruned above
            p.follow_weights_()  # the masks back, all kept
            if p.criterion.oneshot_only:
                if keep_backup:
                    backups.extend(_Backup(layer.target.weight) for layer in p.layers)
                _sparsegpt_prune(p)
            else:
                p.prune(0, low_memory=True, apply=False)  # scores made layer by layer: one layer's at a time
                if keep_backup:  # only zeros will be written: keep the values they replace, layer by layer
                    backups.extend(
                        _Backup.before_masking(layer.target.weight, p.full_mask(layer)) for layer in p.layers
                    )
                p.apply_masks()
    finally:
        for _, p in pruners:
            p.criterion.remove_hooks()
    return pruners


#: sparsegpt fills the Hessians pass by pass, in the reverse order of the block's inputs, at most
#: the largest one's bytes at a time (see :func:`_passes`); False: one statistics pass fills them
#: all (the tests compare both)
_ONE_GROUP_AT_A_TIME = True


class _GroupSeen(BaseException):
    """Raised by a statistics pass's hook once every layer of its group has seen this call's input:
    the rest of the block's forward is not needed. A BaseException, so that a model's own
    ``except Exception`` inside its forward does not swallow it and run the rest of the block."""


#: one Hessian group: the layers (pruner, index) that read one input tensor of the block
_Group = list[tuple[Pruner, int]]


def _hessian_groups(
    block: nn.Module, readers: list[Pruner], inputs: list[BlockInputs], tokens: int | None
) -> list[_Group] | None:
    """The sparsegpt layers of *block* grouped by the input they read (q/k/v, o, gate/up, down),
    in the order the block's forward reads those inputs, found from one forward of the first
    calibration batch's first *tokens* tokens (whole sequences, at least one; None: the whole
    batch); None (one pass for all Hessians) when that order can't be relied on: a layer called
    more than once in that forward, or not at all (e.g. an MoE expert no token reached).

    Pruning the groups in the reverse of that order, each from a pass of the block as it is then,
    gives the masks and weights of one pass over the unpruned block: a layer's input depends only
    on the layers before it, which are still unpruned when it is pruned.
    """
    groups: list[_Group] = []
    calls: dict[tuple[int, int], int] = {}
    last: list[weakref.ref[torch.Tensor] | None] = [None]

    def recorder(p: Pruner, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls[(id(p), index)] = calls.get((id(p), index), 0) + 1
            before = last[0]
            if groups and x is not None and before is not None and before() is x:
                groups[-1].append((p, index))
            else:
                groups.append([(p, index)])
            last[0] = None if x is None else weakref.ref(x)

        return hook

    for p in readers:
        p.criterion.remove_hooks()  # type: ignore[attr-defined]
    handles = [
        p.criterion.slots[i].module.register_forward_pre_hook(recorder(p, i))  # type: ignore[union-attr]
        for p in readers
        for i in range(len(p.layers))
    ]
    try:
        first = inputs[0]
        block_call = next(sub_batches(first, sub_batch_rows(block, first, tokens)))
        block(*block_call[0], **block_call[1])
    finally:
        for handle in handles:
            handle.remove()
    everyone = [(id(p), i) for p in readers for i in range(len(p.layers))]
    if any(calls.get(key, 0) != 1 for key in everyone):
        for p in readers:
            p.criterion.attach_hooks()  # type: ignore[attr-defined]
        return None
    return groups


def _hessian_bytes(group: _Group) -> int:
    """The bytes of the Hessians *group* fills: one per pruner (its layers share it)."""
    sizes = {id(p): p.criterion.stats[i].features ** 2 * 4 for p, i in group}  # type: ignore[attr-defined]
    return sum(sizes.values())


def _passes(groups: list[_Group]) -> list[list[_Group]]:
    """*groups* (in the forward's order) as statistics passes, last input first: each pass takes the
    next groups back to front while their Hessians together stay within the largest group's (so
    a Llama block makes two passes: down_proj's, then gate/up's, o's and q/k/v's together; each
    pass costs a forward of the block up to its deepest input)."""
    budget = max(_hessian_bytes(g) for g in groups)
    passes: list[list[_Group]] = []
    size = 0
    for group in reversed(groups):
        need = _hessian_bytes(group)
        if passes and size + need <= budget:
            passes[-1].append(group)
            size += need
        else:
            passes.append([group])
            size = need
    return passes


def _halves(start: int, stop: int) -> list[tuple[int, int]]:
    """Rows ``start:stop`` as two halves (the first the larger), or whole when it is one row."""
    if stop - start < 2:
        return [(start, stop)]
    middle = start + (stop - start + 1) // 2
    return [(start, middle), (middle, stop)]


def _sparsegpt_pass(
    block: nn.Module,
    groups: list[_Group],
    inputs: list[BlockInputs],
    tokens: int | None,
    name: str,
    backups: list[_Backup],
    keep_backup: bool,
    halves: bool,
) -> None:
    """Fill the Hessians of *groups* from the calibration data, then prune their layers
    (:func:`_sparsegpt_layers`). Every block call stops once all layers of *groups* have seen
    their input.

    With *halves* (for the pass of the block's largest Hessians, a Llama block's down_proj's: its
    Hessian next to the MLP's intermediates is the peak of a run), each sub-batch of two rows or
    more runs as two halves, and each group's inputs from the halves are gathered into one tensor of
    the sub-batch's rows before they go into its Hessian: the same update from the same values as
    one call on the whole sub-batch (a layer's input rows do not depend on the other rows of the
    call; bitwise on the CPU, tested), with half a sub-batch's activations alive next to the
    Hessian. Inputs are gathered along their first dimension: the rows (transformers' blocks are
    batch-first), or for a 2-D input the rows' tokens flattened (OPT's MLP). A sub-batch whose
    halves do not give every group one such input (a layer not reached, called twice, or reading
    e.g. a sequence-first tensor) runs again whole, and so does the rest of the pass. The other
    passes (a Llama block's q/k/v, o and gate/up: 3 MiB of Hessians against 9 on the memory
    benchmark's model) run whole sub-batches: halves there would cost time, not peak memory.
    """
    mine: dict[int, tuple[Pruner, list[int]]] = {}
    for group in groups:
        for p, index in group:
            mine.setdefault(id(p), (p, []))[1].append(index)
    modules = [p.criterion.slots[i].module for group in groups for p, i in group]
    waiting: set[int] = set()
    # the call running: None for a whole sub-batch (each group's input goes into its Hessian at
    # once), else (first row within the sub-batch, rows, the sub-batch's rows) of a half
    half: list[tuple[int, int, int] | None] = [None]
    gathered: list[torch.Tensor | None] = [None] * len(groups)
    filled = [0] * len(groups)  # rows gathered per group; -1: the halves can't give its input

    def observe(g: int, x: torch.Tensor) -> None:
        for p, index in groups[g]:
            p.criterion.observe_(index, x)  # type: ignore[attr-defined]

    def reader(g: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if x is None:
                return
            if half[0] is None:
                observe(g, x)
                return
            offset, rows, total = half[0]
            buffer = gathered[g]
            batch_first = x.dim() > 2 and x.shape[0] == rows
            flattened = x.dim() == 2 and x.shape[0] % rows == 0  # [rows * tokens, features] (OPT's MLP)
            if buffer is None and offset == 0 and (batch_first or flattened):
                buffer = gathered[g] = x.new_empty((total * (x.shape[0] // rows), *x.shape[1:]))
            per_row = 0 if buffer is None else buffer.shape[0] // total
            if (
                buffer is None
                or filled[g] != offset
                or x.shape != (rows * per_row, *buffer.shape[1:])
                or x.dtype != buffer.dtype
                or x.device != buffer.device
            ):
                filled[g] = -1
                return
            buffer[offset * per_row : (offset + rows) * per_row].copy_(x)
            filled[g] += rows

        return hook

    def stop(module: nn.Module, args: tuple[Any, ...]) -> None:
        waiting.discard(id(module))
        if not waiting:
            raise _GroupSeen

    def run(call: BlockInputs) -> None:
        waiting.update(id(m) for m in modules)
        with suppress(_GroupSeen):
            block(*call[0], **call[1])

    handles = []
    try:
        # the first layer of each group reads its input; then every layer's stop (hooks run in the order added)
        firsts = [group[0][0].criterion.slots[group[0][1]].module for group in groups]
        handles = [m.register_forward_pre_hook(reader(g)) for g, m in enumerate(firsts)]  # type: ignore[union-attr]
        handles += [m.register_forward_pre_hook(stop) for m in modules]  # type: ignore[union-attr]
        for call in inputs:
            rows = sub_batch_rows(block, call, tokens)
            if rows is None:
                run(call)
                continue
            batch = hidden_of(call).shape[0]
            for start in range(0, batch, rows):
                end = min(start + rows, batch)
                pieces = _halves(start, end) if halves else [(start, end)]
                if len(pieces) > 1:
                    for first, last in pieces:
                        half[0] = (first - start, last - first, end - start)
                        run(rows_of(call, first, last))
                    half[0] = None
                    halves = all(n == end - start for n in filled)  # else whole sub-batches from here on
                    if halves:
                        for g, x in enumerate(gathered):
                            observe(g, x)  # type: ignore[arg-type]
                        del x
                    gathered[:] = [None] * len(groups)
                    filled[:] = [0] * len(groups)
                    if halves:
                        continue
                run(rows_of(call, start, end))
    finally:
        half[0] = None
        gathered[:] = [None] * len(groups)
        for handle in handles:
            handle.remove()
        for p, _ in mine.values():
            p.criterion.remove_hooks()
    for p, indices in mine.values():
        _check_statistics([p], name, indices)
    for p, indices in mine.values():
        if keep_backup:
            backups.extend(_Backup(p.layers[i].target.weight) for i in indices)
        _sparsegpt_layers(p, indices)  # one prepared Hessian at a time, each freed after its layers


def _record(
    report: OneShotReport, pruners: list[tuple[int, Pruner]], b: int, blocks: Blocks, ratios: list[list[float | None]]
) -> None:
    pruned = total = 0
    target_weighted = 0.0
    ratio: float | None = None
    for i, p in pruners:
        for layer in p.layers:
            report.layers.append(
                OneShotLayer(
                    b,
                    layer.name,
                    tuple(layer.target.weight.shape),
                    p.settings.prune_type,
                    p.pattern.name,
                    p.current_sparsity,
                    layer.sparsity,
                    layer.numel,
                )
            )
            pruned += layer.pruned_elements
            total += layer.numel
            target_weighted += p.current_sparsity * layer.numel
        for name, reason in p.skipped:
            report.layers.append(OneShotLayer(b, name, (), p.settings.prune_type, p.pattern.name, 0.0, 0.0, 0, reason))
        if ratios[i][b] is not None:
            ratio = ratios[i][b]
    if total:
        report.blocks.append(OneShotBlock(b, blocks.names[b], ratio, target_weighted / total, pruned / total))
