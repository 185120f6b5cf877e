"""Prune a causal language model one-shot, then fine-tune it with its zeros kept (the LLM recipe).

In the style of the seed's scripts, offline: the model is a local folder written by
``save_pretrained`` (a Llama, GPT-2, ... any ``AutoModelForCausalLM``) and the data are local
files: ``.txt`` (one text per line) or ``.csv`` / ``.json`` / ``.jsonl`` with a ``text`` column
(``--text_column``). Texts are tokenized, each followed by the end-of-sequence token, concatenated
and cut into blocks of ``--block_size`` tokens (the remainder is dropped), as ``run_clm`` does.
Example::

    python examples/run_clm_no_trainer.py --model_name_or_path ./my-llama \\
        --train_file train.txt --validation_file valid.txt --block_size 512 \\
        --oneshot_config examples/llama_sparsegpt_2in4.yaml --num_calibration_samples 128 \\
        --pruning_config examples/llama_pattern_lock.yaml --do_prune \\
        --distill_loss_weight 1.0 --learning_rate 1e-4 --num_train_epochs 1 --output_dir pruned-llama

The steps:

1. ``--oneshot_config``: prune now with ``prune_oneshot_`` (``sparsegpt``, ``wanda`` or
   ``magnitude``; OWL with ``owl: true``), calibrated on the first ``--num_calibration_samples``
   blocks of the (shuffled) training data. Its per-layer report is printed.
2. ``--pruning_config`` with ``--do_prune``: prune while training. After a one-shot prune use
   ``prune_type: pattern_lock`` (``llama_pattern_lock.yaml``): the zeros stay exactly zero and the
   kept weights train. Fine-tuning a one-shot pruned model without it would refill the zeros, so
   that is refused; ``--max_train_steps 0`` prunes and evaluates without training.
3. ``--slim`` (after fine-tuning): remove the pruned MLP channels and query heads with
   :func:`pytorch_pruner.speed.slim_` (a smaller dense model computing the pruned model's outputs;
   perplexity is evaluated again), saved for ``pytorch_pruner.speed.load_slimmed``. It needs a
   channel or head pattern in one of the configs (e.g. ``channelx1`` on ``mlp.down_proj``,
   ``gqa_head:<head_dim>:<group>`` on ``self_attn.o_proj``, one-shot with ``magnitude`` or ``wanda``,
   then ``pattern_lock`` keeps those zeros); with only unstructured or N:M patterns it says so and
   saves the model unslimmed.
4. ``--distill_loss_weight w > 0``: the loss is ``CE + w · T² · KL(teacher ‖ student)`` on the
   next-token logits (T = ``--distill_temperature``); the teacher is the model as loaded (dense,
   before the one-shot prune) or ``--teacher_model_name_or_path``.

Perplexity (``exp`` of the mean next-token cross-entropy on the validation blocks) is printed
before pruning, after the one-shot prune and after training; ``results.json`` in
``--output_dir`` holds all three, next to the model and tokenizer.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the seed's flags plus the causal-LM ones; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oneshot_config", default=None, help="pytorch-pruner YAML for prune_oneshot_ (step 1)")
    parser.add_argument("--num_calibration_samples", type=int, default=128, help="blocks of training data for step 1")
    parser.add_argument(
        "--block_size", type=int, default=None, help="tokens per block; default min(1024, the model's context length)"
    )
    parser.add_argument("--text_column", default="text", help="column of .csv/.json/.jsonl files holding the text")
    parser.add_argument("--distill_temperature", type=float, default=2.0, help="T of the logit distillation")
    add_common_args(parser)
    args = parser.parse_args(argv)
    args.task_name = "clm"
    return args


def read_texts(path: str, column: str) -> list[str]:
    """The texts of a local data file: the lines of a ``.txt`` file, else the *column* of each row.

    Raises:
        ValueError: the file is missing, empty, or a row lacks the column.
    """
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise ValueError(f"data file {path!r} does not exist; pass a local .txt, .csv, .json or .jsonl file")
        texts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"data file {path!r} holds no text")
        return texts
    rows = read_records(path)
    for i, row in enumerate(rows):
        if not isinstance(row.get(column), str):
            raise ValueError(
                f"{path}: row {i} has no text column {column!r} (columns: {list(row)}); pass --text_column"
            )
    return [row[column] for row in rows]


def group_texts(tokenizer: Any, texts: Sequence[str], block_size: int) -> torch.Tensor:
    """Tokenize, end each text with the end-of-sequence token (if the tokenizer has one),
    concatenate and cut into ``[n_blocks, block_size]``; the remainder is dropped."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for enc in tokenizer(list(texts))["input_ids"]:
        ids.extend(enc)
        if eos is not None and (not enc or enc[-1] != eos):
            ids.append(eos)
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def clm_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    teacher: torch.nn.Module | None,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """Next-token cross-entropy, plus ``weight · T² · KL`` to the teacher's logits when there is one."""
    out = model(input_ids=input_ids, labels=input_ids)
    if teacher is None:
        return out.loss
    with torch.no_grad():
        target = teacher(input_ids=input_ids).logits
    vocab = out.logits.shape[-1]
    return out.loss + weight * logit_kd(out.logits.reshape(-1, vocab), target.reshape(-1, vocab), temperature)


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int) -> dict[str, float]:
    """``exp`` of the mean next-token cross-entropy over every predicted token of *blocks*."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size].to(device)
        n = batch.numel() - batch.shape[0]  # the first token of each block is not predicted
        total += float(model(input_ids=batch, labels=batch).loss) * n
        count += n
    loss = total / count
    return {"perplexity": math.exp(loss), "eval_loss": loss}


def check_clm_args(args: argparse.Namespace) -> None:
    """Check the flags before any model is loaded.

    Raises:
        ValueError: a flag is out of range or the combination would silently undo the pruning.
    """
    if args.slim and not (args.oneshot_config or args.pruning_config):
        raise ValueError(
            "--slim removes the MLP channels and attention heads pruning zeroed: it needs --oneshot_config and/or "
            "--pruning_config with channelx1 on mlp.down_proj and/or gqa_head:<head_dim>:<group> on self_attn.o_proj"
        )
    train_steps, slim = args.max_train_steps, args.slim
    if train_steps == 0:
        args.max_train_steps = None  # the shared checks want >= 1; 0 means "no training" here
    args.slim = False  # checked above: here a one-shot config alone may make the structure to slim
    check_common_args(args)
    args.max_train_steps, args.slim = train_steps, slim
    if args.train_file is None or args.validation_file is None:
        raise ValueError(
            "pass --train_file and --validation_file (local .txt, or .csv/.json/.jsonl with a text column); "
            "this example never downloads data"
        )
    if args.num_calibration_samples < 1:
        raise ValueError(f"--num_calibration_samples must be >= 1, got {args.num_calibration_samples}")
    if args.block_size is not None and args.block_size < 2:
        raise ValueError(f"--block_size must be >= 2, got {args.block_size}")
    if args.oneshot_config and train_steps != 0 and not (args.pruning_config and args.do_prune):
        raise ValueError(
            "fine-tuning after --oneshot_config without pruning would refill its zeros; add --pruning_config "
            "examples/llama_pattern_lock.yaml --do_prune (prune_type pattern_lock keeps them), or --max_train_steps 0 "
            "to prune and evaluate only"
        )


def structured_patterns(*configs: str | None) -> list[str]:
    """The channel and head patterns (those :func:`pytorch_pruner.speed.slim_` can remove) of *configs*."""
    from pytorch_pruner.config import load_config
    from pytorch_pruner.patterns import ChannelGroup, GroupedHeads

    return [
        s.pattern.name
        for config in configs
        if config
        for s in load_config(config).resolved()
        if isinstance(s.pattern, ChannelGroup | GroupedHeads)
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; return the results also written to ``<output_dir>/results.json``.

    Raises:
        ValueError: a flag, a data file or the pruning window is invalid (the message says which).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from pytorch_pruner import Pruning, prune_oneshot_

    args = parse_args(argv)
    check_clm_args(args)
    if args.slim and not structured_patterns(args.oneshot_config, args.pruning_config):
        print(
            "--slim: skipped, nothing to slim: no pruner of --oneshot_config / --pruning_config uses a channel or "
            "head pattern, and unstructured or N:M zeros leave every row and column in use, so no layer can get "
            "smaller. To slim, prune mlp.down_proj with channelx1 (MLP channels) and/or self_attn.o_proj with "
            "gqa_head:<head_dim>:<group> (query heads); the model is saved unslimmed",
            file=sys.stderr,
        )
        args.slim = False
    set_seed(args.seed)
    train_texts = read_texts(args.train_file, args.text_column)
    eval_texts = read_texts(args.validation_file, args.text_column)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
    context = getattr(model.config, "max_position_embeddings", None) or 1024
    block_size = args.block_size or min(1024, context)
    if block_size > context:
        raise ValueError(f"--block_size {block_size} exceeds the model's context length {context}; lower it")
    train_blocks = group_texts(tokenizer, train_texts, block_size)
    eval_blocks = group_texts(tokenizer, eval_texts, block_size)
    for name, blocks in (("--train_file", train_blocks), ("--validation_file", eval_blocks)):
        if len(blocks) == 0:
            raise ValueError(f"{name} holds fewer tokens than one block of {block_size}; lower --block_size")
    gen = torch.Generator().manual_seed(args.seed)
    train_blocks = train_blocks[torch.randperm(len(train_blocks), generator=gen)]

    teacher = None
    if args.distill_loss_weight > 0:
        teacher = (
            AutoModelForCausalLM.from_pretrained(args.teacher_model_name_or_path)
            if args.teacher_model_name_or_path
            else copy.deepcopy(model)  # the dense model, before the one-shot prune
        )
        teacher.eval().requires_grad_(False)

    bs = args.per_device_eval_batch_size
    extra: dict[str, Any] = {"block_size": block_size, "perplexity_before": perplexity(model, eval_blocks, bs)}
    print(f"perplexity before pruning: {extra['perplexity_before']['perplexity']:.3f}")
    if args.oneshot_config:
        calib = train_blocks[: args.num_calibration_samples]
        if len(calib) < args.num_calibration_samples:
            print(
                f"warning: the training data hold {len(calib)} blocks of {block_size} tokens, fewer than "
                f"--num_calibration_samples {args.num_calibration_samples}; calibrating on all of them",
                file=sys.stderr,
            )
        batches = [
            calib[i : i + args.per_device_train_batch_size]
            for i in range(0, len(calib), args.per_device_train_batch_size)
        ]
        report = prune_oneshot_(model, args.oneshot_config, batches)
        print(report)
        extra["oneshot"] = {
            "calibration_blocks": len(calib),
            "seconds": report.seconds,
            "sparsity": report.sparsity,
            "perplexity": perplexity(model, eval_blocks, bs),
        }
        print(f"perplexity after the one-shot prune: {extra['oneshot']['perplexity']['perplexity']:.3f}")

    window = pruning_window(
        batches_per_epoch=math.ceil(len(train_blocks) / args.per_device_train_batch_size),
        num_epochs=args.num_train_epochs,
        warm_epochs=args.sparsity_warm_epochs,
        cooldown_epochs=args.cooldown_epochs,
        do_prune=args.do_prune,
        max_train_steps=args.max_train_steps or None,
    )
    pruning = None
    if args.pruning_config:
        pruning = Pruning(args.pruning_config)
        pruning.update_items_for_all_pruners(start_step=window.start_step, end_step=window.end_step)
        pruning.model = model
        pruning.on_train_begin()

    losses: list[float] = []
    if args.max_train_steps != 0:
        optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, args.do_prune)
        scheduler = get_scheduler(
            "linear", optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=window.total_steps
        )

        def epoch_batches(epoch: int) -> list[torch.Tensor]:
            order = torch.randperm(len(train_blocks), generator=gen)
            b = args.per_device_train_batch_size
            return [train_blocks[order[i : i + b]] for i in range(0, len(order), b)]

        def loss_fn(batch: torch.Tensor) -> torch.Tensor:
            return clm_loss(model, batch, teacher, args.distill_loss_weight, args.distill_temperature)

        losses = train(
            model=model,
            epoch_batches=epoch_batches,
            loss_fn=loss_fn,
            optimizer=optimizer,
            scheduler=scheduler,
            pruning=pruning,
            total_steps=window.total_steps,
            num_epochs=args.num_train_epochs,
        )
    return finish_run(
        args, model, tokenizer, pruning, window, losses, lambda: perplexity(model, eval_blocks, bs), extra
    )


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a bad flag or data file: the message says what to fix
        sys.exit(f"error: {err}")
