"""The Lightning callback under FSDP2: Lightning's ModelParallelStrategy shards the model with
``fully_shard`` in ``configure_model`` on 2 CPU processes (gloo), and PruningCallback prunes the
shards. (accelerate's FSDP2 plugin does not run on CPU: with ``use_cpu`` transformers' Trainer
ignores the FSDP config and trains unsharded; without it, "Using fsdp only works in distributed
training". So the transformers callback under FSDP2 is tested only through the state it writes,
in test_fsdp2.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytest.importorskip("lightning")
pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)

SCRIPT = Path(__file__).with_name("lightning_fsdp2_run.py")


def test_lightning_model_parallel_strategy_prunes_fsdp2_shards_to_the_target(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in ranks:
        assert result["dtensor"] == [True, True]  # Lightning really sharded the weights with FSDP2
        assert result["sharded"] == [True, True]  # and the pruner holds this rank's rows of each
        assert result["step"] == 10
        assert result["block_sparsity"] == pytest.approx(0.5)  # global numbers, on every rank
        assert result["pruned_are_zero"] == [True, True]  # every pruned weight exactly 0 in the gathered model
