"""Per-step cost of pruning while training a BERT-mini-size model on CPU.

Two copies of a BERT-mini-shaped model (hidden 256, 4 layers, ffn 1024; random init, synthetic
batches) train in the same process, alternating in short rounds so that machine noise hits both
alike: one dense, one with snip_momentum 4x1 iterative pruning whose window covers the whole run
(scores accumulate and masks apply every step: the worst case). Prints the median time of an
ordinary step for each, their ratio, the median cost of the hooks alone, the extra cost of a
mask-update step, and the bytes of pruner state per pruned weight.

    python benchmarks/overhead.py [--rounds 12] [--steps 5] [--batch 16] [--seq 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from tabulate import tabulate
from transformers import BertConfig, BertForSequenceClassification

from pytorch_pruner import Pruning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5, help="steps per model per round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--pattern", default="4x1")
    parser.add_argument("--prune-type", default="snip_momentum")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    dense = BertForSequenceClassification(config)
    sparse = copy.deepcopy(dense)
    total_steps = 3 + args.rounds * args.steps  # steps the pruned model takes
    frequency = args.steps * 2  # a mask update every other round, timed on its own
    pruning = Pruning(
        {
            "prune_type": args.prune_type,
            "pattern": args.pattern,
            "target_sparsity": 0.9,
            "names": ["encoder"],
            "prune_layer_type": ["Linear"],
            "start_step": 1,
            "end_step": total_steps,
            "update_frequency_on_step": frequency,
        }
    )
    pruning.on_train_begin(sparse)
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=1e-5)
    opt_sparse = torch.optim.AdamW(sparse.parameters(), lr=1e-5)
    batch = {
        "input_ids": torch.randint(0, config.vocab_size, (args.batch, args.seq)),
        "labels": torch.randint(0, 2, (args.batch,)),
    }

    def step(model, optimizer, p: Pruning | None) -> tuple[float, float, bool]:
        start = time.perf_counter()
        hooks = 0.0
        pruned = False
        if p is not None:
            t = time.perf_counter()
            pruned = any(q.schedule.is_pruning_step(p.step) for q in p.pruners)
            p.on_step_begin(p.step)
            hooks += time.perf_counter() - t
        model(**batch).loss.backward()
        if p is not None:
            t = time.perf_counter()
            p.on_before_optimizer_step()
            hooks += time.perf_counter() - t
        optimizer.step()
        if p is not None:
            t = time.perf_counter()
            p.on_after_optimizer_step()
            hooks += time.perf_counter() - t
        optimizer.zero_grad()
        return time.perf_counter() - start, hooks, pruned

    for _ in range(3):  # warm-up (allocator, first mask update)
        step(dense, opt_dense, None)
        step(sparse, opt_sparse, pruning)
    dense_times, sparse_times, hook_times, update_extra = [], [], [], []
    for _ in range(args.rounds):
        dense_times += [step(dense, opt_dense, None)[0] for _ in range(args.steps)]
        for _ in range(args.steps):
            total, hooks, pruned = step(sparse, opt_sparse, pruning)
            if pruned:
                update_extra.append(total - statistics.median(dense_times))
            else:
                sparse_times.append(total)
                hook_times.append(hooks)

    layers = [layer for p in pruning.pruners for layer in p.layers]
    weights = sum(layer.numel for layer in layers)
    state = sum(layer.keep.numel() for layer in layers) + sum(p.criterion.state_bytes() for p in pruning.pruners)
    d, s = statistics.median(dense_times), statistics.median(sparse_times)
    hooks = statistics.median(hook_times)
    rows = [
        ["dense step (median)", f"{1e3 * d:.1f} ms"],
        [f"{args.prune_type} {args.pattern} step (median)", f"{1e3 * s:.1f} ms"],
        ["ratio pruned / dense", f"x{s / d:.4f}"],
        ["hooks alone (median)", f"{1e3 * hooks:.2f} ms ({100 * hooks / d:.2f}% of a step)"],
        ["mask-update step, extra over a dense step (median)", f"{1e3 * statistics.median(update_extra):.1f} ms"],
        ["pruner state per pruned weight", f"{state / weights:.2f} B"],
        ["steps timed (dense / pruned / updates)", f"{len(dense_times)} / {len(sparse_times)} / {len(update_extra)}"],
    ]
    threads = torch.get_num_threads()
    print(f"BERT-mini size, batch {args.batch} x seq {args.seq}, torch {torch.__version__}, {threads} threads")
    print(tabulate(rows, headers=["measure", "value"]))
    print(f"final sparsity of the pruned layers: {pruning.report().block_sparsity:.3f}")


if __name__ == "__main__":
    main()
