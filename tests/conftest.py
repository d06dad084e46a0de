"""Test-wide hygiene: reap orphaned QEMUs, and check nothing is left running."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from pathlib import Path

import pytest

PR_SET_CHILD_SUBREAPER = 36


def _reap_orphans(stop: threading.Event) -> None:
    """Tests kill services on purpose; their QEMUs are then re-parented to this process
    (a subreaper) and must be reaped here, or they would linger as zombies."""
    me = os.getpid()
    while not stop.wait(0.5):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z" and int(fields[1]) == me and "qemu-system" in stat:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry.name), os.WNOHANG)


@pytest.fixture(scope="session", autouse=True)
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    stop = threading.Event()
    thread = threading.Thread(target=_reap_orphans, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
