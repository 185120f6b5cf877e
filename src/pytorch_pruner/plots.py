"""PNG plots: per-layer sparsity of a report, and each pruner's schedule.

matplotlib is an optional extra (``pip install -c constraints.txt -e '.[plot]'`` in a checkout); it
is imported only when a plot is drawn, and only its object-oriented API is used (no pyplot, no
global backend change).
:func:`schedule_points` needs no matplotlib: the CLI prints it as a table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import load_config
from .errors import install_hint
from .fileio import atomic_write
from .schedules import Schedule

if TYPE_CHECKING:
    from .report import SparsityReport

__all__ = ["plot_layer_sparsity", "plot_schedule", "schedule_points", "schedules"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plots need matplotlib; {install_hint('plot', 'matplotlib')}") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def schedules(config: Any) -> list[Schedule]:
    """The :class:`~pytorch_pruner.schedules.Schedule` of each pruner of *config* (path, dict, config)."""
    return [s.schedule() for s in load_config(config).resolved()]


#: The most points a schedule is listed or drawn with (``Schedule.count_steps`` says how many exist).
MAX_POINTS = 1000


def schedule_points(config: Any, steps: int | None = None) -> list[list[tuple[int, float]]]:
    """For each pruner, ``(pruning step, target sparsity)`` at each step where its masks change.

    Args:
        config: anything :func:`~pytorch_pruner.load_config` takes.
        steps: the run's number of optimizer steps; pruning steps at or past it are left out
            (they would never run).

    Returns:
        Every pruning step, or :data:`MAX_POINTS` of them spread evenly (first and last kept)
        when there are more: a window of 10^12 steps costs no more than one of 1,000.

    Example:
        >>> schedule_points({"start_step": 0, "end_step": 4, "update_frequency_on_step": 2,
        ...                  "target_sparsity": 0.5, "sparsity_decay_type": "linear"})
        [[(0, 0.0), (2, 0.25), (4, 0.5)]]
    """
    return [
        [(step, schedule.sparsity_at(step)) for step in schedule.sampled_steps(MAX_POINTS, steps)]
        for schedule in schedules(config)
    ]


def plot_schedule(config: Any, path: str | os.PathLike[str], steps: int | None = None) -> Path:
    """Draw the target sparsity against the optimizer step for every pruner of *config*.

    Args:
        config: anything :func:`~pytorch_pruner.load_config` takes.
        path: the PNG to write.
        steps: the x-axis length (default: a little past the last pruning step).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    resolved = load_config(config).resolved()
    scheds = [s.schedule() for s in resolved]
    last = max(s.last_step for s in scheds)
    end = steps if steps is not None else max(last + max(2, last // 10), 2)
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for i, (s, settings) in enumerate(zip(scheds, resolved, strict=True)):
        # a step function: it only changes at pruning steps, so those points (and the ends) suffice
        xs = sorted({0, end, *s.sampled_steps(MAX_POINTS, end + 1)})
        ys = [s.sparsity_at(x) for x in xs]
        color = _COLORS[i % len(_COLORS)]
        curve = "one-shot" if s.one_shot else settings.sparsity_decay_type
        label = f"pruners[{i}]: {settings.pattern.name}, {curve}, target {settings.final_sparsity:g}"
        ax.plot(xs, ys, drawstyle="steps-post", color=color, linewidth=2, label=label)
        marks = [(x, s.sparsity_at(x)) for x in s.sampled_steps(MAX_POINTS, end + 1)]
        ax.plot([m[0] for m in marks], [m[1] for m in marks], "o", color=color, markersize=4)
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
    ax.set_xlim(0, end)
    ax.set_ylim(0, 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("target sparsity")
    ax.set_title("Pruning schedule (dots: steps where masks are recomputed)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, path)


def plot_layer_sparsity(report: SparsityReport, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Draw one horizontal bar per layer: achieved sparsity, the target as a tick, skipped layers
    greyed with their reason.

    Args:
        report: a :class:`~pytorch_pruner.SparsityReport` (``pruning.report()`` or read from a file).
        path: the PNG to write.
        title: the plot title (default: the step and the seed's matmul ratio).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
    """
    rows = report.layers
    fig = _figure(10, 1.2 + 0.32 * max(len(rows), 1))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]  # first layer on top
    seen: set[int] = set()
    for y, row in zip(ys, rows, strict=True):
        color = _COLORS[row.pruner % len(_COLORS)]
        if row.skipped:
            ax.barh(y, 1.0, color="#dddddd", hatch="//", edgecolor="#aaaaaa", linewidth=0)
            reason = row.skipped if len(row.skipped) <= 110 else row.skipped[:107] + "..."
            ax.text(0.01, y, f"skipped: {reason}", va="center", fontsize=8, color="#444444")
            continue
        label = None if row.pruner in seen else f"pruners[{row.pruner}] ({row.pattern}, {row.criterion})"
        seen.add(row.pruner)
        ax.barh(y, row.sparsity, color=color, label=label)
        ax.plot([row.target, row.target], [y - 0.4, y + 0.4], color="black", linewidth=1.5)
        note = "" if row.compliant in (True, None) else "  BLOCKS BROKEN"
        text = f"{row.sparsity:.3f}{note}"
        if row.sparsity >= 0.25:  # inside the bar, clear of the target tick near its end
            ax.text(0.01, y, text, va="center", fontsize=8, color="white", fontweight="bold")
        else:
            ax.text(row.sparsity + 0.01, y, text, va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{r.name} {'x'.join(map(str, r.shape))}" for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity (bar: achieved, black tick: target)")
    ratio = report.ratios.elementwise_over_matmul_gemm_conv
    ax.set_title(title or f"Per-layer sparsity at step {report.step} (matmul/conv ratio {ratio:.4f})")
    ax.grid(True, axis="x", alpha=0.3)
    if seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)
