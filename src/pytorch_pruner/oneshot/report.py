"""What a one-shot run did: per-layer sparsity, per-block OWL allocation, tokens and time."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["OneShotBlock", "OneShotLayer", "OneShotReport"]


@dataclass
class OneShotLayer:
    block: int
    name: str
    shape: tuple[int, ...]
    criterion: str
    pattern: str
    target: float
    #: pruned weights / weights of the layer (exact zeros the mask put there)
    sparsity: float
    numel: int
    skipped: str | None = None


@dataclass
class OneShotBlock:
    block: int
    name: str
    #: OWL's outlier ratio D of the block (share of wanda scores above M x mean), when OWL ran
    outlier_ratio: float | None
    target: float
    sparsity: float


@dataclass
class OneShotReport:
    """Returned by :func:`~pytorch_pruner.prune_oneshot_`; ``print(report)`` shows the tables."""

    layers: list[OneShotLayer] = field(default_factory=list)
    blocks: list[OneShotBlock] = field(default_factory=list)
    owl: bool = False
    #: calibration tokens seen by the first block (summed over batches)
    tokens: int = 0
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Pruned weights / weights over every pruned (not skipped) layer."""
        pruned = [r for r in self.layers if r.skipped is None]
        total = sum(r.numel for r in pruned)
        return sum(r.sparsity * r.numel for r in pruned) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(r) for r in self.layers],
            "blocks": [asdict(b) for b in self.blocks],
            "owl": self.owl,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "sparsity": self.sparsity,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_table(self) -> str:
        """Per-layer rows, then per-block rows (with OWL's outlier ratio when it ran), then totals."""
        layer_rows = [
            [
                r.block,
                r.name,
                "x".join(map(str, r.shape)),
                r.criterion,
                r.pattern,
                f"{r.target:.4f}",
                f"{r.sparsity:.4f}",
                f"skipped: {r.skipped}" if r.skipped else "",
            ]
            for r in self.layers
        ]
        parts = [_table(layer_rows, ["block", "layer", "shape", "criterion", "pattern", "target", "sparsity", "note"])]
        if self.blocks:
            block_rows = [
                [
                    b.block,
                    b.name or "(whole model)",
                    "" if b.outlier_ratio is None else f"{b.outlier_ratio:.4f}",
                    f"{b.target:.4f}",
                    f"{b.sparsity:.4f}",
                ]
                for b in self.blocks
            ]
            headers = ["block", "name", "OWL outlier ratio" if self.owl else "outlier ratio", "target", "sparsity"]
            parts.append(_table(block_rows, headers))
        parts.append(
            f"sparsity of the pruned layers: {self.sparsity:.4f}; calibration tokens: {self.tokens}; "
            f"time: {self.seconds:.1f} s"
        )
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.to_table()


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    try:
        from tabulate import tabulate

        return str(tabulate(rows, headers=headers, disable_numparse=True))
    except ImportError:  # plain columns without the optional dependency
        cells = [headers, *rows]
        widths = [max(len(str(x)) for x in col) for col in zip(*cells, strict=True)]
        lines = [headers, ["-" * w for w in widths], *rows]
        return "\n".join(
            "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in lines
        )
