"""A VM's serial console: one connection to QEMU's serial socket, shared by many viewers.

QEMU's socket chardev takes a single client, so the service holds that one connection for the
VM's whole life and fans the output out to every attached console; QEMU itself keeps the full
log (``logfile=``). The byte stream is also where boot progress shows: the first byte is the
kernel speaking, and our init prints marker lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

INIT_STARTED = b"gureum-init: started"
INIT_READY = b"gureum-init: ready"


class SerialConsole:
    def __init__(self, path: Path, on_marker: Callable[[str, float], None]) -> None:
        self.path = path
        self._on_marker = on_marker
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._viewers: set[asyncio.Queue[bytes | None]] = set()
        self._tail = b""  # last bytes seen, to find markers split across reads
        self._seen_output = False
        self._fired: set[str] = set()  # each marker counts once per QEMU process

    async def connect(self, timeout: float = 5.0) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.path)), timeout
        )
        self._task = asyncio.create_task(self._pump(), name=f"serial-{self.path.parent.name}")

    def expect_output(self, seen: bool) -> None:
        """Whether boot output was already seen (an adopted, running VM): no markers then."""
        self._seen_output = seen

    async def _pump(self) -> None:
        assert self._reader is not None
        try:
            while True:
                chunk = await self._reader.read(65536)
                if not chunk:
                    break
                now = time.time()
                if not self._seen_output:
                    self._seen_output = True
                    self._on_marker("kernel_started", now)
                self._scan(chunk, now)
                for queue in list(self._viewers):
                    queue.put_nowait(chunk)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for queue in list(self._viewers):
                queue.put_nowait(None)

    def _scan(self, chunk: bytes, now: float) -> None:
        window = self._tail + chunk
        for marker, event in ((INIT_STARTED, "init_started"), (INIT_READY, "init_ready")):
            if event not in self._fired and marker in window:
                self._fired.add(event)
                self._on_marker(event, now)
        self._tail = window[-64:]

    def attach(self) -> asyncio.Queue[bytes | None]:
        """A queue of console output for one viewer; ``None`` marks the end."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._viewers.add(queue)
        return queue

    def detach(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._viewers.discard(queue)

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            return
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._writer = self._reader = None
