"""End to end: ``examples/run_clm_no_trainer.py`` on a tiny Llama with a tokenizer trained here.

One run prunes one-shot only (SparseGPT 2:4, ``--max_train_steps 0``), another prunes the same way
and fine-tunes with ``pattern_lock`` and distillation; the tests compare what they saved.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from .test_examples import EXAMPLES, _load

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("tqdm")

SUBJECTS = ["the model", "a layer", "the tensor", "this function", "the optimizer", "each block"]
VERBS = ["returns", "computes", "stores", "prunes", "updates", "reads"]
OBJECTS = ["the weights", "a mask", "the gradient", "its inputs", "the sparsity", "a copy"]


def _texts(rng: random.Random, n: int) -> list[str]:
    return [
        " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(rng.randint(1, 3)))
        for _ in range(n)
    ]


def make_tiny_llama(folder: Path, texts: list[str]) -> Path:
    """A 2-block Llama (GQA: 4 query heads, 2 key/value heads) and a byte-level BPE tokenizer trained on *texts*."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clm() -> ModuleType:
    return _load("run_clm_no_trainer")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clm")


@pytest.fixture(scope="module")
def data(work: Path) -> dict[str, Path]:
    rng = random.Random(0)
    train, valid = work / "train.txt", work / "valid.jsonl"
    train.write_text("\n".join(_texts(rng, 160)) + "\n")
    valid.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(rng, 40)))
    return {"train": train, "valid": valid, "model": make_tiny_llama(work / "tiny-llama", _texts(rng, 200))}


def _args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """Flags of a run; a later flag (in *extra*) overrides an earlier one."""
    return [
        "--model_name_or_path", str(data["model"]), "--train_file", str(data["train"]),
        "--validation_file", str(data["valid"]), "--block_size", "32", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", "--num_calibration_samples", "16",
        "--output_dir", str(out), *extra,
    ]  # fmt: skip


def _block_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n
    }


@pytest.fixture(scope="module")
def oneshot_only(clm: ModuleType, data: dict[str, Path], work: Path) -> dict[str, Any]:
    out = work / "oneshot"
    results = clm.main(_args(data, out, "--oneshot_config", str(EXAMPLES / "llama_sparsegpt_2in4.yaml"),
                             "--max_train_steps", "0"))  # fmt: skip
    return {"results": results, "model": transformers.AutoModelForCausalLM.from_pretrained(out)}


@pytest.fixture(scope="module")
def finetuned(clm: ModuleType, data: dict[str, Path], work: Path) -> dict[str, Any]:
    out = work / "finetuned"
    results = clm.main(_args(
        data, out, "--oneshot_config", str(EXAMPLES / "llama_sparsegpt_2in4.yaml"),
        "--pruning_config", str(EXAMPLES / "llama_pattern_lock.yaml"), "--do_prune",
        "--distill_loss_weight", "1.0", "--max_train_steps", "12", "--learning_rate", "5e-3",
    ))  # fmt: skip
    return {"results": results, "model": transformers.AutoModelForCausalLM.from_pretrained(out), "out": out}


def test_clm_oneshot_prunes_every_block_linear_2in4(oneshot_only: dict[str, Any]) -> None:
    results, model = oneshot_only["results"], oneshot_only["model"]
    weights = _block_weights(model)
    assert len(weights) == 2 * 7  # q, k, v, o, gate, up, down
    for name, w in weights.items():
        zeros = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
        assert bool((zeros == 2).all()), name  # exactly 2 of each 4 (SparseGPT keeps the others nonzero)
    assert int((model.lm_head.weight == 0).sum()) == 0  # the head stays dense
    assert results["steps"] == 0 and results["final_loss"] is None
    before = results["perplexity_before"]["perplexity"]
    after = results["oneshot"]["perplexity"]["perplexity"]
    assert after != before and results["metrics"]["perplexity"] == pytest.approx(after)
    assert results["oneshot"]["calibration_blocks"] == 16


def test_clm_finetuning_keeps_the_oneshot_zeros_and_lowers_perplexity(
    oneshot_only: dict[str, Any], finetuned: dict[str, Any]
) -> None:
    pruned, trained = _block_weights(oneshot_only["model"]), _block_weights(finetuned["model"])
    for name, w in pruned.items():
        assert torch.equal(trained[name] == 0, w == 0), name  # same calibration, same zeros, kept through training
        assert not torch.equal(trained[name], w), name  # while the kept weights trained
    results = finetuned["results"]
    assert results["steps"] == 12 and results["distill_loss_weight"] == 1.0
    assert results["oneshot"]["perplexity"] == oneshot_only["results"]["oneshot"]["perplexity"]
    assert results["metrics"]["perplexity"] < results["oneshot"]["perplexity"]["perplexity"]
    saved = json.loads((finetuned["out"] / "results.json").read_text())
    assert saved["metrics"] == results["metrics"]
    ratios = saved["sparsity_ratios"]  # INC's third ratio: for 2:4 it counts weights, as the first does
    assert saved["oneshot"]["sparsity"] == 0.5
    assert ratios["blockwise_over_matmul_gemm_conv"] == pytest.approx(ratios["elementwise_over_matmul_gemm_conv"])


def test_clm_kd_loss_adds_the_teachers_kl(clm: ModuleType, data: dict[str, Path]) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(data["model"]).requires_grad_(False)
    ids = torch.randint(3, model.config.vocab_size, (2, 16))
    ce = float(model(input_ids=ids, labels=ids).loss)
    assert float(clm.clm_loss(model, ids, copy.deepcopy(model), 5.0, 2.0)) == pytest.approx(ce, abs=1e-5)  # KL 0
    other = copy.deepcopy(model)
    torch.nn.init.normal_(other.lm_head.weight)
    assert float(clm.clm_loss(model, ids, other, 1.0, 2.0)) > ce + 1e-3
    assert float(clm.clm_loss(model, ids, None, 1.0, 2.0)) == pytest.approx(ce)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--oneshot_config", "x.yaml"], "fine-tuning after --oneshot_config without pruning would refill its zeros"),
        (["--num_calibration_samples", "0"], "--num_calibration_samples must be >= 1"),
        (["--block_size", "1"], "--block_size must be >= 2"),
        (["--block_size", "100", "--max_train_steps", "0"], "--block_size 100 exceeds the model's context length 64"),
        (["--slim"], "--slim removes the MLP channels and attention heads pruning zeroed: it needs --oneshot_config"),
    ],
)
def test_clm_rejects_bad_flags(
    clm: ModuleType, data: dict[str, Path], work: Path, extra: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        clm.main(_args(data, work / "bad", *extra))


SLIM_ONESHOT = """\
prune_type: magnitude
target_sparsity: 0.5
prune_domain: local
prune_layer_type: ["Linear"]
pruners:
  - names: ['mlp\\.down_proj$']
    pattern: channelx1
  - names: ['self_attn\\.o_proj$']
    pattern: "gqa_head:8:2"
"""


def test_clm_slim_after_finetuning_keeps_the_outputs_and_drops_parameters(
    clm: ModuleType, data: dict[str, Path], work: Path
) -> None:
    from pytorch_pruner.speed import load_slimmed

    config = work / "slim_oneshot.yaml"
    config.write_text(SLIM_ONESHOT)
    out = work / "slim"
    results = clm.main(_args(
        data, out, "--oneshot_config", str(config), "--pruning_config", str(EXAMPLES / "llama_pattern_lock.yaml"),
        "--do_prune", "--max_train_steps", "3", "--slim",
    ))  # fmt: skip
    slim = results["slim"]
    # per block: 32 of the 64 MLP channels (gate and up rows, down columns of width 32) and one of the two query
    # heads of each key/value group (2 heads x head_dim 8: q_proj rows and o_proj columns of width 32)
    assert slim["units_removed"] == 2 * (32 + 2)
    assert slim["parameters_before"] - slim["parameters_after"] == 2 * (3 * 32 * 32 + 2 * 16 * 32)
    pruned_ppl = results["metrics"]["perplexity"]  # the fine-tuned, pruned model, before slimming
    assert slim["metrics"]["perplexity"] == pytest.approx(pruned_ppl, rel=1e-5)
    model = load_slimmed(transformers.AutoModelForCausalLM, out)
    for layer in model.model.layers:
        assert layer.mlp.down_proj.in_features == 32 and layer.self_attn.o_proj.in_features == 16
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    blocks = clm.group_texts(tokenizer, clm.read_texts(str(data["valid"]), "text"), 32)
    assert clm.perplexity(model, blocks, 16)["perplexity"] == pytest.approx(pruned_ppl, rel=1e-5)


def test_clm_slim_with_only_unstructured_patterns_says_so(
    clm: ModuleType, data: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = clm.main(_args(
        data, work / "slim_2in4", "--oneshot_config", str(EXAMPLES / "llama_sparsegpt_2in4.yaml"),
        "--max_train_steps", "0", "--slim",
    ))  # fmt: skip
    assert "slim" not in results
    assert "--slim: skipped, nothing to slim: no pruner" in capsys.readouterr().err


def test_clm_reads_text_columns(clm: ModuleType, work: Path) -> None:
    path = work / "rows.jsonl"
    path.write_text(json.dumps({"body": "a"}) + "\n")
    with pytest.raises(ValueError, match="row 0 has no text column 'text'"):
        clm.read_texts(str(path), "text")
    assert clm.read_texts(str(path), "body") == ["a"]
    with pytest.raises(ValueError, match="does not exist"):
        clm.read_texts(str(work / "missing.txt"), "text")
