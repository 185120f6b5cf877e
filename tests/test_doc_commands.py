"""The commands the README and docs/ show stay true: every script they run exists, takes every flag
they pass, and every config file they name is in the checkout.

Runs each script's ``--help`` (their parsers are built before any model or data is loaded), so a
renamed flag or a moved example breaks this test instead of a user's first command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a python (or torchrun) command running one of the repository's scripts, and its arguments
COMMAND = re.compile(
    r"(?:^|\s)(?:\S*/)?(?:python3?|torchrun(?:\s+--\S+(?:\s+\d+)?)*)\s+((?:benchmarks|examples)/[\w/]+\.py)([^;&|>]*)"
)


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced code blocks marked bash/sh (or unmarked), continuation lines joined."""
    found, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = (line[3:].strip() or "text"), []
            else:
                if lang in ("bash", "sh", "text", "console"):
                    found.append(re.sub(r"\\\n\s*", " ", "\n".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    return found


def documented_commands() -> list[tuple[str, str, str]]:
    """``(doc file, script, arguments)`` for every documented run of a repository script."""
    commands = []
    for doc in DOCS:
        for block in shell_blocks(doc.read_text(encoding="utf-8")):
            for line in block.splitlines():
                code = re.split(r"\s#", line)[0]  # a trailing comment
                for m in COMMAND.finditer(code):
                    commands.append((doc.name, m.group(1), m.group(2).strip()))
    return commands


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_the_main_scripts() -> None:
    scripts = {script for _, script, _ in COMMANDS}
    # the parser above finds them: if it found none, the tests below would check nothing
    assert {"examples/run_glue_no_trainer.py", "examples/run_clm_no_trainer.py", "benchmarks/llm_oneshot.py"} <= scripts


def _help(script: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, f"{script} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    scripts = sorted({script for _, script, _ in COMMANDS if (ROOT / script).is_file()})
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(scripts, pool.map(_help, scripts), strict=True))


@pytest.mark.parametrize(("doc", "script", "args"), COMMANDS, ids=[f"{d}:{s}" for d, s, _ in COMMANDS])
def test_a_documented_command_runs_an_existing_script_with_flags_it_takes(
    doc: str, script: str, args: str, helps: dict[str, str]
) -> None:
    assert (ROOT / script).is_file(), f"{doc} runs {script}, which is not in the checkout"
    accepted = set(re.findall(r"--[\w-]+", helps[script]))
    unknown = [flag for flag in re.findall(r"(?:^|\s)(--[\w-]+)", args) if flag not in accepted]
    assert not unknown, f"{doc}: {script} does not take {unknown} (see {script} --help)"
    for config in re.findall(r"(?:^|\s)(examples/\S+\.ya?ml)", args):
        assert (ROOT / config).is_file(), f"{doc}: {script} is given {config}, which is not in the checkout"
