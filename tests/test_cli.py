"""The pytorch-pruner command: validate, layers, report, schedule; output and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pytorch_pruner import Pruning, dump_config, prune_
from pytorch_pruner.checkpoint import CHECKPOINT_FORMAT, save_checkpoint, write_checkpoint
from pytorch_pruner.cli import main, plan_layers

from .conftest import SEED_YAML, make_bert, make_convnet, make_mlp


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write(tmp_path: Path, data: dict, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


# -- usage -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["validate"],
        ["layers", "c.yaml"],
        ["schedule", "c.yaml", "--steps", "0"],
        ["schedule", "c.yaml", "--steps", "ten"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert "usage: pytorch-pruner" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    assert all(cmd in out for cmd in ("validate", "layers", "report", "schedule"))


# -- validate ----------------------------------------------------------------------------------
def test_validate_ok_on_the_seed_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "validate", str(SEED_YAML))
    assert code == 0 and err == ""
    assert out.startswith(f"OK: {SEED_YAML} (2 pruner(s))")
    assert "pruners[0]: snip_momentum, pattern 1x1, target 0.9" in out
    assert "pruners[1]: snip_momentum, pattern 4x1" in out
    assert "note: pruners[0] uses a gradient criterion one-shot at step 0; set start_step >= 1" in out


def test_validate_lists_every_bad_value_with_its_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = _write(
        tmp_path, {"target_sparsity": 1.5, "pruners": [{"pattern": "4x1"}, {"pattern": "4x", "prune_typo": 1}]}
    )
    code, out, err = _run(capsys, "validate", bad)
    assert code == 1 and out == ""
    assert err.startswith(f"{bad}: 3 error(s)")
    assert "target_sparsity: 1.5 is out of range" in err
    assert "pruners[1].pattern: '4x' is not NxM or N:M" in err
    assert "pruners[1].prune_typo: unknown key" in err


def test_validate_reports_cross_key_and_file_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cross = _write(tmp_path, {"start_step": 10, "end_step": 5})
    code, _, err = _run(capsys, "validate", cross)
    assert code == 1
    assert "pruners[0].end_step: 5 is before start_step 10" in err
    code, _, err = _run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert code == 1 and "not found" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("pruners: [\n")
    code, _, err = _run(capsys, "validate", str(broken))
    assert code == 1 and "not valid YAML" in err


# -- layers ------------------------------------------------------------------------------------
# pruners[0] takes the convolutions; pruners[1] sees conv1 excluded, conv2 claimed, and a head of
# 4 rows that 8x1 cannot tile; the Linear-only pruners[2] skips both convolutions for their type.
LAYERS_CFG = {
    "prune_type": "magnitude",
    "pruners": [
        {"names": ["conv"], "pattern": "4x1", "prune_layer_type": ["Conv2d"]},
        {"pattern": "8x1", "exclude_names": ["conv1"]},
        {"names": ["nothing_here"], "prune_layer_type": ["Linear"]},
    ],
}


def test_layers_with_a_factory_explains_every_skip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = _write(tmp_path, LAYERS_CFG)
    code, out, err = _run(capsys, "layers", cfg, "--model", "tests.conftest:make_convnet")
    assert code == 0, err
    assert "pruners[0]: magnitude, pattern 4x1 — selects 2 of 3 layers" in out
    assert re.search(r"skipped\s+head\s+Linear\s+4x16\s+type Linear not in prune_layer_type \['Conv2d'\]", out)
    assert "excluded by 'conv1' (exclude_names)" in out
    assert "claimed by pruners[0]" in out
    assert "pattern 8x1 needs rows divisible by 8 and columns by 1; the 2-D weight is [4, 16]" in out
    assert "pruners[2]: magnitude, pattern 4x1 — selects 0 of 3 layers" in out
    assert "matches none of names ['nothing_here']" in out
    assert "warning: pruners[2] selects no layer" in out


def test_layers_json_agrees_with_what_pruning_does(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = _write(tmp_path, LAYERS_CFG)
    code, out, _ = _run(capsys, "layers", cfg, "--model", "tests.conftest:make_convnet", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {(r["pruner"], r["layer"]): r["reason"] is None for r in rows} == {
        (0, "conv1"): True,
        (0, "conv2"): True,
        (0, "head"): False,
        (1, "conv1"): False,
        (1, "conv2"): False,
        (1, "head"): False,
        (2, "conv1"): False,
        (2, "conv2"): False,
        (2, "head"): False,
    }
    assert plan_layers(LAYERS_CFG, make_convnet()) == rows
    pruning = Pruning(LAYERS_CFG)
    with pytest.warns(UserWarning):
        pruning.on_train_begin(make_convnet())
    for i, pruner in enumerate(pruning.pruners):
        assert [layer.name for layer in pruner.layers] == [
            r["layer"] for r in rows if r["pruner"] == i and r["selected"]
        ]
        skipped_for_pattern = [
            r["layer"] for r in rows if r["pruner"] == i and (r["reason"] or "").startswith("pattern")
        ]
        assert [name for name, _ in pruner.skipped] == skipped_for_pattern


def test_layers_with_a_transformers_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    make_bert().config.save_pretrained(str(tmp_path / "bert"))  # no architectures entry: AutoModel
    code, out, err = _run(capsys, "layers", str(SEED_YAML), "--model", str(tmp_path / "bert"))
    assert code == 0, err
    assert "pruners[0]: snip_momentum, pattern 1x1 — selects 6 of 13 layers" in out  # AutoModel: no classifier
    assert "excluded by '.*query' (exclude_names)" in out
    assert "excluded by 'pooler' (not_to_prune_names)" in out
    assert "pruners[1]: snip_momentum, pattern 4x1 — selects 6 of 13 layers" in out


def test_layers_set_reads_values_as_the_config_does(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = _write(tmp_path, {"prune_type": "magnitude"})
    # YAML 1.1 would read 2:4 as the sexagesimal int 124; the config's loader keeps it a pattern
    code, out, err = _run(
        capsys,
        "layers",
        cfg,
        "--model",
        "tests.conftest:make_mlp",
        "--set",
        "pattern=2:4",
        "--set",
        "target_sparsity=0.5",
    )
    assert code == 0, err
    assert "pruners[0]: magnitude, pattern 2:4 — selects 3 of 3 layers" in out


def test_layers_model_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = _write(tmp_path, LAYERS_CFG)
    code, _, err = _run(capsys, "layers", cfg, "--model", "no_colon_here")
    assert code == 2 and "neither a folder with config.json nor 'package.module:function'" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "layers", cfg, "--model", str(tmp_path / "empty"))
    assert code == 2 and "the folder has no config.json" in err
    code, _, err = _run(capsys, "layers", cfg, "--model", "tests.conftest:no_such_factory")
    assert code == 1 and "cannot import it" in err
    code, _, err = _run(capsys, "layers", cfg, "--model", "tests.conftest:SEED_YAML")
    assert code == 1 and "is a PosixPath, not a function returning a model" in err
    code, _, err = _run(capsys, "layers", cfg, "--model", "tests.conftest:train_steps")
    assert code == 1 and "calling it failed: TypeError" in err
    code, _, err = _run(capsys, "layers", cfg, "--model", "json:dumps")
    assert code == 1 and "calling it failed" in err
    code, _, err = _run(capsys, "layers", cfg, "--model", "builtins:object")
    assert code == 1 and "returned object, not an nn.Module" in err


# -- report ------------------------------------------------------------------------------------
@pytest.fixture
def pruned(tmp_path: Path) -> tuple[Path, Path, dict]:
    pytest.importorskip("safetensors")
    from pytorch_pruner.export import save_sparse

    model = make_convnet()
    pruning = prune_(model, {"pattern": "8x1"}, target_sparsity=0.5)  # head (4 rows) is skipped
    sparse = save_sparse(tmp_path / "m.safetensors", model, pruning)
    ckpt = save_checkpoint(tmp_path / "c.pt", model, None, pruning)
    return sparse, ckpt, pruning.report().to_dict()


def test_report_table_of_a_sparse_file_and_a_checkpoint(capsys: pytest.CaptureFixture[str], pruned: tuple) -> None:
    sparse, ckpt, expected = pruned
    for path in (sparse, sparse.parent / "m.safetensors", ckpt):
        code, out, err = _run(capsys, "report", str(path))
        assert code == 0, err
        assert "conv1" in out and "conv2" in out and "8x1" in out
        assert "skipped: pattern 8x1 needs rows divisible by 8" in out
        ratio = expected["ratios"]["elementwise_over_matmul_gemm_conv"]
        assert f"elementwise_over_matmul_gemm_conv: {ratio:.4f}" in out


def test_report_json_and_plot(capsys: pytest.CaptureFixture[str], pruned: tuple, tmp_path: Path) -> None:
    sparse, ckpt, expected = pruned
    code, out, _ = _run(capsys, "report", str(sparse), "--json")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(expected))
    pytest.importorskip("matplotlib")
    (tmp_path / "taken").write_text("a file, not a folder")
    code, _, err = _run(capsys, "report", str(ckpt), "--plot", str(tmp_path / "taken" / "r.png"))
    assert code == 1 and err.startswith("pytorch-pruner report: error: ")
    code, out, _ = _run(capsys, "report", str(ckpt), "--plot", str(tmp_path / "r.png"))
    assert code == 0 and f"wrote {tmp_path / 'r.png'}" in out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from pytorch_pruner.export import save_pretrained_sparse

    model = make_bert()
    pruning = prune_(model, {"names": ["encoder"]}, pattern="4x1", target_sparsity=0.5)
    save_pretrained_sparse(model, tmp_path / "bert", pruning)
    code, out, _ = _run(capsys, "report", str(tmp_path / "bert"))
    assert code == 0 and "bert.encoder.layer.1.output.dense" in out


def test_report_errors(capsys: pytest.CaptureFixture[str], pruned: tuple, tmp_path: Path) -> None:
    sparse, ckpt, _ = pruned
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    code, out, err = _run(capsys, "report", str(ckpt))
    assert code == 1 and out == ""
    assert "not a readable checkpoint (truncated or corrupt)" in err
    sparse.write_bytes(sparse.read_bytes()[:100])
    code, _, err = _run(capsys, "report", str(sparse))
    assert code == 1 and "not a readable safetensors file (truncated or corrupt)" in err
    code, _, err = _run(capsys, "report", str(tmp_path / "nothing.pt"))
    assert code == 1 and "not found" in err
    model = make_mlp()
    pruning = prune_(model, pattern="1x1", target_sparsity=0.5)
    data = {
        "pytorch_pruner_checkpoint": CHECKPOINT_FORMAT,
        "model": {},
        "optimizer": None,
        "pruning": pruning.state_dict(),
        "extra": {},
    }
    write_checkpoint(tmp_path / "noreport.pt", data)
    code, _, err = _run(capsys, "report", str(tmp_path / "noreport.pt"))
    assert code == 1 and "holds no report; write checkpoints with save_checkpoint" in err
    write_checkpoint(tmp_path / "badreport.pt", {**data, "report": {"step": 1}})
    code, _, err = _run(capsys, "report", str(tmp_path / "badreport.pt"))
    assert code == 1 and "holds a damaged report (KeyError" in err


# -- schedule ----------------------------------------------------------------------------------
def test_schedule_prints_the_target_per_pruning_step(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = _write(
        tmp_path,
        {
            "start_step": 0,
            "end_step": 100,
            "update_frequency_on_step": 10,
            "pruners": [{}, {"pattern": "2:4", "target_sparsity": 0.5, "sparsity_decay_type": "linear"}],
        },
    )
    code, out, _ = _run(capsys, "schedule", cfg)
    assert code == 0
    assert "pruners[0]: steps 0..100, every 10 steps, exp, final 0.9" in out
    assert "  50    0.6838\n" in out and "  100   0.9000\n" in out
    assert "pruners[1]: steps 0..100, every 10 steps, linear, final 0.5" in out
    assert "  50    0.2500\n" in out
    assert "note:" not in out

    code, out, _ = _run(capsys, "schedule", cfg, "--steps", "55", "--json")
    data = json.loads(out)
    assert [p["step"] for p in data[0]["steps"]] == [0, 10, 20, 30, 40, 50]
    assert data[1]["steps"][-1] == {"step": 50, "target": 0.25}
    code, out, _ = _run(capsys, "schedule", cfg, "--steps", "55")
    assert "note: a run of 55 steps ends before pruners[0] reaches 0.9 (at step 100)" in out


def test_schedule_set_overrides_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(
        capsys,
        "schedule",
        str(SEED_YAML),
        "--set",
        "start_step=10",
        "--set",
        "end_step=30",
        "--set",
        "update_frequency_on_step=10",
    )
    assert code == 0
    assert out.count("steps 10..30, every 10 steps, exp, final 0.9") == 2
    assert "  30    0.9000" in out
    code, _, err = _run(capsys, "schedule", str(SEED_YAML), "--set", "start_step=-1")
    assert code == 1 and "start_step: -1 is too small" in err
    code, _, err = _run(capsys, "schedule", str(SEED_YAML), "--set", "start_step")
    assert code == 2 and "expected KEY=VALUE" in err
    pytest.importorskip("matplotlib")
    code, out, _ = _run(capsys, "schedule", str(SEED_YAML), "--plot", str(tmp_path / "s.png"))
    assert code == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_schedule_of_a_dumped_config_round_trips(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pruning = Pruning({"start_step": 2, "end_step": 6, "update_frequency_on_step": 2, "sparsity_decay_type": "cube"})
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(pruning.config))
    code, out, _ = _run(capsys, "schedule", str(path))
    assert code == 0 and "  6     0.9000" in out and "  4     0.1125" in out
