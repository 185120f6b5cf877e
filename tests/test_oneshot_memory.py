"""prune_oneshot_'s memory (issue #11): sub-batches, block outputs written over the inputs, backups."""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Callable

import pytest
import torch
from torch import nn

from pytorch_pruner import PruningConfig, PruningError, prune_oneshot_
from pytorch_pruner.criteria import HessianStats
from pytorch_pruner.oneshot import api as oneshot_api
from pytorch_pruner.oneshot.blocks import capture_inputs, find_blocks
from pytorch_pruner.pruner import Pruner
from pytorch_pruner.targets import find_targets

transformers = pytest.importorskip("transformers")

ROWS, SEQ, VOCAB = 6, 12, 128


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "llama": _llama,
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_head=4, n_layer=2, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    ),
    "opt": lambda: transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        )
    ),
    "bert": lambda: transformers.BertModel(
        transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        ),
        add_pooling_layer=False,
    ),
}


def _batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    """Padded batches: the attention masks differ per row, so a mask not cut with the rows shows."""
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (ROWS, SEQ))
        mask = torch.ones_like(ids)
        mask[1, :4] = 0
        mask[4, :7] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _cfg(prune_type: str, **keys: object) -> dict[str, object]:
    return {
        "prune_type": prune_type,
        "target_sparsity": 0.5,
        "prune_layer_type": ["Linear", "Conv1D"],
        "names": [r"(layers|h|layer)\.\d+\."],
        **keys,
    }


def _rows_seen(model: nn.Module) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """The hidden states each call of block 0 gets (copies; the capture of its inputs included: one
    call per batch, first), and how to stop recording."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        assert isinstance(hidden, torch.Tensor)
        seen.append(hidden.detach().clone())

    handle = find_blocks(model).modules[0].register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle.remove


@pytest.mark.parametrize("prune_type", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", list(MODELS))
def test_sub_batches_give_the_masks_of_whole_batches(family: str, prune_type: str) -> None:
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    whole = copy.deepcopy(model)
    batches = _batches()
    seen, stop = _rows_seen(model)
    prune_oneshot_(model, _cfg(prune_type), batches, progress=False, sub_batch_tokens=2 * SEQ + 5)
    stop()
    # after the capture: 2 rows per call, 3 calls per batch, in each pass: wanda's statistics, the
    # outputs; sparsegpt: a one-row call finding its Hessian groups, then two statistics passes (the
    # largest Hessian's, running each sub-batch as two halves of one row; the others'), the outputs
    stats = [2] * 2 * 3 if prune_type == "wanda" else [1] + [1] * 2 * 3 * 2 + [2] * 2 * 3
    assert [t.shape[0] for t in seen] == [ROWS] * 2 + stats + [2] * 2 * 3
    prune_oneshot_(whole, _cfg(prune_type), batches, progress=False, sub_batch_tokens=None)
    pruned = 0
    for (name, ours), theirs in zip(model.named_parameters(), whole.parameters(), strict=True):
        assert torch.equal(ours == 0, theirs == 0), name
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        pruned += int((ours == 0).sum())
    assert pruned > 0


def test_batches_whose_arguments_cannot_be_cut_by_rows_run_whole() -> None:
    # Bloom's ALiBi bias is [batch * heads, 1, sequence]: rows can't be cut out of it
    model = transformers.BloomForCausalLM(
        transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    )
    seen, stop = _rows_seen(model.eval())
    prune_oneshot_(model, _cfg("wanda"), _batches(), progress=False, sub_batch_tokens=SEQ)
    stop()
    assert [t.shape[0] for t in seen] == [ROWS] * 6


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x)


class _Stack(nn.Module):
    """Not a transformers model: its batch dimension is unknown (it could be sequence-first). Two
    blocks of type *block*."""

    def __init__(self, block: type[nn.Module] = _Block) -> None:
        super().__init__()
        self.layers = nn.ModuleList([block(), block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_other_modules_run_whole_batches_and_their_inputs_stay_the_callers() -> None:
    model = _Stack()
    x = torch.randn(ROWS, SEQ, 8)
    before = x.clone()
    seen, stop = _rows_seen(model)
    prune_oneshot_(model, _cfg("wanda"), [{"x": x}], progress=False, sub_batch_tokens=1)
    stop()
    assert [t.shape[0] for t in seen] == [ROWS] * 3
    assert torch.equal(x, before)  # the outputs were written over a copy of the block inputs


def test_owl_pass_and_prune_pass_do_not_share_the_block_inputs() -> None:
    """Every call of block 0 (OWL's pass, then the statistics and output passes) sees the same
    hidden states: none of the passes wrote its outputs over the other's inputs. The caller's
    inputs_embeds stay as they were."""
    torch.manual_seed(0)
    model = _llama().eval()
    embeds = torch.randn(ROWS, SEQ, 32)
    before = embeds.clone()
    seen, stop = _rows_seen(model)
    prune_oneshot_(model, _cfg("wanda", owl=True), [{"inputs_embeds": embeds}], progress=False, sub_batch_tokens=SEQ)
    stop()
    captured, calls = seen[0], seen[1:]
    assert len(calls) == 3 * ROWS  # one row per call
    for one in range(ROWS):
        assert torch.equal(calls[one], calls[ROWS + one]) and torch.equal(calls[one], calls[2 * ROWS + one])
    assert torch.equal(torch.cat(calls[:ROWS]), captured)
    assert torch.equal(embeds, before)


@pytest.mark.parametrize("pattern", ["1x1", "4x1"])
@pytest.mark.parametrize("first", ["magnitude", "wanda"])
def test_error_at_a_later_block_restores_masked_blocks_exactly(first: str, pattern: str) -> None:
    """magnitude/wanda backups keep only the values their zeros replace; restoring puts back every
    weight, including those that were zero before the run (4x1: zeros inside kept blocks too)."""
    torch.manual_seed(0)
    model = _llama().eval()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, :3] = 0.0
        model.model.layers[0].mlp.up_proj.weight[::4, 1::2] = 0.0  # one zero in every other 4x1 block
        model.model.layers[1].input_layernorm.weight[0] = float("nan")
    before = copy.deepcopy(model.state_dict())
    config = {
        "target_sparsity": 0.5,
        "pattern": pattern,
        "pruners": [
            {"prune_type": first, "names": [r"layers\.0\."]},
            {"prune_type": "wanda", "names": [r"layers\.1\."]},
        ],
    }
    zeros_kept: list[int] = []
    original = Pruner.apply_masks

    def spy(self: Pruner) -> None:  # the run must really mask block 0, with some zero weights kept
        original(self)
        for layer in self.layers:
            zeros_kept.append(int(((layer.target.weight == 0) & self.full_mask(layer)).sum()))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pruner, "apply_masks", spy)
        with pytest.raises(PruningError, match="NaN/inf activations"):
            prune_oneshot_(model, config, _batches(), progress=False)
    assert sum(zeros_kept) > 0 if pattern == "4x1" else zeros_kept
    for key, value in before.items():
        assert torch.equal(value.nan_to_num(7.0), model.state_dict()[key].nan_to_num(7.0)), key


def test_sub_batch_tokens_must_be_a_positive_int() -> None:
    model = _llama()
    before = copy.deepcopy(model.state_dict())
    for bad in (0, -3, 1.5, True):
        with pytest.raises(PruningError, match="sub_batch_tokens must be a positive int"):
            prune_oneshot_(model, _cfg("wanda"), _batches(), progress=False, sub_batch_tokens=bad)  # type: ignore[arg-type]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_magnitude_alone_runs_no_forward_and_prunes_each_block_globally() -> None:
    torch.manual_seed(0)
    model = MODELS["llama"]().eval()
    reference = copy.deepcopy(model)
    calls: list[str] = []
    model.register_forward_pre_hook(lambda *_: calls.append("model"))
    for block in find_blocks(model).modules:
        block.register_forward_pre_hook(lambda *_: calls.append("block"))
    report = prune_oneshot_(model, _cfg("magnitude"), _batches(), progress=False)
    assert calls == []  # magnitude reads no data: the batches are checked, never run
    assert report.tokens == 2 * ROWS * SEQ
    settings = PruningConfig(**_cfg("magnitude"), start_step=1, end_step=1).resolved()[0]
    for b in range(2):  # each block: one global ranking of its layers, as a Pruner does it
        Pruner(settings, find_targets(reference, ["Linear"], [rf"layers\.{b}\."])).prune(1)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, theirs), name
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    ("calibration", "match"),
    [
        ([], "calibration is empty"),
        ([torch.randn(2, SEQ)], r"calibration batch 0: a tensor batch must hold token ids"),
        (["some text"], r"calibration batch 0 is a str"),
        ({"input_ids": torch.zeros(2, SEQ, dtype=torch.long)}, "must be an iterable of batches"),
    ],
)
def test_magnitude_alone_still_checks_the_calibration_batches(calibration: object, match: str) -> None:
    model = MODELS["llama"]()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruningError, match=match):
        prune_oneshot_(model, _cfg("magnitude"), calibration, progress=False)  # type: ignore[arg-type]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


# -- sparsegpt: one Hessian group at a time (issue #11's bound: one layer's Hessian) -------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_sparsegpt_statistics_hold_at_most_the_largest_hessian(family: str) -> None:
    """At every Hessian update the Hessians alive take at most the largest one's bytes: the MLP's
    last layer's (in x in) is filled alone, in its own pass, and freed by its prune before the
    block's other inputs' (q/k/v, o, gate/up: in² each, together less) are filled, not all in one pass."""
    instances: weakref.WeakSet[HessianStats] = weakref.WeakSet()
    alive: list[list[int]] = []
    init, update = HessianStats.__init__, HessianStats.update_

    def tracked_init(self: HessianStats, *args: object) -> None:
        init(self, *args)  # type: ignore[arg-type]
        instances.add(self)

    def counted_update(self: HessianStats, flat: torch.Tensor) -> None:
        update(self, flat)
        alive.append(sorted(s.h.shape[0] for s in instances if s._h is not None))

    torch.manual_seed(0)
    model = MODELS[family]().eval()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HessianStats, "__init__", tracked_init)
        patch.setattr(HessianStats, "update_", counted_update)
        prune_oneshot_(model, _cfg("sparsegpt"), _batches(), progress=False, sub_batch_tokens=2 * SEQ)
    largest = {"llama": 64, "gpt2": 128, "opt": 64}[family]  # the MLP's width: down_proj's / c_proj's / fc2's input
    # per block, 2 batches x 3 sub-batches: one update of the largest, then one of each of the 3 others
    assert len(alive) == 2 * (1 + 3) * 2 * 3
    assert [largest] in alive and [32, 32, 32] in alive
    assert max(sum(n * n for n in sizes) for sizes in alive) == largest**2
    assert all(sizes == [largest] for sizes in alive if largest in sizes)


@pytest.mark.parametrize(
    ("family", "pattern", "mixed"),
    [("llama", "1x1", False), ("llama", "2:4", False), ("llama", "1x1", True), ("gpt2", "1x1", False),
     ("opt", "4x1", False), ("bert", "1x1", False)],
)  # fmt: skip
def test_sparsegpt_group_by_group_equals_one_statistics_pass(family: str, pattern: str, mixed: bool) -> None:
    """Pruning the Hessian groups in the reverse order of the block's inputs, each from its own pass
    stopped early, gives bitwise the masks and weights of one statistics pass over the unpruned
    block. *mixed*: the MLP pruned by magnitude in the same run (it needs no data)."""
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    single = copy.deepcopy(model)
    batches = _batches()
    config: dict[str, object] = _cfg("sparsegpt", pattern=pattern)
    if mixed:
        config = {
            "target_sparsity": 0.5,
            "pattern": pattern,
            "pruners": [
                {"prune_type": "sparsegpt", "names": [r"layers\.\d+\.self_attn\."]},
                {"prune_type": "magnitude", "names": [r"layers\.\d+\.mlp\."]},
            ],
        }
    prune_oneshot_(model, config, batches, progress=False, sub_batch_tokens=2 * SEQ)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oneshot_api, "_ONE_GROUP_AT_A_TIME", False)
        prune_oneshot_(single, config, batches, progress=False, sub_batch_tokens=2 * SEQ)
    layers = 0
    for (name, ours), theirs in zip(model.named_parameters(), single.parameters(), strict=True):
        assert torch.equal(ours, theirs), name
        if ours.dim() == 2 and re.search(r"(layers|h|layer)\.\d+\.", name):
            assert float((ours == 0).float().mean()) == pytest.approx(0.5, abs=0.02), name
            layers += 1
    assert layers == 2 * {"llama": 7, "gpt2": 4, "opt": 6, "bert": 6}[family]


class _Twice(nn.Module):
    """A block that calls its layer twice: its Hessian needs both inputs of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(torch.tanh(self.fc(x)))


def _same_as_one_statistics_pass(model: nn.Module) -> None:
    """Prune *model* (sparsegpt on its ``layers``, two random batches of 4 x 8) group by group,
    and a copy of it with one statistics pass; assert their weights are bitwise equal."""
    single = copy.deepcopy(model)
    batches = [{"x": torch.randn(4, 8)} for _ in range(2)]
    prune_oneshot_(model, _cfg("sparsegpt", names=[r"layers\.\d+\."]), batches, progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oneshot_api, "_ONE_GROUP_AT_A_TIME", False)
        prune_oneshot_(single, _cfg("sparsegpt", names=[r"layers\.\d+\."]), batches, progress=False)
    for (name, ours), theirs in zip(model.named_parameters(), single.parameters(), strict=True):
        assert torch.equal(ours, theirs), name


def test_sparsegpt_layer_called_twice_per_forward_gets_both_inputs() -> None:
    """A layer called twice in one forward can't be pruned from a pass stopped at its first call:
    such a block is calibrated in one statistics pass, with the Hessian of both calls."""
    torch.manual_seed(0)
    model = _Stack(_Twice)
    _same_as_one_statistics_pass(model)
    assert int((model.layers[0].fc.weight == 0).sum()) == 32


def test_captured_calls_hold_repeated_side_inputs_once() -> None:
    """The rotary position embeddings, equal for every batch, are held once, not once per batch;
    inputs that differ per batch stay each batch's own."""
    torch.manual_seed(0)
    model = _llama().eval()
    batches = _batches(3)
    batches[2]["position_ids"] = torch.arange(SEQ).flip(0).expand(ROWS, SEQ)  # other positions
    with torch.no_grad():
        calls = capture_inputs(model, find_blocks(model).modules[0], batches, None)
    cos = [kwargs["position_embeddings"][0] for _, kwargs in calls]
    assert cos[1] is cos[0] and cos[2] is not cos[0]
    assert not torch.equal(cos[2], cos[0])
    hidden = [kwargs["hidden_states"] if "hidden_states" in kwargs else args[0] for args, kwargs in calls]
    assert len({h.data_ptr() for h in hidden}) == 3  # the hidden states: each its own copy


class _SequenceFirst(nn.Module):
    """A block whose class is in transformers' namespace (so its batches are cut into sub-batches
    of rows) and whose second layer reads a sequence-first tensor, [tokens, rows, features]."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)).transpose(0, 1)).transpose(0, 1)


_SequenceFirst.__module__ = "transformers.models.test_only"


def test_sparsegpt_largest_hessian_pass_runs_halves_and_falls_back_to_whole_sub_batches() -> None:
    """The pass of the largest Hessian (issue #11's peak: that Hessian + the block's activations)
    runs each sub-batch as two halves and gathers the layer inputs of the rows before updating the
    Hessian; the other pass runs whole sub-batches. A layer input that can't be gathered by rows
    (sequence-first) sends the sub-batch, and the rest of the pass, back to whole calls. Either
    way, bitwise the weights of one statistics pass."""
    torch.manual_seed(0)
    model = _Stack(_SequenceFirst)
    single = copy.deepcopy(model)
    batches = [{"x": torch.randn(4, 5, 8)} for _ in range(2)]
    config = _cfg("sparsegpt", names=[r"layers\.\d+\."])
    rows: list[int] = []
    model.layers[0].register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    updates: list[tuple[int, int]] = []
    update = HessianStats.update_

    def counted(self: HessianStats, flat: torch.Tensor) -> None:
        updates.append((self.features, flat.shape[0]))
        update(self, flat)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HessianStats, "update_", counted)
        prune_oneshot_(model, config, batches, progress=False, sub_batch_tokens=2 * 5)
    # capture (2 batches), the one-row forward finding the groups; down's pass: the first sub-batch's
    # halves can't give down's input, it runs again whole, as do the others; up's pass and the outputs
    assert rows == [4, 4, 1] + [1, 1, 2] + [2] * 3 + [2] * 4 + [2] * 4
    # the Hessians are updated once per sub-batch of 2 x 5 tokens, whatever the calls
    assert updates[: 4 * 2] == [(16, 10)] * 4 + [(8, 10)] * 4
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oneshot_api, "_ONE_GROUP_AT_A_TIME", False)
        prune_oneshot_(single, config, batches, progress=False, sub_batch_tokens=2 * 5)
    for (name, ours), theirs in zip(model.named_parameters(), single.parameters(), strict=True):
        assert torch.equal(ours, theirs), name
    assert int((model.layers[1].down.weight == 0).sum()) == 64


class _Forgiving(nn.Module):
    """A block that catches Exception around its layers (some models do, to fall back to another
    path) and counts its fallbacks and how often its last layer runs."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(8, 16), nn.Linear(16, 8)
        self.last_runs = self.fallbacks = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            h = torch.relu(self.first(x))
            self.last_runs += 1
            return x + self.last(h)
        except Exception:  # the point of the test
            self.fallbacks += 1
            return x


class _ForgivingStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Forgiving(), _Forgiving()])
        self.fallbacks = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            try:
                x = layer(x)
            except Exception:
                self.fallbacks += 1
        return x


def test_early_stops_are_not_swallowed_by_a_models_except_exception() -> None:
    """The capture's stop at block 0 and a statistics pass's stop once its layers have seen their
    input are not caught by a model's own ``except Exception``: no fallback path runs, the blocks
    after the first do not run during capture, and the result is the single statistics pass's."""
    torch.manual_seed(0)
    model = _ForgivingStack()
    _same_as_one_statistics_pass(model)
    assert [model.fallbacks, *(layer.fallbacks for layer in model.layers)] == [0, 0, 0]
    # ``last`` runs in the one-row forward that finds the order, in its own pass (2 batches) and, but
    # in the last block, in the pass that makes the block's outputs (2 batches); not during capture,
    # nor in the pass for ``first``, which stops before it
    assert [layer.last_runs for layer in model.layers] == [1 + 2 + 2, 1 + 2]
