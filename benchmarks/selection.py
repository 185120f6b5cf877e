"""Time and temporary memory of a global mask update (ranking + cap) on CPU, in one process or over
2 gloo processes that each hold half of every layer's block scores (as FSDP2's shards).

The scores are split over 12 layers of equal size (like a transformer's Linear layers); the
target is 0.9 with a per-layer cap of 0.95 and one layer scored low so the cap binds and the
budget is redistributed (the slow path). Each size runs in fresh processes; "temp" is the peak
resident memory during selection beyond the scores and the resulting masks, per process.
Prints the median of several runs per size.

    python benchmarks/selection.py [--sizes 1e6 1e7 1e8] [--repeats 3] [--world 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tabulate import tabulate

from pytorch_pruner.selection import LayerUnits, select


def _status(field: str) -> int:
    """A memory figure of /proc/self/status, in bytes (VmRSS: now; VmHWM: the peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the peak (VmHWM) to now
        f.write("5")


def _run(rank: int, world: int, total: int, layers: int, repeats: int, domain: str, store: str, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    comm = None
    if world > 1:
        from pytorch_pruner.distributed import ProcessGroupComm

        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        comm = ProcessGroupComm()
    generator = torch.Generator().manual_seed(rank)
    size = total // layers
    local = size // world
    units = []
    for i in range(layers):
        scores = torch.rand(local, generator=generator)
        if i == 0:
            scores *= 0.01  # ranked first everywhere: the cap has to bind and redistribute
        units.append(LayerUnits(scores, 4, 4 * local * world, max_sparsity=0.95, total_units=local * world))
    warm = [LayerUnits(torch.rand(1 << 19, generator=generator), 4, 4 << 19, max_sparsity=0.95) for _ in range(2)]
    select(warm, 0.9, domain)  # the kernels' code is paged in once, outside the measurement
    del warm
    times, cpu = [], []
    for _ in range(repeats):
        if _ == 0:
            _reset_peak()
            base = _status("VmRSS")
        start, start_cpu = time.perf_counter(), time.process_time()
        chosen = select(units, 0.9, domain, comm=comm)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if _ == 0:
            peak = _status("VmHWM")
            temp = max(0, peak - base - sum(c.numel() for c in chosen))
        pruned = sum(int(c.sum()) for c in chosen)
        del chosen
    torch.save({"time": times, "cpu": cpu, "temp": temp, "pruned": pruned, "local": local * layers}, f"{out}.{rank}")
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, total: int, layers: int, repeats: int, domain: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result")
        mp.start_processes(
            _run,
            args=(world, total, layers, repeats, domain, os.path.join(tmp, "store"), out),
            nprocs=world,
            start_method="spawn",
        )
        results = [torch.load(f"{out}.{rank}") for rank in range(world)]
    pruned = results[0]["pruned"] if world == 1 else sum(r["pruned"] for r in results)
    return {
        "time": statistics.median(max(r["time"][i] for r in results) for i in range(repeats)),
        "cpu": statistics.median(max(r["cpu"][i] for r in results) for i in range(repeats)),
        "temp": max(r["temp"] / (4 * r["local"]) for r in results),
        "pruned": pruned,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2], help="process counts to run")
    parser.add_argument("--domains", nargs="+", default=["global", "local"])
    args = parser.parse_args()
    rows = []
    for total in (int(s) for s in args.sizes):
        for world in args.world:
            for domain in args.domains:
                r = measure(world, total, args.layers, args.repeats, domain)
                rows.append(
                    [
                        f"{total:,}",
                        world,
                        domain,
                        f"{r['time']:,.2f} s",
                        f"{r['cpu']:,.2f} s",
                        f"{100 * r['temp']:.1f}%",
                        f"{r['pruned'] / (total // args.layers // world * world * args.layers):.4f}",
                    ]
                )
    print(
        f"mask selection, {args.layers} layers, target 0.9, cap 0.95 binding on one layer; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads per process, {os.cpu_count()} CPUs"
    )
    headers = ["block scores", "processes", "domain", "median time", "CPU time", "temp / scores", "pruned"]
    print(tabulate(rows, headers=headers))


if __name__ == "__main__":
    main()
