"""Pieces shared by the seed's example scripts (``run_glue_no_trainer.py``, ``run_qa_no_trainer.py``).

Everything here works offline: models and tokenizers come from a local folder written by
``save_pretrained``, data from local CSV / JSON-lines files, read with the standard library so the
``datasets`` package is not needed.

* :func:`add_common_args`: the flags both scripts share (the seed's flags plus a few for quick runs);
* :func:`pruning_window`: the seed's window, ``start = W·I`` and ``end = (E − C)·I``;
* :func:`build_optimizer`: AdamW without decay on biases and LayerNorm weights, betas (0.9, 0.9)
  when pruning;
* :func:`hidden_state_mse` and :func:`logit_kd`: the two distillation losses of SPEC §8;
* :func:`save_outputs`: the model, the tokenizer and a ``results.json`` with metric and ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PruningWindow",
    "add_common_args",
    "batches",
    "build_optimizer",
    "check_common_args",
    "finish_run",
    "hidden_state_mse",
    "logit_kd",
    "pruning_window",
    "read_records",
    "save_outputs",
    "set_seed",
    "slim_and_evaluate",
    "train",
]

#: Parameter-name fragments that get no weight decay (biases and LayerNorm weights).
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Add the flags that both example scripts share to *parser*.

    The seed's flags keep their names; ``--train_file``, ``--validation_file``,
    ``--teacher_model_name_or_path``, ``--max_seq_length``, ``--seed`` and ``--max_train_steps``
    are additions for offline and quick runs.

    Args:
        parser: the script's parser; flags are added in place.
    """
    parser.add_argument("--model_name_or_path", required=True, help="local folder written by save_pretrained")
    parser.add_argument("--pruning_config", default=None, help="pytorch-pruner YAML (required with --do_prune)")
    parser.add_argument("--train_file", default=None, help="local training data (.csv, .tsv, .json or .jsonl)")
    parser.add_argument("--validation_file", default=None, help="local evaluation data, same formats")
    parser.add_argument(
        "--teacher_model_name_or_path",
        default=None,
        help="distillation teacher; default: the student's initial weights (the dense fine-tuned model)",
    )
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--num_train_epochs", type=float, default=3)
    parser.add_argument("--num_warmup_steps", type=int, default=0, help="linear learning-rate warm-up steps")
    parser.add_argument("--max_train_steps", type=int, default=None, help="cap on optimizer steps (quick runs)")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--do_prune", action="store_true", help="prune; without it the model trains dense")
    parser.add_argument("--sparsity_warm_epochs", type=float, default=0, help="W: epochs before pruning starts")
    parser.add_argument("--cooldown_epochs", type=float, default=0, help="C: epochs after pruning ends")
    parser.add_argument("--distill_loss_weight", type=float, default=0.0, help="w > 0 turns distillation on")
    parser.add_argument(
        "--slim",
        action="store_true",
        help="after training, remove the pruned FFN neurons and attention heads (patterns channelx1 and "
        "head:<head_dim>, docs/speed.md) and save the smaller model; load it with pytorch_pruner.speed.load_slimmed",
    )
    parser.add_argument(
        "--adam_beta2",
        type=float,
        default=None,
        help="AdamW's second beta; default 0.9 with --do_prune (the seed's), else 0.999",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=42)


def check_common_args(args: argparse.Namespace) -> None:
    """Reject flag combinations that cannot work, before any model is loaded.

    Raises:
        ValueError: a flag is out of range or a required one is missing; the message says which.
    """
    if args.do_prune and not args.pruning_config:
        raise ValueError(
            "--do_prune needs --pruning_config PATH (a pytorch-pruner YAML such as bert_mini_mrpc_4x1.yaml)"
        )
    if args.distill_loss_weight < 0:
        raise ValueError(
            f"--distill_loss_weight must be >= 0 (0 turns distillation off), got {args.distill_loss_weight}"
        )
    if args.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs must be > 0, got {args.num_train_epochs}")
    if args.sparsity_warm_epochs < 0 or args.cooldown_epochs < 0:
        raise ValueError(
            f"--sparsity_warm_epochs ({args.sparsity_warm_epochs}) and --cooldown_epochs ({args.cooldown_epochs}) "
            "must be >= 0"
        )
    if args.do_prune and args.sparsity_warm_epochs + args.cooldown_epochs > args.num_train_epochs:
        raise ValueError(
            f"the pruning window is empty: --sparsity_warm_epochs ({args.sparsity_warm_epochs}) + --cooldown_epochs "
            f"({args.cooldown_epochs}) exceed --num_train_epochs ({args.num_train_epochs}); lower them or train longer"
        )
    if args.slim and not args.pruning_config:
        raise ValueError(
            "--slim removes what pruning zeroed: it needs --do_prune and --pruning_config with channelx1 on the "
            "FFN output layers and/or head:<head_dim> on attention.output.dense (see docs/speed.md)"
        )
    if args.adam_beta2 is not None and not 0 <= args.adam_beta2 < 1:
        raise ValueError(f"--adam_beta2 must be in [0, 1), got {args.adam_beta2}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be >= 1, got {args.max_train_steps}")


def set_seed(seed: int) -> None:
    """Seed Python's and torch's generators so a run can be repeated."""
    random.seed(seed)
    torch.manual_seed(seed)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a local data file into a list of row dicts.

    ``.csv`` and ``.tsv`` are read with a header row; ``.jsonl`` holds one JSON object per line;
    ``.json`` holds one document (a list of objects, or one object such as a SQuAD v1 file, returned
    as a one-row list) or JSON lines.

    Args:
        path: the file.

    Returns:
        The rows, in file order.

    Raises:
        ValueError: the file is missing, empty, of another format, or not valid JSON.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"data file {str(p)!r} does not exist; pass a local .csv, .tsv, .json or .jsonl file")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with p.open(newline="", encoding="utf-8") as f:
            rows: list[dict[str, Any]] = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix in (".json", ".jsonl"):
        text = p.read_text(encoding="utf-8").strip()
        try:
            whole = json.loads(text) if suffix == ".json" else None  # one document, maybe pretty-printed
        except json.JSONDecodeError:
            whole = None  # not one document: JSON lines
        if whole is not None:
            rows = whole if isinstance(whole, list) else [whole]
        else:
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(p)!r} is neither one JSON document nor JSON lines: {err}") from None
    else:
        raise ValueError(f"data file {str(p)!r} has suffix {suffix!r}; use .csv, .tsv, .json or .jsonl")
    if not rows:
        raise ValueError(f"data file {str(p)!r} holds no rows")
    return rows


@dataclass(frozen=True)
class PruningWindow:
    """The optimizer steps of a run and the pruning window inside it (both ends inclusive)."""

    total_steps: int
    steps_per_epoch: float
    start_step: int
    end_step: int


def pruning_window(
    *,
    batches_per_epoch: int,
    num_epochs: float,
    warm_epochs: float,
    cooldown_epochs: float,
    do_prune: bool,
    max_train_steps: int | None = None,
) -> PruningWindow:
    """The seed's window: ``start = W·I``, ``end = (E − C)·I`` with I optimizer steps per epoch.

    With ``max_train_steps`` the run is cut to that many steps and I becomes
    ``max_train_steps / E``, so warm-up and cooldown keep their share of the (shorter) run.
    ``end`` is clamped to the last step of the run (with C = 0, ``E·I`` is one past it, and a
    pruning step that never comes would leave the target unreached). Without ``do_prune`` the
    window lies past the end (``start = end = total + 1``): the model trains dense.

    Args:
        batches_per_epoch: optimizer steps in one pass over the training data.
        num_epochs: E.
        warm_epochs: W, epochs of dense training before pruning starts.
        cooldown_epochs: C, epochs of training with fixed masks after pruning ends.
        do_prune: whether to prune at all.
        max_train_steps: optional cap on the run's optimizer steps.

    Returns:
        The run's length and its window.

    Raises:
        ValueError: the run has no step.
    """
    total = math.ceil(num_epochs * batches_per_epoch)
    if max_train_steps is not None:
        total = min(total, max_train_steps)
    if total < 1:
        raise ValueError(f"the run has no optimizer step ({batches_per_epoch} batches per epoch); add training data")
    per_epoch = total / num_epochs
    if not do_prune:
        return PruningWindow(total, per_epoch, total + 1, total + 1)
    end = min(int((num_epochs - cooldown_epochs) * per_epoch), total - 1)
    start = min(int(warm_epochs * per_epoch), end)
    return PruningWindow(total, per_epoch, start, end)


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, do_prune: bool, beta2: float | None = None
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, no decay on biases and LayerNorm weights (SPEC §8).

    When pruning, betas are (0.9, 0.9), as in the seed: a shorter second-moment memory follows the
    gradients of a model whose masks keep changing.

    Args:
        model: the student.
        lr: learning rate.
        weight_decay: decay of the other weights.
        do_prune: use the pruning betas.
        beta2: the second beta instead (``--adam_beta2``), e.g. to train a dense control with the
            pruned runs' recipe.

    Returns:
        The optimizer.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # e.g. the frozen classifier under distillation
        (no_decay if any(k in name for k in NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (0.9, beta2) if beta2 is not None else (0.9, 0.9) if do_prune else (0.9, 0.999)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def hidden_state_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight · MSE(student, teacher)`` of the last hidden states (GLUE distillation, SPEC §8).

    With the classifier frozen, matching the teacher's features lets the student reuse the
    teacher's classifier ("Knowledge Distillation with the Reused Teacher Classifier", Chen et al.
    2022, arXiv:2203.14001).
    """
    return weight * F.mse_loss(student_hidden, teacher_hidden)


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """``T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, averaged over the batch.

    The T² factor keeps the gradient scale independent of T (Hinton et al. 2015, arXiv:1503.02531).

    Args:
        student_logits: [batch, classes].
        teacher_logits: same shape, no gradient needed.
        temperature: T.

    Returns:
        A scalar loss.
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def save_outputs(
    output_dir: str | os.PathLike[str],
    model: nn.Module,
    tokenizer: Any,
    results: dict[str, Any],
    report_json: str | None = None,
) -> Path:
    """Save the model and tokenizer with ``save_pretrained`` and the results as ``results.json``.

    Args:
        output_dir: created if missing.
        model: a transformers model (its pruned weights hold exact zeros).
        tokenizer: its tokenizer.
        results: metrics and ratios, JSON-serialisable.
        report_json: optional per-layer report, written as ``pruning_report.json``.

    Returns:
        The path of ``results.json``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if report_json is not None:
        (out / "pruning_report.json").write_text(report_json + "\n", encoding="utf-8")
    return path


def finish_run(
    args: argparse.Namespace,
    model: nn.Module,
    tokenizer: Any,
    pruning: Any,
    window: Any,
    losses: list[float],
    evaluate: Callable[[], dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate; print the metric, the sparsity ratios and the per-layer report; with ``--slim``,
    slim the model and evaluate it again; save everything.

    Args:
        extra: more results of the script (e.g. the one-shot prune of ``run_clm_no_trainer.py``),
            merged into ``results.json``.

    Returns:
        The results written to ``results.json`` (metrics, steps, window, ratios; ``slim`` with
        ``--slim``; the keys of *extra*).
    """
    metrics = evaluate()
    results: dict[str, Any] = {
        "task_name": args.task_name,
        "metrics": metrics,
        "steps": len(losses),
        "final_loss": losses[-1] if losses else None,
        "do_prune": args.do_prune,
        "distill_loss_weight": args.distill_loss_weight,
        "window": {"start_step": window.start_step, "end_step": window.end_step},
        "sparsity_ratios": None,
        **(extra or {}),
    }
    print("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    report_json = None
    if pruning is not None:
        ratios = pruning.get_sparsity_ratio()
        results["sparsity_ratios"] = ratios._asdict()
        print("sparsity ratios: " + ", ".join(f"{k} {v:.4f}" for k, v in ratios._asdict().items()))
        report = pruning.report()
        print(report)
        report_json = report.to_json(indent=2)
    if getattr(args, "slim", False):
        results["slim"] = slim_and_evaluate(model, evaluate)
    save_outputs(args.output_dir, model, tokenizer, results, report_json)
    print(f"saved model, tokenizer and results.json to {args.output_dir}")
    if "slim" in results:
        print(f"load the slimmed model with pytorch_pruner.speed.load_slimmed(<model class>, {args.output_dir!r})")
    return results


def slim_and_evaluate(model: nn.Module, evaluate: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """Remove the pruned FFN neurons and attention heads of *model* (in place) and evaluate it again.

    Returns:
        Parameters before and after, units removed, per-layer sizes, what was kept and why, and
        the metrics of the slimmed model (equal to the pruned model's up to float rounding).
    """
    from pytorch_pruner.speed import slim_

    before = sum(p.numel() for p in model.parameters())
    report = slim_(model.eval())
    after = sum(p.numel() for p in model.parameters())
    print(f"slimmed: {before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters, {report.removed} units removed")
    print(report)
    if not report.removed:
        print(
            "warning: --slim found nothing to remove; prune layer.N.output.dense with channelx1 (FFN neurons) or "
            "attention.output.dense with head:<head_dim> (heads) to get a smaller model",
            file=sys.stderr,
        )
    metrics = evaluate()
    print("eval after slimming: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return {
        "parameters_before": before,
        "parameters_after": after,
        "units_removed": report.removed,
        "layers": [asdict(s) for s in report.slimmed],
        "kept": [{"name": name, "reason": reason} for name, reason in report.skipped],
        "metrics": metrics,
    }


def batches(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """Split *items*, in order, into lists of at most *batch_size* (the last may be shorter)."""
    return [list(items[k : k + batch_size]) for k in range(0, len(items), batch_size)]


def train(
    *,
    model: nn.Module,
    epoch_batches: Any,
    loss_fn: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    pruning: Any,
    total_steps: int,
    num_epochs: float,
    evaluate: Any = None,
) -> list[float]:
    """The seed's training loop with the pruning hooks (SPEC §2), one optimizer step per batch.

    Args:
        model: the student, switched to train mode here.
        epoch_batches: ``epoch_batches(epoch) -> list of batches`` (reshuffled each epoch).
        loss_fn: ``loss_fn(batch) -> scalar loss`` (task loss or distillation loss).
        optimizer: its optimizer.
        scheduler: learning-rate scheduler, stepped after the optimizer.
        pruning: a ``Pruning`` already started with ``on_train_begin``, or None to train dense.
        total_steps: stop after this many optimizer steps.
        num_epochs: epochs to run (the last one may be partial).
        evaluate: optional ``evaluate(epoch)`` called after each epoch.

    Returns:
        The loss of every optimizer step.
    """
    from tqdm.auto import tqdm

    losses: list[float] = []
    bar = tqdm(total=total_steps, desc="train", unit="step")
    epoch = 0
    while len(losses) < total_steps and epoch < math.ceil(num_epochs):
        model.train()
        if pruning is not None:
            pruning.on_epoch_begin(epoch)
        for step, batch in enumerate(epoch_batches(epoch)):
            if len(losses) >= total_steps:
                break
            if pruning is not None:
                pruning.on_step_begin(step)
            loss = loss_fn(batch)
            loss.backward()
            if pruning is not None:
                pruning.on_before_optimizer_step()
            optimizer.step()
            if pruning is not None:
                pruning.on_after_optimizer_step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if pruning is not None:
            pruning.on_epoch_end()
        if evaluate is not None:
            evaluate(epoch)
        epoch += 1
    bar.close()
    if pruning is not None:
        pruning.on_train_end()
    return losses
