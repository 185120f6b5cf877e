"""Resuming from a checkpoint equals the uninterrupted run; bad checkpoints fail cleanly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning, StateError
from pytorch_pruner.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_checkpoint,
)

from .conftest import make_mlp

TOTAL = 14
# window 4..10, every 2 steps: masks change at steps 4, 6, 8, 10
WINDOW = {"start_step": 4, "end_step": 10, "update_frequency_on_step": 2}
# interrupt before step k: 0 / 2 before the window, 4 / 8 on a pruning step, 5 / 7 between two,
# 11 / 13 after it
INTERRUPTS = [0, 2, 4, 5, 7, 8, 11, 13]
CRITERIA = ["magnitude", "snip", "snip_momentum"]


def _config(criterion: str, **over: Any) -> dict[str, Any]:
    return {
        "prune_type": criterion,
        "pattern": "4x1",
        "target_sparsity": 0.75,
        "prune_domain": "global",
        **WINDOW,
        "pruners": [{"names": ["fc1"]}, {"names": ["fc2"], "pattern": "1x1", "prune_domain": "local"}],
        **over,
    }


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 32, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(TOTAL)]


def _setup(criterion: str, init_seed: int, **over: Any) -> tuple[nn.Module, torch.optim.Optimizer, Pruning]:
    torch.manual_seed(init_seed)
    model = make_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    pruning = Pruning(_config(criterion, **over))
    pruning.on_train_begin(model)
    return model, optimizer, pruning


def _run(model: nn.Module, optimizer: torch.optim.Optimizer, pruning: Pruning, steps: range) -> None:
    batches = _batches()
    for step in steps:
        x, y = batches[step]
        pruning.on_step_begin(step)
        nn.functional.cross_entropy(model(x), y).backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that even 0.0 vs -0.0 would count as a difference."""
    return t.detach().contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def _snapshot(model: nn.Module, pruning: Pruning) -> dict[str, Any]:
    return {
        "weights": {k: _bits(v).clone() for k, v in model.state_dict().items()},
        "masks": {k: v.clone() for k, v in pruning.masks().items()},
        "step": pruning.step,
        "sparsity": [p.current_sparsity for p in pruning.pruners],
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"]
    assert a["sparsity"] == b["sparsity"]
    assert a["masks"].keys() == b["masks"].keys()
    for k in a["masks"]:
        assert torch.equal(a["masks"][k], b["masks"][k]), k
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("interrupt", INTERRUPTS)
def test_resumed_run_is_bit_identical(criterion: str, interrupt: int, tmp_path: Path) -> None:
    model, optimizer, pruning = _setup(criterion, init_seed=0)
    _run(model, optimizer, pruning, range(TOTAL))
    expected = _snapshot(model, pruning)
    assert expected["sparsity"] == [0.75, 0.75]  # the run did prune

    model, optimizer, pruning = _setup(criterion, init_seed=0)
    _run(model, optimizer, pruning, range(interrupt))
    save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, pruning, epoch=3, note="x")
    del model, optimizer, pruning

    # a fresh process would start from another random init: the checkpoint must override all of it
    model, optimizer, pruning = _setup(criterion, init_seed=123)
    extra = load_checkpoint(tmp_path / "ckpt.pt", model, optimizer, pruning)
    assert extra == {"epoch": 3, "note": "x"}
    assert pruning.step == interrupt
    _run(model, optimizer, pruning, range(interrupt, TOTAL))
    _assert_same(_snapshot(model, pruning), expected)


def test_resume_differs_without_the_pruning_state(tmp_path: Path) -> None:
    """Guard for the test above: restoring only model + optimizer does NOT reproduce the run."""
    model, optimizer, pruning = _setup("snip_momentum", init_seed=0)
    _run(model, optimizer, pruning, range(TOTAL))
    expected = _snapshot(model, pruning)

    model, optimizer, pruning = _setup("snip_momentum", init_seed=0)
    _run(model, optimizer, pruning, range(7))
    state = ({k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict())
    model, optimizer, pruning = _setup("snip_momentum", init_seed=0)
    model.load_state_dict(state[0])
    optimizer.load_state_dict(state[1])
    _run(model, optimizer, pruning, range(7, TOTAL))
    with pytest.raises(AssertionError):
        _assert_same(_snapshot(model, pruning), expected)


# -- failures change nothing -------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model, optimizer, pruning = _setup("snip_momentum", init_seed=0)
    _run(model, optimizer, pruning, range(9))
    return save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, pruning)


def _target_after_some_steps(**over: Any) -> tuple[nn.Module, torch.optim.Optimizer, Pruning]:
    model, optimizer, pruning = _setup("snip_momentum", init_seed=5, **over)
    _run(model, optimizer, pruning, range(6))  # pruned already, so masks are not all True
    return model, optimizer, pruning


def _assert_unchanged(model: nn.Module, optimizer: torch.optim.Optimizer, pruning: Pruning, load: Any) -> None:
    before = _snapshot(model, pruning)
    optim_before = {k: v["exp_avg"].clone() for k, v in enumerate(optimizer.state.values())}
    scores_before = [t.clone() for p in pruning.pruners for t in p.criterion.scores()]
    load()
    _assert_same(_snapshot(model, pruning), before)
    for k, v in enumerate(optimizer.state.values()):
        assert torch.equal(v["exp_avg"], optim_before[k])
    for a, b in zip(scores_before, [t for p in pruning.pruners for t in p.criterion.scores()], strict=True):
        assert torch.equal(a, b)


def test_mismatched_config_is_refused_and_changes_nothing(saved: Path) -> None:
    model, optimizer, pruning = _target_after_some_steps(target_sparsity=0.5)

    def load() -> None:
        with pytest.raises(StateError, match="saved with another config"):
            load_checkpoint(saved, model, optimizer, pruning)

    _assert_unchanged(model, optimizer, pruning, load)


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.02])
def test_truncated_file_is_refused_and_changes_nothing(saved: Path, cut: float) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * cut)])
    model, optimizer, pruning = _target_after_some_steps()

    def load() -> None:
        with pytest.raises(StateError, match=r"not a readable checkpoint \(truncated or corrupt\)"):
            load_checkpoint(saved, model, optimizer, pruning)

    _assert_unchanged(model, optimizer, pruning, load)


def test_corrupt_bytes_are_refused(saved: Path) -> None:
    saved.write_bytes(b"\x00garbage" * 100)
    model, optimizer, pruning = _target_after_some_steps()

    def load() -> None:
        with pytest.raises(StateError, match="truncated or corrupt"):
            load_checkpoint(saved, model, optimizer, pruning)

    _assert_unchanged(model, optimizer, pruning, load)


def test_state_of_another_model_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    # same config, same layer names, other widths: caught before anything is loaded
    other = nn.Sequential()
    other.add_module("fc1", nn.Linear(32, 128))
    other.add_module("act", nn.ReLU())
    other.add_module("fc2", nn.Linear(128, 32))
    other.add_module("act2", nn.ReLU())
    other.add_module("head", nn.Linear(32, 4))
    pruning = Pruning(_config("snip_momentum"))
    pruning.on_train_begin(other)
    path = save_checkpoint(tmp_path / "other.pt", other, torch.optim.AdamW(other.parameters()), pruning)

    model, optimizer, pruning = _target_after_some_steps()

    def load() -> None:
        with pytest.raises(StateError, match=r"saved from another model.*fc1.weight: saved shape \(128, 32\)"):
            load_checkpoint(path, model, optimizer, pruning)

    _assert_unchanged(model, optimizer, pruning, load)


def test_pruning_state_of_other_layers_is_refused(tmp_path: Path, saved: Path) -> None:
    # same model and config text but the pruning state lists other layers: Pruning's own check
    data = read_checkpoint(saved)
    data["pruning"]["pruners"][0]["layers"] = ["head"]
    write_checkpoint(tmp_path / "edited.pt", data)
    model, optimizer, pruning = _target_after_some_steps()

    def load() -> None:
        with pytest.raises(StateError, match="does not fit this model"):
            load_checkpoint(tmp_path / "edited.pt", model, optimizer, pruning)

    _assert_unchanged(model, optimizer, pruning, load)


def test_other_optimizer_layout_is_refused(saved: Path) -> None:
    model, _, pruning = _target_after_some_steps()
    split = torch.optim.AdamW([{"params": [model.fc1.weight]}, {"params": [model.fc2.weight]}])
    with pytest.raises(StateError, match=r"parameter groups of sizes \[6\], this one \[1, 1\]"):
        load_checkpoint(saved, model, split, pruning)


def test_not_a_checkpoint_missing_file_and_other_format(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(StateError, match="not a pytorch-pruner checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(StateError, match="not found; check the path"):
        read_checkpoint(tmp_path / "nope.pt")
    torch.save({"pytorch_pruner_checkpoint": CHECKPOINT_FORMAT + 1}, tmp_path / "future.pt")
    with pytest.raises(StateError, match=f"format {CHECKPOINT_FORMAT + 1}; this version reads format"):
        read_checkpoint(tmp_path / "future.pt")
    write_checkpoint(tmp_path / "partial.pt", {"pytorch_pruner_checkpoint": CHECKPOINT_FORMAT, "model": {}})
    with pytest.raises(StateError, match=r"damaged checkpoint: entries \['optimizer', 'pruning', 'extra'\]"):
        read_checkpoint(tmp_path / "partial.pt")


def test_save_is_atomic_and_optimizer_optional(tmp_path: Path) -> None:
    model, _, pruning = _setup("magnitude", init_seed=0)
    path = save_checkpoint(tmp_path / "sub" / "c.pt", model, None, pruning)
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]  # no temporary left behind
    data = read_checkpoint(path)
    assert data["optimizer"] is None
    assert data["report"]["step"] == 0
    assert load_checkpoint(path, model, None, pruning) == {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(StateError, match="holds no optimizer state; pass optimizer=None"):
        load_checkpoint(path, model, optimizer, pruning)


def test_extras_that_are_not_plain_values_are_named(tmp_path: Path) -> None:
    model, optimizer, pruning = _setup("magnitude", init_seed=0)
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, pruning, when=Path("somewhere"))
    with pytest.raises(StateError, match=r"safe loading \(weights_only=True\) refuses; keep save_checkpoint extras"):
        load_checkpoint(path, model, optimizer, pruning)


def test_save_before_on_train_begin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="save_checkpoint called before on_train_begin"):
        save_checkpoint(tmp_path / "c.pt", make_mlp(), None, Pruning(_config("magnitude")))
    assert not (tmp_path / "c.pt").exists()


def test_load_before_on_train_begin_is_refused(saved: Path) -> None:
    model = make_mlp()
    pruning = Pruning(_config("snip_momentum"))
    with pytest.raises(StateError, match="load_checkpoint called before on_train_begin"):
        load_checkpoint(saved, model, None, pruning)


def test_checkpoint_of_a_compiled_model_resumes_a_plain_one(tmp_path: Path) -> None:
    """Keys are saved as in the plain model, so a wrapped run and a plain one share checkpoints."""
    model, optimizer, pruning = _setup("snip_momentum", init_seed=0)
    _run(model, optimizer, pruning, range(7))
    compiled = torch.compile(model, backend="eager")  # a wrapper whose keys start with `_orig_mod.`
    path = save_checkpoint(tmp_path / "c.pt", compiled, optimizer, pruning)
    assert set(read_checkpoint(path)["model"]) == set(model.state_dict())

    plain, plain_optimizer, plain_pruning = _setup("snip_momentum", init_seed=1)
    load_checkpoint(path, plain, plain_optimizer, plain_pruning)
    _assert_same(_snapshot(plain, plain_pruning), _snapshot(model, pruning))
    wrapped_model, wrapped_optimizer, wrapped_pruning = _setup("snip_momentum", init_seed=2)
    load_checkpoint(path, torch.compile(wrapped_model, backend="eager"), wrapped_optimizer, wrapped_pruning)
    _assert_same(_snapshot(wrapped_model, wrapped_pruning), _snapshot(model, pruning))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, pruning = _setup("magnitude", init_seed=0)
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, pruning)
    good = path.read_bytes()

    def crash(obj: Any, f: Path) -> None:
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, optimizer, pruning)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left behind


def test_a_model_other_than_the_pruned_one_is_refused(tmp_path: Path, saved: Path) -> None:
    """The masks live on pruning.model: saving or loading another model object would split them."""
    model, optimizer, pruning = _target_after_some_steps()
    stranger = make_mlp()
    with pytest.raises(StateError, match=r"not the one the Pruning was started on .* pass pruning\.model"):
        save_checkpoint(tmp_path / "x.pt", stranger, optimizer, pruning)
    assert not (tmp_path / "x.pt").exists()

    def load() -> None:
        with pytest.raises(StateError, match=r"not the one the Pruning was started on"):
            load_checkpoint(saved, stranger, optimizer, pruning)

    _assert_unchanged(model, optimizer, pruning, load)
