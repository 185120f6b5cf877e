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
    * ``blockwise_over_matmul_gemm_conv``: pruned units / units of the pruned layers (for N:M,
      pruned weights / weights).
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

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ratios": self.ratios._asdict(), "layers": [asdict(r) for r in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SparsityReport:
        """Inverse of :meth:`to_dict` (e.g. a report read back from JSON).

        Raises:
            KeyError, TypeError: *data* is not a report's dict.
        """
        layers = [LayerReport(**{**row, "shape": tuple(row["shape"])}) for row in data["layers"]]
        return cls(int(data["step"]), SparsityRatios(**data["ratios"]), layers)

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
        return f"{table}\n\nstep {self.step}\n{ratios}"

    def __str__(self) -> str:
        return self.to_table()


def _unique_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def sparsity_ratios(model: nn.Module, pruners: list[Any]) -> SparsityRatios:
    """Compute :class:`SparsityRatios` for *model* pruned by *pruners*."""
    pruned = sum(layer.pruned_elements for p in pruners for layer in p.layers)
    # each tensor once: layers sharing a weight (tied) hold it once
    matmul = sum(numel for numel in {weight_key(t): t.weight.numel() for t in prunable_layers(model)}.values())
    units = pruned_units = 0
    for p in pruners:
        for layer in p.layers:
            rows, cols = layer.target.shape2d
            size = p.pattern.unit_elements(rows, cols)
            if p.pattern.max_sparsity() < 1.0:  # N:M: count weights, not groups
                units += layer.numel
                pruned_units += layer.pruned_elements
            else:
                units += layer.numel // size
                pruned_units += layer.pruned_elements // size
    return SparsityRatios(
        pruned / matmul if matmul else 0.0,
        pruned / max(_unique_numel(model), 1),
        pruned_units / units if units else 0.0,
    )


def build_report(model: nn.Module, pruners: list[Any], step: int) -> SparsityReport:
    rows: list[LayerReport] = []
    # by the names pruners use (wrappers such as torch.compile's `_orig_mod.` left out)
    modules = {t.name: t.module for t in prunable_layers(model)} if any(p.skipped for p in pruners) else {}
    for i, p in enumerate(pruners):
        s = p.settings
        for layer in p.layers:
            w = layer.target.weight
            zero_where_pruned = bool((w.detach()[~p.full_mask(layer)] == 0).all())
            rows.append(
                LayerReport(
                    layer.name,
                    tuple(w.shape),
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
    return SparsityReport(step, sparsity_ratios(model, pruners), rows)
