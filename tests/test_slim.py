"""Structured slimming: pruned units are removed and the outputs stay those of the masked model."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning, parse_pattern, prune_
from pytorch_pruner.patterns import ChannelGroup
from pytorch_pruner.speed import SlimmingError, find_bert_layers, load_slimmed, slim_, slim_bert_, slim_sequential_

transformers = pytest.importorskip("transformers")

HEAD_DIM = 8
FFN_LAYERS = r"layer\.\d+\.output\.dense$"
ATTN_OUT = r"attention\.output\.dense$"


@pytest.fixture
def bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))


def _bert(config: transformers.BertConfig, cls: type = transformers.BertModel) -> nn.Module:
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # nonzero biases, so that folding constants matters
        for _, layer in find_bert_layers(model):
            layer.intermediate.dense.bias.uniform_(-1, 1)
    return model


def _out(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _prune(model: nn.Module, *pruners: dict) -> Pruning:
    return prune_(model, {"pruners": list(pruners)})


# -- head pattern -------------------------------------------------------------------------------
def test_head_pattern_parses_and_checks_divisibility() -> None:
    head = parse_pattern("tile_pattern_head:8")
    assert isinstance(head, ChannelGroup) and (head.axis, head.size) == (1, 8)
    rows = parse_pattern("4xchannel")
    assert isinstance(rows, ChannelGroup) and (rows.axis, rows.size) == (0, 4)
    plain = parse_pattern("channelx1")  # size 1 is the plain channel pattern, with 2-D masks
    assert isinstance(plain, ChannelGroup) and (plain.axis, plain.size) == (1, 1)
    assert plain.score_shape(8, 12) == (1, 12)
    assert head.check(32, 32) is None
    assert "is the head size right" in head.check(32, 36)
    with pytest.raises(ValueError, match="group size must be at least 1"):
        parse_pattern("head:0")


@pytest.mark.parametrize(("pattern", "axis"), [("head:8", 1), ("channelx4", 1), ("4xchannel", 0)])
def test_channel_groups_prune_whole_groups(pattern: str, axis: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    _prune(model, {"pattern": pattern, "target_sparsity": 0.5})
    size = int(pattern.rsplit(":", maxsplit=1)[-1]) if ":" in pattern else 4
    zero = model[0].weight.eq(0)
    groups = (zero.all(dim=1) if axis == 0 else zero.all(dim=0)).reshape(-1, size)
    # every group is all zero or all kept, and half of them are zero
    assert bool((groups.all(dim=1) | ~groups.any(dim=1)).all())
    assert int(groups.all(dim=1).sum()) == groups.shape[0] // 2
    assert float(zero.float().mean()) == 0.5


# -- BERT ---------------------------------------------------------------------------------------
def test_bert_ffn_columns_removed_outputs_equal(bert_config, tokens) -> None:
    model = _bert(bert_config)
    _prune(model, {"names": [FFN_LAYERS], "pattern": "channelx1", "target_sparsity": 0.5})
    zero_cols = [int(layer.output.dense.weight.eq(0).all(dim=0).sum()) for _, layer in find_bert_layers(model)]
    before = _out(model, tokens)
    report = slim_(model)
    widths = [layer.intermediate.dense.out_features for _, layer in find_bert_layers(model)]
    assert widths == [64 - z for z in zero_cols] and sum(zero_cols) == 64  # global 50% of 128 neurons
    assert [layer.output.dense.in_features for _, layer in find_bert_layers(model)] == widths
    assert report.removed == 64 and not report.skipped
    torch.testing.assert_close(_out(model, tokens), before, atol=1e-5, rtol=1e-5)
    assert model.config.slimmed_intermediate_sizes == widths and model.config.intermediate_size == max(widths)


def test_bert_ffn_rows_removed_with_bias_folded(bert_config, tokens) -> None:
    model = _bert(bert_config)
    _prune(model, {"names": [r"intermediate\.dense$"], "pattern": "1xchannel", "target_sparsity": 0.25})
    before = _out(model, tokens)
    bias_before = [layer.output.dense.bias.clone() for _, layer in find_bert_layers(model)]
    slim_(model)
    layers = find_bert_layers(model)
    assert sum(layer.intermediate.dense.out_features for _, layer in layers) == 96
    # the removed neurons output gelu(bias) != 0: it must have moved into output.dense's bias
    assert all(not torch.equal(b, layer.output.dense.bias) for b, (_, layer) in zip(bias_before, layers, strict=True))
    torch.testing.assert_close(_out(model, tokens), before, atol=1e-5, rtol=1e-5)


def test_bert_heads_removed_outputs_equal(bert_config, tokens) -> None:
    model = _bert(bert_config)
    _prune(model, {"names": [ATTN_OUT], "pattern": f"head:{HEAD_DIM}", "target_sparsity": 0.5})
    silent = [
        int(layer.attention.output.dense.weight.reshape(32, 4, HEAD_DIM).eq(0).all(dim=2).all(dim=0).sum())
        for _, layer in find_bert_layers(model)
    ]
    assert sum(silent) == 4
    before = _out(model, tokens)
    report = slim_(model)
    for (_, layer), gone in zip(find_bert_layers(model), silent, strict=True):
        kept = 4 - gone
        assert layer.attention.self.num_attention_heads == kept
        assert layer.attention.self.query.out_features == kept * HEAD_DIM == layer.attention.output.dense.in_features
    assert [s.unit for s in report.slimmed] == ["heads"] * sum(1 for g in silent if g)
    torch.testing.assert_close(_out(model, tokens), before, atol=1e-5, rtol=1e-5)


def test_bert_head_with_zero_value_is_removed(bert_config, tokens) -> None:
    model = _bert(bert_config)
    value = find_bert_layers(model)[0][1].attention.self.value
    with torch.no_grad():
        value.weight[2 * HEAD_DIM : 3 * HEAD_DIM] = 0
        value.bias[2 * HEAD_DIM : 3 * HEAD_DIM] = 0
    before = _out(model, tokens)
    slim_(model)
    assert [layer.attention.self.num_attention_heads for _, layer in find_bert_layers(model)] == [3, 4]
    torch.testing.assert_close(_out(model, tokens), before, atol=1e-5, rtol=1e-5)


def test_bert_fully_pruned_layer_keeps_one_unit(bert_config, tokens) -> None:
    model = _bert(bert_config)
    layer = find_bert_layers(model)[1][1]
    with torch.no_grad():
        layer.output.dense.weight.zero_()
        layer.attention.output.dense.weight.zero_()
    before = _out(model, tokens)
    slim_(model)
    assert layer.intermediate.dense.out_features == 1 and layer.attention.self.num_attention_heads == 1
    torch.testing.assert_close(_out(model, tokens), before, atol=1e-5, rtol=1e-5)


def test_bert_save_and_load_slimmed(bert_config, tokens, tmp_path) -> None:
    model = _bert(bert_config, transformers.BertForSequenceClassification)
    _prune(
        model,
        {"names": [FFN_LAYERS], "pattern": "channelx1", "target_sparsity": 0.5},
        {"names": [ATTN_OUT], "pattern": f"head:{HEAD_DIM}", "target_sparsity": 0.5},
    )
    before = _out(model, tokens)
    slim_(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["slimmed_num_attention_heads"] == [
        layer.attention.self.num_attention_heads for _, layer in find_bert_layers(model)
    ]
    loaded = load_slimmed(transformers.BertForSequenceClassification, tmp_path)
    assert not loaded.training
    torch.testing.assert_close(_out(loaded, tokens), before, atol=1e-5, rtol=1e-5)
    auto = load_slimmed(transformers.AutoModelForSequenceClassification, tmp_path)
    assert type(auto) is transformers.BertForSequenceClassification
    torch.testing.assert_close(_out(auto, tokens), before, atol=1e-5, rtol=1e-5)


def test_uniform_ffn_loads_with_plain_from_pretrained(bert_config, tokens, tmp_path) -> None:
    model = _bert(bert_config)
    with torch.no_grad():  # larger weights in layer 1: the global ranking prunes it less
        find_bert_layers(model)[1][1].output.dense.weight.mul_(1.5)
    _prune(model, {"names": [FFN_LAYERS], "pattern": "channelx1", "target_sparsity": 0.5})
    kept = [int(layer.output.dense.weight.ne(0).any(dim=0).sum()) for _, layer in find_bert_layers(model)]
    assert kept[0] != kept[1]  # global ranking: the layers need different widths
    before = _out(model, tokens)
    slim_(model, uniform_ffn=True)
    widths = [layer.intermediate.dense.out_features for _, layer in find_bert_layers(model)]
    assert widths == [max(kept)] * 2 and model.config.intermediate_size == max(kept)
    torch.testing.assert_close(_out(model, tokens), before, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    plain = transformers.BertModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_out(plain, tokens), before, atol=1e-5, rtol=1e-5)


def test_load_slimmed_errors(bert_config, tmp_path) -> None:
    model = _bert(bert_config)
    with torch.no_grad():
        find_bert_layers(model)[0][1].output.dense.weight[:, :10] = 0
    slim_(model)
    model.config.save_pretrained(tmp_path)
    with pytest.raises(SlimmingError, match=r"no model\.safetensors"):
        load_slimmed(transformers.BertModel, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["slimmed_intermediate_sizes"] = [54]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlimmingError, match=r"records sizes for \[1, 2\] layers but BertModel has 2"):
        load_slimmed(transformers.BertModel, tmp_path)

    # the weights saved, then config.json edited to other widths: caught, with the fix
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["slimmed_intermediate_sizes"] = [60, 60]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        SlimmingError, match=r"(?s)do not fit the sizes its config.json records .* same save_pretrained"
    ):
        load_slimmed(transformers.BertModel, tmp_path)
    # a weight the file lacks (and that no tie restores) is named
    config["slimmed_intermediate_sizes"] = [54, 64]
    (tmp_path / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "model.safetensors")
    del weights["pooler.dense.bias"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SlimmingError, match=r"weights missing from the file: \['pooler.dense.bias'\]; save"):
        load_slimmed(transformers.BertModel, tmp_path)


def test_slim_bert_rejects_other_models() -> None:
    with pytest.raises(SlimmingError, match="Sequential has no BERT-style layer"):
        slim_bert_(nn.Sequential(nn.Linear(2, 2)))


# -- CNNs and MLPs ------------------------------------------------------------------------------
def _cnn(padding: int) -> nn.Sequential:
    torch.manual_seed(0)
    side = 8 if padding else 4  # 8x8 input: two 3x3 convs without padding leave 4x4, pooled to 2x2
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=padding), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=padding), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * (side // 2) ** 2, 10),
    )  # fmt: skip
    with torch.no_grad():  # trained-looking batch norms: a zero filter then outputs a nonzero constant
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    return net.eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_cnn_filters_removed_and_constants_folded() -> None:
    net = _cnn(padding=0)
    _prune(net, {"names": ["^0$", "^3$"], "pattern": "1xchannel", "target_sparsity": 0.5, "prune_domain": "local"})
    x = _images()
    with torch.no_grad():
        before = net(x)
    report = slim_(net)
    assert (net[0].out_channels, net[1].num_features, net[3].in_channels) == (4, 4, 4)
    assert (net[3].out_channels, net[4].num_features, net[8].in_features) == (8, 8, 8 * 4)
    assert [(s.before, s.after) for s in report.slimmed] == [(8, 4), (16, 8)] and not report.skipped
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_cnn_padded_consumer_keeps_constant_channels_unless_inexact() -> None:
    net = _cnn(padding=1)
    _prune(net, {"names": ["^0$"], "pattern": "1xchannel", "target_sparsity": 0.5})
    x = _images()
    with torch.no_grad():
        before = net(x)
    pruned = net[0].weight.reshape(8, -1).eq(0).all(dim=1)
    with torch.no_grad():  # what each zero filter outputs after batch norm and ReLU
        constant = torch.relu(net[1](net[0].bias.reshape(1, 8, 1, 1))).flatten()
    nonzero = int((pruned & constant.ne(0)).sum())
    assert nonzero > 0  # the case under test: some pruned filter outputs a nonzero constant
    with pytest.warns(UserWarning, match="nonzero constant that the padded 3 sees only inside the image"):
        report = slim_(net)
    assert net[0].out_channels == 8 - (4 - nonzero)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)
    assert "exact=False" in report.skipped[0][1]
    inexact = _cnn(padding=1)
    _prune(inexact, {"names": ["^0$"], "pattern": "1xchannel", "target_sparsity": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not slim_(inexact, exact=False).skipped
    assert inexact[0].out_channels == 4


def test_bf16_cnn_without_bias_folds_batch_norm_constants() -> None:
    """A bias-free bf16 conv before batch norm: the constant is computed in bf16, and frozen layers stay frozen."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].bias.uniform_(0.5, 1)  # after ReLU each zero filter outputs a nonzero constant: folded
        net[0].weight[:3] = 0
    net = net.to(torch.bfloat16)
    net[3].requires_grad_(False)
    x = _images().to(torch.bfloat16)
    with torch.no_grad():
        before = net(x)
    report = slim_sequential_(net, exact=False)
    assert [(s.before, s.after) for s in report.slimmed] == [(8, 5)]
    assert net[3].bias.dtype == torch.bfloat16 and not net[3].weight.requires_grad and not net[3].bias.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=0.05, rtol=0.02)


def test_flatten_linear_input_channels_removed() -> None:
    net = _cnn(padding=0)
    with torch.no_grad():
        net[8].weight.reshape(10, 16, 4)[:, [1, 5, 9], :] = 0  # three conv channels the classifier ignores
    x = _images()
    with torch.no_grad():
        before = net(x)
    slim_sequential_(net)
    assert (net[3].out_channels, net[8].in_features) == (13, 13 * 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_mlp_slimmed_equal() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    net.eval()
    _prune(net, {"names": ["^3$", "^5$"], "pattern": "channelx1", "target_sparsity": 0.5, "prune_domain": "local"})
    x = torch.randn(4, 6)
    with torch.no_grad():
        before = net(x)
    slim_(net)
    assert (net[0].out_features, net[3].in_features, net[3].out_features, net[5].in_features) == (8, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_compiled_model_is_slimmed_through_the_wrapper() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    compiled = torch.compile(net, backend="eager")
    _prune(compiled, {"names": ["^2$"], "pattern": "channelx1", "target_sparsity": 0.5})
    x = torch.randn(4, 6)
    with torch.no_grad():
        before = net(x)
    report = slim_(compiled)
    assert [(s.name, s.before, s.after) for s in report.slimmed] == [("0", 16, 8)]
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("between", "reason"),
    [
        (nn.LayerNorm(8), "LayerNorm between them is not a per-channel module"),
        (nn.Sequential(nn.Linear(8, 8)), "Sequential between them is not a per-channel module"),
    ],
)
def test_unsupported_module_between_is_reported(between: nn.Module, reason: str) -> None:
    net = nn.Sequential(nn.Linear(4, 8), between, nn.Linear(8, 2))
    with torch.no_grad():
        net[2].weight[:, :4] = 0
    with pytest.warns(UserWarning, match=reason):
        report = slim_(net)
    assert net[0].out_features == 8 and report.skipped[0][0] == "0 -> 2"


def test_grouped_conv_is_reported() -> None:
    net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 1, groups=2))
    with torch.no_grad():
        net[1].weight[:, 0] = 0
    report = slim_sequential_(net)
    assert report.skipped == [("0 -> 1", "grouped convolution (groups=2) ties channels together")]
    assert net[0].out_channels == 8


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(SlimmingError, match=r"cannot slim LSTM: torch.fx cannot trace its forward .* left unchanged"):
        slim_(nn.LSTM(4, 4))
    with pytest.raises(SlimmingError, match=r"cannot slim Embedding: its traced forward calls no Linear or Conv2d"):
        slim_(nn.Embedding(4, 4))


def test_module_wrapping_a_transformers_model_is_slimmed_by_its_family(bert_config, tokens) -> None:
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.head = _bert(bert_config), nn.Linear(32, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(ids).last_hidden_state)

    net = Classifier().eval()
    _prune(net, {"names": [FFN_LAYERS], "pattern": "channelx1", "target_sparsity": 0.5})
    with torch.no_grad():
        before = net(tokens)
    report = slim_(net)
    assert report.removed == 64 and net.encoder.config.slimmed_intermediate_sizes is not None
    with torch.no_grad():
        torch.testing.assert_close(net(tokens), before, atol=1e-5, rtol=1e-5)
