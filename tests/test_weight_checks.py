"""Every selected weight is checked in on_train_begin (SPEC §10): it prunes correctly, or stays
dense with the reason in the report and a warning, or a clear error is raised."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from pytorch_pruner import CRITERIA, Criterion, NoMatchingLayersError, Pruning, PruningError

from .conftest import make_mlp, train_steps

GRADUAL = {"pattern": "1x1", "target_sparsity": 0.5, "start_step": 1, "end_step": 4, "pruning_frequency": 1}


def zeros(t: torch.Tensor) -> float:
    return float((t == 0).float().mean())


def skipped(pruning: Pruning) -> dict[str, str]:
    return {row.name: row.skipped for row in pruning.report().layers if row.skipped}


def train(model: nn.Module, pruning: Pruning, steps: int = 6) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    train_steps(model, pruning, steps, optimizer=torch.optim.SGD(params, lr=0.01))


# -- frozen ----------------------------------------------------------------------------------
#: criteria that prune while training (not one-shot only, not keeping a fixed mask)
TRAINING = [n for n in CRITERIA.names() if not CRITERIA.get(n).oneshot_only and not CRITERIA.get(n).fixed_mask]


@pytest.mark.parametrize("name", TRAINING)
def test_a_frozen_layer_stays_dense_under_a_gradient_criterion_and_is_pruned_otherwise(name: str) -> None:
    """The reproduction: a frozen Linear(32, 4) under snip_momentum went to 0.977 for a 0.5 target."""
    model = make_mlp()
    model.head.weight.requires_grad_(False)
    needs_grad = CRITERIA.get(name).needs_grad
    pruning = Pruning({"prune_type": name, **GRADUAL})
    if needs_grad:
        with pytest.warns(UserWarning, match=r"head: frozen \(requires_grad=False\)"):
            pruning.on_train_begin(model)
    else:
        pruning.on_train_begin(model)
    train(model, pruning)
    if needs_grad:
        assert zeros(model.head.weight) == 0.0
        assert "frozen" in skipped(pruning)["head"]
        assert zeros(model.fc1.weight) > 0.3 and zeros(model.fc2.weight) > 0.3
    else:
        assert "head" not in skipped(pruning)
        assert zeros(model.head.weight) > 0.0
    assert pruning.report().block_sparsity == pytest.approx(0.5, abs=0.01)


def test_a_new_criterion_declares_whether_it_needs_gradients() -> None:
    """The frozen check asks the criterion (its needs_grad), not a list of names."""

    class GradNorm(Criterion):
        needs_grad = True

        def scores(self) -> list[torch.Tensor]:
            return [s.reduce(s.to_2d(s.weight.detach().abs()).float()) for s in self.slots]

    CRITERIA.register("test_needs_grad")(GradNorm)
    try:
        model = make_mlp()
        model.fc1.weight.requires_grad_(False)
        with pytest.warns(UserWarning, match="fc1: frozen"):
            Pruning({"prune_type": "test_needs_grad", **GRADUAL}).on_train_begin(model)
    finally:
        CRITERIA._items.pop("test_needs_grad")  # type: ignore[attr-defined]


# -- shared and tied ---------------------------------------------------------------------------
class Tied(nn.Module):
    """A tiny LM: embedding, one layer, a head tied to the embedding, a second head sharing fc's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.fc = nn.Linear(8, 8)
        self.fc_again = nn.Linear(8, 8)
        self.fc_again.weight = self.fc.weight
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.head(self.fc(h) + self.fc_again(h))


def test_a_shared_weight_is_pruned_once_and_the_tied_head_stays_dense() -> None:
    model = Tied()
    embedding = model.embed.weight.detach().clone()
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5})
    with pytest.warns(UserWarning, match="stay dense"):
        pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    reasons = skipped(pruning)
    assert reasons["fc_again"] == "shares its weight with fc, pruned there"
    assert "embedding embed" in reasons["head"] and "names" in reasons["head"]
    assert torch.equal(model.embed.weight, embedding)
    assert zeros(model.fc.weight) == 0.5
    ratios = pruning.get_sparsity_ratio()
    # the shared weight counts once: 32 of the 64 weights of fc (head is the 128-weight embedding)
    assert ratios.elementwise_over_matmul_gemm_conv == pytest.approx(32 / (64 + 128))
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert ratios.elementwise_over_all == pytest.approx(32 / unique)


def test_two_pruners_naming_the_same_weight_prune_it_once() -> None:
    """Reported 0.5/0.5 while 68% were zero: the second pruner's ranking zeroed more of the same tensor."""
    model = Tied()
    config = {
        "pruners": [
            {"names": ["^fc$"], "pattern": "1x1", "target_sparsity": 0.5},
            {"names": ["fc_again"], "pattern": "1x1", "target_sparsity": 0.5},
        ],
        "prune_type": "magnitude",
    }
    pruning = Pruning(config)
    with pytest.warns(UserWarning, match="fc_again: shares its weight with fc"):
        pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    assert zeros(model.fc.weight) == 0.5
    rows = {(r.name, r.pruner): r for r in pruning.report().layers}
    assert rows[("fc", 0)].sparsity == 0.5 and rows[("fc_again", 1)].skipped
    assert pruning.get_sparsity_ratio().elementwise_over_all * sum(
        p.numel() for p in {id(p): p for p in model.parameters()}.values()
    ) == pytest.approx(32)


def test_a_tied_head_named_explicitly_is_pruned() -> None:
    model = Tied()
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5, "names": ["head"]})
    pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    assert zeros(model.head.weight) == 0.5 and model.head.weight is model.embed.weight


def test_gpt2_default_config_leaves_the_tied_lm_head_and_the_embedding_alone() -> None:
    """The reproduction: GPT2LMHeadModel pruned only lm_head, zeroing half the embedding matrix."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    config.bos_token_id = config.eos_token_id = 0
    model = transformers.GPT2LMHeadModel(config)
    embedding = model.transformer.wte.weight.detach().clone()
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5})
    with pytest.warns(UserWarning, match="lm_head: shares its weight with the embedding transformer.wte"):
        pruning.on_train_begin(model)  # Conv1D is not a default type: attention/MLP are left out
    pruning.on_step_begin(0)
    assert torch.equal(model.transformer.wte.weight, embedding)
    assert "lm_head" in skipped(pruning)


def test_an_untied_output_embedding_stays_dense_by_default() -> None:
    model = Tied()
    model.head.weight = nn.Parameter(torch.randn(16, 8))  # untie
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5})
    with pytest.warns(UserWarning, match="head: is the model's output embeddings"):
        pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    assert zeros(model.head.weight) == 0.0


# -- parametrized, dtype, empty ----------------------------------------------------------------
class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def test_a_parametrized_weight_stays_dense_with_the_reason() -> None:
    """The reproduction: the report said 0.5 while the weight forward used had no zeros."""
    model = make_mlp()
    parametrize.register_parametrization(model.fc1, "weight", Scale())
    before = model.fc1.weight.detach().clone()
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5})
    with pytest.warns(UserWarning, match=r"fc1: parametrized weight \(Scale\)"):
        pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    assert torch.equal(model.fc1.weight, before)
    row = next(r for r in pruning.report().layers if r.name == "fc1")
    assert row.sparsity == 0.0 and "remove_parametrizations" in row.skipped
    assert "skipped: parametrized" in pruning.report().to_table()
    assert zeros(model.fc2.weight) > 0.3


def test_integer_weights_stay_dense_and_low_precision_ones_are_pruned() -> None:
    model = make_mlp()
    model.fc2.weight = nn.Parameter(torch.ones(32, 64, dtype=torch.int8), requires_grad=False)
    model.head.to(torch.bfloat16)
    model.fc1.to(torch.float16)
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5, "prune_domain": "local"})
    with pytest.warns(UserWarning, match="fc2: weight dtype torch.int8 is not floating point"):
        pruning.on_train_begin(model)
    pruning.on_step_begin(0)
    assert zeros(model.fc2.weight) == 0.0
    assert zeros(model.fc1.weight) == 0.5 and zeros(model.head.weight) == 0.5


@pytest.mark.parametrize("empty", [nn.Linear(16, 0), nn.Linear(0, 4), nn.Conv2d(3, 0, 3)], ids=str)
def test_empty_layers_are_skipped_with_the_reason(empty: nn.Module) -> None:
    """Linear(16, 0) and Conv2d(3, 0, 3) raised ZeroDivisionError in on_train_begin, Linear(0, 4) in report()."""
    model = nn.Sequential(nn.Linear(8, 8), empty)
    pruning = Pruning({"prune_type": "snip_momentum", **GRADUAL})
    with pytest.warns(UserWarning, match="1: empty weight"):
        pruning.on_train_begin(model)
    pruning.step = 4
    pruning.on_step_begin(4)
    assert skipped(pruning)["1"].startswith("empty weight")
    assert pruning.report().block_sparsity == pytest.approx(0.5)


# -- device and meta ---------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["magnitude", "snip_momentum", "wanda"])
@pytest.mark.parametrize("materialize", ["to_empty", "assign"])
def test_a_model_built_on_meta_and_materialized_later_trains(criterion: str, materialize: str) -> None:
    """Failed with 'Tensor.item() cannot be called on meta tensors' (wanda: its input statistics
    stayed on meta, where no input is counted; on a GPU they stayed on the CPU)."""
    with torch.device("meta"):
        model = make_mlp()
    pruning = Pruning({"prune_type": criterion, **GRADUAL})
    pruning.on_train_begin(model)
    assert pruning.report().block_sparsity == 0.0
    if materialize == "to_empty":
        model.to_empty(device="cpu")
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    else:
        model.load_state_dict(make_mlp().state_dict(), assign=True)
    train(model, pruning)
    for layer in (model.fc1, model.fc2, model.head):
        assert layer.weight.device.type == "cpu"
    masks = pruning.masks()
    assert all(m.device.type == "cpu" for m in masks.values())
    assert zeros(model.fc1.weight) == pytest.approx(1 - float(masks["fc1"].float().mean()))
    assert pruning.report().block_sparsity == pytest.approx(0.5, abs=0.01)
    state = pruning.state_dict()["pruners"][0]["criterion"]
    assert all(t.device.type == "cpu" for ts in state.values() for t in ts)


def _pruned_mlp_state() -> tuple[nn.Module, dict]:
    model = make_mlp()
    pruning = Pruning({"prune_type": "snip_momentum", **GRADUAL})
    pruning.on_train_begin(model)
    train(model, pruning)
    return model, pruning.state_dict()


def test_a_state_loads_into_a_model_materialized_after_on_train_begin() -> None:
    """The masks follow the weights before the state is applied (failed on the masks still on
    meta; on a GPU, a model moved there after on_train_begin met CPU masks in apply_masks)."""
    trained, state = _pruned_mlp_state()
    with torch.device("meta"):
        model = make_mlp()
    pruning = Pruning({"prune_type": "snip_momentum", **GRADUAL})
    pruning.on_train_begin(model)
    model.load_state_dict(make_mlp().state_dict(), assign=True)  # dense weights: the masks must zero them
    pruning.load_state_dict(state)
    keep = trained.fc1.weight != 0
    assert torch.equal(model.fc1.weight != 0, keep) and torch.equal(pruning.masks()["fc1"], keep)
    assert pruning.pruners[0].criterion.scores()[0].device.type == "cpu"


def test_squash_follows_a_model_moved_since_the_last_hook() -> None:
    """squash re-applies the masks where the weights are now (failed on the masks still on meta;
    on a GPU, after model.cpu() for export, CUDA masks met CPU weights)."""
    trained, _ = _pruned_mlp_state()
    with torch.device("meta"):
        model = make_mlp()
    pruning = Pruning({"prune_type": "snip_momentum", **GRADUAL})
    pruning.on_train_begin(model)
    model.load_state_dict(trained.state_dict(), assign=True)
    assert pruning.squash() is model
    layers = pruning.pruners[0].layers
    assert all(layer.keep.device.type == "cpu" and bool(layer.keep.all()) for layer in layers)  # nothing pruned here
    assert torch.equal(model.fc1.weight, trained.fc1.weight)


def test_pruning_a_model_still_on_meta_says_so() -> None:
    with torch.device("meta"):
        model = make_mlp()
    pruning = Pruning({"prune_type": "magnitude", "pattern": "1x1", "target_sparsity": 0.5})
    pruning.on_train_begin(model)
    with pytest.raises(PruningError, match=r"meta device.*to_empty"):
        pruning.on_step_begin(0)


def test_masks_and_scores_follow_a_replaced_weight() -> None:
    """A weight swapped for a new tensor after on_train_begin (load_state_dict(assign=True)) is the one masked."""
    model = make_mlp()
    pruning = Pruning({"prune_type": "snip_momentum", **GRADUAL})
    pruning.on_train_begin(model)
    model.load_state_dict(make_mlp().state_dict(), assign=True)
    train(model, pruning)
    assert zeros(model.fc1.weight) > 0.3
    assert pruning.pruners[0].criterion.slots[0].weight is model.fc1.weight


@pytest.mark.parametrize("pattern", ["1x1", "4x1"])
def test_masks_reach_a_weight_whose_data_was_replaced_in_place(pattern: str) -> None:
    """``param.data = ...`` keeps the Parameter object but not its storage: the masks must zero the new storage."""
    model = make_mlp()
    pruning = Pruning({"prune_type": "snip_momentum", **GRADUAL, "pattern": pattern})
    pruning.on_train_begin(model)
    train(model, pruning)
    keep = pruning.masks()["fc1"]
    for new in (torch.randn(64, 32), torch.randn(64, 32).to(torch.float64)):
        model.fc1.weight.data = new
        model.fc1.weight.grad = None
        pruning.on_after_optimizer_step()
        assert model.fc1.weight.data_ptr() == new.data_ptr()
        assert (model.fc1.weight[~keep] == 0).all() and (model.fc1.weight[keep] != 0).all()


@pytest.mark.gpu
def test_masks_and_scores_follow_the_model_to_cuda() -> None:
    model = make_mlp()
    pruning = Pruning({"prune_type": "snip_momentum", **GRADUAL})
    pruning.on_train_begin(model)
    model.cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, pruning, 6, optimizer=optimizer, batch=torch.randn(16, 32, device="cuda"))
    assert all(m.device.type == "cuda" for m in pruning.masks().values())
    assert all(s.device.type == "cuda" for s in pruning.pruners[0].criterion.scores())
    assert pruning.report().block_sparsity == pytest.approx(0.5, abs=0.01)


# -- nothing selected ----------------------------------------------------------------------------
def test_a_model_with_no_matching_layer_gets_what_was_searched_and_a_fix() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(
        NoMatchingLayersError,
        match=r"Searched: pruners\[0\]: types \['Linear', 'Conv2d'\].*never pruned: \['Embedding'\]"
        r".*Fix: prunable kinds",
    ):
        Pruning({"prune_type": "magnitude", "target_sparsity": 0.5}).on_train_begin(model)
