"""The transformers Trainer and Lightning callbacks: steps, gradients, sparsity, checkpoints, imports."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning, StateError

from .conftest import make_mlp

WINDOW = {"start_step": 2, "end_step": 6, "update_frequency_on_step": 2}


def _config(**keys: Any) -> dict[str, Any]:
    base = {"prune_type": "snip_momentum", "pattern": "4x1", "target_sparsity": 0.5, **WINDOW}
    return {**base, **keys}


def _assert_exactly_sparse(pruning: Pruning, target: float) -> None:
    """Every pruned layer: zero exactly where the mask prunes, and the pruner's sparsity is the target."""
    for pruner in pruning.pruners:
        pruned = total = 0
        for layer in pruner.layers:
            weight = layer.target.weight.detach()
            keep = pruner.full_mask(layer)
            assert bool((weight[~keep] == 0).all()), f"{layer.name}: pruned weights are not 0"
            pruned += int((~keep).sum())
            total += keep.numel()
        assert pruned / total == pytest.approx(target, abs=1e-9)


# -- imports ----------------------------------------------------------------------------------


def test_importing_the_package_imports_no_framework() -> None:
    code = (
        "import sys, pytorch_pruner, pytorch_pruner.integrations\n"
        "loaded = [m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("module", "blocked"),
    [("transformers", ["transformers"]), ("lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"])],
)
def test_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch, module: str, blocked: list[str]) -> None:
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import name` fail
    monkeypatch.delitem(sys.modules, f"pytorch_pruner.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=re.escape(f"pip install -c constraints.txt -e '.[{module}]'")):
        importlib.import_module(f"pytorch_pruner.integrations.{module}")


def test_transformers_without_optimizer_step_events_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    transformers = pytest.importorskip("transformers")
    # as in a transformers release from before the Trainer called this event
    monkeypatch.delattr(transformers.TrainerCallback, "on_pre_optimizer_step")
    monkeypatch.delitem(sys.modules, "pytorch_pruner.integrations.transformers", raising=False)
    with pytest.raises(ImportError, match=r"needs a Trainer that calls on_pre_optimizer_step .* pip install -U"):
        importlib.import_module("pytorch_pruner.integrations.transformers")


# -- transformers Trainer ---------------------------------------------------------------------


class _Tokens(torch.utils.data.Dataset):
    """Random token sequences with a label that depends on the first token."""

    def __init__(self, n: int = 64, seq: int = 8, vocab: int = 100) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq), generator=gen)
        self.labels = self.ids[:, 0] % 2

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


@pytest.fixture
def hf() -> Any:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    return transformers


def _bert(hf: Any) -> nn.Module:
    torch.manual_seed(0)
    config = hf.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,  # resume must equal an uninterrupted run
        attention_probs_dropout_prob=0.0,
    )
    return hf.BertForSequenceClassification(config)


def _trainer(hf: Any, model: nn.Module, out: Path, callbacks: list[Any], **args: Any) -> Any:
    settings = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_steps": 8,
        "learning_rate": 1e-3,
        "weight_decay": 0.1,  # AdamW's decay moves pruned weights: they must still end at 0
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **args,
    }
    return hf.Trainer(model=model, args=hf.TrainingArguments(**settings), train_dataset=_Tokens(), callbacks=callbacks)


def _encoder_config(**keys: Any) -> dict[str, Any]:
    return _config(names=["encoder"], **keys)


def test_trainer_counts_optimizer_steps_and_reaches_the_target(hf: Any, tmp_path: Path) -> None:
    from pytorch_pruner.integrations.transformers import PruningCallback

    callback = PruningCallback(_encoder_config())
    scored = []
    original = callback.pruning.on_before_optimizer_step
    callback.pruning.on_before_optimizer_step = lambda: (scored.append(callback.pruning.step), original())[1]
    trainer = _trainer(hf, _bert(hf), tmp_path, [callback])
    trainer.train()

    # 8 optimizer steps of 2 micro-batches each: the schedule follows the 8, not the 16
    assert trainer.state.global_step == 8
    assert callback.pruning.step == 8
    assert scored == list(range(8))
    names = [layer.name for layer in callback.pruning.pruners[0].layers]
    assert len(names) == 12 and all(n.startswith("bert.encoder.layer.") for n in names)
    _assert_exactly_sparse(callback.pruning, 0.5)


def test_trainer_scores_see_gradients_before_the_update(hf: Any, tmp_path: Path) -> None:
    """snip_momentum computed by hand from (W, ∇W) at on_pre_optimizer_step equals the callback's scores."""
    from pytorch_pruner.integrations.transformers import PruningCallback

    name = "bert.encoder.layer.0.output.dense"
    # 1x1 keeps element scores; the window ends after training so every step is scored
    callback = PruningCallback(_encoder_config(pattern="1x1", start_step=1, end_step=100, update_frequency_on_step=1))

    class Reference(hf.TrainerCallback):
        score = None

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            weight = model.get_submodule(name).weight
            step = (weight.detach() * weight.grad).abs().float()
            self.score = step if self.score is None else 0.9 * self.score + step

    reference = Reference()
    _trainer(hf, _bert(hf), tmp_path, [reference, callback], max_steps=5).train()

    pruner = callback.pruning.pruners[0]
    index = [layer.name for layer in pruner.layers].index(name)
    assert torch.allclose(pruner.criterion.scores()[index], reference.score, rtol=1e-5, atol=0)
    assert float(reference.score.abs().sum()) > 0


def test_trainer_overflow_step_leaves_scores_unchanged(hf: Any, tmp_path: Path) -> None:
    """An AMP-style step with inf gradients: scores are exactly those of the step before."""
    from pytorch_pruner.integrations.transformers import PruningCallback

    callback = PruningCallback(_encoder_config(pattern="1x1", start_step=1, end_step=100, update_frequency_on_step=1))
    overflow_step = 3

    class Overflow(hf.TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if state.global_step == overflow_step:
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.fill_(float("inf"))

    class RecordThenRepair(hf.TrainerCallback):
        snapshots: list[list[torch.Tensor]] = []  # noqa: RUF012 (one instance per test)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.snapshots.append([s.clone() for s in callback.pruning.pruners[0].criterion.scores()])
            if state.global_step == overflow_step:  # a GradScaler would skip this update
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.zero_()

    record = RecordThenRepair()
    _trainer(hf, _bert(hf), tmp_path, [Overflow(), callback, record], max_steps=5).train()

    snaps = record.snapshots

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    assert len(snaps) == 5
    assert same(snaps[overflow_step], snaps[overflow_step - 1])
    assert not same(snaps[overflow_step - 1], snaps[overflow_step - 2])
    assert not same(snaps[overflow_step + 1], snaps[overflow_step])
    assert all(bool(torch.isfinite(s).all()) for s in snaps[-1])


def test_trainer_checkpoint_resume_equals_uninterrupted_run(hf: Any, tmp_path: Path) -> None:
    from pytorch_pruner.integrations.transformers import STATE_FILE, PruningCallback

    full = PruningCallback(_encoder_config())
    full_model = _bert(hf)
    _trainer(hf, full_model, tmp_path / "full", [full], save_strategy="steps", save_steps=4).train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert (checkpoint / STATE_FILE).is_file()
    assert (tmp_path / "full" / "checkpoint-8" / STATE_FILE).is_file()
    assert torch.load(checkpoint / STATE_FILE, weights_only=True)["step"] == 4

    # found on its own in <output_dir>/checkpoint-<step> (resume_from_checkpoint=True picks the last one) ...
    shutil.copytree(checkpoint, tmp_path / "auto" / "checkpoint-4")
    auto, auto_model = PruningCallback(_encoder_config()), _bert(hf)
    _trainer(hf, auto_model, tmp_path / "auto", [auto]).train(resume_from_checkpoint=True)
    # ... or named with resume_from when the checkpoint lies elsewhere
    named, named_model = PruningCallback(_encoder_config(), resume_from=checkpoint), _bert(hf)
    _trainer(hf, named_model, tmp_path / "named", [named]).train(resume_from_checkpoint=str(checkpoint))

    # ... or through TrainingArguments.resume_from_checkpoint, as the example scripts set it
    by_args, by_args_model = PruningCallback(_encoder_config()), _bert(hf)
    trainer = _trainer(hf, by_args_model, tmp_path / "args", [by_args], resume_from_checkpoint=str(checkpoint))
    trainer.train(resume_from_checkpoint=str(checkpoint))

    full_masks = full.pruning.masks()
    for resumed, resumed_model in [(auto, auto_model), (named, named_model), (by_args, by_args_model)]:
        assert resumed.pruning.step == 8
        resumed_masks = resumed.pruning.masks()
        assert all(torch.equal(full_masks[k], resumed_masks[k]) for k in full_masks)
        for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
            assert torch.allclose(a, b, atol=1e-6), name
        _assert_exactly_sparse(resumed.pruning, 0.5)


def test_trainer_resume_without_pruning_state_is_refused(hf: Any, tmp_path: Path) -> None:
    from pytorch_pruner.integrations.transformers import STATE_FILE, PruningCallback

    _trainer(
        hf,
        _bert(hf),
        tmp_path / "run",
        [PruningCallback(_encoder_config())],
        save_strategy="steps",
        save_steps=4,
        max_steps=4,
    ).train()
    checkpoint = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "run" / "checkpoint-4", checkpoint)
    (checkpoint / STATE_FILE).unlink()

    trainer = _trainer(hf, _bert(hf), tmp_path / "new", [PruningCallback(_encoder_config())])
    with pytest.raises(StateError, match=r"resumes at step 4 but no pruning state was found.*resume_from="):
        trainer.train(resume_from_checkpoint=str(checkpoint))

    # the state of another step is refused too, before anything is loaded
    callback = PruningCallback(_encoder_config(), resume_from=tmp_path / "run" / "checkpoint-4" / STATE_FILE)
    shutil.copytree(tmp_path / "run" / "checkpoint-4", tmp_path / "step2")
    state = torch.load(tmp_path / "step2" / STATE_FILE, weights_only=True)
    torch.save({**state, "step": 2}, tmp_path / "step2" / STATE_FILE)
    callback.resume_from = tmp_path / "step2"
    trainer = _trainer(hf, _bert(hf), tmp_path / "new2", [callback])
    with pytest.raises(StateError, match=r"holds the pruning state of step 2, but the Trainer resumes at step 4"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "step2"))


def test_trainer_damaged_pruning_state_is_refused(hf: Any, tmp_path: Path) -> None:
    from pytorch_pruner.integrations.transformers import STATE_FILE, PruningCallback

    (tmp_path / STATE_FILE).write_bytes(b"\x00not a torch file")
    callback = PruningCallback(_config(), resume_from=tmp_path)
    args = hf.TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    state = hf.TrainerState(global_step=4)  # as when the Trainer resumes at step 4
    with pytest.raises(StateError, match=r"pruning_state.pt is not a readable pruning state.*resume_from="):
        callback.on_train_begin(args, state, hf.TrainerControl(), model=make_mlp())
    assert callback.pruning.step == 0


def test_trainer_callback_reused_for_a_new_run_is_refused(hf: Any, tmp_path: Path) -> None:
    from pytorch_pruner.integrations.transformers import PruningCallback

    callback = PruningCallback(_config())
    args = hf.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    model = make_mlp()
    callback.on_train_begin(args, hf.TrainerState(), hf.TrainerControl(), model=model)
    callback.on_optimizer_step(args, hf.TrainerState(), hf.TrainerControl())  # one step of a first run
    with pytest.raises(StateError, match=r"already pruned 1 optimizer steps.*give each training run a new"):
        callback.on_train_begin(args, hf.TrainerState(), hf.TrainerControl(), model=model)


def test_trainer_save_outside_a_checkpoint_folder_warns(hf: Any, tmp_path: Path) -> None:
    from pytorch_pruner.integrations.transformers import PruningCallback

    callback = PruningCallback(_config())
    args = hf.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = hf.TrainerState(), hf.TrainerControl()
    callback.on_train_begin(args, state, control, model=make_mlp())
    state.global_step = 3  # as if a hyper-parameter search had saved under a run folder
    with pytest.warns(UserWarning, match=r"checkpoint-3 does not exist, so pruning_state.pt was not written"):
        callback.on_save(args, state, control)
    assert not any(tmp_path.iterdir())


def test_trainer_callback_requires_a_model(hf: Any) -> None:
    from pytorch_pruner.integrations.transformers import PruningCallback

    callback = PruningCallback(_config())
    with pytest.raises(StateError, match=r"passed no model.*Trainer\(model=\.\.\.\)"):
        callback.on_train_begin(None, hf.TrainerState(), hf.TrainerControl())


# -- Lightning --------------------------------------------------------------------------------


@pytest.fixture
def pl() -> Any:
    return pytest.importorskip("lightning.pytorch")


def _lit_module(pl: Any) -> Any:
    class LitMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = make_mlp()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)

    return LitMLP()


def _loader() -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 32, generator=gen), torch.randint(0, 4, (64,), generator=gen))
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)  # 8 batches = 4 steps an epoch


def _lit_trainer(pl: Any, callbacks: list[Any], max_steps: int, **kw: Any) -> Any:
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kw,
    )


LIT_CONFIG = {"prune_type": "snip_momentum", "pattern": "4x1", "target_sparsity": 0.5, "start_step": 1, "end_step": 5,
              "update_frequency_on_step": 2, "not_to_prune_names": ["head"]}  # fmt: skip


def test_lightning_counts_optimizer_steps_and_reaches_the_target(pl: Any) -> None:
    from pytorch_pruner.integrations.lightning import PruningCallback

    callback = PruningCallback(LIT_CONFIG)
    scored = []
    original = callback.pruning.on_before_optimizer_step
    callback.pruning.on_before_optimizer_step = lambda: (scored.append(callback.pruning.step), original())[1]
    trainer = _lit_trainer(pl, [callback], max_steps=6)
    module = _lit_module(pl)
    trainer.fit(module, _loader())

    # 12 batches, accumulate 2: 6 optimizer steps over two epochs
    assert trainer.global_step == 6
    assert callback.pruning.step == 6
    assert scored == list(range(6))
    assert [layer.name for layer in callback.pruning.pruners[0].layers] == ["net.fc1", "net.fc2"]
    _assert_exactly_sparse(callback.pruning, 0.5)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the saver is not needed to resume
def test_lightning_checkpoint_resume_equals_uninterrupted_run(pl: Any, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from pytorch_pruner.integrations.lightning import CHECKPOINT_KEY, PruningCallback

    full = PruningCallback(LIT_CONFIG)
    full_module = _lit_module(pl)
    saver = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=4, save_top_k=-1)
    _lit_trainer(pl, [full, saver], max_steps=8, enable_checkpointing=True).fit(full_module, _loader())
    path = tmp_path / "step=4.ckpt"
    # Lightning runs checkpoint callbacks last, so the state saved is that of after step 4's update
    assert torch.load(path, weights_only=False)[CHECKPOINT_KEY]["step"] == 4

    resumed = PruningCallback(LIT_CONFIG)
    resumed_module = _lit_module(pl)
    _lit_trainer(pl, [resumed], max_steps=8).fit(resumed_module, _loader(), ckpt_path=path)

    assert resumed.pruning.step == 8
    full_masks, resumed_masks = full.pruning.masks(), resumed.pruning.masks()
    assert all(torch.equal(full_masks[k], resumed_masks[k]) for k in full_masks)
    for (name, a), b in zip(full_module.state_dict().items(), resumed_module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    _assert_exactly_sparse(resumed.pruning, 0.5)


def test_lightning_resume_without_pruning_state_is_refused(pl: Any, tmp_path: Path) -> None:
    from pytorch_pruner.integrations.lightning import CHECKPOINT_KEY, PruningCallback

    trainer = _lit_trainer(pl, [PruningCallback(LIT_CONFIG)], max_steps=4)
    trainer.fit(_lit_module(pl), _loader())
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint[CHECKPOINT_KEY]
    torch.save(checkpoint, path)

    trainer = _lit_trainer(pl, [PruningCallback(LIT_CONFIG)], max_steps=8)
    with pytest.raises(StateError, match=r"resumes at optimizer step 4.*holds no 'pytorch_pruner' state"):
        trainer.fit(_lit_module(pl), _loader(), ckpt_path=path)


def test_lightning_callback_reused_for_a_new_run_is_refused(pl: Any) -> None:
    from pytorch_pruner.integrations.lightning import PruningCallback

    callback = PruningCallback(LIT_CONFIG)
    trainer = _lit_trainer(pl, [callback], max_steps=2)
    module = _lit_module(pl)
    trainer.fit(module, _loader())
    assert callback.pruning.step == 2
    with pytest.raises(StateError, match=r"already pruned 2 optimizer steps.*give each training run a new"):
        _lit_trainer(pl, [callback], max_steps=2).fit(module, _loader())
