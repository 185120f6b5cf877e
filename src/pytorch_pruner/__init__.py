"""pytorch-pruner: make PyTorch models sparse while they train.

Example:
    >>> from pytorch_pruner import Pruning
    >>> pruning = Pruning("config.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import PrunerConfig, PruningConfig, dump_config, load_config, loads_config
from .criteria import CRITERIA, Criterion
from .errors import ConfigError, NoMatchingLayersError, PatternError, PruningError, StateError
from .oneshot import OneShotReport, prune_oneshot_
from .patterns import PATTERNS, Pattern, parse_pattern
from .pruning import Pruning
from .report import SparsityRatios, SparsityReport
from .schedules import DECAYS, Schedule

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "DECAYS",
    "PATTERNS",
    "ConfigError",
    "Criterion",
    "NoMatchingLayersError",
    "OneShotReport",
    "Pattern",
    "PatternError",
    "PrunerConfig",
    "Pruning",
    "PruningConfig",
    "PruningError",
    "Schedule",
    "SparsityRatios",
    "SparsityReport",
    "StateError",
    "__version__",
    "dump_config",
    "load_config",
    "loads_config",
    "parse_pattern",
    "prune_",
    "prune_oneshot_",
]


def prune_(model: nn.Module, config: Any = None, **keys: Any) -> Pruning:
    """Prune *model* in place, now, by weight magnitude; return the :class:`Pruning` holding masks.

    *config* is anything :class:`Pruning` takes (default: all Linear and Conv2d layers); *keys*
    are written into every pruner. Gradient criteria need training data: use the hooks instead.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 16))
        >>> pruning = prune_(model, pattern="4x1", target_sparsity=0.5)
        >>> float((model[0].weight == 0).float().mean())
        0.5
    """
    pruning = Pruning(config if config is not None else {})
    pruning.update_items_for_all_pruners(**{"prune_type": "magnitude", **keys, "start_step": 0, "end_step": 0})
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    return pruning
