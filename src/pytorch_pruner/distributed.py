"""What changes under torch.distributed: selection's counts summed over the ranks, and FSDP2's
sharded weights (DTensor, dim-0 shards).

Selection (:mod:`pytorch_pruner.selection`) only ever exchanges counts, histograms and a small
fixed-size sample between ranks (:class:`ProcessGroupComm`), never the scores, so a pruning step on
sharded scores chooses exactly the units one process holding every score would choose, ties
broken by global position (rank r's shard comes before rank r+1's, as FSDP2's dim-0 shards do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .selection import Comm

if TYPE_CHECKING:
    from .patterns import Pattern
    from .pruning import Pruning

__all__ = [
    "ProcessGroupComm",
    "WeightShard",
    "check_sharded",
    "gathered_state_dict",
    "is_dtensor",
    "own_state",
    "reduces_cpu_tensors",
    "row_block",
]


def reduces_cpu_tensors(backend: str) -> bool:
    """Whether a process group of *backend* (``str(dist.get_backend(group))``) all-reduces CPU
    tensors: ``"gloo"``, ``"mpi"``, ``"cpu:gloo,cuda:nccl"`` do; ``"nccl"`` and ``"cuda:nccl"`` (a
    backend registered for CUDA tensors only) do not."""
    parts = [p.strip().lower() for p in backend.split(",") if p.strip()]
    devices = {p.split(":", 1)[0] for p in parts if ":" in p}
    if devices:
        return "cpu" in devices
    return parts != ["nccl"]


class ProcessGroupComm(Comm):
    """:class:`~pytorch_pruner.selection.Comm` over a ``torch.distributed`` process group.

    Example (in every rank of a 2-process run, each holding half of every layer's scores)::

        masks = select(layers, 0.9, "global", comm=ProcessGroupComm())
    """

    def __init__(self, group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ProcessGroupComm needs torch.distributed initialized (init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        #: where tensors go to be summed: the CPU if the backend reduces CPU tensors, else this rank's GPU
        self.device = (
            torch.device("cpu")
            if reduces_cpu_tensors(str(dist.get_backend(group)))
            else torch.device("cuda", torch.cuda.current_device())
        )

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        if tensor.device == self.device:
            dist.all_reduce(tensor, group=self.group)
            return tensor
        moved = tensor.to(self.device)
        dist.all_reduce(moved, group=self.group)
        return tensor.copy_(moved)

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """*flag* (a 0-d bool tensor) AND-ed over the ranks: one tiny all-reduce, no host sync."""
        if self.world == 1:
            return flag
        value = flag.reshape(1).to(self.device, torch.float32)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.group)
        return (value[0] > 0).to(flag.device)


# -- FSDP2: dim-0 shards of DTensor weights ------------------------------------------------------
def is_dtensor(tensor: object) -> bool:
    """Whether *tensor* is a ``torch.distributed.tensor.DTensor`` (FSDP2, tensor parallel)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def refuse_sharded(model: torch.nn.Module, what: str) -> None:
    """Raise ``PruningError`` if *model* holds sharded (DTensor) parameters: *what* (one-shot
    pruning, slimming) needs every weight whole in one process."""
    sharded = [name for name, p in model.named_parameters() if is_dtensor(p)]
    if sharded:
        from .errors import PruningError, first_names

        shown = first_names(sharded)
        raise PruningError(
            f"{what} needs whole weights, but parameters of this model are sharded (DTensor, e.g. by "
            f"fully_shard): {shown}. Gather the model first (e.g. get_model_state_dict(model, options="
            "StateDictOptions(full_state_dict=True)) from torch.distributed.checkpoint.state_dict, loaded "
            f"into an unsharded copy on one rank), then call {what} on that copy"
        )


@dataclass(eq=False)
class WeightShard:
    """This rank's rows of a weight that FSDP2 (``fully_shard``) holds as a DTensor sharded
    ``Shard(0)`` over a 1-D mesh: rank r holds rows ``[r * chunk, (r + 1) * chunk)`` clipped to the
    weight (``chunk = ceil(rows / world)``, as ``torch.chunk`` splits; the last ranks may hold fewer
    rows or none).

    ``local`` is the plain tensor of those rows, sharing the parameter's storage: pruning reads and
    zeroes it in place. ``base`` is the parameter's own local tensor when this was built, so that
    :meth:`current` is two identity checks per step.
    """

    param: Any  # the DTensor parameter
    base: torch.Tensor
    local: torch.Tensor
    shape: torch.Size  # the whole weight's
    start: int  # the global row of local row 0
    group: Any

    @classmethod
    def of(cls, param: Any) -> WeightShard:
        local = param.to_local().detach()
        mesh = param.device_mesh
        world, rank = mesh.size(), mesh.get_local_rank()
        chunk = -(-param.shape[0] // world)
        start = min(rank * chunk, param.shape[0])
        return cls(param, param._local_tensor, local, param.shape, start, mesh.get_group())

    def current(self, weight: Any) -> bool:
        """Whether *weight* (the module's now) is still this shard's parameter and local tensor."""
        return weight is self.param and weight._local_tensor is self.base

    def dtensor(self, local: torch.Tensor, shape: Sequence[int]) -> Any:
        """*local* (this rank's rows of a tensor of global *shape*, e.g. a mask) as a DTensor
        sharded like the weight: on its mesh, ``Shard(0)``."""
        from torch.distributed.tensor import DTensor

        size = torch.Size(shape)
        stride = tuple(math.prod(size[i + 1 :]) for i in range(len(size)))
        return DTensor.from_local(
            local, self.param.device_mesh, self.param.placements, run_check=False, shape=size, stride=stride
        )


def row_block(pattern: Pattern) -> int | None:
    """Rows of the 2-D view one unit of *pattern* spans (the shard of a layer must hold whole units),
    or ``None`` when a unit spans every row (column groups, grouped heads): those need the whole
    weight on every rank."""
    from .patterns import NInM, NxM
    from .patterns.head import ChannelGroup

    if isinstance(pattern, NxM):
        return pattern.n
    if isinstance(pattern, NInM):
        return 1
    if isinstance(pattern, ChannelGroup) and pattern.axis == 0:
        return pattern.size
    return None


def check_sharded(name: str, kind: str, weight: Any, pattern: Pattern) -> str | None:
    """Why the DTensor *weight* of layer *name* cannot be pruned shard by shard (``None``: it can).

    Supported: FSDP2's ``Shard(0)`` over a 1-D mesh, for patterns whose units lie within rows
    (NxM, N:M, groups of output channels), when every shard holds whole units.
    """
    from torch.distributed.tensor import Shard

    placements = tuple(weight.placements)
    if weight.device_mesh.ndim != 1 or len(placements) != 1 or placements[0] != Shard(0):
        return (
            f"layer {name}: its weight is a DTensor placed {placements} on a {weight.device_mesh.ndim}-D mesh; "
            "only FSDP2's dim-0 shards over a 1-D mesh (placements (Shard(dim=0),), torch.distributed.fsdp."
            "fully_shard) are supported, not tensor parallelism or HSDP meshes. Shard with fully_shard on a 1-D "
            "mesh, or leave the layer out (`excluded_names`)"
        )
    if kind == "Conv1D":
        return (
            f"layer {name}: transformers' Conv1D stores [in, out], so FSDP2's dim-0 shards split its input "
            "features, across the pattern's rows; leave it out (`excluded_names`) or train with DDP"
        )
    block = row_block(pattern)
    rows = weight.shape[0]
    world = weight.device_mesh.size()
    if block is None:
        return (
            f"layer {name}: pattern {pattern.name!r} prunes units that span every row of the weight, but FSDP2 "
            f"gives each of the {world} ranks only some rows; use an NxM, N:M or row-group pattern, leave the "
            "layer out (`excluded_names`), or train with DDP"
        )
    chunk = -(-rows // world)
    if chunk % block:
        fits = [w for w in range(1, 2 * world + 1) if (-(-rows // w)) % block == 0]
        return (
            f"layer {name}: FSDP2 gives each of the {world} ranks {chunk} of its {rows} rows, and {chunk} is not "
            f"a multiple of the pattern {pattern.name!r}'s {block} rows, so blocks would straddle shards. Fix: a "
            f"world size whose shards hold whole blocks (e.g. {fits[:4] or 'none <= ' + str(2 * world)}), a "
            f"block height dividing {chunk}, or leave the layer out (`excluded_names`)"
        )
    return None


# -- a pruning state in one file written by one rank ---------------------------------------------
def gathered_state_dict(pruning: Pruning) -> dict[str, Any]:
    """``pruning.state_dict()`` for a checkpoint that one rank writes alone (Lightning's callback
    state): under FSDP2 every rank's ``state_dict(local=True)`` (on the CPU) gathered into
    ``{"ranks": [...]}`` -- a collective, call it on every rank; :func:`own_state` picks a rank's
    part back. Without sharded layers, the plain state."""
    if not any(p.comm is not None for p in pruning.pruners):
        return pruning.state_dict()
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, _to_cpu(pruning.state_dict(local=True)))
    return {"ranks": parts}


def own_state(state: Any) -> Any:
    """This rank's part of a :func:`gathered_state_dict` saved under FSDP2; other states as they are.

    Raises:
        StateError: the state was saved by another number of ranks.
    """
    if not isinstance(state, dict) or set(state) != {"ranks"}:
        return state
    from .errors import StateError

    parts = state["ranks"]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not isinstance(parts, list) or len(parts) != world:
        saved = len(parts) if isinstance(parts, list) else "?"
        raise StateError(
            f"the pruning state was saved by {saved} FSDP2 ranks, this run has {world}; resume on {saved} ranks"
        )
    return parts[dist.get_rank() if world > 1 else 0]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
