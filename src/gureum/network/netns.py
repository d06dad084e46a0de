"""Network namespaces: gureum's networks live in namespaces it creates, never in the host's.

Each network is one namespace holding its bridge, its VMs' TAP devices, its DHCP/DNS server,
its firewall and its metadata endpoint. Different networks share nothing (not even a routing
table), so overlapping subnets just work and no packet can cross from one to another.

Some things must be created *inside* a namespace by this process (a TAP's file descriptor, a
listening socket): ``run_in`` does that on a short-lived thread that enters the namespace with
setns(2), which affects only that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gureum.errors import EngineError
from gureum.sys.runner import arun

T = TypeVar("T")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def home_tag(home: Path) -> str:
    """Short and stable per home, so several gureum homes never share a namespace."""
    return hashlib.sha256(str(home.absolute()).encode()).hexdigest()[:8]


def name_for(home: Path, network_id: str) -> str:
    return f"gureum-{home_tag(home)}-{network_id}"


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ours(home: Path) -> list[str]:
    prefix = f"gureum-{home_tag(home)}-"
    return sorted(p.name for p in NETNS_DIR.glob(prefix + "*")) if NETNS_DIR.exists() else []


async def create(name: str) -> None:
    if not exists(name):
        await arun(["ip", "netns", "add", name])
    await arun(["ip", "-n", name, "link", "set", "lo", "up"])


async def pids(name: str) -> list[int]:
    out = (await arun(["ip", "netns", "pids", name], check=False)).stdout.split()
    return [int(p) for p in out if p.isdigit()]


async def delete(name: str) -> None:
    """Kill whatever still runs in the namespace, then remove it."""
    if not exists(name):
        return
    for pid in await pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    await arun(["ip", "netns", "delete", name])


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` on a thread inside namespace ``name``; objects it creates (fds, sockets)
    stay in that namespace after the thread ends."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {name}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in result:
        exc = result["error"]
        if isinstance(exc, OSError):
            raise EngineError(f"in network namespace {name}: {exc}") from exc
        # result crosses a thread untyped: "error" holds an exception, "value" the return.
        raise exc  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


async def arun_in(name: str, fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(run_in, name, fn)


async def ip(name: str, *args: str, check: bool = True) -> str:
    return (await arun(["ip", "-n", name, *args], check=check)).stdout


async def sysctl(name: str, key: str, value: str) -> None:
    await arun(["ip", "netns", "exec", name, "sysctl", "-q", "-w", f"{key}={value}"])
