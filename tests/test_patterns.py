import pytest
import torch
from torch import nn

from pytorch_pruner import PATTERNS, ConfigError, Pruning, parse_pattern
from pytorch_pruner.patterns import Channel, NInM, NxM
from pytorch_pruner.selection import lowest_k

EXAMPLES = [(family, text) for family in PATTERNS.names() for text in PATTERNS.get(family).examples]


def prune_units(pattern, rows: int, cols: int, fraction: float, seed: int = 0):
    """Score a random [rows, cols] tensor, prune the lowest *fraction* of units, return (mask, n)."""
    scores2d = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    scores = pattern.reduce(scores2d)
    assert tuple(scores.shape) == pattern.score_shape(rows, cols)
    units = pattern.unit_scores(scores)
    assert units.numel() == pattern.num_units(rows, cols)
    n = int(fraction * units.numel())
    keep = pattern.keep_mask(lowest_k(units, n), scores)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    return pattern.expand(keep, rows, cols), n


@pytest.mark.parametrize(("family", "text"), EXAMPLES)
def test_every_registered_pattern_prunes_whole_units(family: str, text: str) -> None:
    pattern = parse_pattern(text)
    assert isinstance(pattern, PATTERNS.get(family))
    rows, cols = 64, 128  # divisible by every example's block
    assert pattern.check(rows, cols) is None
    full, n = prune_units(pattern, rows, cols, 0.5)
    assert full.shape == (rows, cols)
    assert int((~full).sum()) == n * pattern.unit_elements(rows, cols)


@pytest.mark.parametrize("text", ["1x1", "4x1", "2x2", "8x1", "1x4"])
def test_nxm_blocks_are_all_kept_or_all_zero(text: str) -> None:
    pattern = parse_pattern(text)
    full, _ = prune_units(pattern, 16, 32, 0.6)
    blocks = full.reshape(16 // pattern.n, pattern.n, 32 // pattern.m, pattern.m)
    per_block = blocks.sum(dim=(1, 3))
    assert set(per_block.unique().tolist()) <= {0, pattern.n * pattern.m}
    assert (per_block == 0).any()


@pytest.mark.parametrize("text", ["2:4", "1:4", "4:8", "1:2"])
def test_n_m_zeroes_exactly_n_per_pruned_group(text: str) -> None:
    pattern = parse_pattern(text)
    n, m = pattern.n, pattern.m
    full, pruned = prune_units(pattern, 16, 32, 0.5)
    zeros = (~full).reshape(-1, m).sum(dim=1)
    assert set(zeros.unique().tolist()) == {0, n}
    assert int((zeros == n).sum()) == pruned
    every, _ = prune_units(pattern, 16, 32, 1.0)  # s = N/M: every group
    assert ((~every).reshape(-1, m).sum(dim=1) == n).all()


def test_n_m_zeroes_the_lowest_weights_of_each_group() -> None:
    pattern = NInM(2, 4)
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 9.0, 8.0, 0.1]])
    keep = pattern.keep_mask(torch.tensor([True, True]), scores)
    assert keep.tolist() == [[True, False, True, False, False, True, True, False]]
    # group score = sum of the N candidates / M
    assert pattern.unit_scores(scores).tolist() == pytest.approx([(1 + 2) / 4, (0.5 + 0.1) / 4])


def test_channel_patterns_prune_whole_columns_or_rows() -> None:
    cols_full, _ = prune_units(Channel(1), 8, 12, 0.5)
    assert ((~cols_full).all(dim=0) | cols_full.all(dim=0)).all()
    assert int((~cols_full).all(dim=0).sum()) == 6
    rows_full, _ = prune_units(Channel(0), 8, 12, 0.5)
    assert ((~rows_full).all(dim=1) | rows_full.all(dim=1)).all()
    assert int((~rows_full).all(dim=1).sum()) == 4


def test_prefixed_pattern_names_are_accepted() -> None:
    assert isinstance(parse_pattern("tile_pattern_4x1"), NxM)
    assert parse_pattern("tile_pattern_2:4").name == "2:4"


@pytest.mark.parametrize("text", ["4x", "x1", "2:2", "3:2", "0x1", "1x0", "0:4", "4x1x1", "", "channel"])
def test_malformed_patterns(text: str) -> None:
    with pytest.raises(ConfigError, match=repr(text).replace("(", r"\(")):
        parse_pattern(text)


def prune_one_shot(model: nn.Module, pattern: str, target: float, types=("Linear", "Conv2d", "Conv1d", "Conv1D")):
    pruning = Pruning(
        {"prune_type": "magnitude", "pattern": pattern, "target_sparsity": target, "prune_layer_type": list(types)}
    )
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    return pruning


def test_conv2d_view_puts_input_channels_fastest() -> None:
    conv = nn.Conv2d(8, 8, 3)
    pruning = prune_one_shot(nn.Sequential(conv), "1x4", 0.5)
    mask = pruning.masks()["0"]  # [O, C, kh, kw]
    # a 1x4 block is 4 consecutive input channels at one kernel position of one filter
    groups = mask.permute(0, 2, 3, 1).reshape(8, 3, 3, 2, 4)
    assert (groups.all(-1) | (~groups).all(-1)).all()
    assert (conv.weight[~mask] == 0).all()
    assert float((~mask).float().mean()) == pytest.approx(0.5, abs=4 / mask.numel())


def test_conv2d_4x1_shares_masks_across_four_filters() -> None:
    conv = nn.Conv2d(3, 8, 3)
    mask = prune_one_shot(nn.Sequential(conv), "4x1", 0.5).masks()["0"]
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[3]) and torch.equal(mask[4], mask[7])


def test_1xchannel_prunes_whole_conv_filters() -> None:
    conv = nn.Conv2d(3, 8, 3)
    mask = prune_one_shot(nn.Sequential(conv), "1xchannel", 0.5).masks()["0"]
    per_filter = mask.reshape(8, -1)
    assert (per_filter.all(1) | (~per_filter).all(1)).all()
    assert int((~per_filter).all(1).sum()) == 4


def test_conv1d() -> None:
    conv = nn.Conv1d(8, 4, 5)
    mask = prune_one_shot(nn.Sequential(conv), "4x1", 0.5).masks()["0"]
    assert torch.equal(mask[0], mask[3])
    assert float((conv.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.05)


def test_transformers_conv1d_is_transposed() -> None:
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    layer = pytorch_utils.Conv1D(nf=8, nx=16)  # weight [in=16, out=8]
    mask = prune_one_shot(nn.Sequential(layer), "4x1", 0.5).masks()["0"]
    assert mask.shape == (16, 8)
    # four consecutive *output* neurons (columns of the stored weight) share each mask value
    assert torch.equal(mask[:, 0], mask[:, 3]) and torch.equal(mask[:, 4], mask[:, 7])
    assert (layer.weight[~mask] == 0).all()


def test_a_layer_that_does_not_fit_is_left_dense_and_reported(mlp) -> None:
    pruning = prune_one_shot(mlp, "8x1", 0.5, types=("Linear",))  # head is [4, 32]: 4 rows < 8
    assert [layer.name for layer in pruning.pruners[0].layers] == ["fc1", "fc2"]
    assert (mlp.head.weight != 0).all()
    row = next(r for r in pruning.report().layers if r.name == "head")
    assert row.skipped and "rows divisible by 8" in row.skipped and "[4, 32]" in row.skipped
    assert "skipped: pattern 8x1 needs rows divisible by 8" in pruning.report().to_table()


def test_n_m_needs_the_input_dimension_to_divide() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    pruning = prune_one_shot(model, "2:4", 0.5)
    assert [layer.name for layer in pruning.pruners[0].layers] == ["1"]
    assert pruning.pruners[0].skipped[0][0] == "0"
