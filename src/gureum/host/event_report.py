"""A joined host's VMs' engine events, reported to the control plane as they happen.

On one machine the service hears its VMs' events in-process (``VMEvents``). On a joined host
the agent runs the VM, so what QEMU says (a boot phase, a pause on a full disk, an exit) is sent
to the control plane's cluster port as ``{"op": "event", "instance", "event", ...}``, over the
agent's own certificate, which the control plane checks is the instance's host's.

One sender per agent sends them in the order they happened. One that cannot be delivered is
tried again a few times and then dropped, logged: the control plane compares what it recorded
with what runs (``running``) when the agent reports again, so a lost event is not a lost VM.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from gureum.errors import GureumError, Unavailable
from gureum.host import enrolment
from gureum.model.cluster import CONTROL_PLANE
from gureum.sys import jsonline

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000  # events waiting for the control plane; beyond it the oldest wait, new drop
TRIES = 5
RETRY_S = 1.0
SEND_TIMEOUT_S = 5.0  # to one control plane, before the next is tried


class EventReport:
    def __init__(self, folder: Path, ended: Callable[[str], None] | None = None) -> None:
        self.folder = folder
        self.ended = ended  # told of each VM whose exit is reported (its agent stops watching)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        """The agent's TLS, made once: its files do not change while it runs."""
        if self._tls is None:
            self._tls = enrolment.own_context(self.folder)
        return self._tls

    def for_instance(self, instance_id: str) -> InstanceEvents:
        return InstanceEvents(self, instance_id)

    def put(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.error("dropped %s of %s: the control plane is not taking events", event.get(
                "event"), event.get("instance"))  # fmt: skip
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send_all(), name="event-report")

    async def _send_all(self) -> None:
        while not self._queue.empty():
            event = self._queue.get_nowait()
            await self._send(event)

    async def _send(self, event: dict[str, Any]) -> None:
        for attempt in range(TRIES):
            if enrolment.joined(self.folder) is None:
                return
            send = partial(jsonline.ask, request={"op": "event", **event},
                           ctx=self._context(), server_name=CONTROL_PLANE,
                           timeout=SEND_TIMEOUT_S)  # fmt: skip
            try:
                await enrolment.to_control_plane(self.folder, send)
                return
            except Unavailable as exc:  # not reached: tried again
                if attempt + 1 == TRIES:
                    log.error("could not report %s of %s to the control plane: %s",
                              event["event"], event["instance"], exc.message)  # fmt: skip
                    return
            except GureumError as exc:  # refused (an instance deleted meanwhile): not again
                log.warning("the control plane refused %s of %s: %s", event["event"],
                            event["instance"], exc.message)  # fmt: skip
                return
            await asyncio.sleep(RETRY_S * (attempt + 1))

    async def close(self) -> None:
        """Send what is waiting (each within its tries), then stop."""
        if self._task is not None:
            await self._task


class InstanceEvents:
    """One VM's ``VMEvents``, reported to the control plane."""

    def __init__(self, report: EventReport, instance_id: str) -> None:
        self.report, self.instance_id = report, instance_id
        # Its QEMU's pid, once known: the control plane takes an event of an earlier run of
        # the VM (an exit that arrives after it was started again) for what it is.
        self.pid: int | None = None

    def _put(self, event: str, **fields: Any) -> None:
        run = {} if self.pid is None else {"pid": self.pid}
        self.report.put({"instance": self.instance_id, "event": event, **run, **fields})

    def on_boot_event(self, event: str, at: float) -> None:
        self._put("boot", name=event, at=at)

    def on_paused(self, reason: str) -> None:
        self._put("paused", reason=reason)

    def on_resumed(self) -> None:
        self._put("resumed")

    def on_exit(self, how: str, detail: str) -> None:
        if self.report.ended is not None:
            self.report.ended(self.instance_id)
        self._put("exit", how=how, detail=detail)
