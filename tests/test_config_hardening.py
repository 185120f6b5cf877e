"""Issue #9, config and CLI: bad input raises only ConfigError (or exits with a message), INC's
configs are read as INC read them."""

import json
import time
import warnings
from pathlib import Path

import pytest
from torch import nn

from pytorch_pruner import ConfigError, Pruning, PruningConfig, load_config
from pytorch_pruner.cli import main
from pytorch_pruner.config import loads_config

from .conftest import make_bert


# -- each failure found by fuzzing, reproduced --------------------------------------------------
def test_a_non_utf8_byte_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"target_sparsity: 0.5\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"line 2: byte 0xe9 is not UTF-8; save the file as UTF-8"):
        load_config(path)


@pytest.mark.parametrize(
    "text",
    [
        "names: " + "[" * 5000 + "]" * 5000,  # deep YAML
        "names: ['" + "(" * 3000 + ")" * 3000 + "']",  # deep regex
    ],
    ids=["yaml", "regex"],
)
def test_deep_nesting_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"nests too deep|names|not valid YAML"):
        loads_config(text)


def test_a_huge_regex_repeat_is_a_config_error_naming_the_path() -> None:
    with pytest.raises(ConfigError, match=r"^names\[0\]: 'a\{4294967296\}' is not a valid regular expression"):
        load_config({"names": ["a{4294967296}"]})


def test_an_integer_past_pythons_digit_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"a value can't be read"):
        loads_config("start_step: 1" + "0" * 5000)
    with pytest.raises(ConfigError, match=r"^start_step: <an integer of \d+ bits> is too small"):
        load_config({"start_step": -(10**5000)})


def test_yaml_text_where_a_path_is_expected_is_read_or_refused_clearly() -> None:
    assert load_config("target_sparsity: 0.5\npattern: 1x1\n").resolved()[0].target_sparsity == 0.5
    assert load_config("{target_sparsity: 0.5}").resolved()[0].target_sparsity == 0.5
    with pytest.raises(ConfigError, match=r"not found; pass a YAML path, a dict, a PruningConfig, or YAML text"):
        load_config("target_sparsity 0.5")
    with pytest.raises(ConfigError, match=r"^config file 'x+\.\.\. can't be read: File name too long"):
        load_config("x" * 5000)  # OSError before


def test_pruners_of_a_wrong_type_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^pruners: 5 is not a list"):
        PruningConfig(pruners=5)  # type: ignore[arg-type]


def test_python_tags_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML: .*python/object"):
        loads_config("target_sparsity: !!python/object/apply:os.system ['true']")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (5, r"^model: 5 is not a mapping"),
        ({"name": {"deep": 1}}, r"^model\.name: \{'deep': 1\} is not a plain value"),
        ({"name": float("nan")}, r"^model\.name: nan is not a plain value"),
    ],
)
def test_the_model_section_is_checked_at_load(model: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"model": model, "pruning": {"approach": {"weight_compression_pytorch": {}}}})


def test_an_error_echoes_at_most_a_slice_of_a_huge_value() -> None:
    # 510 bytes of nested aliases: 9^8 strings when expanded (an 8.6 MB message before)
    lines = ["a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefg"[i]
        lines.append(f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    lines.append("target_sparsity: *h")
    text = "\n".join(lines)
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    assert len(str(info.value)) < 1000


# -- INC compatibility (SPEC §1.2) ------------------------------------------------------------------
def test_incs_older_keys_load_with_a_warning_naming_what_to_use() -> None:
    with pytest.warns(UserWarning, match=r"pruners\[0\]\.update_frequency: .* Use instead: update_frequency_on_step"):
        cfg = load_config({"pruners": [{"update_frequency": 10, "initial_sparsity": 0.0, "pattern": "1x1"}]})
    assert cfg.resolved()[0].update_frequency_on_step == 1  # ignored, as INC's pruner ignored it
    with pytest.raises(ConfigError, match=r"^initial_sparsity: 0.3 is not supported; pruning always starts"):
        load_config({"initial_sparsity": 0.3})


def test_incs_conv_layer_type_matches_every_conv_as_inc_did() -> None:
    cfg = load_config({"pruning_op_types": ["Conv", "Linear"], "pattern": "1x1"})
    assert cfg.resolved()[0].prune_layer_type == ("Conv1d", "Conv2d", "Conv3d", "Conv1D", "Linear")
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv3d(8, 8, 1), nn.Linear(8, 8))
    pruning = Pruning(
        {"pruning_op_types": ["Conv", "Linear"], "pattern": "1x1", "prune_type": "magnitude", "target_sparsity": 0.5}
    )
    pruning.on_train_begin(model)
    assert [layer.name for layer in pruning.pruners[0].layers] == ["0", "1", "2", "3"]


def test_incs_v2_seed_style_config_loads() -> None:
    text = """
pruning:
  approach:
    weight_compression_pytorch:
      pruning_type: snip_momentum
      pruning_scope: global
      pruning_frequency: 50
      pruning_op_types: ["Conv", "Linear"]
      excluded_op_names: ["classifier"]
      start_step: 1
      end_step: 100
      pruners:
        - !Pruner
            op_names: ["layer"]
            pattern: "4x1"
            target_sparsity: 0.8
            initial_sparsity: 0.0
            update_frequency: 50
"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (s,) = loads_config(text).resolved()
    assert {str(w.message).split(":")[0] for w in caught} == {
        "pruners[0].initial_sparsity",
        "pruners[0].update_frequency",
    }
    assert (s.update_frequency_on_step, s.names, s.not_to_prune_names) == (50, ("layer",), ("classifier",))
    pruning = Pruning(loads_config(text))
    pruning.on_train_begin(make_bert())
    assert pruning.pruners[0].layers


# -- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("pattern=!!python/object/apply:os.system ['true']", "not valid YAML"),
        ("start_step=[[[", "not valid YAML"),
        ("start_step=1" + "0" * 5000, "can't be read"),
        ("target_sparsity=.nan", "out of range"),
        ("bogus=1", "unknown key"),
        ("pattern=4x0", "malformed"),
    ],
)
def test_junk_set_values_exit_1_with_a_message_not_a_traceback(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("target_sparsity: 0.5\n")
    assert main(["schedule", str(cfg), "--set", value]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err) < 2000


def test_an_unknown_model_folder_exits_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("target_sparsity: 0.5\n")
    for body in ('{"model_type": "no-such-model"}', "{not json"):
        folder = tmp_path / f"m{len(body)}"
        folder.mkdir()
        (folder / "config.json").write_text(body)
        assert main(["layers", str(cfg), "--model", str(folder)]) == 1
        err = capsys.readouterr().err
        assert "can't build a model from this folder" in err and "Traceback" not in err


@pytest.mark.parametrize("steps", [None, 10])
def test_a_window_of_a_trillion_steps_schedules_at_once(
    steps: int | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("target_sparsity: 0.5\nstart_step: 1\nend_step: 1000000000000\nsparsity_decay_type: linear\n")
    started = time.perf_counter()
    assert main(["schedule", str(cfg), "--json", *(["--steps", str(steps)] if steps else [])]) == 0
    assert time.perf_counter() - started < 30  # was: GBs allocated, then a hang
    (pruner,) = json.loads(capsys.readouterr().out)
    points = pruner["steps"]
    if steps is None:
        assert len(points) == 1000  # MAX_POINTS, spread evenly, first and last kept
        assert points[0] == {"step": 1, "target": 0.0} and points[-1] == {"step": 10**12, "target": 0.5}
    else:
        assert [p["step"] for p in points] == list(range(1, 10))
    assert main(["schedule", str(cfg)]) == 0
    assert "(1000 of 1000000000000 pruning steps shown, spread evenly)" in capsys.readouterr().out


def test_the_cli_reports_a_non_utf8_file_as_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"pattern: \xff\xfe\n")
    for command in (["validate", str(bad)], ["schedule", str(bad)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "not UTF-8" in err and "Traceback" not in err


def test_validate_lists_every_bad_key_with_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("target_sparsity: 2\npruners:\n  - pattern: 4x0\n    prune_type: nope\n")
    assert main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "3 error(s)" in err
    for path in ("target_sparsity: 2", "pruners[0].pattern: '4x0'", "pruners[0].prune_type: 'nope'"):
        assert path in err
