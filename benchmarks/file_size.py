"""File size of a sparse safetensors file (save_sparse) against the dense one.

Prunes the encoder Linear layers of a randomly initialised BERT-mini (4 layers, hidden 256, ffn
1024; embeddings, pooler and classifier stay dense) by magnitude, one-shot, and prints one row per
(pattern, sparsity): the dense file, the sparse file, and their ratio. Pruned weights cost one bit
each (the packed mask); kept ones their fp32 value.

    python benchmarks/file_size.py [--model mlp]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from pytorch_pruner import prune_
from pytorch_pruner.export import save_sparse

CASES = [("1x1", 0.5), ("1x1", 0.8), ("1x1", 0.9), ("4x1", 0.5), ("4x1", 0.8), ("4x1", 0.9), ("2:4", 0.5)]


def build(kind: str) -> tuple[nn.Module, list[str]]:
    """The model and the names its pruners select."""
    if kind == "mlp":
        model = nn.Sequential(*(nn.Linear(1024, 1024) for _ in range(4)))
        return model, []
    import transformers

    config = transformers.BertConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
    )
    return transformers.BertForSequenceClassification(config), ["encoder"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["bert-mini", "mlp"], default="bert-mini")
    args = parser.parse_args()
    from safetensors.torch import save_file

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pattern, sparsity in CASES:
            torch.manual_seed(0)
            model, names = build(args.model)
            pruning = prune_(model, {"names": names}, pattern=pattern, target_sparsity=sparsity)
            dense_path, sparse_path = Path(tmp, "dense.safetensors"), Path(tmp, "sparse.safetensors")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_path))
            save_sparse(sparse_path, model, pruning)
            dense, sparse = dense_path.stat().st_size, sparse_path.stat().st_size
            ratio = pruning.get_sparsity_ratio().elementwise_over_all
            # the pruned weights alone: one mask bit each, plus fp32 values of the kept ones
            masks = pruning.masks().values()
            layers_dense = sum(4 * m.numel() for m in masks)
            layers_sparse = sum((m.numel() + 7) // 8 + 4 * int(m.sum()) for m in masks)
            rows.append(
                [
                    pattern,
                    f"{sparsity:.2f}",
                    f"{ratio:.4f}",
                    f"{dense / 2**20:.2f}",
                    f"{sparse / 2**20:.2f}",
                    f"{sparse / dense:.3f}",
                    f"{layers_sparse / layers_dense:.3f}",
                ]
            )
    headers = [
        "pattern",
        "target",
        "zeros/all params",
        "dense MiB",
        "sparse MiB",
        "file sparse/dense",
        "pruned layers sparse/dense",
    ]
    try:
        from tabulate import tabulate

        print(tabulate(rows, headers=headers, disable_numparse=True, tablefmt="github"))
    except ImportError:
        print("\t".join(headers))
        for row in rows:
            print("\t".join(row))


if __name__ == "__main__":
    main()
