"""OWL: outlier-weighted layerwise sparsity (Yin et al., arXiv:2310.05175).

Blocks whose wanda scores hold more outliers keep more weights. Per block, the outlier ratio
``D = share of wanda scores above M · mean`` (M = ``owl_m``, 5; the mean over the block's pruned
layers together). The ratios are rescaled to ``[0, 2λ]`` (λ = ``owl_lambda``, 0.08), and the
densities ``1 − s_b`` are those values shifted so that the mean sparsity, weighted by the number
of prunable weights of each block, is exactly the target.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

__all__ = ["outlier_ratio", "owl_sparsities"]


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """Share of all entries of *scores* (taken together) above ``m`` times their mean.

    Example:
        >>> outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 1.0, 100.0])], 3.0)
        0.2
    """
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    if flat.numel() == 0:
        return 0.0
    return int((flat > m * flat.mean()).sum()) / flat.numel()


def owl_sparsities(
    ratios: Sequence[float], weights: Sequence[float], target: float, lam: float, cap: float = 1.0
) -> list[float]:
    """Per-block sparsities from outlier *ratios*: density ``1 − s_b`` is the ratio rescaled to
    ``[0, 2·lam]`` and shifted so that ``Σ w_b s_b / Σ w_b = target`` (w: prunable weights of block b).

    A sparsity outside ``[0, cap]`` is clipped (with a warning: the mean then misses the target).

    Example:
        >>> [round(s, 3) for s in owl_sparsities([0.01, 0.03], [1, 1], 0.5, 0.08)]
        [0.58, 0.42]
    """
    if not ratios:
        return []
    d = torch.tensor(list(ratios), dtype=torch.float64)
    w = torch.tensor(list(weights), dtype=torch.float64)
    w = w / w.sum()
    spread = float(d.max() - d.min())
    if spread <= 0.0:
        return [float(target)] * len(ratios)
    scaled = (d - d.min()) / spread * (2.0 * lam)
    density = scaled - float((w * scaled).sum()) + (1.0 - target)
    sparsity = (1.0 - density).tolist()
    clipped = [min(max(s, 0.0), cap) for s in sparsity]
    if clipped != sparsity:
        warnings.warn(
            f"OWL: some block sparsities fell outside [0, {cap:g}] and were clipped, so the mean misses the "
            f"target {target:g}; lower owl_lambda",
            stacklevel=2,
        )
    return clipped
