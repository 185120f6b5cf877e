"""One-shot, data-aware pruning of large models (SPEC §11).

* :func:`prune_oneshot_` — calibration block by block, then wanda / sparsegpt / magnitude masks;
* :mod:`.sparsegpt` — SparseGPT's reconstruction of the kept weights;
* :mod:`.owl` — OWL's per-block sparsities;
* :mod:`.blocks` — finding the blocks and capturing their inputs.
"""

from .api import prune_oneshot_
from .owl import outlier_ratio, owl_sparsities
from .report import OneShotBlock, OneShotLayer, OneShotReport
from .sparsegpt import sparsegpt_

__all__ = [
    "OneShotBlock",
    "OneShotLayer",
    "OneShotReport",
    "outlier_ratio",
    "owl_sparsities",
    "prune_oneshot_",
    "sparsegpt_",
]
