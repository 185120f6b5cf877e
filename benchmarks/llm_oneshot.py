"""LLM recipe benchmark: one-shot pruning (magnitude, Wanda, SparseGPT, OWL) then sparse fine-tuning.

Not a test: it trains a small language model (once, cached) and prints a table.

* **Text** (offline, nothing downloaded): the whole docstrings of the public functions and classes
  of seven installed packages (numpy, scipy, sympy, scikit-learn, networkx, matplotlib, torch),
  read with ``ast`` by ``benchmarks/quality.py`` (nothing is imported), markup removed. Real
  technical English with code snippets, written by many people. 1 text in 20 (by a hash of the
  text, so the same on every machine with the same package versions) is held out for perplexity.
* **Tokenizer**: byte-level BPE (1024 tokens with ``<pad> <s> </s>``) trained with ``tokenizers``
  on the training texts; each text is followed by ``</s>``, all are concatenated and cut into
  blocks of 64 tokens.
* **Model** (the defaults): a Llama (``LlamaForCausalLM``, transformers) trained from scratch here:
  hidden 128, 4 layers, 4 query heads and 2 key/value heads (grouped-query attention, head dim
  32), SwiGLU FFN 384 wide, vocabulary 1024, context 64, untied ``lm_head``: 1.05M parameters.
  Training: 1200 AdamW steps (lr 3e-3, betas 0.9/0.95, weight decay 0.1, 5% warm-up then cosine,
  gradient clipping 1.0) of 16 random blocks (1.23M tokens, under a fifth of one epoch). The model
  and ``trained.json`` (steps, seconds, held-out perplexity) are cached in ``--cache_dir/model``:
  reruns skip training.
* **Held-out perplexity**: the first 1024 held-out blocks (65536 tokens, ``--eval_blocks``), the
  same for every row.
* **One-shot** (each in its own process, so wall time and memory are its own; 1 torch thread,
  ``--threads``): 128 calibration sequences of 64 training tokens (the same for every method, in
  batches of 16), every ``Linear`` of the decoder blocks pruned (q, k, v, o, gate, up, down;
  ``lm_head`` and embeddings stay dense), 50% unstructured and 2:4. Ours: ``prune_oneshot_`` with
  ``magnitude`` (per layer), ``wanda`` (per output row), ``sparsegpt``, and OWL (λ 0.08, M 5) on
  wanda and sparsegpt at 50%. The reference: llm-compressor's ``SparseGPTModifier`` and
  ``WandaPruningModifier`` through its ``oneshot`` (sequential pipeline, same targets, same
  calibration tokens), run by the Python of a separate venv (``--llmcompressor_python``) so its
  dependencies (it pins ``transformers<=5.17``) leave this one alone.
* **Columns**: held-out perplexity; one-shot wall time (the whole ``prune_oneshot_`` /
  ``oneshot`` call, model already loaded); peak resident memory of the process above its level
  with the dense model and calibration data loaded (``/proc/self/status`` VmHWM after resetting
  it through ``/proc/self/clear_refs``; on CUDA: peak allocated above allocated).
* **Fine-tuning**: each of our pruned models then trains a fixed budget (``--finetune_steps`` 200
  AdamW steps of 8 blocks, lr 1e-4) with ``prune_type: pattern_lock`` (the zeros stay) and the loss
  ``CE + T²·KL(teacher ‖ student)`` (T = 2) against the dense model; the table adds the perplexity
  after and the share of the one-shot gap to dense that fine-tuning closed. The dense row's
  fine-tuned perplexity is the control: the dense model after the same fine-tuning (without
  pruning), since more training alone may lower the perplexity of a small, briefly trained model.

Run::

    make install                                  # .venv: torch, transformers, tokenizers, the docstring libraries
    python -m venv .venv-llmc && .venv-llmc/bin/pip install -c constraints.txt llmcompressor==0.14.0.1
    .venv/bin/python benchmarks/llm_oneshot.py    # trains once into runs/llm_small (cached), then the table
    .venv/bin/python benchmarks/llm_oneshot.py --methods sparsegpt --patterns 2:4 --finetune_steps 0  # one row
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: everything is local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
SPECIALS = ["<pad>", "<s>", "</s>"]
OURS = ("magnitude", "wanda", "sparsegpt", "wanda+owl", "sparsegpt+owl")
REFERENCE = ("llmc-wanda", "llmc-sparsegpt")


# -- data ------------------------------------------------------------------------------------------
def corpus(cache: Path) -> tuple[list[str], list[str]]:
    """Training and held-out texts (cached in *cache* as ``train.txt`` / ``test.txt``, one per line)."""
    train_file, test_file = cache / "train.txt", cache / "test.txt"
    if not (train_file.is_file() and test_file.is_file()):
        sys.path.insert(0, str(HERE.parent))
        import quality  # the docstring reader of the quality benchmark

        texts = sorted(set().union(*(quality.library_docstrings(lib, whole=True) for lib in quality.LIBRARIES)))
        held_out = [t for t in texts if int(hashlib.md5(t.encode()).hexdigest(), 16) % 20 == 0]
        kept = set(held_out)
        train = [t for t in texts if t not in kept]
        cache.mkdir(parents=True, exist_ok=True)
        train_file.write_text("\n".join(train) + "\n", encoding="utf-8")
        test_file.write_text("\n".join(held_out) + "\n", encoding="utf-8")
    read = lambda p: [line for line in p.read_text(encoding="utf-8").splitlines() if line]  # noqa: E731
    return read(train_file), read(test_file)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on *texts*, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def token_blocks(tokenizer: Any, texts: Sequence[str], block_size: int) -> Any:
    """The texts tokenized, each followed by ``</s>``, concatenated and cut into ``[n, block_size]``."""
    import torch

    ids: list[int] = []
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def llama_config(tokenizer: Any, args: argparse.Namespace) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=args.block_size,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Text, tokenizer, token blocks, calibration set and the trained dense model (all cached)."""
    import torch

    cache = Path(args.cache_dir)
    model_dir = cache / "model"
    train_texts, test_texts = corpus(cache)
    if (model_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(train_texts, args.vocab_size)
        model_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(model_dir)
        print(f"tokenizer: {len(tokenizer)} tokens, trained in {time.perf_counter() - t0:.0f} s", flush=True)
    blocks_file = cache / f"blocks_{args.block_size}.pt"
    if blocks_file.is_file():
        blocks = torch.load(blocks_file)
    else:
        blocks = {
            "train": token_blocks(tokenizer, train_texts, args.block_size),
            "test": token_blocks(tokenizer, test_texts, args.block_size),
        }
        torch.save(blocks, blocks_file)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(blocks["train"]), generator=gen)
    calib = blocks["train"][order[: args.calibration_samples]].clone()
    finetune_pool = blocks["train"][order[args.calibration_samples :]]
    test = blocks["test"][: args.eval_blocks]
    calib_file = cache / f"calibration_{args.calibration_samples}x{args.block_size}.pt"
    torch.save(calib, calib_file)
    info = {
        "texts": (len(train_texts), len(test_texts)),
        "tokens": (blocks["train"].numel(), test.numel()),
        "calib_file": calib_file,
        "model_dir": model_dir,
        "tokenizer": tokenizer,
        "test": test,
        "finetune_pool": finetune_pool,
        "train": blocks["train"],
    }
    if not (model_dir / "trained.json").is_file():
        train_dense(info, args)
    info["trained"] = json.loads((model_dir / "trained.json").read_text())
    cached, wanted = info["trained"].get("config"), training_config(args)
    if cached != wanted:
        diff = {
            k: (cached.get(k) if cached else None, v) for k, v in wanted.items() if not cached or cached.get(k) != v
        }
        raise SystemExit(
            f"{model_dir} holds a model trained with other settings (cached, asked for): {diff}; pass another "
            "--cache_dir to train one with these settings, or the cached settings to use it"
        )
    return info


def training_config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that make the trained model (a cached model is used only if they match)."""
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")
    keys += ("block_size", "train_steps", "train_batch_size", "train_lr", "seed")
    return {k: getattr(args, k) for k in keys}


def train_dense(info: dict[str, Any], args: argparse.Namespace) -> None:
    """Train the Llama from scratch on the training blocks and save it with its tokenizer."""
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM, get_cosine_schedule_with_warmup

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(llama_config(info["tokenizer"], args))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training a {n_params / 1e6:.2f}M-parameter Llama for {args.train_steps} steps", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.train_lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = get_cosine_schedule_with_warmup(opt, args.train_steps // 20, args.train_steps)
    data = info["train"]
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(args.train_steps), desc="train dense", mininterval=10)
    for _ in bar:
        batch = data[torch.randint(len(data), (args.train_batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    seconds = time.perf_counter() - t0
    model.save_pretrained(info["model_dir"])
    ppl = perplexity(model, info["test"], args.eval_batch_size)
    record = {
        "parameters": n_params,
        "steps": args.train_steps,
        "tokens_seen": args.train_steps * args.train_batch_size * args.block_size,
        "seconds": round(seconds),
        "test_perplexity": ppl,
        "config": training_config(args),
    }
    (info["model_dir"] / "trained.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained in {seconds:.0f} s, held-out perplexity {ppl:.2f}", flush=True)


def perplexity(model: Any, blocks: Any, batch_size: int) -> float:
    """exp(mean next-token cross-entropy) over all predicted tokens of *blocks*."""
    import torch

    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(device)
            loss = model(input_ids=batch, labels=batch).loss
            n = batch.numel() - batch.shape[0]
            total += float(loss) * n
            count += n
    return math.exp(total / count)


# -- one-shot workers (run in a child process) ---------------------------------------------------
def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


@contextlib.contextmanager
def peak_above(device: str) -> Iterator[dict[str, float]]:
    """Measure the peak memory of the block above the level at its start (bytes, in the dict)."""
    import torch

    out: dict[str, float] = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        return
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    base = _status("VmRSS")
    yield out
    out["peak_bytes"] = _status("VmHWM") - base


def ours_config(method: str, pattern: str, sparsity: float) -> dict[str, Any]:
    """Our one-shot config for *method* (``wanda``, ``sparsegpt``, ``magnitude``, ``+owl``)."""
    criterion, _, owl = method.partition("+")
    config: dict[str, Any] = {
        "prune_type": criterion,
        "pattern": "1x1" if pattern == "unstructured" else pattern,
        "target_sparsity": sparsity,
        "prune_layer_type": ["Linear"],
        "not_to_prune_names": ["lm_head"],
        "prune_domain": {"magnitude": "local", "wanda": "row", "sparsegpt": "local"}[criterion],
    }
    if owl:
        config["owl"] = True
    return config


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the dense model, prune it one-shot as *spec* says, save it; return time and memory."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(device)
    calib = torch.load(spec["calib_file"])
    method, pattern, sparsity = spec["method"], spec["pattern"], spec["sparsity"]
    batch = spec["calibration_batch_size"]
    if method.startswith("llmc-"):
        run = _llmcompressor(model, calib, method, pattern, sparsity, spec)
    else:
        from pytorch_pruner import prune_oneshot_

        config = ours_config(method, pattern, sparsity)
        batches = [calib[i : i + batch].to(device) for i in range(0, len(calib), batch)]

        def run() -> None:
            prune_oneshot_(model, config, batches, progress=False)

    with peak_above(device) as mem:
        t0 = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    model.save_pretrained(spec["out_dir"])
    return {"seconds": seconds, "peak_bytes": mem["peak_bytes"]}


def _llmcompressor(model: Any, calib: Any, method: str, pattern: str, sparsity: float, spec: dict[str, Any]) -> Any:
    """A closure that runs llm-compressor's one-shot SparseGPT or Wanda on *model* (in place)."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    modifier_class = {"llmc-sparsegpt": SparseGPTModifier, "llmc-wanda": WandaPruningModifier}[method]
    modifier = modifier_class(
        sparsity=sparsity,
        mask_structure="0:0" if pattern == "unstructured" else pattern,
        targets=["Linear"],
        ignore=["re:.*lm_head"],
    )
    data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": [[1] * calib.shape[1]] * len(calib)})

    def run() -> None:
        oneshot(
            model=model,
            dataset=data,
            recipe=modifier,
            num_calibration_samples=len(calib),
            max_seq_length=calib.shape[1],
            shuffle_calibration_samples=False,
            batch_size=spec["calibration_batch_size"],
            pipeline="sequential",
        )

    return run


def run_worker(spec: dict[str, Any], python: str) -> dict[str, Any]:
    """Run :func:`worker` in a child process with *python*; return its result."""
    proc = subprocess.run(
        [python, str(HERE), "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['method']} {spec['pattern']} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- sparse fine-tuning ------------------------------------------------------------------------
def finetune(model: Any, teacher: Any, pool: Any, args: argparse.Namespace) -> None:
    """``finetune_steps`` AdamW steps with pattern_lock (zeros kept) and CE + T²·KL to the teacher."""
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from utils_distill import logit_kd

    from pytorch_pruner import Pruning

    pruning = Pruning(
        {
            "prune_type": "pattern_lock",
            "pattern": "1x1",
            "prune_layer_type": ["Linear"],
            "not_to_prune_names": ["lm_head"],
        }
    )
    pruning.on_train_begin(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.finetune_lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    for step in range(args.finetune_steps):
        batch = pool[torch.randint(len(pool), (args.finetune_batch_size,), generator=gen)]
        pruning.on_step_begin(step)
        out = model(input_ids=batch, labels=batch)
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch).logits
        vocab = out.logits.shape[-1]
        kd = logit_kd(out.logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), args.temperature)
        (out.loss + args.distill_loss_weight * kd).backward()
        pruning.on_before_optimizer_step()
        opt.step()
        pruning.on_after_optimizer_step()
        opt.zero_grad(set_to_none=True)
    pruning.on_train_end()


# -- the table ---------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache_dir", default="runs/llm_small", help="corpus, tokenizer, trained model, pruned models")
    parser.add_argument(
        "--methods", default=",".join(OURS + REFERENCE), help="comma-separated, of " + ", ".join(OURS + REFERENCE)
    )
    parser.add_argument("--patterns", default="unstructured,2:4", help="unstructured and/or N:M")
    parser.add_argument("--sparsity", type=float, default=0.5, help="target of the unstructured runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of training and of every one-shot process (1: on a shared machine, more threads than "
        "free cores make every step several times slower)",
    )
    parser.add_argument("--llmcompressor_python", default=str(ROOT / ".venv-llmc" / "bin" / "python"))
    # model and training
    parser.add_argument("--vocab_size", type=int, default=1024)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--intermediate_size", type=int, default=384)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_kv_heads", type=int, default=2)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--train_steps", type=int, default=1200)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--train_lr", type=float, default=3e-3)
    # one-shot, evaluation, fine-tuning
    parser.add_argument("--calibration_samples", type=int, default=128)
    parser.add_argument("--calibration_batch_size", type=int, default=16)
    parser.add_argument("--eval_blocks", type=int, default=1024, help="held-out blocks of block_size tokens")
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--finetune_steps", type=int, default=200)
    parser.add_argument("--finetune_batch_size", type=int, default=8)
    parser.add_argument("--finetune_lr", type=float, default=1e-4)
    parser.add_argument("--distill_loss_weight", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--prepare_only", action="store_true", help="build the corpus and train the model, then stop")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return []
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(OURS + REFERENCE))
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; use some of {', '.join(OURS + REFERENCE)}")
    patterns = [p for p in args.patterns.split(",") if p]
    llmc = any(m in REFERENCE for m in methods)
    if llmc and not Path(args.llmcompressor_python).is_file():
        raise SystemExit(
            f"{args.llmcompressor_python} not found: make the reference's venv (see the module docstring) or "
            "leave llmc-* out of --methods"
        )
    info = prepare(args)
    trained = info["trained"]
    if args.prepare_only:
        return []
    print(
        f"text: {info['texts'][0]} training / {info['texts'][1]} held-out docstrings, {info['tokens'][0]} training "
        f"tokens, {info['tokens'][1]} held-out tokens scored; model: {trained['parameters'] / 1e6:.2f}M parameters, "
        f"{trained['steps']} steps ({trained['tokens_seen']} tokens) in {trained['seconds']} s",
        flush=True,
    )
    dense = AutoModelForCausalLM.from_pretrained(info["model_dir"], dtype=torch.float32).to(args.device)
    dense.requires_grad_(False)
    dense_ppl = perplexity(dense, info["test"].to(args.device), args.eval_batch_size)
    rows: list[dict[str, Any]] = [{"method": "dense", "pattern": "-", "perplexity": dense_ppl}]
    print(f"dense perplexity {dense_ppl:.3f}", flush=True)
    if args.finetune_steps > 0:
        # the control: the same fine-tuning of the dense model (more training alone may lower perplexity)
        control = copy.deepcopy(dense).requires_grad_(True)
        finetune(control, dense, info["finetune_pool"].to(args.device), args)
        rows[0]["finetuned"] = perplexity(control, info["test"].to(args.device), args.eval_batch_size)
        del control
        print(json.dumps(rows[0]), flush=True)
    work = Path(args.cache_dir) / "pruned"
    for pattern in patterns:
        sparsity = 0.5 if pattern != "unstructured" else args.sparsity
        for method in methods:
            if "+owl" in method and pattern != "unstructured":
                continue  # OWL gives layers different sparsities: N:M has one
            spec = {
                "method": method,
                "pattern": pattern,
                "sparsity": sparsity,
                "device": args.device,
                "threads": args.threads,
                "model_dir": str(info["model_dir"]),
                "calib_file": str(info["calib_file"]),
                "calibration_batch_size": args.calibration_batch_size,
                "out_dir": str(work / f"{method}_{pattern.replace(':', 'in')}"),
            }
            python = args.llmcompressor_python if method in REFERENCE else sys.executable
            result = run_worker(spec, python)
            model = AutoModelForCausalLM.from_pretrained(spec["out_dir"], dtype=torch.float32).to(args.device)
            ppl = perplexity(model, info["test"].to(args.device), args.eval_batch_size)
            row = {
                "method": method,
                "pattern": pattern,
                "perplexity": ppl,
                "oneshot_s": result["seconds"],
                "peak_mib": result["peak_bytes"] / 2**20,
                "sparsity": _block_sparsity(model),
            }
            if method in OURS and args.finetune_steps > 0:
                t0 = time.perf_counter()
                finetune(model, dense, info["finetune_pool"].to(args.device), args)
                row["finetune_s"] = time.perf_counter() - t0
                row["sparsity_after"] = _block_sparsity(model)
                row["finetuned"] = perplexity(model, info["test"].to(args.device), args.eval_batch_size)
                row["gap_closed"] = (ppl - row["finetuned"]) / (ppl - dense_ppl) if ppl > dense_ppl else float("nan")
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _block_sparsity(model: Any) -> float:
    """Share of zeros over the Linear weights of the decoder blocks."""
    import torch

    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from tabulate import tabulate

    def fmt(v: Any, spec: str) -> str:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    table = [
        [
            r["method"],
            r["pattern"],
            fmt(r.get("sparsity"), ".3f"),
            fmt(r["perplexity"], ".2f"),
            fmt(r.get("oneshot_s"), ".1f"),
            fmt(r.get("peak_mib"), ".0f"),
            fmt(r.get("finetuned"), ".2f"),
            fmt(r.get("gap_closed"), ".0%"),
        ]
        for r in rows
    ]
    headers = ["method", "pattern", "sparsity", "perplexity", "one-shot s", "peak MiB", "fine-tuned ppl", "gap closed"]
    print()
    print(
        f"held-out perplexity; one-shot wall time and peak memory above the loaded dense model "
        f"({args.device}, {args.threads} threads); fine-tuning: {args.finetune_steps} steps x "
        f"{args.finetune_batch_size} x {args.block_size} tokens, pattern_lock, CE + {args.distill_loss_weight:g}·T²·KL "
        f"(T = {args.temperature:g})"
    )
    print(tabulate(table, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
