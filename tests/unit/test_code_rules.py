"""Rules of the code that a linter does not know: each is one walk over src/."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "gureum"
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[a-z-, ]+\])?(.*)$")


def test_every_type_ignore_names_its_code_and_says_why():
    """A ``# type: ignore[code]`` says why, after it or in a comment on the line above (or
    above the run of such lines it is one of)."""
    bare = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            found = IGNORE.search(line)
            if not found:
                continue
            # The comment above may speak for a run of such lines.
            up = number - 2
            while up >= 0 and IGNORE.search(lines[up]) and not lines[up].strip().startswith("#"):
                up -= 1
            above = lines[up].strip() if up >= 0 else ""
            says_why = "#" in found.group(2) or above.startswith("#")
            if not found.group(1) or not says_why:
                bare.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)
