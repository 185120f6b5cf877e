"""One-shot data-aware pruning (SPEC §11): wanda, sparsegpt, OWL, pattern_lock, block by block."""

from __future__ import annotations

import copy
import math
import weakref

import pytest
import torch
from torch import nn

from pytorch_pruner import ConfigError, Pruning, PruningError, prune_oneshot_
from pytorch_pruner.config import PruningConfig
from pytorch_pruner.oneshot import outlier_ratio, owl_sparsities, sparsegpt_
from pytorch_pruner.patterns import parse_pattern
from pytorch_pruner.pruner import Pruner
from pytorch_pruner.selection import LayerUnits, select_rows
from pytorch_pruner.targets import find_targets

transformers = pytest.importorskip("transformers")


def tiny_llama(layers: int = 2) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def calibration(batches: int = 2) -> list[torch.Tensor]:
    return [torch.randint(0, 128, (4, 12)) for _ in range(batches)]


def cfg(prune_type: str, pattern: str = "1x1", **keys: object) -> dict[str, object]:
    return {
        "prune_type": prune_type,
        "pattern": pattern,
        "target_sparsity": 0.5,
        "not_to_prune_names": ["lm_head"],
        **keys,
    }


def linear_model(weight: list[list[float]]) -> nn.Module:
    w = torch.tensor(weight)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return nn.Sequential(layer)


# -- wanda -------------------------------------------------------------------------------------
def test_wanda_row_matches_a_hand_computed_case() -> None:
    # sqrt(mean x^2) = [3, 1, 2, 1]; scores row 0 = [3, 2, 6, 4], row 1 = [12, 3, 4, 1]
    model = linear_model([[1, 2, 3, 4], [4, 3, 2, 1]])
    x = torch.tensor([[3.0, 1.0, 2.0, 1.0], [-3.0, -1.0, 2.0, -1.0]])
    with pytest.warns(UserWarning, match="found no list of transformer blocks"):
        report = prune_oneshot_(model, cfg("wanda", prune_domain="row"), [{"input": x}], progress=False)
    assert model[0].weight.tolist() == [[0, 0, 3, 4], [4, 0, 2, 0]]  # magnitude would zero [1,2] and [2,1]
    assert report.sparsity == 0.5


def test_wanda_scores_are_weight_times_input_norm() -> None:
    model = linear_model([[1, -2], [3, 4]])
    target = find_targets(model, ["Linear"])
    settings = PruningConfig(prune_type="wanda", pattern="1x1", start_step=1, end_step=1).resolved()[0]
    pruner = Pruner(settings, target)
    pruner.criterion.count_eval = True  # type: ignore[attr-defined]
    model(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))  # mean x^2 = [5, 2]
    scores = pruner.criterion.scores()[0]
    expected = torch.tensor([[math.sqrt(5), 2 * math.sqrt(2)], [3 * math.sqrt(5), 4 * math.sqrt(2)]])
    torch.testing.assert_close(scores, expected)
    pruner.criterion.remove_hooks()


def test_wanda_during_training_uses_the_training_forwards() -> None:
    model = linear_model([[1, 2, 3, 4], [4, 3, 2, 1]])
    pruning = Pruning(cfg("wanda", prune_domain="row", start_step=1, end_step=1))
    pruning.on_train_begin(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.tensor([[3.0, 1.0, 2.0, 1.0]])
    for step in range(2):
        pruning.on_step_begin(step)
        model(x).sum().backward()
        pruning.on_before_optimizer_step()
        opt.step()
        pruning.on_after_optimizer_step()
        opt.zero_grad()
    assert model[0].weight.tolist() == [[0, 0, 3, 4], [4, 0, 2, 0]]
    assert not model[0]._forward_pre_hooks  # the statistics hooks went with the last pruning step


def test_prune_domain_row_prunes_floor_s_units_per_row() -> None:
    layer = LayerUnits(torch.tensor([4.0, 1.0, 3.0, 2.0, 9.0, 8.0, 7.0, 1.0]), unit_elements=1, numel=8, rows=2)
    assert select_rows(layer, 0.5).tolist() == [False, True, False, True, False, False, True, True]
    model = tiny_llama()
    prune_oneshot_(model, cfg("wanda", prune_domain="row", target_sparsity=0.3), calibration(), progress=False)
    w = model.model.layers[1].mlp.down_proj.weight
    assert ((w == 0).sum(dim=1) == math.floor(0.3 * w.shape[1])).all()


@pytest.mark.parametrize(("sparsity", "groups"), [(0.5, 4), (0.25, 2)])
def test_prune_domain_row_with_n_m_counts_weights(sparsity: float, groups: int) -> None:
    # 2:4 groups zero 2 of their 4 weights: a row of 4 groups (16 weights) at s prunes floor(s * 16 / 2) groups
    layer = LayerUnits(torch.arange(8.0).flip(0), unit_elements=2, numel=32, rows=2)
    chosen = select_rows(layer, sparsity).reshape(2, 4)
    assert chosen.sum(dim=1).tolist() == [groups, groups]
    model = tiny_llama()
    report = prune_oneshot_(model, cfg("wanda", "2:4", prune_domain="row"), calibration(), progress=False)
    w = model.model.layers[0].mlp.down_proj.weight
    assert ((w == 0).reshape(-1, 4).sum(dim=1) == 2).all()  # every group, as with local ranking
    assert report.sparsity == 0.5


# -- sparsegpt ---------------------------------------------------------------------------------
def test_sparsegpt_matches_a_hand_computed_case() -> None:
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    h = 2.0 / 3.0 * x.t() @ x
    weight = torch.tensor([[0.1, 5.0], [5.0, 0.1]])
    new, keep = sparsegpt_(weight, h, 0.5, parse_pattern("1x1"))
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(2)
    # row 0 loses column 0: the best kept value is w1 + w0 * H01 / H11 (least squares on the damped H)
    expected_row0 = [0.0, 5.0 + 0.1 * float(damped[0, 1] / damped[1, 1])]
    assert keep.tolist() == [[False, True], [True, False]]
    torch.testing.assert_close(new[0], torch.tensor(expected_row0))
    torch.testing.assert_close(new[1], torch.tensor([5.0, 0.0]))  # the last column: nothing after it to fix

    model = linear_model(weight.tolist())
    with pytest.warns(UserWarning, match="found no list"):
        prune_oneshot_(model, cfg("sparsegpt"), [{"input": x}], progress=False)
    torch.testing.assert_close(model[0].weight.detach(), new)


@pytest.mark.parametrize("pattern", ["1x1", "2:4", "4x1"])
def test_sparsegpt_reconstruction_beats_plain_masking(pattern: str) -> None:
    mix = torch.randn(64, 64) / 8 + torch.eye(64)
    x = torch.randn(512, 64) @ mix  # correlated inputs: the reconstruction has something to use
    weight = torch.randn(32, 64)
    h = 2.0 / x.shape[0] * x.t() @ x
    new, keep = sparsegpt_(weight, h, 0.5, parse_pattern(pattern), block_size=32)
    assert bool((new[~keep] == 0).all()) and (~keep).float().mean() == 0.5
    masked = weight * keep
    err_rebuilt = (x @ (weight - new).t()).pow(2).sum()
    err_masked = (x @ (weight - masked).t()).pow(2).sum()
    assert err_rebuilt < 0.8 * err_masked


@pytest.mark.parametrize("prune_type", ["wanda", "sparsegpt"])
def test_two_four_has_exact_zeros_in_every_group(prune_type: str) -> None:
    model = tiny_llama()
    report = prune_oneshot_(model, cfg(prune_type, "2:4"), calibration(), progress=False)
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                zeros = (module.weight.detach() == 0).reshape(-1, 4).sum(dim=1)
                assert (zeros >= 2).all(), module
    assert all(r.sparsity == 0.5 for r in report.layers if r.skipped is None)
    assert model.lm_head.weight.ne(0).all()


def test_sparsegpt_during_training_is_a_config_error() -> None:
    pruning = Pruning(cfg("sparsegpt", start_step=1, end_step=4))
    with pytest.raises(ConfigError, match="one-shot only"):
        pruning.on_train_begin(tiny_llama())


def test_sparsegpt_refuses_patterns_that_do_not_fit_its_column_blocks_at_load() -> None:
    with pytest.raises(ConfigError, match=r"sparsegpt.*channelx1"):
        Pruning(cfg("sparsegpt", "channelx1"))
    with pytest.raises(ConfigError, match=r"'1x3' needs M dividing 128"):
        Pruning(cfg("sparsegpt", "1x3"))


def test_layers_outside_the_blocks_stay_dense_with_a_warning() -> None:
    model = tiny_llama()
    config = {**cfg("wanda"), "not_to_prune_names": [], "names": [r"layers\.", r"lm_head"]}  # named: passes the checks
    with pytest.warns(UserWarning, match=r"outside the transformer blocks stay dense.*lm_head"):
        report = prune_oneshot_(model, config, calibration(), progress=False)
    assert model.lm_head.weight.ne(0).all()
    assert [(r.name, r.skipped[:30]) for r in report.layers if r.skipped] == [
        ("lm_head", "outside the transformer blocks")
    ]


# -- the weight checks of training (SPEC §10) ---------------------------------------------------
def test_tied_lm_head_is_left_dense_with_the_reason() -> None:
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = model.lm_head.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"(?s)stay dense.*lm_head: shares its weight with the embedding model\.embed"):
        report = prune_oneshot_(model, {**cfg("wanda"), "not_to_prune_names": []}, calibration(), progress=False)
    assert torch.equal(model.lm_head.weight, before)
    skipped = {r.name: r.skipped for r in report.layers if r.skipped}
    assert list(skipped) == ["lm_head"]
    assert "shares its weight with the embedding model.embed_tokens" in skipped["lm_head"]
    assert report.sparsity == pytest.approx(0.5, abs=0.01)  # the blocks' layers are pruned


class _Scale(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2.0 * w


@pytest.mark.parametrize("prune_type", ["wanda", "sparsegpt"])
def test_parametrized_weight_is_left_dense_with_the_reason(prune_type: str) -> None:
    model = tiny_llama()
    down = model.model.layers[0].mlp.down_proj
    torch.nn.utils.parametrize.register_parametrization(down, "weight", _Scale())
    before = down.parametrizations.weight.original.detach().clone()
    with pytest.warns(UserWarning, match=r"mlp\.down_proj: parametrized weight \(_Scale\)"):
        report = prune_oneshot_(model, cfg(prune_type), calibration(), progress=False)
    assert torch.equal(down.parametrizations.weight.original, before)
    rows = [r for r in report.layers if r.name == "model.layers.0.mlp.down_proj"]
    assert len(rows) == 1 and rows[0].block == 0 and rows[0].skipped.startswith("parametrized weight")
    assert model.model.layers[1].mlp.down_proj.weight.eq(0).any()  # the same layer of the next block is pruned
    assert report.sparsity == pytest.approx(0.5, abs=0.01)


def test_frozen_weights_are_pruned_one_shot() -> None:
    model = tiny_llama()
    frozen = copy.deepcopy(model).requires_grad_(False)
    data = calibration()
    prune_oneshot_(model, cfg("wanda"), data, progress=False)
    report = prune_oneshot_(frozen, cfg("wanda"), data, progress=False)
    assert not any(r.skipped for r in report.layers)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    for (name, p), q in zip(model.named_parameters(), frozen.parameters(), strict=True):
        assert torch.equal(p, q), name  # pruned exactly as the trainable model


# -- OWL ---------------------------------------------------------------------------------------
def test_owl_weighted_mean_is_the_target() -> None:
    ratios, weights = [0.02, 0.05, 0.01, 0.03], [100, 300, 200, 50]
    sparsity = owl_sparsities(ratios, weights, 0.6, 0.08)
    assert sum(s * w for s, w in zip(sparsity, weights, strict=True)) / sum(weights) == pytest.approx(0.6, abs=1e-12)
    assert max(sparsity) - min(sparsity) == pytest.approx(0.16)  # width 2 * lambda
    assert sparsity.index(min(sparsity)) == 1  # most outliers: densest
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 1.0, 100.0])], 3.0) == 0.2


def test_owl_run_reports_blocks_and_keeps_the_target() -> None:
    model = tiny_llama(layers=3)
    report = prune_oneshot_(model, cfg("wanda", owl=True, owl_lambda=0.1, owl_m=2), calibration(), progress=False)
    assert report.owl and len(report.blocks) == 3
    assert all(b.outlier_ratio is not None for b in report.blocks)
    assert len({round(b.target, 6) for b in report.blocks}) > 1
    weights = [sum(r.numel for r in report.layers if r.block == b.block) for b in report.blocks]
    mean = sum(b.target * w for b, w in zip(report.blocks, weights, strict=True)) / sum(weights)
    assert mean == pytest.approx(0.5, abs=1e-9)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)  # floor(s * units) per layer
    assert "OWL outlier ratio" in str(report)


def test_owl_with_n_m_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="owl"):
        Pruning(cfg("wanda", "2:4", owl=True))


# -- pattern_lock ------------------------------------------------------------------------------
def test_pattern_lock_keeps_every_zero_through_adamw() -> None:
    model = tiny_llama(layers=1)
    prune_oneshot_(model, cfg("wanda"), calibration(), progress=False)
    zeros = {n: p.detach() == 0 for n, p in model.named_parameters() if p.dim() == 2 and "layers" in n}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruning = Pruning({"prune_type": "pattern_lock", "pattern": "1x1", "not_to_prune_names": ["lm_head"]})
    pruning.on_train_begin(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    data = torch.randint(0, 128, (1, 6))
    for step in range(100):
        pruning.on_step_begin(step)
        model(data, labels=data).loss.backward()
        pruning.on_before_optimizer_step()
        opt.step()
        pruning.on_after_optimizer_step()
        opt.zero_grad()
    for name, param in model.named_parameters():
        if name in zeros:
            assert bool((param.detach()[zeros[name]] == 0).all()), name
            assert bool((param.detach()[~zeros[name]] != before[name][~zeros[name]]).any()), name
    first = pruning.report().layers[0]
    assert first.sparsity == float(zeros[first.name + ".weight"].float().mean()) > 0.1


def test_pattern_lock_needs_an_elementwise_pattern() -> None:
    with pytest.raises(ConfigError, match=r"pattern_lock.*'1x1'"):
        Pruning({"prune_type": "pattern_lock", "pattern": "4x1"})


# -- block by block ----------------------------------------------------------------------------
def test_block_by_block_equals_full_model_statistics() -> None:
    """Reference: every block pruned from a full forward of the model whose earlier blocks are
    already pruned (no caching); prune_oneshot_ must give the same masks and weights."""
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = calibration()
    prune_oneshot_(model, cfg("wanda", prune_domain="local"), batches, progress=False)
    settings = PruningConfig(**cfg("wanda", prune_domain="local"), start_step=1, end_step=1).resolved()[0]
    for block in range(2):
        targets = find_targets(reference, ["Linear"], [rf"layers\.{block}\."])
        pruner = Pruner(settings, targets)
        pruner.criterion.count_eval = True  # type: ignore[attr-defined]
        with torch.no_grad():
            for batch in batches:
                reference(batch)
        pruner.prune(1)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours == 0, theirs == 0), name
        torch.testing.assert_close(ours, theirs)


# -- inputs, devices, errors -------------------------------------------------------------------
def test_dict_batches_device_and_report() -> None:
    model = tiny_llama()
    batches = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in calibration()]
    report = prune_oneshot_(model, cfg("magnitude", "4x1"), batches, device="cpu", progress=False)
    assert report.tokens == 2 * 4 * 12
    text = str(report)
    assert "model.layers.1.mlp.down_proj" in text and "lm_head" not in text
    assert model.training is False and model.config.use_cache is True


@pytest.mark.parametrize(
    ("batches", "match"),
    [
        ([torch.randn(2, 8)], "token ids"),
        (["some text"], "is a str; allowed: a dict of tensors"),
        ([], "calibration is empty"),
        (torch.randint(0, 128, (2, 8)), "pass an iterable of batches"),
        ([{0: torch.zeros(2, 8, dtype=torch.long)}], "string keys"),
    ],
)
def test_bad_calibration_is_a_clear_error_and_changes_nothing(batches: object, match: str) -> None:
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruningError, match=match):
        prune_oneshot_(model, cfg("wanda"), batches, progress=False)  # type: ignore[arg-type]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("where", ["embeddings", "block 1"])
def test_nan_activations_are_an_error_and_the_model_is_restored(where: str) -> None:
    model = tiny_llama()
    with torch.no_grad():
        if where == "embeddings":
            model.model.embed_tokens.weight[:] = float("nan")
        else:  # block 0 is pruned before the NaN shows at block 1: it must be put back
            model.model.layers[1].input_layernorm.weight[0] = float("nan")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruningError, match="NaN/inf activations"):
        prune_oneshot_(model, cfg("sparsegpt"), calibration(), progress=False)
    for key, value in before.items():
        assert torch.equal(value.nan_to_num(7.0), model.state_dict()[key].nan_to_num(7.0)), key


def test_training_criteria_are_refused_one_shot() -> None:
    with pytest.raises(ConfigError, match=r"needs gradients.*wanda, sparsegpt"):
        prune_oneshot_(tiny_llama(), cfg("snip_momentum"), calibration(), progress=False)
    with pytest.raises(ConfigError, match="start_step >= 1"):
        Pruning(cfg("wanda")).on_train_begin(tiny_llama())


def test_progress_bar_per_block(capsys: pytest.CaptureFixture[str]) -> None:
    prune_oneshot_(tiny_llama(), cfg("wanda"), calibration(1), progress=True)
    assert "2/2" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("prune_type", ["wanda", "sparsegpt"])
def test_cpu_model_pruned_block_by_block_on_cuda_equals_cpu_masks(prune_type: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = tiny_llama()
    reference = copy.deepcopy(model)
    batches = calibration()
    prune_oneshot_(model, cfg(prune_type, "2:4"), batches, device="cuda", progress=False)
    prune_oneshot_(reference, cfg(prune_type, "2:4"), batches, progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())  # every block went back
    agree = [
        float(((a == 0) == (b == 0)).float().mean())
        for a, b in zip(model.parameters(), reference.parameters(), strict=True)
        if a.dim() == 2
    ]
    assert min(agree) > 0.97  # TF32 / reduction order may flip near-ties


def test_sparsegpt_layers_reading_one_input_share_one_hessian() -> None:
    model = tiny_llama(layers=1)
    attn = model.model.layers[0].self_attn
    settings = PruningConfig(**cfg("sparsegpt"), start_step=1, end_step=1).resolved()[0]
    pruner = Pruner(settings, find_targets(model, ["Linear"], [r"layers\.0\."]))
    pruner.criterion.count_eval = True  # type: ignore[attr-defined]
    seen: list[torch.Tensor] = []
    handle = attn.k_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, 32)))
    with torch.no_grad():
        for batch in calibration():
            model(batch)
    handle.remove()
    pruner.criterion.remove_hooks()
    stats = pruner.criterion.stats  # type: ignore[attr-defined]
    names = [layer.name.rsplit(".", 1)[1] for layer in pruner.layers]
    assert names[:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert stats[0] is stats[1] is stats[2] and stats[3] is not stats[0]
    assert stats[4] is stats[5] and stats[6] is not stats[4]  # gate/up share, down reads its own input
    x = torch.cat(seen)
    torch.testing.assert_close(stats[1].hessian(), 2.0 / x.shape[0] * x.t() @ x)


def test_input_criteria_keep_no_layer_input_alive_after_a_forward() -> None:
    """The hooks remember the last input (to find layers that share it) by a weak reference: a
    strong one kept a sub-batch's activations alive until the next call."""
    model = tiny_llama(layers=1)
    settings = PruningConfig(**cfg("sparsegpt"), start_step=1, end_step=1).resolved()[0]
    pruner = Pruner(settings, find_targets(model, ["Linear"], [r"layers\.0\."]))
    pruner.criterion.count_eval = True  # type: ignore[attr-defined]
    inputs: list[weakref.ref[torch.Tensor]] = []
    down = model.model.layers[0].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, args: inputs.append(weakref.ref(args[0])))
    with torch.no_grad():
        model(calibration()[0])
    handle.remove()
    assert len(inputs) == 1 and inputs[0]() is None  # down_proj's input is gone with the forward
    assert int(pruner.criterion.stats[6].count) > 0  # type: ignore[attr-defined]  # and it was counted
    pruner.criterion.remove_hooks()
