"""Fine-tune an extractive question-answering model (SQuAD style) while pytorch-pruner makes it sparse.

The seed's SQuAD example, offline: the model is a local folder written by ``save_pretrained`` (a
BERT checkpoint; ``qa_outputs`` is created if it lacks one) with a fast tokenizer, and the data are
local files, either in the SQuAD v1 layout (``{"data": [{"paragraphs": [{"context", "qas"}]}]}``)
or JSON lines with ``question``, ``context`` and ``answers: {"text": [...], "answer_start": [...]}``.
Example::

    python examples/run_qa_no_trainer.py --model_name_or_path ./bert-mini-squad \\
        --pruning_config examples/bert_mini_mrpc_4x1.yaml \\
        --train_file squad/train-v1.1.json --validation_file squad/dev-v1.1.json \\
        --per_device_train_batch_size 16 --num_train_epochs 10 --cooldown_epochs 2 \\
        --sparsity_warm_epochs 1 --learning_rate 4.5e-4 --do_prune --distill_loss_weight 2.0 \\
        --output_dir pruned_squad

Pruning window and optimizer as in ``run_glue_no_trainer.py``. With ``--distill_loss_weight w > 0``
the loss is ``(w/2)·KD(start logits) + (w/2)·KD(end logits)`` with ``KD = T²·KL(teacher ‖ student)``
at temperature T = 2 (SPEC §8). The metric is SQuAD's F1 and exact match, as fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import collections
import copy
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so utils_distill imports from any cwd

from utils_distill import (
    add_common_args,
    build_optimizer,
    check_common_args,
    finish_run,
    logit_kd,
    pruning_window,
    read_records,
    set_seed,
    train,
)


@dataclass(frozen=True)
class QAExample:
    """One question with its context and gold answers (text, character start)."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the seed's flags plus the QA ones; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task_name", default="squad", help="informational (the data come from the files)")
    add_common_args(parser)
    parser.add_argument("--doc_stride", type=int, default=128, help="overlap of the windows of a long context")
    parser.add_argument("--max_answer_length", type=int, default=30, help="longest answer in tokens")
    parser.add_argument("--n_best_size", type=int, default=20, help="start/end candidates per feature")
    parser.add_argument("--distill_temperature", type=float, default=2.0, help="T of the logit distillation")
    return parser.parse_args(argv)


def _answers(raw: Any, where: str) -> tuple[tuple[str, int], ...]:
    """Gold answers from a SQuAD list of dicts or a datasets-style dict of lists."""
    if isinstance(raw, dict):
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if len(texts) != len(starts):
            raise ValueError(f"{where}: answers has {len(texts)} texts but {len(starts)} answer_start values")
        return tuple((str(t), int(s)) for t, s in zip(texts, starts, strict=True))
    if isinstance(raw, list):
        try:
            return tuple((str(a["text"]), int(a["answer_start"])) for a in raw)
        except (KeyError, TypeError):
            raise ValueError(f"{where}: each answer needs 'text' and 'answer_start', got {raw!r}") from None
    raise ValueError(f"{where}: 'answers' must be a list of {{text, answer_start}} or a dict of lists, got {raw!r}")


def read_squad(path: str) -> list[QAExample]:
    """Read SQuAD v1 JSON or JSON lines into examples; every answer must sit where it says.

    Raises:
        ValueError: the file is unreadable, a field is missing, or an answer's text is not found at
            its ``answer_start`` in the context.
    """
    rows = read_records(path)
    if len(rows) == 1 and isinstance(rows[0], dict) and "data" in rows[0]:  # the SQuAD v1 layout
        rows = [
            {**qa, "context": paragraph["context"]}
            for article in rows[0]["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
    examples = []
    for i, row in enumerate(rows):
        where = f"{path}: example {i}"
        missing = [k for k in ("question", "context", "answers") if k not in row]
        if missing:
            raise ValueError(f"{where} lacks {missing}; each needs question, context and answers")
        answers = _answers(row["answers"], where)
        for text, start in answers:
            if row["context"][start : start + len(text)] != text:
                raise ValueError(
                    f"{where}: answer {text!r} is not at answer_start {start} of its context; fix the offset"
                )
        examples.append(QAExample(str(row.get("id", i)), row["question"], row["context"], answers))
    return examples


def tokenize(tokenizer: Any, examples: list[QAExample], max_length: int, stride: int, train: bool) -> dict[str, Any]:
    """Split each context into overlapping windows and, for training, mark the answer tokens.

    A window that does not hold the whole first answer points at [CLS] (index 0), as in BERT's
    SQuAD recipe. For evaluation the offsets of non-context tokens are set to None, so that no
    answer is read from the question.

    Returns:
        ``input_ids``, ``token_type_ids``, ``attention_mask`` tensors, ``example`` (feature →
        example index), and ``start_positions``/``end_positions`` (train) or ``offsets`` (eval).
    """
    if not tokenizer.is_fast:
        raise ValueError("this example needs a fast tokenizer (offset mappings); save one with the model")
    enc = tokenizer(
        [e.question.lstrip() for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    feature_to_example = enc["overflow_to_sample_mapping"]
    out: dict[str, Any] = {
        key: torch.tensor(enc[key]) for key in ("input_ids", "token_type_ids", "attention_mask") if key in enc
    }
    out["example"] = list(feature_to_example)
    starts, ends, offsets = [], [], []
    for f, ex_index in enumerate(feature_to_example):
        seq_ids = enc.sequence_ids(f)
        offs = enc["offset_mapping"][f]
        if not train:
            offsets.append([o if seq_ids[k] == 1 else None for k, o in enumerate(offs)])
            continue
        text, char_start = examples[ex_index].answers[0]
        char_end = char_start + len(text)
        ctx = [k for k, s in enumerate(seq_ids) if s == 1]
        if not ctx or offs[ctx[0]][0] > char_start or offs[ctx[-1]][1] < char_end:
            starts.append(0)
            ends.append(0)
            continue
        start_tok = next(k for k in ctx if offs[k][1] > char_start)
        end_tok = next(k for k in reversed(ctx) if offs[k][0] < char_end)
        starts.append(start_tok)
        ends.append(end_tok)
    if train:
        out["start_positions"] = torch.tensor(starts)
        out["end_positions"] = torch.tensor(ends)
    else:
        out["offsets"] = offsets
    return out


def best_answers(
    examples: list[QAExample],
    features: dict[str, Any],
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    n_best: int,
    max_answer_length: int,
) -> dict[str, str]:
    """For each example, the context span with the highest start + end logit over its windows."""
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for f, ex_index in enumerate(features["example"]):
        by_example[ex_index].append(f)
    predictions = {}
    for ex_index, example in enumerate(examples):
        best, best_score = "", float("-inf")
        for f in by_example[ex_index]:
            offs = features["offsets"][f]
            s_logits, e_logits = start_logits[f], end_logits[f]
            for s in s_logits.topk(min(n_best, len(s_logits))).indices.tolist():
                for e in e_logits.topk(min(n_best, len(e_logits))).indices.tolist():
                    if offs[s] is None or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(s_logits[s] + e_logits[e])
                    if score > best_score:
                        best, best_score = example.context[offs[s][0] : offs[e][1]], score
        predictions[example.id] = best
    return predictions


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, truth: str) -> float:
    """Token-overlap F1 of two answers after :func:`normalize_answer`."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return float(pred == gold)  # both empty counts as a match
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(examples: list[QAExample], predictions: dict[str, str]) -> dict[str, float]:
    """Mean over examples of the best F1 and exact match against any gold answer, in [0, 1]."""
    f1 = em = 0.0
    for ex in examples:
        golds = [text for text, _ in ex.answers] or [""]
        pred = predictions[ex.id]
        f1 += max(f1_score(pred, g) for g in golds)
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
    return {"f1": f1 / len(examples), "exact_match": em / len(examples)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; return the results also written to ``<output_dir>/results.json``.

    Raises:
        ValueError: a flag, a data file or the pruning window is invalid (the message says which).
    """
    from tqdm.auto import tqdm
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, get_scheduler

    from pytorch_pruner import Pruning

    args = parse_args(argv)
    check_common_args(args)
    if args.train_file is None or args.validation_file is None:
        raise ValueError(
            "pass --train_file and --validation_file (SQuAD v1 JSON or JSON lines with question, context, "
            "answers); this example never downloads data"
        )
    if not 0 <= args.doc_stride < args.max_seq_length:
        raise ValueError(
            f"--doc_stride ({args.doc_stride}) must be >= 0 and < --max_seq_length ({args.max_seq_length})"
        )
    set_seed(args.seed)
    train_examples = read_squad(args.train_file)
    eval_examples = read_squad(args.validation_file)
    if any(not e.answers for e in train_examples):
        raise ValueError(f"{args.train_file}: every training example needs at least one answer")

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model, info = AutoModelForQuestionAnswering.from_pretrained(args.model_name_or_path, output_loading_info=True)
    teacher = None
    if args.distill_loss_weight > 0:
        source = args.teacher_model_name_or_path
        if not source and any(k.startswith("qa_outputs.") for k in info["missing_keys"]):
            print(
                "warning: distilling from a teacher whose qa_outputs were just initialised; pass a "
                "SQuAD-fine-tuned --model_name_or_path or --teacher_model_name_or_path",
                file=sys.stderr,
            )
        teacher = AutoModelForQuestionAnswering.from_pretrained(source) if source else copy.deepcopy(model)
        teacher.eval().requires_grad_(False)

    train_features = tokenize(tokenizer, train_examples, args.max_seq_length, args.doc_stride, train=True)
    eval_features = tokenize(tokenizer, eval_examples, args.max_seq_length, args.doc_stride, train=False)
    input_keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in train_features]
    n_train = len(train_features["input_ids"])
    bs = args.per_device_train_batch_size
    window = pruning_window(
        batches_per_epoch=-(-n_train // bs),
        num_epochs=args.num_train_epochs,
        warm_epochs=args.sparsity_warm_epochs,
        cooldown_epochs=args.cooldown_epochs,
        do_prune=args.do_prune,
        max_train_steps=args.max_train_steps,
    )
    pruning = None
    if args.pruning_config:
        pruning = Pruning(args.pruning_config)
        pruning.update_items_for_all_pruners(start_step=window.start_step, end_step=window.end_step)
        pruning.model = model
        pruning.on_train_begin()
        print(
            f"pruning window: steps {window.start_step}..{window.end_step} of {window.total_steps}"
            if args.do_prune
            else "dense training (no --do_prune)"
        )
    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, args.do_prune, args.adam_beta2)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=window.total_steps
    )
    gen = torch.Generator().manual_seed(args.seed)
    train_keys = [*input_keys, "start_positions", "end_positions"]

    def epoch_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        order = torch.randperm(n_train, generator=gen)
        return [{k: train_features[k][order[i : i + bs]] for k in train_keys} for i in range(0, n_train, bs)]

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if teacher is None:
            return model(**batch).loss
        inputs = {k: batch[k] for k in input_keys}
        student = model(**inputs)
        with torch.no_grad():
            target = teacher(**inputs)
        t, w = args.distill_temperature, args.distill_loss_weight
        return w / 2 * logit_kd(student.start_logits, target.start_logits, t) + w / 2 * logit_kd(
            student.end_logits, target.end_logits, t
        )

    @torch.no_grad()
    def evaluate(epoch: int | None = None) -> dict[str, float]:
        model.eval()
        starts, ends = [], []
        n_eval = len(eval_features["input_ids"])
        for i in range(0, n_eval, args.per_device_eval_batch_size):
            out = model(**{k: eval_features[k][i : i + args.per_device_eval_batch_size] for k in input_keys})
            starts.append(out.start_logits)
            ends.append(out.end_logits)
        predictions = best_answers(
            eval_examples, eval_features, torch.cat(starts), torch.cat(ends), args.n_best_size, args.max_answer_length
        )
        metrics = squad_metrics(eval_examples, predictions)
        if epoch is not None:
            tqdm.write(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    losses = train(
        model=model,
        epoch_batches=epoch_batches,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        pruning=pruning,
        total_steps=window.total_steps,
        num_epochs=args.num_train_epochs,
        evaluate=evaluate,
    )
    return finish_run(args, model, tokenizer, pruning, window, losses, evaluate)


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a bad flag or data file: the message says what to fix
        sys.exit(f"error: {err}")
