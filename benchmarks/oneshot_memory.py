"""One-shot peak memory: ``prune_oneshot_`` against issue #11's bound.

Not a test: it runs each case in a fresh process and prints a table.

The issue's target: *peak memory above the dense model <= one block's activations + one layer's
Hessian*. This benchmark reads "one block's activations" as what block-by-block calibration
must hold, and defines the bound as

    bound = B + A + H
    B = the block-boundary hidden states of the whole calibration set: N sequences x T tokens x
        hidden x 4 bytes (float32), computed;
    A = one (sub-)batch's activations inside one block, measured: the peak resident memory of a
        plain dense forward of block 0 on one sub-batch (``sub_batch_tokens`` tokens, whole
        sequences; its inputs already in memory), in its own process;
    H = the largest Hessian of a pruned layer, in_features² x 4 bytes, computed (for a Llama:
        down_proj's, intermediate²), counted for every method.

The target is for ``restore_on_error=False``. With ``True`` the run keeps a CPU copy of the
original weights by design (magnitude and wanda: only the values their zeros replaced, about half
the weights at 50%; sparsegpt: the whole weights, since it rewrites the kept ones); that copy is
its own column, computed from the pruned model, and those rows are judged against bound + copy.

Measurement (each row in a fresh process): a random-init ``LlamaForCausalLM`` (float32, CPU) and
the calibration batches (random token ids) are built, one forward of the whole model on one batch
warms up the kernels and the allocator, then the process's peak resident memory is reset
(``/proc/self/clear_refs``) and its resident memory read; the row's number is the peak
(``VmHWM``) after the call minus that level. ``MALLOC_MMAP_THRESHOLD_=65536`` (set for the child
processes) makes glibc return a freed tensor's memory at once, so the peaks are those of the data
alive at a time, not of the allocator's history; ``--warmup oneshot`` also runs a
``prune_oneshot_`` of a one-block model of the same shapes first, so that the code and allocator
arenas touched for the first time (a few MiB) are not counted. RSS peaks don't depend on timing:
a loaded machine gives the same numbers.

Run::

    .venv/bin/python benchmarks/oneshot_memory.py                       # defaults: the table below
    .venv/bin/python benchmarks/oneshot_memory.py --sub_batch_tokens 0  # whole calibration batches
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
MIB = 2**20
METHODS = ("magnitude", "wanda", "sparsegpt")


# -- child processes ----------------------------------------------------------------------------
def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset the peak resident memory to the current one; return the current one (bytes)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status("VmRSS")


def _model(spec: dict[str, Any], layers: int | None = None) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec["seed"])
    config = LlamaConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=layers or spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        max_position_embeddings=spec["seq_len"],
        use_cache=False,
    )
    return LlamaForCausalLM(config).eval()


def _batches(spec: dict[str, Any], count: int) -> list[dict[str, Any]]:
    import torch

    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    shape = (spec["batch_size"], spec["seq_len"])
    return [{"input_ids": torch.randint(0, spec["vocab_size"], shape, generator=gen)} for _ in range(count)]


def _config(method: str) -> dict[str, Any]:
    return {
        "target_sparsity": 0.5,
        "pruners": [{"prune_type": method, "pattern": "1x1", "names": [r"layers\.\d+\.(self_attn|mlp)\."]}],
    }


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (see the module docstring); ``spec["kind"]``: ``oneshot`` or ``block``."""
    import torch

    from pytorch_pruner import prune_oneshot_
    from pytorch_pruner.oneshot.blocks import capture_inputs, find_blocks

    torch.set_num_threads(spec["threads"])
    model = _model(spec)
    data = _batches(spec, spec["sequences"] // spec["batch_size"])
    with torch.no_grad():
        model(**data[0])
    tokens = spec["sub_batch_tokens"] or None
    if spec["kind"] == "block":
        rows = min(spec["batch_size"], max(1, (tokens or spec["batch_size"] * spec["seq_len"]) // spec["seq_len"]))
        block = find_blocks(model).modules[0]
        with torch.no_grad():
            ((args, kwargs),) = capture_inputs(model, block, [{"input_ids": data[0]["input_ids"][:rows]}], None)
            del data
            base = _reset_peak()
            out = block(*args, **kwargs)
            peak = _status("VmHWM")
        del out
        return {"activations": (peak - base) / MIB, "rows": rows}
    if spec["warmup"] == "oneshot":
        small = _model(spec, layers=1)
        prune_oneshot_(small, _config(spec["method"]), data[:1], progress=False, sub_batch_tokens=tokens)
        del small
    base = _reset_peak()
    prune_oneshot_(
        model, _config(spec["method"]), data, progress=False, restore_on_error=spec["restore"], sub_batch_tokens=tokens
    )
    peak = _status("VmHWM")
    pruned = [p for name, p in model.named_parameters() if ".layers." in name and name.endswith("proj.weight")]
    full = sum(p.numel() * p.element_size() for p in pruned)
    zeros = sum(int((p == 0).sum()) * p.element_size() for p in pruned)
    return {"peak": (peak - base) / MIB, "copy": (full if spec["method"] == "sparsegpt" else zeros) / MIB}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", json.dumps(spec)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the table ----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: magnitude, wanda, sparsegpt")
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--intermediate_size", type=int, default=1536)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=8)
    parser.add_argument("--num_kv_heads", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=1024)
    parser.add_argument("--sequences", type=int, default=128, help="calibration sequences N")
    parser.add_argument("--seq_len", type=int, default=128, help="tokens per sequence T")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per calibration batch")
    parser.add_argument("--sub_batch_tokens", type=int, default=512, help="prune_oneshot_'s; 0: None (whole batches)")
    parser.add_argument("--warmup", choices=("forward", "oneshot"), default="forward")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from tabulate import tabulate

    spec = {k: v for k, v in vars(args).items() if k not in ("methods", "child")}
    inputs = args.sequences * args.seq_len * args.hidden_size * 4 / MIB
    hessian = max(args.hidden_size, args.intermediate_size) ** 2 * 4 / MIB
    block = run_child({**spec, "kind": "block"})
    bound = inputs + block["activations"] + hessian
    rows = []
    for method in args.methods.split(","):
        for restore in (False, True):
            got = run_child({**spec, "kind": "oneshot", "method": method, "restore": restore})
            copy = got["copy"] if restore else 0.0
            limit = bound + copy
            rows.append(
                [
                    method,
                    restore,
                    f"{got['peak']:.1f}",
                    f"{inputs:.1f}",
                    f"{block['activations']:.1f}",
                    f"{hessian:.1f}",
                    f"{bound:.1f}",
                    f"{copy:.1f}" if restore else "-",
                    f"{'yes' if got['peak'] <= limit else 'no'} ({got['peak'] - limit:+.1f})",
                ]
            )
    tokens = args.sub_batch_tokens or None
    print(
        f"prune_oneshot_ peak RSS above the dense model (MiB); random Llama hidden {args.hidden_size}, MLP "
        f"{args.intermediate_size}, {args.num_layers} blocks, float32, CPU, {args.threads} threads; calibration "
        f"{args.sequences} x {args.seq_len} tokens in batches of {args.batch_size}, sub_batch_tokens={tokens} "
        f"({block['rows']} sequences per block call); 50% unstructured; warm-up: {args.warmup}"
    )
    headers = [
        "method",
        "restore_on_error",
        "peak above dense",
        "B: block inputs",
        "A: one sub-batch in a block",
        "H: largest Hessian",
        "bound B+A+H",
        "restore copy",
        "met (peak - bound[+copy])",
    ]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
