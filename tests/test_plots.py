"""Schedule points and PNG plots (matplotlib is the optional `plot` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pytorch_pruner import Pruning, prune_
from pytorch_pruner.plots import plot_layer_sparsity, plot_schedule, schedule_points

from .conftest import make_convnet, make_mlp

EXP = [0, 0.2057, 0.3690, 0.4988, 0.6019, 0.6838, 0.7488, 0.8005, 0.8415, 0.8741, 0.9]


def test_schedule_points_follow_the_spec() -> None:
    cfg = {
        "start_step": 100,
        "end_step": 200,
        "update_frequency_on_step": 10,
        "target_sparsity": 0.9,
        "pruners": [{}, {"sparsity_decay_type": "linear", "start_step": 0, "end_step": 0}],
    }
    exp, one_shot = schedule_points(cfg)
    assert [s for s, _ in exp] == list(range(100, 201, 10))
    assert [round(v, 4) for _, v in exp] == EXP
    assert one_shot == [(0, 0.9)]
    assert schedule_points(cfg, steps=150)[0][-1] == (140, pytest.approx(0.6019, abs=1e-4))
    # the cap bounds the final value
    assert schedule_points({"target_sparsity": 0.9, "max_sparsity_ratio_per_layer": 0.5}) == [[(0, 0.5)]]


def _image(path: Path) -> torch.Tensor:
    image = pytest.importorskip("matplotlib.image")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return torch.from_numpy(image.imread(str(path)))


def _has_color(pixels: torch.Tensor, hex_color: str, at_least: int = 200) -> bool:
    """Whether a patch of *hex_color* (a bar or a line, not anti-aliasing noise) is drawn."""
    rgb = torch.tensor([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int(((pixels[..., :3] - rgb).abs().max(dim=-1).values < 0.02).sum()) >= at_least


def test_plot_schedule_draws_one_colored_line_per_pruner(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cfg = {
        "start_step": 10,
        "end_step": 90,
        "update_frequency_on_step": 10,
        "pruners": [{"pattern": "4x1"}, {"pattern": "2:4", "target_sparsity": 0.5, "sparsity_decay_type": "cos"}],
    }
    pixels = _image(plot_schedule(cfg, tmp_path / "sub" / "schedule.png"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert _has_color(pixels, "#1f77b4") and _has_color(pixels, "#ff7f0e")
    assert not _has_color(pixels, "#2ca02c")  # no third pruner, no third line
    single = _image(plot_schedule({"start_step": 5, "end_step": 5, "prune_type": "magnitude"}, tmp_path / "one.png"))
    assert _has_color(single, "#1f77b4") and not _has_color(single, "#ff7f0e")


def test_plot_layer_sparsity_grows_with_layers_and_greys_skipped_ones(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    small = _image(
        plot_layer_sparsity(prune_(make_mlp(), pattern="1x1", target_sparsity=0.5).report(), tmp_path / "small.png")
    )
    model = make_convnet()
    # 8x1 does not fit the 4-row head: it is reported as skipped and drawn grey
    pruning = Pruning({"prune_type": "magnitude", "pattern": "8x1", "target_sparsity": 0.5, "prune_domain": "local"})
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    report = pruning.report()
    assert [r.skipped is not None for r in report.layers] == [False, False, True]
    pixels = _image(plot_layer_sparsity(report, tmp_path / "conv.png", title="t"))
    assert _has_color(pixels, "#1f77b4") and _has_color(pixels, "#dddddd", at_least=5000)
    assert not _has_color(small, "#dddddd", at_least=5000)
    big = _image(
        plot_layer_sparsity(
            prune_(
                torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(12))), pattern="1x1", target_sparsity=0.5
            ).report(),
            tmp_path / "big.png",
        )
    )
    assert big.shape[0] > small.shape[0] + 100


def test_plots_without_matplotlib_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        ImportError, match=r"plots need matplotlib; install it with: pip install matplotlib .*-e '\.\[plot\]'"
    ):
        plot_schedule({"prune_type": "magnitude"}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
