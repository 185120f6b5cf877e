"""Structured slimming: physically remove pruned neurons, channels and heads.

A pruned model still does every multiply, zeros included. After structured pruning (``1xchannel``,
``channelx1``, ``head:<head_dim>``) whole rows or columns are zero, and the layers can be rebuilt
smaller: a dense model with fewer units that computes *the same outputs* as the masked one, and is
faster on any hardware. :func:`slim_` picks the slimmer by what the model is:

* a transformers model, or a module holding some: the slimmer registered for each one's
  ``config.model_type`` (:data:`~pytorch_pruner.speed.SLIMMERS`: the BERT family, Llama, Mistral,
  Qwen2/3, Gemma, GPT-2); any other model type is refused, unchanged;
* an ``nn.Sequential``: :func:`~pytorch_pruner.speed.slim_sequential_`;
* any other module: traced with torch.fx, :func:`~pytorch_pruner.speed.slim_traced_`.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..distributed import refuse_sharded
from ..targets import unwrap_model
from . import bert, decoder  # noqa: F401  (they register the families' slimmers)
from .channels import slim_sequential_, slim_traced_
from .families import model_type, slimmer_for
from .parts import SlimReport

__all__ = ["slim_"]


def _transformers_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """*model* itself when it is a transformers model, else the outermost transformers models it
    holds (a user's class wrapping a BertModel), by ``config.model_type``."""
    if model_type(model) is not None:
        return [("", model)]
    found: list[tuple[str, nn.Module]] = []
    for name, sub in model.named_modules():
        if model_type(sub) is not None and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, sub))
    return found


def slim_(model: nn.Module, *, exact: bool = True, uniform: bool = False, uniform_ffn: bool = False) -> SlimReport:
    """Remove pruned units from *model* in place, keeping its outputs (see the module doc).

    For a transformers model the whole change is planned and checked before any tensor changes: on
    a :class:`SlimmingError` the model is left as it was. Anything that could not be slimmed is
    listed in the report and in one warning.

    Args:
        model: the pruned model (pruned weights zero, e.g. after ``Pruning.on_train_end``); under a
            ``torch.compile`` or DDP wrapper, the module it holds is slimmed.
        exact: for CNNs, see :func:`slim_sequential_`.
        uniform: transformers models: give every layer the same sizes (the widest needed, keeping
            some zero units elsewhere, which is exact), so that the config holds plain sizes that
            stock ``from_pretrained`` loads (see docs/speed.md for which families).
        uniform_ffn: the same for the FFN / MLP width only.

    Returns:
        A :class:`SlimReport`.

    Raises:
        SlimmingError: the model is of no kind slimming knows, or its modules are not what its
            family's slimmer expects; the model is unchanged.

    Example:
        >>> slim_(nn.LSTM(4, 4))
        Traceback (most recent call last):
        ...
        pytorch_pruner.speed.parts.SlimmingError: cannot slim LSTM: ...
    """
    # a torch.compile / DDP wrapper only holds the model: slim what it holds (the wrapper's compiled
    # graphs are for the old shapes; call the slimmed model, or compile it again)
    model = unwrap_model(model)
    refuse_sharded(model, "slim_")
    parts = _transformers_models(model)
    if parts:
        # plan every part before cutting any: a refusal of one leaves all unchanged
        plans = [(sub, slimmer_for(sub).plan(sub, uniform=uniform, uniform_ffn=uniform_ffn)) for _, sub in parts]
        report = SlimReport()
        for sub, plan in plans:
            part = plan.apply(sub)
            report.slimmed += part.slimmed
            report.skipped += part.skipped
    elif isinstance(model, nn.Sequential):
        report = slim_sequential_(model, exact=exact)
    else:
        report = slim_traced_(model, exact=exact)
    if report.skipped:
        details = "; ".join(f"{name}: {reason}" for name, reason in report.skipped)
        warnings.warn(f"slim_: some units were kept: {details}", stacklevel=2)
    return report
