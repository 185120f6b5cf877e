"""Fine-tune a sequence classifier on a GLUE-style task while pytorch-pruner makes it sparse.

The seed's example, offline: the model is a local folder written by ``save_pretrained`` and the
data are local CSV / JSON-lines files with a ``label`` column and the task's text columns
(``sentence`` for SST-2, ``sentence1``/``sentence2`` for MRPC, ...). Example::

    python examples/run_glue_no_trainer.py --model_name_or_path ./bert-mini-mrpc \\
        --pruning_config examples/bert_mini_mrpc_4x1.yaml --task_name mrpc \\
        --train_file mrpc/train.csv --validation_file mrpc/dev.csv \\
        --per_device_train_batch_size 16 --num_train_epochs 10 --cooldown_epochs 5 \\
        --learning_rate 4.5e-4 --weight_decay 1e-7 --do_prune --distill_loss_weight 4.5 \\
        --output_dir pruned_mrpc

Pruning window (SPEC §8): with I optimizer steps per epoch, E epochs, W warm and C cooldown epochs,
``start_step = W·I`` and ``end_step = (E − C)·I``; without ``--do_prune`` the model trains dense.
With ``--distill_loss_weight w > 0`` the loss is ``w · MSE`` between the student's and the
teacher's last hidden states and the classifier is frozen (the teacher's classifier is reused).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so utils_distill imports from any cwd

from utils_distill import (
    add_common_args,
    batches,
    build_optimizer,
    check_common_args,
    finish_run,
    hidden_state_mse,
    pruning_window,
    read_records,
    set_seed,
    train,
)

#: Text columns of the GLUE tasks (the second is None for single-sentence tasks).
TASK_TO_KEYS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "wnli": ("sentence1", "sentence2"),
}

#: Attribute names of classification heads, frozen under distillation.
HEAD_NAMES = ("classifier", "score")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the seed's flags (plus offline data flags); see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task_name", default=None, help=f"one of {sorted(TASK_TO_KEYS)}: picks the text columns")
    add_common_args(parser)
    return parser.parse_args(argv)


def text_columns(task_name: str | None, columns: Sequence[str]) -> tuple[str, str | None]:
    """The text columns to read: the task's, else ``sentence1/sentence2``, ``sentence`` or ``text``.

    Raises:
        ValueError: the task is unknown or the file lacks its columns.
    """
    if task_name is not None:
        key = task_name.lower().replace("-", "")
        if key not in TASK_TO_KEYS:
            raise ValueError(
                f"--task_name {task_name!r} is not a GLUE classification task; use one of {sorted(TASK_TO_KEYS)}"
            )
        first, second = TASK_TO_KEYS[key]
        missing = [c for c in (first, second) if c is not None and c not in columns]
        if missing:
            raise ValueError(f"task {task_name!r} needs columns {missing} but the file has {list(columns)}")
        return first, second
    for first, second in (("sentence1", "sentence2"), ("sentence", None), ("text", None)):
        if first in columns and (second is None or second in columns):
            return first, second
    raise ValueError(f"cannot tell the text columns from {list(columns)}; pass --task_name or name them 'sentence'")


def label_ids(train_rows: list[dict[str, Any]], path: str) -> dict[str, int]:
    """Map label values (as strings) to class ids: numeric labels keep their value, others sort.

    Raises:
        ValueError: a row has no ``label``.
    """
    values = []
    for i, row in enumerate(train_rows):
        if "label" not in row or row["label"] in (None, ""):
            raise ValueError(f"{path}: row {i} has no 'label' (columns: {list(row)}); every row needs one")
        values.append(str(row["label"]))
    distinct = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in distinct):
        return {v: int(v) for v in distinct}
    return {v: i for i, v in enumerate(distinct)}


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy, plus F1 of class 1 for binary tasks (as GLUE reports for MRPC and QQP)."""
    metrics = {"accuracy": float((preds == labels).float().mean())}
    if num_labels == 2:
        tp = int(((preds == 1) & (labels == 1)).sum())
        fp = int(((preds == 1) & (labels == 0)).sum())
        fn = int(((preds == 0) & (labels == 1)).sum())
        metrics["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return metrics


def reuse_teacher_head(student: torch.nn.Module, teacher: torch.nn.Module) -> list[str]:
    """Copy the teacher's pooler and classifier into the student, which then reuses them.

    Distilling only the last hidden states trains the student's features to match the teacher's,
    so the head that reads them must be the teacher's.

    Returns:
        The copied parameter names.

    Raises:
        ValueError: the teacher's head has another shape (it was trained for other labels).
    """
    teacher_params = dict(teacher.named_parameters())
    copied = []
    with torch.no_grad():
        for name, param in student.named_parameters():
            if name.split(".")[0] not in HEAD_NAMES and ".pooler." not in f".{name}":
                continue
            source = teacher_params.get(name)
            if source is None or source.shape != param.shape:
                found = None if source is None else tuple(source.shape)
                raise ValueError(
                    f"the teacher's {name} has shape {found}, the student needs {tuple(param.shape)}; "
                    "use a teacher fine-tuned on the same task and labels"
                )
            param.copy_(source)
            copied.append(name)
    return copied


def freeze_head(model: torch.nn.Module) -> list[str]:
    """Stop gradients to the classification head; return the frozen parameter names."""
    frozen = []
    for name, param in model.named_parameters():
        if name.split(".")[0] in HEAD_NAMES:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; return the results also written to ``<output_dir>/results.json``.

    Raises:
        ValueError: a flag, a data file or the pruning window is invalid (the message says which).
    """
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    from pytorch_pruner import Pruning

    args = parse_args(argv)
    check_common_args(args)
    if args.train_file is None or args.validation_file is None:
        raise ValueError(
            "pass --train_file and --validation_file (local .csv/.tsv/.json/.jsonl with a 'label' column); "
            "this example never downloads data"
        )
    set_seed(args.seed)
    train_rows, eval_rows = read_records(args.train_file), read_records(args.validation_file)
    first, second = text_columns(args.task_name, list(train_rows[0]))
    text_columns(args.task_name, list(eval_rows[0]))  # same columns in both files
    label_to_id = label_ids(train_rows, args.train_file)
    unknown = sorted({str(r.get("label")) for r in eval_rows} - set(label_to_id))
    if unknown:
        raise ValueError(f"{args.validation_file}: labels {unknown} never occur in the training file")
    num_labels = max(label_to_id.values()) + 1

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    # A head of another size (e.g. a model fine-tuned on another task) is replaced, with a warning.
    mismatch = AutoConfig.from_pretrained(args.model_name_or_path).num_labels != num_labels
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_name_or_path, num_labels=num_labels, ignore_mismatched_sizes=mismatch
    )
    teacher = None
    if args.distill_loss_weight > 0:
        if args.teacher_model_name_or_path:
            teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher_model_name_or_path)
            reuse_teacher_head(model, teacher)
        else:
            if mismatch:
                print(
                    "warning: distilling from a teacher whose classifier was just initialised; "
                    "pass a fine-tuned --model_name_or_path or --teacher_model_name_or_path",
                    file=sys.stderr,
                )
            teacher = copy.deepcopy(model)
        teacher.eval().requires_grad_(False)
        freeze_head(model)

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [str(r[first]) for r in rows]
        pairs = [str(r[second]) for r in rows] if second else None
        enc = tokenizer(
            texts, pairs, truncation=True, max_length=args.max_seq_length, padding=True, return_tensors="pt"
        )
        enc["labels"] = torch.tensor([label_to_id[str(r["label"])] for r in rows])
        return dict(enc)

    gen = torch.Generator().manual_seed(args.seed)
    batches_per_epoch = len(batches(train_rows, args.per_device_train_batch_size))
    window = pruning_window(
        batches_per_epoch=batches_per_epoch,
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
            f"pruning window: steps {window.start_step}..{window.end_step} of {window.total_steps} "
            f"({window.steps_per_epoch:g} per epoch)"
            if args.do_prune
            else "dense training (no --do_prune)"
        )

    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, args.do_prune, args.adam_beta2)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=window.total_steps
    )

    def epoch_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        order = torch.randperm(len(train_rows), generator=gen).tolist()
        rows = [train_rows[i] for i in order]
        return [collate(b) for b in batches(rows, args.per_device_train_batch_size)]

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if teacher is None:
            return model(**batch).loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        student_hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        with torch.no_grad():
            teacher_hidden = teacher(**inputs, output_hidden_states=True).hidden_states[-1]
        return hidden_state_mse(student_hidden, teacher_hidden, args.distill_loss_weight)

    eval_batches = [collate(b) for b in batches(eval_rows, args.per_device_eval_batch_size)]

    @torch.no_grad()
    def evaluate(epoch: int | None = None) -> dict[str, float]:
        model.eval()
        preds, labels = [], []
        for batch in eval_batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            preds.append(model(**inputs).logits.argmax(-1))
            labels.append(batch["labels"])
        metrics = classification_metrics(torch.cat(preds), torch.cat(labels), num_labels)
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
