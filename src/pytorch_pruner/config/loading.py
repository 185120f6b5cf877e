"""Reading and writing configs: the seed YAML (with ``!Pruner`` items), dicts, and back.

Accepted shapes, all equivalent:

* the seed file: ``version``, ``model``, ``pruning.approach.weight_compression_pytorch.{...}``;
* just the inner mapping: global keys plus ``pruners``;
* ``pruners`` omitted: one pruner with the global keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..registry import closest
from .schema import PrunerConfig, PruningConfig, check_value, normalize_key

__all__ = ["config_from_mapping", "dump_config", "load_config", "pruner_from_mapping"]

_SECTION = ("pruning", "approach", "weight_compression_pytorch")
_TOP_KEYS = ("version", "model", "pruning")


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads the seed's ``!Pruner`` tag as a mapping."""


def _pruner_tag(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, "!Pruner must tag a mapping", node.start_mark)
    return dict(loader.construct_mapping(node, deep=True))


_Loader.add_constructor("!Pruner", _pruner_tag)

# YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124. A pattern is never a number, so this
# loader reads integers the YAML 1.2 way (no base 60) and `pattern: 2:4` stays the string "2:4".
_INT = "tag:yaml.org,2002:int"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _INT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o?[0-7_]+|0b[01_]+)$"), list("-+0123456789")
)


class _TaggedPruner(dict):
    """A mapping written back with the ``!Pruner`` tag."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _TaggedPruner, lambda dumper, data: dumper.represent_mapping("!Pruner", dict(data), flow_style=False)
)
_Dumper.add_representer(tuple, lambda dumper, data: dumper.represent_list(list(data)))


def _settings(mapping: Mapping[Any, Any], path: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path.rstrip('.') or 'config'}: {mapping!r} is not a mapping of keys")
    values: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for key, value in mapping.items():
        name = normalize_key(key, path, extra)
        if name in values:
            raise ConfigError(f"{path}{key}: the same setting is also written as {spelled[name]!r}; keep one of them")
        spelled[name] = key
        values[name] = value if name in extra or value is None else check_value(name, value, f"{path}{key}")
    return values


def pruner_from_mapping(mapping: Mapping[Any, Any], path: str = "") -> PrunerConfig:
    """One pruner's keys (an ``!Pruner`` item) → :class:`PrunerConfig`, errors naming *path*."""
    return PrunerConfig(**_settings(mapping, path))


def config_from_mapping(data: Any) -> PruningConfig:
    """A parsed seed file, its inner mapping, or a flat dict of keys → :class:`PruningConfig`."""
    if data is None:
        raise ConfigError("config: the file is empty; write at least `pruners:` or a global key")
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: {data!r} is not a mapping; expected the seed's `pruning:` section")
    version = model = None
    inner: Any = data
    if "pruning" in data or any(k in data for k in ("version", "model")):
        for key in data:
            if key not in _TOP_KEYS:
                raise ConfigError(
                    f"{key}: unknown top-level key{closest(str(key), list(_TOP_KEYS))}; allowed: {', '.join(_TOP_KEYS)}"
                )
        version, model = data.get("version"), data.get("model")
        inner, where = data, ""
        for part in _SECTION:
            inner = inner.get(part) if isinstance(inner, Mapping) else None
            where = f"{where}.{part}" if where else part
            if inner is None:
                raise ConfigError(
                    f"{where}: missing; the seed layout is pruning: approach: weight_compression_pytorch:"
                )
    settings = _settings(inner, "", extra=("pruners", "pruning_configs"))
    items = settings.pop("pruners", None)
    alt = settings.pop("pruning_configs", None)
    if items is not None and alt is not None:
        raise ConfigError("pruning_configs: the pruners are also written as `pruners`; keep one of them")
    items = alt if items is None else items
    if items is not None and not isinstance(items, list):
        raise ConfigError(f"pruners: {items!r} is not a list; write each pruner as a `- !Pruner` item")
    pruners = tuple(pruner_from_mapping(item, f"pruners[{i}].") for i, item in enumerate(items or ()))
    return PruningConfig(**settings, pruners=pruners, version=version, model=model)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | PruningConfig) -> PruningConfig:
    """Load a config from a YAML file path, a mapping, or return a :class:`PruningConfig` as is.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or holds a bad value (the message
            names its path, the value and what is allowed).

    Example:
        >>> cfg = load_config({"target_sparsity": 0.5, "pattern": "1x1", "prune_type": "magnitude"})
        >>> cfg.resolved()[0].target_sparsity
        0.5
    """
    if isinstance(source, PruningConfig):
        return source
    if isinstance(source, Mapping):
        return config_from_mapping(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pass a YAML path, a dict or a PruningConfig")
        return loads_config(path.read_text(encoding="utf-8"), str(path))
    raise ConfigError(f"config: {source!r} is not a path, mapping or PruningConfig")


def loads_config(text: str, name: str = "<string>") -> PruningConfig:
    """Parse YAML text in the seed format."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{name}: not valid YAML: {err}") from None
    return config_from_mapping(data)


def dump_config(config: PruningConfig) -> str:
    """Write *config* as YAML in the seed layout, with ``!Pruner`` items; loads back equal."""

    def plain(values: dict[str, Any]) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    section: dict[str, Any] = plain(config.globals_written())
    section["pruners"] = [_TaggedPruner(plain(p.written())) for p in config.pruner_configs]
    doc: dict[str, Any] = {}
    if config.version is not None:
        doc["version"] = config.version
    if config.model is not None:
        doc["model"] = dict(config.model)
    doc["pruning"] = {"approach": {"weight_compression_pytorch": section}}
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=None)
