"""Test-wide hygiene: reap the QEMUs and tools that killed services leave orphaned."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

PR_SET_CHILD_SUBREAPER = 36
# What a service spawns; when a test kills the service these are re-parented to us. The tests'
# own subprocesses (python, sh) are left to the code that waits for them.
ORPHANS = {
    "qemu-system-x86",
    "dpkg-deb",
    "tar",
    "apt-get",
    "http",
    "qemu-img",
    "mkfs.ext4",
    "modinfo",
    "depmod",
    "ldconfig",
    "chroot",
    "dnsmasq",
}


def _reap_orphans(stop: threading.Event) -> None:
    """Tests kill services on purpose; their QEMUs and tools are then re-parented to this
    process (a subreaper) and must be reaped here, or they would linger as zombies."""
    me = os.getpid()
    while True:
        finished = stop.wait(0.5)  # one more sweep after the last test
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            if fields[0] == "Z" and int(fields[1]) == me and name in ORPHANS:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry.name), os.WNOHANG)
        if finished:
            return


def pytest_configure(config: pytest.Config) -> None:
    """A short base for tmp_path: a service home under it holds unix sockets, whose paths
    have 107 bytes at most, and pytest's own base (/tmp/pytest-of-root/pytest-N/, plus
    popen-gwN/ under pytest-xdist) leaves too few for a long test name."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="gu-", dir="/tmp")
        config.stash[_MADE_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    made = config.stash.get(_MADE_BASETEMP, None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


_MADE_BASETEMP = pytest.StashKey[str]()


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


@pytest.fixture(scope="session")
def postgres():
    """One private PostgreSQL server for the whole run (``tests/postgres.py``)."""
    from tests.postgres import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
