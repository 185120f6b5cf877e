"""Training-framework integrations: thin callbacks that drive :class:`~pytorch_pruner.Pruning`.

* :mod:`pytorch_pruner.integrations.transformers` — ``PruningCallback`` for 🤗 ``Trainer``
  (extra ``transformers``: ``pip install -c constraints.txt -e '.[transformers]'`` in a checkout);
* :mod:`pytorch_pruner.integrations.lightning` — ``PruningCallback`` for Lightning's ``Trainer``
  (extra ``lightning``: ``pip install -c constraints.txt -e '.[lightning]'`` in a checkout);
* :mod:`pytorch_pruner.integrations.peft` — LoRA adapters on a pruned model, merged without
  losing its zeros (extra ``peft``: ``pip install -c constraints.txt -e '.[peft]'`` in a checkout).

Importing this package imports neither framework; each submodule imports its own and, when it
is missing, raises an ``ImportError`` that names the extra to install.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..config import PruningConfig
from ..errors import StateError, install_hint
from ..pruning import Pruning

__all__ = ["ConfigOrPruning", "as_pruning", "missing_extra", "reused_error"]

#: what each extra installs, for the error that names it
_PACKAGES = {"transformers": "transformers accelerate", "lightning": "lightning", "peft": "peft"}

#: What a callback accepts: anything :class:`Pruning` takes, or a ready :class:`Pruning`.
ConfigOrPruning = str | os.PathLike[str] | Mapping[str, Any] | PruningConfig | Pruning


def as_pruning(config_or_pruning: ConfigOrPruning) -> Pruning:
    """*config_or_pruning* as a :class:`Pruning`: used as is when it is one, built otherwise.

    Args:
        config_or_pruning: a YAML path, a dict, a :class:`PruningConfig`, or a :class:`Pruning`
            (e.g. one on which ``update_items_for_all_pruners`` was already called).

    Returns:
        The :class:`Pruning` the callback drives.

    Raises:
        ConfigError: the config is invalid.
    """
    if isinstance(config_or_pruning, Pruning):
        return config_or_pruning
    return Pruning(config_or_pruning)


def missing_extra(what: str, extra: str, err: ImportError) -> ImportError:
    """The ImportError raised when an integration's framework is not installed.

    Args:
        what: the framework's name as users know it (e.g. ``"transformers"``).
        extra: the pytorch-pruner extra that installs it.
        err: the original import error (its message says which module was missing).

    Returns:
        An ImportError to raise ``from err``.
    """
    return ImportError(
        f"pytorch_pruner.integrations.{extra} needs {what}, which could not be imported ({err}); "
        + install_hint(extra, _PACKAGES.get(extra, extra))
    )


def reused_error(pruning: Pruning) -> StateError:
    """The error a callback raises when a new run (step 0) starts with a *pruning* that already ran.

    Its masks, scores and step count belong to the earlier run; reusing them would prune the new
    one on the old schedule.
    """
    return StateError(
        f"this PruningCallback already pruned {pruning.step} optimizer steps of an earlier run, but "
        "training starts from step 0; give each training run a new PruningCallback"
    )
