"""FSDP2 (``torch.distributed.fsdp.fully_shard``): pruning sharded weights shard by shard.

Two processes on CPU with the gloo backend and a 1-D mesh, rendezvous through a file in tmp_path;
one spawn runs every scenario of this module and saves what the tests check.

The reference runs in lockstep, in the same process: an unsharded copy of the model pruned by its
own ``Pruning``, whose weights (and gradients) are set each step to the gathered FSDP2 ones. So
masks and scores must be bit-identical to one process's from the same numbers, every step. The
layers are sized so that rows split unevenly (33 rows: 17 + 16) and one rank holds no row at all
(1 row: 1 + 0).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pytorch_pruner import Pruning, PruningError, StateError
from pytorch_pruner.checkpoint import save_checkpoint

WORLD = 2
STEPS = 7

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)

SCHEDULE = {"start_step": 1, "end_step": 5, "update_frequency_on_step": 2, "target_sparsity": 0.6}
CONFIGS: dict[str, dict[str, Any]] = {
    "magnitude": {
        **SCHEDULE,
        "pruners": [
            {"names": ["^fc1$"], "prune_type": "magnitude", "pattern": "4x1", "prune_domain": "local"},
            {"names": ["^fc2$", "^head$"], "prune_type": "magnitude", "pattern": "1x1"},
            {
                "names": ["^conv$"],
                "prune_type": "magnitude",
                "pattern": "2:4",
                "prune_domain": "row",
                "target_sparsity": 0.5,
                "prune_layer_type": ["Conv1d"],
            },
        ],
    },
    "snip": {
        **SCHEDULE,
        "pruners": [
            {"names": ["^fc1$"], "prune_type": "snip_momentum", "pattern": "4x1"},
            {"names": ["^fc2$", "^head$"], "prune_type": "snip", "pattern": "1x1"},
            {
                "names": ["^conv$"],
                "prune_type": "snip_momentum",
                "pattern": "1x1",
                "prune_domain": "row",
                "prune_layer_type": ["Conv1d"],
            },
        ],
    },
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)  # [8, 4, 3]: 4 + 4 rows
        self.fc1 = nn.Linear(64, 64)  # 4x1 blocks: 32 + 32 rows
        self.fc2 = nn.Linear(64, 33)  # uneven: 17 + 16 rows
        self.head = nn.Linear(33, 1)  # rank 1 holds no row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.view(-1, 4, 8))).flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return Net()


def _shard(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for name in ("conv", "fc1", "fc2", "head"):
        fully_shard(getattr(model, name), mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(8, 32, generator=torch.Generator().manual_seed(1000 * step + rank))


def _zero_where_pruned(pruning: Pruning) -> bool:
    """On this rank: every weight the local mask prunes is exactly 0."""
    return all(
        bool((layer.target.weight[~p.full_mask(layer)] == 0).all()) for p in pruning.pruners for layer in p.layers
    )


def _lockstep(kind: str, rank: int) -> dict[str, Any]:
    """FSDP2 training, with the unsharded reference fed the gathered weights and gradients."""
    model = _shard(make_net())
    pruning = Pruning(CONFIGS[kind])
    pruning.on_train_begin(model)
    ref_model = make_net()
    ref = Pruning(CONFIGS[kind])
    ref.on_train_begin(ref_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    params = dict(model.named_parameters())
    shards = [layer.target.shard for p in pruning.pruners for layer in p.layers]
    same_masks, zero, same_scores = [], [], []
    for step in range(STEPS):
        with torch.no_grad():  # the reference starts the step from the sharded model's weights
            for name, p in ref_model.named_parameters():
                p.copy_(params[name].full_tensor())
        pruning.on_step_begin(step)
        ref.on_step_begin(step)
        masks = {k: v.full_tensor() for k, v in pruning.masks().items()}
        same_masks.append(all(torch.equal(masks[k], v) for k, v in ref.masks().items()))
        model(_batch(rank, step)).pow(2).mean().backward()
        for name, p in ref_model.named_parameters():
            p.grad = params[name].grad.full_tensor()
        pruning.on_before_optimizer_step()
        ref.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        ref.on_after_optimizer_step()
        optimizer.zero_grad()
        zero.append(_zero_where_pruned(pruning))
        for p, q in zip(pruning.pruners, ref.pruners, strict=True):  # scores kept between steps (gradient criteria)
            kept = zip(
                p.criterion.state_dict().get("scores", []), q.criterion.state_dict().get("scores", []), strict=True
            )
            for layer, (ours, theirs) in zip(p.layers, kept, strict=False):
                whole = layer.target.shard.dtensor(ours, theirs.shape).full_tensor()
                same_scores.append(torch.equal(whole, theirs))
    report = pruning.report()
    now = [layer.target.shard for p in pruning.pruners for layer in p.layers]
    return {
        # FSDP2 keeps the sharded parameter and its local tensor between steps: the cheap identity
        # check of every hook never had to rebuild a shard
        "shards_kept": len(shards) == 4 and all(a is b for a, b in zip(shards, now, strict=True)),
        "same_masks": same_masks,
        "same_scores": same_scores,
        "zero": zero,
        "ratios": pruning.get_sparsity_ratio(),
        "ref_ratios": ref.get_sparsity_ratio(),
        "compliant": [row.compliant for row in report.layers],
        "shapes": [row.shape for row in report.layers],
        "masks": {k: v.full_tensor() for k, v in pruning.masks().items()},
        "local_rows": {layer.name: layer.target.shape2d[0] for p in pruning.pruners for layer in p.layers},
    }


def _ddp_masks(kind: str, rank: int) -> dict[str, torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    model = make_net()
    ddp = DistributedDataParallel(model)
    pruning = Pruning(CONFIGS[kind])
    pruning.on_train_begin(ddp)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    for step in range(STEPS):
        pruning.on_step_begin(step)
        ddp(_batch(rank, step)).pow(2).mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    return pruning.masks()


def _fsdp_masks(kind: str, rank: int) -> dict[str, torch.Tensor]:
    model = _shard(make_net())
    pruning = Pruning(CONFIGS[kind])
    pruning.on_train_begin(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(STEPS):
        pruning.on_step_begin(step)
        model(_batch(rank, step)).pow(2).mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    return {k: v.full_tensor() for k, v in pruning.masks().items()}


def _collectives_in_hooks(rank: int) -> list[int]:
    """How many collectives the three hooks of each ordinary (not pruning) step issue together."""
    model = _shard(make_net())
    pruning = Pruning(CONFIGS["snip"])  # snip_momentum scores every step; masks change at step 3 first
    pruning.on_train_begin(model)
    names = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "barrier")
    originals = {name: getattr(dist, name) for name in names}
    calls: list[str] = []

    def counting(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return originals[name](*args, **kwargs)

        return call

    counts = []
    for step in range(4):
        calls.clear()
        for name in names:
            setattr(dist, name, counting(name))
        try:
            pruning.on_step_begin(step)
        finally:
            for name in names:
                setattr(dist, name, originals[name])
        model(_batch(rank, step)).pow(2).mean().backward()  # FSDP2's own collectives: not counted
        for name in names:
            setattr(dist, name, counting(name))
        try:
            pruning.on_before_optimizer_step()
            pruning.on_after_optimizer_step()
        finally:
            for name in names:
                setattr(dist, name, originals[name])
        model.zero_grad()
        counts.append(len(calls))
    return counts


def _overflow_on_one_rank(rank: int) -> dict[str, Any]:
    """An inf in rank 1's gradient rows only: every rank must skip the step's score update."""
    model = _shard(make_net())
    pruning = Pruning(CONFIGS["snip"])
    pruning.on_train_begin(model)
    before = after = None
    for step in range(3):
        pruning.on_step_begin(step)
        model(_batch(rank, step)).pow(2).mean().backward()
        if step == 2:
            before = [s.clone() for s in pruning.pruners[0].criterion.scores()]
            if rank == 1:
                model.fc1.weight.grad.to_local()[0, 0] = float("inf")
        pruning.on_before_optimizer_step()
        if step == 2:
            after = [s.clone() for s in pruning.pruners[0].criterion.scores()]
        pruning.on_after_optimizer_step()
        model.zero_grad()
    return {"unchanged": all(torch.equal(a, b) for a, b in zip(before or [], after or [], strict=True))}


def _refusals() -> dict[str, str]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    out = {}
    mesh = init_device_mesh("cpu", (WORLD,))
    straddling = nn.Sequential(OrderedDict(up=nn.Linear(8, 24)))  # 12 rows per rank; 8x1 blocks straddle
    fully_shard(straddling, mesh=mesh)
    with pytest.raises(PruningError, match=r"layer up: FSDP2 gives each of the 2 ranks 12 of its 24 rows") as err:
        Pruning({"prune_type": "magnitude", "pattern": "8x1"}).on_train_begin(straddling)
    out["straddle"] = str(err.value)
    columns = nn.Sequential(OrderedDict(up=nn.Linear(8, 24)))
    fully_shard(columns, mesh=mesh)
    with pytest.raises(PruningError, match=r"pattern 'channelx1' prunes units that span every row") as err:
        Pruning({"prune_type": "magnitude", "pattern": "channelx1"}).on_train_begin(columns)
    out["columns"] = str(err.value)
    tensor_parallel = nn.Sequential(OrderedDict(up=nn.Linear(8, 24)))
    tensor_parallel.up.weight = nn.Parameter(distribute_tensor(tensor_parallel.up.weight.detach(), mesh, [Shard(1)]))
    with pytest.raises(PruningError, match=r"layer up: its weight is a DTensor placed \(Shard\(dim=1\),\)") as err:
        Pruning({"prune_type": "magnitude", "pattern": "1x1"}).on_train_begin(tensor_parallel)
    out["tensor_parallel"] = str(err.value)
    model = _shard(make_net())
    pruning = Pruning(CONFIGS["magnitude"])
    pruning.on_train_begin(model)
    with pytest.raises(StateError, match=r"sharded by FSDP2 .* torch.distributed.checkpoint") as err:
        save_checkpoint(os.devnull, model, None, pruning)
    out["torch_save"] = str(err.value)
    return out


# every kind of state: scores (snip_momentum), each rank's input statistics (wanda), masks only
RESUME = {
    **SCHEDULE,
    "pruners": [
        {"names": ["^fc1$"], "prune_type": "snip_momentum", "pattern": "4x1"},
        {"names": ["^fc2$", "^head$"], "prune_type": "wanda", "pattern": "1x1", "prune_domain": "row"},
        {"names": ["^conv$"], "prune_type": "magnitude", "pattern": "2:4", "target_sparsity": 0.5},
    ],
    "prune_layer_type": ["Linear", "Conv1d"],
}
SAVE_AFTER = 3  # optimizer steps done when the checkpoint is written: pruned at step 1, next at 3


def _build() -> tuple[nn.Module, Pruning, torch.optim.Optimizer]:
    model = _shard(make_net())
    pruning = Pruning(RESUME)
    pruning.on_train_begin(model)
    return model, pruning, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(rank: int, run: tuple[nn.Module, Pruning, torch.optim.Optimizer], steps: range) -> None:
    model, pruning, optimizer = run
    for step in steps:
        pruning.on_step_begin(step)
        model(_batch(rank, step)).pow(2).mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()


def _gathered(run: tuple[nn.Module, Pruning, torch.optim.Optimizer]) -> dict[str, Any]:
    model, pruning, _ = run
    state = pruning.state_dict()
    return {
        "masks": {k: v.full_tensor() for k, v in pruning.masks().items()},
        "state": [
            t.full_tensor() for p in state["pruners"] for ts in [p["masks"], *p["criterion"].values()] for t in ts
        ],
        "weights": {n: p.full_tensor() for n, p in model.named_parameters()},
        "step": pruning.step,
    }


def _resume_and_export(rank: int, folder: str) -> dict[str, Any]:
    """Uninterrupted vs saved through DCP mid-pruning and resumed in new objects; then the export."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from pytorch_pruner.export import save_sparse

    whole = _build()
    _train(rank, whole, range(STEPS))
    want = _gathered(whole)
    save_sparse(os.path.join(folder, "model.sparse.safetensors"), whole[0], whole[1])

    first = _build()
    _train(rank, first, range(SAVE_AFTER))
    model_state, optim_state = get_state_dict(first[0], first[2])
    dcp.save({"model": model_state, "optim": optim_state, "pruning": first[1].state_dict()}, checkpoint_id=folder)
    own_file = os.path.join(folder, f"pruning.rank{rank}.pt")  # the other way: a file per rank (the Trainer's)
    torch.save(first[1].state_dict(local=True), own_file)
    del first
    out: dict[str, Any] = {"want": want}
    for way in ("dcp", "file per rank"):
        second = _build()
        model_state, optim_state = get_state_dict(second[0], second[2])
        state = {"model": model_state, "optim": optim_state}
        if way == "dcp":
            state["pruning"] = second[1].state_dict()
        dcp.load(state, checkpoint_id=folder)
        set_state_dict(second[0], second[2], model_state_dict=state["model"], optim_state_dict=state["optim"])
        second[1].load_state_dict(state["pruning"] if way == "dcp" else torch.load(own_file, weights_only=True))
        out[f"resumed_at {way}"] = second[1].step
        _train(rank, second, range(second[1].step, STEPS))
        out[way] = _gathered(second)
    return out


def _lightning_state(rank: int, folder: str) -> dict[str, bool]:
    """The Lightning callback's checkpoint entry under FSDP2 (``gathered_state_dict``, written by
    rank 0 alone, as Lightning does) restores every rank's own rows (``own_state``). Lightning
    itself is not imported: it would double this module's time."""
    from pytorch_pruner.distributed import gathered_state_dict, own_state

    run = _build()
    _train(rank, run, range(SAVE_AFTER))
    checkpoint = {"pytorch_pruner": gathered_state_dict(run[1])}
    path = os.path.join(folder, "lightning.ckpt")
    if rank == 0:
        torch.save(checkpoint, path)
    dist.barrier()
    fresh = _build()
    fresh[1].load_state_dict(own_state(torch.load(path, weights_only=False)["pytorch_pruner"]))
    want, got = run[1].state_dict(local=True), fresh[1].state_dict(local=True)
    tensors = [
        (a, b)
        for p, q in zip(want["pruners"], got["pruners"], strict=True)
        for key in ("masks", *p["criterion"])
        for a, b in zip(
            p[key] if key == "masks" else p["criterion"][key],
            q[key] if key == "masks" else q["criterion"][key],
            strict=True,
        )
    ]
    return {"same": got["step"] == SAVE_AFTER and bool(tensors) and all(torch.equal(a, b) for a, b in tensors)}


def _wanda_scores(rank: int) -> dict[str, Any]:
    """wanda's scores of each rank's rows, from its inputs' statistics all-reduced over the ranks,
    against one process that saw every rank's batch."""
    config = {"prune_type": "wanda", "pattern": "1x1", "start_step": 1, "end_step": 1, "target_sparsity": 0.5}
    config["prune_layer_type"] = ["Linear", "Conv1d"]
    model = _shard(make_net())
    pruning = Pruning(config)
    pruning.on_train_begin(model)
    ref_model = make_net()
    ref = Pruning(config)
    ref.on_train_begin(ref_model)
    with torch.no_grad():
        model(_batch(rank, 0))
        for r in range(WORLD):
            ref_model(_batch(r, 0))
    layers = pruning.pruners[0].layers
    ours, theirs = pruning.pruners[0].criterion.scores(), ref.pruners[0].criterion.scores()
    gathered = [
        layer.target.shard.dtensor(o, t.shape).full_tensor() for layer, o, t in zip(layers, ours, theirs, strict=True)
    ]
    return {"gathered": gathered, "reference": theirs}


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        result: dict[str, Any] = {kind: _lockstep(kind, rank) for kind in CONFIGS}
        result["fsdp_snip"] = _fsdp_masks("snip", rank)
        result["ddp_snip"] = _ddp_masks("snip", rank)
        result["overflow"] = _overflow_on_one_rank(rank)
        result["collectives"] = _collectives_in_hooks(rank)
        result["refusals"] = _refusals()
        result["resume"] = _resume_and_export(rank, out)
        result["lightning"] = _lightning_state(rank, out)
        result["wanda"] = _wanda_scores(rank)
        result["folder"] = out
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("fsdp2")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_masks_and_scores_equal_one_process_from_the_same_numbers(ranks: list[dict[str, Any]], kind: str) -> None:
    for result in ranks:
        run = result[kind]
        assert run["same_masks"] == [True] * STEPS
        assert run["shards_kept"]
        assert all(run["same_scores"]) and len(run["same_scores"]) == (0 if kind == "magnitude" else 4 * STEPS)
        assert run["masks"].keys() == {"conv", "fc1", "fc2", "head"}
        assert not all(bool(m.all()) for m in run["masks"].values())  # it did prune
    assert ranks[0][kind]["local_rows"] == {"conv": 4, "fc1": 32, "fc2": 17, "head": 1}
    assert ranks[1][kind]["local_rows"] == {"conv": 4, "fc1": 32, "fc2": 16, "head": 0}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_pruned_weights_are_exactly_zero_on_every_rank_after_every_step(ranks: list[dict[str, Any]], kind: str) -> None:
    for result in ranks:
        assert result[kind]["zero"] == [True] * STEPS
        assert result[kind]["compliant"] == [True] * 4


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_report_gives_global_numbers_on_every_rank(ranks: list[dict[str, Any]], kind: str) -> None:
    for result in ranks:
        assert result[kind]["ratios"] == result[kind]["ref_ratios"]
        assert result[kind]["shapes"] == [(64, 64), (33, 64), (1, 33), (8, 4, 3)]


def test_snip_masks_match_a_ddp_run(ranks: list[dict[str, Any]]) -> None:
    # gradients are averaged in another order than DDP's: the same counts, nearly the same positions
    for result in ranks:
        fsdp, ddp = result["fsdp_snip"], result["ddp_snip"]
        assert fsdp.keys() == ddp.keys()
        for name in fsdp:
            assert int(fsdp[name].sum()) == int(ddp[name].sum()), name
        same = sum(int((fsdp[n] == ddp[n]).sum()) for n in fsdp)
        assert same / sum(m.numel() for m in fsdp.values()) >= 0.999


def test_an_ordinary_step_costs_one_tiny_all_reduce(ranks: list[dict[str, Any]]) -> None:
    # steps 0-2 only score (1 all-reduce of the finiteness flag; step 1's target sparsity is 0);
    # step 3 selects masks (selection's counts and histograms on top)
    for result in ranks:
        assert result["collectives"][:3] == [1, 1, 1]
        assert result["collectives"][3] > 1


def test_a_non_finite_gradient_on_one_rank_skips_the_step_on_all(ranks: list[dict[str, Any]]) -> None:
    assert [r["overflow"]["unchanged"] for r in ranks] == [True, True]


def test_layouts_that_cannot_be_pruned_shard_by_shard_are_refused_with_the_fix(ranks: list[dict[str, Any]]) -> None:
    refusals = ranks[0]["refusals"]
    assert "not a multiple of the pattern '8x1''s 8 rows" in refusals["straddle"]
    assert "world size" in refusals["straddle"] and "excluded" in refusals["straddle"]
    assert "excluded" in refusals["columns"]
    assert "tensor parallelism" in refusals["tensor_parallel"]
    assert "dcp.save" in refusals["torch_save"]


def test_dcp_resume_mid_pruning_is_bit_identical(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        run = result["resume"]
        want, got = run["want"], run["dcp"]
        assert run["resumed_at dcp"] == SAVE_AFTER and got["step"] == want["step"] == STEPS
        assert want["masks"].keys() == got["masks"].keys() == {"conv", "fc1", "fc2", "head"}
        for name in want["masks"]:
            assert torch.equal(want["masks"][name], got["masks"][name]), name
        assert len(want["state"]) == len(got["state"]) == 4 + 1 + 2 + 2  # masks, fc1 scores, wanda mean_sq and count
        for a, b in zip(want["state"], got["state"], strict=True):
            assert torch.equal(a, b)
        for name in want["weights"]:
            assert torch.equal(want["weights"][name], got["weights"][name]), name


def test_gathered_sparse_export_loads_into_a_dense_model(ranks: list[dict[str, Any]], tmp_path: Path) -> None:
    from pytorch_pruner.export import load_sparse

    files = list(Path(ranks[0]["folder"]).glob("*.safetensors"))
    assert [f.name for f in files] == ["model.sparse.safetensors"]  # rank 0 alone wrote it
    dense = make_net()
    load_sparse(files[0], dense)
    want = ranks[0]["resume"]["want"]
    for name, p in dense.named_parameters():
        assert torch.equal(p.detach(), want["weights"][name]), name
    assert float((dense.fc2.weight == 0).float().mean()) >= 0.5


def test_resume_from_a_plain_file_per_rank_is_bit_identical(ranks: list[dict[str, Any]]) -> None:
    # Pruning.state_dict(local=True): this rank's parts as plain tensors (the Trainer callback's files)
    for result in ranks:
        run = result["resume"]
        want, got = run["want"], run["file per rank"]
        assert run["resumed_at file per rank"] == SAVE_AFTER
        for a, b in zip(
            [*want["masks"].values(), *want["state"]], [*got["masks"].values(), *got["state"]], strict=True
        ):
            assert torch.equal(a, b)
        assert all(torch.equal(want["weights"][n], got["weights"][n]) for n in want["weights"])


def test_lightning_checkpoint_entry_restores_each_ranks_rows(ranks: list[dict[str, Any]]) -> None:
    assert [r["lightning"]["same"] for r in ranks] == [True, True]


def test_wanda_scores_use_every_ranks_inputs(ranks: list[dict[str, Any]]) -> None:
    # the statistics are summed in another order than one process's running mean: equal to rounding
    for result in ranks:
        for ours, theirs in zip(result["wanda"]["gathered"], result["wanda"]["reference"], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
        assert len(result["wanda"]["gathered"]) == 4
