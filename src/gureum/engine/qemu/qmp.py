"""A VM's QEMU Machine Protocol connection, over the official ``qemu.qmp`` client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient, QMPError
from qemu.qmp.qmp_client import ExecuteError

from gureum.errors import EngineError, Timeout
from gureum.sys.nofollow import socket_path

log = logging.getLogger(__name__)
# qemu.qmp logs every disconnect as an error; a VM powering off is not an error for us.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

EventHandler = Callable[[str, dict[str, Any]], None]


class Monitor:
    def __init__(self, name: str, on_event: EventHandler | None = None) -> None:
        self.client = QMPClient(name)
        self._listener = EventListener()
        self.client.register_listener(self._listener)
        self._on_event = on_event
        self._pump: asyncio.Task[None] | None = None
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool], asyncio.Future[Any]]] = []

    async def connect(self, path: Path, timeout: float = 10.0, owner: int | None = None) -> None:
        """Connect to QEMU's monitor socket, which must be a socket of ``owner`` (the VM's
        user) and not a link: the folder is the VM's (``sys/nofollow.py``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel
                # that comes as the connect fails, and this loop then retried, refused, until
                # its deadline (a VM whose QEMU died at start was waited on for that long).
                with socket_path(path, owner) as checked:
                    async with asyncio.timeout(timeout):
                        await self.client.connect(checked)
                break
            except TimeoutError as exc:
                raise Timeout(f"QMP at {path} did not answer within {timeout} s") from exc
            except (QMPError, OSError) as exc:
                # QEMU binds its socket a moment before it listens: refused means "not yet".
                refused = "Connection refused" in str(exc) or isinstance(
                    exc, ConnectionRefusedError
                )
                if not refused or loop.time() > deadline:
                    raise EngineError(f"cannot connect to QMP at {path}: {exc}") from exc
                self.client = QMPClient(self.client.name)
                self.client.register_listener(self._listener)
                await asyncio.sleep(0.01)
        self._pump = asyncio.create_task(self._dispatch(), name=f"qmp-events-{self.client.name}")

    async def _dispatch(self) -> None:
        async for event in self._listener:
            # An event's data is a JSON object; qemu.qmp types it loosely.
            data: dict[str, Any] = dict(event.get("data") or {})  # type: ignore[call-overload]
            for waiter in list(self._waiters):
                name, predicate, future = waiter
                if name == event["event"] and not future.done() and predicate(data):
                    future.set_result(data)
                    self._waiters.remove(waiter)
            if self._on_event is not None:
                try:
                    self._on_event(str(event["event"]), dict(data))
                except Exception:  # a handler bug must not stop event delivery
                    log.exception("QMP event handler failed")

    def expect(
        self, name: str, predicate: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> asyncio.Future[Any]:
        """A future for the next event ``name`` whose data passes ``predicate``. Register it
        before issuing the command that causes the event, so it cannot be missed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append((name, predicate, future))
        return future

    async def wait(self, future: asyncio.Future[Any], what: str, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise Timeout(f"{what} did not finish within {timeout} s") from exc
        finally:
            self._waiters = [w for w in self._waiters if w[2] is not future]

    async def pass_fd(self, fd: int, name: str) -> None:
        """Hand QEMU an open file (SCM_RIGHTS): the sandbox keeps QEMU from exec'ing helpers,
        and a file opened here is one whose path gureum chose."""
        try:
            self.client.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise EngineError(f"cannot pass a file to QEMU: {exc}") from exc
        await self.execute("getfd", {"fdname": name})

    async def execute(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        try:
            return await asyncio.wait_for(self.client.execute(cmd, args), timeout)
        except TimeoutError as exc:
            raise Timeout(f"QMP {cmd} did not answer within {timeout} s") from exc
        except ExecuteError as exc:
            raise EngineError(f"QMP {cmd} failed: {exc.error.error.desc}") from exc
        except (QMPError, OSError) as exc:
            raise EngineError(f"QMP {cmd} failed: {exc}") from exc

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        with contextlib.suppress(Exception):
            await self.client.disconnect()
