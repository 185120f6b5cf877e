"""Tiny models shared by the tests; nothing is downloaded."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SEED_YAML = ROOT / "examples" / "bert_mini_seed.yaml"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_mlp() -> nn.Module:
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(32, 64), act=nn.ReLU(), fc2=nn.Linear(64, 32), act2=nn.ReLU(), head=nn.Linear(32, 4))
    )


def make_convnet() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(4, 8, 3, padding=1),
            act=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(16, 4),
        )
    )


def make_bert(layers: int = 2, hidden: int = 32, ffn: int = 64, heads: int = 2) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=64,
    )
    return transformers.BertForSequenceClassification(config)


def make_bert_mini() -> nn.Module:
    """BERT-mini's shapes (4 layers, hidden 256, ffn 1024) with random weights."""
    return make_bert(layers=4, hidden=256, ffn=1024, heads=4)


@pytest.fixture
def mlp() -> nn.Module:
    return make_mlp()


@pytest.fixture
def convnet() -> nn.Module:
    return make_convnet()


@pytest.fixture
def bert() -> nn.Module:
    return make_bert()


def train_steps(model: nn.Module, pruning, steps: int, optimizer=None, batch=None, accumulate: int = 1) -> None:
    """Run *steps* optimizer steps of the seed's loop on random data (the MLP's input shape)."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        for micro in range(accumulate):
            pruning.on_step_begin(step * accumulate + micro)
            x = batch if batch is not None else torch.randn(16, 32)
            model(x).pow(2).mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` need CUDA: skip them, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
