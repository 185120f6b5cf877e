"""Configuration: the key table, the schema made from it, loading (seed YAML, dicts, INC aliases)
and dumping. A new key is one entry in :data:`~pytorch_pruner.config.keys.KEYS`."""

from .keys import ALIASES, DEFAULTS, KEYS, LEGACY_KEYS, Key, keys_markdown
from .loading import (
    SECTION,
    ConfigLoader,
    config_errors,
    config_from_mapping,
    dump_config,
    load_config,
    loads_config,
    parse_yaml,
    pruner_from_mapping,
)
from .schema import PrunerConfig, PrunerSettings, PruningConfig, check_value, normalize_key

__all__ = [
    "ALIASES",
    "DEFAULTS",
    "KEYS",
    "LEGACY_KEYS",
    "SECTION",
    "ConfigLoader",
    "Key",
    "PrunerConfig",
    "PrunerSettings",
    "PruningConfig",
    "check_value",
    "config_errors",
    "config_from_mapping",
    "dump_config",
    "keys_markdown",
    "load_config",
    "loads_config",
    "normalize_key",
    "parse_yaml",
    "pruner_from_mapping",
]
