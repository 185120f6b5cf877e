"""2:4 export: store 2:4-pruned Linear weights in PyTorch's semi-structured sparse format.

Sparse tensor cores (NVIDIA compute capability 8.0 and up: A100, H100, RTX 30xx/40xx) multiply a
matrix with 2 zeros in every 4 consecutive weights about twice as fast in theory; in practice the
gain depends on the shape and dtype, and small layers get slower. So :func:`to_semi_structured_`
times each layer at export (dense ``F.linear`` against the sparse one, on a batch of ``tokens``
rows) and converts only the layers that are at least ``min_speedup`` faster.

Without such a GPU the function *warns and returns the model unchanged* (the report says why for
every layer), so one script runs everywhere; the 2:4 layout is checked first on any device, and a
layer named for export that is not 2:4 is an error.
"""

from __future__ import annotations

import re
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import PatternError
from ..targets import unwrap_model

__all__ = [
    "LayerDecision",
    "SemiStructuredReport",
    "SparseExportReport",
    "check_2to4",
    "choose_layers",
    "matching_linears",
    "select_faster",
    "semi_structured_support",
    "time_linear",
    "to_semi_structured_",
]

#: (dtype) → (min rows, min cols) that every backend of torch's semi-structured format accepts
#: (the rows must be a multiple of the first, the columns of the second).
SHAPE_MULTIPLES: dict[torch.dtype, tuple[int, int]] = {
    torch.float16: (32, 64),
    torch.bfloat16: (32, 64),
    torch.int8: (32, 128),
}


def check_2to4(weight: torch.Tensor, name: str = "weight") -> None:
    """Check that every 4 consecutive weights along the input dimension hold at least 2 zeros.

    Raises:
        PatternError: the input dimension is not a multiple of 4, or some group has fewer than 2
            zeros; the message gives the count and the first bad group.

    Example:
        >>> check_2to4(torch.tensor([[0.0, 1.0, 0.0, 2.0]]))
        >>> check_2to4(torch.tensor([[0.0, 1.0, 3.0, 2.0]]), "fc")
        Traceback (most recent call last):
        ...
        pytorch_pruner.errors.PatternError: fc: 1 of 1 groups of 4 weights have fewer than 2 zeros ...
    """
    rows, cols = weight.shape[0], weight[0].numel()
    if cols % 4:
        raise PatternError(
            f"{name}: 2:4 sparsity needs the input dimension divisible by 4; the weight is {list(weight.shape)}"
        )
    zeros = weight.detach().reshape(-1, 4).eq(0).sum(dim=1)
    bad = zeros < 2
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        row, group = divmod(first, cols // 4)
        values = weight.detach().reshape(-1, 4)[first].tolist()
        raise PatternError(
            f"{name}: {int(bad.sum())} of {rows * cols // 4} groups of 4 weights have fewer than 2 zeros "
            f"(first: row {row}, columns {4 * group}..{4 * group + 3} = {values}), so it is not 2:4 sparse; "
            "prune it with pattern '2:4' at target_sparsity 0.5 and keep the masks applied "
            "(Pruning.on_train_end) before exporting"
        )


def semi_structured_support(device: torch.device | str | None = None) -> str | None:
    """Why semi-structured sparse kernels can't run on *device* (default: the current CUDA
    device), or ``None`` when they can."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"this PyTorch ({torch.__version__}) has no torch.sparse.to_sparse_semi_structured"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available (2:4 sparse kernels need an NVIDIA GPU of compute capability >= 8.0)"
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        return f"the model is on {device}; move it to a CUDA GPU (model.cuda().half()) before exporting"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; 2:4 kernels need >= 8.0"
    return None


@dataclass(frozen=True)
class LayerDecision:
    """Whether one Linear layer is stored 2:4 sparse, and why (timings in milliseconds)."""

    name: str
    shape: tuple[int, int]
    eligible: bool
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    converted: bool = False

    @property
    def speedup(self) -> float | None:
        """Dense time / sparse time, when both were measured."""
        if self.dense_ms is None or not self.sparse_ms:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class SparseExportReport:
    """Per-layer decisions of :func:`to_semi_structured_` and :func:`~pytorch_pruner.speed.to_sparse_csr_`."""

    layers: list[LayerDecision] = field(default_factory=list)
    #: what a converted layer is called in the text
    label: str = "2:4 sparse"

    @property
    def converted(self) -> list[str]:
        return [d.name for d in self.layers if d.converted]

    def __str__(self) -> str:
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        return "\n".join(
            f"{d.name} {list(d.shape)}: {self.label if d.converted else 'dense'} "
            f"(dense {ms(d.dense_ms)} ms, sparse {ms(d.sparse_ms)} ms; {d.reason})"
            for d in self.layers
        )


#: The earlier name of :class:`SparseExportReport`.
SemiStructuredReport = SparseExportReport


def matching_linears(model: nn.Module, names: Sequence[str] | None) -> list[tuple[str, nn.Linear]]:
    """``(name, layer)`` of the Linear layers of *model* (unwrapped from torch.compile / DDP) whose
    name matches one of the regexes *names* (``re.search``); all of them when *names* is None.

    Raises:
        ValueError: *names* match no Linear layer; the message lists the layer names.
    """
    model = unwrap_model(model)  # layer names as in the plain model, as Pruning names them
    patterns = [re.compile(p) for p in names] if names is not None else None
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (patterns is None or any(p.search(name) for p in patterns))
    ]
    if patterns is not None and not found:
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"names {list(names or ())} match no Linear layer of {type(model).__name__}; they are regexes "
            f"searched in the layer names, which are: {linear}"
        )
    return found


def choose_layers(
    model: nn.Module, dtype: torch.dtype | None = None, names: Sequence[str] | None = None
) -> list[LayerDecision]:
    """Which Linear layers of *model* can be stored 2:4 sparse in *dtype* (default: their own).

    With *names* (regexes, ``re.search``), the matching layers are checked and must be 2:4 sparse;
    without, every Linear is looked at and those that are not 2:4 are marked ineligible.

    Raises:
        PatternError: a layer matched by *names* is not 2:4 sparse.
        ValueError: *names* match no Linear layer.
    """
    decisions = []
    for name, module in matching_linears(model, names):
        shape = (module.out_features, module.in_features)
        try:
            check_2to4(module.weight, name)
        except PatternError as err:
            if names is not None:
                raise
            decisions.append(LayerDecision(name, shape, False, f"not 2:4 sparse: {err}"))
            continue
        kind = dtype or module.weight.dtype
        if kind not in SHAPE_MULTIPLES:
            reason = f"dtype {kind} has no 2:4 kernel here; use float16 or bfloat16"
            decisions.append(LayerDecision(name, shape, False, reason))
            continue
        mr, mc = SHAPE_MULTIPLES[kind]
        if shape[0] % mr or shape[1] % mc:
            reason = f"shape {list(shape)} is not a multiple of ({mr}, {mc}) that the 2:4 kernels need for {kind}"
            decisions.append(LayerDecision(name, shape, False, reason))
            continue
        decisions.append(LayerDecision(name, shape, True, "2:4 sparse"))
    return decisions


def select_faster(
    decisions: Sequence[LayerDecision], timings: dict[str, tuple[float, float]], min_speedup: float
) -> list[LayerDecision]:
    """Fill in the timings (``name → (dense_ms, sparse_ms)``) and mark as converted the eligible
    layers whose speedup reaches *min_speedup*. Pure: returns new decisions."""
    out = []
    for d in decisions:
        if not d.eligible or d.name not in timings:
            out.append(d)
            continue
        dense, sparse = timings[d.name]
        fast = sparse > 0 and dense / sparse >= min_speedup
        reason = f"speedup {dense / sparse:.2f}x {'>=' if fast else '<'} {min_speedup}x" if sparse > 0 else "no timing"
        out.append(replace(d, dense_ms=dense, sparse_ms=sparse, converted=fast, reason=reason))
    return out


def time_linear(module: nn.Linear, tokens: int, repeats: int = 20) -> tuple[float, float]:
    """Median milliseconds of ``module(x)`` for ``x`` of ``[tokens, in_features]``, dense and 2:4
    sparse, on the module's CUDA device (CUDA events; a few warm-up runs first)."""
    weight, bias = module.weight.detach(), None if module.bias is None else module.bias.detach()
    x = torch.randn(tokens, module.in_features, device=weight.device, dtype=weight.dtype)
    sparse = torch.sparse.to_sparse_semi_structured(weight)

    def median_ms(w: torch.Tensor) -> float:
        for _ in range(3):
            F.linear(x, w, bias)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            F.linear(x, w, bias)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    # on the weight's GPU: the events record on the current device's stream, and the layer runs on its own
    with torch.inference_mode(), torch.cuda.device(weight.device):
        return median_ms(weight), median_ms(sparse)


def _on_supported_device(decision: LayerDecision, module: nn.Module) -> LayerDecision:
    """*decision*, made ineligible if *module*'s weight is on a device without 2:4 kernels."""
    if not decision.eligible:
        return decision
    why_not = semi_structured_support(cast(torch.Tensor, module.weight).device)
    return decision if why_not is None else replace(decision, eligible=False, reason=f"stays dense: {why_not}")


def to_semi_structured_(
    model: nn.Module,
    *,
    names: Sequence[str] | None = None,
    tokens: int = 2048,
    min_speedup: float = 1.05,
    timer: Callable[[nn.Linear, int], tuple[float, float]] = time_linear,
) -> SparseExportReport:
    """Store the 2:4-sparse Linear weights of *model* in semi-structured format where it is faster.

    The model must already be on the GPU in float16 or bfloat16 (``model.cuda().half()``), for
    inference (the sparse weights take no gradient).

    Args:
        model: the pruned model.
        names: regexes of the layers to export (each must be 2:4); default: every 2:4 Linear.
        tokens: rows of the timing input (batch × sequence length of your use).
        min_speedup: convert a layer only if dense time / sparse time reaches this.
        timer: measures ``(dense_ms, sparse_ms)`` of one layer; :func:`time_linear` by default.

    Returns:
        A :class:`SparseExportReport` with the decision, timings and reason for every layer.

    Raises:
        PatternError: a layer named by *names* is not 2:4 sparse (checked before anything else).

    Warns:
        UserWarning: no GPU with 2:4 kernels; the model is returned unchanged.
    """
    model = unwrap_model(model)
    decisions = choose_layers(model, names=names)
    param = next(model.parameters(), None)
    why_not = semi_structured_support(param.device if param is not None else None)
    if why_not is not None:
        warnings.warn(f"to_semi_structured_: {why_not}; the model is left unchanged", stacklevel=2)
        return SparseExportReport([replace(d, reason=f"{d.reason}; not exported: {why_not}") for d in decisions])
    modules = dict(model.named_modules())
    # a layer left on another device (CPU offload, a second GPU without 2:4 kernels) stays dense
    decisions = [_on_supported_device(d, modules[d.name]) for d in decisions]
    timings = {d.name: timer(modules[d.name], tokens) for d in decisions if d.eligible}
    decisions = select_faster(decisions, timings, min_speedup)
    for d in decisions:
        if d.converted:
            module = modules[d.name]
            sparse = torch.sparse.to_sparse_semi_structured(module.weight.detach())
            module.weight = nn.Parameter(sparse, requires_grad=False)
    return SparseExportReport(decisions)
