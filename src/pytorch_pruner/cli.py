"""The ``pytorch-pruner`` command.

::

    pytorch-pruner validate CONFIG                 # OK, or every bad value with its path (exit 1)
    pytorch-pruner keys [--markdown]               # every config key (the README's table)
    pytorch-pruner layers CONFIG --model SPEC      # dry run: what each pruner selects or skips, and why
    pytorch-pruner report FILE [--json] [--plot out.png]     # a sparse model file/folder or a checkpoint
    pytorch-pruner schedule CONFIG [--steps N] [--set k=v] [--json] [--plot out.png]

``SPEC`` is a transformers model folder (``config.json``; built with random weights, nothing is
downloaded) or ``package.module:function`` returning an ``nn.Module``. Exit status: 0 success,
1 the input is wrong (bad config, unreadable file), 2 usage error (bad arguments).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from .config import KEYS, PruningConfig, config_errors, keys_markdown, load_config, parse_yaml
from .errors import PruningError, StateError
from .report import SparsityReport
from .targets import LAYER_KINDS, prunable_layers

__all__ = ["build_parser", "load_model", "main", "plan_layers"]

_OK, _BAD_INPUT, _USAGE = 0, 1, 2


class _UsageError(Exception):
    """A command-line argument is malformed (exit status 2)."""


# -- validate ----------------------------------------------------------------------------------
def _validate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = Path(args.config)
    errors = config_errors(path)
    if errors:
        print(f"{path}: {len(errors)} error(s)", file=err)
        for line in errors:
            print(f"  {line}", file=err)
        return _BAD_INPUT
    config = load_config(path)
    settings = config.resolved()
    print(f"OK: {path} ({len(settings)} pruner(s))", file=out)
    for s in settings:
        window = (
            "one-shot" if s.start_step == s.end_step else f"every {s.update_frequency_on_step}, {s.sparsity_decay_type}"
        )
        print(
            f"  {s.path}: {s.prune_type}, pattern {s.pattern.name}, target {s.final_sparsity:g}, "
            f"{s.prune_domain}, steps {s.start_step}..{s.end_step} ({window})",
            file=out,
        )
        if s.criterion.needs_grad and s.start_step == s.end_step == 0:
            print(
                f"  note: {s.path} uses a gradient criterion one-shot at step 0; set start_step >= 1 "
                "(e.g. with update_items_for_all_pruners) before training",
                file=out,
            )
    return _OK


# -- keys ------------------------------------------------------------------------------------
def _keys(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.markdown:
        print(keys_markdown(), end="", file=out)
        return _OK
    table = [["key", "default", "allowed", "aliases"]]
    table += [[k.name, repr(k.default), k.allowed_text(), ", ".join(k.aliases)] for k in KEYS]
    print(_columns(table), file=out)
    return _OK


# -- layers ------------------------------------------------------------------------------------
def load_model(spec: str) -> nn.Module:
    """Build the model named by *spec*: a transformers folder or ``package.module:function``.

    Raises:
        _UsageError: *spec* is neither form.
        PruningError: the folder or the factory could not produce a model.
    """
    folder = Path(spec)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise _UsageError(f"--model {spec!r}: the folder has no config.json; expected a transformers model folder")
        from .export import build_transformers_model

        try:
            return build_transformers_model(folder)
        except (PruningError, ImportError):
            raise
        except Exception as error:  # transformers' own errors for a folder it can't read
            raise PruningError(
                f"--model {spec!r}: can't build a model from this folder: {type(error).__name__}: {str(error)[:300]}"
            ) from None
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name.isidentifier():
        raise _UsageError(f"--model {spec!r} is neither a folder with config.json nor 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as error:
        raise PruningError(f"--model {spec!r}: cannot import it ({error})") from None
    if not callable(factory):
        raise PruningError(f"--model {spec!r} is a {type(factory).__name__}, not a function returning a model")
    try:
        model = factory()
    except Exception as error:  # the user's factory: report any failure as bad input, not a crash
        raise PruningError(f"--model {spec!r}: calling it failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise PruningError(f"--model {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def plan_layers(config: Any, model: nn.Module) -> list[dict[str, Any]]:
    """Dry run of layer selection: for each pruner, every supported layer, selected or skipped and why.

    The decisions are those of :meth:`Pruning.on_train_begin` and the pattern check, in their
    order: layer type, ``names``, exclusions, an earlier pruner's claim, the pattern's shape.

    Returns:
        One dict per (pruner, layer): ``pruner``, ``layer``, ``kind``, ``shape``, ``selected``,
        ``reason`` (``None`` when selected).
    """
    settings = load_config(config).resolved()
    layers = prunable_layers(model, LAYER_KINDS)
    claimed: dict[str, int] = {}
    rows = []
    for i, s in enumerate(settings):
        for target in layers:
            reason = None
            if target.kind not in s.prune_layer_type:
                reason = f"type {target.kind} not in prune_layer_type {list(s.prune_layer_type)}"
            elif s.names and not any(re.search(p, target.name) for p in s.names):
                reason = f"matches none of names {list(s.names)}"
            else:
                for key in ("not_to_prune_names", "exclude_names"):
                    hit = next((p for p in getattr(s, key) if re.search(p, target.name)), None)
                    if hit is not None:
                        reason = f"excluded by {hit!r} ({key})"
                        break
            if reason is None and target.name in claimed:
                reason = f"claimed by pruners[{claimed[target.name]}]"
            if reason is None:
                claimed[target.name] = i
                bad = s.pattern.check(*target.shape2d)
                if bad:  # the pattern's own words usually name it already
                    reason = bad if bad.startswith("pattern") else f"pattern {s.pattern.name}: {bad}"
            rows.append(
                {
                    "pruner": i,
                    "layer": target.name,
                    "kind": target.kind,
                    "shape": list(target.weight.shape),
                    "selected": reason is None,
                    "reason": reason,
                }
            )
    return rows


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _layers(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = _config_with_sets(args)
    model = load_model(args.model)
    rows = plan_layers(config, model)
    if args.json:
        print(json.dumps(rows, indent=2), file=out)
        return _OK
    for i, s in enumerate(config.resolved()):
        mine = [r for r in rows if r["pruner"] == i]
        chosen = sum(r["selected"] for r in mine)
        print(f"{s.path}: {s.prune_type}, pattern {s.pattern.name} — selects {chosen} of {len(mine)} layers", file=out)
        table = [["", "layer", "type", "shape", "why skipped"]]
        table += [
            [
                "selected" if r["selected"] else "skipped",
                r["layer"],
                r["kind"],
                "x".join(map(str, r["shape"])),
                r["reason"] or "",
            ]
            for r in mine
        ]
        print("  " + _columns(table).replace("\n", "\n  "), file=out)
        if not chosen:
            print(f"  warning: {s.path} selects no layer", file=out)
    return _OK


# -- report ------------------------------------------------------------------------------------
def _read_report(path: Path) -> SparsityReport:
    """The report stored in a sparse file, a folder holding one, or a checkpoint."""

    if path.is_dir():
        from .export import SPARSE_FILE

        path = path / SPARSE_FILE
    if path.suffix == ".safetensors":
        from .export import read_sparse

        return read_sparse(path)[1].report
    from .checkpoint import read_checkpoint

    data = read_checkpoint(path)
    if "report" not in data:
        raise StateError(f"{str(path)!r} holds no report; write checkpoints with save_checkpoint")
    try:
        return SparsityReport.from_dict(data["report"])
    except (KeyError, TypeError, ValueError) as error:
        raise StateError(f"{str(path)!r} holds a damaged report ({type(error).__name__}: {error})") from None


def _report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    report = _read_report(Path(args.file))
    if args.json:
        print(report.to_json(indent=2), file=out)
    else:
        print(report.to_table(), file=out)
    if args.plot:
        from .plots import plot_layer_sparsity

        print(f"wrote {plot_layer_sparsity(report, args.plot)}", file=out)
    return _OK


# -- schedule ----------------------------------------------------------------------------------
def _config_with_sets(args: argparse.Namespace) -> PruningConfig:
    config = load_config(args.config)
    items = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set start_step=100")
        # the config's own YAML rules: with plain safe_load (YAML 1.1) `2:4` would be the int 124
        items[key.strip()] = parse_yaml(value, f"--set {key.strip()}")
    return config.with_pruner_items(**items) if items else config


def _schedule(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .plots import schedule_points

    config = _config_with_sets(args)
    points = schedule_points(config, args.steps)
    settings = config.resolved()
    if args.json:
        data = [{"pruner": i, "steps": [{"step": st, "target": v} for st, v in pts]} for i, pts in enumerate(points)]
        print(json.dumps(data, indent=2), file=out)
    else:
        for s, pts in zip(settings, points, strict=True):
            sched = s.schedule()
            kind = (
                "one-shot" if sched.one_shot else (f"every {s.update_frequency_on_step} steps, {s.sparsity_decay_type}")
            )
            print(f"{s.path}: steps {s.start_step}..{s.end_step}, {kind}, final {s.final_sparsity:g}", file=out)
            table = [["step", "target"], *[[str(st), f"{v:.4f}"] for st, v in pts]]
            print("  " + _columns(table).replace("\n", "\n  "), file=out)
            total = sched.count_steps(args.steps)
            if total > len(pts):
                print(f"  ({len(pts)} of {total} pruning steps shown, spread evenly)", file=out)
            if args.steps is not None and sched.last_step >= args.steps:
                print(
                    f"  note: a run of {args.steps} steps ends before {s.path} reaches {s.final_sparsity:g} "
                    f"(at step {sched.last_step}); lower end_step or train longer",
                    file=out,
                )
    if args.plot:
        from .plots import plot_schedule

        print(f"wrote {plot_schedule(config, args.plot, args.steps)}", file=out)
    return _OK


# -- entry point -------------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pytorch-pruner``."""
    parser = argparse.ArgumentParser(
        prog="pytorch-pruner",
        description="Check pruning configs, preview layer selection and schedules, and inspect pruned models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("validate", help="check a config: OK, or every bad value with its path")
    p.add_argument("config", help="YAML config (the seed format)")
    p.set_defaults(run=_validate)

    p = sub.add_parser("keys", help="every config key: default, allowed values, aliases, meaning")
    p.add_argument("--markdown", action="store_true", help="print the README's markdown table")
    p.set_defaults(run=_keys)

    p = sub.add_parser("layers", help="dry run: which layers each pruner selects or skips, and why")
    p.add_argument("config")
    p.add_argument(
        "--model", required=True, help="a transformers model folder (config.json) or package.module:function"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="write a key into every pruner")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_layers)

    p = sub.add_parser("report", help="per-layer sparsity of a sparse model file/folder or a checkpoint")
    p.add_argument("file", help="a .safetensors from save_sparse, its folder, or a save_checkpoint file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", metavar="OUT.png", help="also draw per-layer sparsity (needs matplotlib)")
    p.set_defaults(run=_report)

    p = sub.add_parser("schedule", help="the target sparsity at each pruning step of each pruner")
    p.add_argument("config")
    p.add_argument("--steps", type=_positive, help="number of optimizer steps of the run")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="write a key into every pruner, e.g. --set start_step=100 (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", metavar="OUT.png", help="also draw the schedule (needs matplotlib)")
    p.set_defaults(run=_schedule)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line *argv* (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits 2 on usage errors, 0 for --help
        return int(stop.code or 0) if not isinstance(stop.code, str) else _USAGE
    try:
        return int(args.run(args, sys.stdout, sys.stderr))
    except _UsageError as error:
        print(f"pytorch-pruner {args.command}: error: {error}", file=sys.stderr)
        return _USAGE
    except (PruningError, ImportError, OSError) as error:  # OSError: e.g. a --plot path not writable
        print(f"pytorch-pruner {args.command}: error: {error}", file=sys.stderr)
        return _BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
