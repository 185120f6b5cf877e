"""Slimming decoder LLMs: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2 (gated MLP, grouped-query
attention) and GPT-2 (``Conv1D``, fused query/key/value).

* MLP channel ``i`` goes when its input column of the MLP output projection is zero (``down_proj``,
  GPT-2's ``mlp.c_proj``; pattern ``channelx1`` there): row ``i`` of ``gate_proj`` and ``up_proj``
  (column ``i`` of GPT-2's ``c_fc``, and its bias) goes with it. Exact: the channel reaches nothing.
* Query head ``h`` goes when the ``head_dim`` input columns it writes in the attention output
  projection are zero (``o_proj``, ``attn.c_proj``; pattern ``head:<head_dim>``); its query rows go
  with it. With grouped-query attention a key/value head goes only with *all* the query heads of its
  group, and every kept group keeps the same number of query heads (the kernels need
  ``heads = groups x heads per group``): where pruning left groups uneven, the plan keeps some zero
  heads to even them (exact, and listed in the report); prune with ``gqa_head:<head_dim>:<group>``
  to get even groups, or with ``head:<head_dim x group>`` to remove whole key/value heads.

Saving and loading: when every layer has the same sizes (local ranking, or ``uniform=True``), the
config gets plain values (``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim`` written out) that stock ``from_pretrained`` and other engines load. Otherwise it also
records per-layer sizes (``slimmed_intermediate_sizes``, ``slimmed_num_attention_heads``,
``slimmed_num_key_value_heads``) and ``load_slimmed`` loads it. GPT-2 derives its head size from
``n_embd / n_head``, so a GPT-2 with heads removed always needs ``load_slimmed``; MLP-only slimming
with the same width in every layer writes ``n_inner`` and loads anywhere.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .families import SLIMMERS, Slimmer, model_type
from .parts import SlimmedLayer, SlimmingError, SlimPlan, new_conv1d, new_linear

__all__ = ["GPT2Slimmer", "LlamaSlimmer", "gqa_keep"]

FFN_KEY = "slimmed_intermediate_sizes"
HEADS_KEY = "slimmed_num_attention_heads"
KV_KEY = "slimmed_num_key_value_heads"
#: model type -> the transformers package whose decoder layers were checked to compute as Llama's
LLAMA_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
               "gemma2": "gemma2"}  # fmt: skip


@dataclass
class _Layer:
    """What a decoder layer keeps: query heads (bool per head), key/value heads, MLP channels."""

    name: str
    module: Any
    head_dim: int
    q_keep: torch.Tensor
    kv_keep: torch.Tensor
    ffn_keep: torch.Tensor
    padded: int = 0  # zero query heads kept to even the groups


def gqa_keep(
    silent: torch.Tensor, kv_heads: int, groups: int = 0, per_group: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Which query and key/value heads a layer keeps, given which query heads are *silent* (their
    output columns are zero).

    A key/value head is kept when any query head of its group is live; each kept group then keeps
    the same number of query heads, the most any group has live, filled up with silent ones (their
    output is zero, so keeping them is exact). *groups* / *per_group* raise the counts further (to
    give every layer the same sizes). At least one head always stays.

    Returns:
        (query keep [heads], key/value keep [kv_heads], how many silent query heads were kept).

    Example:
        >>> q, kv, padded = gqa_keep(torch.tensor([1, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool), kv_heads=4)
        >>> q.int().tolist(), kv.int().tolist(), padded
        ([0, 0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 0], 1)
    """
    heads = silent.numel()
    live = (~silent).reshape(kv_heads, heads // kv_heads).clone()
    kv = live.any(dim=1)
    if not bool(kv.any()):
        kv[0] = live[0, 0] = True
    for g in (~kv).nonzero().flatten()[: max(0, groups - int(kv.sum()))].tolist():
        kv[g] = True
    k = max(int(live[kv].sum(dim=1).max()), per_group)
    keep = live.clone()
    for g in kv.nonzero().flatten().tolist():
        missing = k - int(keep[g].sum())
        if missing > 0:
            keep[g, (~keep[g]).nonzero().flatten()[:missing]] = True
    padded = int(keep.sum()) - int(live[kv].sum())
    return keep.flatten(), kv, padded


def _typed(layer: nn.Module, where: str, expected: tuple[type, ...] | type) -> None:
    if type(layer) not in (expected if isinstance(expected, tuple) else (expected,)):
        raise SlimmingError(
            f"{where} is a {type(layer).__module__}.{type(layer).__name__}, not a plain "
            f"{expected if isinstance(expected, type) else expected[0]}: slimming cuts only plain layers "
            "(merge adapters and dequantize first); the model was left unchanged"
        )


def _layers_of(model: nn.Module, package: str) -> list[tuple[str, nn.Module]]:
    """The decoder layers of *model* that are classes of transformers' *package*, checked in count."""
    prefix = f"transformers.models.{package}."
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if type(m).__name__.endswith(("DecoderLayer", "Block")) and type(m).__module__.startswith(prefix)
    ]
    expected = getattr(model.config, "num_hidden_layers", None)
    if not layers or (expected is not None and len(layers) != expected):
        found = sorted({f"{type(m).__module__}.{type(m).__name__}" for _, m in model.named_modules()})[:8]
        raise SlimmingError(
            f"{type(model).__name__}: found {len(layers)} decoder layers of transformers.models.{package} but the "
            f"config says {expected}; modules found: {', '.join(found)}; the model was left unchanged"
        )
    return layers


def _sizes(layers: list[_Layer]) -> tuple[list[int], list[int], list[int]]:
    """Per layer: (query heads, key/value heads, MLP channels) kept."""
    q = [int(s.q_keep.sum()) for s in layers]
    kv = [int(s.kv_keep.sum()) for s in layers]
    return q, kv, [int(s.ffn_keep.sum()) for s in layers]


def _recorded(config: Any, count: int) -> dict[str, list[int]] | None:
    sizes: dict[str, list[int]] = {}
    for key in (FFN_KEY, HEADS_KEY, KV_KEY):
        if getattr(config, key, None) is not None:
            sizes[key] = getattr(config, key)
    if not sizes:
        return None
    if any(not isinstance(v, list) or len(v) != count for v in sizes.values()):
        raise SlimmingError(
            f"the config records per-layer sizes {sizes} for a model of {count} layers; load it with the class "
            "it was saved from, and config.json as save_pretrained wrote it"
        )
    return sizes


def _first(n: int, of: int) -> torch.Tensor:
    return torch.arange(of) < n


class _DecoderSlimmer(Slimmer):
    """Shared by the decoder families: plan per layer, even out GQA groups, config, resize."""

    package: str

    def _layer_parts(self, model: nn.Module, name: str, layer: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(silent query heads, ignored MLP channels, kv heads, head_dim), checking the layer."""
        raise NotImplementedError

    def _cut(self, entry: _Layer) -> None:
        raise NotImplementedError

    def _layers(self, model: nn.Module) -> list[tuple[str, Any]]:
        return _layers_of(model, self.package)

    @torch.no_grad()
    def plan(self, model: nn.Module, *, uniform: bool = False, uniform_ffn: bool = False) -> SlimPlan:
        entries = []
        for name, layer in self._layers(model):
            silent, ignored, kv_heads, d = self._layer_parts(model, name, layer)
            q_keep, kv_keep, padded = gqa_keep(silent, kv_heads)
            ffn_keep = ~ignored
            if not bool(ffn_keep.any()):
                ffn_keep[0] = True
            entries.append(_Layer(name, layer, d, q_keep, kv_keep, ffn_keep, padded))
        if uniform or uniform_ffn:
            width = max(int(e.ffn_keep.sum()) for e in entries)
            for e in entries:
                e.ffn_keep[(~e.ffn_keep).nonzero().flatten()[: width - int(e.ffn_keep.sum())]] = True
        if uniform:
            groups = max(int(e.kv_keep.sum()) for e in entries)
            per_group = max(int(e.q_keep.sum()) // int(e.kv_keep.sum()) for e in entries)
            for e in entries:
                silent = ~e.q_keep  # what is kept now counts as live: only more is kept
                e.q_keep, e.kv_keep, more = gqa_keep(silent, e.kv_keep.numel(), groups, per_group)
                e.padded += more
        plan = SlimPlan()
        for e in entries:
            heads, kv, ffn = e.q_keep.numel(), e.kv_keep.numel(), e.ffn_keep.numel()
            if e.padded and not uniform:
                plan.report.skipped.append((
                    f"{e.name}.attention",
                    f"{e.padded} pruned query heads kept so that each of the {int(e.kv_keep.sum())} key/value groups "
                    f"keeps {int(e.q_keep.sum()) // int(e.kv_keep.sum())}; prune with gqa_head:{e.head_dim}:"
                    f"{heads // kv} to get even groups",
                ))  # fmt: skip
            if not bool(e.q_keep.all()):
                plan.report.slimmed.append(SlimmedLayer(f"{e.name}.attention", "heads", heads, int(e.q_keep.sum())))
                if not bool(e.kv_keep.all()):
                    plan.report.slimmed.append(
                        SlimmedLayer(f"{e.name}.attention", "key/value heads", kv, int(e.kv_keep.sum()))
                    )
            if not bool(e.ffn_keep.all()):
                plan.report.slimmed.append(SlimmedLayer(f"{e.name}.mlp", "channels", ffn, int(e.ffn_keep.sum())))
            if not (bool(e.q_keep.all()) and bool(e.ffn_keep.all())):
                plan.cuts.append(functools.partial(self._cut, e))
        if plan.report.slimmed:
            plan.config = self._config(entries, model.config)
        return plan

    def _config(self, entries: list[_Layer], config: Any) -> dict[str, Any]:
        """The config attributes that describe the slimmed sizes."""
        raise NotImplementedError

    @torch.no_grad()
    def resize(self, model: nn.Module, config: Any) -> None:
        layers = self._layers(model)
        sizes = _recorded(config, len(layers))
        if sizes is None:
            return
        for i, (name, layer) in enumerate(layers):
            silent, ignored, kv_heads, d = self._layer_parts(model, name, layer)
            heads = silent.numel()
            q_n = sizes[HEADS_KEY][i] if HEADS_KEY in sizes else heads
            # without grouped-query attention (GPT-2) each head is its own key/value head
            kv_n = sizes[KV_KEY][i] if KV_KEY in sizes else (q_n if kv_heads == heads else kv_heads)
            per_group = q_n // kv_n
            kv_keep = _first(kv_n, kv_heads)
            q_keep = (kv_keep[:, None] & _first(per_group, heads // kv_heads)[None, :]).flatten()
            ffn_n = sizes[FFN_KEY][i] if FFN_KEY in sizes else ignored.numel()
            self._cut(_Layer(name, layer, d, q_keep, kv_keep, _first(ffn_n, ignored.numel())))


def _rows(old: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    keep = keep.to(old.weight.device)
    return new_linear(old, old.weight[keep], None if old.bias is None else old.bias[keep])


def _cols(old: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    return new_linear(old, old.weight[:, keep.to(old.weight.device)], old.bias)


@SLIMMERS.register(*LLAMA_TYPES)
class LlamaSlimmer(_DecoderSlimmer):
    """Llama-style decoders: ``self_attn.{q,k,v,o}_proj`` with grouped-query attention and a gated
    MLP ``mlp.{gate,up,down}_proj`` (see the module doc)."""

    def _layers(self, model: nn.Module) -> list[tuple[str, Any]]:
        return _layers_of(model, LLAMA_TYPES[str(model_type(model))])

    def _layer_parts(self, model: nn.Module, name: str, layer: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            raise SlimmingError(f"{name}: {type(layer).__name__} has no self_attn / mlp; the model was left unchanged")
        for part in ("q_proj", "k_proj", "v_proj", "o_proj"):
            _typed(getattr(attn, part, None), f"{name}.self_attn.{part}", nn.Linear)  # type: ignore[arg-type]
        for part in ("gate_proj", "up_proj", "down_proj"):
            _typed(getattr(mlp, part, None), f"{name}.mlp.{part}", nn.Linear)  # type: ignore[arg-type]
        d = int(attn.head_dim)
        q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        heads, kv_heads = q.out_features // d, k.out_features // d
        shapes_fit = q.out_features % d == 0 and k.out_features % d == 0 and v.out_features == k.out_features
        shapes_fit = shapes_fit and o.in_features == q.out_features and heads % kv_heads == 0
        if not shapes_fit or heads // kv_heads != int(attn.num_key_value_groups):
            raise SlimmingError(
                f"{name}.self_attn: q/k/v/o_proj of {q.out_features}/{k.out_features}/{v.out_features}/"
                f"{o.in_features} features do not make {heads} query heads in groups of "
                f"{attn.num_key_value_groups} of head_dim {d}; the model was left unchanged"
            )
        gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        if not gate.out_features == up.out_features == down.in_features:
            raise SlimmingError(
                f"{name}.mlp: gate/up_proj give {gate.out_features}/{up.out_features} channels, down_proj takes "
                f"{down.in_features}; the model was left unchanged"
            )
        silent = o.weight.reshape(o.out_features, heads, d).eq(0).all(dim=2).all(dim=0).cpu()
        ignored = down.weight.eq(0).all(dim=0).cpu()
        return silent, ignored, kv_heads, d

    def _cut(self, e: _Layer) -> None:
        attn, mlp = e.module.self_attn, e.module.mlp
        if not bool(e.q_keep.all()):
            q_rows, kv_rows = e.q_keep.repeat_interleave(e.head_dim), e.kv_keep.repeat_interleave(e.head_dim)
            attn.q_proj, attn.o_proj = _rows(attn.q_proj, q_rows), _cols(attn.o_proj, q_rows)
            attn.k_proj, attn.v_proj = _rows(attn.k_proj, kv_rows), _rows(attn.v_proj, kv_rows)
            attn.num_key_value_groups = int(e.q_keep.sum()) // int(e.kv_keep.sum())
        if not bool(e.ffn_keep.all()):
            mlp.gate_proj, mlp.up_proj = _rows(mlp.gate_proj, e.ffn_keep), _rows(mlp.up_proj, e.ffn_keep)
            mlp.down_proj = _cols(mlp.down_proj, e.ffn_keep)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = int(e.ffn_keep.sum())

    def _config(self, entries: list[_Layer], config: Any) -> dict[str, Any]:
        q, kv, ffn = _sizes(entries)
        # head_dim written out: it no longer follows from hidden_size / num_attention_heads
        update: dict[str, Any] = {"head_dim": entries[0].head_dim}
        if len(set(q)) == len(set(kv)) == len(set(ffn)) == 1:  # plain sizes: stock from_pretrained loads them
            plain: dict[str, Any] = {
                "intermediate_size": ffn[0],
                "num_attention_heads": q[0],
                "num_key_value_heads": kv[0],
            }
            plain.update({key: None for key in (FFN_KEY, HEADS_KEY, KV_KEY) if hasattr(config, key)})
            if _accepted(config, {**update, **plain}):
                return {**update, **plain}
        # each layer's sizes, for load_slimmed; the plain sizes stay those the model was built with
        # (transformers checks them: e.g. Llama's hidden_size must be a multiple of num_attention_heads)
        update.update({"intermediate_size": max(ffn), FFN_KEY: ffn, HEADS_KEY: q, KV_KEY: kv})
        return update


def _accepted(config: Any, update: dict[str, Any]) -> bool:
    """Whether transformers accepts *config* with *update* (its config classes validate sizes)."""
    try:
        type(config).from_dict({**config.to_dict(), **update})
    except Exception:  # huggingface_hub's StrictDataclassClassValidationError is no ValueError
        return False
    return True


def _conv1d_cols(old: Any, keep: torch.Tensor) -> nn.Module:
    keep = keep.to(old.weight.device)
    return new_conv1d(old, old.weight[:, keep], old.bias[keep])


def _conv1d_rows(old: Any, keep: torch.Tensor) -> nn.Module:
    return new_conv1d(old, old.weight[keep.to(old.weight.device)], old.bias)


@SLIMMERS.register("gpt2")
class GPT2Slimmer(_DecoderSlimmer):
    """GPT-2: ``attn.c_attn`` (query, key and value fused, ``Conv1D``), ``attn.c_proj``, ``mlp.c_fc``,
    ``mlp.c_proj`` (see the module doc)."""

    package = "gpt2"

    def plan(self, model: nn.Module, *, uniform: bool = False, uniform_ffn: bool = False) -> SlimPlan:
        if getattr(model.config, "add_cross_attention", False):
            raise SlimmingError(
                f"{type(model).__name__} has cross-attention (add_cross_attention); slimming GPT-2 knows only "
                "the decoder-only model; the model was left unchanged"
            )
        return super().plan(model, uniform=uniform, uniform_ffn=uniform_ffn)

    def _config(self, entries: list[_Layer], config: Any) -> dict[str, Any]:
        q, _, ffn = _sizes(entries)
        update: dict[str, Any] = {"n_inner": max(ffn)}
        update[FFN_KEY] = None if len(set(ffn)) == 1 else ffn
        # n_head stays: GPT-2 derives the head size from n_embd / n_head
        update[HEADS_KEY] = None if set(q) == {int(config.n_head)} else q
        return {k: v for k, v in update.items() if v is not None or hasattr(config, k)}

    def _layer_parts(self, model: nn.Module, name: str, layer: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        attn, mlp = layer.attn, layer.mlp
        for part, module in (("attn.c_attn", attn.c_attn), ("attn.c_proj", attn.c_proj), ("mlp.c_fc", mlp.c_fc),
                             ("mlp.c_proj", mlp.c_proj)):  # fmt: skip
            if type(module).__name__ != "Conv1D":
                raise SlimmingError(f"{name}.{part} is a {type(module).__name__}, not transformers' Conv1D")
        heads, d = int(attn.num_heads), int(attn.head_dim)
        if attn.c_attn.weight.shape[1] != 3 * heads * d or attn.c_proj.weight.shape[0] != heads * d:
            raise SlimmingError(
                f"{name}.attn: c_attn gives {attn.c_attn.weight.shape[1]} features, c_proj takes "
                f"{attn.c_proj.weight.shape[0]}; not 3 x {heads} heads x {d}; the model was left unchanged"
            )
        if mlp.c_fc.weight.shape[1] != mlp.c_proj.weight.shape[0]:
            raise SlimmingError(f"{name}.mlp: c_fc and c_proj disagree on the width; the model was left unchanged")
        silent = attn.c_proj.weight.reshape(heads, d, -1).eq(0).all(dim=2).all(dim=1).cpu()
        ignored = mlp.c_proj.weight.eq(0).all(dim=1).cpu()
        return silent, ignored, heads, d

    def _cut(self, e: _Layer) -> None:
        attn, mlp = e.module.attn, e.module.mlp
        if not bool(e.q_keep.all()):
            rows = e.q_keep.repeat_interleave(e.head_dim)
            attn.c_attn = _conv1d_cols(attn.c_attn, torch.cat([rows, rows, rows]))
            attn.c_proj = _conv1d_rows(attn.c_proj, rows)
            attn.num_heads = int(e.q_keep.sum())
            attn.split_size = attn.num_heads * e.head_dim
        if not bool(e.ffn_keep.all()):
            mlp.c_fc = _conv1d_cols(mlp.c_fc, e.ffn_keep)
            mlp.c_proj = _conv1d_rows(mlp.c_proj, e.ffn_keep)
