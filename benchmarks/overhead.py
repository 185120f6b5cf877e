"""Per-step cost of pruning while training: a BERT-mini-size model on CPU, Llama-size layers on a GPU.

CPU presets (``--preset small`` / ``--preset large`` / ``--preset both``, the default): two copies of
a BERT-mini-shaped model (hidden 256, 4 layers, ffn 1024; random init, synthetic batches, AdamW)
train in one process, dense and pruned (snip_momentum 4x1 on the encoder's Linear layers)
interleaved in rounds of ``--chunk`` steps, so that machine noise hits both alike.

* ``small`` is the reference harness pruners are compared on: batch 32 x 32 tokens, 240 steps, a
  pruning window from 10% to 70% of them (steps 24-168) to 0.8, a mask update every 10 steps,
  the two models alternating step by step;
* ``large`` is this benchmark's older shape: batch 16 x 128 tokens, 63 steps, to 0.9 with a window
  over the whole run (scores accumulate and masks apply every step), in rounds of 5 steps.

Each run prints the median dense step, the median pruned step outside mask updates, their ratio,
the median time of the hooks alone, the median extra of a mask-update step over the median dense
step, and of that extra the median ``on_step_begin`` of the mask updates (the new masks: ranking,
masks, zeroing; the rest of the extra is the step's ordinary hooks and noise); ``--runs`` runs are
made and the medians of their ratios and extras are printed last.
Then the pruner state per pruned weight for each criterion and pattern.

``--preset gpu`` needs CUDA (it explains and exits without): Llama-3.2-1B-shaped layers (16 x
q, k, v, o, gate, up, down; 0.97 B weights, bf16) with random gradients; it times the pruning
hooks of an ordinary step against an AdamW step on the same weights (CUDA events), counts the
kernels each launches (torch.profiler), and runs the hooks under
``torch.cuda.set_sync_debug_mode("error")`` so that any host sync fails.

``--fsdp2`` runs the ``small`` preset (or ``--steps`` steps) in 2 processes (gloo, CPU), each model
sharded with ``fully_shard`` per encoder layer and at the root, dense and pruned interleaved step
by step as above; rank 0 prints the same columns. Both processes share the machine's cores.

    python benchmarks/overhead.py [--preset small|large|both|gpu] [--runs 3]
    python benchmarks/overhead.py --fsdp2 [--runs 3] [--steps 240]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from tabulate import tabulate

from pytorch_pruner import Pruning


@dataclass
class Preset:
    batch: int
    seq: int
    steps: int
    start: int  # first pruning step
    end: int  # last pruning step
    frequency: int
    target: float
    chunk: int  # steps per model before switching to the other
    warmup: int


PRESETS = {
    "small": Preset(batch=32, seq=32, steps=240, start=24, end=168, frequency=10, target=0.8, chunk=1, warmup=3),
    "large": Preset(batch=16, seq=128, steps=63, start=1, end=63, frequency=10, target=0.9, chunk=5, warmup=3),
}


def bert_mini():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    return config, BertForSequenceClassification(config)


def pruning_config(prune_type: str, pattern: str, target: float, start: int, end: int, frequency: int) -> dict:
    return {
        "prune_type": prune_type,
        "pattern": pattern,
        "target_sparsity": target,
        "names": ["encoder"],
        "prune_layer_type": ["Linear"],
        "start_step": start,
        "end_step": end,
        "update_frequency_on_step": frequency,
    }


def _fully_shard(model):
    """FSDP2 over every rank: each encoder layer, then the root (as accelerate's FSDP2 plugin wraps)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def one_run(preset: Preset, prune_type: str, pattern: str, seed: int, fsdp2: bool = False) -> dict[str, float]:
    """Train a dense and a pruned copy interleaved; the medians of one run."""
    torch.manual_seed(seed)
    config, dense = bert_mini()
    sparse = copy.deepcopy(dense)
    if fsdp2:
        dense, sparse = _fully_shard(dense), _fully_shard(sparse)
    pruning = Pruning(pruning_config(prune_type, pattern, preset.target, preset.start, preset.end, preset.frequency))
    pruning.on_train_begin(sparse)
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=1e-5)
    opt_sparse = torch.optim.AdamW(sparse.parameters(), lr=1e-5)
    batch = {
        "input_ids": torch.randint(0, config.vocab_size, (preset.batch, preset.seq)),
        "labels": torch.randint(0, 2, (preset.batch,)),
    }

    def step(model, optimizer, p: Pruning | None) -> tuple[float, float, bool, float]:
        start = time.perf_counter()
        hooks = begin = 0.0
        pruned = False
        if p is not None:
            t = time.perf_counter()
            pruned = any(q.schedule.is_pruning_step(p.step) for q in p.pruners)
            p.on_step_begin(p.step)
            begin = time.perf_counter() - t
            hooks += begin
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
        return time.perf_counter() - start, hooks, pruned, begin

    for _ in range(preset.warmup):  # allocator, first-call costs; the pruned model's steps count
        step(dense, opt_dense, None)
    dense_times, sparse_times, hook_times, update_times, prune_times = [], [], [], [], []
    while pruning.step < preset.steps:
        for _ in range(preset.chunk):
            dense_times.append(step(dense, opt_dense, None)[0])
        for _ in range(min(preset.chunk, preset.steps - pruning.step)):
            total, hooks, pruned, begin = step(sparse, opt_sparse, pruning)
            (update_times if pruned else sparse_times).append(total)
            if pruned:
                prune_times.append(begin)  # on_step_begin of a mask update: the new masks, applied
            else:
                hook_times.append(hooks)
    d, s = statistics.median(dense_times), statistics.median(sparse_times)
    return {
        "dense": d,
        "pruned": s,
        "ratio": s / d,
        "hooks": statistics.median(hook_times),
        "update_extra": statistics.median(update_times) - d if update_times else float("nan"),
        "prune": statistics.median(prune_times) if prune_times else float("nan"),
        "updates": len(update_times),
        "steps": len(sparse_times),
        "sparsity": pruning.report().block_sparsity,
    }


def _fsdp2_worker(rank: int, store: str, preset: Preset, runs: int, prune_type: str, pattern: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        results = [one_run(preset, prune_type, pattern, seed, fsdp2=True) for seed in range(runs)]
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def fsdp2_table(preset: Preset, runs: int, prune_type: str, pattern: str) -> None:
    """The ``small`` comparison with both models sharded by FSDP2 over 2 gloo processes."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = f"{folder}/results.pt"
        args = (f"{folder}/store", preset, runs, prune_type, pattern, out)
        mp.spawn(_fsdp2_worker, args=args, nprocs=2, join=True)
        results = torch.load(out)
    print(f"\nFSDP2, 2 gloo processes (1 thread each): {prune_type} {pattern}, {preset.steps} steps, interleaved")
    rows = [
        [
            i,
            1e3 * r["dense"],
            1e3 * r["pruned"],
            r["ratio"],
            1e3 * r["hooks"],
            1e3 * r["update_extra"],
            1e3 * r["prune"],
            r["sparsity"],
        ]
        for i, r in enumerate(results)
    ]
    headers = ["run", "dense ms", "pruned ms", "ratio", "hooks ms", "update extra ms", "new masks ms", "block sparsity"]
    print(tabulate(rows, headers=headers, floatfmt=".4g"))
    print(f"median ratio {statistics.median(r['ratio'] for r in results):.4f}")


def cpu_table(name: str, preset: Preset, runs: int, prune_type: str, pattern: str) -> None:
    results = [one_run(preset, prune_type, pattern, seed=run) for run in range(runs)]
    rows = [
        [
            f"run {i + 1}",
            f"{1e3 * r['dense']:.1f}",
            f"{1e3 * r['pruned']:.1f}",
            f"x{r['ratio']:.4f}",
            f"{1e3 * r['hooks']:.2f} ({100 * r['hooks'] / r['dense']:.2f}%)",
            f"{1e3 * r['update_extra']:+.1f}",
            f"{1e3 * r['prune']:.1f}",
            f"{r['steps']} / {r['updates']}",
            f"{r['sparsity']:.3f}",
        ]
        for i, r in enumerate(results)
    ]
    rows.append(
        [
            f"median of {runs}",
            "",
            "",
            f"x{statistics.median(r['ratio'] for r in results):.4f}",
            "",
            f"{1e3 * statistics.median(r['update_extra'] for r in results):+.1f}",
            f"{1e3 * statistics.median(r['prune'] for r in results):.1f}",
            "",
            "",
        ]
    )
    headers = [
        "",
        "dense step ms",
        "pruned step ms",
        "ratio",
        "hooks ms (% of step)",
        "mask update extra ms",
        "of it: new masks ms",
        "steps / updates",
        "sparsity",
    ]
    print(
        f"\n{name}: BERT-mini size, batch {preset.batch} x {preset.seq} tokens, AdamW, {prune_type} {pattern} "
        f"to {preset.target} over steps {preset.start}-{preset.end} of {preset.steps}, every {preset.frequency} "
        f"steps; models alternate every {preset.chunk} step(s)"
    )
    print(tabulate(rows, headers=headers))


def state_table() -> None:
    """Bytes of pruner state per pruned weight, for each criterion and pattern."""
    _, model = bert_mini()
    rows = []
    for prune_type in ("magnitude", "snip_momentum"):
        for pattern in ("1x1", "4x1", "2:4"):
            pruning = Pruning(pruning_config(prune_type, pattern, 0.5, 1, 2, 1))
            pruning.on_train_begin(model)
            weights = sum(layer.numel for p in pruning.pruners for layer in p.layers)
            state = sum(p.state_bytes() for p in pruning.pruners)
            scratch = sum(p.scratch_bytes() for p in pruning.pruners)
            rows.append([prune_type, pattern, f"{state / weights:.2f} B", f"{scratch / weights:.3f} B"])
    print("\npruner state per pruned weight (BERT-mini encoder Linear layers)")
    print(tabulate(rows, headers=["criterion", "pattern", "state (masks + scores)", "scratch (reused)"]))


# -- GPU -----------------------------------------------------------------------------------------
def gpu_benchmark(pattern: str) -> None:
    if not torch.cuda.is_available():
        print(
            "--preset gpu needs a CUDA device and there is none here: nothing measured. Run it where torch "
            "sees a GPU: python benchmarks/overhead.py --preset gpu"
        )
        return
    from torch import nn
    from torch.profiler import ProfilerActivity, profile

    hidden, inter, kv, layers = 2048, 8192, 512, 16  # Llama-3.2-1B's decoder layers
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden)]
    shapes.append((hidden, inter))
    torch.manual_seed(0)
    model = nn.ModuleList(
        nn.ModuleList(nn.Linear(i, o, bias=False, device="cuda", dtype=torch.bfloat16) for o, i in shapes)
        for _ in range(layers)
    )
    weights = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pruning = Pruning(
        {
            "prune_type": "snip_momentum",
            "pattern": pattern,
            "target_sparsity": 0.5,
            "start_step": 1,
            "end_step": 1000,
            "update_frequency_on_step": 100,
        }
    )
    pruning.on_train_begin(model)
    for _ in range(3):  # step 1 prunes, so masks apply from then on; warm-up
        pruning.on_step_begin()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()

    def hooks() -> None:
        pruning.on_step_begin()
        pruning.on_before_optimizer_step()
        pruning.on_after_optimizer_step()

    def timed(fn, repeat: int = 10) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeat):
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    hook_ms = timed(hooks)
    adam_ms = timed(optimizer.step)

    def kernels(fn) -> int:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")

    hook_kernels, adam_kernels = kernels(hooks), kernels(optimizer.step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        hooks()
        synced = "none (ran under set_sync_debug_mode('error'))"
    except RuntimeError as err:
        synced = f"SYNCED: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    rows = [
        ["hooks of an ordinary step (median of 10)", f"{hook_ms:.2f} ms", f"{hook_kernels} kernels"],
        ["AdamW step on the same weights (median of 10)", f"{adam_ms:.2f} ms", f"{adam_kernels} kernels"],
        ["hooks / AdamW", f"{hook_ms / adam_ms:.3f}", ""],
        ["host syncs in the hooks", synced, ""],
    ]
    print(
        f"\nGPU: {torch.cuda.get_device_name()}, {layers} Llama-3.2-1B decoder layers ({weights / 1e9:.2f} B weights, "
        f"bf16), snip_momentum {pattern}, torch {torch.__version__}"
    )
    print(tabulate(rows, headers=["measure", "value", "launches"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["small", "large", "both", "gpu"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per CPU preset")
    parser.add_argument("--pattern", default="4x1")
    parser.add_argument("--prune-type", default="snip_momentum")
    parser.add_argument("--fsdp2", action="store_true", help="the small preset under FSDP2, 2 gloo processes")
    parser.add_argument("--steps", type=int, help="with --fsdp2: steps per run (default: the small preset's)")
    args = parser.parse_args()
    if args.fsdp2:
        preset = PRESETS["small"]
        if args.steps:  # the same window and update count relative to the run
            n = args.steps
            preset = Preset(preset.batch, preset.seq, n, n // 10, 7 * n // 10, max(1, n // 24), preset.target, 1, 3)
        fsdp2_table(preset, args.runs, args.prune_type, args.pattern)
        return
    if args.preset == "gpu":
        gpu_benchmark(args.pattern)
        return
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {sys.platform}")
    for name in ("small", "large") if args.preset == "both" else (args.preset,):
        cpu_table(name, PRESETS[name], args.runs, args.prune_type, args.pattern)
    state_table()


if __name__ == "__main__":
    main()
