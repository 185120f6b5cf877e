"""Turn sparsity into speed: structured slimming (any device), 2:4 semi-structured export (GPU) and CSR export (CPU).

* :func:`slim_` removes pruned neurons, channels and heads, leaving a smaller dense model with the
  same outputs: transformers models by family (:data:`SLIMMERS`, by ``model_type``: the BERT family,
  Llama, Mistral, Qwen2/3, Gemma, GPT-2), ``nn.Sequential`` CNNs / MLPs, and any module torch.fx can
  trace; :func:`load_slimmed` loads a slimmed transformers model saved with ``save_pretrained``.
* :func:`to_semi_structured_` stores 2:4-pruned Linear weights in PyTorch's semi-structured sparse
  format, per layer, where a timing at export shows it is faster (NVIDIA GPU).
* :func:`to_sparse_csr_` runs very sparse Linear layers (any pattern, about 90% and up) as CSR
  sparse products on the CPU, per layer, where a timing at export shows it is faster.
"""

from __future__ import annotations

from .bert import BertSlimmer, find_bert_layers, slim_bert_
from .channels import slim_sequential_, slim_traced_
from .decoder import GPT2Slimmer, LlamaSlimmer, gqa_keep
from .families import SLIMMERS, Slimmer, slimmer_for
from .loading import load_slimmed
from .parts import SlimmedLayer, SlimmingError, SlimPlan, SlimReport
from .semi_structured import (
    LayerDecision,
    SemiStructuredReport,
    SparseExportReport,
    check_2to4,
    choose_layers,
    matching_linears,
    select_faster,
    semi_structured_support,
    time_linear,
    to_semi_structured_,
)
from .slim import slim_
from .sparse_cpu import SparseLinear, time_sparse_linear, to_sparse_csr_

__all__ = [
    "SLIMMERS",
    "BertSlimmer",
    "GPT2Slimmer",
    "LayerDecision",
    "LlamaSlimmer",
    "SemiStructuredReport",
    "SlimPlan",
    "SlimReport",
    "SlimmedLayer",
    "Slimmer",
    "SlimmingError",
    "SparseExportReport",
    "SparseLinear",
    "check_2to4",
    "choose_layers",
    "find_bert_layers",
    "gqa_keep",
    "load_slimmed",
    "matching_linears",
    "select_faster",
    "semi_structured_support",
    "slim_",
    "slim_bert_",
    "slim_sequential_",
    "slim_traced_",
    "slimmer_for",
    "time_linear",
    "time_sparse_linear",
    "to_semi_structured_",
    "to_sparse_csr_",
]
