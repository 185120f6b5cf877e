"""CPU sparse export: run very sparse Linear layers as sparse (CSR) matrix products.

A zero in a dense weight costs as much as any other weight. Stored in compressed sparse rows
(CSR), a weight is multiplied by PyTorch's sparse CPU kernels, which skip the zeros; that pays
off at high sparsity (about 90% and up) and for few rows of input (small batches), while at lower
sparsity or large batches the dense kernel usually stays faster. So :func:`to_sparse_csr_`, like
:func:`~pytorch_pruner.speed.to_semi_structured_` on the GPU, times every candidate layer at
export, on the number of input rows you will run (``tokens``) and with the current torch thread
count, and converts only those that it measured faster. Any pattern works (``4x1``, ``1x1``, ...);
the gain depends on the sparsity, not on the block shape.

Converted layers are :class:`SparseLinear` modules: for inference (no gradients), on the CPU, in
float32 or float64, with outputs equal to the dense layer's up to float rounding. Convert after
loading the model for serving; save the pruned dense model (or its sparse safetensors file from
:func:`pytorch_pruner.export.save_sparse`), not the converted one.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..targets import unwrap_model
from .semi_structured import LayerDecision, SparseExportReport, matching_linears, select_faster

__all__ = ["SparseLinear", "time_sparse_linear", "to_sparse_csr_"]

_DTYPES = (torch.float32, torch.float64)


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state": known, and fine here
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().to_sparse_csr()


class SparseLinear(nn.Module):
    """An inference-only :class:`~torch.nn.Linear` whose weight is stored in CSR format.

    ``y = x Wᵀ + b`` is computed as ``(W xᵀ + b)ᵀ`` with the sparse ``W`` first, the form PyTorch's
    sparse CPU kernels take.

    Example:
        >>> dense = nn.Linear(8, 4)
        >>> with torch.no_grad():
        ...     _ = dense.weight[:, 2:].zero_()
        >>> sparse = SparseLinear(dense)
        >>> x = torch.randn(3, 5, 8)
        >>> torch.allclose(sparse(x), dense(x), atol=1e-6)
        True
        >>> sparse
        SparseLinear(in_features=8, out_features=4, bias=True, density=0.25)
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", _csr(linear.weight))
        bias = None if linear.bias is None else linear.bias.detach().clone().unsqueeze(1)
        self.register_buffer("bias", bias)  # [out, 1]: broadcast over the columns of W xᵀ

    @property
    def density(self) -> float:
        """Stored (nonzero) weights / all weights."""
        return self.weight.values().numel() / (self.in_features * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).t()
        out = torch.sparse.mm(self.weight, rows) if self.bias is None else torch.addmm(self.bias, self.weight, rows)
        # one copy back to row-major: the layers after it (and the timing at export) see what a dense Linear gives
        return out.t().contiguous().view(*x.shape[:-1], self.out_features)

    def to_linear(self) -> nn.Linear:
        """An ordinary :class:`~torch.nn.Linear` with the same weights."""
        weight = self.weight.to_dense()
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias.squeeze(1))
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"density={self.density:.2f}"
        )


def time_sparse_linear(module: nn.Linear, tokens: int, repeats: int = 15) -> tuple[float, float]:
    """Median milliseconds of *module* on ``[tokens, in_features]`` inputs, dense and as a
    :class:`SparseLinear`, timed in alternation (so a change of machine load hits both alike), on
    the CPU with the current torch thread count."""
    sparse = SparseLinear(module)
    x = torch.randn(tokens, module.in_features, dtype=module.weight.dtype)
    fns: tuple[nn.Module, nn.Module] = (module, sparse)
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for fn in fns:  # warm-up
            fn(x)
        for _ in range(repeats):
            for fn, spent in zip(fns, times, strict=True):
                start = time.perf_counter()
                fn(x)
                spent.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def _decide(name: str, module: nn.Linear, min_sparsity: float) -> LayerDecision:
    shape = (module.out_features, module.in_features)
    weight = module.weight
    if weight.device.type != "cpu":
        why = f"on {weight.device}: CSR export is for CPU inference (on a GPU, see to_semi_structured_)"
        return LayerDecision(name, shape, False, why)
    if weight.dtype not in _DTYPES:
        return LayerDecision(name, shape, False, f"dtype {weight.dtype}: the sparse CPU kernels take float32/float64")
    sparsity = float(weight.detach().eq(0).sum()) / weight.numel()
    if sparsity < min_sparsity:
        return LayerDecision(name, shape, False, f"sparsity {sparsity:.2f} < min_sparsity {min_sparsity:g}")
    return LayerDecision(name, shape, True, f"sparsity {sparsity:.2f}")


def to_sparse_csr_(
    model: nn.Module,
    *,
    names: Sequence[str] | None = None,
    tokens: int = 128,
    min_sparsity: float = 0.7,
    min_speedup: float = 1.05,
    timer: Callable[[nn.Linear, int], tuple[float, float]] = time_sparse_linear,
) -> SparseExportReport:
    """Replace the sparse Linear layers of *model* by :class:`SparseLinear` where that is faster.

    Call it on the pruned model (pruned weights zero, e.g. after ``Pruning.on_train_end`` or
    :func:`pytorch_pruner.export.squash`), in eval mode on the CPU, with the torch thread count you
    will serve with.

    Args:
        model: the pruned model; under a ``torch.compile`` or DDP wrapper, the module it holds is
            converted (compile it again afterwards).
        names: regexes (``re.search``) of the layers to consider; default: every Linear layer.
        tokens: input rows of the timing: batch size x sequence length of your use. Sparse kernels
            win at small batches and lose at large ones, so time with what you will run.
        min_sparsity: layers with fewer zeros are not timed (they are seldom faster sparse).
        min_speedup: convert a layer only if dense time / sparse time reaches this.
        timer: measures ``(dense_ms, sparse_ms)`` of one layer; :func:`time_sparse_linear` by default.

    Returns:
        A :class:`~pytorch_pruner.speed.SparseExportReport`: per layer, converted or not, the
        timings and why.

    Raises:
        ValueError: *names* match no Linear layer.

    Example:
        >>> from pytorch_pruner import prune_
        >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        >>> _ = prune_(net, names=["^0$"], pattern="1x1", target_sparsity=0.9)
        >>> report = to_sparse_csr_(net, timer=lambda layer, tokens: (1.0, 0.5))  # a stand-in timing
        >>> report.converted, type(net[0]).__name__
        (['0'], 'SparseLinear')
    """
    model = unwrap_model(model)
    decisions = [_decide(name, module, min_sparsity) for name, module in matching_linears(model, names)]
    modules = dict(model.named_modules())
    timings = {d.name: timer(modules[d.name], tokens) for d in decisions if d.eligible}
    decisions = select_faster(decisions, timings, min_speedup)
    for d in decisions:
        if d.converted:
            parent, _, child = d.name.rpartition(".")
            setattr(model.get_submodule(parent), child, SparseLinear(modules[d.name]))
    return SparseExportReport(decisions, label="CSR sparse")
