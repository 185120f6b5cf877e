"""THE key table: every config key, declared once.

Each :class:`Key` holds a key's name, default, check (validation and normalization), aliases (INC
v1/v2 spellings) and help text. Everything else derives from :data:`KEYS`: the fields of
:class:`~pytorch_pruner.config.PrunerConfig`, :class:`~pytorch_pruner.config.PruningConfig` and
:class:`~pytorch_pruner.config.PrunerSettings`, :data:`DEFAULTS`, :data:`ALIASES`, loading,
:func:`~pytorch_pruner.config.dump_config`, the CLI's ``validate`` and ``keys`` commands, and the
README's key table (``pytorch-pruner keys --markdown``; a test checks that the README matches).

**Adding a key is one entry in** :data:`KEYS` (then regenerate the README table). Checks that
relate two keys (``end_step >= start_step``, a target an N:M pattern can reach) live in
:meth:`PrunerSettings.build <pytorch_pruner.config.PrunerSettings.build>`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..criteria import CRITERIA
from ..errors import ConfigError
from ..patterns import parse_pattern
from ..registry import closest
from ..schedules import DECAYS
from ..targets import LAYER_KINDS

__all__ = [
    "ALIASES",
    "DEFAULTS",
    "KEYS",
    "KEYS_BY_NAME",
    "LEGACY_KEYS",
    "Key",
    "LegacyKey",
    "check_value",
    "keys_markdown",
    "normalize_key",
    "shorten",
]

#: The longest slice of a bad value an error message echoes (a config is user input of any size).
ECHO_LIMIT = 80


def shorten(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)``, cut to *limit* characters: an error never echoes megabytes of input."""
    try:
        text = _bounded_repr(value, limit + 1)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_text(key: Any) -> str:
    """A mapping key as an error's path shows it: a string as written (cut), anything else as repr."""
    return key if isinstance(key, str) and len(key) <= ECHO_LIMIT else shorten(key)


def _bounded_repr(value: Any, limit: int) -> str:
    """repr that stops growing past *limit* characters (nested or self-referencing YAML aliases
    make containers whose full repr is exponential in the file size)."""
    if isinstance(value, dict):
        parts, size = [], 0
        for k, v in value.items():
            part = f"{_bounded_repr(k, limit)}: {_bounded_repr(v, limit)}"
            parts.append(part)
            size += len(part) + 2
            if size > limit:
                break
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list | tuple):
        parts, size = [], 0
        for v in value:
            part = _bounded_repr(v, limit)
            parts.append(part)
            size += len(part) + 2
            if size > limit:
                break
        return ("[" if isinstance(value, list) else "(") + ", ".join(parts) + ("]" if isinstance(value, list) else ")")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit])
    return repr(value)


# -- checks: (value, path) -> normalized value, or a ConfigError naming path, value and what is allowed --
def at_least(low: int) -> Callable[[Any, str], int]:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: {shorten(value)} is not an integer; allowed: an integer >= {low}")
        if value < low:
            raise ConfigError(f"{path}: {shorten(value)} is too small; allowed: an integer >= {low}")
        return value

    return check


def fraction(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: {shorten(value)} is not a number; allowed: a float in [0, 1), e.g. 0.9")
    if (isinstance(value, float) and not math.isfinite(value)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{path}: {shorten(value)} is out of range; allowed: a float in [0, 1), e.g. 0.9")
    return float(value)


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {shorten(value)} is not a boolean; allowed: true or false")
    return value


def positive(high: float = math.inf) -> Callable[[Any, str], float]:
    """A number in (0, *high*]."""

    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= high:
            allowed = f"a number in (0, {high:g}]" if high < math.inf else "a number > 0"
            raise ConfigError(f"{path}: {shorten(value)} is not allowed; allowed: {allowed}")
        return float(value)

    return check


def choice(value: Any, path: str, allowed: list[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        hint = closest(value, allowed) if isinstance(value, str) else ""
        raise ConfigError(f"{path}: {shorten(value)} is not allowed{hint}; allowed: {', '.join(allowed)}")
    return value


def one_of(names: Callable[[], list[str]]) -> Callable[[Any, str], str]:
    """A choice among *names()*, read when checked (registries may grow after import)."""
    return lambda value, path: choice(value, path, names())


#: the longest regular expression a config may hold (the re module recurses on nesting)
REGEX_LIMIT = 1000


def regexes(value: Any, path: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{path}: {shorten(value)} is not a list; allowed: a list of regular expressions")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"{path}[{i}]: {shorten(item)} is not a string; allowed: a regular expression")
        if len(item) > REGEX_LIMIT:
            raise ConfigError(f"{path}[{i}]: {shorten(item)} is longer than {REGEX_LIMIT} characters")
        try:
            re.compile(item)
        except (re.error, RecursionError, OverflowError, ValueError) as err:
            raise ConfigError(
                f"{path}[{i}]: {shorten(item)} is not a valid regular expression ({shorten(str(err), 120)})"
            ) from None
    return tuple(items)


#: INC v2's layer-type names and what INC matched with each (its `pruning_op_types: ["Conv", "Linear"]`)
LAYER_TYPE_GROUPS: dict[str, tuple[str, ...]] = {"Conv": ("Conv1d", "Conv2d", "Conv3d", "Conv1D")}


def layer_types(value: Any, path: str) -> tuple[str, ...]:
    allowed = [*LAYER_KINDS, *LAYER_TYPE_GROUPS]
    items = [value] if isinstance(value, str | type) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(f"{path}: {shorten(value)} is not a non-empty list; allowed: {', '.join(allowed)}")
    names: list[str] = []
    for i, item in enumerate(items):
        name = choice(item.__name__ if isinstance(item, type) else item, f"{path}[{i}]", allowed)
        for kind in LAYER_TYPE_GROUPS.get(name, (name,)):
            if kind not in names:
                names.append(kind)
    return tuple(names)


def pattern_name(value: Any, path: str) -> str:
    return parse_pattern(value, path).name


# -- the table -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One config key. The dataclass field, its default, its check, its aliases and its docs."""

    name: str
    default: Any
    #: ``(value, path) -> normalized value``; raises :class:`ConfigError` naming *path*
    check: Callable[[Any, str], Any]
    #: one line: what the key means
    help: str
    #: what is allowed, for docs (a callable for lists read from a registry)
    allowed: str | Callable[[], str]
    #: other spellings (INC v1 and v2), so their users can bring configs
    aliases: tuple[str, ...] = ()
    #: the type of the normalized value (used in the dataclass annotations)
    type: str = "Any"
    #: the default as the docs show it, when ``repr`` would not say it well
    shown_default: str | None = None

    def allowed_text(self) -> str:
        return self.allowed() if callable(self.allowed) else self.allowed


def _registered(registry: Any) -> Callable[[], str]:
    return lambda: ", ".join(registry.names())


KEYS: tuple[Key, ...] = (
    Key("start_step", 0, at_least(0), "first optimizer step at which masks may change", "int ≥ 0", type="int"),
    Key(
        "end_step",
        0,
        at_least(0),
        "last such step; `start_step == end_step` is one-shot",
        "int ≥ start_step",
        type="int",
    ),
    Key(
        "target_sparsity",
        0.9,
        fraction,
        "final sparsity of the pruner's layers (≤ N/M for N:M)",
        "[0, 1)",
        type="float",
    ),
    Key(
        "max_sparsity_ratio_per_layer",
        0.98,
        fraction,
        "per-layer cap; the budget a capped layer can't take goes to the others",
        "[0, 1)",
        aliases=("max_sparsity_ratio_per_op",),
        type="float",
    ),
    Key(
        "min_sparsity_ratio_per_layer",
        0.0,
        fraction,
        "per-layer floor, best effort",
        "[0, max]",
        aliases=("min_sparsity_ratio_per_op",),
        type="float",
    ),
    Key(
        "update_frequency_on_step",
        1,
        at_least(1),
        "masks change every this many steps in the window",
        "int ≥ 1",
        aliases=("pruning_frequency",),
        type="int",
    ),
    Key(
        "prune_domain",
        "global",
        one_of(lambda: ["global", "local", "row"]),
        "one ranking over all the pruner's layers (one-shot: over one block's), one per layer, or one per output row",
        "global, local, row",
        aliases=("pruning_scope",),
        type="str",
    ),
    Key(
        "prune_type",
        "snip_momentum",
        one_of(CRITERIA.names),
        "the criterion; `sparsegpt` is one-shot only, `pattern_lock` keeps the zeros a model has "
        "([docs/llm.md](docs/llm.md))",
        _registered(CRITERIA),
        aliases=("pruning_type",),
        type="str",
    ),
    Key(
        "sparsity_decay_type",
        "exp",
        one_of(DECAYS.names),
        "the iterative curve",
        _registered(DECAYS),
        type="str",
    ),
    Key(
        "pattern",
        "4x1",
        pattern_name,
        "blocks pruned together (`tile_pattern_4x1` also accepted)",
        "NxM, N:M, channelx1, 1xchannel, head:&lt;head_dim&gt;, channelxK, Kxchannel",
        type="str",
    ),
    Key(
        "names",
        (),
        regexes,
        "only layers whose qualified name matches (`re.search`)",
        "regexes",
        aliases=("op_names",),
        type="tuple[str, ...]",
        shown_default="all",
    ),
    Key(
        "not_to_prune_names",
        (),
        regexes,
        "layers matching this list or `exclude_names` are skipped",
        "regexes",
        aliases=("excluded_names", "excluded_op_names"),
        type="tuple[str, ...]",
        shown_default="none",
    ),
    Key(
        "exclude_names",
        (),
        regexes,
        "skipped too (united with `not_to_prune_names`)",
        "regexes",
        aliases=("extra_excluded_names",),
        type="tuple[str, ...]",
        shown_default="none",
    ),
    Key(
        "prune_layer_type",
        ("Linear", "Conv2d"),
        layer_types,
        "module types to prune; INC's `Conv` means every Conv1d/2d/3d and Conv1D",
        "Linear, Conv1d, Conv2d, Conv3d, Conv1D, Conv",
        aliases=("pruning_op_types",),
        type="tuple[str, ...]",
        shown_default="[Linear, Conv2d]",
    ),
    # OWL layer allocation, an option of prune_oneshot_ (SPEC §11)
    Key(
        "owl",
        False,
        boolean,
        "one-shot only: OWL gives each block its own sparsity, the target as the weighted mean",
        "bool",
        type="bool",
        shown_default="false",
    ),
    Key("owl_lambda", 0.08, positive(0.5), "OWL: block sparsities span 2·λ", "(0, 0.5]", type="float"),
    Key("owl_m", 5.0, positive(), "OWL: an outlier is a wanda score above M × the block's mean", "> 0", type="float"),
)

KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
#: Defaults of every key (SPEC §1.2), derived from :data:`KEYS`.
DEFAULTS: dict[str, Any] = {k.name: k.default for k in KEYS}
#: Other spellings accepted for a key, derived from :data:`KEYS`.
ALIASES: dict[str, str] = {alias: k.name for k in KEYS for alias in k.aliases}


@dataclass(frozen=True)
class LegacyKey:
    """A key of INC's older YAML that its pytorch_pruner read and ignored: loads with a warning."""

    name: str
    instead: str
    #: ``(value, path)``: raises :class:`ConfigError` for a value that can't be ignored safely
    check: Callable[[Any, str], None] | None = None


def _zero_only(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != 0:
        raise ConfigError(
            f"{path}: {shorten(value)} is not supported; pruning always starts from a dense model "
            "(initial sparsity 0); remove the key or set it to 0"
        )


LEGACY_KEYS: dict[str, LegacyKey] = {
    k.name: k
    for k in (
        LegacyKey("initial_sparsity", "nothing: pruning starts dense (0)", _zero_only),
        LegacyKey("update_frequency", "update_frequency_on_step"),
        LegacyKey("start_epoch", "start_step (counted in optimizer steps)"),
        LegacyKey("end_epoch", "end_step (counted in optimizer steps)"),
    )
}


def normalize_key(key: object, path: str, extra: tuple[str, ...] = ()) -> str:
    """Canonical name of a config key; a :class:`ConfigError` with a did-you-mean if unknown."""
    if key in DEFAULTS or key in extra:
        return str(key)
    if key in ALIASES:
        return ALIASES[str(key)]
    known = sorted([*DEFAULTS, *ALIASES, *extra])
    raise ConfigError(
        f"{path}{key_text(key)}: unknown key{closest(str(key)[:ECHO_LIMIT], known)}; "
        f"known keys: {', '.join(sorted([*DEFAULTS, *extra]))}"
    )


def check_value(key: str, value: Any, path: str) -> Any:
    """Validate one (canonical) key and return its normalized value."""
    return KEYS_BY_NAME[key].check(value, path)


def keys_markdown() -> str:
    """The README's configuration-reference table, generated from :data:`KEYS`."""

    def default(k: Key) -> str:
        if k.shown_default is not None:
            return k.shown_default
        return str(k.default)

    rows = ["| key | default | allowed | aliases | meaning |", "|---|---|---|---|---|"]
    for k in KEYS:
        aliases = ", ".join(f"`{a}`" for a in k.aliases)
        rows.append(f"| `{k.name}` | {default(k)} | {k.allowed_text()} | {aliases} | {k.help} |")
    return "\n".join(rows) + "\n"
