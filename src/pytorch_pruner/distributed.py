"""What changes under torch.distributed: selection's counts summed over the ranks, and FSDP2's
sharded weights (DTensor, dim-0 shards).

Selection (:mod:`pytorch_pruner.selection`) only ever exchanges counts, histograms and a small
fixed-size sample between ranks (:class:`ProcessGroupComm`), never the scores, so a pruning step on
sharded scores chooses exactly the units one process holding every score would choose, ties
broken by global position (rank r's shard comes before rank r+1's, as FSDP2's dim-0 shards do).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .selection import Comm

__all__ = ["ProcessGroupComm"]


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
        backend = str(dist.get_backend(group))
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        if tensor.device == self.device:
            dist.all_reduce(tensor, group=self.group)
            return tensor
        moved = tensor.to(self.device)
        dist.all_reduce(moved, group=self.group)
        return tensor.copy_(moved)
