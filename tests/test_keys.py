"""The key table (config/keys.py) is the one place a config key is declared."""

import ast
import dataclasses
from pathlib import Path

import pytest

from pytorch_pruner import PrunerConfig, PruningConfig, dump_config, load_config
from pytorch_pruner.cli import main
from pytorch_pruner.config import ALIASES, DEFAULTS, KEYS, PrunerSettings, keys_markdown

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pytorch_pruner"
TABLE = SRC / "config" / "keys.py"


def test_the_readme_key_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin = readme.index("<!-- keys:begin")
    begin = readme.index("\n", begin) + 1
    end = readme.index("<!-- keys:end -->")
    assert readme[begin:end] == keys_markdown(), (
        "README's key table is stale: paste the output of `pytorch-pruner keys --markdown` between the markers"
    )


def test_the_cli_prints_the_same_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "--markdown"]) == 0
    assert capsys.readouterr().out == keys_markdown()
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    assert all(k.name in out for k in KEYS)


def test_every_schema_class_takes_its_keys_and_defaults_from_the_table() -> None:
    names = [k.name for k in KEYS]
    assert [f.name for f in dataclasses.fields(PrunerConfig)] == names
    assert [f.name for f in dataclasses.fields(PruningConfig)][: len(names)] == names
    assert [f.name for f in dataclasses.fields(PrunerSettings)][: len(names)] == names
    assert {k.name: k.default for k in KEYS} == DEFAULTS
    assert {a: k.name for k in KEYS for a in k.aliases} == ALIASES
    # an empty config resolves to exactly the table's defaults
    (settings,) = PruningConfig().resolved()
    for k in KEYS:
        value = getattr(settings, k.name)
        assert (value.name if k.name == "pattern" else value) == k.default, k.name


def test_every_key_is_checked_by_its_table_entry_in_every_form() -> None:
    # the same bad value fails the same way as a dataclass field, a dict key, and an alias
    for k in KEYS:
        bad = object()
        with pytest.raises(ValueError, match=rf"^{k.name}: "):
            PrunerConfig(**{k.name: bad})
        with pytest.raises(ValueError, match=rf"pruners\[0\]\.{k.name}: "):
            load_config({"pruners": [{k.name: bad}]})
        for alias in k.aliases:
            with pytest.raises(ValueError, match=rf"pruners\[0\]\.{alias}: "):
                load_config({"pruners": [{alias: bad}]})


def test_dump_writes_every_key_of_the_table_and_loads_back_equal() -> None:
    values = {k.name: k.default for k in KEYS}
    values["pattern"] = "2:4"
    values["target_sparsity"] = 0.5
    cfg = PruningConfig(**values, pruners=[dict(values)])
    text = dump_config(cfg)
    for k in KEYS:
        assert f"{k.name}:" in text
    assert load_config(text) == cfg  # YAML text where a path is expected is read as YAML


def _literal(node: ast.AST) -> object:
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return _NOT_LITERAL
    return tuple(value) if isinstance(value, list) else value


_NOT_LITERAL = object()


def _default_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, key) where a key's default is restated outside the table: a table of defaults (a dict
    literal of two or more keys, each at its default), a field ``key: T = default``, a parameter
    ``key=default``, or a fallback ``getattr(x, "key", default)`` / ``x.get("key", default)``.
    Explicit choices (keyword arguments in calls, a dict that mixes in other values) and neutral
    defaults (``()``, ``[]``, ``False``) are not restatements."""
    defaults = {k.name: k.default for k in KEYS}
    hits = []

    def same(name: object, value_node: ast.AST | None) -> bool:
        if not isinstance(name, str) or name not in defaults or value_node is None:
            return False
        value = _literal(value_node)
        default = defaults[name]
        neutral = value == () or value is False  # "none" / "off" say nothing about a key's default
        return value is not _NOT_LITERAL and not neutral and type(value) is type(default) and value == default

    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and len(node.keys) >= 2:
            pairs = list(zip(node.keys, node.values, strict=True))
            at_default = [k.value for k, v in pairs if isinstance(k, ast.Constant) and same(k.value, v)]
            neutral = [
                k
                for k, v in pairs
                if isinstance(k, ast.Constant) and k.value in defaults and (_literal(v) == () or _literal(v) is False)
            ]
            if len(at_default) >= 2 and len(at_default) + len(neutral) == len(pairs):
                hits += [(node.lineno, name) for name in at_default]
        elif isinstance(node, ast.arguments):
            args = [*node.posonlyargs, *node.args]
            pairs = [
                *zip(args[len(args) - len(node.defaults) :], node.defaults, strict=True),
                *zip(node.kwonlyargs, node.kw_defaults, strict=True),
            ]
            hits += [(arg.lineno, arg.arg) for arg, default in pairs if same(arg.arg, default)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if same(node.target.id, node.value):
                hits.append((node.lineno, node.target.id))
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            fallback = (isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) == 3) or (
                isinstance(node.func, ast.Attribute) and node.func.attr == "get" and len(node.args) == 2
            )
            name_node, value_node = node.args[-2], node.args[-1]
            if fallback and isinstance(name_node, ast.Constant) and same(name_node.value, value_node):
                hits.append((node.lineno, name_node.value))
    return hits


def test_the_key_table_is_the_only_place_a_keys_default_appears() -> None:
    found = [
        f"{path.relative_to(SRC)}:{line}: {key}"
        for path in sorted(SRC.rglob("*.py"))
        if path != TABLE
        for line, key in _default_literals(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not found, f"a key's default is written outside config/keys.py: {found}"
    # the scan finds what it looks for: the seed's DEFAULTS table, a field, a parameter, a fallback
    assert _default_literals(ast.parse('DEFAULTS = {"start_step": 0, "pattern": "4x1"}')) == [
        (1, "start_step"),
        (1, "pattern"),
    ]
    assert _default_literals(ast.parse("def f(target_sparsity=0.9): ...")) == [(1, "target_sparsity")]
    assert _default_literals(ast.parse("class A:\n    prune_domain: str = 'global'")) == [(2, "prune_domain")]
    assert _default_literals(ast.parse("d.get('sparsity_decay_type', 'exp')")) == [(1, "sparsity_decay_type")]
    assert _default_literals(ast.parse("f(start_step=0, end_step=0)")) == []  # explicit choices
