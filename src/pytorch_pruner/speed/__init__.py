"""Turn sparsity into speed: structured slimming (any CPU) and 2:4 semi-structured export (GPU).

* :func:`slim_` removes pruned neurons, channels and heads, leaving a smaller dense model with the
  same outputs (BERT-style encoders, ``nn.Sequential`` CNNs / MLPs); :func:`load_slimmed` loads a
  slimmed transformers model saved with ``save_pretrained``.
* :func:`to_semi_structured_` stores 2:4-pruned Linear weights in PyTorch's semi-structured sparse
  format, per layer, where a timing at export shows it is faster.
"""

from __future__ import annotations

from .bert import find_bert_layers, load_slimmed, slim_bert_
from .semi_structured import (
    LayerDecision,
    SemiStructuredReport,
    check_2to4,
    choose_layers,
    select_faster,
    semi_structured_support,
    time_linear,
    to_semi_structured_,
)
from .slim import SlimmedLayer, SlimmingError, SlimReport, slim_, slim_sequential_

__all__ = [
    "LayerDecision",
    "SemiStructuredReport",
    "SlimReport",
    "SlimmedLayer",
    "SlimmingError",
    "check_2to4",
    "choose_layers",
    "find_bert_layers",
    "load_slimmed",
    "select_faster",
    "semi_structured_support",
    "slim_",
    "slim_bert_",
    "slim_sequential_",
    "time_linear",
    "to_semi_structured_",
]
