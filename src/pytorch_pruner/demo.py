"""A real pruning run in under a minute on a laptop CPU: a small CNN on scikit-learn's digits.

Run it with ``python -m pytorch_pruner.demo`` (needs the ``demo`` extra: scikit-learn, tabulate).
It trains the CNN dense, then fine-tunes it while pruning 80% of the conv and hidden Linear weights
in 4x1 blocks with snip_momentum on an exp schedule, and prints dense vs sparse test accuracy and
the per-layer sparsity report.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from . import Pruning, PruningConfig
from .errors import install_hint


def load_digits_tensors(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's 1,797 8x8 handwritten digits, split 75/25, scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise SystemExit(f"the demo needs scikit-learn; {install_hint('demo', 'scikit-learn')}") from err
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.25, random_state=seed, stratify=y)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def make_model() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 32, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(32, 64, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * 4 * 4, 256),
            relu3=nn.ReLU(),
            fc2=nn.Linear(256, 128),
            relu4=nn.ReLU(),
            out=nn.Linear(128, 10),
        )
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    pruning: Pruning | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> None:
    """Plain training loop with the seed's hooks where ``pruning`` is given."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    if pruning is not None:
        pruning.on_train_begin(model)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for step, start in enumerate(range(0, len(y), batch_size)):
            batch = order[start : start + batch_size]
            if pruning is not None:
                pruning.on_step_begin(step)
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            if pruning is not None:
                pruning.on_before_optimizer_step()
            optimizer.step()
            if pruning is not None:
                pruning.on_after_optimizer_step()
            optimizer.zero_grad()
    if pruning is not None:
        pruning.on_train_end()


def demo_config(steps_per_epoch: int, epochs: int, target: float) -> PruningConfig:
    """Two pruners sharing one window (step 1 to two epochs before the end, ten updates):
    the hidden Linear layers ranked globally at *target*, the convolutions each at a lower
    sparsity of their own (they hold few weights and matter more per weight)."""
    end = (epochs - 2) * steps_per_epoch
    return PruningConfig(
        prune_type="snip_momentum",
        pattern="4x1",
        sparsity_decay_type="exp",
        start_step=1,
        end_step=end,
        update_frequency_on_step=max(1, (end - 1) // 10),
        not_to_prune_names=("out",),  # the 10-way output layer stays dense
        pruners=[
            {"prune_layer_type": ["Linear"], "target_sparsity": target, "prune_domain": "global"},
            {"prune_layer_type": ["Conv2d"], "target_sparsity": target / 2, "prune_domain": "local"},
        ],
    )


def run(dense_epochs: int = 15, prune_epochs: int = 12, target: float = 0.8, seed: int = 0) -> dict[str, float]:
    """Train dense, prune while fine-tuning; return the accuracies and sparsity."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    model = make_model()
    started = time.perf_counter()
    train(model, x_train, y_train, dense_epochs, lr=2e-3, seed=seed)
    dense_acc = accuracy(model, x_test, y_test)

    sparse = copy.deepcopy(model)
    steps_per_epoch = -(-len(y_train) // 64)
    pruning = Pruning(demo_config(steps_per_epoch, prune_epochs, target))
    train(sparse, x_train, y_train, prune_epochs, lr=1e-3, pruning=pruning, seed=seed + 1)
    sparse_acc = accuracy(sparse, x_test, y_test)
    ratios = pruning.get_sparsity_ratio()
    report = pruning.report()
    print(report.to_table())
    print()
    print(
        f"test accuracy  dense: {dense_acc:.4f}   sparse: {sparse_acc:.4f}   "
        f"(relative drop {100 * (dense_acc - sparse_acc) / dense_acc:+.2f}%)"
    )
    print(
        f"sparsity of the Conv/Linear weights: {ratios.elementwise_over_matmul_gemm_conv:.4f}   "
        f"time: {time.perf_counter() - started:.1f} s"
    )
    return {
        "dense_accuracy": dense_acc,
        "sparse_accuracy": sparse_acc,
        "sparsity": ratios.elementwise_over_matmul_gemm_conv,
        "pruned_layer_sparsity": float(report.block_sparsity or 0.0),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-epochs", type=int, default=15)
    parser.add_argument("--prune-epochs", type=int, default=12)
    parser.add_argument("--target", type=float, default=0.8, help="sparsity of the pruned layers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.dense_epochs, args.prune_epochs, args.target, args.seed)


if __name__ == "__main__":
    main()
