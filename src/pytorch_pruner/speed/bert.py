"""Slimming BERT-style encoders: remove pruned FFN neurons and attention heads.

Registered for the transformers model types whose layers compute exactly as BERT's (checked on
their source): BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, Data2VecText, ERNIE and
RoBERTa-PreLayerNorm. A layer there has ``attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense`` and ``output.dense``.

* FFN neuron ``i`` goes when column ``i`` of ``output.dense`` is zero (``channelx1`` there), or when
  row ``i`` of ``intermediate.dense`` is zero (``1xchannel`` there): the neuron then outputs
  ``act(bias_i)`` for every input, which is folded into ``output.dense``'s bias.
* Head ``h`` goes when the ``head_dim`` columns it writes in ``attention.output.dense`` are zero
  (pattern ``head:<head_dim>`` there), or when its value rows and value bias are zero (its output
  is then zero). Its query/key/value rows go with it.

Saving and loading: transformers configs hold one ``intermediate_size`` and one
``num_attention_heads`` for all layers (and BERT derives the head size from it), so the slimmed
model's config also records the per-layer sizes (``slimmed_intermediate_sizes``,
``slimmed_num_attention_heads``); :func:`~pytorch_pruner.speed.load_slimmed` builds the model at
those sizes before loading the weights. ``intermediate_size`` is set to the widest layer; with
``uniform_ffn=True`` every layer keeps that width (narrower layers keep some zero neurons, which is
still exact), so a plain ``from_pretrained`` loads it when no head was removed.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from .families import SLIMMERS, Slimmer, model_type
from .parts import SlimmedLayer, SlimmingError, SlimPlan, SlimReport, keep_at_least_one, new_linear, zero_rows

__all__ = ["BertSlimmer", "find_bert_layers", "slim_bert_"]

FFN_KEY = "slimmed_intermediate_sizes"
HEADS_KEY = "slimmed_num_attention_heads"
#: model types checked to compute as BERT does (the module holding their layer classes)
BERT_TYPES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "xlm_roberta",
    "camembert": "camembert",
    "electra": "electra",
    "data2vec-text": "data2vec",
    "ernie": "ernie",
    "roberta-prelayernorm": "roberta_prelayernorm",
}
_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "intermediate.dense", "output.dense")  # fmt: skip


def _has_linear(module: nn.Module, path: str) -> bool:
    for part in path.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return False
    return isinstance(module, nn.Linear)


def find_bert_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """The BERT-style layers of *model* as ``(qualified name, module)``, in module order.

    The modules are transformers layers with the attributes above, hence ``Any``.
    """
    return [
        (name, m)
        for name, m in model.named_modules()
        if all(_has_linear(m, p) for p in _PARTS) and hasattr(m.attention.self, "attention_head_size")
    ]


def _checked_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """The BERT-style layers, each checked to be a class of a verified family."""
    layers = find_bert_layers(model)
    if not layers:
        raise SlimmingError(
            f"{type(model).__name__} has no BERT-style layer (attention.self.query/key/value, "
            "attention.output.dense, intermediate.dense, output.dense); use slim_ for other models"
        )
    families = {f"transformers.models.{package}." for package in BERT_TYPES.values()}
    for name, layer in layers:
        where = type(layer.attention.self).__module__
        if not any(where.startswith(prefix) for prefix in families):
            raise SlimmingError(
                f"{name}: {type(layer.attention.self).__name__} (from {where}) has BERT's attribute names but is no "
                f"attention class slimming was checked on (those of {', '.join(BERT_TYPES)}); the model was left "
                "unchanged"
            )
    kind = model_type(model)
    if kind is not None and kind not in BERT_TYPES:
        raise SlimmingError(f"{type(model).__name__} is a {kind!r} model, not one of {', '.join(BERT_TYPES)}")
    return layers


@torch.no_grad()
def _head_keep(name: str, layer: Any) -> torch.Tensor:
    attn, out = layer.attention.self, layer.attention.output.dense
    d, heads = int(attn.attention_head_size), int(attn.num_attention_heads)
    if out.in_features != heads * d or attn.value.out_features != heads * d:
        raise SlimmingError(
            f"{name}.attention: output.dense takes {out.in_features} inputs and value gives "
            f"{attn.value.out_features}, not {heads} heads x {d}; was the model changed after it was built?"
        )
    silent = out.weight.reshape(out.out_features, heads, d).eq(0).all(dim=2).all(dim=0)
    value_zero = zero_rows(attn.value.weight.reshape(heads, -1))
    if attn.value.bias is not None:
        value_zero &= attn.value.bias.reshape(heads, d).eq(0).all(dim=1)
    return keep_at_least_one(~(silent | value_zero))


@torch.no_grad()
def _ffn_keep(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(units that must stay, units whose constant output must be folded if removed)."""
    inner, outer = layer.intermediate.dense, layer.output.dense
    ignored = outer.weight.eq(0).all(dim=0)
    constant = zero_rows(inner.weight) & ~ignored
    return ~(ignored | constant), constant


def _cut_heads(layer: Any, keep: torch.Tensor) -> None:
    attn = layer.attention.self
    d = int(attn.attention_head_size)
    rows = keep.repeat_interleave(d).to(attn.query.weight.device)
    for proj in ("query", "key", "value"):
        old = getattr(attn, proj)
        setattr(attn, proj, new_linear(old, old.weight[rows], None if old.bias is None else old.bias[rows]))
    out = layer.attention.output.dense
    layer.attention.output.dense = new_linear(out, out.weight[:, rows], out.bias)
    kept = int(keep.sum())
    attn.num_attention_heads, attn.all_head_size = kept, kept * d


def _cut_ffn(layer: Any, keep: torch.Tensor, fold: torch.Tensor) -> None:
    inner, outer = layer.intermediate.dense, layer.output.dense
    bias = outer.bias
    if bool(fold.any()):
        act = layer.intermediate.intermediate_act_fn
        pre = inner.bias[fold] if inner.bias is not None else inner.weight.new_zeros(int(fold.sum()))
        shift = outer.weight[:, fold] @ act(pre)
        bias = shift if bias is None else bias + shift
    layer.intermediate.dense = new_linear(inner, inner.weight[keep], None if inner.bias is None else inner.bias[keep])
    layer.output.dense = new_linear(outer, outer.weight[:, keep], bias)


def _widen(keeps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each keep-mask with its first removable units kept too, up to the widest layer's count: exact."""
    width = max(int(keep.sum()) for keep in keeps)
    widened = []
    for keep in keeps:
        extra = (~keep).nonzero().flatten()[: width - int(keep.sum())]
        wide = keep.clone()
        wide[extra] = True
        widened.append(wide)
    return widened


@SLIMMERS.register(*BERT_TYPES)
class BertSlimmer(Slimmer):
    """FFN neurons and attention heads of BERT-style encoders (see the module doc)."""

    def plan(self, model: nn.Module, *, uniform: bool = False, uniform_ffn: bool = False) -> SlimPlan:
        layers = _checked_layers(model)
        plan = SlimPlan()
        report = plan.report
        head_keeps = [_head_keep(name, layer) for name, layer in layers]
        if uniform:
            head_keeps = _widen(head_keeps)
        ffn = [_ffn_keep(layer) for _, layer in layers]
        ffn_keeps = [keep_at_least_one(keep) for keep, _ in ffn]
        if uniform or uniform_ffn:
            ffn_keeps = _widen(ffn_keeps)
        for (name, layer), heads, keep, (_, constant) in zip(layers, head_keeps, ffn_keeps, ffn, strict=True):
            if not bool(heads.all()):
                plan.cuts.append(functools.partial(_cut_heads, layer, heads))
                before = int(layer.attention.self.num_attention_heads)
                report.slimmed.append(SlimmedLayer(f"{name}.attention", "heads", before, int(heads.sum())))
            if not bool(keep.all()):
                fold = constant & ~keep
                plan.cuts.append(functools.partial(_cut_ffn, layer, keep, fold))
                report.slimmed.append(SlimmedLayer(f"{name}.intermediate", "neurons", keep.numel(), int(keep.sum())))
        if getattr(model, "config", None) is not None and report.slimmed:
            sizes = [int(keep.sum()) for keep in ffn_keeps]
            plan.config = {
                "intermediate_size": max(sizes),
                FFN_KEY: sizes,
                HEADS_KEY: [int(h.sum()) for h in head_keeps],
            }
        return plan

    def resize(self, model: nn.Module, config: Any) -> None:
        ffn, heads = getattr(config, FFN_KEY, None), getattr(config, HEADS_KEY, None)
        if ffn is None and heads is None:
            return
        layers = find_bert_layers(model)
        recorded = [sizes for sizes in (ffn, heads) if sizes is not None]
        if any(not isinstance(sizes, list) or len(sizes) != len(layers) for sizes in recorded):
            raise SlimmingError(
                f"the config records sizes for {[len(s) if isinstance(s, list) else s for s in recorded]} layers but "
                f"{type(model).__name__} has {len(layers)} BERT-style layers; load it with the class it was saved from"
            )
        for i, (_, layer) in enumerate(layers):
            attn = layer.attention.self
            n_heads = int(heads[i]) if heads is not None else int(attn.num_attention_heads)
            width = int(ffn[i]) if ffn is not None else int(config.intermediate_size)
            head_keep = torch.arange(int(attn.num_attention_heads)) < n_heads
            _cut_heads(layer, head_keep)
            ffn_keep = torch.arange(layer.intermediate.dense.out_features) < width
            _cut_ffn(layer, ffn_keep.to(layer.output.dense.weight.device), torch.zeros_like(ffn_keep))


def slim_bert_(model: nn.Module, *, uniform_ffn: bool = False) -> SlimReport:
    """Remove pruned FFN neurons and attention heads of every BERT-style layer of *model*, in place.

    The slimmed model's outputs equal the pruned model's (to float rounding). Its ``config`` (when it
    has one) records the new per-layer sizes, so ``save_pretrained`` + ``load_slimmed`` round-trip.
    The whole change is planned and checked first: on an error the model is unchanged.

    Args:
        model: a transformers BERT-style model whose pruned weights are zero.
        uniform_ffn: give every layer the same FFN width (the widest needed), see the module doc.

    Returns:
        A :class:`~pytorch_pruner.speed.SlimReport`.

    Raises:
        SlimmingError: *model* has no BERT-style layer, or one of a family slimming was not checked on.
    """
    plan = BertSlimmer().plan(model, uniform_ffn=uniform_ffn)
    return plan.apply(model)
