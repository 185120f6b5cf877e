"""Inference speed from sparsity: dense vs slimmed BERT on the CPU, dense vs 2:4 Linear on a GPU.

CPU part: a BERT-mini-size (hidden 256, 4 layers, 4 heads, FFN 1024) and a MiniLM-size (hidden
384, 6 layers, 12 heads, FFN 1536) encoder, random init, are pruned one-shot by magnitude with
``channelx1`` on every FFN output layer (the same sparsity in each layer) and ``head:<head_dim>``
on every attention output layer, then slimmed with :func:`pytorch_pruner.speed.slim_`. Each
variant is checked to give the masked model's outputs, then timed under ``torch.inference_mode``
against the dense model, the two interleaved, in this one process: median latency of ``--repeats``
runs after warm-up, and speedup = median over runs of dense time / slimmed time. The FLOP ratio
(dense / slimmed operations of a forward, counted by ``torch.utils.flop_counter``) is the speedup
that the removed work alone would give.

CSR part: the same encoders pruned 4x1 (every encoder Linear layer to the same sparsity) and
exported with :func:`pytorch_pruner.speed.to_sparse_csr_`, which converts a layer to a CSR sparse
product only where its timing at export (on batch x seq tokens) is faster; whole-model time against
the dense model, as above.

GPU part (when a GPU with 2:4 kernels is there): for the Linear shapes of these models and a few
large ones, dense ``F.linear`` vs the semi-structured sparse weight, float16, at batch x seq tokens.

With ``--compile`` both models are also compiled by ``torch.compile`` (inductor, static shapes) and
timed the same way: a deployment that compiles removes Python and per-op overhead from both, so
its speedup is closer to the ratio of multiply-adds.

Decoder part (``--decoder``, benchmarks/decoder_speed.py): a Llama-shaped model (hidden 1024, GQA
4:1) with 25% / 50% of its MLP channels and 25% of its query heads slimmed away: prefill latency at
512 tokens and greedy decode tokens/s at batch 1 and 8, beside the FLOP ratio and the ratio of
weight bytes read; on CUDA also in bfloat16 with the 2:4 export of the same shapes.

Run:  python benchmarks/inference.py            (all defaults, about ten minutes on one core)
      python benchmarks/inference.py --decoder  (the decoder table, a few minutes on two cores)
      python benchmarks/inference.py --models mini --batch 1 --repeats 5   (quick)
      python benchmarks/inference.py --ffn 0.5 --heads 0 --compile   (eager and compiled at 50% FFN)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from tabulate import tabulate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

from pytorch_pruner import prune_
from pytorch_pruner.speed import semi_structured_support, slim_, time_linear, to_sparse_csr_

MODELS: dict[str, dict[str, int]] = {
    "mini": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
}


def build(name: str) -> BertModel:
    """A random-init encoder of the named size (speed does not depend on the weights' values)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **MODELS[name])
    return BertModel(config).eval()


def pruned_and_slimmed(dense: BertModel, ffn: float, heads: float) -> tuple[nn.Module, nn.Module]:
    """(masked model, slimmed copy) at *ffn* of the FFN neurons and *heads* of the heads pruned."""
    config = dense.config
    head_dim = config.hidden_size // config.num_attention_heads
    pruners = []
    if ffn > 0:
        pruners.append({"names": [r"layer\.\d+\.output\.dense$"], "pattern": "channelx1", "target_sparsity": ffn})
    if heads > 0:
        pattern = f"head:{head_dim}"
        pruners.append({"names": [r"attention\.output\.dense$"], "pattern": pattern, "target_sparsity": heads})
    masked = copy.deepcopy(dense)
    if pruners:
        prune_(masked, {"prune_domain": "local", "pruners": pruners})
    slim = copy.deepcopy(masked)
    if pruners:
        slim_(slim)
    return masked, slim


def paired_medians(fns: list[Callable[[], object]], repeats: int, warmup: int = 2) -> tuple[list[float], float]:
    """Time *fns* over *repeats* rounds, after *warmup* rounds. Each round runs every function once,
    in turn, so a change of machine load hits all of them alike.

    Returns:
        The median seconds of each function, and the median over rounds of (first / last) time:
        the speedup of the last over the first, measured within rounds, which other processes on
        the machine disturb far less than the ratio of two medians.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    ratio = statistics.median(a / b for a, b in zip(times[0], times[-1], strict=True))
    return [statistics.median(t) for t in times], ratio


def flop_ratio(dense: nn.Module, slim: nn.Module, ids: torch.Tensor) -> float:
    """Dense / slimmed floating-point operations of one forward (matmuls and attention): the speedup
    that removing work alone would give. Counted on copies with eager attention, whose matmuls the
    counter sees (it does not count the fused CPU attention kernel)."""

    def flops(model: nn.Module) -> int:
        model = copy.deepcopy(model)
        model.set_attn_implementation("eager")  # type: ignore[operator]
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(ids)
        return counter.get_total_flops()

    return flops(dense) / flops(slim)


def compiled_speedup(dense: nn.Module, slim: nn.Module, ids: torch.Tensor, repeats: int) -> float:
    """Speedup of the slimmed over the dense model, both compiled with inductor (static shapes)."""
    torch._dynamo.reset()  # a fresh cache: every variant compiles anew instead of hitting recompile limits
    fns = [torch.compile(m, dynamic=False) for m in (dense, slim)]
    with torch.inference_mode():
        _, speedup = paired_medians([lambda f=f: f(ids) for f in fns], repeats)
    return speedup


def inputs(batch: int, seq: int) -> torch.Tensor:
    """Random token ids, the same for a given batch size in every table."""
    return torch.randint(0, 30522, (batch, seq), generator=torch.Generator().manual_seed(batch))


def compare(
    dense: nn.Module, masked: nn.Module, fast: nn.Module, ids: torch.Tensor, repeats: int
) -> tuple[float, float, float, float]:
    """(max |masked - fast| output difference, dense median s, fast median s, paired speedup)."""
    with torch.inference_mode():
        error = float((masked(ids).last_hidden_state - fast(ids).last_hidden_state).abs().max())
        (base, quick), speedup = paired_medians([lambda: dense(ids), lambda: fast(ids)], repeats)
    return error, base, quick, speedup


def cpu_table(args: argparse.Namespace) -> list[list[object]]:
    rows: list[list[object]] = []
    for name in args.models:
        dense = build(name)
        for heads in args.heads:
            for ffn in args.ffn:
                masked, slim = pruned_and_slimmed(dense, ffn, heads)
                params = sum(p.numel() for p in slim.encoder.parameters()) / 1e6
                for batch in args.batch:
                    ids = inputs(batch, args.seq)
                    repeats = args.repeats if batch < 8 else max(5, args.repeats // 3)
                    error, base, fast, speedup = compare(dense, masked, slim, ids, repeats)
                    rows.append([
                        name, f"{ffn:.0%}", f"{heads:.0%}", batch, f"{params:.2f}", f"{base * 1e3:.1f}",
                        f"{fast * 1e3:.1f}", f"{batch / fast:.1f}", f"{speedup:.2f}x",
                        f"{flop_ratio(dense, slim, ids):.2f}x", f"{error:.1e}",
                    ])  # fmt: skip
                    if args.compile:
                        rows[-1].append(f"{compiled_speedup(dense, slim, ids, repeats):.2f}x")
                    print(" | ".join(map(str, rows[-1])), flush=True)
    return rows


def csr_table(args: argparse.Namespace) -> list[list[object]]:
    """Dense vs the same model pruned 4x1 (every encoder Linear, local) and exported with
    ``to_sparse_csr_``, timed per layer at export on this batch's token count."""
    rows: list[list[object]] = []
    for name in args.models:
        dense = build(name)
        for sparsity in args.csr:
            masked = copy.deepcopy(dense)
            config = {"names": ["encoder"], "pattern": "4x1", "target_sparsity": sparsity, "prune_domain": "local"}
            prune_(masked, config)
            for batch in args.batch:
                sparse = copy.deepcopy(masked)
                report = to_sparse_csr_(sparse, names=["encoder"], tokens=batch * args.seq)
                repeats = args.repeats if batch < 8 else max(5, args.repeats // 3)
                error, base, fast, speedup = compare(dense, masked, sparse, inputs(batch, args.seq), repeats)
                rows.append([
                    name, f"4x1 {sparsity:.0%}", batch, f"{len(report.converted)}/{len(report.layers)}",
                    f"{base * 1e3:.1f}", f"{fast * 1e3:.1f}", f"{speedup:.2f}x", f"{error:.1e}",
                ])  # fmt: skip
                print(" | ".join(map(str, rows[-1])), flush=True)
    return rows


def gpu_table(args: argparse.Namespace) -> list[list[object]]:
    shapes = sorted({(1024, 256), (256, 1024), (1536, 384), (384, 1536), (3072, 768), (768, 3072),
                     (4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192)})  # fmt: skip
    rows: list[list[object]] = []
    for out_features, in_features in shapes:
        layer = nn.Linear(in_features, out_features).cuda().half()
        prune_(nn.Sequential(layer), pattern="2:4", target_sparsity=0.5)
        for batch in args.batch:
            dense_ms, sparse_ms = time_linear(layer, batch * args.seq, repeats=args.repeats * 5)
            rows.append([f"{out_features}x{in_features}", batch * args.seq, f"{dense_ms:.4f}", f"{sparse_ms:.4f}",
                         f"{dense_ms / sparse_ms:.2f}x"])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ffn", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75], help="FFN sparsities")
    parser.add_argument("--heads", nargs="+", type=float, default=[0.0, 0.5], help="head sparsities")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs at batch 1 (a third at larger batches)")
    parser.add_argument(
        "--threads", type=int, default=1, help=f"torch CPU threads (this machine has {os.cpu_count()} CPUs)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time both models compiled by torch.compile (inductor)"
    )
    parser.add_argument(
        "--csr", nargs="*", type=float, default=[0.8, 0.9, 0.95], help="4x1 sparsities of the CSR part (none: skip)"
    )
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU part")
    decoder = parser.add_argument_group("decoder LLM part (--decoder)")
    decoder.add_argument("--decoder", action="store_true", help="time a Llama-shaped decoder instead of BERT")
    decoder.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: bfloat16, and 2:4 export")
    decoder.add_argument("--mlp", nargs="+", type=float, default=[0.25, 0.5], help="MLP channel sparsities")
    decoder.add_argument("--layers", type=int, default=4, help="decoder layers")
    decoder.add_argument("--prompt", type=int, default=512, help="prefill tokens")
    decoder.add_argument("--new", type=int, default=32, help="greedy decode tokens")
    decoder.add_argument("--decoder-batch", nargs="+", type=int, default=[1, 8], help="decode batch sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.decoder:
        decoder_main(args)
        return

    print(f"{cpu_name()}, {args.threads} threads; torch {torch.__version__}; seq {args.seq}")
    if not args.no_cpu:
        headers = ["model", "FFN pruned", "heads pruned", "batch", "encoder Mparams", "dense ms", "slim ms",
                   "slim seq/s", "speedup", "FLOP ratio", "max |diff|"]  # fmt: skip
        headers += ["compiled speedup"] if args.compile else []
        rows = cpu_table(args)
        print(tabulate(rows, headers=headers, tablefmt="github"))
    if not args.no_cpu and args.csr:
        print("\nCSR export (to_sparse_csr_): dense vs 4x1-pruned, layers converted where timed faster")
        headers = ["model", "pruned", "batch", "layers CSR", "dense ms", "sparse ms", "speedup", "max |diff|"]
        print(tabulate(csr_table(args), headers=headers, tablefmt="github"))
    why_not = semi_structured_support()
    if why_not is None:
        print(f"\nGPU: {torch.cuda.get_device_name()}, float16, dense vs 2:4 semi-structured F.linear")
        headers = ["weight [out x in]", "tokens", "dense ms", "2:4 ms", "speedup"]
        print(tabulate(gpu_table(args), headers=headers, tablefmt="github"))
    else:
        print(f"\nGPU part skipped: {why_not}")


def decoder_main(args: argparse.Namespace) -> None:
    import decoder_speed  # benchmarks/decoder_speed.py, beside this script

    args.batch = args.decoder_batch
    print(f"{cpu_name()}, {args.threads} threads; torch {torch.__version__}; device {args.device}; "
          f"Llama-shaped {decoder_speed.SHAPE} x {args.layers} layers; {args.repeats} interleaved rounds")  # fmt: skip
    if args.device == "cuda" and decoder_speed.gpu_available() is not None:
        print(f"CUDA part skipped: {decoder_speed.gpu_available()}")
        return
    rows, headers = decoder_speed.decoder_table(args)
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if args.device == "cuda":
        why_not = semi_structured_support()
        if why_not is None:
            print("\n2:4 export (to_semi_structured_) of the dense model's decoder layers, bfloat16 prefill")
            headers = ["layers 2:4", "dense ms", "2:4 ms", "speedup"]
            print(tabulate(decoder_speed.semi_structured_table(args), headers=headers, tablefmt="github"))
        else:
            print(f"2:4 export skipped: {why_not}")


def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {cpu}"


if __name__ == "__main__":
    main()
