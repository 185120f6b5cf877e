"""Slimming BERT-style encoders: remove pruned FFN neurons and attention heads.

A layer is BERT-style when it has ``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense`` (BERT, RoBERTa, ELECTRA, MiniLM, ... in transformers).

* FFN neuron ``i`` goes when column ``i`` of ``output.dense`` is zero (``channelx1`` there), or when
  row ``i`` of ``intermediate.dense`` is zero (``1xchannel`` there): the neuron then outputs
  ``act(bias_i)`` for every input, which is folded into ``output.dense``'s bias.
* Head ``h`` goes when the ``head_dim`` columns it writes in ``attention.output.dense`` are zero
  (pattern ``head:<head_dim>`` there), or when its value rows and value bias are zero (its output
  is then zero). Its query/key/value rows go with it.

Saving and loading: transformers configs hold one ``intermediate_size`` and one
``num_attention_heads`` for all layers, and transformers 5 no longer re-applies ``pruned_heads``.
So the slimmed model's config also records the per-layer sizes (``slimmed_intermediate_sizes``,
``slimmed_num_attention_heads``), ``save_pretrained`` writes them, and :func:`load_slimmed` builds
the model at those sizes before loading the weights. ``intermediate_size`` is set to the widest
layer; with ``uniform_ffn=True`` every layer keeps that width (narrower layers keep some zero
neurons, which is still exact), so a plain ``from_pretrained`` loads it when no head was removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .slim import SlimmedLayer, SlimmingError, SlimReport, keep_at_least_one, new_linear, zero_rows

__all__ = ["find_bert_layers", "load_slimmed", "slim_bert_"]

_FFN_KEY = "slimmed_intermediate_sizes"
_HEADS_KEY = "slimmed_num_attention_heads"


def _has_linear(module: nn.Module, path: str) -> bool:
    for part in path.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return False
    return isinstance(module, nn.Linear)


def find_bert_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """The BERT-style layers of *model* as ``(qualified name, module)``, in module order.

    The modules are duck-typed transformers layers (any class with the attributes above), hence ``Any``.
    """
    parts = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")  # fmt: skip
    return [
        (name, m)
        for name, m in model.named_modules()
        if all(_has_linear(m, p) for p in parts) and hasattr(m.attention.self, "attention_head_size")
    ]


@torch.no_grad()
def _slim_heads(name: str, layer: Any, report: SlimReport) -> int:
    attn, out = layer.attention.self, layer.attention.output.dense
    d, heads = int(attn.attention_head_size), int(attn.num_attention_heads)
    if out.in_features != heads * d:
        report.skipped.append((f"{name}.attention", f"output.dense takes {out.in_features} inputs, not {heads}x{d}"))
        return heads
    silent = out.weight.reshape(out.out_features, heads, d).eq(0).all(dim=2).all(dim=0)
    value_zero = zero_rows(attn.value.weight.reshape(heads, -1))
    if attn.value.bias is not None:
        value_zero &= attn.value.bias.reshape(heads, d).eq(0).all(dim=1)
    keep = keep_at_least_one(~(silent | value_zero))
    if bool(keep.all()):
        return heads
    rows = keep.repeat_interleave(d)
    for proj in ("query", "key", "value"):
        old = getattr(attn, proj)
        setattr(attn, proj, new_linear(old, old.weight[rows], None if old.bias is None else old.bias[rows]))
    layer.attention.output.dense = new_linear(out, out.weight[:, rows], out.bias)
    kept = int(keep.sum())
    attn.num_attention_heads = kept
    attn.all_head_size = kept * d
    report.slimmed.append(SlimmedLayer(f"{name}.attention", "heads", heads, kept))
    return kept


@torch.no_grad()
def _ffn_keep(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(units that must stay, units whose constant output must be folded if removed)."""
    inner, outer = layer.intermediate.dense, layer.output.dense
    ignored = outer.weight.eq(0).all(dim=0)
    constant = zero_rows(inner.weight) & ~ignored
    return ~(ignored | constant), constant


@torch.no_grad()
def _slim_ffn(name: str, layer: Any, keep: torch.Tensor, constant: torch.Tensor, report: SlimReport) -> None:
    inner, outer = layer.intermediate.dense, layer.output.dense
    if bool(keep.all()):
        return
    bias = outer.bias
    fold = constant & ~keep
    if bool(fold.any()):
        act = layer.intermediate.intermediate_act_fn
        pre = inner.bias[fold] if inner.bias is not None else inner.weight.new_zeros(int(fold.sum()))
        shift = outer.weight[:, fold] @ act(pre)
        bias = shift if bias is None else bias + shift
    layer.intermediate.dense = new_linear(inner, inner.weight[keep], None if inner.bias is None else inner.bias[keep])
    layer.output.dense = new_linear(outer, outer.weight[:, keep], bias)
    report.slimmed.append(SlimmedLayer(f"{name}.intermediate", "neurons", keep.numel(), int(keep.sum())))


def slim_bert_(model: nn.Module, *, uniform_ffn: bool = False) -> SlimReport:
    """Remove pruned FFN neurons and attention heads of every BERT-style layer of *model*, in place.

    The slimmed model's outputs equal the pruned model's (to float rounding). Its ``config`` (when it
    has one) records the new per-layer sizes, so ``save_pretrained`` + :func:`load_slimmed` round-trip.

    Args:
        model: a transformers BERT-style model whose pruned weights are zero.
        uniform_ffn: give every layer the same FFN width (the widest needed), see the module doc.

    Returns:
        A :class:`~pytorch_pruner.speed.slim.SlimReport`.

    Raises:
        SlimmingError: *model* has no BERT-style layer.
    """
    layers = find_bert_layers(model)
    if not layers:
        raise SlimmingError(
            f"{type(model).__name__} has no BERT-style layer (attention.self.query/key/value, "
            "attention.output.dense, intermediate.dense, output.dense); use slim_ for other models"
        )
    report = SlimReport()
    heads = [_slim_heads(name, layer, report) for name, layer in layers]
    plans = [_ffn_keep(layer) for _, layer in layers]
    if uniform_ffn:
        width = max(int(keep_at_least_one(keep).sum()) for keep, _ in plans)
        widened = []
        for keep, constant in plans:
            # keep the first removable units too, untouched, until the layer is `width` wide: exact
            extra = (~keep).nonzero().flatten()[: width - int(keep.sum())]
            wide = keep.clone()
            wide[extra] = True
            widened.append((wide, constant))
        plans = widened
    sizes = []
    for (name, layer), (keep, constant) in zip(layers, plans, strict=True):
        kept = keep_at_least_one(keep)
        _slim_ffn(name, layer, kept, constant, report)
        sizes.append(int(kept.sum()))
    config = getattr(model, "config", None)
    if config is not None and report.slimmed:
        config.intermediate_size = max(sizes)
        setattr(config, _FFN_KEY, sizes)
        setattr(config, _HEADS_KEY, heads)
    return report


def _resize_layer(layer: Any, heads: int, ffn: int) -> None:
    """Give *layer* the shapes of a slimmed layer (the values are overwritten when loading)."""
    attn = layer.attention.self
    d = int(attn.attention_head_size)
    keep = torch.zeros(int(attn.num_attention_heads), dtype=torch.bool)
    keep[:heads] = True
    rows = keep.repeat_interleave(d).to(attn.query.weight.device)
    for proj in ("query", "key", "value"):
        old = getattr(attn, proj)
        setattr(attn, proj, new_linear(old, old.weight[rows], None if old.bias is None else old.bias[rows]))
    out = layer.attention.output.dense
    layer.attention.output.dense = new_linear(out, out.weight[:, rows], out.bias)
    attn.num_attention_heads, attn.all_head_size = heads, heads * d
    inner, outer = layer.intermediate.dense, layer.output.dense
    layer.intermediate.dense = new_linear(inner, inner.weight[:ffn], None if inner.bias is None else inner.bias[:ffn])
    layer.output.dense = new_linear(outer, outer.weight[:, :ffn], outer.bias)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(path / f).items()}
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise SlimmingError(
        f"{path}: no model.safetensors(.index.json) or pytorch_model.bin; was it saved with save_pretrained?"
    )


def load_slimmed(model_class: Any, path: str | os.PathLike[str], **config_kwargs: Any) -> nn.Module:
    """Load a model saved with ``save_pretrained`` after :func:`slim_bert_`, per-layer sizes included.

    Args:
        model_class: the transformers class to build: a model class (``BertForSequenceClassification``)
            or an auto class (``AutoModelForSequenceClassification``, which reads the kind from config.json).
        path: the folder ``save_pretrained`` wrote.
        config_kwargs: passed to the config's ``from_pretrained``.

    Returns:
        The model in eval mode, with the saved weights.

    Raises:
        SlimmingError: no weights in *path*, or they do not fit the recorded sizes.
    """
    path = Path(path)
    if getattr(model_class, "config_class", None) is not None:
        config = model_class.config_class.from_pretrained(path, **config_kwargs)
        model = model_class(config)
    else:  # an auto class: the config names the model type
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, **config_kwargs)
        model = model_class.from_config(config)
    ffn, heads = getattr(config, _FFN_KEY, None), getattr(config, _HEADS_KEY, None)
    widest = int(config.intermediate_size)  # slim_bert_ set it to the widest layer
    layers = find_bert_layers(model)
    recorded = [sizes for sizes in (ffn, heads) if sizes is not None]
    if any(len(sizes) != len(layers) for sizes in recorded):
        raise SlimmingError(
            f"{path}: the config records sizes for {[len(sizes) for sizes in recorded]} layers but "
            f"{model_class.__name__} has {len(layers)} BERT-style layers; load it with the class it was saved from"
        )
    if recorded:
        for i, (_, layer) in enumerate(layers):
            n_heads = heads[i] if heads is not None else int(layer.attention.self.num_attention_heads)
            _resize_layer(layer, n_heads, ffn[i] if ffn is not None else widest)
    state = _read_weights(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise SlimmingError(
            f"{path}: the saved weights do not fit the sizes its config.json records ({err}); config.json and "
            "the weights must come from the same save_pretrained of the slimmed model"
        ) from None
    if result.unexpected_keys:
        raise SlimmingError(f"{path}: unexpected weights {result.unexpected_keys}; is {model_class.__name__} right?")
    model.tie_weights()
    # weights left out of the file are fine only when tied to one that was loaded
    params = model.state_dict(keep_vars=True)
    loaded = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in result.missing_keys if params[k].data_ptr() not in loaded]
    if missing:
        raise SlimmingError(
            f"{path}: weights missing from the file: {missing}; save the slimmed model again with save_pretrained"
        )
    return model.eval()
