"""The configuration schema: frozen, keyword-only dataclasses validated on construction.

:class:`PrunerConfig` holds the keys of one ``!Pruner`` item; a key left as ``None`` is *not
written* and inherits the global value, then the default. :class:`PruningConfig` holds the global
keys (the same set) and the tuple of pruners. :meth:`PruningConfig.resolved` fills every pruner in
and turns names into objects (pattern, criterion, decay curve) — the only place strings are
resolved.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from ..criteria import CRITERIA, Criterion
from ..errors import ConfigError
from ..patterns import Pattern, parse_pattern
from ..schedules import DECAYS, Decay, Schedule
from .keys import ALIASES, DEFAULTS, KEYS, LEGACY_KEYS, check_value, key_text, normalize_key, shorten

__all__ = [
    "ALIASES",
    "DEFAULTS",
    "PrunerConfig",
    "PrunerSettings",
    "PruningConfig",
    "check_value",
    "normalize_key",
    "pruner_from_mapping",
    "read_keys",
]

T = TypeVar("T")

if TYPE_CHECKING:  # the key fields are made from KEYS at import; type checkers see them as Any

    class _KeyFields:
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

else:

    class _KeyFields:
        pass


def _with_keys(*, written: bool) -> Callable[[type[T]], type[T]]:
    """Class decorator: a frozen keyword-only dataclass with one field per key of :data:`KEYS`, in
    table order, before the class's own fields (which may refine a key's type, e.g. a resolved
    ``pattern``). ``written=True``: each key defaults to ``None`` (= not written, inherit)."""

    def decorate(cls: type[T]) -> type[T]:
        own = dict(inspect.get_annotations(cls))
        annotations = {k.name: (f"{k.type} | None" if written else k.type) for k in KEYS}
        annotations.update(own)
        for k in KEYS:
            if k.name not in cls.__dict__:
                setattr(cls, k.name, field(default=None if written else MISSING, metadata={"key": k}))
        cls.__annotations__ = annotations
        return cast(type[T], dataclass(frozen=True, kw_only=True)(cls))

    return decorate


def read_keys(
    mapping: Any,
    path: str,
    extra: tuple[str, ...] = (),
    errors: list[str] | None = None,
) -> dict[str, Any]:
    """Check each key of *mapping* (canonical names, aliases, INC's older keys) → canonical values.

    Errors name ``{path}{key}``. With *errors* given, every bad key is appended there and skipped,
    so that all of them can be listed at once (the CLI's ``validate``); otherwise the first raises.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path.rstrip('.') or 'config'}: {shorten(mapping)} is not a mapping of keys")
    values: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    for key, value in mapping.items():
        try:
            if isinstance(key, str) and key in LEGACY_KEYS:
                legacy = LEGACY_KEYS[key]
                if legacy.check is not None:
                    legacy.check(value, f"{path}{key}")
                warnings.warn(
                    f"{path}{key}: a key of INC's older configs, which its pruner ignored; ignored here too. "
                    f"Use instead: {legacy.instead}",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            name = normalize_key(key, path, extra)
            if name in values:
                raise ConfigError(
                    f"{path}{key_text(key)}: the same setting is also written as {shorten(spelled[name])}; "
                    "keep one of them"
                )
            spelled[name] = key
            values[name] = value if name in extra or value is None else check_value(name, value, f"{path}{key}")
        except ConfigError as err:
            if errors is None:
                raise
            errors.append(str(err))
    return values


_SCALARS = (str, int, float, bool, type(None))


def check_model_section(model: Any, path: str = "model") -> dict[str, Any]:
    """The seed's informational ``model:`` section: a mapping of names to plain values (strings,
    numbers, lists of them), so that it dumps and saves with a checkpoint as written."""
    if not isinstance(model, Mapping):
        raise ConfigError(
            f"{path}: {shorten(model)} is not a mapping; allowed: e.g. model: {{name: bert-mini, framework: pytorch}}"
        )
    checked: dict[str, Any] = {}
    for key, value in model.items():
        if not isinstance(key, str):
            raise ConfigError(f"{path}: the key {shorten(key)} is not a string; allowed: names such as `name`")
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, _SCALARS) or (isinstance(item, float) and not math.isfinite(item)):
                raise ConfigError(
                    f"{path}.{key}: {shorten(value)} is not a plain value; allowed: a string, a finite number "
                    "or a list of them (the section is informational)"
                )
        checked[key] = list(value) if isinstance(value, tuple) else value
    return checked


def pruner_from_mapping(mapping: Mapping[Any, Any], path: str = "") -> PrunerConfig:
    """One pruner's keys (an ``!Pruner`` item) → :class:`PrunerConfig`, errors naming *path*."""
    return PrunerConfig(**read_keys(mapping, path))


@_with_keys(written=True)
class PrunerConfig(_KeyFields):
    """The keys of one pruner (one ``!Pruner`` item). ``None`` = not written: inherit.

    One field per key of :data:`~pytorch_pruner.config.keys.KEYS`.

    Example:
        >>> PrunerConfig(target_sparsity=0.5, pattern="2:4", exclude_names=[".*query"])
        PrunerConfig(target_sparsity=0.5, pattern='2:4', exclude_names=('.*query',))
    """

    def __post_init__(self) -> None:
        for k in KEYS:
            value = getattr(self, k.name)
            if value is not None:
                object.__setattr__(self, k.name, k.check(value, k.name))

    def written(self) -> dict[str, Any]:
        """The keys that were written, in schema order."""
        return {k.name: getattr(self, k.name) for k in KEYS if getattr(self, k.name) is not None}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.written().items())
        return f"{type(self).__name__}({body})"


@dataclass(frozen=True, kw_only=True)
class PruningConfig(PrunerConfig):  # type: ignore[misc]
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
        if self.model is not None:
            object.__setattr__(self, "model", check_model_section(self.model))
        if self.version is not None and (
            isinstance(self.version, bool)
            or not isinstance(self.version, str | int | float)
            or (isinstance(self.version, float) and not math.isfinite(self.version))
        ):
            raise ConfigError(
                f"version: {shorten(self.version)} is not a version; allowed: a number or string, e.g. 1.0"
            )
        if isinstance(self.pruners, PrunerConfig | Mapping):
            raise ConfigError("pruners: expected a list of pruners, got a single one; wrap it in [ ]")
        if not isinstance(self.pruners, list | tuple):
            raise ConfigError(f"pruners: {shorten(self.pruners)} is not a list; allowed: a list of pruners")
        items = []
        for i, item in enumerate(self.pruners or ()):
            if isinstance(item, Mapping):
                items.append(pruner_from_mapping(item, f"pruners[{i}]."))
            elif not isinstance(item, PrunerConfig) or isinstance(item, PruningConfig):
                raise ConfigError(f"pruners[{i}]: {shorten(item)} is not a pruner; allowed: a mapping of pruner keys")
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


@_with_keys(written=False)
class PrunerSettings(_KeyFields):
    """A pruner's resolved settings: every key of :data:`~pytorch_pruner.config.keys.KEYS` filled
    in, names turned into objects."""

    pattern: Pattern
    criterion: type[Criterion]
    decay: Decay
    path: str = ""

    @classmethod
    def build(cls, local: PrunerConfig, glob: PrunerConfig, path: str) -> PrunerSettings:
        values: dict[str, Any] = {}
        for k in KEYS:
            own, inherited = getattr(local, k.name), getattr(glob, k.name)
            values[k.name] = own if own is not None else inherited if inherited is not None else k.default
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
        if values["owl"] and pattern.nm:
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
