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
from .keys import key_text, shorten
from .schema import PruningConfig, pruner_from_mapping, read_keys

__all__ = [
    "SECTION",
    "ConfigLoader",
    "config_errors",
    "config_from_mapping",
    "dump_config",
    "load_config",
    "loads_config",
    "parse_yaml",
    "pruner_from_mapping",
]

#: Where the seed file keeps the pruning keys: ``pruning: approach: weight_compression_pytorch:``
SECTION = ("pruning", "approach", "weight_compression_pytorch")
_TOP_KEYS = ("version", "model", "pruning")
_LISTS = ("pruners", "pruning_configs")


class ConfigLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads the seed's ``!Pruner`` tag as a mapping, and reads integers
    the YAML 1.2 way (see below). Nothing else: ``!!python/...`` tags are refused."""


def _pruner_tag(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, "!Pruner must tag a mapping", node.start_mark)
    return dict(loader.construct_mapping(node, deep=True))


ConfigLoader.add_constructor("!Pruner", _pruner_tag)

# YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124. A pattern is never a number, so this
# loader reads integers the YAML 1.2 way (no base 60) and `pattern: 2:4` stays the string "2:4".
_INT = "tag:yaml.org,2002:int"
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _INT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o?[0-7_]+|0b[01_]+)$"), list("-+0123456789")
)


def parse_yaml(text: str, name: str = "<string>") -> Any:
    """YAML text → plain Python data, with the config's YAML rules (:class:`ConfigLoader`).

    Raises:
        ConfigError: the text is not valid YAML, uses a tag other than ``!Pruner``, nests too deep,
            or holds a number Python can't read (more than 4,300 digits).
    """
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{name}: not valid YAML: {shorten(str(err), 400)}") from None
    except RecursionError:
        raise ConfigError(f"{name}: the YAML nests too deep to read; a config is a few levels deep") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer past Python's digit limit
        raise ConfigError(f"{name}: a value can't be read: {shorten(str(err), 200)}") from None


class _TaggedPruner(dict):
    """A mapping written back with the ``!Pruner`` tag."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _TaggedPruner, lambda dumper, data: dumper.represent_mapping("!Pruner", dict(data), flow_style=False)
)
_Dumper.add_representer(tuple, lambda dumper, data: dumper.represent_list(list(data)))


def config_from_mapping(data: Any, errors: list[str] | None = None) -> PruningConfig:
    """A parsed seed file, its inner mapping, or a flat dict of keys → :class:`PruningConfig`.

    With *errors* given, every bad key is appended there (all of them, not just the first) and the
    config is built only when there is none; then a cross-key error is raised as usual.
    """
    if data is None:
        raise ConfigError("config: the file is empty; write at least `pruners:` or a global key")
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: {shorten(data)} is not a mapping; expected the seed's `pruning:` section")
    version = model = None
    inner: Any = data
    if "pruning" in data or any(k in data for k in ("version", "model")):
        for key in data:
            if key not in _TOP_KEYS:
                raise ConfigError(
                    f"{key_text(key)}: unknown top-level key{closest(str(key)[:80], list(_TOP_KEYS))}; "
                    f"allowed: {', '.join(_TOP_KEYS)}"
                )
        version, model = data.get("version"), data.get("model")
        inner, where = data, ""
        for part in SECTION:
            inner = inner.get(part) if isinstance(inner, Mapping) else None
            where = f"{where}.{part}" if where else part
            if inner is None:
                raise ConfigError(
                    f"{where}: missing; the seed layout is pruning: approach: weight_compression_pytorch:"
                )
    settings = read_keys(inner, "", extra=_LISTS, errors=errors)
    items = settings.pop("pruners", None)
    alt = settings.pop("pruning_configs", None)
    if items is not None and alt is not None:
        raise ConfigError("pruning_configs: the pruners are also written as `pruners`; keep one of them")
    items = alt if items is None else items
    if items is not None and not isinstance(items, list):
        raise ConfigError(f"pruners: {shorten(items)} is not a list; write each pruner as a `- !Pruner` item")
    pruners: list[Any] = []
    for i, item in enumerate(items or ()):
        if errors is None:
            pruners.append(pruner_from_mapping(item, f"pruners[{i}]."))
        else:
            try:
                pruners.append(read_keys(item, f"pruners[{i}].", errors=errors))
            except ConfigError as err:
                errors.append(str(err))
    if errors:
        raise ConfigError(errors[0])
    return PruningConfig(**settings, pruners=pruners, version=version, model=model)


def _read(source: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, name) of a config file; a ConfigError if it can't be read as UTF-8 text."""
    path = Path(source)
    try:
        if not path.is_file():
            raise ConfigError(
                f"config file {shorten(str(path))} not found; pass a YAML path, a dict, a PruningConfig, "
                "or YAML text (several lines, or through loads_config)"
            )
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {shorten(str(path))} can't be read: {err.strerror or err}") from None
    try:
        return data.decode("utf-8"), str(path)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{shorten(str(path))}: line {line}: byte {data[err.start]:#04x} is not UTF-8; save the file as UTF-8"
        ) from None


def _data(source: Any) -> tuple[Any, str]:
    if isinstance(source, Mapping):
        return source, "config"
    if isinstance(source, bytes):
        try:
            return parse_yaml(source.decode("utf-8")), "<bytes>"
        except UnicodeDecodeError as err:
            raise ConfigError(f"<bytes>: byte {err.start} is not UTF-8; pass UTF-8 text") from None
    if isinstance(source, str) and ("\n" in source or source.lstrip().startswith("{")):
        # YAML text where a path was expected: a path has no line break and no leading brace
        return parse_yaml(source), "<string>"
    if isinstance(source, str | os.PathLike):
        text, name = _read(source)
        return parse_yaml(text, name), name
    raise ConfigError(f"config: {shorten(source)} is not a path, mapping or PruningConfig")


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | PruningConfig | bytes) -> PruningConfig:
    """Load a config from a YAML file path, YAML text (several lines), a mapping, or return a
    :class:`PruningConfig` as is.

    Raises:
        ConfigError: the file is missing, is not UTF-8 or valid YAML, or holds a bad value (the
            message names its path, the value and what is allowed). Nothing else.

    Example:
        >>> cfg = load_config({"target_sparsity": 0.5, "pattern": "1x1", "prune_type": "magnitude"})
        >>> cfg.resolved()[0].target_sparsity
        0.5
    """
    if isinstance(source, PruningConfig):
        return source
    data, _ = _data(source)
    return _guarded(config_from_mapping, data)


def _guarded(build: Any, data: Any, *args: Any) -> PruningConfig:
    try:
        return build(data, *args)
    except RecursionError:
        raise ConfigError("config: the data nests too deep; a config is a few levels deep") from None


def config_errors(source: Any) -> list[str]:
    """Every error of a config, each naming its path (empty when it loads): the CLI's ``validate``."""
    try:
        if isinstance(source, PruningConfig):
            return []
        data, _ = _data(source)
        errors: list[str] = []
        try:
            _guarded(config_from_mapping, data, errors)
        except ConfigError as err:
            return errors or [str(err)]
    except ConfigError as err:
        return [str(err)]
    return []


def loads_config(text: str, name: str = "<string>") -> PruningConfig:
    """Parse YAML text in the seed format."""
    return _guarded(config_from_mapping, parse_yaml(text, name))


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
