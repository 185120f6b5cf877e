"""Decoder LLM speed from slimming: prefill latency and greedy decode tokens/s, dense vs slimmed.

Used by ``python benchmarks/inference.py --decoder``. A Llama-shaped model (random init: speed does
not depend on the values; hidden 1024, 16 query heads of 64 in 4 key/value groups (GQA 4:1), MLP
2816, 4 layers, vocab 32000, untied head) is pruned one-shot by magnitude, the same amount in every
layer: ``channelx1`` on every ``mlp.down_proj`` (25% or 50% of the MLP channels) and 25% of the
query heads (the lowest-norm head of each key/value group, so that every group keeps 3 of 4; the
key/value heads all stay), then slimmed with :func:`pytorch_pruner.speed.slim_`.

Each slimmed model is checked against the masked one (logits, and greedy ``generate()`` tokens),
then timed interleaved with the dense model in rounds: prefill = one forward of ``--prompt``
tokens at batch 1 (``logits_to_keep=1``, as ``generate`` does); decode = ``generate()`` of
``--new`` tokens after a 16-token prompt, greedy, with the KV cache, at each ``--batch``. Times are
medians; a speedup is the median over rounds of dense time / slimmed time. Beside them: the FLOP
ratio of the prefill (dense / slimmed operations, ``torch.utils.flop_counter``, eager attention)
and the ratio of weight bytes a decode step reads (every parameter but the input embedding).
Targets: prefill speedup >= 90% of the FLOP ratio; decode speedup >= the weight-bytes ratio.

On CUDA (``--device cuda``) the same table runs in bfloat16, and the 2:4 export
(:func:`pytorch_pruner.speed.to_semi_structured_`) of the dense shapes is timed too.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pytorch_pruner import prune_
from pytorch_pruner.speed import semi_structured_support, slim_, to_semi_structured_

SHAPE = {"hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 64,
         "intermediate_size": 2816, "num_hidden_layers": 4, "vocab_size": 32000}  # fmt: skip


def build(layers: int, device: str, dtype: torch.dtype) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}, tie_word_embeddings=False,
                         max_position_embeddings=4096)  # fmt: skip
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


@torch.no_grad()
def prune_heads_per_group(model: nn.Module, fraction: float) -> None:
    """Zero the o_proj columns of the lowest-norm query heads of each key/value group (the same
    count in every group), as ``gqa_head`` ranking does within a layer."""
    config = model.config
    per_group = config.num_attention_heads // config.num_key_value_heads
    drop = round(per_group * fraction)
    for layer in model.model.layers:
        o = layer.self_attn.o_proj.weight
        cols = o.view(o.shape[0], config.num_key_value_heads, per_group, config.head_dim)
        norms = cols.float().pow(2).sum(dim=(0, 3))  # [groups, per group]
        lowest = norms.argsort(dim=1)[:, :drop]
        for group, heads in enumerate(lowest.tolist()):
            cols[:, group, heads] = 0


def pruned_and_slimmed(dense: nn.Module, mlp: float, heads: float) -> tuple[nn.Module, nn.Module]:
    masked = copy.deepcopy(dense)
    if mlp > 0:
        config = {"names": [r"mlp\.down_proj$"], "pattern": "channelx1", "target_sparsity": mlp}
        prune_(masked, {"prune_domain": "local", "pruners": [config]})
    if heads > 0:
        prune_heads_per_group(masked, heads)
    slim = copy.deepcopy(masked)
    slim_(slim)
    return masked, slim


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights one decode step reads: all but the input embedding (one row is read)."""
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


def prefill_flops(model: nn.Module, ids: torch.Tensor) -> int:
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(ids, logits_to_keep=1)
    return counter.get_total_flops()


def rounds(fns: list[Callable[[], Any]], repeats: int, sync: Callable[[], None]) -> list[list[float]]:
    """Seconds of each function in each of *repeats* rounds (one warm-up round first)."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats + 1):
        for fn, spent in zip(fns, times, strict=True):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if r:
                spent.append(time.perf_counter() - start)
    return times


def speedup(base: list[float], fast: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(base, fast, strict=True))


def decoder_table(args: Any) -> tuple[list[list[object]], list[str]]:
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dense = build(args.layers, device, dtype)
    variants = [(mlp, 0.25) for mlp in args.mlp]
    models = [dense]
    checks = []
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, args.prompt), generator=gen).to(device)
    short = {b: torch.randint(0, SHAPE["vocab_size"], (b, 16), generator=gen).to(device) for b in args.batch}

    def generate(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                              pad_token_id=0)  # fmt: skip

    with torch.inference_mode():
        for mlp, heads in variants:
            masked, slim = pruned_and_slimmed(dense, mlp, heads)
            diff = float((masked(prompt[:, :64]).logits - slim(prompt[:, :64]).logits).abs().max())
            same = bool(torch.equal(generate(masked, short[args.batch[0]]), generate(slim, short[args.batch[0]])))
            checks.append((diff, same))
            del masked
            models.append(slim)
    flops = [prefill_flops(m, prompt) for m in models]
    nbytes = [weight_bytes(m) for m in models]
    with torch.inference_mode():
        pre = rounds([lambda m=m: m(prompt, logits_to_keep=1) for m in models], args.repeats, sync)
        dec = {b: rounds([lambda m=m, b=b: generate(m, short[b]) for m in models], args.repeats, sync)
               for b in args.batch}  # fmt: skip
    rows: list[list[object]] = []
    for i, (mlp, heads) in enumerate(variants, start=1):
        row: list[object] = [f"{mlp:.0%}", f"{heads:.0%}", f"{nbytes[i] / 1e6:.0f}",
                             f"{statistics.median(pre[0]) * 1e3:.0f}", f"{statistics.median(pre[i]) * 1e3:.0f}",
                             f"{speedup(pre[0], pre[i]):.2f}x", f"{flops[0] / flops[i]:.2f}x"]  # fmt: skip
        for b in args.batch:
            tokens = b * args.new
            row += [f"{tokens / statistics.median(dec[b][0]):.0f} -> {tokens / statistics.median(dec[b][i]):.0f}",
                    f"{speedup(dec[b][0], dec[b][i]):.2f}x"]  # fmt: skip
        row += [f"{nbytes[0] / nbytes[i]:.2f}x", f"{checks[i - 1][0]:.1e}", "yes" if checks[i - 1][1] else "NO"]
        rows.append(row)
    headers = ["MLP pruned", "q heads pruned", "weight MB", f"dense prefill ms ({args.prompt})", "slim prefill ms",
               "prefill speedup", "FLOP ratio"]  # fmt: skip
    for b in args.batch:
        headers += [f"decode tok/s b{b}", f"decode speedup b{b}"]
    headers += ["weight-bytes ratio", "max |logit diff|", "same tokens"]
    return rows, headers


def semi_structured_table(args: Any) -> list[list[object]]:
    """CUDA only: the dense model's Linear layers 2:4-pruned and exported with to_semi_structured_,
    prefill latency against dense, bfloat16 (never yet run: no GPU where this was written)."""
    dense = build(args.layers, "cuda", torch.bfloat16)
    sparse = copy.deepcopy(dense)
    prune_(sparse, {"pruners": [{"names": [r"layers\.\d+\."], "pattern": "2:4", "target_sparsity": 0.5}]})
    report = to_semi_structured_(sparse, tokens=args.prompt)
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, args.prompt), device="cuda")
    with torch.inference_mode():
        times = rounds([lambda: dense(prompt, logits_to_keep=1), lambda: sparse(prompt, logits_to_keep=1)],
                       args.repeats, torch.cuda.synchronize)  # fmt: skip
    converted = f"{len(report.converted)}/{len(report.layers)}"
    return [[converted, f"{statistics.median(times[0]) * 1e3:.2f}", f"{statistics.median(times[1]) * 1e3:.2f}",
             f"{speedup(times[0], times[1]):.2f}x"]]  # fmt: skip


def gpu_available() -> str | None:
    """Why the CUDA part can't run here, or None."""
    return None if torch.cuda.is_available() else "no CUDA device"


__all__ = ["decoder_table", "gpu_available", "semi_structured_support", "semi_structured_table"]
