"""The configuration schema: frozen, keyword-only dataclasses validated on construction.

:class:`PrunerConfig` holds the keys of one ``!Pruner`` item; a key left as ``None`` is *not
written* and inherits the global value, then the default. :class:`PruningConfig` holds the global
keys (the same set) and the tuple of pruners. :meth:`PruningConfig.resolved` fills every pruner in
and turns names into objects (pattern, criterion, decay curve) — the only place strings are
resolved.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, cast

from ..criteria import CRITERIA, Criterion
from ..errors import ConfigError
from ..patterns import Pattern, parse_pattern
from ..registry import closest
from ..schedules import DECAYS, Decay, Schedule
from ..targets import LAYER_KINDS

__all__ = ["ALIASES", "DEFAULTS", "PrunerConfig", "PrunerSettings", "PruningConfig", "normalize_key"]

#: Defaults of every key (SPEC §1.2).
DEFAULTS: dict[str, Any] = {
    "start_step": 0,
    "end_step": 0,
    "target_sparsity": 0.9,
    "max_sparsity_ratio_per_layer": 0.98,
    "min_sparsity_ratio_per_layer": 0.0,
    "update_frequency_on_step": 1,
    "prune_domain": "global",
    "prune_type": "snip_momentum",
    "sparsity_decay_type": "exp",
    "pattern": "4x1",
    "names": (),
    "not_to_prune_names": (),
    "exclude_names": (),
    "prune_layer_type": ("Linear", "Conv2d"),
    # OWL layer allocation, an option of prune_oneshot_ (SPEC §11)
    "owl": False,
    "owl_lambda": 0.08,
    "owl_m": 5.0,
}

#: Other spellings accepted for a key: INC v1 and v2 names, so their users can bring configs.
ALIASES: dict[str, str] = {
    "excluded_names": "not_to_prune_names",
    "extra_excluded_names": "exclude_names",
    "pruning_type": "prune_type",
    "pruning_scope": "prune_domain",
    "pruning_frequency": "update_frequency_on_step",
    "op_names": "names",
    "excluded_op_names": "not_to_prune_names",
    "pruning_op_types": "prune_layer_type",
    "max_sparsity_ratio_per_op": "max_sparsity_ratio_per_layer",
    "min_sparsity_ratio_per_op": "min_sparsity_ratio_per_layer",
}


def normalize_key(key: object, path: str, extra: tuple[str, ...] = ()) -> str:
    """Canonical name of a config key; a :class:`ConfigError` with a did-you-mean if unknown."""
    if key in DEFAULTS or key in extra:
        return str(key)
    if key in ALIASES:
        return ALIASES[str(key)]
    known = sorted([*DEFAULTS, *ALIASES, *extra])
    raise ConfigError(
        f"{path}{key}: unknown key{closest(str(key), known)}; known keys: {', '.join(sorted([*DEFAULTS, *extra]))}"
    )


def _int(value: Any, path: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: {value!r} is not an integer; allowed: an integer >= {low}")
    if value < low:
        raise ConfigError(f"{path}: {value!r} is too small; allowed: an integer >= {low}")
    return value


def _fraction(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: {value!r} is not a number; allowed: a float in [0, 1), e.g. 0.9")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{path}: {value!r} is out of range; allowed: a float in [0, 1), e.g. 0.9")
    return float(value)


def _choice(value: Any, path: str, allowed: list[str]) -> str:
    if value not in allowed:
        raise ConfigError(
            f"{path}: {value!r} is not allowed{closest(str(value), allowed)}; allowed: {', '.join(allowed)}"
        )
    return str(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {value!r} is not a boolean; allowed: true or false")
    return value


def _positive(value: Any, path: str, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= high:
        allowed = f"a number in (0, {high:g}]" if high < math.inf else "a number > 0"
        raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {allowed}")
    return float(value)


def _strings(value: Any, path: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{path}: {value!r} is not a list; allowed: a list of regular expressions")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"{path}[{i}]: {item!r} is not a string; allowed: a regular expression")
        try:
            re.compile(item)
        except re.error as err:
            raise ConfigError(f"{path}[{i}]: {item!r} is not a valid regular expression ({err})") from None
    return tuple(items)


def _layer_types(value: Any, path: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str | type) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{path}: {value!r} is not a non-empty list; allowed: {', '.join(LAYER_KINDS)}")
    names = []
    for i, item in enumerate(items):
        name = item.__name__ if isinstance(item, type) else item
        names.append(_choice(name, f"{path}[{i}]", list(LAYER_KINDS)))
    return tuple(names)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "start_step": lambda v, p: _int(v, p, 0),
    "end_step": lambda v, p: _int(v, p, 0),
    "update_frequency_on_step": lambda v, p: _int(v, p, 1),
    "target_sparsity": _fraction,
    "max_sparsity_ratio_per_layer": _fraction,
    "min_sparsity_ratio_per_layer": _fraction,
    "prune_domain": lambda v, p: _choice(v, p, ["global", "local", "row"]),
    "prune_type": lambda v, p: _choice(v, p, CRITERIA.names()),
    "sparsity_decay_type": lambda v, p: _choice(v, p, DECAYS.names()),
    "pattern": lambda v, p: parse_pattern(v, p).name,
    "names": _strings,
    "not_to_prune_names": _strings,
    "exclude_names": _strings,
    "prune_layer_type": _layer_types,
    "owl": _bool,
    "owl_lambda": lambda v, p: _positive(v, p, 0.5),
    "owl_m": _positive,
}


def check_value(key: str, value: Any, path: str) -> Any:
    """Validate one (canonical) key and return its normalized value."""
    return _CHECKS[key](value, path)


@dataclass(frozen=True, kw_only=True)
class PrunerConfig:
    """The keys of one pruner (one ``!Pruner`` item). ``None`` = not written: inherit.

    Example:
        >>> PrunerConfig(target_sparsity=0.5, pattern="2:4", exclude_names=[".*query"])
        PrunerConfig(target_sparsity=0.5, pattern='2:4', exclude_names=('.*query',))
    """

    start_step: int | None = None
    end_step: int | None = None
    target_sparsity: float | None = None
    max_sparsity_ratio_per_layer: float | None = None
    min_sparsity_ratio_per_layer: float | None = None
    update_frequency_on_step: int | None = None
    prune_domain: str | None = None
    prune_type: str | None = None
    sparsity_decay_type: str | None = None
    pattern: str | None = None
    names: tuple[str, ...] | None = None
    not_to_prune_names: tuple[str, ...] | None = None
    exclude_names: tuple[str, ...] | None = None
    prune_layer_type: tuple[str, ...] | None = None
    owl: bool | None = None
    owl_lambda: float | None = None
    owl_m: float | None = None

    def __post_init__(self) -> None:
        for key in DEFAULTS:
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, check_value(key, value, key))

    def written(self) -> dict[str, Any]:
        """The keys that were written, in schema order."""
        return {k: getattr(self, k) for k in DEFAULTS if getattr(self, k) is not None}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.written().items())
        return f"{type(self).__name__}({body})"


@dataclass(frozen=True, kw_only=True)
class PruningConfig(PrunerConfig):
    """A whole config: global keys (inherited by every pruner) and the pruners.

    ``pruners`` may hold :class:`PrunerConfig` objects or plain dicts; when empty, one pruner uses
    the global keys. ``version`` and ``model`` are the seed file's informational sections.

    Example:
        >>> cfg = PruningConfig(target_sparsity=0.8, pruners=[{"pattern": "2:4", "target_sparsity": 0.5}])
        >>> [(p.pattern.name, p.target_sparsity) for p in cfg.resolved()]
        [('2:4', 0.5)]
    """

    #: PrunerConfig objects or mappings of pruner keys; stored as a tuple of PrunerConfig
    pruners: Sequence[PrunerConfig | Mapping[str, Any]] = ()
    version: float | str | None = None
    model: Mapping[str, Any] | None = field(default=None, compare=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        from .loading import pruner_from_mapping

        if isinstance(self.pruners, PrunerConfig | Mapping):
            raise ConfigError("pruners: expected a list of pruners, got a single one; wrap it in [ ]")
        items = []
        for i, item in enumerate(self.pruners or ()):
            if isinstance(item, Mapping):
                items.append(pruner_from_mapping(item, f"pruners[{i}]."))
            elif not isinstance(item, PrunerConfig) or isinstance(item, PruningConfig):
                raise ConfigError(f"pruners[{i}]: {item!r} is not a pruner; allowed: a mapping of pruner keys")
            else:
                items.append(item)
        object.__setattr__(self, "pruners", tuple(items) or (PrunerConfig(),))
        self.resolved()  # cross-key checks now, at load time, never at the first pruning step

    @property
    def pruner_configs(self) -> tuple[PrunerConfig, ...]:
        """The pruners as :class:`PrunerConfig` objects (mappings are converted on construction)."""
        return cast(tuple[PrunerConfig, ...], self.pruners)

    def resolved(self) -> list[PrunerSettings]:
        """Every pruner with all keys filled (local, then global, then default) and checked."""
        return [PrunerSettings.build(p, self, f"pruners[{i}]") for i, p in enumerate(self.pruner_configs)]

    def with_pruner_items(self, **items: Any) -> PruningConfig:
        """A copy in which every pruner has *items* written (``update_items_for_all_pruners``)."""
        canonical = {}
        for key, value in items.items():
            name = normalize_key(key, "")
            canonical[name] = check_value(name, value, name)
        pruners = tuple(dataclasses.replace(p, **canonical) for p in self.pruner_configs)
        return dataclasses.replace(self, pruners=pruners)

    def globals_written(self) -> dict[str, Any]:
        return PrunerConfig.written(self)

    def __repr__(self) -> str:
        body = [f"{k}={v!r}" for k, v in self.written().items()]
        body.append(f"pruners={list(self.pruners)!r}")
        return f"PruningConfig({', '.join(body)})"


@dataclass(frozen=True)
class PrunerSettings:
    """A pruner's resolved settings: every key filled in, names turned into objects."""

    start_step: int
    end_step: int
    target_sparsity: float
    max_sparsity_ratio_per_layer: float
    min_sparsity_ratio_per_layer: float
    update_frequency_on_step: int
    prune_domain: str
    prune_type: str
    sparsity_decay_type: str
    pattern: Pattern
    names: tuple[str, ...]
    not_to_prune_names: tuple[str, ...]
    exclude_names: tuple[str, ...]
    prune_layer_type: tuple[str, ...]
    owl: bool
    owl_lambda: float
    owl_m: float
    criterion: type[Criterion]
    decay: Decay
    path: str = ""

    @classmethod
    def build(cls, local: PrunerConfig, glob: PrunerConfig, path: str) -> PrunerSettings:
        values: dict[str, Any] = {}
        for f in fields(PrunerConfig):
            own, inherited = getattr(local, f.name), getattr(glob, f.name)
            values[f.name] = own if own is not None else inherited if inherited is not None else DEFAULTS[f.name]
        pattern = parse_pattern(values["pattern"], f"{path}.pattern")
        if values["end_step"] < values["start_step"]:
            raise ConfigError(
                f"{path}.end_step: {values['end_step']} is before start_step {values['start_step']}; "
                "allowed: end_step >= start_step (equal means one-shot)"
            )
        if values["min_sparsity_ratio_per_layer"] > values["max_sparsity_ratio_per_layer"]:
            raise ConfigError(
                f"{path}.min_sparsity_ratio_per_layer: {values['min_sparsity_ratio_per_layer']} is above "
                f"max_sparsity_ratio_per_layer {values['max_sparsity_ratio_per_layer']}; allowed: min <= max"
            )
        limit = pattern.max_sparsity()
        if values["target_sparsity"] > limit + 1e-12:
            raise ConfigError(
                f"{path}.target_sparsity: {values['target_sparsity']} is above what pattern "
                f"{pattern.name} can reach; allowed: at most {limit:g} (N/M); lower the target or "
                "use a pattern with a larger N/M"
            )
        criterion = CRITERIA.get(values["prune_type"], f"{path}.prune_type")
        problem = criterion.check_settings(pattern, values["prune_domain"])
        if problem:
            raise ConfigError(f"{path}.pattern: {problem}")
        if values["owl"] and limit < 1.0:
            raise ConfigError(
                f"{path}.owl: OWL gives each block its own sparsity, which pattern {pattern.name} fixes at "
                f"{limit:g}; allowed: owl with an NxM pattern (e.g. '1x1'); set owl: false for N:M"
            )
        values["max_sparsity_ratio_per_layer"] = min(values["max_sparsity_ratio_per_layer"], limit)
        values["min_sparsity_ratio_per_layer"] = min(values["min_sparsity_ratio_per_layer"], limit)
        values["pattern"] = pattern
        return cls(
            **values,
            criterion=criterion,
            decay=DECAYS.get(values["sparsity_decay_type"], f"{path}.sparsity_decay_type"),
            path=path,
        )

    @property
    def excluded(self) -> tuple[str, ...]:
        """Exclusion regexes: ``not_to_prune_names`` united with ``exclude_names``."""
        return self.not_to_prune_names + self.exclude_names

    @property
    def final_sparsity(self) -> float:
        """S: the target, never above the per-layer cap."""
        return min(self.target_sparsity, self.max_sparsity_ratio_per_layer)

    def schedule(self) -> Schedule:
        """The :class:`~pytorch_pruner.schedules.Schedule` these settings describe."""
        return Schedule(
            start_step=self.start_step,
            end_step=self.end_step,
            frequency=self.update_frequency_on_step,
            final_sparsity=self.final_sparsity,
            decay=self.decay,
        )
