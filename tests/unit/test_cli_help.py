"""Every command explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [
    [],
    ["launch"],
    ["list"],
    ["show"],
    ["exec"],
    ["console"],
    ["stop"],
    ["start"],
    ["restart"],
    ["delete"],
    ["serve"],
    ["host"],
    ["image"],
    ["image", "build"],
    ["image", "list"],
    ["image", "show"],
    ["image", "verify"],
    ["image", "delete"],
    ["operation"],
    ["operation", "list"],
    ["operation", "show"],
    ["operation", "wait"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gureum")
def test_help(command):
    res = subprocess.run([sys.executable, "-m", "gureum.cli.main", *command, "--help"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and len(res.stdout) > 200


def test_every_command_says_what_it_does():
    """Walks the whole command tree: a command added without a docstring fails here."""
    from typer.main import get_command

    from gureum.cli.main import app

    silent: list[str] = []
    seen: list[str] = []

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            seen.append(" ".join(path))
            if len((cmd.help or "").strip()) < 10:
                silent.append(" ".join(path))

    walk(get_command(app), [])
    assert len(seen) > 40 and "project member add" in seen  # the tree really was walked
    assert not silent, f"commands without help: {silent}"
