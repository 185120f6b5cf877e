"""Time of a global mask update (ranking + cap) for 1M, 10M and 100M block scores on CPU.

The scores are split over 12 layers of equal size (like a transformer's Linear layers); the
target is 0.9 with a per-layer cap of 0.95 and one layer scored low so the cap binds and the
budget is redistributed (the slow path). Prints the median of several runs per size.

    python benchmarks/selection.py [--sizes 1e6 1e7 1e8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

from pytorch_pruner.selection import LayerUnits, select


def time_select(total: int, layers: int, repeats: int, domain: str) -> tuple[float, int]:
    generator = torch.Generator().manual_seed(0)
    size = total // layers
    units = []
    for i in range(layers):
        scores = torch.rand(size, generator=generator)
        if i == 0:
            scores *= 0.01  # ranked first everywhere: the cap has to bind and redistribute
        units.append(LayerUnits(scores, unit_elements=4, numel=4 * size, max_sparsity=0.95))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        chosen = select(units, 0.9, domain)
        times.append(time.perf_counter() - start)
    pruned = sum(int(c.sum()) for c in chosen)
    return statistics.median(times), pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for total in (int(s) for s in args.sizes):
        for domain in ("global", "local"):
            seconds, pruned = time_select(total, args.layers, args.repeats, domain)
            rows.append([f"{total:,}", domain, f"{seconds * 1e3:,.1f} ms", f"{pruned / total:.4f}"])
    print(
        f"mask selection, {args.layers} layers, target 0.9, cap 0.95 binding on one layer; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(tabulate(rows, headers=["block scores", "domain", "median time", "pruned fraction"]))


if __name__ == "__main__":
    main()
