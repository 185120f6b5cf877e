"""Numerical settings the one-shot math needs whatever the user chose for their model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["full_fp32_matmul"]


def _matmul_backends() -> list[object]:
    """The backends whose float32 matmuls may trade precision for speed (PyTorch 2.9+ API)."""
    found = []
    for backend in (torch.backends.cuda, torch.backends.mkldnn):
        matmul = getattr(backend, "matmul", None)
        if matmul is not None and hasattr(matmul, "fp32_precision"):
            found.append(matmul)
    return found


@contextlib.contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """float32 matmuls at full precision inside, whatever the process chose; restored after.

    ``torch.set_float32_matmul_precision("high")`` runs float32 matmuls in TF32 on Ampere and later
    GPUs, and ``"medium"`` in bfloat16 on CPUs with AMX or AVX512-BF16 (oneDNN): 8 to 10 mantissa bits.
    Lightning suggests both for training speed. A Hessian ``Σ x xᵀ`` summed over many tokens and
    SparseGPT's error feedback are where that rounding accumulates (the SparseGPT paper's code turns
    TF32 off for this), so they run at full precision even in a process that set either. Only the
    per-backend settings are touched (PyTorch 2.9+), each set back to its own value, so the
    process's settings read the same after as before; older PyTorch uses the process-wide setting.
    """
    backends = _matmul_backends()
    if not backends:  # PyTorch < 2.9: only the process-wide setting exists
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
        return
    saved = [(b, b.fp32_precision) for b in backends if b.fp32_precision != "ieee"]  # type: ignore[attr-defined]
    for backend, _ in saved:
        backend.fp32_precision = "ieee"  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for backend, value in saved:
            backend.fp32_precision = value  # type: ignore[attr-defined]
