"""A VM's serial console: one connection to QEMU's serial socket, shared by many viewers.

QEMU's socket chardev takes a single client, so the service holds that one connection for the
VM's whole life and fans the output out to every attached console; QEMU itself writes the log
(``logfile=``, appending), so nothing is lost while the service is down. The byte stream is
also where boot progress shows: the first byte is the kernel speaking, and our init prints
marker lines.

A guest decides how much it prints, so both ends are bounded: the log is rotated once past
``LOG_CAP`` (its older part kept as ``serial.log.1``, one generation), and a viewer that does not
keep up (``VIEWER_QUEUE`` chunks behind) is disconnected rather than buffered without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from gureum.sys.nofollow import open_nofollow, socket_path

log = logging.getLogger(__name__)

LOG_CAP = 4 << 20  # bytes of serial.log before it is rotated (plus as much in serial.log.1)
READ_CAP = 64 << 20  # the most of the log read at once (it grows unread while the service is down)
VIEWER_QUEUE = 256  # chunks (up to 64 KiB each) a viewer may fall behind before it is dropped
INIT_STARTED = b"gureum-init: started"
INIT_READY = b"gureum-init: ready"
# What tiny's DHCP script prints once a lease is configured (the guest's own word: it marks
# only its own timeline).
NETWORK_UP = b"gureum-net: "


def rotate_log(log_path: Path, cap: int | None = None) -> bool:
    """Past ``cap`` bytes, keep the log as ``.1`` and start it afresh; True if it rotated.

    QEMU has the log open with O_APPEND, so truncating it in place is safe: its next write
    lands at the new end. (Bytes written between the copy and the truncation are lost: a few.)
    """
    cap = LOG_CAP if cap is None else cap
    try:
        # The runtime folder is the VM's: nothing there is followed or trusted to be a file.
        with open_nofollow(log_path, "r+b") as current:
            if current.seek(0, 2) <= cap:
                return False
            current.seek(-cap, 2)
            with open_nofollow(log_path.with_name(log_path.name + ".1"), "wb") as older:
                older.write(current.read(cap))
            current.truncate(0)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot rotate %s: %s", log_path, exc)
        return False
    return True


def read_log(log_path: Path, tail_bytes: int) -> bytes:
    """The last ``tail_bytes`` of the console's output (0: all that is kept), across the
    rotated generation and the current log."""
    tail = min(tail_bytes or READ_CAP, READ_CAP)
    data = b""
    for path in (log_path.with_name(log_path.name + ".1"), log_path):
        # Missing, or not a plain file (a link the VM's user left there): nothing to show.
        with contextlib.suppress(OSError), open_nofollow(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - tail))
            data += f.read(tail)
    return data[-tail:]


# The marker lines of a VM's console, and the boot events they are.
SERIAL_MARKERS = (
    (INIT_STARTED, "init_started"),
    (INIT_READY, "init_ready"),
    (NETWORK_UP, "network_up"),
)


class Fanout:
    """One console's output, to every attached viewer, and the marker lines in it (each
    reported once). A viewer ``VIEWER_QUEUE`` chunks behind is dropped rather than buffered
    without end. A VM's serial console and a container's console log both hand theirs here."""

    def __init__(
        self,
        markers: tuple[tuple[bytes, str], ...],
        on_marker: Callable[[str, float], None],
        name: str,
    ) -> None:
        self.markers = markers
        self.name = name  # whose console, for the log
        self._on_marker = on_marker
        self._viewers: set[asyncio.Queue[bytes | None]] = set()
        self._tail = b""  # last bytes seen, to find markers split across reads
        self._fired: set[str] = set()

    @property
    def watched(self) -> bool:
        return bool(self._viewers)

    def publish(self, chunk: bytes, now: float) -> None:
        self.scan(chunk, now)
        for queue in list(self._viewers):
            try:
                queue.put_nowait(chunk)
            except asyncio.QueueFull:
                self._drop(queue)

    def scan(self, chunk: bytes, now: float) -> None:
        window = self._tail + chunk
        for marker, event in self.markers:
            if event not in self._fired and marker in window:
                self._fired.add(event)
                self._on_marker(event, now)
        self._tail = window[-64:]

    def _drop(self, queue: asyncio.Queue[bytes | None], *, behind: bool = True) -> None:
        """A viewer that fell too far behind (``behind``) or whose console ended: its backlog
        goes, and it sees the end."""
        self._viewers.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
        if behind:
            log.info("console viewer of %s dropped: it did not keep up", self.name)

    def attach(self) -> asyncio.Queue[bytes | None]:
        """A queue of console output for one viewer; ``None`` marks the end."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(VIEWER_QUEUE)
        self._viewers.add(queue)
        return queue

    def detach(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._viewers.discard(queue)

    def end(self) -> None:
        """Every viewer sees the end."""
        for queue in list(self._viewers):
            self._drop(queue, behind=False)


class SerialConsole:
    def __init__(
        self,
        path: Path,
        on_marker: Callable[[str, float], None],
        log_path: Path | None = None,
        owner: int | None = None,
    ) -> None:
        self.path = path
        self.owner = owner  # the uid its QEMU runs as: the socket must be that user's
        self.log_path = log_path
        self._logged = 0  # bytes seen since the log's size was last looked at
        self._on_marker = on_marker
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        # Each marker counts once per QEMU process (this console lives as long as it).
        self._out = Fanout(SERIAL_MARKERS, on_marker, path.parent.name)
        self._seen_output = False

    async def connect(self, timeout: float = 5.0) -> None:
        with socket_path(self.path, self.owner) as checked:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(checked), timeout
            )
        if self.log_path is not None:  # it grew unwatched while the service was down
            await asyncio.to_thread(rotate_log, self.log_path)
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
                self._logged += len(chunk)
                if self.log_path is not None and self._logged >= LOG_CAP // 8:
                    self._logged = 0
                    rotate_log(self.log_path)
                self._out.publish(chunk, now)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._out.end()

    def _scan(self, chunk: bytes, now: float) -> None:
        self._out.scan(chunk, now)

    def attach(self) -> asyncio.Queue[bytes | None]:
        """A queue of console output for one viewer; ``None`` marks the end."""
        return self._out.attach()

    def detach(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._out.detach(queue)

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
