#!/usr/bin/env python3
"""Print the README's set-up commands, one per line: what .ci/run executes, so the two cannot drift.

The README's section "Set-up" holds exactly two fenced one-line commands: the main job on the
bundled defaults, then the tests. Anything else there is an error (exit 1), so an edit that breaks
the contract fails CI instead of silently testing something else.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = re.compile(r"^## Set-up\b.*?$(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def setup_commands(text: str) -> list[str]:
    section = SECTION.search(text)
    if section is None:
        raise ValueError("README.md has no '## Set-up' section")
    commands = []
    for block in FENCE.findall(section.group(1)):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if len(lines) != 1:
            raise ValueError(f"README.md set-up: each code block must hold one command line, not {len(lines)}")
        commands.append(lines[0])
    if len(commands) != 2:
        raise ValueError(f"README.md set-up: expected 2 commands (main job, tests), found {len(commands)}")
    return commands


def main() -> int:
    try:
        commands = setup_commands(README.read_text(encoding="utf-8"))
    except ValueError as exc:
        print(f"readme_commands: {exc}", file=sys.stderr)
        return 1
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
