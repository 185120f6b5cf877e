"""The model-family matrix: tiny random-init models of the families people bring, pruned while
they train, checked end to end (SPEC §10).

For each family: prune (1x1, 4x1, 2:4) with a criterion, train a few AdamW steps, and check that
the target is reached, pruned weights are exactly 0, the report lists every selected layer left
dense with its reason, and checkpoint and sparse safetensors files load back to the same model.
Slimming either slims (outputs kept) or refuses with ``SlimmingError`` and leaves the model as it
was: :data:`SLIM` says which, per family. Dtype variants (bf16, fp16) run on a few families.

Kept small: hidden 32, one or two layers, four steps. The cases are chosen, not crossed: every
family x every pattern (criterion rotating), every criterion on two families, dtypes on three.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning
from pytorch_pruner.checkpoint import load_checkpoint, save_checkpoint
from pytorch_pruner.export import load_sparse, save_sparse
from pytorch_pruner.speed import SlimmingError, slim_
from pytorch_pruner.targets import find_targets

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, BATCH = 64, 8, 2
PATTERNS = ["1x1", "4x1", "2:4"]
CRITERIA = ["magnitude", "snip", "snip_momentum"]
TARGET = 0.5
STEPS = 4  # pruning at steps 1, 2, 3; step 3 is the last


@dataclass
class Family:
    build: Callable[[], nn.Module]
    batch: Callable[[], dict[str, torch.Tensor]]
    #: layers the weight checks must leave dense, each with a word of the expected reason
    dense: dict[str, str] = field(default_factory=dict)
    layer_types: tuple[str, ...] = ("Linear", "Conv2d")


def _ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (BATCH, SEQ))


def classify() -> dict[str, torch.Tensor]:
    return {"input_ids": _ids(), "labels": torch.randint(0, 2, (BATCH,))}


def lm() -> dict[str, torch.Tensor]:
    ids = _ids()
    return {"input_ids": ids, "labels": ids}


def seq2seq() -> dict[str, torch.Tensor]:
    return {"input_ids": _ids(), "labels": _ids()}


def images() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(BATCH, 3, 8, 8), "labels": torch.randint(0, 2, (BATCH,))}


def _quiet(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build()

    return make


def _llama_like(config_class: str, model_class: str, **extra: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        config = getattr(transformers, config_class)(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention: k/v projections [16, 32]
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            **extra,
        )
        return getattr(transformers, model_class)(config)

    return _quiet(build)


class CNN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            OrderedDict(
                conv1=nn.Conv2d(3, 8, 3, padding=1),
                bn=nn.BatchNorm2d(8),
                act=nn.ReLU(),
                conv2=nn.Conv2d(8, 16, 3, padding=1),
                act2=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flat=nn.Flatten(),
                head=nn.Linear(16, 4),
            )
        )


def _cnn_batch() -> dict[str, torch.Tensor]:
    return {"x": torch.randn(BATCH, 3, 8, 8)}


T = transformers
FAMILIES: dict[str, Family] = {
    "bert": Family(
        _quiet(
            lambda: T.BertForSequenceClassification(
                T.BertConfig(
                    vocab_size=VOCAB,
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=64,
                    max_position_embeddings=32,
                )
            )
        ),
        classify,
    ),
    "roberta": Family(
        _quiet(
            lambda: T.RobertaForSequenceClassification(
                T.RobertaConfig(
                    vocab_size=VOCAB,
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=64,
                    max_position_embeddings=40,
                )
            )
        ),
        classify,
    ),
    "distilbert": Family(
        _quiet(
            lambda: T.DistilBertForSequenceClassification(
                T.DistilBertConfig(
                    vocab_size=VOCAB, dim=32, hidden_dim=64, n_layers=1, n_heads=2, max_position_embeddings=32
                )
            )
        ),
        classify,
    ),
    # one layer group shared by both layers; the MLM decoder is tied to the word embeddings
    "albert": Family(
        _quiet(
            lambda: T.AlbertForMaskedLM(
                T.AlbertConfig(
                    vocab_size=VOCAB,
                    embedding_size=16,
                    hidden_size=32,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    intermediate_size=64,
                    max_position_embeddings=32,
                )
            )
        ),
        lm,
        dense={"predictions.decoder": "embedding"},
    ),
    # Conv1D layers ([in, out]) and a head tied to the token embeddings
    "gpt2": Family(
        _quiet(
            lambda: T.GPT2LMHeadModel(
                T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=32, bos_token_id=0)
            )
        ),
        lm,
        dense={"lm_head": "embedding"},
        layer_types=("Linear", "Conv1D"),
    ),
    "llama_tied": Family(
        _llama_like("LlamaConfig", "LlamaForCausalLM", tie_word_embeddings=True), lm, dense={"lm_head": "embedding"}
    ),
    "llama": Family(
        _llama_like("LlamaConfig", "LlamaForCausalLM", tie_word_embeddings=False),
        lm,
        dense={"lm_head": "output embeddings"},
    ),
    "qwen2": Family(_llama_like("Qwen2Config", "Qwen2ForCausalLM"), lm, dense={"lm_head": "output embeddings"}),
    "mistral": Family(
        _llama_like("MistralConfig", "MistralForCausalLM", sliding_window=4),  # a window shorter than SEQ: it masks
        lm,
        dense={"lm_head": "output embeddings"},
    ),
    "t5": Family(
        _quiet(
            lambda: T.T5ForConditionalGeneration(
                T.T5Config(
                    vocab_size=VOCAB,
                    d_model=32,
                    d_kv=16,
                    d_ff=64,
                    num_layers=1,
                    num_decoder_layers=1,
                    num_heads=2,
                    decoder_start_token_id=0,
                    pad_token_id=0,
                )
            )
        ),
        seq2seq,
        dense={"lm_head": "embedding"},
    ),
    "vit": Family(
        _quiet(
            lambda: T.ViTForImageClassification(
                T.ViTConfig(
                    image_size=8,
                    patch_size=4,
                    num_channels=3,
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=64,
                    num_labels=2,
                )
            )
        ),
        images,
    ),
    "cnn": Family(CNN, _cnn_batch),
}

#: What ``slim_`` does with each family (after pruning with the matrix's patterns): "slims" (keeps
#: the outputs) or "refuses" (SlimmingError, the model unchanged). Extend as slimming learns families.
SLIM: dict[str, str] = {
    "bert": "slims",
    "roberta": "slims",
    "cnn": "slims",
    "distilbert": "refuses",
    "albert": "refuses",
    "gpt2": "slims",
    "llama_tied": "slims",
    "llama": "slims",
    "qwen2": "slims",
    "mistral": "slims",
    "t5": "refuses",
    "vit": "refuses",
}


def loss_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
    if isinstance(model, CNN):
        return model(batch["x"]).float().pow(2).mean()
    return model(**batch).loss


def config_for(family: Family, pattern: str, criterion: str) -> dict[str, Any]:
    return {
        "prune_type": criterion,
        "pattern": pattern,
        "target_sparsity": TARGET,
        "prune_layer_type": list(family.layer_types),
        "start_step": 1,
        "end_step": STEPS - 1,
        "pruning_frequency": 1,
    }


def train(model: nn.Module, pruning: Pruning, optimizer: torch.optim.Optimizer, batch: Callable[[], Any]) -> None:
    model.train()
    for step in range(STEPS):
        pruning.on_step_begin(step)
        loss_of(model, batch()).backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    pruning.on_train_end()


def fresh(name: str, dtype: torch.dtype, pattern: str, criterion: str) -> tuple[nn.Module, Pruning]:
    family = FAMILIES[name]
    model = family.build().to(dtype)
    pruning = Pruning(config_for(family, pattern, criterion))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the layers left dense are warned about; the report is checked below
        pruning.on_train_begin(model)
    return model, pruning


def check_pruned(name: str, model: nn.Module, pruning: Pruning, pattern: str) -> None:
    family = FAMILIES[name]
    report = pruning.report()
    pruned = {r.name for r in report.layers if not r.skipped}
    left = {r.name: r.skipped for r in report.layers if r.skipped}
    # every selected layer is either pruned or listed with its reason
    selected = {t.name for t in find_targets(model, family.layer_types)}
    assert pruned | set(left) == selected and not pruned & set(left)
    assert all(left.values())
    for layer, word in family.dense.items():
        assert word in left[layer], (layer, left.get(layer))
    assert pruned, "nothing was pruned"
    # the target is reached (within one unit of the coarsest layer) and pruned weights are exactly 0
    report = pruning.report()  # the pruned layers' block sparsity (the third ratio is INC's, over all layers)
    assert report.block_sparsity == pytest.approx(TARGET, abs=0.02), report
    masks = pruning.masks()
    assert set(masks) == pruned
    for layer, keep in masks.items():
        weight = model.get_submodule(layer).weight.detach()
        assert (weight[~keep] == 0).all(), layer
        assert torch.isfinite(weight).all(), layer
    assert all(r.compliant for r in report.layers if not r.skipped)
    if pattern == "2:4":
        for layer, keep in masks.items():
            target = next(t for t in find_targets(model, family.layer_types) if t.name == layer)
            groups = target.to_2d(keep).reshape(-1, 4)
            assert (groups.sum(dim=1) == 2).all(), layer


def check_save_load(name: str, model: nn.Module, pruning: Pruning, optimizer: Any, tmp_path: Any, args: tuple) -> None:
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "run.pt", model, optimizer, pruning)
    save_sparse(tmp_path / "model.safetensors", model, pruning)

    other, other_pruning = fresh(name, *args)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=1e-3)
    load_checkpoint(tmp_path / "run.pt", other, other_optimizer, other_pruning)
    assert_same_state(other.state_dict(), expected)
    assert other_pruning.step == pruning.step
    mine = pruning.masks()
    assert all(torch.equal(mask, mine[k]) for k, mask in other_pruning.masks().items())

    third = FAMILIES[name].build().to(args[0])
    load_sparse(tmp_path / "model.safetensors", third)
    assert_same_state(third.state_dict(), expected)


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


def check_slim(name: str, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    model = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        before = loss_of(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if SLIM[name] == "refuses":
        with pytest.raises(SlimmingError, match="cannot slim"):
            slim_(model)
        assert_same_state(model.state_dict(), state)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # units kept for a reason are warned about
            slim_(model)
        with torch.no_grad():
            after = loss_of(model, batch)
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models run faster on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_case(
    name: str, pattern: str, criterion: str, dtype: torch.dtype, tmp_path: Any, *, save_load: bool, slim: bool
) -> None:
    model, pruning = fresh(name, dtype, pattern, criterion)
    # fp16 Adam needs an eps fp16 can hold (1e-8 rounds to 0: a zero second moment divides by 0)
    eps = 1e-4 if dtype == torch.float16 else 1e-8
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, eps=eps)
    train(model, pruning, optimizer, FAMILIES[name].batch)
    check_pruned(name, model, pruning, pattern)
    if save_load:
        check_save_load(name, model, pruning, optimizer, tmp_path, (dtype, pattern, criterion))
    if slim:
        check_slim(name, model, FAMILIES[name].batch())


# every family x every pattern, the criterion rotating with the family
CASES = [
    pytest.param(name, pattern, CRITERIA[(i + j) % len(CRITERIA)], id=f"{name}-{pattern}")
    for i, name in enumerate(FAMILIES)
    for j, pattern in enumerate(PATTERNS)
]


@pytest.mark.parametrize(("name", "pattern", "criterion"), CASES)
def test_family_prunes_trains_saves_and_loads(name: str, pattern: str, criterion: str, tmp_path: Any) -> None:
    once = pattern == "4x1"  # files and slimming once per family
    run_case(name, pattern, criterion, torch.float32, tmp_path, save_load=once, slim=once)


ROTATED = {(p.values[0], p.values[1]): p.values[2] for p in CASES}


@pytest.mark.parametrize(
    ("name", "criterion"),
    [(name, c) for name in ("bert", "llama") for c in CRITERIA if c != ROTATED[(name, "4x1")]],
)
def test_every_criterion_on_an_encoder_and_a_decoder(name: str, criterion: str, tmp_path: Any) -> None:
    run_case(name, "4x1", criterion, torch.float32, tmp_path, save_load=False, slim=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("name", "pattern"), [("gpt2", "2:4"), ("llama_tied", "4x1"), ("cnn", "1x1")])
def test_low_precision_variants(name: str, pattern: str, dtype: torch.dtype, tmp_path: Any) -> None:
    run_case(name, pattern, "snip_momentum", dtype, tmp_path, save_load=True, slim=False)
