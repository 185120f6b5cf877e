"""What was pruned: the seed's three sparsity ratios and a per-layer table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from .targets import prunable_layers, weight_key

__all__ = ["LayerReport", "SparsityRatios", "SparsityReport", "build_report", "sparsity_ratios"]


class SparsityRatios(NamedTuple):
    """The seed's ratios (SPEC §7).

    * ``elementwise_over_matmul_gemm_conv``: pruned weights / weights of every Linear and conv
      layer of the model, pruned or not (the seed's "Element-wise/matmul, Gemm, conv ratio");
    * ``elementwise_over_all``: pruned weights / all parameters;
    * ``blockwise_over_matmul_gemm_conv``: as INC computes it: the sum over pruners of (pruned
      blocks / blocks) x (weights of the pruner's layers), over the weights of every Linear and
      conv layer (for N:M a block is a weight). :attr:`SparsityReport.block_sparsity` keeps the
      pruned layers' own block sparsity.
    """

    elementwise_over_matmul_gemm_conv: float
    elementwise_over_all: float
    blockwise_over_matmul_gemm_conv: float


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]
    pruner: int
    pattern: str
    criterion: str
    target: float
    sparsity: float
    #: whether every block is either fully kept or fully zero (the pattern holds)
    compliant: bool | None = None
    skipped: str | None = None


@dataclass
class SparsityReport:
    step: int
    ratios: SparsityRatios
    layers: list[LayerReport] = field(default_factory=list)
    #: pruned blocks / blocks of the pruned layers (for N:M, pruned weights / weights)
    block_sparsity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "ratios": self.ratios._asdict(),
            "layers": [asdict(r) for r in self.layers],
            "block_sparsity": self.block_sparsity,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SparsityReport:
        """Inverse of :meth:`to_dict` (e.g. a report read back from JSON).

        Raises:
            KeyError, TypeError: *data* is not a report's dict.
        """
        layers = [LayerReport(**{**row, "shape": tuple(row["shape"])}) for row in data["layers"]]
        block = data.get("block_sparsity")
        return cls(int(data["step"]), SparsityRatios(**data["ratios"]), layers, None if block is None else float(block))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_table(self) -> str:
        """A plain-text table, one row per layer, then the three ratios."""
        headers = ["layer", "shape", "pruner", "pattern", "criterion", "target", "sparsity", "note"]
        rows = []
        for r in self.layers:
            note = f"skipped: {r.skipped}" if r.skipped else ("" if r.compliant in (True, None) else "BLOCKS BROKEN")
            rows.append(
                [
                    r.name,
                    "x".join(map(str, r.shape)),
                    r.pruner,
                    r.pattern,
                    r.criterion,
                    f"{r.target:.4f}",
                    f"{r.sparsity:.4f}",
                    note,
                ]
            )
        try:
            from tabulate import tabulate

            table = tabulate(rows, headers=headers, disable_numparse=True)
        except ImportError:  # plain columns without the optional dependency
            cells: list[list[Any]] = [headers, *rows]
            widths = [max(len(str(x)) for x in col) for col in zip(*cells, strict=True)]
            lines: list[list[Any]] = [headers, ["-" * w for w in widths], *rows]
            table = "\n".join(
                "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in lines
            )
        ratios = "\n".join(f"{k}: {v:.4f}" for k, v in self.ratios._asdict().items())
        if self.block_sparsity is not None:
            ratios += f"\nblock sparsity of the pruned layers: {self.block_sparsity:.4f}"
        return f"{table}\n\nstep {self.step}\n{ratios}"

    def __str__(self) -> str:
        return self.to_table()


def _unique_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def block_counts(pruners: list[Any]) -> list[tuple[int, int, int]]:
    """Per pruner: ``(pruned units, units, weights)`` of its layers; for N:M a unit is a weight."""
    counts = []
    for p in pruners:
        units = pruned_units = weights = 0
        for layer in p.layers:
            size = 1 if p.pattern.nm else p.pattern.unit_elements(*layer.target.full_shape2d)
            units += layer.numel // size
            pruned_units += layer.pruned_elements // size
            weights += layer.numel
        counts.append((pruned_units, units, weights))
    return counts


def sparsity_ratios(model: nn.Module, pruners: list[Any]) -> SparsityRatios:
    """Compute :class:`SparsityRatios` for *model* pruned by *pruners*.

    The third ratio is INC's: each pruner's block sparsity (pruned blocks / blocks) weighs the
    weights of its layers, and the sum is divided by the weights of every Linear and conv layer.
    """
    pruned = sum(layer.pruned_elements for p in pruners for layer in p.layers)
    # each tensor once: layers sharing a weight (tied) hold it once
    matmul = sum(numel for numel in {weight_key(t): t.weight.numel() for t in prunable_layers(model)}.values())
    blockwise = sum(int(weights * done / units) for done, units, weights in block_counts(pruners) if units)
    return SparsityRatios(
        pruned / matmul if matmul else 0.0,
        pruned / max(_unique_numel(model), 1),
        blockwise / matmul if matmul else 0.0,
    )


def pruned_layers_block_sparsity(pruners: list[Any]) -> float:
    """Pruned units / units of the pruned layers (for N:M, pruned weights / weights)."""
    counts = block_counts(pruners)
    units = sum(c[1] for c in counts)
    return sum(c[0] for c in counts) / units if units else 0.0


def build_report(model: nn.Module, pruners: list[Any], step: int) -> SparsityReport:
    rows: list[LayerReport] = []
    # by the names pruners use (wrappers such as torch.compile's `_orig_mod.` left out)
    modules = {t.name: t.module for t in prunable_layers(model)} if any(p.skipped for p in pruners) else {}
    for i, p in enumerate(pruners):
        s = p.settings
        for layer in p.layers:
            w = layer.target.weight
            if layer.target.shard is not None:  # FSDP2: counted over every rank by sync_counts
                zero_where_pruned = layer.synced is not None and layer.synced[1] == 0
            else:  # a weight still on meta (not materialized) has nothing pruned yet
                zero_where_pruned = w.is_meta or bool((w.detach()[~p.full_mask(layer)] == 0).all())
            rows.append(
                LayerReport(
                    layer.name,
                    tuple(layer.target.full_shape),
                    i,
                    p.pattern.name,
                    s.prune_type,
                    p.current_sparsity,
                    layer.sparsity,
                    compliant=zero_where_pruned,
                )
            )
        for name, reason in p.skipped:
            weight = modules[name].weight
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else ()
            rows.append(LayerReport(name, shape, i, p.pattern.name, s.prune_type, 0.0, 0.0, skipped=reason))
    return SparsityReport(step, sparsity_ratios(model, pruners), rows, pruned_layers_block_sparsity(pruners))
