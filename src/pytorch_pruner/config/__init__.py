"""Configuration: schema, loading (seed YAML, dicts, INC aliases) and dumping."""

from .loading import config_from_mapping, dump_config, load_config, loads_config, pruner_from_mapping
from .schema import ALIASES, DEFAULTS, PrunerConfig, PrunerSettings, PruningConfig

__all__ = [
    "ALIASES",
    "DEFAULTS",
    "PrunerConfig",
    "PrunerSettings",
    "PruningConfig",
    "config_from_mapping",
    "dump_config",
    "load_config",
    "loads_config",
    "pruner_from_mapping",
]
