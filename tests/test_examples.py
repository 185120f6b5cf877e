"""End-to-end runs of the seed's example scripts on a tiny BERT, a tiny vocabulary and local files.

Each script's ``main(argv)`` is imported and called in-process (faster than a subprocess); one run
per configuration is shared by the tests that check it (module-scoped fixtures).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from pytorch_pruner import Pruning

from .conftest import make_bert_mini

transformers = pytest.importorskip("transformers")
pytest.importorskip("tqdm")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

POSITIVE = ["good", "great", "fine", "nice", "happy", "fun"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dull", "boring"]
FILLER = ["the", "movie", "was", "very", "a", "plot", "and", "it", "is", "story", "cast", "film"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples/ is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def glue() -> ModuleType:
    return _load("run_glue_no_trainer")


@pytest.fixture(scope="module")
def qa() -> ModuleType:
    return _load("run_qa_no_trainer")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


def _sentence(rng: random.Random, positive: bool) -> str:
    words = [*rng.sample(FILLER, 4), rng.choice(POSITIVE if positive else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def tiny_model(work: Path) -> Path:
    """A 2-layer BERT classifier and its WordPiece tokenizer, saved with save_pretrained."""
    vocab = work / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + FILLER + POSITIVE + NEGATIVE + ["?", ".", "who", "what"]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab))  # transformers 5 takes the path as `vocab`
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    folder = work / "tiny-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def glue_files(work: Path) -> dict[str, Path]:
    """SST-2-like (sentence) and MRPC-like (sentence1, sentence2) CSV files."""
    rng = random.Random(0)
    files = {}
    for split, n in (("train", 64), ("dev", 32)):
        single = work / f"sst2_{split}.csv"
        with single.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            for i in range(n):
                w.writerow([_sentence(rng, i % 2 == 0), int(i % 2 == 0)])
        pair = work / f"mrpc_{split}.jsonl"
        with pair.open("w") as f:
            for i in range(n):
                same = i % 2 == 0
                a = _sentence(rng, True)
                b = _sentence(rng, same)
                f.write(json.dumps({"sentence1": a, "sentence2": b, "label": int(same)}) + "\n")
        files[f"sst2_{split}"], files[f"mrpc_{split}"] = single, pair
    return files


def _glue_args(model: Path, train: Path, dev: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--learning_rate", "1e-3", "--weight_decay", "1e-7", "--num_train_epochs", "2",
        "--max_seq_length", "32", "--output_dir", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sst2_2in4(glue: ModuleType, tiny_model: Path, glue_files: dict[str, Path], work: Path) -> dict[str, Any]:
    out = work / "sst2_2in4"
    results = glue.main(_glue_args(
        tiny_model, glue_files["sst2_train"], glue_files["sst2_dev"], out, "--task_name", "sst2",
        "--pruning_config", str(EXAMPLES / "bert_mini_sst2_2in4.yaml"), "--do_prune",
        "--sparsity_warm_epochs", "1", "--distill_loss_weight", "8.0",
    ))  # fmt: skip
    return {"results": results, "out": out}


@pytest.fixture(scope="module")
def mrpc_4x1(glue: ModuleType, tiny_model: Path, glue_files: dict[str, Path], work: Path) -> dict[str, Any]:
    out = work / "mrpc_4x1"
    results = glue.main(_glue_args(
        tiny_model, glue_files["mrpc_train"], glue_files["mrpc_dev"], out, "--task_name", "mrpc",
        "--pruning_config", str(EXAMPLES / "bert_mini_mrpc_4x1.yaml"), "--do_prune",
        "--cooldown_epochs", "1", "--distill_loss_weight", "4.5",
    ))  # fmt: skip
    return {"results": results, "out": out}


@pytest.fixture(scope="module")
def sst2_slim(glue: ModuleType, tiny_model: Path, glue_files: dict[str, Path], work: Path) -> dict[str, Any]:
    """FFN neurons and heads pruned (the example config, at the tiny model's head_dim 16 and with 1 of
    its 2 heads), then --slim."""
    config = work / "slim.yaml"
    text = (EXAMPLES / "bert_mini_sst2_slim.yaml").read_text()
    config.write_text(text.replace("head:64", "head:16").replace("target_sparsity: 0.25", "target_sparsity: 0.5"))
    out = work / "sst2_slim"
    results = glue.main(_glue_args(
        tiny_model, glue_files["sst2_train"], glue_files["sst2_dev"], out, "--task_name", "sst2",
        "--pruning_config", str(config), "--do_prune", "--cooldown_epochs", "1", "--slim",
    ))  # fmt: skip
    return {"results": results, "out": out}


def _encoder_linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: m.weight.detach()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".encoder." in f".{name}."
    }


def _saved_json(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


# -- GLUE -----------------------------------------------------------------------------------------
def test_glue_2in4_every_group_of_four_has_two_zeros(sst2_2in4: dict[str, Any]) -> None:
    saved = _saved_json(sst2_2in4["out"])
    assert 0.0 <= saved["metrics"]["accuracy"] <= 1.0
    assert saved["sparsity_ratios"]["blockwise_over_matmul_gemm_conv"] == pytest.approx(
        saved["sparsity_ratios"]["elementwise_over_matmul_gemm_conv"], abs=1e-4
    )  # INC's third ratio: whole blocks, so the element ratio
    model = transformers.AutoModelForSequenceClassification.from_pretrained(sst2_2in4["out"])
    weights = _encoder_linear_weights(model)
    assert len(weights) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    for name, w in weights.items():
        zeros_per_group = (w.reshape(w.shape[0], -1, 4) == 0).sum(-1)
        assert bool((zeros_per_group >= 2).all()), name


def test_glue_window_follows_warm_and_cooldown_epochs(sst2_2in4: dict[str, Any], mrpc_4x1: dict[str, Any]) -> None:
    # 64 rows / batch 8 = 8 steps per epoch, 2 epochs = 16 steps.
    assert sst2_2in4["results"]["window"] == {"start_step": 8, "end_step": 15}  # W = 1, C = 0: end clamped
    assert mrpc_4x1["results"]["window"] == {"start_step": 0, "end_step": 8}  # W = 0, C = 1
    assert sst2_2in4["results"]["steps"] == mrpc_4x1["results"]["steps"] == 16


def test_glue_4x1_reaches_target_and_reloads_with_same_zeros(mrpc_4x1: dict[str, Any]) -> None:
    out = mrpc_4x1["out"]
    saved = _saved_json(out)
    assert set(saved["metrics"]) == {"accuracy", "f1"}
    assert all(0.0 <= v <= 1.0 for v in saved["metrics"].values())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    weights = _encoder_linear_weights(model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert zeros / total == pytest.approx(0.9, abs=0.01)
    assert saved["sparsity_ratios"]["blockwise_over_matmul_gemm_conv"] == pytest.approx(
        saved["sparsity_ratios"]["elementwise_over_matmul_gemm_conv"], abs=1e-4
    )  # INC's third ratio: whole blocks, so the element ratio
    for name, w in weights.items():  # whole 4x1 blocks: 4 consecutive output rows share each zero
        blocks = (w == 0).reshape(w.shape[0] // 4, 4, w.shape[1])
        assert bool((blocks.all(1) == blocks.any(1)).all()), name
    report = json.loads((out / "pruning_report.json").read_text())
    assert {r["name"] for r in report["layers"]} == set(weights)  # head, pooler and embeddings stay dense


def test_glue_distillation_freezes_the_classifier(mrpc_4x1: dict[str, Any], tiny_model: Path) -> None:
    before = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model)
    after = transformers.AutoModelForSequenceClassification.from_pretrained(mrpc_4x1["out"])
    assert torch.equal(before.classifier.weight, after.classifier.weight)
    assert torch.equal(before.classifier.bias, after.classifier.bias)
    # ... while the encoder did train
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before.state_dict()[name], after.state_dict()[name])


def test_glue_slim_saves_a_smaller_model_with_the_same_predictions(
    sst2_slim: dict[str, Any], glue_files: dict[str, Path], tiny_model: Path
) -> None:
    from pytorch_pruner.speed import load_slimmed

    results, out = sst2_slim["results"], sst2_slim["out"]
    slim = results["slim"]
    # 2 layers x (32 of 64 FFN neurons, 1 of 2 heads): each neuron has 2 x 32 weights + 1 bias, each
    # head 3 x (16 x 32 + 16) in query/key/value + 16 x 32 in the output layer
    removed = 2 * (32 * (2 * 32 + 1) + (3 * (16 * 32 + 16) + 16 * 32))
    assert slim["parameters_before"] - slim["parameters_after"] == removed
    assert slim["units_removed"] == 2 * (32 + 1) and slim["kept"] == []
    assert {(d["unit"], d["before"], d["after"]) for d in slim["layers"]} == {("neurons", 64, 32), ("heads", 2, 1)}
    assert slim["metrics"] == results["metrics"]  # slimming keeps the outputs, hence the predictions
    assert _saved_json(out)["slim"] == slim
    model = load_slimmed(transformers.AutoModelForSequenceClassification, out)
    assert sum(p.numel() for p in model.parameters()) == slim["parameters_after"]
    assert model.config.slimmed_intermediate_sizes == [32, 32] and model.config.slimmed_num_attention_heads == [1, 1]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    with glue_files["sst2_dev"].open() as f:
        rows = list(csv.DictReader(f))
    batch = tokenizer([r["sentence"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = model(**batch).logits.argmax(-1)
    labels = torch.tensor([int(r["label"]) for r in rows])
    assert float((preds == labels).float().mean()) == pytest.approx(slim["metrics"]["accuracy"])


def test_glue_slim_warns_when_nothing_can_go(
    glue: ModuleType, tiny_model: Path, glue_files: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = work / "sst2_slim_2in4"  # 2:4 zeros no whole neuron or head
    results = glue.main(_glue_args(
        tiny_model, glue_files["sst2_train"], glue_files["sst2_dev"], out, "--max_train_steps", "2",
        "--pruning_config", str(EXAMPLES / "bert_mini_sst2_2in4.yaml"), "--do_prune", "--slim",
    ))  # fmt: skip
    assert results["sparsity_ratios"]["blockwise_over_matmul_gemm_conv"] == pytest.approx(
        results["sparsity_ratios"]["elementwise_over_matmul_gemm_conv"], abs=1e-4
    )  # INC's third ratio: whole blocks, so the element ratio  # pruned, 2:4
    assert results["slim"]["units_removed"] == 0
    assert results["slim"]["parameters_after"] == results["slim"]["parameters_before"]
    assert (
        "warning: --slim found nothing to remove; prune layer.N.output.dense with channelx1" in capsys.readouterr().err
    )


@pytest.fixture(scope="module")
def sst2_dense(glue: ModuleType, tiny_model: Path, glue_files: dict[str, Path], work: Path) -> dict[str, Any]:
    out = work / "sst2_dense"
    results = glue.main(_glue_args(
        tiny_model, glue_files["sst2_train"], glue_files["sst2_dev"], out, "--task_name", "sst2",
        "--pruning_config", str(EXAMPLES / "bert_mini_sst2_2in4.yaml"), "--max_train_steps", "4",
    ))  # fmt: skip
    return {"results": results, "out": out}


def test_glue_dense_run_has_zero_sparsity(sst2_dense: dict[str, Any], tiny_model: Path) -> None:
    results = sst2_dense["results"]
    assert results["steps"] == 4
    assert results["window"] == {"start_step": 5, "end_step": 5}  # past the end: never prunes
    assert all(v == 0.0 for v in results["sparsity_ratios"].values())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(sst2_dense["out"])
    assert all(int((w == 0).sum()) == 0 for w in _encoder_linear_weights(model).values())
    # without distillation the classifier trains
    before = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model)
    assert not torch.equal(before.classifier.weight, model.classifier.weight)


def test_glue_student_reuses_a_separate_teachers_classifier(
    glue: ModuleType, tiny_model: Path, glue_files: dict[str, Path], sst2_dense: dict[str, Any], work: Path
) -> None:
    out = work / "sst2_teacher"
    glue.main(_glue_args(
        tiny_model, glue_files["sst2_train"], glue_files["sst2_dev"], out, "--max_train_steps", "2",
        "--teacher_model_name_or_path", str(sst2_dense["out"]), "--distill_loss_weight", "1.0",
    ))  # fmt: skip
    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(sst2_dense["out"])
    student = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    initial = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model)
    assert not torch.equal(teacher.classifier.weight, initial.classifier.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
    # a teacher trained for other labels cannot lend its classifier
    other = transformers.AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=3, ignore_mismatched_sizes=True
    )
    other.save_pretrained(work / "teacher3")
    with pytest.raises(ValueError, match=r"the teacher's classifier.weight has shape \(3, 32\), the student needs"):
        glue.main(_glue_args(
            tiny_model, glue_files["sst2_train"], glue_files["sst2_dev"], out, "--max_train_steps", "1",
            "--teacher_model_name_or_path", str(work / "teacher3"), "--distill_loss_weight", "1.0",
        ))  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--do_prune"], "--do_prune needs --pruning_config"),
        (["--distill_loss_weight", "-1"], "--distill_loss_weight must be >= 0"),
        (["--do_prune", "--pruning_config", "x.yaml", "--sparsity_warm_epochs", "2", "--cooldown_epochs", "1"],
         "the pruning window is empty"),
        (["--task_name", "squad"], "is not a GLUE classification task"),
        (["--task_name", "mrpc"], r"task 'mrpc' needs columns \['sentence1', 'sentence2'\]"),
        (["--max_train_steps", "0"], "--max_train_steps must be >= 1"),
        (["--slim"], "--slim removes what pruning zeroed: it needs --do_prune and --pruning_config"),
    ],
)  # fmt: skip
def test_glue_rejects_bad_flags(
    glue: ModuleType, tiny_model: Path, glue_files: dict[str, Path], work: Path, extra: list[str], message: str
) -> None:
    args = _glue_args(tiny_model, glue_files["sst2_train"], glue_files["sst2_dev"], work / "bad", *extra)
    with pytest.raises(ValueError, match=message):
        glue.main(args)


def test_glue_rejects_bad_data_files(glue: ModuleType, tiny_model: Path, work: Path) -> None:
    base = ["--model_name_or_path", str(tiny_model), "--output_dir", str(work / "bad")]
    with pytest.raises(ValueError, match="pass --train_file and --validation_file"):
        glue.main(base)
    missing = work / "missing.csv"
    with pytest.raises(ValueError, match="does not exist"):
        glue.main([*base, "--train_file", str(missing), "--validation_file", str(missing)])
    xml = work / "data.xml"
    xml.write_text("<a/>")
    with pytest.raises(ValueError, match=r"has suffix '\.xml'"):
        glue.main([*base, "--train_file", str(xml), "--validation_file", str(xml)])
    broken = work / "broken.jsonl"
    broken.write_text('{"sentence": "good", "label": 1}\n{"sentence": \n')
    with pytest.raises(ValueError, match="is neither one JSON document nor JSON lines"):
        glue.main([*base, "--train_file", str(broken), "--validation_file", str(broken)])
    empty = work / "empty.csv"
    empty.write_text("sentence,label\n")
    with pytest.raises(ValueError, match="holds no rows"):
        glue.main([*base, "--train_file", str(empty), "--validation_file", str(empty)])
    nolabel = work / "nolabel.csv"
    nolabel.write_text("sentence,label\ngood movie,\n")
    with pytest.raises(ValueError, match="row 0 has no 'label'"):
        glue.main([*base, "--train_file", str(nolabel), "--validation_file", str(nolabel)])
    train, dev = work / "lab_train.csv", work / "lab_dev.csv"
    train.write_text("sentence,label\ngood movie,pos\nbad movie,neg\n")
    dev.write_text("sentence,label\ngood movie,neutral\n")
    with pytest.raises(ValueError, match=r"labels \['neutral'\] never occur in the training file"):
        glue.main([*base, "--train_file", str(train), "--validation_file", str(dev)])


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("bert_mini_*.yaml")), ids=lambda p: p.name)
def test_example_configs_fit_bert_mini(path: Path) -> None:
    """Each shipped config selects BERT-mini's encoder layers and no pruner is left without a unit."""
    pruning = Pruning(str(path))
    pruning.update_items_for_all_pruners(start_step=1, end_step=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pruner without layers, no target that rounds to nothing
        pruning.on_train_begin(make_bert_mini())
    assert all(p.layers and not p.skipped for p in pruning.pruners)
    assert all(".encoder." in layer.name for p in pruning.pruners for layer in p.layers)


# -- SQuAD ----------------------------------------------------------------------------------------
def _qa_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Contexts of filler words with one positive word; the question asks for it."""
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(20, 40))]
        answer = rng.choice(POSITIVE)
        at = rng.randrange(len(words))
        words.insert(at, answer)
        context = " ".join(words) + " ."
        start = len(" ".join(words[:at])) + (1 if at else 0)
        rows.append({"id": f"q{i}", "question": "what is good ?", "context": context,
                     "answers": {"text": [answer], "answer_start": [start]}})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def squad_files(work: Path) -> dict[str, Path]:
    """Train as JSON lines (datasets layout), dev in the SQuAD v1 layout."""
    rng = random.Random(1)
    train = work / "squad_train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _qa_rows(rng, 24)))
    dev_rows = _qa_rows(rng, 8)
    paragraphs = [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
         "answers": [{"text": r["answers"]["text"][0], "answer_start": r["answers"]["answer_start"][0]}]}]}
        for r in dev_rows
    ]  # fmt: skip
    dev = work / "squad_dev.json"
    dev.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}, indent=2))
    return {"train": train, "dev": dev}


def _qa_args(model: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--train_file", str(files["train"]),
        "--validation_file", str(files["dev"]), "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3", "--num_train_epochs", "2",
        "--max_seq_length", "32", "--doc_stride", "8", "--output_dir", str(out), *extra,
    ]  # fmt: skip


def test_qa_windows_mark_the_answer_tokens(qa: ModuleType, tiny_model: Path, squad_files: dict[str, Path]) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    examples = qa.read_squad(str(squad_files["train"]))
    features = qa.tokenize(tokenizer, examples, 32, 8, train=True)
    assert len(features["example"]) > len(examples)  # long contexts were split into windows
    inside = 0
    for f, ex_index in enumerate(features["example"]):
        s, e = int(features["start_positions"][f]), int(features["end_positions"][f])
        if s == 0:
            assert e == 0  # the answer is not in this window: points at [CLS]
            continue
        inside += 1
        span = tokenizer.decode(features["input_ids"][f][s : e + 1])
        assert span == examples[ex_index].answers[0][0]
    assert inside >= len(examples)  # every answer is inside at least one window


def test_qa_squad_metrics_and_kd_loss(qa: ModuleType) -> None:
    assert qa.normalize_answer("The  Cat, sat!") == "cat sat"
    assert qa.f1_score("the cat sat", "cat sat on") == pytest.approx(0.8)  # P = 1, R = 2/3
    assert qa.f1_score("", "") == 1.0
    assert qa.f1_score("dog", "cat") == 0.0
    ex = [qa.QAExample("a", "q", "c", (("cat sat", 0), ("a cat", 0))), qa.QAExample("b", "q", "c", (("dog", 0),))]
    assert qa.squad_metrics(ex, {"a": "the cat", "b": "cat"}) == {"f1": pytest.approx(0.5), "exact_match": 0.5}
    utils = _load("utils_distill")
    student, teacher = torch.randn(3, 7), torch.randn(3, 7)
    assert float(utils.logit_kd(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    p_t, p_s = torch.softmax(teacher / 2, -1), torch.softmax(student / 2, -1)
    expected = 4 * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert float(utils.logit_kd(student, teacher, 2.0)) == pytest.approx(float(expected), rel=1e-5)


def test_qa_best_answer_reads_the_context_span(qa: ModuleType, tiny_model: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    ex = [qa.QAExample("x", "what is good ?", "the movie was great and fun", (("great", 14),))]
    features = qa.tokenize(tokenizer, ex, 32, 8, train=False)
    tokens = tokenizer.convert_ids_to_tokens(features["input_ids"][0])
    start = tokens.index("great")
    start_logits = torch.zeros(1, 32)
    end_logits = torch.zeros(1, 32)
    start_logits[0, start], end_logits[0, start + 2] = 5.0, 5.0  # "great and fun"
    start_logits[0, 1] = end_logits[0, 1] = 9.0  # in the question: never an answer
    pred = qa.best_answers(ex, features, start_logits, end_logits, n_best=5, max_answer_length=30)
    assert pred == {"x": "great and fun"}
    assert qa.best_answers(ex, features, start_logits, end_logits, n_best=5, max_answer_length=2) != pred


@pytest.fixture(scope="module")
def squad_4x1(qa: ModuleType, tiny_model: Path, squad_files: dict[str, Path], work: Path) -> dict[str, Any]:
    out = work / "squad_4x1"
    results = qa.main(_qa_args(
        tiny_model, squad_files, out, "--pruning_config", str(EXAMPLES / "bert_mini_mrpc_4x1.yaml"),
        "--do_prune", "--sparsity_warm_epochs", "0.5", "--cooldown_epochs", "0.5", "--distill_loss_weight", "2.0",
    ))  # fmt: skip
    return {"results": results, "out": out}


def test_qa_slim_keeps_the_answers(qa: ModuleType, tiny_model: Path, squad_files: dict[str, Path], work: Path) -> None:
    from pytorch_pruner.speed import load_slimmed

    config = work / "qa_slim.yaml"
    text = (EXAMPLES / "bert_mini_sst2_slim.yaml").read_text()
    config.write_text(text.replace("head:64", "head:16").replace("target_sparsity: 0.25", "target_sparsity: 0.5"))
    out = work / "squad_slim"
    results = qa.main(_qa_args(tiny_model, squad_files, out, "--pruning_config", str(config), "--do_prune", "--slim"))
    slim = results["slim"]
    assert slim["units_removed"] == 2 * (32 + 1) and slim["parameters_after"] < slim["parameters_before"]
    assert slim["metrics"] == results["metrics"]  # same start/end logits, hence the same answers
    model = load_slimmed(transformers.AutoModelForQuestionAnswering, out)
    assert type(model).__name__ == "BertForQuestionAnswering"
    assert sum(p.numel() for p in model.parameters()) == slim["parameters_after"]


def test_qa_4x1_with_distillation_prunes_and_reloads(squad_4x1: dict[str, Any]) -> None:
    out, results = squad_4x1["out"], squad_4x1["results"]
    saved = _saved_json(out)
    assert saved["metrics"] == results["metrics"]
    assert set(saved["metrics"]) == {"f1", "exact_match"}
    assert all(0.0 <= v <= 1.0 for v in saved["metrics"].values())
    start, end = saved["window"]["start_step"], saved["window"]["end_step"]
    assert 0 < start < end < saved["steps"]  # warm-up and cooldown of half an epoch each
    assert saved["sparsity_ratios"]["blockwise_over_matmul_gemm_conv"] == pytest.approx(
        saved["sparsity_ratios"]["elementwise_over_matmul_gemm_conv"], abs=1e-4
    )  # INC's third ratio: whole blocks, so the element ratio
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(out)
    weights = _encoder_linear_weights(model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / sum(w.numel() for w in weights.values()) == pytest.approx(0.9, abs=0.01)
    assert int((model.qa_outputs.weight == 0).sum()) == 0  # the head is not pruned
    report = json.loads((out / "pruning_report.json").read_text())
    assert {r["name"] for r in report["layers"]} == set(weights)


def test_qa_dense_run_has_zero_sparsity(
    qa: ModuleType, tiny_model: Path, squad_files: dict[str, Path], work: Path
) -> None:
    results = qa.main(_qa_args(tiny_model, squad_files, work / "squad_dense",
                               "--pruning_config", str(EXAMPLES / "bert_mini_sst2_2in4.yaml"),
                               "--max_train_steps", "3"))  # fmt: skip
    assert results["steps"] == 3
    assert all(v == 0.0 for v in results["sparsity_ratios"].values())
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(work / "squad_dense")
    assert all(int((w == 0).sum()) == 0 for w in _encoder_linear_weights(model).values())


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q", "context": "good movie"}, r"lacks \['answers'\]"),
        ({"question": "q", "context": "good movie", "answers": {"text": ["movie"], "answer_start": [0]}},
         "answer 'movie' is not at answer_start 0"),
        ({"question": "q", "context": "good", "answers": {"text": ["good"], "answer_start": []}},
         "answers has 1 texts but 0 answer_start"),
        ({"question": "q", "context": "good", "answers": [{"text": "good"}]}, "needs 'text' and 'answer_start'"),
        ({"question": "q", "context": "good", "answers": "good"}, "'answers' must be a list"),
    ],
)  # fmt: skip
def test_qa_rejects_bad_examples(qa: ModuleType, work: Path, row: dict[str, Any], message: str) -> None:
    path = work / "bad_squad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        qa.read_squad(str(path))


def test_qa_rejects_bad_flags(qa: ModuleType, tiny_model: Path, squad_files: dict[str, Path], work: Path) -> None:
    with pytest.raises(ValueError, match=r"--doc_stride \(40\) must be >= 0 and < --max_seq_length \(32\)"):
        qa.main(_qa_args(tiny_model, squad_files, work / "bad", "--doc_stride", "40"))
    with pytest.raises(ValueError, match="pass --train_file and --validation_file"):
        qa.main(["--model_name_or_path", str(tiny_model), "--output_dir", str(work / "bad")])
    unanswered = work / "unanswered.jsonl"
    unanswered.write_text(json.dumps({"question": "q", "context": "c", "answers": {"text": [], "answer_start": []}}))
    with pytest.raises(ValueError, match="every training example needs at least one answer"):
        qa.main(_qa_args(tiny_model, {"train": unanswered, "dev": unanswered}, work / "bad"))


# -- shared helpers -------------------------------------------------------------------------------
def test_pruning_window_follows_the_seed_formula() -> None:
    utils = _load("utils_distill")
    w = utils.pruning_window(batches_per_epoch=10, num_epochs=10, warm_epochs=1, cooldown_epochs=5, do_prune=True)
    assert (w.total_steps, w.start_step, w.end_step) == (100, 10, 50)  # W·I, (E − C)·I
    w = utils.pruning_window(batches_per_epoch=10, num_epochs=10, warm_epochs=0, cooldown_epochs=0, do_prune=True)
    assert (w.start_step, w.end_step) == (0, 99)  # E·I is past the last step: clamped
    w = utils.pruning_window(
        batches_per_epoch=10, num_epochs=10, warm_epochs=1, cooldown_epochs=5, do_prune=True, max_train_steps=20
    )
    assert (w.total_steps, w.start_step, w.end_step) == (20, 2, 10)  # same shares of the shorter run
    w = utils.pruning_window(batches_per_epoch=10, num_epochs=2, warm_epochs=0, cooldown_epochs=0, do_prune=False)
    assert (w.start_step, w.end_step) == (21, 21)  # dense: the window lies past the end
    with pytest.raises(ValueError, match="the run has no optimizer step"):
        utils.pruning_window(batches_per_epoch=0, num_epochs=2, warm_epochs=0, cooldown_epochs=0, do_prune=True)


def test_optimizer_skips_decay_on_bias_and_layernorm(tiny_model: Path) -> None:
    utils = _load("utils_distill")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model)
    model.classifier.requires_grad_(False)
    names = {id(p): n for n, p in model.named_parameters()}
    pruning_opt = utils.build_optimizer(model, 1e-3, 0.01, do_prune=True)
    decay, no_decay = pruning_opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all("bias" in names[id(p)] or "LayerNorm.weight" in names[id(p)] for p in no_decay["params"])
    assert not any("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in decay["params"])
    assert not any(names[id(p)].startswith("classifier.") for g in pruning_opt.param_groups for p in g["params"])
    assert pruning_opt.defaults["betas"] == (0.9, 0.9)
    assert utils.build_optimizer(model, 1e-3, 0.01, do_prune=False).defaults["betas"] == (0.9, 0.999)
