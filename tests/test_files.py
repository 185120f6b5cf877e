"""Files survive damage and crashes: checksummed checkpoints, loads that validate everything before
changing anything, and atomic writes (issue 9)."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pytorch_pruner import Pruning, StateError, fileio
from pytorch_pruner.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, write_checkpoint

from .test_resume import _config, _run, _setup


# -- helpers -----------------------------------------------------------------------------------
def _equal(a: Any, b: Any) -> bool:
    """Deep equality of nested dicts/lists/tensors (tensors bit for bit, dtype and shape included)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _everything(model: nn.Module, optimizer: torch.optim.Optimizer, pruning: Pruning) -> dict[str, Any]:
    return copy.deepcopy(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruning": pruning.state_dict()}
    )


def _refused_changes_nothing(path: Path, optimizer_class: Callable[..., torch.optim.Optimizer], match: str) -> None:
    """Load *path* into a run that has trained a few steps (so its state is not fresh): StateError
    matching *match*, and model, optimizer and pruning state all bit-identical afterwards."""
    model, _, pruning = _setup("snip_momentum", init_seed=5)
    optimizer = optimizer_class(model.parameters())
    _run(model, optimizer, pruning, range(6))
    before = _everything(model, optimizer, pruning)
    with pytest.raises(StateError, match=match):
        load_checkpoint(path, model, optimizer, pruning)
    after = _everything(model, optimizer, pruning)
    for part in before:
        assert _equal(before[part], after[part]), part


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2)


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9)


def _trained_checkpoint(folder: Path, optimizer_class: Callable[..., torch.optim.Optimizer]) -> Path:
    model, _, pruning = _setup("snip_momentum", init_seed=0)
    optimizer = optimizer_class(model.parameters())
    _run(model, optimizer, pruning, range(9))
    return save_checkpoint(folder / "ckpt.pt", model, optimizer, pruning)


@pytest.fixture(scope="module")
def _checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: _trained_checkpoint(folder, make).read_bytes() for name, make in (("sgd", _sgd), ("adam", _adam))}


@pytest.fixture
def sgd_checkpoint(tmp_path: Path, _checkpoints: dict[str, bytes]) -> Path:
    (tmp_path / "sgd.pt").write_bytes(_checkpoints["sgd"])
    return tmp_path / "sgd.pt"


@pytest.fixture
def adam_checkpoint(tmp_path: Path, _checkpoints: dict[str, bytes]) -> Path:
    (tmp_path / "adam.pt").write_bytes(_checkpoints["adam"])
    return tmp_path / "adam.pt"


def _edited(source: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = read_checkpoint(source)
    edit(data)
    return write_checkpoint(source.with_name("edited.pt"), data)


# -- load_checkpoint validates everything first ------------------------------------------------
def test_sgd_checkpoint_into_an_adam_run_is_refused_and_changes_nothing(sgd_checkpoint: Path) -> None:
    _refused_changes_nothing(sgd_checkpoint, _adam, r"optimizer state is torch\.optim\.sgd\.SGD's, this run uses "
                             r"torch\.optim\.adam\.Adam; build the same optimizer.*or pass optimizer=None")  # fmt: skip


def test_other_optimizer_without_a_recorded_class_is_refused_by_its_settings(sgd_checkpoint: Path) -> None:
    """A file that does not name the class (format 1) is still caught: SGD's groups are not Adam's."""

    def forget_class(data: dict[str, Any]) -> None:
        data["optimizer_class"] = None

    _refused_changes_nothing(
        _edited(sgd_checkpoint, forget_class),
        _adam,
        r"group 0 of the saved optimizer has settings \['dampening', 'momentum', 'nesterov'\] this Adam does not know "
        r"and no \['amsgrad', 'betas', 'eps'\], which it needs",
    )


def _set_pruning_step(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["pruning"]["step"] = value

    return edit


def _set_weight(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["model"]["fc2.weight"] = value

    return edit


def _set_exp_avg(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["optimizer"]["state"][2]["exp_avg"] = value  # fc2.weight's

    return edit


def _set_adam(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["optimizer"]["state"][0][key] = value

    return edit


def _set_group(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["optimizer"]["param_groups"][0][key] = value

    return edit


def _set_sparsity(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["pruning"]["pruners"][1]["current_sparsity"] = value

    return edit


def _set_scores(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["pruning"]["pruners"][0]["criterion"]["scores"][0] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set_pruning_step("abc"), r"the state is damaged: 'step' is 'abc' \(str\), expected an int >= 0"),
        (_set_pruning_step(-3), r"'step' is -3 \(int\), expected an int >= 0"),
        (_set_pruning_step(4.5), r"'step' is 4.5 \(float\)"),
        (_set_weight([1.0, 2.0]), r"damaged: model entries that are not tensors: \['fc2.weight: a list'\]"),
        (_set_weight(torch.zeros(32, 64, dtype=torch.float64)),
         r"other dtypes than the model \(\['fc2.weight: saved torch.float64, model torch.float32'\]\); convert"),
        (_set_weight(torch.zeros(64, 32)), r"saved from another model \(fc2.weight: saved shape \(64, 32\), model"),
        (_set_exp_avg(torch.zeros(7)), r"optimizer state does not fit.*parameter 2 'exp_avg': shape \(7,\), "
                                       r"parameter \(32, 64\)"),
        (_set_exp_avg("abc"), r"parameter 2 'exp_avg': a str"),
        (_set_adam("step", "abc"), r"parameter 0 'step': 'abc'"),
        (_set_adam("step", torch.tensor(float("nan"))), r"parameter 0 'step': nan"),
        (_set_group("lr", "abc"), r"group 0 of the saved optimizer is damaged: 'lr' is 'abc', expected a value like"),
        (_set_group("betas", (0.9,)), r"'betas' is \(0.9,\)"),
        (_set_sparsity("abc"), r"the saved current_sparsity 'abc' is not a number in \[0, 1\]"),
        (_set_sparsity(float("nan")), r"current_sparsity nan"),
        (_set_scores(torch.zeros(16, 32, dtype=torch.int64)), r"the saved criterion scores do not fit the layers"),
    ],
)  # fmt: skip
def test_damaged_contents_are_refused_and_change_nothing(
    adam_checkpoint: Path, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    """Each of these loaded part of the file (or all of it) and failed later, or at the next step()."""
    _refused_changes_nothing(_edited(adam_checkpoint, edit), _adam, match)


def test_a_good_checkpoint_still_resumes_and_steps(adam_checkpoint: Path) -> None:
    model, _, pruning = _setup("snip_momentum", init_seed=5)
    optimizer = _adam(model.parameters())
    load_checkpoint(adam_checkpoint, model, optimizer, pruning)
    assert pruning.step == 9
    _run(model, optimizer, pruning, range(9, 11))  # steps without error
    assert isinstance(optimizer.state_dict()["state"][0]["step"], torch.Tensor)


def test_a_file_of_another_format_1_run_loads_with_a_warning(tmp_path: Path, adam_checkpoint: Path) -> None:
    """Format-1 files (no checksum, no optimizer class) are still read, with a warning."""
    data = read_checkpoint(adam_checkpoint)
    data["pytorch_pruner_checkpoint"] = 1
    del data["optimizer_class"]
    torch.save(data, tmp_path / "old.pt")
    model, _, pruning = _setup("snip_momentum", init_seed=5)
    with pytest.warns(UserWarning, match="format-1 checkpoint, written without a checksum"):
        load_checkpoint(tmp_path / "old.pt", model, _adam(model.parameters()), pruning)
    assert pruning.step == 9


# -- integrity ---------------------------------------------------------------------------------
def test_every_single_byte_flip_is_detected(adam_checkpoint: Path) -> None:
    """80 positions spread over the whole file, header, pickle, tensor data and zip directory alike:
    without the checksum 48 of 80 such flips loaded silently."""
    good = adam_checkpoint.read_bytes()
    assert isinstance(torch.load(adam_checkpoint, weights_only=True), dict)  # still an ordinary torch file
    model, _, pruning = _setup("snip_momentum", init_seed=5)
    optimizer = _adam(model.parameters())
    _run(model, optimizer, pruning, range(6))
    before = _everything(model, optimizer, pruning)
    positions = sorted({round(i * (len(good) - 1) / 79) for i in range(80)} | {len(good) - 1, len(good) - 70})
    for pos in positions:
        damaged = bytearray(good)
        damaged[pos] ^= 0x01 if pos % 2 else 0x80
        adam_checkpoint.write_bytes(bytes(damaged))
        with pytest.raises(StateError, match=r"is corrupt: its SHA-256 | not a readable checkpoint"):
            load_checkpoint(adam_checkpoint, model, optimizer, pruning)
    after = _everything(model, optimizer, pruning)
    assert all(_equal(before[k], after[k]) for k in before)
    adam_checkpoint.write_bytes(good)
    load_checkpoint(adam_checkpoint, model, optimizer, pruning)  # the undamaged file loads


def test_an_altered_value_names_the_checksum(adam_checkpoint: Path) -> None:
    data = adam_checkpoint.read_bytes()
    weights = read_checkpoint(adam_checkpoint)["model"]["fc1.weight"]
    raw = weights.numpy().tobytes()[:16]
    at = data.index(raw)  # the tensor's bytes inside the zip
    adam_checkpoint.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :])
    with pytest.raises(StateError, match=r"SHA-256 does not match the one stored when it was written .* earlier"):
        read_checkpoint(adam_checkpoint)


# -- atomic writes -----------------------------------------------------------------------------
def test_a_failure_after_writing_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary is complete but fsync (or the rename) fails: the old file stays, whole."""
    model, optimizer, pruning = _setup("magnitude", init_seed=0)
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, pruning)
    good = path.read_bytes()

    def no_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(OSError, match="I/O error"):
        save_checkpoint(path, model, optimizer, pruning, epoch=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_temporaries_of_killed_writers_are_removed_at_the_next_save(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    leftover = tmp_path / f"c.pt.{fileio._HOST}-{dead.pid}.tmp"
    leftover.write_bytes(b"half")
    alive = tmp_path / f"c.pt.{fileio._HOST}-{os.getppid()}.tmp"  # a running writer's: kept
    alive.write_bytes(b"in progress")
    other_host = tmp_path / "c.pt.elsewhere-1.tmp"  # another host's, recent: kept
    other_host.write_bytes(b"in progress")
    old_host = tmp_path / "c.pt.faraway-1.tmp"  # another host's, two days old: removed
    old_host.write_bytes(b"half")
    os.utime(old_host, (0, 0))
    unrelated = tmp_path / "notes.1.tmp"
    unrelated.write_bytes(b"mine")
    model, optimizer, pruning = _setup("magnitude", init_seed=0)
    save_checkpoint(tmp_path / "c.pt", model, optimizer, pruning)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c.pt", alive.name, other_host.name, unrelated.name])


_KILLED_MID_SAVE = """
import os, signal, sys
import torch
sys.path.insert(0, {root!r})
from tests.test_resume import _setup
from pytorch_pruner.checkpoint import save_checkpoint

model, optimizer, pruning = _setup("magnitude", init_seed=0)
real_save = torch.save
def save_half(obj, f):
    real_save(obj, f)
    with open(f, "r+b") as handle:
        handle.truncate(100)
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_half
save_checkpoint({path!r}, model, optimizer, pruning)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_save_killed_midway_keeps_the_old_file_and_its_temporary_goes_next_time(tmp_path: Path) -> None:
    model, optimizer, pruning = _setup("magnitude", init_seed=0)
    path = save_checkpoint(tmp_path / "c.pt", model, optimizer, pruning)
    good = path.read_bytes()
    root = str(Path(__file__).resolve().parent.parent)
    code = _KILLED_MID_SAVE.format(root=root, path=str(path))
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert path.read_bytes() == good  # the old checkpoint, whole
    assert len(list(tmp_path.glob("c.pt.*.tmp"))) == 1  # what the killed save left
    read_checkpoint(path)
    save_checkpoint(path, model, optimizer, pruning)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    fileio.atomic_write_text(target, '{"a": 1}')

    def half(tmp: Path) -> None:
        tmp.write_text('{"a": ')
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        fileio.atomic_write(target, half)
    assert target.read_text() == '{"a": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fileio.atomic_write_bytes(target, b"{}").read_bytes() == b"{}"


def test_pruning_state_checks_without_loading(adam_checkpoint: Path) -> None:
    _, _, pruning = _setup("snip_momentum", init_seed=5)
    state = read_checkpoint(adam_checkpoint)["pruning"]
    pruning.check_state_dict(state)
    assert pruning.step == 0  # checked, not loaded
    state["scored_at"] = True
    with pytest.raises(StateError, match=r"'scored_at' is True \(bool\)"):
        pruning.check_state_dict(state)
    with pytest.raises(StateError, match="check_state_dict called before on_train_begin"):
        Pruning(_config("magnitude")).check_state_dict(state)


# -- sparse files and folders ------------------------------------------------------------------
Saved = tuple[nn.Module, Pruning, Path]  # a model, its pruning, and the folder save_pretrained_sparse wrote


@pytest.fixture(scope="module")
def _saved_bert(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    pytest.importorskip("transformers")
    from pytorch_pruner import prune_
    from pytorch_pruner.export import save_pretrained_sparse

    from .conftest import make_bert

    model = make_bert()
    pruning = prune_(model, {"names": ["encoder"]}, pattern="4x1", target_sparsity=0.75)
    return model, pruning, save_pretrained_sparse(model, tmp_path_factory.mktemp("bert") / "sparse-bert", pruning)


@pytest.fixture
def sparse_folder(tmp_path: Path, _saved_bert: Saved) -> Saved:
    """A BERT pruned and saved with save_pretrained_sparse (once), and a copy of its folder to damage."""
    model, pruning, folder = _saved_bert
    return model, pruning, Path(shutil.copytree(folder, tmp_path / "sparse-bert"))


def test_failed_config_write_keeps_the_old_config_json(sparse_folder: Saved, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing config.json failed mid-way: it used to be left at 0 bytes."""
    pytest.importorskip("transformers")
    from pytorch_pruner.export import load_pretrained_sparse, save_pretrained_sparse

    model, pruning, folder = sparse_folder
    good = (folder / "config.json").read_bytes()
    assert json_loads(good)["architectures"] == ["BertForSequenceClassification"]
    real_write_text = Path.write_text

    def crash(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith("config.json"):
            real_write_text(self, text[:10], *args, **kwargs)
            raise OSError("disk full")
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_sparse(model, folder, pruning)
    monkeypatch.undo()
    assert (folder / "config.json").read_bytes() == good
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.sparse.safetensors"]
    load_pretrained_sparse(folder)


def json_loads(data: bytes) -> Any:
    import json

    return json.loads(data)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda text: text[: len(text) // 2], r"config\.json' is damaged \(not readable JSON: JSONDecodeError"),
        (lambda text: "", r"config\.json' is damaged \(not readable JSON"),
        (lambda text: text.replace('"bert"', '"no-such-model"'), r"config\.json' does not describe a model "
                                                                 r"transformers can build \(ValueError"),
        (lambda text: text.replace('"hidden_size": 32', '"hidden_size": "wide"'), r"config\.json' does not describe"),
        (lambda text: text.replace('"hidden_size": 32', '"hidden_size": 48'), r"safetensors' was saved from another "
                                                                              r"model"),
    ],
)  # fmt: skip
def test_damaged_config_json_raises_state_error_naming_it(
    sparse_folder: Saved, damage: Callable[[str], str], match: str
) -> None:
    pytest.importorskip("transformers")
    from pytorch_pruner.export import load_pretrained_sparse

    _, _, folder = sparse_folder
    config = folder / "config.json"
    config.write_text(damage(config.read_text()))
    with pytest.raises(StateError, match=match):
        load_pretrained_sparse(folder)


def _rewrite_metadata(path: Path, edit: Callable[[dict[str, str]], None], reseal: bool) -> None:
    """Rewrite a sparse file with edited metadata (and a matching checksum if *reseal*)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pytorch_pruner import export

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edit(meta)
    if reseal:
        meta["sha256"] = export._content_sha256(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def _set_meta(key: str, value: str | None) -> Callable[[dict[str, str]], None]:
    def edit(meta: dict[str, str]) -> None:
        if value is None:
            del meta[key]
        else:
            meta[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "reseal", "match"),
    [
        (_set_meta("report", '{"layers": 5'), False, r"is corrupt: its content does not match the SHA-256"),
        (_set_meta("sha256", "0" * 64), False, r"is corrupt: its content does not match the SHA-256"),
        (_set_meta("sha256", None), False, r"is corrupt"),
        (_set_meta("report", '{"layers": 5'), True, r"is a damaged sparse file: JSONDecodeError"),
        (_set_meta("report", "[1, 2]"), True, r"is a damaged sparse file: "),
        (_set_meta("sparse", "[]"), True, r"is a damaged sparse file: TypeError: the 'sparse' and 'aliases'"),
        (
            _set_meta("sparse", '{"bert.pooler.dense.weight": {"shape": "ab"}}'),
            True,
            r"is a damaged sparse file: ValueError",
        ),
        (_set_meta("config", None), True, r"is a damaged sparse file: KeyError: 'config'"),
        (_set_meta("aliases", '{"x": "nowhere"}'), True, r"is a damaged sparse file: KeyError: 'nowhere'"),
    ],
)
def test_damaged_metadata_raises_state_error_naming_the_file(
    sparse_folder: Saved, edit: Callable[[dict[str, str]], None], reseal: bool, match: str
) -> None:
    pytest.importorskip("transformers")
    from pytorch_pruner.export import SPARSE_FILE, load_pretrained_sparse

    _, _, folder = sparse_folder
    _rewrite_metadata(folder / SPARSE_FILE, edit, reseal)
    with pytest.raises(StateError, match=rf"model\.sparse\.safetensors' {match}"):
        load_pretrained_sparse(folder)


def test_every_byte_flip_or_cut_of_a_sparse_file_is_refused(sparse_folder: Saved) -> None:
    pytest.importorskip("transformers")
    from pytorch_pruner.export import SPARSE_FILE, load_pretrained_sparse, read_sparse

    model, _, folder = sparse_folder
    path = folder / SPARSE_FILE
    good = path.read_bytes()
    header = int.from_bytes(good[:8], "little") + 8
    # 60 positions over the whole file, and 20 inside the tensor data (the values themselves)
    positions = {round(i * (len(good) - 1) / 59) for i in range(60)}
    positions |= {header + round(i * (len(good) - header - 1) / 19) for i in range(20)}
    for pos in sorted(positions):
        damaged = bytearray(good)
        damaged[pos] ^= 0x10
        if good[pos : pos + 1] == b" " or damaged[pos : pos + 1] in (b"\t", b"\n", b"\r"):
            continue  # JSON padding of the header: a flip to other whitespace changes nothing
        path.write_bytes(bytes(damaged))
        with pytest.raises(StateError, match=r"model\.sparse\.safetensors' is "):
            read_sparse(path)
    for cut in (0.02, 0.5, 0.99):
        path.write_bytes(good[: int(len(good) * cut)])
        with pytest.raises(StateError, match=r"is not a readable safetensors file \(truncated or corrupt\)"):
            load_pretrained_sparse(folder)
    path.write_bytes(good)
    loaded = load_pretrained_sparse(folder)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_sparse_file_of_format_1_loads_with_a_warning(sparse_folder: Saved) -> None:
    pytest.importorskip("transformers")
    from pytorch_pruner.export import SPARSE_FILE, load_pretrained_sparse

    model, _, folder = sparse_folder

    def old(meta: dict[str, str]) -> None:
        meta["format"] = "pytorch-pruner-sparse/1"
        del meta["sha256"]

    _rewrite_metadata(folder / SPARSE_FILE, old, reseal=False)
    with pytest.warns(UserWarning, match="written without a checksum"):
        loaded = load_pretrained_sparse(folder)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_scheduler_keys_in_the_groups_do_not_block_a_resume(adam_checkpoint: Path) -> None:
    """A scheduler adds ``initial_lr`` to the groups; made before or after the load, it is not an error."""
    model, _, pruning = _setup("snip_momentum", init_seed=5)
    optimizer = _adam(model.parameters())
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)  # own groups: + initial_lr
    load_checkpoint(adam_checkpoint, model, optimizer, pruning)
    saved = read_checkpoint(adam_checkpoint)
    saved["optimizer"]["param_groups"][0]["initial_lr"] = 0.01
    saved["optimizer"]["param_groups"][0]["name"] = "all"
    path = write_checkpoint(adam_checkpoint.with_name("scheduled.pt"), saved)
    model, _, pruning = _setup("snip_momentum", init_seed=5)
    load_checkpoint(path, model, _adam(model.parameters()), pruning)  # saved groups: + initial_lr, name
    assert pruning.step == 9
