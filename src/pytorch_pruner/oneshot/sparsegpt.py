"""SparseGPT: prune a layer and rebuild its kept weights from the Hessian of its inputs.

Frantar & Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot*
(arXiv:2301.00774). With ``H = (2/n) Σ x xᵀ`` over the calibration tokens (float32):

1. dead inputs (``H_jj = 0``) get ``H_jj = 1`` and their weights ``W[:, j] = 0``;
2. damping ``0.01 · mean(diag H)`` is added to the diagonal;
3. ``U`` = the upper Cholesky factor of ``H⁻¹``;
4. columns are taken in blocks of 128. In each block the pruned set is chosen from ``w² / U_jj²``
   (unstructured and NxM: the lowest s-fraction of the block's units, at the block's start; N:M
   at N/M: the N lowest of each row's M-group, at the group's first column); then column by
   column the pruned weights are zeroed and the error ``(w − q) / U_jj`` is spread over the
   block's later columns through row j of ``U``, and after the block over all later columns.

The kept weights change (that is the reconstruction); the pruned ones are exactly 0.
"""

from __future__ import annotations

import torch

from .._numerics import full_fp32_matmul
from ..errors import PruningError
from ..patterns import NInM, Pattern
from ..selection import LayerUnits, lowest_k

__all__ = ["BLOCK_SIZE", "DAMPING", "prepare_hessian", "prepare_hessian_", "sparsegpt_"]

BLOCK_SIZE = 128
DAMPING = 0.01


def _block_choice(score: torch.Tensor, pattern: Pattern, sparsity: float) -> torch.Tensor:
    """Bool [rows, cols] of the weights to prune in one column block, from element *score*."""
    rows, cols = score.shape
    reason = pattern.check(rows, cols)
    if reason:
        raise PruningError(f"sparsegpt: a block of {cols} columns can't take the pattern: {reason}")
    reduced = pattern.reduce(score)
    unit_scores = pattern.unit_scores(reduced)
    units = LayerUnits(unit_scores, pattern.unit_elements(rows, cols), rows * cols)
    pruned = lowest_k(unit_scores, units.units_for(sparsity))
    keep = pattern.expand(pattern.keep_mask(pruned, reduced), rows, cols)
    return ~keep


@torch.no_grad()
def prepare_hessian(
    hessian: torch.Tensor, *, damping: float = DAMPING, name: str = "the layer"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: the upper Cholesky factor of the damped ``H⁻¹`` and the dead inputs
    (``H_jj = 0``), steps 1-3. Layers that read the same input (q/k/v, gate/up) share it.
    *hessian* is left as it is (:func:`prepare_hessian_` works on it in place)."""
    return prepare_hessian_(hessian.detach().float().clone(), damping=damping, name=name)


#: devices where :func:`prepare_hessian_` factorises in the Hessian's own memory (LAPACK on the CPU)
_IN_PLACE_DEVICES = frozenset({"cpu"})


def prepare_hessian_(
    hessian: torch.Tensor, *, damping: float = DAMPING, name: str = "the layer"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prepare_hessian` in the memory of *hessian* (float32, symmetric, no autograd), which it
    overwrites: no second ``[cols, cols]`` matrix. ``U`` is returned as a transposed view of that
    memory: LAPACK works in column-major order, and a symmetric row-major matrix read column-major
    is itself, so the Cholesky factorisations and the inverse run in place. (On the CPU; on other
    devices each step allocates its result and frees the previous one: two matrices at a time when
    the caller hands *hessian* over, i.e. holds no other reference to it.)"""
    if hessian.requires_grad:
        raise PruningError(f"sparsegpt: the Hessian of {name} must not require grad (detach it)")
    if hessian.dtype != torch.float32:
        raise PruningError(f"sparsegpt: the Hessian of {name} must be float32, not {hessian.dtype}")
    if not hessian.is_contiguous():
        hessian = hessian.contiguous()
    diagonal = torch.diagonal(hessian)
    dead = diagonal == 0
    diagonal.masked_fill_(dead, 1.0)
    diagonal.add_(damping * float(diagonal.mean()))
    if hessian.device.type in _IN_PLACE_DEVICES:
        work = hessian.mT  # column-major: LAPACK's own layout, so out=work needs no copy
        info = torch.zeros((), dtype=torch.int32, device=hessian.device)
        torch.linalg.cholesky_ex(work, out=(work, info))  # L, H = L Lᵀ
        if int(info) == 0:
            torch.cholesky_inverse(work, out=work)  # H⁻¹
            torch.linalg.cholesky_ex(work, upper=True, out=(work, info))  # U, H⁻¹ = Uᵀ U
            if int(info) == 0:
                return work, dead
    else:  # the in-place path is tested on the CPU only: elsewhere each step frees the one before
        work = hessian
        del hessian, diagonal  # (a view of H: it would keep H alive beside the factor)
        factor, info = torch.linalg.cholesky_ex(work)
        del work  # H is freed here if the caller handed it over (HessianStats.take_ does)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            del factor
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if int(info) == 0:
                return upper, dead
    raise PruningError(
        f"sparsegpt: the Hessian of {name} is not positive definite even after damping; give more (or more "
        "varied) calibration tokens, or prune this layer with wanda"
    )


@torch.no_grad()
def sparsegpt_(
    weight2d: torch.Tensor,
    hessian: torch.Tensor | None,
    sparsity: float,
    pattern: Pattern,
    *,
    block_size: int = BLOCK_SIZE,
    damping: float = DAMPING,
    name: str = "the layer",
    prepared: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a ``[rows, cols]`` weight to *sparsity* with *pattern* and rebuild the kept weights.

    Args:
        weight2d: the layer's 2-D view (not modified).
        hessian: ``[cols, cols]`` float32, ``(2/n) Σ x xᵀ`` of the layer's inputs.
        sparsity: the fraction to prune (for N:M at N/M: every group loses N).
        pattern: 1x1, NxM (M dividing *block_size*) or N:M.
        prepared: :func:`prepare_hessian` of *hessian*, when already computed (then *hessian*
            may be None, else it is only checked for its shape).

    Returns:
        ``(new weight in float32, bool keep mask [rows, cols])``; pruned weights are exactly 0.

    Raises:
        PruningError: H is not positive definite after damping, or the pattern does not fit.

    Example:
        >>> from pytorch_pruner.patterns import parse_pattern
        >>> w, keep = sparsegpt_(torch.randn(4, 8), torch.eye(8), 0.5, parse_pattern("1x1"))
        >>> int((~keep).sum()), bool((w[~keep] == 0).all())
        (16, True)
    """
    w = weight2d.detach().float().clone()
    rows, cols = w.shape
    if prepared is None:
        if hessian is None:
            raise PruningError(f"sparsegpt: {name} needs its Hessian (or prepared=prepare_hessian(H))")
        if hessian.shape != (cols, cols):
            raise PruningError(f"sparsegpt: the Hessian of {name} is {tuple(hessian.shape)}, expected {(cols, cols)}")
        prepared = prepare_hessian(hessian, damping=damping, name=name)
    u, dead = prepared
    if u.shape != (cols, cols):
        raise PruningError(f"sparsegpt: the Hessian of {name} is {tuple(u.shape)}, expected {(cols, cols)}")
    w[:, dead] = 0.0

    nm = isinstance(pattern, NInM) and sparsity >= pattern.max_sparsity() - 1e-9
    if nm and block_size % pattern.m:
        raise PruningError(f"sparsegpt: pattern {pattern.name} needs M dividing the block size {block_size}")
    prune = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    with full_fp32_matmul():  # the error feedback at full float32 precision, even where TF32/bf16 is on
        _solve_(w, u, prune, pattern, sparsity, nm, block_size)
    w.masked_fill_(prune, 0.0)  # (w[prune] = 0 would build the int64 indices of every pruned weight)
    return w, ~prune


def _solve_(
    w: torch.Tensor, u: torch.Tensor, prune: torch.Tensor, pattern: Pattern, sparsity: float, nm: bool, block_size: int
) -> None:
    """Steps 4-5 of :func:`sparsegpt_` in place: choose *prune* block by block and spread each pruned
    weight's error over the columns after it."""
    cols = w.shape[1]
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        block = w[:, i1:i2].clone()
        u_block = u[i1:i2, i1:i2]
        diag = torch.diagonal(u_block)
        errors = torch.zeros_like(block)
        chosen = prune[:, i1:i2]
        if not nm:
            chosen.copy_(_block_choice(block.pow(2) / diag.pow(2), pattern, sparsity))
        for i in range(i2 - i1):
            if nm and i % pattern.m == 0:
                score = block[:, i : i + pattern.m].pow(2) / diag[i : i + pattern.m].pow(2)
                lowest = torch.sort(score, dim=1, stable=True).indices[:, : pattern.n]
                chosen[:, i : i + pattern.m].scatter_(1, lowest, True)
            # the error of zeroing the chosen weights of column i (w / U_ii where pruned, 0 where kept),
            # spread over the block's later columns; column i itself is left at ~0 where pruned
            # (exactly 0 by the final masked_fill) and unchanged where kept: err is 0 there
            err = errors[:, i]
            torch.mul(block[:, i], chosen[:, i], out=err).div_(diag[i])
            block[:, i:].addr_(err, u_block[i, i:], alpha=-1)  # in place: no [rows, block] temporary
        w[:, i1:i2] = block
        if i2 < cols:
            w[:, i2:].addmm_(errors, u[i1:i2, i2:], alpha=-1)  # no [rows, cols] temporary
