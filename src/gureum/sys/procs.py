"""Processes by pid: alive or not, their command lines, pid files, signals.

Generic: used for QEMU (``engine/qemu/process.py``) and for the helpers a host runs beside it
(dnsmasq). A pid file usually lies in a folder someone else may write to, so it is read as a
plain file of a few bytes only (``sys/nofollow.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from gureum.sys.nofollow import read_small


def proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return stat[stat.rindex(")") + 2]


def is_alive(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped) counts as dead."""
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def read_pidfile(path: Path) -> int | None:
    """The pid QEMU wrote (in the VM's folder: a plain file of a few bytes, or nothing)."""
    try:
        return int(read_small(path, 32).strip())
    except (OSError, ValueError):
        return None


def reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, all its threads together (/proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # After the parenthesised command name: state is field 3, utime 14 and stime 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of a process in bytes, from /proc/PID/smaps_rollup (PSS splits each shared
    page among the processes that map it: what sharing saves shows there, not in RSS)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return rss, pss


def pss_bytes(pid: int) -> int:
    """A process's proportional set size; OSError when it is gone."""
    measured = memory(pid)
    if measured is None:
        raise FileNotFoundError(f"no process {pid}")
    return measured[1]
