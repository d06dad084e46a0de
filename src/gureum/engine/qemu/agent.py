"""The QEMU guest agent (qemu-ga) protocol, spoken over the VM's virtio-serial port.

qemu-ga has no greeting and no request ids: after (re)connecting, stale replies from an earlier
client may still be in the pipe. ``guest-sync-delimited`` with a random id fixes that: the agent
answers with a 0xFF byte followed by the id, and everything before it is discarded. Any timeout
drops the connection so the next call starts clean.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gureum.errors import CommandNotFound, EngineError, GureumError, Timeout, Unavailable
from gureum.sys.nofollow import socket_path

# Kills a process and all its descendants (busybox and Debian sh alike): stop it, kill its
# children (listed once it is stopped, so it cannot fork more), then kill it.
KILL_TREE = r"""
k() {
  kill -STOP "$1" 2>/dev/null
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do k "$c"; done
  kill -KILL "$1" 2>/dev/null
}
k "$1"
"""


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int | None = None
    truncated: bool = False


class GuestAgent:
    def __init__(self, path: Path, owner: int | None = None) -> None:
        self.path = path
        self.owner = owner  # the uid its QEMU runs as: the socket must be that user's
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def _connect(self, timeout: float) -> None:
        try:
            with socket_path(self.path, self.owner) as checked:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(checked, limit=64 * 1024 * 1024), timeout
                )
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"guest agent socket {self.path} is not available: {exc}") from exc
        sync_id = secrets.randbelow(2**31)
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
        assert self._reader is not None and self._writer is not None
        await self._writer.drain()
        try:
            await asyncio.wait_for(self._reader.readuntil(b"\xff"), timeout)
            while True:
                reply = await asyncio.wait_for(self._read_message(), timeout)
                if isinstance(reply, dict) and reply.get("return") == sync_id:
                    return
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            await self.close()
            raise Timeout(f"guest agent did not answer within {timeout} s") from exc

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(msg).encode() + b"\n")

    async def _read_message(self) -> dict[str, Any]:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                raise EngineError("guest agent closed the connection")
            line = line.strip().lstrip(b"\xff")
            if line:
                return json.loads(line)

    async def call(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        async with self._lock:
            if self._writer is None:
                await self._connect(timeout)
            msg: dict[str, Any] = {"execute": cmd}
            if args:
                msg["arguments"] = args
            try:
                self._send(msg)
                # _send has just found the connection open (else it raised).
                await self._writer.drain()  # type: ignore[union-attr]
                reply = await asyncio.wait_for(self._read_message(), timeout)
            except TimeoutError as exc:
                await self._close_locked()
                raise Timeout(f"guest agent: {cmd} did not answer within {timeout} s") from exc
            except (OSError, EngineError, json.JSONDecodeError) as exc:
                await self._close_locked()
                raise Unavailable(f"guest agent: {cmd} failed: {exc}") from exc
        # The guest wrote the reply: its shape is checked, not assumed.
        if not isinstance(reply, dict):
            raise EngineError(f"guest agent: {cmd}: the reply is not an object")
        if "error" in reply:
            error = reply["error"]
            desc = error.get("desc", error) if isinstance(error, dict) else error
            raise EngineError(f"guest agent: {cmd}: {str(desc)[:500]}")
        return reply.get("return")

    @property
    def busy(self) -> bool:
        """Someone is talking to the agent now (a call is under way)."""
        return self._lock.locked()

    async def ping(self, timeout: float = 5.0) -> None:
        await self.call("guest-ping", timeout=timeout)

    async def exec(
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float = 60.0
    ) -> ExecResult:
        """Run argv in the guest and wait for it. qemu-ga offers no push notification on exit,
        so exit status is polled: every 5 ms at first, backing off to 20 ms for the first
        second (most of what gureum runs is done by then, and each poll late is time lost on
        the launch path), then to 100 ms."""
        args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin:
            args["input-data"] = base64.b64encode(stdin).decode()
        try:
            started = await self.call("guest-exec", args)
        except EngineError as exc:  # qemu-ga could not start it: no such file, not executable
            raise CommandNotFound(exc.message) from exc
        pid = started["pid"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.005
        while True:
            status = await self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                break
            if loop.time() >= deadline:
                await self._kill_tree(pid)
                raise Timeout(
                    f"command did not finish within {timeout} s: it was killed (guest pid {pid})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02 if loop.time() < deadline - timeout + 1 else 0.1)
        return ExecResult(
            exit_code=int(status.get("exitcode", 128 + int(status.get("signal", 0)))),
            stdout=base64.b64decode(status.get("out-data", "")),
            stderr=base64.b64decode(status.get("err-data", "")),
            signal=status.get("signal"),
            truncated=bool(status.get("out-truncated") or status.get("err-truncated")),
        )

    async def _kill_tree(self, pid: int) -> None:
        """Kill a timed-out command and everything it started (qemu-ga 7.2 has no kill of its
        own): each process is stopped before its children are listed, so none escapes by
        forking meanwhile. Best effort: the caller reports the timeout either way."""
        with contextlib.suppress(GureumError):
            await self.call(
                "guest-exec",
                {"path": "/bin/sh", "arg": ["-c", KILL_TREE, "kill-tree", str(pid)]},
                timeout=5,
            )
            await asyncio.sleep(0.2)
            await self.call("guest-exec-status", {"pid": pid}, timeout=5)  # reaps it

    async def write_file(self, path: str, data: bytes) -> None:
        """Write a guest file through the agent itself: no process is started in the guest."""
        handle = await self.call("guest-file-open", {"path": path, "mode": "w"})
        try:
            await self.call(
                "guest-file-write", {"handle": handle, "buf-b64": base64.b64encode(data).decode()}
            )
        finally:
            await self.call("guest-file-close", {"handle": handle})

    async def read_file(self, path: str, limit: int = 65536, timeout: float = 10.0) -> bytes:
        handle = await self.call("guest-file-open", {"path": path, "mode": "r"}, timeout)
        try:
            out = await self.call("guest-file-read", {"handle": handle, "count": limit}, timeout)
        finally:
            await self.call("guest-file-close", {"handle": handle}, timeout)
        if not isinstance(out, dict) or not isinstance(out.get("buf-b64", ""), str):
            raise EngineError(f"guest agent: reading {path}: not a file's contents")
        return base64.b64decode(out.get("buf-b64", ""))

    async def _close_locked(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def close(self) -> None:
        await self._close_locked()
