"""Selection over the shards of 2 gloo processes equals one process holding every score.

Each layer's units are split between the ranks (unevenly, sometimes all on one rank); the ranks
exchange only counts, histograms and a sample. One spawn runs every case.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from pytorch_pruner import selection
from pytorch_pruner.selection import LayerUnits, select

from .test_selection import random_case

WORLD = 2
CASES = 24

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def split(layer: LayerUnits, seed: int) -> list[LayerUnits]:
    n = layer.scores.numel()
    cut = int(torch.randint(0, n + 1, (1,), generator=torch.Generator().manual_seed(seed)))
    return [
        LayerUnits(part, layer.unit_elements, layer.numel, layer.max_sparsity, layer.min_sparsity, total_units=n)
        for part in (layer.scores[:cut], layer.scores[cut:])
    ]


def cases(big: bool = True) -> list[tuple[list[LayerUnits], float, str]]:
    out = []
    for seed in range(CASES):
        layers, s = random_case(seed)
        out.append((layers, s, "global" if seed % 3 else "local"))
    if not big:
        return out
    g = torch.Generator().manual_seed(7)  # large enough for the sampled path, with ties
    big = [LayerUnits(torch.randint(0, 1000, (n,), generator=g).float(), 4, 4 * n, 0.8, 0.3) for n in (70_000, 1, 30)]
    out.append((big, 0.6, "global"))
    return out


#: (with the big case, selection's settings (_DIRECT, _SAMPLE, _CHUNK, _BAND_SHARE) or None: defaults):
#: the defaults; whole parts rescanned each round; the units inside the bracket kept and the masks
#: completed from the bracketing pass (ties split across the ranks included)
MODES: list[tuple[bool, tuple[int, int, int, float] | None]] = [
    (True, None),
    (False, (0, 4, 3, 0.0)),
    (True, (0, 1 << 20, 997, 1.0)),
]


def _worker(rank: int, store: str, out: str) -> None:
    from pytorch_pruner.distributed import ProcessGroupComm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        comm = ProcessGroupComm()
        results = []
        for big, settings in MODES:
            if settings:  # the large-input machinery on small inputs: sample, chunks, rescans or kept bands
                selection._DIRECT, selection._SAMPLE, selection._CHUNK, selection._BAND_SHARE = settings
            for c, (layers, s, domain) in enumerate(cases(big=big)):
                shards = [split(layer, 1000 * c + i)[rank] for i, layer in enumerate(layers)]
                results.append([m.clone() for m in select(shards, s, domain, comm=comm)])
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("sel")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt") for r in range(WORLD)]


def test_sharded_selection_equals_one_process(ranks: list[Any]) -> None:
    first, second = ranks
    everything = [case for big, _ in MODES for case in cases(big=big)]
    assert len(first) == len(second) == len(everything)
    for c, ((layers, s, domain), a, b) in enumerate(zip(everything, first, second, strict=True)):
        want = select(layers, s, domain)
        got = [torch.cat([x, y]) for x, y in zip(a, b, strict=True)]
        assert [g.tolist() for g in got] == [w.tolist() for w in want], (c, s, domain)
