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
