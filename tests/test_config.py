import dataclasses

import pytest
import torch

from pytorch_pruner import ConfigError, PrunerConfig, Pruning, PruningConfig, StateError, dump_config, load_config
from pytorch_pruner.config import loads_config

from .conftest import SEED_YAML, make_bert


def test_the_seed_yaml_loads_unchanged() -> None:
    cfg = load_config(SEED_YAML)
    assert cfg.version == 1.0
    assert cfg.model == {"name": "bert-mini", "framework": "pytorch"}
    first, second = cfg.resolved()
    assert first.pattern.name == "1x1" and second.pattern.name == "4x1"
    for p in (first, second):
        assert (p.start_step, p.end_step) == (0, 0)
        assert p.target_sparsity == 0.9
        assert p.max_sparsity_ratio_per_layer == 0.98
        assert p.update_frequency_on_step == 100
        assert p.prune_type == "snip_momentum"
        assert p.sparsity_decay_type == "exp"
        assert p.prune_domain == "global"
        assert p.prune_layer_type == ("Linear",)
        assert p.not_to_prune_names == ("classifier", "pooler", ".*embeddings*")
    assert first.exclude_names == (".*query", ".*key", ".*value")
    assert second.exclude_names == (".*output", ".*intermediate")
    assert first.excluded == ("classifier", "pooler", ".*embeddings*", ".*query", ".*key", ".*value")


def test_seed_yaml_selects_the_intended_bert_layers() -> None:
    model = make_bert()
    pruning = Pruning(SEED_YAML)
    pruning.update_items_for_all_pruners(start_step=1, end_step=1)
    pruning.on_train_begin(model)
    first = {layer.name for layer in pruning.pruners[0].layers}
    second = {layer.name for layer in pruning.pruners[1].layers}
    assert first == {
        f"bert.encoder.layer.{i}.{n}"
        for i in range(2)
        for n in ("attention.output.dense", "intermediate.dense", "output.dense")
    }
    assert second == {f"bert.encoder.layer.{i}.attention.self.{n}" for i in range(2) for n in ("query", "key", "value")}


def test_a_local_key_overrides_only_when_written() -> None:
    cfg = PruningConfig(
        target_sparsity=0.7,
        pattern="2x2",
        prune_type="magnitude",
        pruners=[{"pattern": "1x1"}, PrunerConfig(target_sparsity=0.3)],
    )
    a, b = cfg.resolved()
    assert (a.pattern.name, a.target_sparsity, a.prune_type) == ("1x1", 0.7, "magnitude")
    assert (b.pattern.name, b.target_sparsity, b.prune_type) == ("2x2", 0.3, "magnitude")
    # defaults fill what neither level wrote
    assert a.sparsity_decay_type == "exp" and a.update_frequency_on_step == 1


def test_a_local_list_replaces_the_global_list_and_the_two_exclusion_keys_unite() -> None:
    cfg = PruningConfig(not_to_prune_names=["a"], exclude_names=["b"], pruners=[{"exclude_names": ["c"]}, {}])
    first, second = cfg.resolved()
    assert first.excluded == ("a", "c")
    assert second.excluded == ("a", "b")


def test_the_inner_mapping_alone_and_no_pruners_are_accepted() -> None:
    inner = load_config({"target_sparsity": 0.5, "pattern": "2:4", "pruners": [{"prune_type": "snip"}]})
    assert inner.resolved()[0].prune_type == "snip"
    single = load_config({"target_sparsity": 0.5, "pattern": "2:4"})
    assert len(single.pruners) == 1
    assert single.resolved()[0].pattern.name == "2:4"


def test_plain_mapping_items_without_the_tag_work_in_yaml() -> None:
    # unquoted 2:4 would be the base-60 integer 124 in YAML 1.1; our loader keeps it a string
    cfg = loads_config(
        "pruners:\n  - pattern: 2:4\n    target_sparsity: 0.5\n    start_step: 0x10\n    end_step: 0x10\n"
    )
    assert cfg.resolved()[0].pattern.name == "2:4"
    assert cfg.resolved()[0].start_step == 16


def test_inc_v2_aliases() -> None:
    cfg = load_config(
        {
            "pruning_type": "magnitude",
            "pruning_scope": "local",
            "pruning_frequency": 5,
            "op_names": ["encoder"],
            "excluded_op_names": ["pooler"],
            "pruning_op_types": ["Linear"],
            "max_sparsity_ratio_per_op": 0.8,
            "min_sparsity_ratio_per_op": 0.1,
            "extra_excluded_names": ["x"],
        }
    )
    p = cfg.resolved()[0]
    assert (p.prune_type, p.prune_domain, p.update_frequency_on_step) == ("magnitude", "local", 5)
    assert (p.names, p.not_to_prune_names, p.exclude_names) == (("encoder",), ("pooler",), ("x",))
    assert (p.prune_layer_type, p.max_sparsity_ratio_per_layer, p.min_sparsity_ratio_per_layer) == (
        ("Linear",),
        0.8,
        0.1,
    )


def test_round_trip_through_yaml_keeps_the_seed_format(tmp_path) -> None:
    cfg = load_config(SEED_YAML)
    text = dump_config(cfg)
    assert "!Pruner" in text and "weight_compression_pytorch" in text
    assert loads_config(text) == cfg
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert load_config(path) == cfg


def test_python_config_round_trips_too() -> None:
    cfg = PruningConfig(target_sparsity=0.5, names=["enc"], pruners=[PrunerConfig(pattern="2:4", prune_type="snip")])
    assert loads_config(dump_config(cfg)) == cfg


def test_update_items_for_all_pruners_writes_every_pruner_and_does_not_mutate_the_old_config() -> None:
    pruning = Pruning(SEED_YAML)
    before = pruning.config
    pruning.update_items_for_all_pruners(start_step=10, end_step=200)
    assert [(p.start_step, p.end_step) for p in pruning.config.resolved()] == [(10, 200), (10, 200)]
    assert [(p.start_step, p.end_step) for p in before.resolved()] == [(0, 0), (0, 0)]


def test_update_items_after_on_train_begin_is_a_clear_error() -> None:
    pruning = Pruning({"prune_type": "magnitude"})
    pruning.on_train_begin(make_bert())
    with pytest.raises(StateError, match="must be called before on_train_begin"):
        pruning.update_items_for_all_pruners(end_step=5)


def test_update_items_validates() -> None:
    pruning = Pruning(SEED_YAML)
    with pytest.raises(ConfigError, match=r"end_step: 3 is before start_step 10"):
        pruning.update_items_for_all_pruners(start_step=10, end_step=3)
    with pytest.raises(ConfigError, match=r"target_sparsity: 1.5 is out of range"):
        pruning.update_items_for_all_pruners(target_sparsity=1.5)


def test_configs_are_frozen_and_user_dicts_untouched() -> None:
    user = {"pattern": "4x1", "pruners": [{"names": ["a"]}]}
    cfg = load_config(user)
    assert user == {"pattern": "4x1", "pruners": [{"names": ["a"]}]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pattern = "1x1"  # type: ignore[misc]


def test_ints_are_fine_where_floats_are_expected() -> None:
    assert load_config({"target_sparsity": 0, "max_sparsity_ratio_per_layer": 0}).resolved()[0].target_sparsity == 0.0


def test_layer_types_may_be_classes() -> None:
    cfg = PruningConfig(prune_layer_type=[torch.nn.Linear, "Conv2d"])
    assert cfg.prune_layer_type == ("Linear", "Conv2d")


def test_n_m_caps_are_clamped_to_n_over_m() -> None:
    p = load_config({"pattern": "2:4", "target_sparsity": 0.5}).resolved()[0]
    assert p.max_sparsity_ratio_per_layer == 0.5


def test_gradient_criterion_cannot_prune_one_shot_at_step_zero() -> None:
    pruning = Pruning(SEED_YAML)  # loading the seed file (start = end = 0) is fine
    with pytest.raises(ConfigError, match=r"pruners\[0\]: prune_type 'snip_momentum' needs gradients.*start_step >= 1"):
        pruning.on_train_begin(make_bert())


BAD = [
    ({"target_sparsty": 0.9}, r"target_sparsty: unknown key \(did you mean 'target_sparsity'\?\)"),
    ({"pruners": [{}, {"patern": "4x1"}]}, r"pruners\[1\]\.patern: unknown key \(did you mean 'pattern'\?\)"),
    ({"pruners": [{}, {"pattern": "4x"}]}, r"pruners\[1\]\.pattern: '4x' is not NxM or N:M; allowed"),
    ({"pattern": "2:2"}, r"pattern: '2:2' is malformed.*1 <= N < M"),
    ({"pattern": "3:2"}, r"pattern: '3:2' is malformed.*1 <= N < M"),
    ({"pattern": "0x1"}, r"pattern: '0x1' is malformed.*at least 1"),
    ({"target_sparsity": 1.0}, r"target_sparsity: 1.0 is out of range; allowed: a float in \[0, 1\)"),
    ({"target_sparsity": "high"}, r"target_sparsity: 'high' is not a number"),
    ({"start_step": 1.5}, r"start_step: 1.5 is not an integer"),
    ({"start_step": True}, r"start_step: True is not an integer"),
    ({"update_frequency_on_step": 0}, r"update_frequency_on_step: 0 is too small; allowed: an integer >= 1"),
    ({"start_step": 10, "end_step": 5}, r"pruners\[0\]\.end_step: 5 is before start_step 10"),
    ({"pattern": "2:4", "target_sparsity": 0.6}, r"pruners\[0\]\.target_sparsity: 0.6 is above .* at most 0.5"),
    ({"prune_type": "snip_momentun"}, r"prune_type: 'snip_momentun' is not allowed \(did you mean 'snip_momentum'\?\)"),
    ({"sparsity_decay_type": "expo"}, r"sparsity_decay_type: 'expo' is not allowed.*allowed: cos, cube, exp, linear"),
    ({"prune_domain": "globl"}, r"prune_domain: 'globl' is not allowed \(did you mean 'global'\?\)"),
    ({"names": ["("]}, r"names\[0\]: '\(' is not a valid regular expression"),
    ({"names": 3}, r"names: 3 is not a list"),
    ({"prune_layer_type": ["Linaer"]}, r"prune_layer_type\[0\]: 'Linaer' is not allowed \(did you mean 'Linear'\?\)"),
    (
        {"min_sparsity_ratio_per_layer": 0.5, "max_sparsity_ratio_per_layer": 0.4},
        r"min_sparsity_ratio_per_layer: 0.5 is above",
    ),
    (
        {"excluded_names": ["a"], "not_to_prune_names": ["b"]},
        r"not_to_prune_names: the same setting is also written as 'excluded_names'",
    ),
    ({"pruners": {"pattern": "4x1"}}, r"pruners: .* is not a list"),
    ({"pruners": ["4x1"]}, r"pruners\[0\]: '4x1' is not a mapping"),
    ({"pruning": {"approach": {}}}, r"pruning\.approach\.weight_compression_pytorch: missing"),
    ({"version": 1, "modle": {}}, r"modle: unknown top-level key \(did you mean 'model'\?\)"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_values_are_config_errors_naming_path_value_and_what_is_allowed(data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(data)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        load_config({"bogus": 1})


def test_errors_from_python_dataclasses_too() -> None:
    with pytest.raises(ConfigError, match=r"pattern: '4x' is not NxM or N:M"):
        PrunerConfig(pattern="4x")
    with pytest.raises(ConfigError, match=r"pruners: expected a list of pruners, got a single one"):
        PruningConfig(pruners=PrunerConfig())


def test_missing_file_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruners: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(empty)


def test_structural_errors_name_what_to_write() -> None:
    with pytest.raises(ConfigError, match=r"config: \[1, 2\] is not a mapping; expected the seed's `pruning:` section"):
        loads_config("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"config: \[1, 2\] is not a path, mapping or PruningConfig"):
        load_config([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"pruning_configs: the pruners are also written as `pruners`; keep one"):
        load_config({"pruners": [{}], "pruning_configs": [{}]})
    with pytest.raises(ConfigError, match=r"pruners\[0\]: 3 is not a pruner; allowed: a mapping of pruner keys"):
        PruningConfig(pruners=[3])  # type: ignore[list-item]


def test_registering_a_name_twice_is_refused() -> None:
    from pytorch_pruner import CRITERIA
    from pytorch_pruner.criteria import Magnitude

    with pytest.raises(ValueError, match="prune_type 'magnitude' is already registered"):
        CRITERIA.register("magnitude")(type("Other", (Magnitude,), {}))
