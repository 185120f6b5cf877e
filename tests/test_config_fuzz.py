"""Fuzzing the config loader (issue #9): mutated configs raise only ConfigError, naming the path of
the bad value; the accepted ones train a tiny model.

Fixed seed, 2,000 cases: dict mutations (values of every type, NaN/inf, regex syntax errors, bad
patterns, unknown keys, deletions) and text mutations of the YAML (junk, python tags, aliases,
deep nesting, non-UTF-8 bytes).
"""

import math
import random
import warnings
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from pytorch_pruner import ConfigError, NoMatchingLayersError, Pruning, dump_config, load_config
from pytorch_pruner.config import KEYS

SEED = 20261129
CASES = 2000
TRAINED = 24  # accepted configs trained (a sample, to stay within the test-time budget)

BASES: list[dict[str, Any]] = [
    {"start_step": 1, "end_step": 4, "target_sparsity": 0.5, "pattern": "1x1", "prune_type": "magnitude"},
    {
        "start_step": 1,
        "end_step": 6,
        "update_frequency_on_step": 2,
        "pruners": [
            {"pattern": "4x1", "target_sparsity": 0.6, "names": ["0"]},
            {"pattern": "2:4", "target_sparsity": 0.5, "prune_type": "snip", "names": ["2"]},
        ],
    },
    {
        "start_step": 2,
        "end_step": 2,
        "pattern": "channelx1",
        "prune_domain": "local",
        "exclude_names": ["^2$"],
        "max_sparsity_ratio_per_layer": 0.9,
        "min_sparsity_ratio_per_layer": 0.1,
        "sparsity_decay_type": "cos",
    },
]

JUNK: list[Any] = [
    None,
    True,
    0,
    -1,
    1,
    3,
    10**30,
    -(10**30),
    0.5,
    1.0,
    -0.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    "",
    " ",
    "4x0",
    "0x4",
    "0:4",
    "4:4",
    "5:4",
    "2:4",
    "4x1",
    "1x1",
    "head:0",
    "head:8",
    "channelx0",
    "0xchannel",
    "channelx4",
    "4x",
    ":",
    "x",
    "tile_pattern_",
    "snip",
    "global",
    "exp",
    "Linear",
    "Conv",
    "(",
    "[",
    "*",
    "a{4294967296}",
    "(?P<x>",
    "\\",
    "(" * 400 + ")" * 400,
    [],
    [None],
    ["("],
    ["a{99999999999}"],
    [".*"],
    ["Linear", "Conv7d"],
    [1, 2],
    [[["deep"]]],
    {},
    {"a": 1},
    {"pattern": "1x1"},
    ("tuple",),
    b"bytes",
    object(),
]

TEXT_JUNK = [
    "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system",
    "!Pruner 5",
    "&a [*a]",
    "*undefined",
    "[" * 3000,
    "{" * 50 + "}" * 50,
    "'unterminated",
    '"\\x"',
    "\t\t",
    ": :",
    "- - -",
    "0o777",
    "0x",
    "1_000",
    ".inf",
    ".nan",
    "~",
    "yes",
    "2:4:8",
    "1" + "0" * 5000,
    "? complex\n: key",
    "%YAML 1.1\n---",
    "---\n---",
]


def _mutate_value(rng: random.Random, config: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """Put a junk value under a key (global or in a pruner); return (config, key written, path)."""
    keys = [k.name for k in KEYS] + [alias for k in KEYS for alias in k.aliases]
    key = rng.choice([*keys, "pruners", "bogus_key", "target_sparsty", "initial_sparsity", "update_frequency"])
    value = rng.choice(JUNK)
    pruners = config.get("pruners")
    if isinstance(pruners, list) and pruners and rng.random() < 0.5 and key != "pruners":
        i = rng.randrange(len(pruners))
        if not isinstance(pruners[i], dict):
            pruners[i] = {}
        pruners[i] = {k: v for k, v in pruners[i].items() if k != key and _canonical(k) != _canonical(key)}
        pruners[i][key] = value
        return config, key, f"pruners[{i}]"
    for other in list(config):
        if other != key and _canonical(other) == _canonical(key):
            del config[other]
    config[key] = value
    return config, key, ""


def _canonical(key: str) -> str:
    for k in KEYS:
        if key == k.name or key in k.aliases:
            return k.name
    return key


def _dict_case(rng: random.Random) -> tuple[Any, list[str]]:
    config = _copy(rng.choice(BASES))
    touched: list[str] = []
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.8:
            config, key, where = _mutate_value(rng, config)
            touched.append(key)
            if where:
                touched.append(where)
        elif config:
            key = rng.choice(list(config))
            del config[key]
            touched.append(key)
    return config, touched


def _text_case(rng: random.Random) -> tuple[Any, list[str]]:
    text = dump_config(load_config(_copy(rng.choice(BASES))))
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    roll = rng.random()
    junk = rng.choice(TEXT_JUNK)
    if roll < 0.4 and ":" in lines[i]:
        head = lines[i].split(":", 1)[0]
        lines[i] = f"{head}: {junk}"
    elif roll < 0.7:
        lines.insert(i, junk)
    elif roll < 0.85:
        cut = rng.randrange(len(text))
        return text[:cut] + rng.choice(["\x00", "\t", "\ufffd", "\u2028", "'", '"', "&", "!", "%"]) + text[cut:], []
    else:
        data = text.encode()
        cut = rng.randrange(len(data))
        return data[:cut] + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE])]) + data[cut:], []
    return "\n".join(lines) + "\n", []


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(config: Any) -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    pruning = Pruning(config)
    try:
        pruning.on_train_begin(model)
    except (ConfigError, NoMatchingLayersError):
        # documented refusals at the start, never mid-training: a gradient criterion one-shot at
        # step 0 (SPEC §1.2), or names that match no layer
        return
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(8, 16)
    for step in range(8):
        pruning.on_step_begin(step)
        model(x).square().mean().backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad()
    for p in pruning.pruners:
        for layer in p.layers:
            assert bool((layer.target.weight[~p.full_mask(layer)] == 0).all())
            assert math.isfinite(layer.sparsity)


def test_mutated_configs_raise_only_config_errors_naming_the_path_and_the_rest_train() -> None:
    rng = random.Random(SEED)
    accepted: list[Any] = []
    rejected = 0
    for case in range(CASES):
        source, touched = _dict_case(rng) if case % 2 == 0 else _text_case(rng)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # INC's older keys warn by design
                config = load_config(source)
        except ConfigError as error:
            rejected += 1
            message = str(error)
            assert len(message) < 2000, message[:300]
            if touched:  # a dict mutation: the message names the key written, or the pruner's path
                assert any(t in message for t in touched) or message.startswith(("pruners", "config")), (
                    touched,
                    message[:300],
                )
            else:  # a text mutation: a key path, a line/column, or what the text is
                assert any(s in message for s in (":", "line", "column", "UTF-8", "YAML", "mapping", "config")), (
                    message[:300]
                )
            continue
        except Exception as error:
            pytest.fail(f"case {case}: {type(error).__name__} escaped: {str(error)[:300]} from {str(source)[:300]}")
        accepted.append(config)
        # what loads dumps and loads back equal
        assert load_config(dump_config(config)) == config
    assert rejected > CASES // 2 and len(accepted) > CASES // 20  # both paths are exercised
    for config in random.Random(SEED).sample(accepted, TRAINED):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _train(config)


def test_the_fuzzer_finds_a_bad_value_it_plants() -> None:
    rng = random.Random(1)
    config, key, where = _mutate_value(rng, _copy(BASES[0]))
    config[key] = float("nan") if key != "pruners" else 5
    with pytest.raises(ConfigError):
        load_config(config | {"target_sparsity": float("nan")})
    assert yaml is not None and where == ""
