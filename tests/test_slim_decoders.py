"""Slimming decoder LLMs (Llama, Mistral, Qwen2/3, Gemma, GPT-2), refusals, and fx-traced plain modules."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_pruner import parse_pattern, prune_
from pytorch_pruner.errors import ConfigError
from pytorch_pruner.speed import SlimmingError, gqa_keep, load_slimmed, slim_

transformers = pytest.importorskip("transformers")

VOCAB = 64
LLAMA_LIKE = {
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
    "gemma": "GemmaConfig",
    "gemma2": "Gemma2Config",
}


def _decoder(family: str, **overrides: int) -> nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=2, n_positions=64,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides)  # fmt: skip
    else:
        sizes = {"hidden_size": 32, "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 64,
                 "num_hidden_layers": 2, "head_dim": 4, "max_position_embeddings": 64} | overrides  # fmt: skip
        config = getattr(transformers, LLAMA_LIKE[family])(vocab_size=VOCAB, **sizes)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # nonzero biases everywhere there are some: a cut bias must be the right one
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.5, 0.5)
    return model


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def _generate(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(tokens, max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=True)


def _silence_heads(model: nn.Module, family: str, per_group: list[list[int]]) -> None:
    """Zero the output columns of query heads: per layer, the heads (indices within each KV group)
    to remove in every group (GPT-2: the head indices)."""
    with torch.no_grad():
        if family == "gpt2":
            for block, heads in zip(model.transformer.h, per_group, strict=True):
                rows = block.attn.c_proj.weight.view(4, 8, -1)
                rows[heads] = 0
            return
        for layer, heads in zip(model.model.layers, per_group, strict=True):
            cols = layer.self_attn.o_proj.weight.view(32, 2, 4, 4)  # [out, kv groups, per group, head_dim]
            cols[:, :, heads] = 0


def _prune_mlp(model: nn.Module, family: str, sparsity: float, domain: str = "local") -> None:
    down = r"mlp\.c_proj$" if family == "gpt2" else r"mlp\.down_proj$"
    config = {"names": [down], "pattern": "channelx1", "target_sparsity": sparsity, "prune_domain": domain}
    if family == "gpt2":
        config["prune_layer_type"] = ["Conv1D"]
    prune_(model, {"pruners": [config]})


@pytest.mark.parametrize("family", [*LLAMA_LIKE, "gpt2"])
def test_uniform_slimming_equals_masked_and_loads_with_from_pretrained(family: str, tmp_path) -> None:
    model = _decoder(family)
    _prune_mlp(model, family, 0.5)
    _silence_heads(model, family, [[0, 2], [0, 2]] if family != "gpt2" else [[1], [1]])
    tokens = _tokens()
    masked = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = slim_(model)
    mlp = [layer.mlp for layer in (model.transformer.h if family == "gpt2" else model.model.layers)]
    if family == "gpt2":
        assert [m.c_fc.weight.shape[1] for m in mlp] == [64, 64]  # 128 -> 64
        assert [b.attn.num_heads for b in model.transformer.h] == [3, 3]
    else:
        assert [(m.gate_proj.out_features, m.up_proj.out_features, m.down_proj.in_features) for m in mlp] == [
            (32, 32, 32)
        ] * 2
        attn = model.model.layers[0].self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (16, 8, 2)
        assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
        assert model.config.intermediate_size == 32 and model.config.head_dim == 4
    assert report.removed > 0 and not report.skipped
    torch.testing.assert_close(_logits(model, tokens), _logits(masked, tokens), atol=1e-5, rtol=1e-5)
    assert torch.equal(_generate(model, tokens), _generate(masked, tokens))
    model.save_pretrained(tmp_path)
    if family == "gpt2":  # GPT-2's head size follows from n_embd / n_head: heads removed need load_slimmed
        loaded = load_slimmed(transformers.AutoModelForCausalLM, tmp_path)
        assert loaded.config.n_inner == 64 and loaded.config.slimmed_num_attention_heads == [3, 3]
    else:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded, tokens), _logits(masked, tokens), atol=1e-5, rtol=1e-5)


def test_gpt2_mlp_only_uniform_loads_with_from_pretrained(tmp_path) -> None:
    model = _decoder("gpt2")
    _prune_mlp(model, "gpt2", 0.25)
    tokens = _tokens()
    before = _logits(model, tokens)
    slim_(model)
    model.save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert loaded.config.n_inner == 96
    torch.testing.assert_close(_logits(loaded, tokens), before, atol=1e-5, rtol=1e-5)


def test_gqa_uneven_groups_are_evened_and_per_layer_sizes_load(tmp_path) -> None:
    model = _decoder("llama")
    _prune_mlp(model, "llama", 0.5, domain="global")
    with torch.no_grad():
        o0 = model.model.layers[0].self_attn.o_proj.weight.view(32, 8, 4)
        o0[:, [0, 1, 2, 3]] = 0  # layer 0: all of KV group 0 -> that key/value head goes
        o1 = model.model.layers[1].self_attn.o_proj.weight.view(32, 8, 4)
        o1[:, [0, 1, 4]] = 0  # layer 1: 2 heads live in group 0, 3 in group 1 -> group 0 keeps a zero head
    tokens = _tokens()
    masked = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=r"1 pruned query heads kept so that each of the 2 key/value groups keeps 3"):
        report = slim_(model)
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    assert (a0.q_proj.out_features, a0.k_proj.out_features, a0.num_key_value_groups) == (16, 4, 4)
    assert (a1.q_proj.out_features, a1.k_proj.out_features, a1.num_key_value_groups) == (24, 8, 3)
    assert ("model.layers.0.attention", "key/value heads", 2, 1) in {
        (s.name, s.unit, s.before, s.after) for s in report.slimmed
    }
    assert model.config.slimmed_num_attention_heads == [4, 6] and model.config.slimmed_num_key_value_heads == [1, 2]
    torch.testing.assert_close(_logits(model, tokens), _logits(masked, tokens), atol=1e-5, rtol=1e-5)
    assert torch.equal(_generate(model, tokens), _generate(masked, tokens))
    model.save_pretrained(tmp_path)
    loaded = load_slimmed(transformers.AutoModelForCausalLM, tmp_path)
    torch.testing.assert_close(_logits(loaded, tokens), _logits(masked, tokens), atol=1e-5, rtol=1e-5)
    assert torch.equal(_generate(loaded, tokens), _generate(masked, tokens))


def test_uniform_option_gives_plain_sizes(tmp_path) -> None:
    model = _decoder("qwen2")
    _prune_mlp(model, "qwen2", 0.5, domain="global")
    widths = [int(layer.mlp.down_proj.weight.ne(0).any(dim=0).sum()) for layer in model.model.layers]
    assert widths[0] != widths[1]  # global ranking: without uniform=True the config needs per-layer sizes
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.view(32, 8, 4)[:, [0, 1, 4, 5]] = 0  # 2 per group
        model.model.layers[1].self_attn.o_proj.weight.view(32, 8, 4)[:, [0, 1, 2, 4, 5]] = 0  # 1 and 2
    tokens = _tokens()
    before = _logits(model, tokens)
    slim_(model, uniform=True)
    assert [layer.mlp.down_proj.in_features for layer in model.model.layers] == [max(widths)] * 2
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert model.config.intermediate_size == max(widths)
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(plain, tokens), before, atol=1e-5, rtol=1e-5)


def test_gqa_keep_counts() -> None:
    silent = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    q, kv, padded = gqa_keep(silent, kv_heads=2)
    assert q.int().tolist() == [0, 0, 0, 0, 1, 0, 0, 0] and kv.int().tolist() == [0, 1] and padded == 0
    q, kv, padded = gqa_keep(torch.ones(8, dtype=torch.bool), kv_heads=2)  # all pruned: one head stays
    assert int(q.sum()) == 1 and int(kv.sum()) == 1 and padded == 0
    q, kv, _ = gqa_keep(silent, kv_heads=2, groups=2, per_group=2)  # widened for uniform sizes
    assert int(kv.sum()) == 2 and int(q.sum()) == 4


@pytest.mark.parametrize("domain", ["local", "global"])
def test_gqa_head_pattern_prunes_groups_evenly_and_slims_without_padding(domain: str, tmp_path) -> None:
    model = _decoder("llama")
    pruner = {"names": [r"self_attn\.o_proj$"], "pattern": "gqa_head:4:4", "target_sparsity": 0.5}
    prune_(model, {"prune_domain": domain, "pruners": [pruner]})
    silent = [layer.self_attn.o_proj.weight.view(32, 2, 4, 4).eq(0).all(dim=(0, 3)) for layer in model.model.layers]
    per_group = [s.sum(dim=1).tolist() for s in silent]
    assert all(len(set(counts)) == 1 for counts in per_group)  # every KV group lost as many query heads
    assert sum(sum(counts) for counts in per_group) == 8  # half of 2 layers x 8 heads
    tokens = _tokens()
    masked = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # even groups: no zero head kept
        slim_(model)
    assert [layer.self_attn.q_proj.out_features // 4 for layer in model.model.layers] == [8 - sum(c) for c in per_group]
    torch.testing.assert_close(_logits(model, tokens), _logits(masked, tokens), atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = load_slimmed(transformers.AutoModelForCausalLM, tmp_path)
    assert torch.equal(_generate(loaded, tokens), _generate(masked, tokens))


def test_gqa_head_pattern_checks_its_shape() -> None:
    assert "whole groups of 4 heads of 5; the 2-D weight is [8, 32]" in parse_pattern("gqa_head:5:4").check(8, 32)
    assert parse_pattern("gqa_head:4:4").check(8, 32) is None
    with pytest.raises(ConfigError, match=r"must be at least 1"):
        parse_pattern("gqa_head:0:4")


# -- refusals leave the model as it was -----------------------------------------------------------
def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("EsmConfig", "esm"),
        ("NystromformerConfig", "nystromformer"),
    ],
)
def test_lookalike_of_bert_is_refused_unchanged(name: str, kind: str) -> None:
    torch.manual_seed(0)
    config = getattr(transformers, name)(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=64, pad_token_id=1)  # fmt: skip
    model = transformers.AutoModel.from_config(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.out_features == 32 and module.in_features in (32, 64):
                module.weight[:, :8] = 0  # heads and FFN neurons that a BERT slimmer would cut
    before = _state(model)
    with pytest.raises(
        SlimmingError, match=rf"model_type '{kind}'\): slimming knows the transformers model types .*bert"
    ):
        slim_(model)
    _assert_unchanged(model, before)


def test_adapter_layer_is_refused_before_anything_changes() -> None:
    class LoraLike(nn.Linear):
        pass

    model = _decoder("llama")
    _prune_mlp(model, "llama", 0.5)
    _silence_heads(model, "llama", [[0], [0]])
    old = model.model.layers[1].self_attn.o_proj
    adapter = LoraLike(old.in_features, old.out_features, bias=False)
    adapter.load_state_dict(old.state_dict())
    model.model.layers[1].self_attn.o_proj = adapter  # layer 0 is fine: the plan must not cut it either
    before = _state(model)
    with pytest.raises(SlimmingError, match=r"layers\.1\.self_attn\.o_proj is a .*LoraLike, not a plain .*Linear"):
        slim_(model)
    _assert_unchanged(model, before)
    assert model.model.layers[0].self_attn.q_proj.out_features == 32


# -- plain modules through torch.fx ---------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 3)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.drop(self.fc2(F.gelu(self.fc1(x))))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.conv3 = nn.Conv2d(8, 8, 1)  # a residual sum couples conv2's and conv3's channels
        self.head = nn.Linear(8 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        y = y + self.conv3(y)
        y = F.max_pool2d(y, 2)
        return self.head(y.view(y.size(0), -1))


def test_fx_slims_a_custom_mlp_class() -> None:
    torch.manual_seed(0)
    net = MLP().eval()
    prune_(net, {"pruners": [{"names": ["fc2", "fc3"], "pattern": "channelx1", "target_sparsity": 0.5,
                              "prune_domain": "local"}]})  # fmt: skip
    x = torch.randn(4, 6)
    with torch.no_grad():
        before = net(x)
    report = slim_(net)
    assert (net.fc1.out_features, net.fc2.in_features, net.fc2.out_features, net.fc3.in_features) == (8, 8, 6, 6)
    assert [(s.name, s.before, s.after) for s in report.slimmed] == [("fc1", 16, 8), ("fc2", 12, 6)]
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_fx_slims_a_custom_cnn_class_and_reports_coupled_channels() -> None:
    torch.manual_seed(0)
    net = CNN().eval()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-1, 1)
        net.conv1.weight[:3] = 0  # zero filters: constants through bn and relu, folded into conv2's bias
        net.conv3.weight[:2] = 0  # its channels meet the residual sum: kept, and reported
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
    with pytest.warns(UserWarning, match=r"conv3: pruned output channels kept: its channels reach call_function add"):
        report = slim_(net)
    assert (net.conv1.out_channels, net.bn1.num_features, net.conv2.in_channels) == (5, 5, 5)
    assert net.conv3.out_channels == 8 and [s.name for s in report.slimmed] == ["conv1"]
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_fx_untraceable_model_is_refused_unchanged() -> None:
    class Branchy(MLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            if h.sum() > 0:  # data-dependent control flow: fx cannot trace it
                h = -h
            return self.fc3(self.fc2(h))

    net = Branchy()
    with torch.no_grad():
        net.fc2.weight[:, :4] = 0
    before = _state(net)
    with pytest.raises(SlimmingError, match=r"cannot slim Branchy: torch.fx cannot trace its forward .*TraceError"):
        slim_(net)
    _assert_unchanged(net, before)
